"""fastattr.ops.deeplift_rules: the C++ multipliers against the reference's torch expressions bit for bit (baselines
of one row, tiled and per row; an eps that sends many elements to the local gradient; NaN, ±0; float32 and float64;
1-, 2- and 3-D pools with overlapping windows), the ReLU's own gradient where ``|Δx| < eps``, and when the kernel
runs."""
import pytest
import torch
import torch.nn.functional as F

from fastattr import use_backend
from fastattr.ops.deeplift_rules import maxpool_multipliers, rescale_multipliers
from fastattr.reference import deeplift_rules as reference


def _same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(a.signbit(), b.signbit())


def _pair(rows, base_rows, shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((rows,) + shape, generator=g, dtype=dtype)
    xb = torch.randn((base_rows,) + shape, generator=g, dtype=dtype)
    equal = torch.rand(x.shape, generator=g) < 0.3                     # Δx = 0 on about a third
    x = torch.where(equal, reference.baseline_rows(xb, rows), x)
    x.view(-1)[:3] = torch.tensor([float("nan"), 0.0, -0.0], dtype=dtype)
    return x, xb, torch.randn(x.shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("base_rows", [1, 2, 6])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_rescale_is_the_references_bit_for_bit(dtype, base_rows, act):
    f = torch.relu if act == "relu" else torch.tanh
    x, xb, grad = _pair(6, base_rows, (5, 7), dtype, 1)
    for eps in (1e-10, 0.3):
        got = rescale_multipliers(grad, x, f(x), xb, f(xb), eps, relu=act == "relu")
        with use_backend("reference"):
            want = rescale_multipliers(grad, x, f(x), xb, f(xb), eps, relu=act == "relu")
        _same(got[0], want[0])
        assert (got[1] is None) == (want[1] is None) and (got[1] is None or torch.equal(got[1], want[1]))
        assert act == "tanh" or got[1] is None


def test_the_relus_own_gradient_is_torchs_threshold_backward():
    x, xb, grad = _pair(4, 1, (30,), torch.float32, 2)
    xr = x.detach().requires_grad_()
    (own,) = torch.autograd.grad(torch.relu(xr), xr, grad)
    dx = x - xb
    expected = torch.where(dx.abs() < 1e-10, own, grad * (x.relu() - xb.relu()) / dx)
    out, small = rescale_multipliers(grad, x, x.relu(), xb, xb.relu(), 1e-10, relu=True)
    assert small is None
    _same(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("base_rows", [1, 3])
@pytest.mark.parametrize("axes,k,s,p", [(1, 3, 2, 1), (2, 2, 2, 0), (2, 3, 2, 1), (3, 2, 1, 0)])
def test_maxpool_is_the_references_bit_for_bit(dtype, base_rows, axes, k, s, p):
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[axes]
    shape = (4,) + (6,) * axes
    x, xb, _ = _pair(6, base_rows, shape, dtype, 3)
    x = x.nan_to_num(0.5)
    y, index = pool(x, k, s, p, return_indices=True)
    yb, index_b = pool(xb, k, s, p, return_indices=True)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)
    for eps in (1e-10, 0.3):
        got = maxpool_multipliers(grad, x, y, xb, yb, index, index_b, axes, eps)
        with use_backend("reference"):
            want = maxpool_multipliers(grad, x, y, xb, yb, index, index_b, axes, eps)
        _same(got, want)


def test_when_the_kernel_runs(monkeypatch):
    import fastattr.ops.deeplift_rules as rules

    calls = []
    monkeypatch.setattr(rules, "run_cpp", lambda name, *a, **k: calls.append(name) or 0)
    x, xb, grad = _pair(4, 1, (8,), torch.float32, 5)
    rescale_multipliers(grad, x, x.relu(), xb, xb.relu(), 1e-10)
    assert calls == ["deeplift_rescale"]
    rescale_multipliers(grad.half(), x.half(), x.half(), xb.half(), xb.half(), 1e-10)   # half: the reference
    rescale_multipliers(grad.double(), x, x.relu(), xb, xb.relu(), 1e-10)               # mixed dtypes
    with use_backend("reference"):
        rescale_multipliers(grad, x, x.relu(), xb, xb.relu(), 1e-10)
    assert calls == ["deeplift_rescale"]
