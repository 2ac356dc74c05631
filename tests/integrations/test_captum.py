"""fastattr.integrations.captum is a drop-in for captum.attr's gradient methods.

Deterministic methods (Saliency, InputXGradient, IntegratedGradients) must give Captum's values to a
relative error of 1e-5 in float64 (in practice ~1e-8: Captum rounds its quadrature nodes and weights
to float32). NoiseTunnel draws its noise from fastattr's generator, not Captum's global RNG, so:

- with ``stdevs=0.0`` every noisy copy is the input itself and both libraries must agree exactly
  (and with the plain method);
- with noise, both are Monte-Carlo estimates of the same expectation E[h(x + ε)] from N independent
  samples (h = the attribution, its square, or its squared deviation for VarGrad). Their difference
  has E||fa − captum||² = Σ_i 2·Var(h_i)/N, with Var(h_i) estimated from an independent set of
  samples; the test allows 4× that (the ratio concentrates near 1 over many entries), and checks
  the allowance is small next to the attribution itself, so the comparison is not vacuous.
"""
import functools

import pytest
import torch
from torch import nn

captum = pytest.importorskip("captum")
from captum import attr as cattr  # noqa: E402

from fastattr.integrations import captum as fa  # noqa: E402
from tests.conftest import assert_same_nested, rel_err  # noqa: E402
from tests.integrations.models import Residual, cnn, digits, mlp, residual  # noqa: E402,F401

TOL = 1e-5
METHODS = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]




@functools.lru_cache(maxsize=None)
def case(name: str):
    """(model, inputs, targets) on real digits for the CNN and MLP, seeded Gaussians for the residual block."""
    if name == "residual":
        x = torch.randn(6, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        return residual(), x, torch.tensor([0, 1, 2, 3, 4, 0])
    x, y = digits()
    return (cnn() if name == "cnn" else mlp()), x, y


MODELS = ["cnn", "mlp", "residual"]


def close(ours, theirs, tol=TOL):
    assert_same_nested(ours, theirs, tol)


def close_delta(d_ours, d_ref, attr):
    """Deltas agree up to Captum's float32 rounding of the quadrature weights (~1e-8 of Σ|attr|)."""
    assert d_ours.shape == d_ref.shape == (attr.shape[0],) and d_ours.dtype == d_ref.dtype
    scale = attr.reshape(attr.shape[0], -1).abs().sum(1).max().item()
    torch.testing.assert_close(d_ours, d_ref, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_integrated_gradients_every_quadrature(name, method):
    model, x, y = case(name)
    ours = fa.IntegratedGradients(model).attribute(x, target=y, n_steps=20, method=method)
    close(ours, cattr.IntegratedGradients(model).attribute(x, target=y, n_steps=20, method=method))


@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_baselines_and_delta(name):
    model, x, y = case(name)
    g = torch.Generator().manual_seed(4)
    baselines = [0.25, torch.rand((1,) + x.shape[1:], generator=g, dtype=x.dtype),
                 torch.rand(x.shape, generator=g, dtype=x.dtype)]
    for b in baselines:
        ours, d_ours = fa.IntegratedGradients(model).attribute(x, baselines=b, target=y, n_steps=24,
                                                               return_convergence_delta=True)
        ref, d_ref = cattr.IntegratedGradients(model).attribute(x, baselines=b, target=y, n_steps=24,
                                                                return_convergence_delta=True)
        close(ours, ref)
        close_delta(d_ours, d_ref, ref)


@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_without_multiplying_by_inputs(name):
    model, x, y = case(name)
    ours = fa.IntegratedGradients(model, multiply_by_inputs=False)
    ref = cattr.IntegratedGradients(model, multiply_by_inputs=False)
    assert ours.multiplies_by_inputs is ref.multiplies_by_inputs is False
    a, da = ours.attribute(x, baselines=0.1, target=y, n_steps=16, return_convergence_delta=True)
    b, db = ref.attribute(x, baselines=0.1, target=y, n_steps=16, return_convergence_delta=True)
    close(a, b)
    close_delta(da, db, b)


@pytest.mark.parametrize("name", MODELS)
def test_internal_batch_size_does_not_change_the_result(name):
    model, x, y = case(name)
    ig = fa.IntegratedGradients(model)
    whole = ig.attribute(x, target=y, n_steps=10, method="riemann_trapezoid")
    for size in (1, 5, 13, 60):
        part = ig.attribute(x, target=y, n_steps=10, method="riemann_trapezoid", internal_batch_size=size)
        assert rel_err(part, whole) <= 1e-12
    with pytest.warns(UserWarning):
        ref = cattr.IntegratedGradients(model).attribute(x, target=y, n_steps=10, method="riemann_trapezoid",
                                                         internal_batch_size=5)
    close(whole, ref)


@pytest.mark.parametrize("name", MODELS)
def test_target_forms(name):
    model, x, y = case(name)
    for target in (3, y.tolist(), y, torch.tensor(2), torch.tensor([1]), (4,), [(int(t),) for t in y]):
        close(fa.IntegratedGradients(model).attribute(x, target=target, n_steps=8),
              cattr.IntegratedGradients(model).attribute(x, target=target, n_steps=8))
        for cls in ("Saliency", "InputXGradient"):
            close(getattr(fa, cls)(model).attribute(x, target=target),
                  getattr(cattr, cls)(model).attribute(x, target=target))


def test_target_none_on_single_output_and_tuple_targets_on_3d_output():
    torch.manual_seed(5)
    reg = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1)).double().eval()
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    close(fa.IntegratedGradients(reg).attribute(x), cattr.IntegratedGradients(reg).attribute(x))
    close(fa.Saliency(reg).attribute(x), cattr.Saliency(reg).attribute(x))
    grid = nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Unflatten(1, (3, 4))).double().eval()
    for target in ((2, 1), (-1, 3), [(0, 0), (1, 2), (2, 3), (0, 1), (2, 2)]):
        close(fa.IntegratedGradients(grid).attribute(x, target=target, n_steps=12),
              cattr.IntegratedGradients(grid).attribute(x, target=target, n_steps=12))
    with pytest.raises(AssertionError, match="every non-batch dimension"):
        fa.Saliency(grid).attribute(x, target=(1,))


@pytest.mark.parametrize("name", MODELS)
def test_saliency_and_input_x_gradient(name):
    model, x, y = case(name)
    for abs_ in (True, False):
        close(fa.Saliency(model).attribute(x, target=y, abs=abs_),
              cattr.Saliency(model).attribute(x, target=y, abs=abs_))
    close(fa.InputXGradient(model).attribute(x, target=y), cattr.InputXGradient(model).attribute(x, target=y))


def test_tuple_in_tuple_out():
    model, x, y = case("cnn")
    close(fa.Saliency(model).attribute((x,), target=y), cattr.Saliency(model).attribute((x,), target=y))
    close(fa.InputXGradient(model).attribute((x,), target=y), cattr.InputXGradient(model).attribute((x,), target=y))
    ours, d_ours = fa.IntegratedGradients(model).attribute((x,), baselines=(0.5,), target=y, n_steps=8,
                                                           return_convergence_delta=True)
    ref, d_ref = cattr.IntegratedGradients(model).attribute((x,), baselines=(0.5,), target=y, n_steps=8,
                                                            return_convergence_delta=True)
    close(ours, ref)
    close_delta(d_ours, d_ref, ref[0])
    nt = fa.NoiseTunnel(fa.Saliency(model)).attribute((x,), nt_samples=3, stdevs=0.0, target=y, abs=False)
    close(nt, cattr.NoiseTunnel(cattr.Saliency(model)).attribute((x,), nt_samples=3, stdevs=0.0, target=y,
                                                                  abs=False))


class Gated(nn.Module):
    """``forward(x, scale, shift)``: a per-example tensor and a plain number as extra arguments."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10))

    def forward(self, x, scale, shift):
        return self.body(x) * scale + shift


def test_additional_forward_args():
    model = Gated().double().eval()
    x, y = digits(7, offset=20)
    scale = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)[:, None]
    args = (scale, 0.3)
    close(fa.Saliency(model).attribute(x, target=y, additional_forward_args=args),
          cattr.Saliency(model).attribute(x, target=y, additional_forward_args=args))
    close(fa.InputXGradient(model).attribute(x, target=y, additional_forward_args=args),
          cattr.InputXGradient(model).attribute(x, target=y, additional_forward_args=args))
    for size in (None, 3, 20):
        ours, d_ours = fa.IntegratedGradients(model).attribute(
            x, target=y, additional_forward_args=args, n_steps=9, internal_batch_size=size,
            return_convergence_delta=True)
        ref, d_ref = cattr.IntegratedGradients(model).attribute(
            x, target=y, additional_forward_args=args, n_steps=9, return_convergence_delta=True)
        close(ours, ref)
        close_delta(d_ours, d_ref, ref)
    one = lambda x, s: model(x, s, 0.0)  # noqa: E731  (a single non-tuple argument)
    close(fa.Saliency(one).attribute(x, target=y, additional_forward_args=scale),
          cattr.Saliency(one).attribute(x, target=y, additional_forward_args=scale))
    for method in (fa.Saliency(model), fa.IntegratedGradients(model)):
        ours = fa.NoiseTunnel(method).attribute(x, nt_samples=4, nt_samples_batch_size=3, stdevs=0.0, target=y,
                                                additional_forward_args=args)
        ref = cattr.NoiseTunnel(getattr(cattr, type(method).__name__)(model)).attribute(
            x, nt_samples=4, nt_samples_batch_size=3, stdevs=0.0, target=y, additional_forward_args=args)
        close(ours, ref)


def test_properties_like_captum():
    model = mlp()
    for cls in ("Saliency", "InputXGradient", "IntegratedGradients"):
        ours, ref = getattr(fa, cls)(model), getattr(cattr, cls)(model)
        assert ours.has_convergence_delta() == ref.has_convergence_delta()
        assert ours.multiplies_by_inputs == ref.multiplies_by_inputs
        nt_ours, nt_ref = fa.NoiseTunnel(ours), cattr.NoiseTunnel(ref)
        assert nt_ours.has_convergence_delta() == nt_ref.has_convergence_delta()
        assert nt_ours.multiplies_by_inputs == nt_ref.multiplies_by_inputs
    with pytest.raises(TypeError, match="NoiseTunnel wraps"):
        fa.NoiseTunnel(fa.NoiseTunnel(fa.Saliency(model)))
    with pytest.raises(TypeError, match="NoiseTunnel wraps"):
        fa.NoiseTunnel(model)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_without_noise_is_exact(name, nt_type):
    model, x, y = case(name)
    grad = cattr.Saliency(model).attribute(x, target=y, abs=False)
    plain = {"smoothgrad": grad, "smoothgrad_sq": grad * grad, "vargrad": torch.zeros_like(grad)}[nt_type]
    for abs_ in (False, True):
        ours = fa.NoiseTunnel(fa.Saliency(model)).attribute(x, nt_type=nt_type, nt_samples=6, stdevs=0.0,
                                                            target=y, abs=abs_)
        ref = cattr.NoiseTunnel(cattr.Saliency(model)).attribute(x, nt_type=nt_type, nt_samples=6, stdevs=0.0,
                                                                 target=y, abs=abs_)
        expected = plain.abs() if abs_ and nt_type == "smoothgrad" else plain
        if nt_type == "vargrad":
            assert ours.abs().max() <= 1e-12 * grad.pow(2).max() and ref.abs().max() <= 1e-12 * grad.pow(2).max()
        else:
            close(ours, ref)
            close(ours, expected)


@pytest.mark.parametrize("name", MODELS)
def test_noise_tunnel_integrated_gradients_without_noise_is_exact(name):
    model, x, y = case(name)
    kw = dict(baselines=0.1, target=y, n_steps=12, method="riemann_middle")
    ig, ig_delta = fa.IntegratedGradients(model).attribute(x, return_convergence_delta=True, **kw)
    ours, d_ours = fa.NoiseTunnel(fa.IntegratedGradients(model)).attribute(
        x, nt_samples=7, nt_samples_batch_size=3, stdevs=0.0, return_convergence_delta=True, **kw)
    ref, d_ref = cattr.NoiseTunnel(cattr.IntegratedGradients(model)).attribute(
        x, nt_samples=7, nt_samples_batch_size=3, stdevs=0.0, return_convergence_delta=True, **kw)
    close(ours, ref)
    close(ours, ig, 1e-12)
    close_delta(d_ours, d_ref, ref.repeat_interleave(7, 0))
    # Captum's layout: per partition of samples, example-major.
    torch.testing.assert_close(d_ours[:3 * x.shape[0]], ig_delta.repeat_interleave(3), rtol=1e-9, atol=1e-12)


def noisy_samples(method, x, y, stdev, n, seed, **kw):
    """``method`` at n independent noisy copies ``x + ε`` (for the Monte-Carlo variance), ``[n, B, ...]``."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.cat([x + stdev * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(n)])
    return method.attribute(xs, target=y.repeat(n), **kw).reshape((n,) + tuple(x.shape))


def mc_check(ours, ref, samples, nt_type):
    """||ours − ref||² within 4× its expectation Σ 2 Var(h)/N, and that allowance small next to ``ref``."""
    n = samples.shape[0]
    h = {"smoothgrad": samples, "smoothgrad_sq": samples ** 2, "vargrad": (samples - samples.mean(0)) ** 2}[nt_type]
    expected = 2 * h.var(0).sum() / n
    gap = (ours - ref).pow(2).sum()
    assert gap <= 4 * expected, (gap.item(), expected.item())
    assert gap >= expected / 20, "the two estimates should differ by Monte-Carlo error, not coincide"
    assert (4 * expected).sqrt() <= 0.5 * ref.norm(), ((4 * expected).sqrt().item(), ref.norm().item())


@pytest.mark.parametrize("name", MODELS)
def test_noise_tunnel_saliency_agrees_in_distribution(name):
    model, x, y = case(name)
    n, stdev = 400, 0.1
    for abs_ in (False, True):
        samples = noisy_samples(cattr.Saliency(model), x, y, stdev, n, seed=13, abs=abs_)
        for nt_type in ("smoothgrad", "smoothgrad_sq", "vargrad"):
            ours = fa.NoiseTunnel(fa.Saliency(model)).attribute(x, nt_type=nt_type, nt_samples=n, stdevs=stdev,
                                                                target=y, abs=abs_, generator=11)
            torch.manual_seed(12)
            ref = cattr.NoiseTunnel(cattr.Saliency(model)).attribute(x, nt_type=nt_type, nt_samples=n, stdevs=stdev,
                                                                     target=y, abs=abs_)
            mc_check(ours, ref, samples, nt_type)


def test_noise_tunnel_integrated_gradients_agrees_in_distribution():
    model, x, y = case("mlp")
    n, stdev, kw = 200, 0.1, dict(n_steps=8, baselines=0.0)
    samples = noisy_samples(cattr.IntegratedGradients(model), x, y, stdev, n, seed=23, **kw)
    for nt_type in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        ours = fa.NoiseTunnel(fa.IntegratedGradients(model)).attribute(x, nt_type=nt_type, nt_samples=n,
                                                                       stdevs=stdev, target=y, generator=21, **kw)
        torch.manual_seed(22)
        ref = cattr.NoiseTunnel(cattr.IntegratedGradients(model)).attribute(x, nt_type=nt_type, nt_samples=n,
                                                                            stdevs=stdev, target=y, **kw)
        mc_check(ours, ref, samples, nt_type)


def test_noise_tunnel_generator_and_batching():
    model, x, y = case("cnn")
    for method, extra in ((fa.Saliency(model), dict(abs=False)), (fa.IntegratedGradients(model), dict(n_steps=6))):
        nt = fa.NoiseTunnel(method)
        kw = dict(nt_type="vargrad", nt_samples=9, stdevs=0.2, target=y, **extra)
        a = nt.attribute(x, generator=5, **kw)
        torch.testing.assert_close(nt.attribute(x, generator=torch.Generator().manual_seed(5), **kw), a)
        torch.testing.assert_close(nt.attribute(x, generator=5, nt_samples_batch_size=4, **kw), a,
                                   rtol=1e-10, atol=1e-12)
        assert rel_err(nt.attribute(x, generator=6, **kw), a) > 1e-3
    # Both paths (Saliency: fastattr.smoothgrad; others: the loop) add noise from one documented
    # stream: one full-batch standard-normal draw per sample, in order.
    g = torch.Generator().manual_seed(5)
    noisy = [x + 0.2 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(9)]
    for method, ref in ((fa.Saliency(model), cattr.Saliency(model)), (fa.InputXGradient(model),
                                                                      cattr.InputXGradient(model))):
        kw = dict(abs=False) if isinstance(method, fa.Saliency) else {}
        ours = fa.NoiseTunnel(method).attribute(x, nt_samples=9, nt_samples_batch_size=4, stdevs=0.2, target=y,
                                                generator=5, **kw)
        close(ours, torch.stack([ref.attribute(z, target=y, **kw) for z in noisy]).mean(0), 1e-12)


def test_noise_tunnel_without_target_needs_one_output():
    model, x, _ = case("cnn")
    for method, extra in ((fa.Saliency(model), dict(abs=False)), (fa.IntegratedGradients(model), dict(n_steps=6))):
        with pytest.raises(AssertionError, match="target=None needs a model with one output"):
            fa.NoiseTunnel(method).attribute(x, nt_samples=5, stdevs=0.5, generator=3, **extra)
        with pytest.raises(ValueError, match="target=None"):
            method.attribute(x, **extra)


def test_noise_tunnel_draw_baseline_from_distrib():
    model, x, y = case("mlp")
    refs = torch.rand((3,) + x.shape[1:], generator=torch.Generator().manual_seed(8), dtype=x.dtype)
    nt = fa.NoiseTunnel(fa.IntegratedGradients(model))
    a, delta = nt.attribute(x, nt_samples=4, stdevs=0.0, draw_baseline_from_distrib=True, baselines=refs,
                            target=y, n_steps=8, return_convergence_delta=True, generator=9)
    assert a.shape == x.shape and delta.shape == (4 * x.shape[0],)
    per_ref = torch.stack([fa.IntegratedGradients(model).attribute(x, baselines=r[None], target=y, n_steps=8)
                           for r in refs])
    assert ((per_ref.min(0).values - 1e-12 <= a) & (a <= per_ref.max(0).values + 1e-12)).all()
