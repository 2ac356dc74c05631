"""The IBA bottleneck op on every backend: against the reference on many shapes and dtypes, the
capacity against torch.distributions' Gaussian KL, the smoothing against IBA's reflection-padded
convolution, gradcheck of the hand-written backward, torch.compile, non-contiguous inputs, bad input."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastattr.ops import bottleneck
from fastattr.reference.bottleneck import gaussian_kernel, smooth

from ..conftest import TOL, rel_err


def _case(b, s, c, h, w, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0, shift=0.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).to(device)

    R, alpha = draw(b, c, h, w), draw(b, c, h, w, scale=2.0, shift=1.0)
    mu, sigma = draw(c, h, w, scale=0.5), (torch.rand((c, h, w), generator=g, dtype=torch.float64) + 0.3).to(
        dtype).to(device)
    return R, alpha, mu, sigma, draw(b, s, c, h, w)


def test_matches_reference(backend_device):
    backend, device = backend_device

    @settings(max_examples=6 if backend == "triton" and device == "cpu" else 25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(b=st.integers(1, 3), s=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
           smooth_sigma=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
           dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 999))
    def check(b, s, c, h, w, smooth_sigma, dtype, seed):
        args = _case(b, s, c, h, w, dtype, device, seed)
        Z, cap = bottleneck(*args, smooth_sigma=smooth_sigma, backend=backend)
        ref = bottleneck(*[a.double().cpu() for a in args], smooth_sigma=smooth_sigma, backend="reference")
        assert Z.shape == (b, s, c, h, w) and cap.shape == (b, c, h, w)
        assert Z.dtype == dtype and cap.dtype == dtype and Z.device == args[0].device
        assert rel_err(Z, ref[0]) <= TOL[dtype] and rel_err(cap, ref[1]) <= TOL[dtype]

    check()


def test_capacity_is_the_gaussian_kl_and_z_has_its_moments():
    """KL(N(λR + (1−λ)μ, ((1−λ)σ)²) ‖ N(μ, σ²)) from torch.distributions; Z's mean and std over many
    draws are those of P(Z|R)."""
    R, alpha, mu, sigma, _ = _case(2, 1, 3, 4, 5, torch.float64, "cpu", 3)
    eps = torch.randn(2, 20000, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    Z, cap = bottleneck(R, alpha, mu, sigma, eps, backend="reference")
    lam = smooth(torch.sigmoid(alpha), 1.0)
    p = torch.distributions.Normal(lam * R + (1 - lam) * mu, (1 - lam) * sigma)
    q = torch.distributions.Normal(mu.expand_as(R), sigma.expand_as(R))
    torch.testing.assert_close(cap, torch.distributions.kl_divergence(p, q), rtol=1e-10, atol=1e-12)
    assert (Z.mean(1) - p.mean).abs().max() < 5 * (p.stddev / 20000 ** 0.5).max()
    torch.testing.assert_close(Z.std(1), p.stddev, rtol=0.05, atol=1e-3)


def test_smoothing_is_ibas_reflection_padded_gaussian():
    """IBA: a (2·round(2σ)+1)² normalised Gaussian after ReflectionPad2d, per channel; σ = 0 keeps the mask."""
    s = torch.rand(2, 3, 9, 7, dtype=torch.float64)
    for sigma in (0.5, 1.0, 2.0):
        kernel = gaussian_kernel(sigma, torch.float64, "cpu")
        r = kernel.shape[0] // 2
        assert kernel.shape[0] == 2 * round(2 * sigma) + 1 and abs(kernel.sum().item() - 1) < 1e-12
        expected = F.conv2d(F.pad(s, (r,) * 4, mode="reflect"), kernel.expand(3, 1, -1, -1), groups=3)
        torch.testing.assert_close(smooth(s, sigma), expected)
    assert torch.equal(smooth(s, 0.0), s)


def test_gradients(backend_device):
    backend, device = backend_device
    fast = backend == "triton" and device == "cpu"
    for shape in [(2, 3, 2, 5, 4), (1, 2, 1, 1, 3), (2, 1, 1, 2, 2)]:
        R, alpha, mu, sigma, eps = _case(*shape, torch.float64, device, 7)
        inputs = (R.clone().requires_grad_(), alpha.clone().requires_grad_())
        assert torch.autograd.gradcheck(lambda r, a: bottleneck(r, a, mu, sigma, eps, backend=backend), inputs,
                                        fast_mode=fast)
    # the capacity alone (Z unused) and Z alone: the missing incoming gradient counts as zero
    a = alpha.clone().requires_grad_()
    (g_cap,) = torch.autograd.grad(bottleneck(R, a, mu, sigma, eps, backend=backend)[1].sum(), a)
    a_ref = alpha.detach().cpu().requires_grad_()
    (ref,) = torch.autograd.grad(bottleneck(R.cpu(), a_ref, mu.cpu(), sigma.cpu(), eps.cpu(),
                                            backend="reference")[1].sum(), a_ref)
    assert rel_err(g_cap, ref) <= 1e-10


def test_compile_and_non_contiguous(backend_device):
    backend, device = backend_device
    R, alpha, mu, sigma, eps = _case(2, 3, 3, 4, 5, torch.float32, device, 9)
    f = lambda r, a: bottleneck(r, a, mu, sigma, eps, backend=backend)  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for u, v in zip(compiled(R, alpha), f(R, alpha)):
        torch.testing.assert_close(u, v)
    Rt, at = R.transpose(2, 3).contiguous().transpose(2, 3), alpha.transpose(2, 3).contiguous().transpose(2, 3)
    assert not Rt.is_contiguous()
    saved = Rt.clone()
    for u, v in zip(bottleneck(Rt, at, mu, sigma, eps, backend=backend), f(R, alpha)):
        torch.testing.assert_close(u, v)
    assert torch.equal(Rt, saved)


def test_bad_arguments():
    R, alpha, mu, sigma, eps = _case(2, 3, 3, 4, 5, torch.float64, "cpu", 1)
    with pytest.raises(ValueError, match="alpha must have R's shape"):
        bottleneck(R, alpha[:1], mu, sigma, eps)
    with pytest.raises(ValueError, match="mu must be"):
        bottleneck(R, alpha, mu[:1], sigma, eps)
    with pytest.raises(ValueError, match="eps must be"):
        bottleneck(R, alpha, mu, sigma, eps[0])
    with pytest.raises(ValueError, match="smooth_sigma"):
        bottleneck(R, alpha, mu, sigma, eps, smooth_sigma=-1.0)
    with pytest.raises(ValueError, match="R must be 4-D"):
        bottleneck(R[0], alpha, mu, sigma, eps)
    with pytest.raises(TypeError, match="sigma must be a floating"):
        bottleneck(R, alpha, mu, sigma.long(), eps)
