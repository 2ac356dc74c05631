"""Gradient attributions against closed forms on linear models, completeness, chunk-size
independence, model-state restoration and bad input."""
import numpy as np
import pytest
import torch
from torch import nn

import fastattr.attribution as A
from tests.conftest import rel_err
from tests.models import linear_model, mlp, rand, small_cnn


def test_saliency_and_input_x_gradient_on_a_linear_model():
    model = linear_model()
    x = rand(5, 3, 4, seed=1)
    w = model[1].weight.detach()
    g = A.saliency(model, x, target=2, abs=False)
    torch.testing.assert_close(g, w[2].reshape(3, 4).expand_as(x))
    torch.testing.assert_close(A.saliency(model, x, target=2), g.abs())
    torch.testing.assert_close(A.input_x_gradient(model, x, target=2), x * g)


@pytest.mark.parametrize("method", A.QUADRATURE)
def test_integrated_gradients_closed_form_on_a_linear_model(method):
    model = linear_model()
    x, base = rand(4, 3, 4, seed=2), rand(4, 3, 4, seed=3)
    t = torch.tensor([0, 1, 2, 1])
    _, weights = A.quadrature(method, 10)
    attr = A.integrated_gradients(model, x, t, baselines=base, n_steps=10, method=method)
    w = model[1].weight.detach()[t].reshape(4, 3, 4)
    torch.testing.assert_close(attr, sum(weights) * (x - base) * w)


def test_quadrature_rules_match_captum_conventions():
    nodes, weights = np.polynomial.legendre.leggauss(7)
    a, w = A.quadrature("gausslegendre", 7)
    np.testing.assert_allclose(a, (nodes + 1) / 2)
    np.testing.assert_allclose(w, weights / 2)
    assert A.quadrature("riemann_left", 4) == ([0.0, 0.25, 0.5, 0.75], [0.25] * 4)
    assert A.quadrature("riemann_right", 4)[0] == [0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(A.quadrature("riemann_middle", 4)[0], [0.125, 0.375, 0.625, 0.875])
    assert A.quadrature("riemann_trapezoid", 5)[1] == [0.1, 0.2, 0.2, 0.2, 0.1]


def test_completeness_withgauss_legendre():
    torch.manual_seed(0)
    smooth = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).double().eval()
    x = rand(6, 12, seed=4)
    attr, delta = A.integrated_gradients(smooth, x, n_steps=64, return_convergence_delta=True)
    with torch.no_grad():
        t = smooth(x).argmax(1)
        gap = smooth(x)[torch.arange(6), t] - smooth(torch.zeros_like(x))[torch.arange(6), t]
    torch.testing.assert_close(attr.sum(1) - gap, delta)
    assert (delta.abs() / gap.abs()).max() < 1e-6
    # Piecewise-linear (ReLU) models converge more slowly, but they do converge.
    deltas = [A.integrated_gradients(mlp(), x, n_steps=n, return_convergence_delta=True)[1].abs().max()
              for n in (16, 256)]
    assert deltas[1] < deltas[0] / 10


@pytest.mark.parametrize("fn,kwargs", [
    (A.integrated_gradients, dict(n_steps=20, baselines=0.1)),
    (A.smoothgrad, dict(n_samples=9, generator=3)),
    (A.smoothgrad, dict(n_samples=5, variant="vargrad")),
    (A.saliency, dict()),
])
def test_result_does_not_depend_on_chunk_size(fn, kwargs):
    model = small_cnn()
    x = rand(5, 3, 8, 8, seed=5)
    outs = [fn(model, x, 1, max_batch=mb, **kwargs) for mb in (1, 7, 4096)]
    for out in outs[1:]:
        assert ((out - outs[0]).norm() / outs[0].norm()).item() <= 1e-6
    outs.append(fn(model, x, 1, memory_budget=200_000, **kwargs))
    assert ((outs[-1] - outs[0]).norm() / outs[0].norm()).item() <= 1e-6


def test_baselines_scalar_per_example_and_shared():
    model = mlp()
    x = rand(3, 12, seed=6)
    per_example = rand(3, 12, seed=7)
    shared = rand(12, seed=8)
    a = A.integrated_gradients(model, x, 0, baselines=per_example)
    b = A.integrated_gradients(model, x, 0, baselines=shared)
    c = A.integrated_gradients(model, x, 0, baselines=0.5)
    d = A.integrated_gradients(model, x, 0, baselines=torch.full((3, 12), 0.5, dtype=torch.float64))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c, d)
    with pytest.raises(ValueError, match="baselines"):
        A.integrated_gradients(model, x, 0, baselines=rand(2, 12))


def test_smoothgrad_seeds_and_variants():
    model = mlp()
    x = rand(4, 12, seed=9)
    s1 = A.smoothgrad(model, x, 1, n_samples=8, generator=11)
    assert torch.equal(s1, A.smoothgrad(model, x, 1, n_samples=8, generator=torch.Generator().manual_seed(11)))
    assert not torch.equal(s1, A.smoothgrad(model, x, 1, n_samples=8, generator=12))
    assert (A.smoothgrad(model, x, 1, n_samples=8, variant="vargrad") >= -1e-12).all()
    torch.testing.assert_close(A.smoothgrad(model, x, 1, n_samples=3, stdev=0.0), A.saliency(model, x, 1, abs=False))
    sq = A.smoothgrad(model, x, 1, n_samples=8, variant="smoothgrad_sq", generator=11)
    var = A.smoothgrad(model, x, 1, n_samples=8, variant="vargrad", generator=11)
    torch.testing.assert_close(var, sq - s1 * s1)



def test_smoothgrad_with_one_seed_per_input_is_each_input_alone():
    """A list of seeds gives each input the noise it gets alone with its seed, whatever the chunk: the maps of
    separate calls (to the last bit of a batched gradient), for every variant; a wrong count is an error."""
    model = mlp().double()
    x, seeds = rand(4, 12, seed=9).double(), [11, 3, 11, 7]
    alone = torch.cat([A.smoothgrad_variants(model, x[i:i + 1], 1, n_samples=6, generator=s)["vargrad"]
                       for i, s in enumerate(seeds)])
    for max_batch in (None, 5):
        got = A.smoothgrad_variants(model, x, 1, n_samples=6, generator=seeds, max_batch=max_batch)["vargrad"]
        torch.testing.assert_close(got, alone, rtol=1e-10, atol=1e-12)
    same = A.smoothgrad(model, x[[0, 0]], 1, n_samples=6, generator=[11, 11])
    torch.testing.assert_close(same[0], same[1], rtol=1e-12, atol=1e-15)   # one seed, one noise
    assert not torch.allclose(A.smoothgrad(model, x, 1, n_samples=6, generator=11),
                              A.smoothgrad(model, x, 1, n_samples=6, generator=seeds))
    with pytest.raises(ValueError, match="one per input"):
        A.smoothgrad(model, x, 1, generator=[1, 2])

def test_model_state_restored_and_no_parameter_gradients():
    model = mlp()
    model[1].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = rand(3, 12, seed=10)
    before = x.clone()
    A.integrated_gradients(model, x, n_steps=8)
    A.smoothgrad(model, x, n_samples=3)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, before) and not model.training


def test_state_restored_when_the_model_raises():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2).double()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("model failed")
            return self.lin(x)

    model = Flaky().eval()
    with pytest.raises(RuntimeError, match="model failed"):
        A.integrated_gradients(model, rand(2, 4), n_steps=4)
    assert all(p.requires_grad for p in model.parameters())


def test_training_mode_is_used_as_given_with_a_warning():
    model = mlp().train()
    with pytest.warns(UserWarning, match="training mode"):
        A.saliency(model, rand(2, 12))
    assert model.training


def test_bad_input_errors():
    model = mlp()
    x = rand(2, 12)
    with pytest.raises(TypeError, match="layer"):
        A.saliency(model, torch.arange(24).reshape(2, 12))
    with pytest.raises(ValueError, match="NaN"):
        A.saliency(model, torch.full((2, 12), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="target out of range"):
        A.saliency(model, x, target=4)
    with pytest.raises(ValueError, match="target has 3 entries"):
        A.saliency(model, x, target=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="n_steps"):
        A.integrated_gradients(model, x, n_steps=0)
    with pytest.raises(ValueError, match="method must be one of"):
        A.integrated_gradients(model, x, method="simpson")
    with pytest.raises(ValueError, match="max_batch"):
        A.saliency(model, x, max_batch=0)
    with pytest.raises(ValueError, match="variant"):
        A.smoothgrad(model, x, variant="noise")


def test_gradient_shap_closed_form_on_a_linear_model():
    model = linear_model()
    x = rand(4, 3, 4, seed=20)
    w = model[1].weight.detach()[1].reshape(3, 4)
    one = rand(1, 3, 4, seed=21)
    # One baseline: the gradient is constant, so α and the noise draws do not matter.
    torch.testing.assert_close(A.gradient_shap(model, x, 1, baselines=one, n_samples=6, stdev=0.3), (x - one) * w)
    refs = rand(5, 3, 4, seed=22)
    eg = A.expected_gradients(model, x, 1, references=refs, n_samples=400, generator=1)
    # Average over uniformly drawn references -> (x - mean r) ⊙ w up to the sampling error.
    assert ((eg - (x - refs.mean(0)) * w).norm() / eg.norm()).item() < 0.1


def test_gradient_shap_is_chunk_independent_and_seeded():
    model = small_cnn()
    x, refs = rand(3, 3, 8, 8, seed=23), rand(4, 3, 8, 8, seed=24)
    outs = [A.gradient_shap(model, x, 2, baselines=refs, n_samples=7, stdev=0.1, generator=5, max_batch=mb)
            for mb in (1, 5, 1000)]
    for out in outs[1:]:
        assert ((out - outs[0]).norm() / outs[0].norm()).item() <= 1e-6
    other = A.gradient_shap(model, x, 2, baselines=refs, n_samples=7, stdev=0.1, generator=6)
    assert not torch.allclose(other, outs[0])


def test_expected_gradients_completeness_in_expectation():
    torch.manual_seed(0)
    smooth = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).double().eval()
    x, refs = rand(2, 6, seed=25), rand(3, 6, seed=26)
    eg = A.expected_gradients(smooth, x, 0, references=refs, n_samples=3000, generator=2)
    with torch.no_grad():
        gap = smooth(x)[:, 0] - smooth(refs)[:, 0].mean()
    torch.testing.assert_close(eg.sum(1), gap, rtol=0.05, atol=0.02)


def test_noise_tunnel_wraps_any_method():
    model = mlp()
    x = rand(3, 12, seed=27)
    nt = A.noise_tunnel(A.saliency, model, x, 2, n_samples=6, generator=9, abs=False)
    torch.testing.assert_close(nt, A.smoothgrad(model, x, 2, n_samples=6, generator=9))
    torch.testing.assert_close(A.noise_tunnel(A.integrated_gradients, model, x, 2, n_samples=2, stdev=0.0, n_steps=8),
                               A.integrated_gradients(model, x, 2, n_steps=8))
    vg = A.noise_tunnel(A.input_x_gradient, model, x, 2, n_samples=5, variant="vargrad", generator=3)
    assert (vg >= -1e-12).all() and vg.abs().sum() > 0
    with pytest.raises(ValueError, match="variant"):
        A.noise_tunnel(A.saliency, model, x, variant="mean")
    with pytest.raises(ValueError, match="baselines must be a tensor"):
        A.gradient_shap(model, x, baselines=rand(2, 5))


def smooth_mlp(seed: int = 0, dtype=torch.float32) -> nn.Module:
    """Three linear layers with tanh / softplus: no gates that rounding could flip."""
    torch.manual_seed(seed)
    layers = [nn.Linear(24, 32), nn.Tanh(), nn.Linear(32, 32), nn.Softplus(), nn.Linear(32, 5)]
    return nn.Sequential(*layers).to(dtype).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integrated_gradients_bf16_autocast_close_to_fp32(seed):
    """bf16 keeps 8 significant bits (unit roundoff u = 2^-8 ≈ 3.9e-3). The forward and backward
    passes round the operands of 3 + 3 matmuls (accumulation stays fp32), each adding ~u relative
    error, so the gradients — and their fp32 path sum — are within ~6u ≈ 2.3e-2 (observed ~5e-3).
    ReLU / max-pool networks can differ more: rounding may flip a gate and reroute a gradient."""
    model = smooth_mlp(seed)
    x = rand(6, 24, seed=seed + 10, dtype=torch.float32)
    seen = []
    handle = model[2].register_forward_hook(lambda m, i, o: seen.append((o.shape[0] > 6, o.dtype)))
    try:
        fp32 = A.integrated_gradients(model, x, 1, n_steps=32, max_batch=64)
        assert set(seen) == {(True, torch.float32), (False, torch.float32)}
        seen.clear()
        bf16, delta = A.integrated_gradients(model, x, 1, n_steps=32, max_batch=64, autocast=torch.bfloat16,
                                             return_convergence_delta=True)
        # Path chunks (> 6 rows) run in bf16; the target check and the delta's f(x), f(x') in fp32.
        assert set(seen) == {(True, torch.bfloat16), (False, torch.float32)}
    finally:
        handle.remove()
    assert bf16.dtype == torch.float32 and bf16.shape == x.shape
    assert 0 < rel_err(bf16, fp32) <= 6 * 2 ** -8
    # The delta's f(x) − f(x') runs in fp32: it matches the fp32 delta up to the bf16 attribution error.
    _, delta32 = A.integrated_gradients(model, x, 1, n_steps=32, return_convergence_delta=True)
    assert ((delta - delta32).abs() <= 6 * 2 ** -8 * fp32.abs().sum(1)).all()
    # Chunking still does not matter.
    chunked = A.integrated_gradients(model, x, 1, n_steps=32, max_batch=7, autocast=torch.bfloat16)
    assert rel_err(chunked, bf16) < 1e-6


def test_autocast_leaves_float64_alone_and_rejects_other_dtypes():
    model = mlp()
    x = rand(3, 12, seed=30)
    torch.testing.assert_close(A.integrated_gradients(model, x, 1, n_steps=8, autocast=torch.bfloat16),
                               A.integrated_gradients(model, x, 1, n_steps=8), rtol=0, atol=0)
    with pytest.raises(ValueError, match="autocast"):
        A.integrated_gradients(model, x, 1, autocast=torch.float64)
    with pytest.raises(ValueError, match="autocast"):
        A.integrated_gradients(model, x, 1, autocast="bf16")


def test_smoothgrad_abs():
    model = small_cnn()
    x = rand(4, 3, 8, 8, seed=31)
    g = torch.Generator().manual_seed(4)
    noisy = [x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(6)]
    grads = torch.stack([A.saliency(model, z, 2, abs=False) for z in noisy])
    expected = {"smoothgrad": grads.abs().mean(0), "smoothgrad_sq": (grads ** 2).mean(0),
                "vargrad": (grads ** 2).mean(0) - grads.abs().mean(0) ** 2}
    for variant, want in expected.items():
        for mb in ((3, 1000) if variant == "vargrad" else (1000,)):
            out = A.smoothgrad(model, x, 2, n_samples=6, stdev=0.3, variant=variant, abs=True, generator=4,
                               max_batch=mb)
            assert rel_err(out, want) <= 1e-12
    signed = A.smoothgrad(model, x, 2, n_samples=6, stdev=0.3, generator=4)
    assert rel_err(signed, grads.mean(0)) <= 1e-12 and rel_err(signed, expected["smoothgrad"]) > 0.1
    torch.testing.assert_close(A.smoothgrad(model, x, 2, n_samples=3, stdev=0.0, abs=True),
                               A.saliency(model, x, 2))
    with pytest.raises(TypeError, match="abs"):
        A.smoothgrad(model, x, 2, abs="yes")


def test_gradient_shap_options():
    model = small_cnn()
    x, refs = rand(3, 3, 8, 8, seed=32), rand(4, 3, 8, 8, seed=33)
    kw = dict(baselines=refs, n_samples=5, stdev=0.2, generator=8)
    grads = A.gradient_shap(model, x, 2, multiply_by_inputs=False, **kw)
    clean, d_clean = A.gradient_shap(model, x, 2, return_convergence_delta=True, **kw)
    noisy, d_noisy = A.gradient_shap(model, x, 2, noisy_difference=True, return_convergence_delta=True, **kw)
    # Replay the documented stream: per sample an index and α per example, then the noise.
    g = torch.Generator().manual_seed(8)
    terms_clean, terms_noisy, gs, gaps_clean, gaps_noisy = [], [], [], [], []
    for _ in range(5):
        b = refs[torch.randint(4, (3,), generator=g)]
        a = torch.rand(3, generator=g, dtype=torch.float64).view(-1, 1, 1, 1)
        xn = x + 0.2 * torch.randn(x.shape, generator=g, dtype=x.dtype)
        grad = A.saliency(model, b + a * (xn - b), 2, abs=False)
        gs.append(grad)
        terms_clean.append((x - b) * grad)
        terms_noisy.append((xn - b) * grad)
        with torch.no_grad():
            gaps_clean.append(model(x)[:, 2] - model(b)[:, 2])
            gaps_noisy.append(model(xn)[:, 2] - model(b)[:, 2])
    assert rel_err(grads, torch.stack(gs).mean(0)) <= 1e-12
    assert rel_err(clean, torch.stack(terms_clean).mean(0)) <= 1e-12
    assert rel_err(noisy, torch.stack(terms_noisy).mean(0)) <= 1e-12 and rel_err(noisy, clean) > 1e-3
    sums = lambda terms: torch.stack([t.reshape(3, -1).sum(1) for t in terms], 1)  # noqa: E731
    torch.testing.assert_close(d_clean, sums(terms_clean) - torch.stack(gaps_clean, 1))
    torch.testing.assert_close(d_noisy, sums(terms_noisy) - torch.stack(gaps_noisy, 1))
    assert d_clean.shape == (3, 5)
    with pytest.raises(ValueError, match="stdev"):
        A.gradient_shap(model, x, baselines=refs, stdev=-0.1)


def test_saved_activation_bytes_scale_with_rows_and_skip_parameters():
    from fastattr.core import measured_input_factor, saved_activation_bytes

    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(100, 1000), nn.Tanh(), nn.Linear(1000, 3)).double().eval()
    wide[2].weight.requires_grad_(False)
    flags = [p.requires_grad for p in wide.parameters()]
    x = rand(4, 100, seed=40)
    one, four = saved_activation_bytes(wide, x[:1]), saved_activation_bytes(wide, x)
    assert four == 4 * one > 0
    param_bytes = sum(p.numel() * p.element_size() for p in wide.parameters())
    assert one < param_bytes / 20  # activations only: ~10 kB per row against 800 kB of weights
    assert [p.requires_grad for p in wide.parameters()] == flags
    assert all(p.grad is None for p in wide.parameters())
    assert measured_input_factor(wide, x) == max(24.0, 2.0 * one / (100 * 8))


def test_cuda_free_memory_counts_the_allocators_cached_blocks(monkeypatch):
    """After one large call torch's caching allocator keeps its blocks reserved, and the driver
    reports them as taken; the default chunk must still see them as free (else it shrinks to 1)."""
    from fastattr.core import chunks

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 70 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    assert chunks.free_memory(torch.device("cuda")) == 69 * gib
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    assert chunks.free_memory(torch.device("cuda")) == 1 * gib


@pytest.mark.parametrize("n", [129, 300, 1000])
def testgauss_legendre_beyond_numpy_is_the_same_rule_in_linear_memory(n):
    """Past EXACT_GAUSS_LEGENDRE points the nodes come from Newton's iteration (O(n) memory): they
    match numpy's leggauss and integrate polynomials of degree up to 2n − 1 exactly."""
    from fastattr.attribution.gradient import EXACT_GAUSS_LEGENDRE, gauss_legendre

    assert n > EXACT_GAUSS_LEGENDRE
    nodes, weights = gauss_legendre(n)
    ref_nodes, ref_weights = np.polynomial.legendre.leggauss(n)
    assert np.abs(nodes - ref_nodes).max() < 1e-14
    assert np.abs(weights - ref_weights).max() < 1e-10 * ref_weights.max()
    for degree in (0, 10, 2 * n - 2):
        assert abs(weights @ nodes ** degree - 2 / (degree + 1)) < 1e-10
    alphas, w = A.quadrature("gausslegendre", n)
    assert len(alphas) == n and min(alphas) > 0 and max(alphas) < 1 and abs(sum(w) - 1) < 1e-12
