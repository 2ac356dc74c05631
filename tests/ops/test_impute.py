"""noisy_linear_impute / stencil_solve on every backend against the scipy reference and Quantus's
noisy_linear_imputation: shapes, shared and per-channel masks, dtypes, edge cases, gradients,
torch.compile, non-contiguous inputs, bad arguments."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastattr.ops import linear_impute, noisy_linear_impute, stencil_solve
from fastattr.ops.impute import _neighbour_sum

from ..conftest import TOL, rel_err


def _case(n, c, h, w, fraction, per_channel, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, c, h, w), generator=g, dtype=torch.float64).to(dtype).to(device)
    shape = (n, c, h, w) if per_channel else (n, h, w)
    removed = (torch.rand(shape, generator=g) < fraction).to(device)
    return x, removed


def test_matches_reference(backend_device):
    backend, device = backend_device

    @settings(max_examples=8 if backend == "triton" and device == "cpu" else 30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
           fraction=st.floats(0.0, 1.0), per_channel=st.booleans(),
           dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 999))
    def check(n, c, h, w, fraction, per_channel, dtype, seed):
        x, removed = _case(n, c, h, w, fraction, per_channel, dtype, device, seed)
        out = noisy_linear_impute(x, removed, noise=0.0, backend=backend)
        ref = noisy_linear_impute(x.double().cpu(), removed.cpu(), noise=0.0, backend="reference")
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert rel_err(out, ref) <= TOL[dtype]
        full = removed.reshape(n, -1, h, w).expand(n, c, h, w)
        assert torch.equal(out[~full], x[~full])  # known pixels untouched

    check()


@pytest.mark.parametrize("channels", [1, 3])
def test_linear_impute_is_the_solve_of_the_known_neighbour_sum(backend_device, channels):
    """The fused op (the C++ backend builds b, solves and writes back in one pass) equals the unfused
    composition: b = N(x on the known pixels), u = stencil_solve(b) on the removed ones, x elsewhere."""
    backend, device = backend_device
    x, removed = _case(3, channels, 9, 8, 0.5, False, torch.float64, device, 11)
    full = removed[:, None].expand_as(x)
    u = stencil_solve(_neighbour_sum(x.masked_fill(full, 0)).cpu(), removed.cpu(), backend="reference")
    out = linear_impute(x, removed, backend=backend)
    assert rel_err(out, torch.where(full.cpu(), u, x.cpu())) <= 1e-6
    with pytest.raises(ValueError, match="removed must be"):
        linear_impute(x, removed[:, :4], backend=backend)


@pytest.mark.parametrize("layout", ["scattered", "blob and scattered", "dense"])
def test_small_holes_direct_and_large_ones_iterative(backend_device, layout):
    """The C++ backend solves connected holes of up to 32 pixels directly (closed form for 1 and 2,
    Cholesky up to 32) and the rest by CG, or everything by CG where small holes are few; every mix
    equals the sparse direct solve, on images whose holes touch the border."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 48, 40, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 48, 40, generator=g) < (0.6 if layout == "dense" else 0.15)
    if layout == "blob and scattered":
        removed[:, 10:20, 5:17] = True  # one hole of 120 pixels among the scattered ones
        removed[:, 0:5, 0:6] = True  # and a 30-pixel one (at least) in the corner
    out = noisy_linear_impute(x.to(device), removed.to(device), noise=0.0, backend=backend)
    ref = noisy_linear_impute(x, removed, noise=0.0, backend="reference")
    assert rel_err(out.cpu(), ref) <= 1e-7


def test_equals_quantus_noisy_linear_imputation(backend_device):
    """Quantus 0.6 builds the same system with lil_matrix and spsolve, one image at a time."""
    perturb = pytest.importorskip("quantus.functions.perturb_func")
    backend, device = backend_device
    x, removed = _case(3, 3, 12, 10, 0.6, False, torch.float64, device, 7)
    out = noisy_linear_impute(x, removed, noise=0.0, backend=backend)
    for i in range(3):
        idx = np.flatnonzero(removed[i].cpu().numpy().ravel())
        q = perturb.noisy_linear_imputation(x[i].cpu().numpy(), idx, noise=0.0)
        assert rel_err(out[i], torch.from_numpy(q)) <= 1e-6


def test_weighted_mean_of_neighbours(backend_device):
    """One removed pixel is the weighted mean of its in-image neighbours (1/6 edge, 1/12 corner)."""
    backend, device = backend_device
    x = torch.arange(1.0, 26.0, dtype=torch.float64, device=device).reshape(1, 1, 5, 5) ** 1.5
    removed = torch.zeros(1, 5, 5, dtype=torch.bool, device=device)
    removed[0, 2, 2] = removed[0, 0, 0] = True
    out = noisy_linear_impute(x, removed, noise=0.0, backend=backend)
    v = x[0, 0]
    centre = (v[1, 2] + v[3, 2] + v[2, 1] + v[2, 3]) / 6 + (v[1, 1] + v[1, 3] + v[3, 1] + v[3, 3]) / 12
    corner = (v[0, 1] / 6 + v[1, 0] / 6 + v[1, 1] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    torch.testing.assert_close(out[0, 0, 2, 2], centre)
    torch.testing.assert_close(out[0, 0, 0, 0], corner)


def test_edge_cases(backend_device):
    backend, device = backend_device
    x, _ = _case(2, 3, 6, 7, 0.0, False, torch.float64, device, 3)
    none = torch.zeros(2, 6, 7, dtype=torch.bool, device=device)
    assert torch.equal(noisy_linear_impute(x, none, noise=0.0, backend=backend), x)
    every = torch.ones(2, 6, 7, dtype=torch.bool, device=device)  # no known pixel: zeros (plus noise)
    assert torch.equal(noisy_linear_impute(x, every, noise=0.0, backend=backend), torch.zeros_like(x))
    one_pixel = torch.rand(1, 2, 1, 1, dtype=torch.float64, device=device)
    assert torch.equal(noisy_linear_impute(one_pixel, torch.ones(1, 1, 1, dtype=torch.bool, device=device),
                                           noise=0.0, backend=backend), torch.zeros_like(one_pixel))
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    mask = torch.zeros(2, 6, 7, dtype=torch.bool, device=device)
    mask[0, 0, 1] = True
    assert torch.isnan(noisy_linear_impute(nan, mask, noise=0.0, backend=backend)[0, 0, 0, 1])  # NaN propagates


def test_noise_seeded_and_only_on_removed_pixels(backend_device):
    backend, device = backend_device
    x, removed = _case(2, 3, 8, 8, 0.5, False, torch.float32, device, 4)
    clean = noisy_linear_impute(x, removed, noise=0.0, backend=backend)
    a = noisy_linear_impute(x, removed, noise=0.05, generator=3, backend=backend)
    b = noisy_linear_impute(x, removed, noise=0.05, generator=3, backend=backend)
    assert torch.equal(a, b)
    full = removed.unsqueeze(1).expand_as(x)
    diff = (a - clean)[full]
    assert torch.equal((a - clean)[~full], torch.zeros_like(x[~full]))
    assert 0.03 < diff.std().item() < 0.07
    expected = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(diff, expected.to(device)[full], atol=1e-5, rtol=1e-4)
    given = torch.full_like(x, 0.25)
    torch.testing.assert_close(noisy_linear_impute(x, removed, noise=given, backend=backend)[full],
                               clean[full] + 0.25)


def test_gradients_and_compile(backend_device):
    backend, device = backend_device
    x, removed = _case(2, 2, 5, 4, 0.5, False, torch.float64, device, 5)
    xr = x.clone().requires_grad_()
    fast = backend == "triton" and device == "cpu"  # the interpreter runs ~0.1 s per CG iteration
    assert torch.autograd.gradcheck(lambda a: noisy_linear_impute(a, removed, noise=0.0, backend=backend), (xr,),
                                    fast_mode=fast)
    rhs = torch.rand(2, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: stencil_solve(b, removed, backend=backend), (rhs,), fast_mode=fast)
    f = lambda a: noisy_linear_impute(a, removed, noise=0.0, backend=backend).sum((1, 2, 3))  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))


def test_inputs_not_modified_and_non_contiguous(backend_device):
    backend, device = backend_device
    x, removed = _case(2, 3, 7, 6, 0.4, True, torch.float32, device, 6)
    xt, mt = x.transpose(2, 3), removed.transpose(2, 3)
    saved, saved_mask = xt.clone(), mt.clone()
    out = noisy_linear_impute(xt, mt, noise=0.0, backend=backend)
    ref = noisy_linear_impute(xt.contiguous().double().cpu(), mt.contiguous().cpu(), noise=0.0, backend="reference")
    assert rel_err(out, ref) <= TOL[torch.float32]
    assert torch.equal(xt, saved) and torch.equal(mt, saved_mask)


def test_bad_arguments():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="removed must be"):
        noisy_linear_impute(x, torch.zeros(2, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="removed must be bool"):
        noisy_linear_impute(x, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="x must be 4-D"):
        noisy_linear_impute(x[0], torch.zeros(3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise must be"):
        noisy_linear_impute(x, torch.zeros(2, 4, 4, dtype=torch.bool), noise=-1.0)
    with pytest.raises(ValueError, match="noise of shape"):
        noisy_linear_impute(x, torch.zeros(2, 4, 4, dtype=torch.bool), noise=torch.zeros(5))
    with pytest.raises(ValueError, match="tol must be"):
        stencil_solve(x, torch.zeros(2, 4, 4, dtype=torch.bool), tol=0.0)
    with pytest.raises(ValueError, match="max_iter must be"):
        stencil_solve(x, torch.zeros(2, 4, 4, dtype=torch.bool), max_iter=0)
    with pytest.raises(TypeError, match="generator must be"):
        noisy_linear_impute(x, torch.zeros(2, 4, 4, dtype=torch.bool), generator="seed")


def test_warns_when_max_iter_runs_out(fast_backend_device):
    backend, device = fast_backend_device
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    removed = (((yy - 16) ** 2 + (xx - 16) ** 2) < 200).unsqueeze(0).to(device)
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64, device=device)
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        noisy_linear_impute(x, removed, noise=0.0, max_iter=2, backend=backend)
