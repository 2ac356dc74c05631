"""fastattr.ops.simplex_qp (SPEC §5.1) on every backend: agreement with the reference, cvxpy as the
oracle, the KKT conditions checked directly, degenerate G, layouts, dtypes, torch.compile, errors."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastattr.ops import simplex_qp
from fastattr.reference.simplex_qp import kkt_residual, objective, simplex_qp as reference_qp
from tests.conftest import TOL, rel_err


def _interpreted(backend, device):
    return backend == "triton" and device == "cpu"


def _psd(B, k, m=None, ridge=0.0, seed=0, device="cpu", dtype=torch.float64):
    """``ΓᵀΓ/m (+ ridge I)`` with ``Γ [B, m, k]`` correlated across columns, as AGG's ``G`` is."""
    g = torch.Generator().manual_seed(seed)
    m = 2 * k + 3 if m is None else m
    gamma = torch.randn(B, m, k, generator=g, dtype=torch.float64) + torch.randn(B, m, 1, generator=g,
                                                                                  dtype=torch.float64)
    G = gamma.mT @ gamma / m + ridge * torch.eye(k, dtype=torch.float64)
    return G.to(device=device, dtype=dtype)


def _rand(shape, seed, device="cpu", dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


def _scale(G, c=None):
    s = G.double().abs().amax((1, 2)).cpu()
    return s if c is None else s + c.double().abs().amax(-1).cpu()


def _assert_objective_close(G, w, w_ref, c=None, tol=1e-6):
    G, w, w_ref = G.double().cpu(), w.double().cpu(), w_ref.double().cpu()
    c = None if c is None else c.double().cpu()
    f, f_ref = objective(G, w, c), objective(G, w_ref, c)
    bound = tol * torch.maximum(f_ref.abs(), _scale(G, c))
    assert ((f - f_ref).abs() <= bound).all(), (f - f_ref).abs().max().item()


def _assert_kkt(G, w, c=None, tol=1e-7, support=1e-6):
    """ω on the simplex; with ``g = 2Gω + c`` and ``ν = ωᵀg``: ``g_i = ν`` where ``ω_i > support``
    and ``g_i ≥ ν`` everywhere (to ``tol`` times the gradient's scale)."""
    G, w = G.double().cpu(), w.double().cpu()
    c = None if c is None else c.double().cpu()
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0], dtype=torch.float64), rtol=0, atol=1e-12)
    g = 2 * torch.einsum("bij,bj->bi", (G + G.mT) / 2, w) + (0 if c is None else c)
    nu = (w * g).sum(-1, keepdim=True)
    scale = (2 * G.abs().amax((1, 2)) + (0 if c is None else c.abs().amax(-1)))[:, None]
    on = w > support
    assert ((g - nu).abs() <= tol * scale)[on].all()
    assert (g >= nu - tol * scale).all()
    assert (kkt_residual(G, w, c) <= 1e-8).all()


def _examples(backend, device):
    return 4 if _interpreted(backend, device) else 25


def test_matches_reference_random(backend_device):
    backend, device = backend_device
    small = _interpreted(backend, device)

    @settings(max_examples=_examples(backend, device), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        B=st.integers(1, 3 if small else 12),
        k=st.sampled_from([1, 2, 3, 5, 7, 12] if small else [1, 2, 3, 5, 7, 12, 20, 33, 64]),
        with_c=st.booleans(),
        scale=st.sampled_from([1e-3, 1.0, 1e4]),
        dtype=st.sampled_from([torch.float32, torch.float64]),
        seed=st.integers(0, 10_000),
    )
    def check(B, k, with_c, scale, dtype, seed):
        G = _psd(B, k, ridge=0.2, seed=seed, device=device) * scale
        c = _rand((B, k), seed + 1, device, scale=scale) if with_c else None
        w = simplex_qp(G.to(dtype), None if c is None else c.to(dtype), backend=backend)
        w_ref = w if (backend, dtype) == ("reference", torch.float64) else reference_qp(G, c)
        assert w.shape == (B, k) and w.dtype == dtype and w.device == G.device
        _assert_objective_close(G, w, w_ref, c, TOL[dtype])
        assert rel_err(w, w_ref) < TOL[dtype]  # G positive definite: the optimum is unique

    check()


def test_kkt_conditions(backend_device):
    backend, device = backend_device
    small = _interpreted(backend, device)
    for k, m in [(16, 8)] if small else [(7, 50), (7, 3), (16, 8), (40, 20)]:  # (k, rank)
        B = 2 if small else 16
        G = _psd(B, k, m=m, seed=k + m, device=device)
        c = _rand((B, k), 5, device, scale=0.5)
        for cc in (None, c):
            w = simplex_qp(G, cc, backend=backend)
            _assert_kkt(G, w, cc)
            _assert_objective_close(G, w, reference_qp(G, cc), cc)


@pytest.mark.parametrize("k", [2, 3, 7, 16, 32])
def test_cvxpy_oracle(backend_device, k):
    cp = pytest.importorskip("cvxpy")
    backend, device = backend_device
    B = 1 if _interpreted(backend, device) else 6
    G = _psd(B, k, m=max(2, k // 2) if k > 8 else None, seed=100 + k)
    # Each G twice: without and with a linear term (one call, so the interpreter runs it once).
    G2, c2 = torch.cat([G, G]), torch.cat([torch.zeros(B, k, dtype=torch.float64), _rand((B, k), 200 + k, scale=0.3)])
    w = simplex_qp(G2.to(device), c2.to(device), backend=backend)
    f = objective(G2, w.cpu(), c2)
    for b in range(2 * B):
        x = cp.Variable(k)
        expr = cp.quad_form(x, cp.psd_wrap(G2[b].numpy())) + c2[b].numpy() @ x
        problem = cp.Problem(cp.Minimize(expr), [x >= 0, cp.sum(x) == 1])
        problem.solve(solver=cp.CLARABEL)
        bound = 1e-6 * max(1.0, abs(problem.value))
        assert abs(f[b].item() - problem.value) <= bound, (b, f[b].item(), problem.value)


def test_degenerate_rank_deficient_and_duplicates(backend_device):
    backend, device = backend_device
    B = 2 if _interpreted(backend, device) else 16
    # Rank 2 in k = 7: the optimum is a face, not a point.
    G = _psd(B, 7, m=2, seed=1, device=device)
    w = simplex_qp(G, backend=backend)
    _assert_kkt(G, w)
    _assert_objective_close(G, w, reference_qp(G))
    # Duplicated methods (columns 2 and 5 identical): any split between them is optimal, but their
    # total weight, the objective and the other weights are unique.
    base = _psd(B, 6, seed=2, ridge=0.1)
    idx = torch.tensor([0, 1, 2, 3, 4, 2])
    G = base[:, idx][:, :, idx].contiguous().to(device)
    c = _rand((B, 6), 3, scale=0.2)[:, idx].contiguous().to(device)
    for cc in (None, c):
        w, w_ref = simplex_qp(G, cc, backend=backend).cpu(), reference_qp(G, cc).cpu()
        _assert_kkt(G, w, cc)
        _assert_objective_close(G, w, w_ref, cc)
        merged = torch.cat([w[:, :2], w[:, 2:3] + w[:, 5:], w[:, 3:5]], -1)
        merged_ref = torch.cat([w_ref[:, :2], w_ref[:, 2:3] + w_ref[:, 5:], w_ref[:, 3:5]], -1)
        torch.testing.assert_close(merged, merged_ref, rtol=0, atol=1e-7)


def test_degenerate_k1_zero_and_linear(backend_device):
    backend, device = backend_device
    one = simplex_qp(torch.tensor([[[2.0]], [[0.0]]], device=device), backend=backend)
    torch.testing.assert_close(one.cpu(), torch.ones(2, 1))
    one_c = simplex_qp(torch.ones(1, 1, 1, device=device), torch.tensor([[-3.0]], device=device), backend=backend)
    torch.testing.assert_close(one_c.cpu(), torch.ones(1, 1))
    # G = 0: every simplex point is optimal; the convention is the uniform weights.
    zero = simplex_qp(torch.zeros(3, 5, 5, dtype=torch.float64, device=device), backend=backend)
    torch.testing.assert_close(zero.cpu(), torch.full((3, 5), 0.2, dtype=torch.float64))
    # G = 0 with c: uniform over argmin c.
    c = torch.tensor([[1.0, -2.0, 0.0, -2.0], [3.0, 1.0, 2.0, 0.5]], dtype=torch.float64, device=device)
    lin = simplex_qp(torch.zeros(2, 4, 4, dtype=torch.float64, device=device), c, backend=backend)
    torch.testing.assert_close(lin.cpu(), torch.tensor([[0, 0.5, 0, 0.5], [0, 0, 0, 1.0]], dtype=torch.float64))
    # A rank-one G = vvᵀ with a vertex of zero cost: that vertex is the optimum.
    v = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    w = simplex_qp(torch.outer(v, v)[None].to(device), backend=backend)
    torch.testing.assert_close(w.cpu(), torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    # A dominant c on an otherwise flat G: the vertex of min c.
    w = simplex_qp(torch.ones(1, 4, 4, dtype=torch.float64, device=device),
                   torch.tensor([[0.0, -5.0, 1.0, 2.0]], dtype=torch.float64, device=device), backend=backend)
    torch.testing.assert_close(w.cpu(), torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))


def test_k64(backend_device):
    backend, device = backend_device
    small = _interpreted(backend, device)
    G = _psd(1 if small else 8, 64, m=50, seed=2)  # rank 50
    if not small:
        G = torch.cat([_psd(8, 64, m=200, seed=1), G])  # and full rank
    G = G.to(device)
    w = simplex_qp(G, backend=backend)
    _assert_kkt(G, w)
    _assert_objective_close(G, w, reference_qp(G))


def test_scale_symmetry_and_batch_independence(fast_backend_device):
    backend, device = fast_backend_device
    G = _psd(4, 6, seed=7, ridge=0.05, device=device)
    skew = _rand((4, 6, 6), 8, device)
    # Scaling G changes nothing; only its symmetric part matters; each example is solved on its own.
    w = simplex_qp(torch.cat([G, G * 1e-8, G * 1e8, G + skew - skew.mT]), backend=backend)
    for part in w.split(4)[1:]:
        torch.testing.assert_close(part, w[:4], rtol=0, atol=1e-7)
    torch.testing.assert_close(simplex_qp(G[2:3], backend=backend), w[2:3], rtol=0, atol=1e-9)


def test_non_contiguous_inputs(backend_device):
    backend, device = backend_device
    G = _psd(6, 5, seed=9, ridge=0.1, device=device)
    c = _rand((5, 6), 10, device).mT  # [6, 5], not contiguous
    big = torch.zeros(6, 10, 5, dtype=torch.float64, device=device)
    big[:, ::2] = G
    strided = big[:, ::2]
    transposed = G.mT.contiguous().mT
    for view in (strided, transposed, G[::2]):
        assert not view.is_contiguous()
        cv = c[: view.shape[0]]
        torch.testing.assert_close(simplex_qp(view, cv, backend=backend).cpu(),
                                   reference_qp(view.contiguous(), cv.contiguous()).cpu(), rtol=0, atol=1e-7)


def test_inputs_not_modified(backend_device):
    backend, device = backend_device
    G = _psd(3, 4, seed=11, device=device) + _rand((3, 4, 4), 12, device, scale=0.1)  # not symmetric
    c = _rand((3, 4), 13, device)
    G0, c0 = G.clone(), c.clone()
    simplex_qp(G, c, backend=backend)
    assert torch.equal(G, G0) and torch.equal(c, c0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_dtypes(backend_device, dtype):
    backend, device = backend_device
    G = _psd(3, 5, seed=14, ridge=0.1, device=device).to(dtype)
    c = _rand((3, 5), 15, device, scale=0.2).to(dtype)
    w = simplex_qp(G, c, backend=backend)
    assert w.dtype == dtype
    w_ref = reference_qp(G.double(), c.double())  # the same (rounded) data in float64
    assert rel_err(w, w_ref) < TOL[dtype]


def test_empty_batch(backend_device):
    backend, device = backend_device
    out = simplex_qp(torch.empty(0, 4, 4, device=device), backend=backend)
    assert out.shape == (0, 4)


def test_torch_compile_fullgraph(backend_device):
    backend, device = backend_device

    def f(G, c):
        return simplex_qp(G * 2.0, c, backend=backend) * 3.0

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    G = _psd(2, 4, seed=16, ridge=0.1, device=device, dtype=torch.float32)
    c = _rand((2, 4), 17, device, dtype=torch.float32)
    torch.testing.assert_close(compiled(G, c), f(G, c))


def test_no_backward(backend_device):
    backend, device = backend_device
    G = _psd(2, 3, seed=18, device=device).requires_grad_()
    w = simplex_qp(G, backend=backend)
    with pytest.raises(RuntimeError, match="no backward"):
        w.sum().backward()
    assert simplex_qp(G.detach(), backend=backend).requires_grad is False


def test_reference_warns_at_the_iteration_cap():
    with pytest.warns(RuntimeWarning, match="did not reach"):
        reference_qp(_psd(2, 5, seed=19), max_iter=1)


def test_bad_arguments():
    G = _psd(2, 3)
    with pytest.raises(TypeError, match="G must be a torch.Tensor"):
        simplex_qp(G.tolist())
    with pytest.raises(TypeError, match="G must be a floating"):
        simplex_qp(torch.ones(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"G must be a batch of square matrices \[B, k, k\]"):
        simplex_qp(G[0])
    with pytest.raises(ValueError, match="square"):
        simplex_qp(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="k <= 64"):
        simplex_qp(torch.eye(65)[None])
    with pytest.raises(ValueError, match="k <= 64"):
        simplex_qp(torch.zeros(2, 0, 0))
    for bad in (float("nan"), float("inf")):
        G_bad = G.clone()
        G_bad[1, 0, 2] = bad
        with pytest.raises(ValueError, match="G must be finite"):
            simplex_qp(G_bad, backend="reference")
        with pytest.raises(ValueError, match="c must be finite"):
            simplex_qp(G, torch.tensor([[0.0, 1.0, bad], [0.0, 0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"c must be \[B, k\]"):
        simplex_qp(G, torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"c must be \[B, k\]"):
        simplex_qp(G, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="c must be a floating"):
        simplex_qp(G, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="backend"):
        simplex_qp(G, backend="gpu")
    # A direct call of the custom op is checked too.
    with pytest.raises(ValueError, match="square"):
        torch.ops.fastattr.simplex_qp(torch.zeros(2, 3, 4), None, None)
    with pytest.raises(ValueError, match="G must be finite"):
        torch.ops.fastattr.simplex_qp(torch.full((1, 2, 2), float("nan")), None, None)
