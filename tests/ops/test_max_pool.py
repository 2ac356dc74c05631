"""fastattr.ops.max_pool2d on every backend: torch's ``max_pool2d_with_indices`` bit for bit (values and indices,
NaN, −inf, ties, padding, dilation, ceil mode, every float dtype), the scan rule written out, gradients (torch's
backward on the op's indices, double backward), the custom op contract, when it is used, errors."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from fastattr import use_backend
from fastattr.ops import max_pool2d
from fastattr.ops.max_pool import beats_torch
from fastattr.reference.max_pool import max_pool2d as reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _torch(x, k, s, p, d, ceil):
    return torch.ops.aten.max_pool2d_with_indices(x, list(k), list(s), list(p), list(d), ceil)


def _same(got, expected):
    (out, idx), (e_out, e_idx) = got, expected
    assert out.dtype == e_out.dtype and out.shape == e_out.shape and idx.dtype == torch.int64
    assert torch.equal(idx.cpu(), e_idx.cpu())
    assert torch.equal(out.isnan().cpu(), e_out.isnan().cpu())
    assert torch.equal(out.nan_to_num(7.0).cpu(), e_out.nan_to_num(7.0).cpu())


@st.composite
def _configs(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    return k, s, p, d, draw(st.booleans()), (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w), \
        draw(st.integers(0, 2 ** 16)), draw(st.sampled_from(DTYPES))


def _data(shape, seed, dtype, device):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if seed % 2:
        x = x.round()                                                   # ties: the first maximum wins
    x.view(-1)[torch.rand(x.numel(), generator=gen) < 0.08] = float("nan")
    x.view(-1)[torch.rand(x.numel(), generator=gen) < 0.08] = float("-inf")
    return x.to(dtype).to(device)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=_configs())
def test_equals_torch_bit_for_bit(backend_device, config):
    backend, device = backend_device
    k, s, p, d, ceil, shape, seed, dtype = config
    x = _data(shape, seed, dtype, device)
    try:
        expected = _torch(x.cpu(), k, s, p, d, ceil)
    except RuntimeError:                                                # an output of size 0: torch refuses
        with pytest.raises(ValueError, match="too small"):
            max_pool2d(x, k, s, p, d, ceil, backend=backend)
        return
    _same(max_pool2d(x, k, s, p, d, ceil, backend=backend), expected)
    _same(reference(x.cpu(), k, s, p, d, ceil), expected)


@pytest.mark.parametrize("shape,k,s,p", [((16, 32, 8, 8), 2, 2, 0), ((2, 16, 57, 31), 3, 2, 1),
                                         ((3, 40, 40), 3, 1, 1), ((2, 4, 33, 70), (2, 5), (1, 3), (1, 2))])
def test_larger_planes_and_unbatched_inputs(backend_device, shape, k, s, p):
    """Planes past one block of every kind: the unrolled 2×2 path, the row-wise path with edges on both
    sides, a [C, H, W] input."""
    backend, device = backend_device
    x = _data(shape, 3, torch.float32, device)
    kk, ss, pp = ((v, v) if isinstance(v, int) else v for v in (k, s, p))
    _same(max_pool2d(x, k, s, p, backend=backend), _torch(x.cpu(), kk, ss, pp, (1, 1), False))


def test_the_scan_rule_written_out(backend_device):
    """Row-major scan: the first of equal maxima, NaN over every number, the last NaN over an earlier one;
    an all −inf window keeps its first in-range position; indices are flat in the [H, W] plane."""
    backend, device = backend_device
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[[[5.0, 1.0, 2.0, 2.0], [5.0, 0.0, 1.0, 2.0],
                        [nan, 3.0, -inf, -inf], [1.0, nan, -inf, -inf]]]], device=device)
    out, idx = max_pool2d(x, 2, backend=backend)
    assert idx.tolist() == [[[[0, 2], [13, 10]]]]
    assert out[0, 0, 0].tolist() == [5.0, 2.0] and out[0, 0, 1, 0].isnan() and out[0, 0, 1, 1] == -inf
    out, idx = max_pool2d(x, 3, 1, 1, backend=backend)                  # windows clipped by the padding
    assert idx[0, 0, 0].tolist() == [0, 0, 2, 2]


def test_non_contiguous_inputs_are_not_modified(backend_device):
    backend, device = backend_device
    x = _data((2, 8, 9, 10), 4, torch.float32, device)
    for view in (x.transpose(2, 3), x.contiguous(memory_format=torch.channels_last), x[:, ::2]):
        saved = view.clone()
        _same(max_pool2d(view, 2, backend=backend), _torch(view.cpu(), (2, 2), (2, 2), (0, 0), (1, 1), False))
        assert torch.equal(view.nan_to_num(7.0), saved.nan_to_num(7.0))


def test_gradients_are_torchs(backend_device):
    """The backward is torch's on the op's indices: gradcheck in float64, torch's gradient bit for bit in
    float32 (with padding and overlapping windows), and a double backward."""
    backend, device = backend_device
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: max_pool2d(t, 3, 2, 1, backend=backend)[0], (x,))
    assert torch.autograd.gradgradcheck(lambda t: max_pool2d(t, 3, 2, 1, backend=backend)[0], (x,))
    x32 = torch.randn(4, 5, 11, 11, device=device).requires_grad_()
    g = torch.randn(4, 5, 5, 5, device=device)
    ours = torch.autograd.grad(max_pool2d(x32, 3, 2, 0, backend=backend)[0], x32, g)[0]
    theirs = torch.autograd.grad(F.max_pool2d(x32, 3, 2, 0), x32, g)[0]
    assert torch.equal(ours, theirs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=_configs())
def test_the_cpp_backward_is_torchs_bit_for_bit(config, monkeypatch):
    """On CPU the eager C++ path takes its input gradient from its own kernel (each plane zeroed and summed
    into in torch's order): torch's ``max_pool2d_with_indices_backward`` bit for bit, overlapping windows
    (sums), padding, dilation, NaN and ties included; a window with no element in range (torch's backward
    writes its term outside the plane, past the tensor for the last one) adds nothing; a double backward
    records torch's op instead."""
    import fastattr.ops.max_pool as mp

    k, s, p, d, ceil, shape, seed, dtype = config
    dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    x = _data(shape, seed, dtype, "cpu").requires_grad_()
    try:
        out, idx = _torch(x.detach(), k, s, p, d, ceil)
    except RuntimeError:
        return
    kernels, run = [], mp.run_cpp
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    plane = x.shape[-2] * x.shape[-1]
    inside = (idx >= 0) & (idx < plane)
    if inside.all():
        theirs = torch.ops.aten.max_pool2d_with_indices_backward(grad, x.detach(), list(k), list(s), list(p),
                                                                 list(d), ceil, idx)
    else:   # torch's kernel would write outside the tensor: the sums written out, in torch's order
        flat_idx = idx.reshape(-1, idx.shape[-2] * idx.shape[-1])
        flat_grad = grad.reshape(flat_idx.shape)
        theirs = torch.zeros(flat_idx.shape[0], plane, dtype=dtype)
        for r in range(flat_idx.shape[0]):
            for o in range(flat_idx.shape[1]):
                if 0 <= flat_idx[r, o] < plane:
                    theirs[r, flat_idx[r, o]] += flat_grad[r, o]
        theirs = theirs.reshape(x.shape)
    with monkeypatch.context() as patch, use_backend("cpp"):
        patch.setattr(mp, "run_cpp", lambda name, *a, **kw: (kernels.append(name), run(name, *a, **kw))[1])
        ours = torch.autograd.grad(max_pool2d(x, k, s, p, d, ceil)[0], x, grad)[0]
        assert kernels == ["max_pool2d", "max_pool2d_backward"] and torch.equal(ours, theirs)
        if not inside.all():
            return
        first = torch.autograd.grad(max_pool2d(x, k, s, p, d, ceil)[0], x, grad.requires_grad_(), create_graph=True)[0]
    assert first.grad_fn is not None and kernels[-1] == "max_pool2d" and torch.equal(first.detach(), theirs)


def test_batched_gradients_through_the_cpp_path():
    """``is_grads_batched`` (the legacy vmap of ``autograd.functional.jacobian(vectorize=True)``) gets torch's
    backward: a batched gradient has no storage for the kernel."""
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(5), requires_grad=True)
    grads = torch.randn(4, 2, 3, 3, 3, generator=torch.Generator().manual_seed(6))
    with use_backend("cpp"):
        ours = torch.autograd.grad(max_pool2d(x, 2)[0], x, grads, is_grads_batched=True)[0]
    theirs = torch.autograd.grad(F.max_pool2d(x, 2), x, grads, is_grads_batched=True)[0]
    assert ours.shape == (4, 2, 3, 6, 6) and torch.equal(ours, theirs)


def test_the_custom_op_contract_and_compile(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastattr.max_pool2d.default, (x, [2, 2], [2, 2], [0, 0], [1, 1], False, backend))
    f = lambda t: max_pool2d(t, 2, backend=backend)[0].sum()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x.detach()), f(x.detach()))


def test_vmap_gives_torchs_values():
    x = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64)
    got = torch.func.vmap(lambda t: max_pool2d(t, 2)[0])(x)
    assert torch.equal(got, F.max_pool2d(x.flatten(0, 1), 2).view(3, 2, 4, 3, 3))


def test_when_the_kernel_beats_torchs():
    big = torch.randn(64, 32, 8, 8)
    assert beats_torch(big)
    assert not beats_torch(big[:8])                                     # too small to pay for the call
    assert not beats_torch(big.contiguous(memory_format=torch.channels_last))
    assert not beats_torch(big.half()) and not beats_torch(big.flatten(0, 2))
    assert not beats_torch(big.numpy())
    with use_backend("reference"):
        assert not beats_torch(big)
    assert not torch.func.vmap(lambda t: torch.tensor(beats_torch(t)))(big.unsqueeze(0)).item()


def test_errors_name_the_argument():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="kernel_size must be at least 1"):
        max_pool2d(x, 0)
    with pytest.raises(TypeError, match="stride must be an int or a pair"):
        max_pool2d(x, 2, (1, 2, 3))
    with pytest.raises(ValueError, match="padding .* at most half of kernel_size"):
        max_pool2d(x, 2, 2, 2)
    with pytest.raises(ValueError, match="dilation must be at least 1"):
        max_pool2d(x, 2, dilation=0)
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        max_pool2d(x, 2, ceil_mode=1)
    with pytest.raises(TypeError, match="x must be a floating"):
        max_pool2d(x.long(), 2)
    with pytest.raises(ValueError, match="x must be"):
        max_pool2d(x[0, 0], 2)
    with pytest.raises(ValueError, match="too small"):
        max_pool2d(x, 9)
    with pytest.raises(ValueError, match="too small"):
        torch.ops.fastattr.max_pool2d(x, [9, 9], [9, 9], [0, 0], [1, 1], False, None)   # the custom op checks too
