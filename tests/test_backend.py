"""Backend dispatch: FASTATTR_BACKEND, use_backend(), per-call backend=, auto rules, errors."""
import importlib
import types
import warnings

import pytest
import torch

import fastattr
from fastattr import _backend

sparsemax_module = importlib.import_module("fastattr.ops.sparsemax")


@pytest.fixture
def calls(monkeypatch):
    """Counts which backend actually ran, by wrapping the reference and cpp kernels."""
    seen = []
    ref, cpp = sparsemax_module.reference.sparsemax, sparsemax_module._cpp_forward

    def spy_ref(x, dim=-1):
        seen.append("reference")
        return ref(x, dim)

    def spy_cpp(z):
        seen.append("cpp")
        return cpp(z)

    fake_ref = types.SimpleNamespace(sparsemax=spy_ref, sparsemax_backward=sparsemax_module.reference.sparsemax_backward)
    monkeypatch.setattr(sparsemax_module, "reference", fake_ref)
    monkeypatch.setattr(sparsemax_module, "_cpp_forward", spy_cpp)
    return seen


def test_default_is_auto(monkeypatch):
    monkeypatch.delenv("FASTATTR_BACKEND", raising=False)
    assert fastattr.get_backend() == "auto"


def test_env_variable(monkeypatch, calls):
    monkeypatch.setenv("FASTATTR_BACKEND", "reference")
    assert fastattr.get_backend() == "reference"
    fastattr.sparsemax(torch.randn(3, 5))
    assert calls == ["reference"]


def test_env_variable_invalid(monkeypatch):
    monkeypatch.setenv("FASTATTR_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FASTATTR_BACKEND"):
        fastattr.get_backend()


def test_context_manager_nests_and_restores(monkeypatch):
    monkeypatch.delenv("FASTATTR_BACKEND", raising=False)
    with fastattr.use_backend("reference"):
        assert fastattr.get_backend() == "reference"
        with fastattr.use_backend("cpp"):
            assert fastattr.get_backend() == "cpp"
        assert fastattr.get_backend() == "reference"
    assert fastattr.get_backend() == "auto"
    with pytest.raises(RuntimeError):
        with fastattr.use_backend("reference"):
            raise RuntimeError("boom")
    assert fastattr.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend"):
        with fastattr.use_backend("fast"):
            pass


@pytest.mark.skipif(not _backend.cpp_available(), reason="fastattr._C extension not built")
def test_per_call_overrides_context(calls):
    x = torch.randn(4, 6)
    with fastattr.use_backend("reference"):
        fastattr.sparsemax(x, backend="cpp")
        fastattr.sparsemax(x)
    assert calls == ["cpp", "reference"]


@pytest.mark.skipif(not _backend.cpp_available(), reason="fastattr._C extension not built")
def test_auto_picks_cpp_on_cpu(monkeypatch, calls):
    monkeypatch.delenv("FASTATTR_BACKEND", raising=False)
    assert _backend.resolve(torch.zeros(1)) == "cpp"
    fastattr.sparsemax(torch.randn(2, 3))
    assert calls == ["cpp"]


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(_backend, "cpp_extension", lambda: None)
    monkeypatch.setattr(_backend, "_warned_fallback", False)
    x = torch.randn(2, 3)
    with pytest.warns(RuntimeWarning, match="reference"):
        assert _backend.resolve(x, "auto") == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.resolve(x, "auto") == "reference"
    with pytest.raises(RuntimeError, match="not built"):
        _backend.resolve(x, "cpp")


def test_cpp_rejects_non_cpu_tensors():
    with pytest.raises(ValueError, match="CPU tensors only"):
        _backend.resolve(torch.empty(2, device="meta"), "cpp")


def test_triton_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        _backend.resolve(torch.zeros(2), "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.resolve(torch.zeros(2), "triton") == "triton"


def test_available_backends_lists_reference_first():
    names = fastattr.available_backends("cpu")
    assert names[0] == "reference"
    assert ("cpp" in names) == _backend.cpp_available()


def test_record_backends_collects_the_backend_of_every_op_in_the_block():
    """Empty when no op runs; the concrete backend of each op that does; nothing recorded outside the block."""
    z = torch.randn(3, 5)
    with _backend.record_backends() as used:
        z.softmax(-1)
    assert used == set()
    with _backend.record_backends() as used:
        with fastattr.use_backend("reference"):
            fastattr.sparsemax(z)
        if _backend.cpp_available():
            with fastattr.use_backend("cpp"):
                fastattr.sparsemax(z)
    assert used == ({"reference", "cpp"} if _backend.cpp_available() else {"reference"})
    fastattr.sparsemax(z)
    assert used == ({"reference", "cpp"} if _backend.cpp_available() else {"reference"})
