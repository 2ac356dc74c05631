"""fastattr.ops.group_select (SPEC §6; SOP GroupSelect) on every backend: agreement with the reference (the
torch gather, products, sparsemax and weighted sum), the formulas written out, shared rows, gradients
(gradcheck in float64, and the torch formulation's own gradients), layouts, dtypes, torch.compile, errors."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattr
from fastattr.ops import group_select
from fastattr.reference import group_select as reference_select
from tests.conftest import TOL, rel_err


def _case(n, b, g, c, h, dtype, device, seed, bias=True):
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    slot = torch.randint(0, n, (b, g), generator=gen).to(device)
    return draw(n, h), slot, draw(c, h), draw(c) if bias else None, draw(c, h)


def _close(got, expected, dtype):
    for a, e in zip(got, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert rel_err(a, e) <= TOL[dtype]


def test_matches_reference(backend_device):
    backend, device = backend_device

    @settings(max_examples=5 if backend == "triton" and device == "cpu" else 25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(n=st.integers(1, 30), b=st.integers(1, 4), g=st.integers(1, 20), c=st.integers(1, 20), h=st.integers(1, 70),
           bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 999))
    def check(n, b, g, c, h, bias, dtype, seed):
        args = _case(n, b, g, c, h, dtype, device, seed, bias)
        got = group_select(*args, backend=backend)
        _close(got, reference_select(*[a.cpu() if a is not None else None for a in args]), dtype)
        assert all(t.device == args[0].device for t in got)

    check()


def test_parameters_take_the_eager_path_without_gradients(monkeypatch):
    """A class head's ``nn.Parameter`` weight and bias take the C++ kernel directly when no gradient is
    recorded (the custom op's dispatch is not entered), and give the op's values."""
    import sys

    z, slot, w, b, q = _case(9, 3, 5, 4, 6, torch.float32, "cpu", 1)
    weight, bias = torch.nn.Parameter(w), torch.nn.Parameter(b)
    expected = group_select(z, slot, w, b, q, backend="cpp")
    module = sys.modules["fastattr.ops.group_select"]

    def dispatched(*args):
        raise AssertionError("the custom op was dispatched")

    monkeypatch.setattr(module, "_group_select_op", dispatched)
    with torch.no_grad():
        got = group_select(z, slot, weight, bias, q, backend="cpp")
    assert all(torch.equal(a, e) for a, e in zip(got, expected))
    with pytest.raises(AssertionError, match="dispatched"):   # with gradients the op records them
        group_select(z, slot, weight, bias, q, backend="cpp")


def test_the_formulas_written_out(backend_device):
    """y = W z + b and s = Q z per group, p = sparsemax(s) over the groups of each class, logits = Σ_g p y;
    groups sharing a row of z get the same partial logits."""
    backend, device = backend_device
    z, _, w, bias, q = _case(5, 2, 4, 3, 6, torch.float64, device, 1)
    slot = torch.tensor([[0, 2, 2, 4], [1, 1, 1, 3]], device=device)
    p, y, logits = group_select(z, slot, w, bias, q, backend=backend)
    for b in range(2):
        rows = z[slot[b]]
        torch.testing.assert_close(y[b], rows @ w.T + bias, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(p[b], fastattr.sparsemax((rows @ q.T).T, dim=-1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(logits[b], (p[b] * y[b].T).sum(-1), rtol=1e-12, atol=1e-12)
    assert torch.equal(y[1, 0], y[1, 2]) and torch.allclose(p.sum(-1), torch.ones(2, 3, dtype=p.dtype))


@pytest.mark.parametrize("n", [7, 5000])
def test_groups_reading_a_short_or_a_long_z(backend_device, n):
    """Six groups reading rows of ``z`` (repeats included) when ``z`` has about as many rows as the groups (the
    C++ kernel indexes them with a table over ``z``) and when it has far more (it searches the sorted slots)."""
    backend, device = backend_device
    z, _, w, bias, q = _case(n, 2, 3, 5, 9, torch.float64, device, 3)
    slot = torch.tensor([[n - 1, 0, n - 1], [n // 2, 3, 0]], device=device)
    got = group_select(z, slot, w, bias, q, backend=backend)
    _close(got, reference_select(z.cpu(), slot.cpu(), w.cpu(), bias.cpu(), q.cpu()), torch.float64)
    assert torch.equal(got[1][0, 0], got[1][0, 2])                            # one row, the same partial logits


def test_gradients(backend_device):
    """gradcheck in float64 (slots shared by several groups, so z's gradient accumulates), and the same
    gradients as autograd through the torch formulation."""
    backend, device = backend_device
    z, slot, w, bias, q = _case(4, 2, 5, 3, 6, torch.float64, device, 2)
    slot[0, :3] = 1
    leaves = [t.clone().requires_grad_(True) for t in (z, w, bias, q)]
    assert torch.autograd.gradcheck(lambda a, b, c, d: group_select(a, slot, b, c, d, backend=backend), leaves)
    weights = torch.randn(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)

    def grads(fn):
        for t in leaves:
            t.grad = None
        p, y, logits = fn(leaves[0], slot, *leaves[1:])
        ((logits ** 2).sum() + (p * 0.3).sum() + (y.sum(1) * weights).sum()).backward()
        return [t.grad.clone() for t in leaves]

    for got, expected in zip(grads(lambda *a: group_select(*a, backend=backend)), grads(reference_select)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    no_bias = [t.clone().requires_grad_(True) for t in (z, w, q)]
    assert torch.autograd.gradcheck(lambda a, b, c: group_select(a, slot, b, None, c, backend=backend), no_bias)


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                    (torch.bfloat16, torch.float32)], ids=str)
def test_mixed_dtypes_and_their_gradients(backend_device, dtypes):
    """Features of one dtype and layers of another (as under autocast): computed in z's compute dtype, each
    gradient in its input's dtype, equal to autograd through the reference."""
    backend, device = backend_device
    z, slot, w, bias, q = _case(6, 2, 4, 3, 5, torch.float64, device, 9)
    leaves = [z.to(dtypes[0])] + [t.to(dtypes[1]) for t in (w, bias, q)]
    grads = []
    for fn in (lambda *a: group_select(*a, backend=backend), reference_select):
        inputs = [t.clone().requires_grad_(True) for t in leaves]
        p, y, logits = fn(inputs[0], slot, *inputs[1:])
        assert fn is reference_select or p.dtype == y.dtype == logits.dtype == dtypes[0]
        (logits.float() ** 2).sum().backward()
        grads.append([t.grad for t in inputs])
    for a, e, t in zip(*grads, leaves):
        assert a.dtype == t.dtype
        torch.testing.assert_close(a.double(), e.double(), rtol=2e-2, atol=2e-2)


def test_the_custom_op_contract_and_vmap(backend_device):
    """torch.library.opcheck (fake kernel, schema, autograd registration), and vmap over the head's weight (the
    eager fast path must leave functorch's tensors to the op)."""
    backend, device = backend_device
    z, slot, w, bias, q = _case(6, 2, 4, 3, 5, torch.float64, device, 10)
    torch.library.opcheck(torch.ops.fastattr.group_select.default, (z, slot, w, bias, q, backend),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration",
                                      "test_aot_dispatch_static"))
    weights = torch.stack([w, 2 * w])
    batched = torch.func.vmap(lambda m: group_select(z, slot, m, bias, q, backend=backend)[2])(weights)
    for i in range(2):
        torch.testing.assert_close(batched[i], group_select(z, slot, weights[i], bias, q, backend=backend)[2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_float32(backend_device, dtype):
    backend, device = backend_device
    args = _case(9, 3, 6, 4, 16, dtype, device, 3)
    got = group_select(*args, backend=backend)
    expected = reference_select(*[a.float().cpu() for a in args[:1]], args[1].cpu(),
                                *[a.float().cpu() for a in args[2:]])
    for a, e in zip(got, expected):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float().cpu(), e, rtol=1e-2, atol=1e-2)


def test_layouts_empty_and_nan(backend_device):
    backend, device = backend_device
    z, slot, w, bias, q = _case(8, 3, 5, 4, 10, torch.float64, device, 4)
    expected = group_select(z, slot, w, bias, q, backend="reference")
    wide = torch.zeros(8, 20, dtype=torch.float64, device=device)
    wide[:, ::2] = z
    _close(group_select(wide[:, ::2], slot.T.contiguous().T, w.T.contiguous().T, bias, q, backend=backend),
           expected, torch.float64)
    p, y, logits = group_select(z, slot[:0], w, bias, q, backend=backend)
    assert p.shape == (0, 4, 5) and y.shape == (0, 5, 4) and logits.shape == (0, 4)
    broken = z.clone()
    broken[slot[1, 2]] = float("nan")
    p, _, logits = group_select(broken, slot, w, bias, q, backend=backend)
    assert torch.isnan(p[1]).all() and torch.isnan(logits[1]).all()
    assert not torch.isnan(p[0]).any() or bool((slot[0] == slot[1, 2]).any())


def test_torch_compile_fullgraph(backend_device):
    backend, device = backend_device
    args = _case(6, 2, 4, 3, 5, torch.float32, device, 5)

    def f(z, w, q):
        p, y, logits = group_select(z, args[1], w, args[3], q, backend=backend)
        return logits.sum() + p.sum() + y.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(args[0], args[2], args[4]), f(args[0], args[2], args[4]))


def test_errors_name_the_argument(backend_device):
    backend, device = backend_device
    z, slot, w, bias, q = _case(6, 2, 4, 3, 5, torch.float32, device, 6)
    for bad in (-1, 6):
        wrong = slot.clone()
        wrong[1, 1] = bad
        with pytest.raises(ValueError, match="slot must index the rows of z"):
            group_select(z, wrong, w, bias, q, backend=backend)
    with pytest.raises(ValueError, match="slot must be int64"):
        group_select(z, slot.int(), w, bias, q, backend=backend)
    with pytest.raises(ValueError, match="z must be 2-D"):
        group_select(z[0], slot, w, bias, q, backend=backend)
    with pytest.raises(ValueError, match="weight and query"):
        group_select(z, slot, w[:, :4], bias, q, backend=backend)
    with pytest.raises(ValueError, match="bias must be"):
        group_select(z, slot, w, bias[:2], q, backend=backend)
    with pytest.raises(ValueError, match="weight and query"):
        torch.ops.fastattr.group_select(z, slot, w, bias, q[:2], backend)  # the custom op checks too
