"""path_interpolate / path_accumulate on every backend against the reference: random shapes,
shared and per-example baselines, dtypes, non-contiguous inputs, gradients, torch.compile."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastattr import reference
from fastattr.ops import path_accumulate, path_interpolate
from tests.conftest import TOL, rel_err


def _rand(shape, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)


def _settings(backend, device):
    """Fewer hypothesis examples for Triton under the CPU interpreter; the function-scoped fixture is fine."""
    return settings(max_examples=10 if (backend == "triton" and device == "cpu") else 40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_interpolate_matches_reference(backend_device):
    backend, device = backend_device

    @_settings(backend, device)
    @given(batch=st.integers(1, 5), feat=st.lists(st.integers(1, 9), min_size=1, max_size=3),
           steps=st.integers(1, 7), shared=st.booleans(),
           dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 1000))
    def check(batch, feat, steps, shared, dtype, seed):
        x = _rand([batch] + feat, dtype, device, seed)
        base = _rand([1 if shared else batch] + feat, dtype, device, seed + 1)
        alphas = torch.rand(steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
        out = path_interpolate(x, base, alphas, backend=backend)
        ref = reference.path_interpolate(x.double(), base.double(), alphas)
        assert out.shape == (steps * batch, *feat) and out.dtype == dtype
        assert rel_err(out, ref) < TOL[dtype]
        # Row s·B + b is example b at step s.
        s, b = steps - 1, batch - 1
        expected = base[0 if shared else b] + alphas[s].to(dtype) * (x[b] - base[0 if shared else b])
        torch.testing.assert_close(out[s * batch + b], expected, rtol=TOL[dtype], atol=TOL[dtype])

    check()


def test_accumulate_matches_reference(backend_device):
    backend, device = backend_device

    @_settings(backend, device)
    @given(batch=st.integers(1, 4), feat=st.lists(st.integers(1, 9), min_size=1, max_size=3),
           steps=st.integers(1, 6), with_diff=st.booleans(),
           acc_dtype=st.sampled_from([torch.float32, torch.float64]),
           grad_dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 1000))
    def check(batch, feat, steps, with_diff, acc_dtype, grad_dtype, seed):
        acc = _rand([batch] + feat, acc_dtype, device, seed)
        grads = _rand([steps, batch] + feat, grad_dtype, device, seed + 1)
        weights = torch.rand(steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
        diff = _rand([batch] + feat, acc_dtype, device, seed + 2) if with_diff else None
        out = path_accumulate(acc, grads, weights, diff, backend=backend)
        ref = reference.path_accumulate(acc.double(), grads.double(), weights,
                                        diff.double() if with_diff else None)
        assert out.dtype == acc_dtype and out.shape == acc.shape
        assert rel_err(out, ref) < TOL[acc_dtype]

    check()


def test_half_inputs_interpolate_in_their_dtype(backend_device):
    backend, device = backend_device
    x = _rand((3, 16), torch.bfloat16, device, 1)
    base = _rand((3, 16), torch.bfloat16, device, 2)
    alphas = torch.linspace(0, 1, 5, dtype=torch.float64).to(device)
    out = path_interpolate(x, base, alphas, backend=backend)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, reference.path_interpolate(x.float(), base.float(), alphas)) < TOL[torch.bfloat16]
    torch.testing.assert_close(out[:3], base)
    torch.testing.assert_close(out[-3:], x)


def test_non_contiguous_inputs(backend_device):
    backend, device = backend_device
    x = _rand((4, 6, 5), torch.float64, device, 3).transpose(1, 2)
    base = _rand((4, 6, 5), torch.float64, device, 4)[:, :, :].transpose(1, 2)
    alphas = torch.rand(8, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).to(device)[::2]
    assert not x.is_contiguous() and not alphas.is_contiguous()
    torch.testing.assert_close(path_interpolate(x, base, alphas, backend=backend),
                               reference.path_interpolate(x, base, alphas))
    grads = _rand((3, 5, 6, 4), torch.float64, device, 6).permute(0, 3, 1, 2)
    acc = _rand((4, 6, 5), torch.float64, device, 7).transpose(1, 2)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, device=device)
    torch.testing.assert_close(path_accumulate(acc, grads, w, x, backend=backend),
                               reference.path_accumulate(acc, grads, w, x))


def test_inputs_are_not_modified(backend_device):
    backend, device = backend_device
    acc = _rand((2, 7), torch.float32, device, 8)
    grads = _rand((3, 2, 7), torch.float32, device, 9)
    saved = acc.clone(), grads.clone()
    path_accumulate(acc, grads, torch.ones(3, device=device), acc, backend=backend)
    assert torch.equal(acc, saved[0]) and torch.equal(grads, saved[1])


def test_gradcheck_float64(backend_device):
    backend, device = backend_device
    x = _rand((2, 3), torch.float64, device, 10).requires_grad_()
    base_shared = _rand((1, 3), torch.float64, device, 11).requires_grad_()
    base = _rand((2, 3), torch.float64, device, 12).requires_grad_()
    alphas = torch.tensor([0.1, 0.6, 0.9], dtype=torch.float64, device=device).requires_grad_()
    for b in (base, base_shared):
        assert torch.autograd.gradcheck(lambda x, b, a: path_interpolate(x, b, a, backend=backend), (x, b, alphas))
    acc = _rand((2, 3), torch.float64, device, 13).requires_grad_()
    grads = _rand((3, 2, 3), torch.float64, device, 14).requires_grad_()
    w = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64, device=device).requires_grad_()
    diff = _rand((2, 3), torch.float64, device, 15).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, g, w, d: path_accumulate(a, g, w, d, backend=backend),
                                    (acc, grads, w, diff))
    assert torch.autograd.gradcheck(lambda a, g, w: path_accumulate(a, g, w, backend=backend), (acc, grads, w))


def test_torch_compile_fullgraph(backend_device):
    backend, device = backend_device

    def f(x, base, alphas, w):
        path = path_interpolate(x, base, alphas, backend=backend)
        g = (path * path).reshape(alphas.shape[0], *x.shape)
        return path_accumulate(torch.zeros_like(x), g, w, x - base, backend=backend)

    x, base = _rand((3, 4), torch.float32, device, 16), _rand((1, 4), torch.float32, device, 17)
    alphas = torch.tensor([0.25, 0.75], device=device)
    w = torch.tensor([0.5, 0.5], device=device)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, base, alphas, w), f(x, base, alphas, w))


def test_bad_arguments():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="baseline must have shape"):
        path_interpolate(x, torch.randn(2, 4), torch.rand(3))
    with pytest.raises(ValueError, match="alphas must be 1-D"):
        path_interpolate(x, x, torch.rand(3, 1))
    with pytest.raises(TypeError, match="x must be a floating"):
        path_interpolate(torch.arange(12).reshape(3, 4), x, torch.rand(2))
    with pytest.raises(ValueError, match="grads must have shape"):
        path_accumulate(x, torch.randn(2, 4, 3), torch.rand(2))
    with pytest.raises(ValueError, match="weights must have shape"):
        path_accumulate(x, torch.randn(2, 3, 4), torch.rand(3))
    with pytest.raises(TypeError, match="acc must be float32 or float64"):
        path_accumulate(x.half(), torch.randn(2, 3, 4), torch.rand(2))
    with pytest.raises(ValueError, match="diff must have the shape"):
        path_accumulate(x, torch.randn(2, 3, 4), torch.rand(2), torch.randn(4))
