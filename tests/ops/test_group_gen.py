"""fastattr.ops.group_gen (SPEC §6; SOP GroupGen) on every backend: agreement with the reference (the torch
projection, folded bilinear form and products, then group_masks), the formulas written out per head, the
groups equal to group_masks of the op's own logits, gradients (gradcheck in float64, and autograd through the
reference), layouts, dtypes, the custom op contract, torch.compile, errors."""
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattr
from fastattr.ops import group_gen, group_masks
from fastattr.reference import group_gen as reference_gen
from tests.conftest import TOL, rel_err


def _case(b, n, width, d, h, dtype, device, seed, bias=True):
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    return (draw(b, n, width), draw(d, width), draw(d) if bias else None, draw(n, d), draw(h * d, d),
            draw(h * d, d))


def test_matches_reference(backend_device):
    """Logits within the dtype's tolerance of the reference (float64: 1e-12); the groups equal to the reference's
    in float64 for d ≥ 2, and always equal to group_masks of the op's own logits on the same backend. (In float32,
    and in float64 with d = 1, where every A_j is a number and the logits symmetric, two rows can tie on peak and
    max up to one rounding, which each backend's summation order then breaks its own way.)"""
    backend, device = backend_device

    @settings(max_examples=5 if backend == "triton" and device == "cpu" else 25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(b=st.integers(1, 4), n=st.integers(1, 20), width=st.integers(1, 12), d=st.integers(1, 20),
           h=st.integers(1, 3), bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
           seed=st.integers(0, 999), data=st.data())
    def check(b, n, width, d, h, bias, dtype, seed, data):
        g = data.draw(st.integers(1, h * n))
        k = data.draw(st.integers(1, n))
        args = _case(b, n, width, d, h, dtype, device, seed, bias)
        logits, masks, rows, first = group_gen(*args, g, k, backend=backend)
        expected = reference_gen(*[None if a is None else a.cpu() for a in args], g, k)
        assert logits.shape == (b, h * n, n) and logits.dtype == dtype and logits.device == args[0].device
        assert rel_err(logits, expected[0]) <= (1e-12 if dtype == torch.float64 else TOL[dtype])
        if dtype == torch.float64 and d >= 2:
            for got, want in zip((masks, rows, first), expected[1:]):
                assert torch.equal(got.cpu(), want)
        own = group_masks(logits, g, k, backend=backend)
        for got, want in zip((masks, rows, first), own):
            assert torch.equal(got, want)

    check()


def test_the_formulas_written_out(backend_device):
    """e = X W_pᵀ + b_p + pos, logits[j·P + p, q] = e_p (W_{q,j}ᵀ W_{k,j} / √d) e_q per head; the groups are the
    rows of largest sparsemax peak (then max logit, then index), each its top-k patches."""
    backend, device = backend_device
    x, wp, bp, pos, wq, wk = _case(2, 5, 3, 4, 2, torch.float64, device, 1)
    logits, masks, rows, first = group_gen(x, wp, bp, pos, wq, wk, 3, 2, backend=backend)
    e = x @ wp.T + bp + pos
    for j in range(2):
        a = wq[4 * j:4 * j + 4].T @ wk[4 * j:4 * j + 4] / 2.0
        torch.testing.assert_close(logits[:, 5 * j:5 * j + 5], e @ a @ e.transpose(1, 2), rtol=1e-12, atol=1e-12)
    peaks, tops = fastattr.sparsemax(logits, dim=-1).amax(-1).tolist(), logits.amax(-1).tolist()
    for i in range(2):
        order = sorted(range(10), key=lambda r: (-peaks[i][r], -tops[i][r], r))   # peak, then max logit, then index
        assert rows[i].tolist() == order[:3]
        top = logits[i, rows[i]].topk(2, dim=-1).indices
        assert torch.equal(masks[i], torch.zeros_like(masks[i]).scatter_(-1, top, True))


def test_several_blocks_of_rows_patches_and_width(backend_device):
    """Shapes past one block of every kind: rows of e (B·P = 210), query and key patches (P = 70), the width of
    the products and of the patches (d = 33, D = 40), three heads; float64 logits within 1e-12 of the reference."""
    backend, device = backend_device
    args = _case(3, 70, 40, 33, 3, torch.float64, device, 7)
    logits, masks, rows, first = group_gen(*args, 12, 20, backend=backend)
    expected = reference_gen(*[a.cpu() for a in args], 12, 20)
    assert rel_err(logits, expected[0]) <= 1e-12
    for got, want in zip((masks, rows, first), expected[1:]):
        assert torch.equal(got.cpu(), want)


def test_gradients(backend_device):
    """gradcheck of the logits in float64 in every floating argument (with and without the bias, two heads),
    and the same gradients as autograd through the reference."""
    backend, device = backend_device
    args = _case(2, 4, 3, 3, 2, torch.float64, device, 2)
    leaves = [t.clone().requires_grad_(True) for t in args]

    def logits(*a):
        return group_gen(*a, 3, 2, backend=backend)[0]

    assert torch.autograd.gradcheck(logits, leaves)
    no_bias = [leaves[0], leaves[1], None, *leaves[3:]]
    assert torch.autograd.gradcheck(lambda x, wp, pos, wq, wk: logits(x, wp, None, pos, wq, wk),
                                    [t for t in no_bias if t is not None])
    weights = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    grads = []
    for fn in (logits, lambda *a: reference_gen(*a, 3, 2)[0]):
        for t in leaves:
            t.grad = None
        ((fn(*leaves) * weights) ** 2).sum().backward()
        grads.append([t.grad.clone() for t in leaves])
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    for i in range(6):   # one argument asking for its gradient gets the same one (the backward computes only it)
        one = [t.detach().clone().requires_grad_(j == i) for j, t in enumerate(leaves)]
        ((logits(*one) * weights) ** 2).sum().backward()
        torch.testing.assert_close(one[i].grad, grads[0][i], rtol=1e-10, atol=1e-10)


def test_mixed_dtypes_and_their_gradients(backend_device):
    """float32 patches with float64 layers: computed in the patches' compute dtype, each gradient in its input's
    dtype."""
    backend, device = backend_device
    args = _case(2, 4, 3, 3, 1, torch.float64, device, 9)
    leaves = [args[0].float()] + list(args[1:])
    inputs = [t.clone().requires_grad_(True) for t in leaves]
    logits = group_gen(*inputs, 2, 2, backend=backend)[0]
    assert logits.dtype == torch.float32
    (logits ** 2).sum().backward()
    reference = [t.clone().requires_grad_(True) for t in leaves]
    (reference_gen(*reference, 2, 2)[0].float() ** 2).sum().backward()
    for a, e, t in zip(inputs, reference, leaves):
        assert a.grad.dtype == t.dtype
        torch.testing.assert_close(a.grad.double(), e.grad.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not fastattr._backend.cpp_available(), reason="needs the fastattr._C extension")
def test_parameters_take_the_eager_path_without_gradients(monkeypatch):
    """A module's ``nn.Parameter`` weights take the C++ kernel directly when no gradient is recorded (the custom
    op is not dispatched), with the op's values; with gradients the op records them."""
    x, *weights = _case(3, 6, 4, 5, 1, torch.float32, "cpu", 1)
    params = [None if w is None else torch.nn.Parameter(w) for w in weights]
    expected = group_gen(x, *weights, 4, 3, backend="cpp")
    module = sys.modules["fastattr.ops.group_gen"]

    def dispatched(*args):
        raise AssertionError("the custom op was dispatched")

    monkeypatch.setattr(module, "_group_gen_op", dispatched)
    with torch.no_grad():
        got = group_gen(x, *params, 4, 3, backend="cpp")
    assert all(torch.equal(a, e) for a, e in zip(got, expected))
    with pytest.raises(AssertionError, match="dispatched"):
        group_gen(x, *params, 4, 3, backend="cpp")


def test_the_custom_op_contract_and_vmap(backend_device):
    """torch.library.opcheck (fake kernel, schema, autograd registration), and vmap over the patches (the eager
    fast path must leave functorch's tensors to the op)."""
    backend, device = backend_device
    args = _case(2, 4, 3, 3, 2, torch.float64, device, 10)
    torch.library.opcheck(torch.ops.fastattr.group_gen.default, (*args, 3, 2, backend),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration",
                                      "test_aot_dispatch_static"))
    stacked = torch.stack([args[0], 2 * args[0]])
    batched = torch.func.vmap(lambda x: group_gen(x, *args[1:], 3, 2, backend=backend)[0])(stacked)
    for i in range(2):
        torch.testing.assert_close(batched[i], group_gen(stacked[i], *args[1:], 3, 2, backend=backend)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_float32(backend_device, dtype):
    backend, device = backend_device
    args = _case(3, 6, 4, 8, 1, dtype, device, 3)
    logits = group_gen(*args, 4, 3, backend=backend)[0]
    expected = reference_gen(*[a.float().cpu() for a in args], 4, 3)[0]
    assert logits.dtype == dtype
    torch.testing.assert_close(logits.float().cpu(), expected, rtol=2e-2, atol=2e-2)


def test_layouts_and_empty_batch(backend_device):
    backend, device = backend_device
    args = _case(3, 5, 4, 6, 1, torch.float64, device, 4)
    expected = group_gen(*args, 3, 2, backend="reference")
    wide = torch.zeros(3, 5, 8, dtype=torch.float64, device=device)
    wide[..., ::2] = args[0]
    strided = (wide[..., ::2], args[1].T.contiguous().T, args[2], args[3], args[4].T.contiguous().T, args[5])
    got = group_gen(*strided, 3, 2, backend=backend)
    assert rel_err(got[0], expected[0]) <= 1e-12
    assert all(torch.equal(a, e) for a, e in zip(got[1:], expected[1:]))
    logits, masks, rows, first = group_gen(args[0][:0], *args[1:], 3, 2, backend=backend)
    assert logits.shape == (0, 5, 5) and masks.shape == (0, 3, 5) and rows.shape == first.shape == (0, 3)


def test_torch_compile_fullgraph(backend_device):
    backend, device = backend_device
    args = _case(2, 4, 3, 3, 1, torch.float32, device, 5)

    def f(x, wp):
        logits, masks, rows, first = group_gen(x, wp, *args[2:], 3, 2, backend=backend)
        return logits.sum() + masks.sum() + rows.sum() + first.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(args[0], args[1]), f(args[0], args[1]))


def test_errors_name_the_argument(backend_device):
    backend, device = backend_device
    x, wp, bp, pos, wq, wk = _case(2, 4, 3, 5, 1, torch.float32, device, 6)
    with pytest.raises(ValueError, match="patches must be 3-D"):
        group_gen(x[0], wp, bp, pos, wq, wk, 2, 2, backend=backend)
    with pytest.raises(ValueError, match="proj_weight must be"):
        group_gen(x, wp[:, :2], bp, pos, wq, wk, 2, 2, backend=backend)
    with pytest.raises(ValueError, match="proj_bias must be"):
        group_gen(x, wp, bp[:2], pos, wq, wk, 2, 2, backend=backend)
    with pytest.raises(ValueError, match="position must be"):
        group_gen(x, wp, bp, pos[:3], wq, wk, 2, 2, backend=backend)
    with pytest.raises(ValueError, match="query_weight and key_weight"):
        group_gen(x, wp, bp, pos, wq[:4], wk, 2, 2, backend=backend)
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="n_groups must be an int in"):
            group_gen(x, wp, bp, pos, wq, wk, bad, 2, backend=backend)
    with pytest.raises(ValueError, match="kept must be an int in"):
        group_gen(x, wp, bp, pos, wq, wk, 2, 5, backend=backend)
    with pytest.raises(TypeError, match="patches must be a floating point tensor"):
        group_gen(x.long(), wp, bp, pos, wq, wk, 2, 2, backend=backend)
    broken = x.clone()
    broken[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        group_gen(broken, wp, bp, pos, wq, wk, 2, 2, backend=backend)
    with pytest.raises(ValueError, match="position must be"):
        torch.ops.fastattr.group_gen(x, wp, bp, pos[:3], wq, wk, 2, 2, backend)  # the custom op checks too
