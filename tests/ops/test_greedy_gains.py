"""fastattr.ops.greedy_gains (SPEC §7) on every backend: agreement with the reference (the network run from
the updated state and subtracted, float64), the gains as f(A ∪ {v}) − f(A) of an explicit DSF, precision
where f is large, the listed candidates, layouts, dtypes, torch.compile, errors."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastattr.ops import greedy_gains
from fastattr.reference.greedy_gains import dsf_tail
from tests.conftest import TOL, rel_err


def _case(b, n, widths, dtype, device, seed, density=0.3, scale=1.0):
    """A batch of random DSFs (weights ≥ 0) and the state of a random set per DSF."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return (scale * torch.rand(shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)

    columns = draw(b, n, widths[0])
    weights = [draw(b, widths[i], widths[i + 1]) for i in range(len(widths) - 1)] + [draw(b, widths[-1], 1)]
    biases = [draw(b, w.shape[2]) for w in weights]
    selected = (torch.rand(b, n, generator=g) < density).to(device)
    z1 = draw(b, widths[0]) + torch.einsum("bn,bnh->bh", selected.to(dtype), columns)
    return z1, columns, weights, biases, selected


def test_matches_reference(backend_device):
    backend, device = backend_device

    @settings(max_examples=5 if backend == "triton" and device == "cpu" else 25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(b=st.integers(1, 3), n=st.integers(1, 40), widths=st.lists(st.integers(1, 40), min_size=1, max_size=3),
           activation=st.sampled_from(["sqrt", "log1p"]), dtype=st.sampled_from([torch.float32, torch.float64]),
           listed=st.booleans(), seed=st.integers(0, 999))
    def check(b, n, widths, activation, dtype, listed, seed):
        z1, columns, weights, biases, selected = _case(b, n, widths, dtype, device, seed)
        candidates = torch.randint(0, n, (b, 7), generator=torch.Generator().manual_seed(seed)).to(device) \
            if listed else None
        out = greedy_gains(z1, columns, weights, biases, selected, candidates, activation=activation, backend=backend)
        ref = greedy_gains(*[t.double().cpu() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                             for t in (z1, columns)], [w.double().cpu() for w in weights],
                           [x.double().cpu() for x in biases], selected.cpu(),
                           None if candidates is None else candidates.cpu(), activation=activation,
                           backend="reference")
        assert out.shape == (b, 7 if listed else n) and out.dtype == dtype and out.device == z1.device
        assert rel_err(out, ref) <= TOL[dtype]
        assert (out >= 0).all()

    check()


def test_gains_are_set_function_differences(backend_device):
    """f(v | A) = f(A ∪ {v}) − f(A) with f run on the indicator vectors, 0 inside A."""
    backend, device = backend_device
    z1, columns, weights, biases, selected = _case(2, 12, [9, 5], torch.float64, device, 3)
    bias1 = z1 - torch.einsum("bn,bnh->bh", selected.double(), columns)
    eye = torch.eye(12, dtype=torch.bool, device=device)
    sets = (selected.unsqueeze(1) | eye).double()  # [b, n, n]: A ∪ {v} for every v
    f = dsf_tail(bias1.unsqueeze(1) + sets @ columns, weights, biases, "sqrt")
    f_a = dsf_tail(z1.unsqueeze(1), weights, biases, "sqrt")
    expected = (f - f_a).masked_fill(selected, 0.0)
    out = greedy_gains(z1, columns, weights, biases, selected, backend=backend)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert (out[selected] == 0).all() and (out[~selected] > 0).all()


def test_precision_where_f_is_large(fast_backend_device):
    """With weights up to 2 over 784 features f(A) is a few thousand: float32 f(A ∪ {v}) − f(A) cancels, while the
    difference propagation keeps the float32 gains within 1e-5 of the float64 reference."""
    backend, device = fast_backend_device
    z1, columns, weights, biases, selected = _case(2, 784, [256, 128, 32], torch.float32, device, 5, scale=2.0)
    out = greedy_gains(z1, columns, weights, biases, selected, backend=backend)
    wide = [w.double() for w in weights], [b.double() for b in biases]
    ref = greedy_gains(z1.double(), columns.double(), *wide, selected, backend="reference")
    f_a = dsf_tail(z1.double().unsqueeze(1), *wide, "sqrt")
    assert f_a.min() > 2e3
    naive = dsf_tail(z1.unsqueeze(1) + columns, weights, biases, "sqrt") - dsf_tail(z1.unsqueeze(1), weights, biases,
                                                                                   "sqrt")
    assert rel_err(out, ref) <= 1e-5 < rel_err(naive.masked_fill(selected, 0.0), ref) / 10


def test_lazy_bounds_keep_the_argmax_and_agree_on_every_backend(backend_device):
    """With sorted upper bounds, chunks of 32 are evaluated while a bound can reach the best gain found: the
    evaluated entries are the gains, the others keep their bounds (below the best), the argmax is exact, and
    every backend returns the same values; generous bounds evaluate everything."""
    backend, device = backend_device
    z1, columns, weights, biases, selected = _case(3, 100, [12, 6], torch.float64, device, 11, density=0.0)
    full = greedy_gains(z1, columns, weights, biases, selected, backend="reference")
    order = torch.sort(full, 1, descending=True).indices
    g = torch.Generator().manual_seed(0)
    loose = full.gather(1, order) + torch.rand(3, 100, generator=g, dtype=torch.float64).to(device) * 1e-3
    bounds, candidates = torch.sort(loose, 1, descending=True)  # upper bounds, best first
    candidates = order.gather(1, candidates)
    out = greedy_gains(z1, columns, weights, biases, selected, candidates, bounds=bounds, backend=backend)
    ref = greedy_gains(z1, columns, weights, biases, selected, candidates, bounds=bounds, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
    true = full.gather(1, candidates)
    evaluated = (out - true).abs() <= 1e-10 * true.abs().max()
    assert evaluated[:, :32].all() and not evaluated.all()  # the first chunk always, not every chunk
    assert (out[~evaluated] == bounds[~evaluated]).all() and (out >= true - 1e-12 * true.abs().max()).all()
    assert torch.equal(candidates.gather(1, out.argmax(1, keepdim=True)), full.argmax(1, keepdim=True))
    wide = greedy_gains(z1, columns, weights, biases, selected, candidates, bounds=bounds + 10.0, backend=backend)
    torch.testing.assert_close(wide, true, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="bounds must come with candidates"):
        greedy_gains(z1, columns, weights, biases, selected, bounds=bounds, backend=backend)


def test_compile_and_non_contiguous(backend_device):
    backend, device = backend_device
    z1, columns, weights, biases, selected = _case(2, 10, [6, 4], torch.float32, device, 7)
    f = lambda z, c: greedy_gains(z, c, weights, biases, selected, backend=backend)  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(z1, columns), f(z1, columns))
    ct = columns.transpose(1, 2).contiguous().transpose(1, 2)
    assert not ct.is_contiguous()
    saved = ct.clone()
    torch.testing.assert_close(greedy_gains(z1, ct, weights, biases, selected, backend=backend), f(z1, columns))
    assert torch.equal(ct, saved)


def test_empty_and_all_selected(backend_device):
    backend, device = backend_device
    z1, columns, weights, biases, selected = _case(2, 5, [3], torch.float64, device, 2)
    everything = torch.ones_like(selected)
    assert (greedy_gains(z1, columns, weights, biases, everything, backend=backend) == 0).all()
    none = torch.empty((2, 0), dtype=torch.int64, device=device)
    assert greedy_gains(z1, columns, weights, biases, selected, none, backend=backend).shape == (2, 0)


def test_bad_arguments():
    z1, columns, weights, biases, selected = _case(2, 6, [4, 3], torch.float64, "cpu", 1)
    with pytest.raises(ValueError, match="columns must be"):
        greedy_gains(z1, columns[:1], weights, biases, selected)
    with pytest.raises(ValueError, match="one output"):
        greedy_gains(z1, columns, weights[:1], biases[:1], selected)
    with pytest.raises(ValueError, match="selected must be"):
        greedy_gains(z1, columns, weights, biases, selected[:, :3])
    with pytest.raises(ValueError, match="candidates must be indices"):
        greedy_gains(z1, columns, weights, biases, selected, torch.tensor([[0, 6], [1, 2]]))
    with pytest.raises(ValueError, match="activation"):
        greedy_gains(z1, columns, weights, biases, selected, activation="relu")
    with pytest.raises(ValueError, match="selected must be bool|must be torch.bool"):
        greedy_gains(z1, columns, weights, biases, selected.long())
    with pytest.raises(ValueError, match="weights and biases"):
        greedy_gains(z1, columns, weights, biases[:1], selected)
