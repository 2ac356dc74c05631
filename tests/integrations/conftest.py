"""Fixtures for the integration tests."""
import pytest


@pytest.fixture(autouse=True, scope="module")
def tiny_tensors(one_thread):
    """The tensors here are tiny: every module runs on one intra-op thread (``one_thread``)."""
    yield
