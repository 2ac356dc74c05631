"""fastattr.ops.conv2d_input_grad on every CPU backend against torch's ``convolution_backward`` (strides, padding,
dilation, one to four input channels, float32 and float64; the sparse kernel on wide layers with gradients of every
density, its vector and scalar paths, more than 64 output channels), the reference written out against autograd,
and ``fastattr.ops.conv.conv2d``: torch's forward bit for bit, gradients equal to torch's (weight and bias too,
double backward; torch's own where the gradient is too dense for the sparse kernel), weight gradients skipped where
the backward does not use them, errors."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from fastattr import use_backend
from fastattr.ops import conv2d_input_grad
import fastattr.ops.conv as conv_module
from fastattr.ops.conv import MAX_CHANNELS, conv2d, conv_beats_torch
from fastattr.reference.conv import conv2d_input_grad as reference


def _torch(g, x, w, s, p, d, mask=(True, False, False)):
    return torch.ops.aten.convolution_backward(g, x, w, None, list(s), list(p), list(d), False, [0, 0], 1,
                                               list(mask))


def _geometry(draw, kernel: int, stride: int, dilation: int, padding: int, side: int):
    """Kernel, stride, dilation, padding pairs up to these bounds, and an input size (h, w) they fit."""
    k = (draw(st.integers(1, kernel)), draw(st.integers(1, kernel)))
    s = (draw(st.integers(1, stride)), draw(st.integers(1, stride)))
    d = (draw(st.integers(1, dilation)), draw(st.integers(1, dilation)))
    p = (draw(st.integers(0, padding)), draw(st.integers(0, padding)))
    h = draw(st.integers(max(1, d[0] * (k[0] - 1) + 1 - 2 * p[0]), side))
    w = draw(st.integers(max(1, d[1] * (k[1] - 1) + 1 - 2 * p[1]), side))
    return k, s, d, p, h, w


@st.composite
def _configs(draw):
    k, s, d, p, h, w = _geometry(draw, 5, 3, 3, 4, 14)
    return (draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 20)), h, w), k, s, p, d, \
        draw(st.integers(0, 2 ** 16)), draw(st.sampled_from([torch.float32, torch.float64]))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=_configs())
def test_equals_torchs_input_gradient(backend, config):
    (n, ci, co, h, w), k, s, p, d, seed, dtype = config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ci, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(co, ci, *k, generator=gen, dtype=dtype)
    g = torch.randn(F.conv2d(x, weight, None, s, p, d).shape, generator=gen, dtype=dtype)
    expected = _torch(g, x, weight, s, p, d)[0]
    got = conv2d_input_grad(g, weight, (h, w), s, p, d, backend=backend)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * float(expected.abs().max()))


@st.composite
def _sparse_configs(draw):
    k, s, d, p, h, w = _geometry(draw, 4, 2, 2, 2, 13)
    ci = draw(st.sampled_from([8, 16, 24]))
    co = draw(st.sampled_from([8, 32, 72]))             # 72: more than one 64-channel mask word
    return (draw(st.integers(1, 5)), ci, co, h, w), k, s, p, d, draw(st.floats(0.0, 1.0)), \
        draw(st.integers(0, 2 ** 16)), draw(st.sampled_from([torch.float32, torch.float64]))


@settings(max_examples=60, deadline=None)
@given(config=_sparse_configs())
def test_sparse_kernel_equals_torchs_input_gradient(config):
    """Wider inputs take the sparse kernel on the C++ backend: gradients with a fraction ``density`` of nonzeros
    (0: all zero; 1: dense) give torch's input gradient to rounding."""
    (n, ci, co, h, w), k, s, p, d, density, seed, dtype = config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ci, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(co, ci, *k, generator=gen, dtype=dtype)
    shape = F.conv2d(x, weight, None, s, p, d).shape
    g = torch.randn(shape, generator=gen, dtype=dtype) * (torch.rand(shape, generator=gen) < density)
    expected = _torch(g, x, weight, s, p, d)[0]
    got = conv2d_input_grad(g, weight, (h, w), s, p, d, backend="cpp")
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * max(1.0, float(expected.abs().max())))


def test_a_non_finite_weight_takes_the_dense_kernel(monkeypatch):
    """A skipped zero gradient times an infinite weight would lose torch's NaN: the sparse kernel declines such a
    weight and the dense kernel runs, whose NaNs are torch's."""
    kernels = []
    run = conv_module.run_cpp
    monkeypatch.setattr(conv_module, "run_cpp", lambda name, *a, **k: (kernels.append(name), run(name, *a, **k))[1])
    gen = torch.Generator().manual_seed(11)
    weight = torch.randn(16, 8, 3, 3, generator=gen)
    sparse = torch.randn(4, 16, 6, 6, generator=gen) * (torch.rand(4, 16, 6, 6, generator=gen) < 0.1)
    weight[3, 2, 1, 1] = float("inf")
    got = conv2d_input_grad(sparse, weight, (6, 6), 1, 1, backend="cpp")
    want = _torch(sparse, torch.empty(4, 8, 6, 6), weight, (1, 1), (1, 1), (1, 1))[0]
    assert kernels == ["conv2d_input_grad_sparse", "conv2d_input_grad"]
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-4)


def test_sparse_kernel_is_batch_and_thread_invariant():
    """An example's gradient is the same bits whatever the batch it comes in and the thread count."""
    gen = torch.Generator().manual_seed(14)
    g = torch.randn(7, 32, 8, 8, generator=gen) * (torch.rand(7, 32, 8, 8, generator=gen) < 0.2)
    weight = torch.randn(32, 16, 3, 3, generator=gen)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            whole = conv2d_input_grad(g, weight, (8, 8), 1, 1, backend="cpp")
            one_by_one = torch.cat([conv2d_input_grad(g[i:i + 1], weight, (8, 8), 1, 1, backend="cpp")
                                    for i in range(7)])
            assert torch.equal(whole, one_by_one)
    finally:
        torch.set_num_threads(threads)


def test_sparse_kernel_propagates_nan_and_infinite_gradients():
    gen = torch.Generator().manual_seed(12)
    weight = torch.randn(8, 8, 3, 3, generator=gen)
    g = torch.randn(2, 8, 5, 5, generator=gen) * (torch.rand(2, 8, 5, 5, generator=gen) < 0.2)
    g[0, 1, 2, 2], g[1, 3, 0, 4] = float("nan"), float("inf")
    got = conv2d_input_grad(g, weight, (5, 5), 1, 1, backend="cpp")
    want = _torch(g, torch.empty(2, 8, 5, 5), weight, (1, 1), (1, 1), (1, 1))[0]
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-5)


def test_the_reference_is_the_gradient_of_the_convolution():
    """The written-out sums against autograd through F.conv2d in float64 (stride, padding and dilation at once)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 11, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(5, 2, 3, 4, dtype=torch.float64, generator=gen)
    y = F.conv2d(x, weight, None, (2, 1), (1, 2), (2, 1))
    g = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    (expected,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(reference(g, weight, (11, 9), (2, 1), (1, 2), (2, 1)), expected, rtol=1e-13, atol=1e-13)


def test_non_contiguous_arguments_are_read_not_modified():
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(6, 8, 8, 16, generator=gen).permute(0, 3, 1, 2)   # [6, 16, 8, 8], not contiguous
    weight = torch.randn(3, 16, 1, 3, generator=gen).permute(1, 2, 0, 3)  # [16, 1, 3, 3], not contiguous
    g0, w0 = g.clone(), weight.clone()
    got = conv2d_input_grad(g, weight, (8, 8), 1, 1, backend="cpp")
    expected = _torch(g.contiguous(), torch.empty(6, 1, 8, 8), weight.contiguous(), (1, 1), (1, 1), (1, 1))[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(g, g0) and torch.equal(weight, w0)


def _layer(ci=1, dtype=torch.float32, bias=True):
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(16, ci, 3, 3, generator=gen, dtype=dtype, requires_grad=True)
    b = torch.randn(16, generator=gen, dtype=dtype, requires_grad=True) if bias else None
    x = torch.rand(40, ci, 8, 8, generator=gen, dtype=dtype, requires_grad=True)
    return x, weight, b


def test_conv2d_forward_is_torchs_bit_for_bit_and_gradients_agree():
    x, weight, b = _layer()
    y = conv2d(x, weight, b, 1, 1)
    assert y.grad_fn is not None and type(y.grad_fn).__name__ == "_Conv2dBackward"
    expected = F.conv2d(x, weight, b, 1, 1)
    assert torch.equal(y, expected)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(6))
    got = torch.autograd.grad(y, (x, weight, b), g)
    want = torch.autograd.grad(expected, (x, weight, b), g)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * float(e.abs().max()))
    x.grad = weight.grad = b.grad = None
    (conv2d(x, weight, b, 1, 1) * g).sum().backward()   # .backward() reaches the parameters too
    for t, e in zip((x, weight, b), want):
        torch.testing.assert_close(t.grad, e, rtol=1e-5, atol=1e-5 * float(e.abs().max()))


def test_a_wide_layer_that_feeds_a_max_pool_takes_the_sparse_kernel(monkeypatch):
    """A 16 → 32-channel layer: behind a max pool its output gradient is mostly zero and, told so
    (``sparse_gradient``), it takes the sparse kernel (torch's input gradient to rounding); not told, torch's call."""
    kernels = []
    run = conv_module.run_cpp
    monkeypatch.setattr(conv_module, "run_cpp", lambda name, *a, **k: (kernels.append(name), run(name, *a, **k))[1])
    gen = torch.Generator().manual_seed(13)
    weight = torch.randn(32, 16, 3, 3, generator=gen) * 0.1
    bias = torch.randn(32, generator=gen)
    x = torch.randn(20, 16, 8, 8, generator=gen, requires_grad=True)
    assert conv_beats_torch(x, weight, sparse_gradient=True) and not conv_beats_torch(x, weight)
    assert type(conv2d(x, weight, bias, 1, 1).grad_fn).__name__ != "_Conv2dBackward"
    g = torch.randn(20, 32, 4, 4, generator=gen)
    (got,) = torch.autograd.grad(F.max_pool2d(conv2d(x, weight, bias, 1, 1, sparse_gradient=True), 2).relu(), x, g)
    (want,) = torch.autograd.grad(F.max_pool2d(F.conv2d(x, weight, bias, 1, 1), 2).relu(), x, g)
    assert kernels == ["conv2d_input_grad_sparse"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_double_backward_is_torchs():
    x, weight, b = _layer(dtype=torch.float64)
    x, weight = x[:3].detach().requires_grad_(), weight.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w_: conv2d(a, w_, None, 2, 1), (x, weight))
    assert torch.autograd.gradgradcheck(lambda a, w_: conv2d(a, w_, None, 2, 1), (x, weight))


def test_weight_gradients_only_where_the_backward_uses_them():
    """``autograd.grad(out, x)`` leaves the weight and bias alone, as torch's own convolution does: torch's
    backward runs only for gradients asked for."""
    from torch.profiler import profile

    x, weight, b = _layer()
    y = conv2d(x, weight, b, 1, 1).square().sum()
    with profile() as prof:
        (gx,) = torch.autograd.grad(y, x, retain_graph=True)
    assert not [e for e in prof.events() if e.name == "aten::convolution_backward"]
    with profile() as prof:
        gx2, gw = torch.autograd.grad(y, (x, weight))
    assert [e for e in prof.events() if e.name == "aten::convolution_backward"]
    assert torch.equal(gx, gx2)
    torch.testing.assert_close(gw, torch.autograd.grad(F.conv2d(x, weight, b, 1, 1).square().sum(), weight)[0],
                               rtol=1e-5, atol=1e-4)


def test_when_the_kernel_is_used():
    x, weight, b = _layer()
    assert conv_beats_torch(x, weight)
    assert not conv_beats_torch(x.detach(), weight)                    # no gradient needed: torch's call
    with torch.no_grad():
        assert not conv_beats_torch(x, weight)
    wide, wide_w, _ = _layer(ci=MAX_CHANNELS + 1)
    assert not conv_beats_torch(wide, wide_w)                          # oneDNN wins with more channels
    wide, wide_w, _ = _layer(ci=8)                                     # unless it feeds a max pool
    assert conv_beats_torch(wide, wide_w, sparse_gradient=True) and not conv_beats_torch(wide, wide_w)
    assert not conv_beats_torch(wide.double(), wide_w.double(), sparse_gradient=True)
    odd, odd_w, _ = _layer(ci=12)
    assert not conv_beats_torch(odd, odd_w, sparse_gradient=True)
    assert not conv_beats_torch(x.half(), weight.half())
    assert not conv_beats_torch(x, weight.double())
    with use_backend("reference"):
        assert not conv_beats_torch(x, weight)
        assert type(conv2d(x, weight, b, 1, 1).grad_fn).__name__ != "_Conv2dBackward"


def test_errors_name_the_argument():
    g, w = torch.randn(2, 4, 6, 6), torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="input_size"):
        conv2d_input_grad(g, w, (8,))
    with pytest.raises(ValueError, match="output channels"):
        conv2d_input_grad(g, torch.randn(5, 1, 3, 3), (8, 8))
    with pytest.raises(ValueError, match="not the output of a convolution"):
        conv2d_input_grad(g, w, (9, 9))
    with pytest.raises(ValueError, match="stride"):
        conv2d_input_grad(g, w, (8, 8), stride=(1, 2, 3))
    with pytest.raises(TypeError, match="grad"):
        conv2d_input_grad(g.long(), w, (8, 8))
    with pytest.raises(ValueError, match="weight"):
        conv2d_input_grad(g, w.double(), (8, 8))
