"""Shared fixtures: the (backend, device) pairs every op test runs on.

reference and cpp run on CPU tensors; triton runs on CUDA tensors when a GPU is present and on
CPU tensors through the interpreter when TRITON_INTERPRET=1 (how CI tests it).
"""
import pytest
import torch

from fastattr import _backend


def backend_devices():
    pairs = [("reference", "cpu")]
    if _backend.cpp_available():
        pairs.append(("cpp", "cpu"))
    if _backend.triton_available() and _backend.triton_interpret():
        pairs.append(("triton", "cpu"))
    if torch.cuda.is_available():
        pairs.append(("reference", "cuda"))
        if _backend.triton_available() and not _backend.triton_interpret():
            pairs.append(("triton", "cuda"))
    return pairs


BACKEND_DEVICES = backend_devices()
FAST_BACKEND_DEVICES = [p for p in BACKEND_DEVICES if p[0] != "reference"]


def pair_id(pair):
    return f"{pair[0]}-{pair[1]}"


@pytest.fixture(params=BACKEND_DEVICES, ids=pair_id)
def backend_device(request):
    return request.param


_NO_FAST = pytest.param(None, marks=pytest.mark.skipif(not FAST_BACKEND_DEVICES,
                                                       reason="needs the fastattr._C extension or Triton"))


@pytest.fixture(params=FAST_BACKEND_DEVICES or [_NO_FAST], ids=lambda p: pair_id(p) if p else "none")
def fast_backend_device(request):
    return request.param


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| over finite entries (DESIGN.md numerics)."""
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_same_nested(ours, theirs, tol: float) -> None:
    """``ours`` and ``theirs`` the same type; tuples and lists item by item, tensors of one shape and dtype
    within ``tol`` relative error."""
    assert type(ours) is type(theirs)
    if isinstance(ours, (tuple, list)):
        assert len(ours) == len(theirs)
        for u, v in zip(ours, theirs):
            assert_same_nested(u, v, tol)
        return
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (ours.shape, theirs.shape, ours.dtype,
                                                                       theirs.dtype)
    assert rel_err(ours, theirs) <= tol, rel_err(ours, theirs)


TOL = {torch.float64: 1e-6, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: one intra-op thread is fastest and avoids thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
