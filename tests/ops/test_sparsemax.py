"""fastattr.sparsemax on every backend against the sorted reference, its properties, gradients,
edge cases (SPEC §1) and torch.compile."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattr
from fastattr import reference
from tests.conftest import TOL, rel_err

# The interpreter runs Triton kernels on CPU slowly; keep its property-based runs smaller.
def _examples(backend, device):
    return 12 if (backend == "triton" and device == "cpu") else 60


def _rand(shape, dtype=torch.float64, device="cpu", scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def test_matches_reference_random_shapes(backend_device):
    backend, device = backend_device

    @settings(max_examples=_examples(backend, device), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
        last=st.sampled_from([1, 2, 3, 7, 64, 129, 1000, 2500]),
        dim_pick=st.integers(0, 3),
        scale=st.sampled_from([0.01, 0.3, 1.0, 5.0, 100.0]),
        dtype=st.sampled_from([torch.float32, torch.float64]),
        seed=st.integers(0, 10_000),
    )
    def check(shape, last, dim_pick, scale, dtype, seed):
        full = tuple(shape) + (last,)
        if math.prod(full) > 200_000:
            full = full[-2:]
        x = _rand(full, dtype, device, scale, seed)
        dim = dim_pick % x.dim() - x.dim()
        out = fastattr.sparsemax(x, dim, backend=backend)
        ref = reference.sparsemax(x.double(), dim)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert rel_err(out, ref) < TOL[dtype]

    check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_properties(backend_device, dtype):
    backend, device = backend_device
    x = _rand((50, 300), dtype, device, scale=2.0, seed=1)
    p = fastattr.sparsemax(x, backend=backend).double().cpu()
    z = x.double().cpu()
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(50, dtype=torch.float64), rtol=0, atol=1e-5)
    # Support rule: inside the support p = z - tau with one tau per row; outside z <= tau.
    support = p > 0
    tau = ((z * support).sum(-1) - 1) / support.sum(-1)
    inside = torch.where(support, z - p, tau[:, None])
    torch.testing.assert_close(inside, tau[:, None].expand_as(z), rtol=0, atol=1e-5)
    assert (z[~support] <= (tau[:, None].expand_as(z)[~support] + 1e-5)).all()
    # Sparse for a spread-out input: not everything is in the support.
    assert support.sum() < support.numel() // 2


def test_ties_are_all_in_or_all_out(backend_device):
    backend, device = backend_device
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (64, 33), generator=g).double().div(4).to(device)
    p = fastattr.sparsemax(x, backend=backend).cpu()
    xc = x.cpu()
    for row in range(x.shape[0]):
        for value in xc[row].unique():
            sel = p[row][xc[row] == value]
            assert torch.allclose(sel, sel[0].expand_as(sel), rtol=0, atol=1e-12)
    # A row of identical values is uniform.
    u = fastattr.sparsemax(torch.full((2, 7), 0.25, dtype=torch.float64, device=device), backend=backend)
    torch.testing.assert_close(u.cpu(), torch.full((2, 7), 1 / 7, dtype=torch.float64))


def test_known_values(backend_device):
    backend, device = backend_device
    x = torch.tensor([[1.0, 0.8, -1.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.5]], dtype=torch.float64, device=device)
    expected = torch.tensor([[0.6, 0.4, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(fastattr.sparsemax(x, backend=backend).cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_matches_reference(backend_device, dtype):
    backend, device = backend_device
    x = _rand((17, 90), dtype, device, seed=4).requires_grad_()
    g = _rand((17, 90), dtype, device, seed=5)
    (dx,) = torch.autograd.grad(fastattr.sparsemax(x, backend=backend), x, g)
    xr = x.detach().double().requires_grad_()
    (dref,) = torch.autograd.grad(reference.sparsemax(xr), xr, g.double())
    p = reference.sparsemax(x.detach().double())
    support = (p > 0).double()
    expected = (g.double() - (g.double() * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)) * support
    assert rel_err(dx, expected) < TOL[dtype]
    assert rel_err(dref, expected) < 1e-12


def test_gradcheck_float64(backend_device):
    backend, device = backend_device
    x = _rand((3, 8), torch.float64, "cpu", scale=0.7, seed=0)
    # Finite differences need every value away from the kink at tau.
    p = reference.sparsemax(x)
    tau = ((x * (p > 0)).sum(-1, keepdim=True) - 1) / (p > 0).sum(-1, keepdim=True)
    assert (x - tau).abs().min() > 1e-3 and ((p > 0).sum(-1) > 1).all()
    x = x.to(device).requires_grad_()
    fn = lambda t: fastattr.sparsemax(t, dim=-1, backend=backend)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-6)
    fn0 = lambda t: fastattr.sparsemax(t, dim=0, backend=backend)
    assert torch.autograd.gradcheck(fn0, (x.detach().T.contiguous().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_non_contiguous_and_dims(backend_device):
    backend, device = backend_device
    base = _rand((6, 40, 10), torch.float64, device, seed=7)
    views = [base.transpose(0, 2), base[:, ::3, :], base.permute(1, 2, 0)[..., 1:]]
    for v in views:
        assert not v.is_contiguous()
        for dim in range(v.dim()):
            torch.testing.assert_close(fastattr.sparsemax(v, dim, backend=backend).cpu(),
                                       reference.sparsemax(v, dim).cpu())


def test_input_is_not_modified(backend_device):
    backend, device = backend_device
    x = _rand((8, 100), torch.float32, device, seed=8).requires_grad_()
    before = x.detach().clone()
    y = fastattr.sparsemax(x, backend=backend)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.detach(), before)


def test_neg_inf_nan_and_inf(backend_device):
    backend, device = backend_device
    ninf, nan, inf = float("-inf"), float("nan"), float("inf")
    x = torch.tensor([
        [ninf, 1.0, 0.5, ninf],     # -inf gets 0
        [1.0, nan, 0.0, 2.0],       # NaN anywhere -> row NaN
        [ninf, ninf, ninf, ninf],   # all -inf -> row NaN
        [0.0, inf, 1.0, 2.0],       # +inf -> row NaN (as softmax)
        [ninf, 0.3, ninf, ninf],    # single finite entry -> one-hot
    ], dtype=torch.float64, device=device)
    p = fastattr.sparsemax(x, backend=backend).cpu()
    torch.testing.assert_close(p[0], torch.tensor([0.0, 0.75, 0.25, 0.0], dtype=torch.float64))
    assert torch.isnan(p[1]).all() and torch.isnan(p[2]).all() and torch.isnan(p[3]).all()
    torch.testing.assert_close(p[4], torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    ref = reference.sparsemax(x.cpu())
    torch.testing.assert_close(p, ref, equal_nan=True)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_huge_and_tiny_magnitudes(backend_device, scale):
    backend, device = backend_device
    for dtype in (torch.float32, torch.float64):
        if dtype == torch.float32 and scale == 1e-30:
            continue  # float32 subnormal range; the float64 case covers tiny values
        x = _rand((9, 50), dtype, device, seed=9) * scale
        p = fastattr.sparsemax(x, backend=backend)
        ref = reference.sparsemax(x.double())
        assert torch.isfinite(p).all()
        assert rel_err(p, ref) < TOL[dtype]
    # Tiny values: every entry lies within 1 of the max, so the result is close to uniform.
    tiny = fastattr.sparsemax(_rand((4, 10), torch.float64, device, scale=1e-30, seed=10), backend=backend)
    torch.testing.assert_close(tiny.cpu(), torch.full((4, 10), 0.1, dtype=torch.float64))


def test_single_element_empty_and_scalar(backend_device):
    backend, device = backend_device
    one = fastattr.sparsemax(torch.tensor([[-5.0], [7.0]], device=device), backend=backend)
    torch.testing.assert_close(one.cpu(), torch.ones(2, 1))
    for shape in [(0,), (0, 5), (3, 0), (2, 0, 4)]:
        e = fastattr.sparsemax(torch.empty(shape, device=device), backend=backend)
        assert e.shape == shape
    s = fastattr.sparsemax(torch.tensor(2.5, device=device), backend=backend)
    assert s.shape == () and s.item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_via_fp32(backend_device, dtype):
    """fp16/bf16 are computed in float32 (the Triton kernels in registers, the others on copies):
    forward and backward match float32 sparsemax on the same values, rounded once."""
    backend, device = backend_device
    for n in (200, 20_000):  # Triton: the on-chip and the multi-pass kernels
        x = _rand((8, n), dtype, device, scale=3.0, seed=11).requires_grad_()
        g = _rand((8, n), dtype, device, scale=1.0, seed=12)
        p = fastattr.sparsemax(x, backend=backend)
        (dx,) = torch.autograd.grad(p, x, g)
        assert p.dtype == dx.dtype == dtype
        x32 = x.detach().float().requires_grad_()
        p32 = reference.sparsemax(x32)
        (dx32,) = torch.autograd.grad(p32, x32, g.float())
        assert rel_err(p, p32) < TOL[dtype]
        assert rel_err(dx, dx32) < TOL[dtype]
        assert torch.equal(p > 0, p32.to(dtype) > 0)


def test_long_rows(fast_backend_device):
    """Rows of 1,000,000+ elements (the Triton multi-pass path; the cpp kernel is row-size agnostic)."""
    backend, device = fast_backend_device
    x = _rand((2, 1_000_003), torch.float32, device, scale=3.0, seed=12)
    x[1, 5] = 40.0  # one dominant entry: the support is a single element
    p = fastattr.sparsemax(x, backend=backend)
    ref = reference.sparsemax(x.double().cpu())
    assert rel_err(p, ref) < 1e-5
    assert p[1, 5].item() == 1.0 and (p[1].count_nonzero().item() == 1)


@pytest.mark.skipif(not fastattr._backend.cpp_available(), reason="the C++ extension is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_short_and_long_rows_give_the_same_bits(dtype):
    """The C++ kernel's stack-buffer path for rows of at most 64 entries and its general path for longer
    ones: a row padded with -inf past 64 entries (never a candidate) gets the same bits on its 64."""
    g = torch.Generator().manual_seed(21)
    for n, scale in [(64, 0.05), (64, 0.5), (64, 3.0), (64, 1e4), (1, 1.0), (17, 0.2), (63, 2.0)]:
        x = (torch.randn(500, n, generator=g, dtype=torch.float64) * scale).to(dtype)
        x[:50] = x[:50].round()  # ties
        padded = torch.cat([x, torch.full((500, 65 - n + 8), -torch.inf, dtype=dtype)], 1)
        short = fastattr.sparsemax(x, backend="cpp")
        long = fastattr.sparsemax(padded, backend="cpp")
        assert torch.equal(short, long[:, :n]) and not long[:, n:].any()
        assert rel_err(short, reference.sparsemax(x.double())) < (1e-5 if dtype == torch.float32 else 1e-12)


def test_backends_agree_bitwise_on_support(fast_backend_device):
    backend, device = fast_backend_device
    x = _rand((40, 513), torch.float64, device, scale=2.0, seed=13)
    p = fastattr.sparsemax(x, backend=backend).cpu()
    ref = reference.sparsemax(x.cpu())
    assert torch.equal(p > 0, ref > 0)


def test_torch_compile_fullgraph(backend_device):
    backend, device = backend_device

    def f(t):
        return fastattr.sparsemax(t * 2.0, dim=-1, backend=backend).sum(-1) + t.mean()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = _rand((5, 30), torch.float32, device, seed=14).requires_grad_()
    out = compiled(x)
    torch.testing.assert_close(out, f(x))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_torch_compile_inductor_cpu():
    x = _rand((8, 64), torch.float32, "cpu", seed=15)
    compiled = torch.compile(lambda t: fastattr.sparsemax(t + 1.0), fullgraph=True)
    torch.testing.assert_close(compiled(x), reference.sparsemax(x + 1.0))


@pytest.mark.skipif(not fastattr._backend.cpp_available(), reason="the C++ extension is not built")
def test_eager_calls_without_gradient_skip_the_dispatcher_but_tracing_sees_the_op():
    """A no-grad eager CPU call runs the C++ kernel directly: the same bits as the custom op, the backend
    still recorded; a traced call (make_fx's dispatch mode), a call needing a gradient and a call under
    vmap go through the op; a tensor with a forward-mode tangent runs the reference."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from fastattr._backend import record_backends

    x = _rand((6, 5, 16), torch.float32, "cpu", seed=16)
    op = torch.ops.fastattr.sparsemax.default
    for dim in (-1, 1, 0):
        with record_backends() as used:
            direct = fastattr.sparsemax(x, dim, backend="cpp")
        assert torch.equal(direct, op(x, dim % 3, "cpp")) and used == {"cpp"}
    assert fastattr.sparsemax(x[:, ::2], -1, backend="cpp").is_contiguous()
    graph = make_fx(lambda t: fastattr.sparsemax(t, -1, backend="cpp"))(x).graph
    assert any(node.target is op for node in graph.nodes)
    g = x.clone().requires_grad_(True)
    assert fastattr.sparsemax(g, -1, backend="cpp").grad_fn is not None
    batched = torch.vmap(lambda t: fastattr.sparsemax(t, -1, backend="cpp"))(x)
    assert torch.equal(batched, fastattr.sparsemax(x, -1, backend="cpp"))
    traced = torch.jit.trace(lambda t: fastattr.sparsemax(t * 2.0, -1, backend="cpp"), x)
    assert "fastattr::sparsemax" in str(traced.graph)
    y = _rand((6, 5, 16), torch.float32, "cpu", seed=17)
    assert torch.equal(traced(y), fastattr.sparsemax(y * 2.0, -1, backend="cpp"))
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():  # a dual tensor runs the reference, which forward AD differentiates; a plain one the op
        dual = fastattr.sparsemax(fwAD.make_dual(x, torch.ones_like(x)), -1, backend="cpp")
        assert torch.equal(fwAD.unpack_dual(dual).primal, fastattr.sparsemax(x, -1, backend="reference"))
        assert torch.equal(fastattr.sparsemax(x, -1, backend="cpp"), op(x, 2, "cpp"))


@pytest.mark.skipif(not fastattr._backend.cpp_available(), reason="the C++ extension is not built")
def test_backward_op_casts_a_gradient_of_another_dtype():
    p = fastattr.sparsemax(_rand((7, 16), torch.float64, "cpu", seed=18), backend="cpp")
    g = _rand((7, 16), torch.float32, "cpu", seed=19)
    got = torch.ops.fastattr.sparsemax_backward(p, g, -1, "cpp")
    want = reference.sparsemax_backward(p.float(), g, -1)
    assert got.dtype == torch.float32 and rel_err(got, want) < 1e-6
    got = torch.ops.fastattr.sparsemax_backward(p.float(), g.double(), -1, "cpp")
    assert got.dtype == torch.float64 and rel_err(got, reference.sparsemax_backward(p, g.double(), -1)) < 1e-6


def test_bad_arguments():
    with pytest.raises(TypeError, match="floating point"):
        fastattr.sparsemax(torch.arange(5))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fastattr.sparsemax([1.0, 2.0])
    with pytest.raises(IndexError, match="dim"):
        fastattr.sparsemax(torch.randn(3, 4), dim=2)
    with pytest.raises(TypeError, match="dim"):
        fastattr.sparsemax(torch.randn(3, 4), dim=1.0)
    with pytest.raises(ValueError, match="backend"):
        fastattr.sparsemax(torch.randn(3, 4), backend="cuda")
