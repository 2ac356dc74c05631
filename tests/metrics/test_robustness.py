"""Average / max sensitivity against a slow loop (one perturbed input at a time) and closed forms."""
import math

import pytest
import torch

import fastattr
from fastattr.metrics.robustness import avg_sensitivity, max_sensitivity
from tests.models import linear_model, mlp, rand


def slow_sensitivities(model, x, explain, target, *, radius, n_samples, p=2.0, normalise=False, seed=0,
                       prep=lambda a: a):
    """Per-sample sensitivities ``[B, n]``: ε_j is one full-batch draw of U[−r, r] from a seeded CPU
    generator per sample; every perturbed input is explained on its own."""
    gen = torch.Generator().manual_seed(seed)
    e_x = prep(explain(model, x, target))
    out = torch.zeros(x.shape[0], n_samples, dtype=torch.float64)
    for j in range(n_samples):
        noise = -radius + (radius - -radius) * torch.rand(x.shape, generator=gen, dtype=x.dtype)
        for b in range(x.shape[0]):
            e = prep(explain(model, (x[b] + noise[b])[None], target[b:b + 1]))[0]
            d = torch.linalg.vector_norm((e - e_x[b]).flatten(), ord=p)
            out[b, j] = d / torch.linalg.vector_norm(e_x[b].flatten(), ord=p) if normalise else d
    return out


@pytest.mark.parametrize("p,normalise", [(2, False), (1, True), (math.inf, False)])
def test_matches_the_slow_loop(p, normalise):
    model, x = mlp(), rand(3, 12, seed=1)
    t = torch.tensor([0, 2, 3])
    ref = slow_sensitivities(model, x, fastattr.saliency, t, radius=0.3, n_samples=5, p=p,
                             normalise=normalise, seed=7)
    for max_batch in (1, 4, None):
        kw = dict(radius=0.3, n_samples=5, norm=p, normalise=normalise, generator=7, max_batch=max_batch)
        avg = avg_sensitivity(model, x, fastattr.saliency, t, **kw)
        mx = max_sensitivity(model, x, fastattr.saliency, t, **kw)
        torch.testing.assert_close(avg, ref.mean(1), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(mx, ref.amax(1), rtol=1e-10, atol=1e-12)
    assert (ref > 0).all() and (ref.amax(1) > ref.mean(1)).all()


def test_abs_max_preprocessing_and_method_names():
    model, x = mlp(seed=3), rand(2, 12, seed=2)
    t = model(x).argmax(1)
    prep = lambda a: a.abs() / a.abs().amax(1, keepdim=True)
    ref = slow_sensitivities(model, x, fastattr.input_x_gradient, t, radius=0.2, n_samples=4, seed=1,
                             prep=prep)
    got = avg_sensitivity(model, x, "input_x_gradient", None, radius=0.2, n_samples=4, generator=1,
                          preprocess="abs_max")
    torch.testing.assert_close(got, ref.mean(1), rtol=1e-10, atol=1e-12)


def test_explain_kwargs_and_precomputed_attributions():
    model, x = mlp(), rand(2, 12, seed=4)
    signed = lambda m, z, t: fastattr.saliency(m, z, t, abs=False)
    ref = slow_sensitivities(model, x, signed, torch.tensor([1, 1]), radius=0.1, n_samples=3, seed=2)
    kw = dict(radius=0.1, n_samples=3, generator=2)
    got = max_sensitivity(model, x, fastattr.saliency, 1, explain_kwargs={"abs": False}, **kw)
    torch.testing.assert_close(got, ref.amax(1), rtol=1e-10, atol=1e-12)
    given = fastattr.saliency(model, x, 1, abs=False)
    again = max_sensitivity(model, x, signed, 1, attributions=given, **kw)
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_a_linear_models_saliency_has_zero_sensitivity():
    model, x = linear_model(), rand(4, 12, seed=3)
    for fn in (avg_sensitivity, max_sensitivity):
        s = fn(model, x, fastattr.saliency, None, radius=0.5, n_samples=20, normalise=True)
        assert torch.equal(s, torch.zeros(4, dtype=torch.float64))
    # x ⊙ w does move with x: ||ε ⊙ w|| > 0.
    assert (avg_sensitivity(model, x, fastattr.input_x_gradient, 0, n_samples=5) > 0).all()


def test_identity_explanation_closed_form():
    """e(x) = x: the sensitivity of a sample is ||ε||. With the 1-norm E||ε||_1 = d·r/2 and the standard
    deviation of the mean of n samples is sqrt(d·r²/12 / n); with the ∞-norm every sample is ≤ r and
    the max over many samples comes close to r."""
    model, x = linear_model(d=12), rand(3, 12, seed=5)
    identity = lambda m, z, t: z
    d, r, n = 12, 0.1, 400
    avg = avg_sensitivity(model, x, identity, 0, radius=r, n_samples=n, norm=1, generator=3)
    assert ((avg - d * r / 2).abs() < 5 * math.sqrt(d * r * r / 12 / n)).all()
    mx = max_sensitivity(model, x, identity, 0, radius=r, n_samples=n, norm=math.inf, generator=3)
    assert ((mx <= r) & (mx > 0.99 * r)).all()


def test_perturbed_samples_are_folded_into_the_batch():
    model, x = mlp(), rand(3, 12, seed=6)
    calls = []

    def explain(m, z, t):
        calls.append(z.shape[0])
        return fastattr.saliency(m, z, t)

    avg_sensitivity(model, x, explain, 0, n_samples=10, max_batch=12)
    assert calls == [3, 12, 12, 6]  # e(x), then 4 + 4 + 2 perturbed copies of the batch of 3
    calls.clear()
    avg_sensitivity(model, x, explain, 0, n_samples=10)
    assert calls == [3, 30]


def test_seeds_and_inputs_untouched():
    model, x = mlp(), rand(2, 12, seed=8)
    x0 = x.clone()
    a = avg_sensitivity(model, x, "saliency", 0, n_samples=4, generator=1)
    b = avg_sensitivity(model, x, "saliency", 0, n_samples=4, generator=torch.Generator().manual_seed(1))
    c = avg_sensitivity(model, x, "saliency", 0, n_samples=4, generator=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, x0)


def test_bad_input():
    model, x = mlp(), rand(2, 12, seed=9)
    with pytest.raises(ValueError, match="radius"):
        avg_sensitivity(model, x, "saliency", 0, radius=0.0)
    with pytest.raises(ValueError, match="n_samples"):
        max_sensitivity(model, x, "saliency", 0, n_samples=0)
    with pytest.raises(ValueError, match="unknown explain method"):
        avg_sensitivity(model, x, "nope", 0)
    with pytest.raises(TypeError, match="explain"):
        avg_sensitivity(model, x, 3, 0)
    with pytest.raises(ValueError, match="norm"):
        avg_sensitivity(model, x, "saliency", 0, norm=-1)
    with pytest.raises(ValueError, match="explain returned"):
        avg_sensitivity(model, x, lambda m, z, t: z[:1], 0, n_samples=2)
    with pytest.raises(ValueError, match="attributions"):
        avg_sensitivity(model, x, "saliency", 0, attributions=torch.zeros(3, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        nan = torch.full((2, 12), math.nan, dtype=torch.float64)
        avg_sensitivity(model, x, "saliency", 0, attributions=nan)
    with pytest.raises(ValueError, match="preprocess"):
        avg_sensitivity(model, x, "saliency", 0, preprocess="max")


@pytest.mark.parametrize("fn", [avg_sensitivity, max_sensitivity])
def test_errors_name_the_argument_at_fault(fn):
    model, x = mlp(), rand(2, 12, seed=9)
    # attributions [2, 1, 12] where explain gives [2, 12]: the attributions are at fault, not explain
    with pytest.raises(ValueError, match=r"^attributions has \(1, 12\) per example but explain returns") as err:
        fn(model, x, "saliency", 0, n_samples=2, attributions=rand(2, 1, 12, seed=1))
    assert "explain returned" not in str(err.value)
    with pytest.raises(ValueError, match="^attributions must be e"):
        fn(model, x, "saliency", 0, n_samples=2, attributions=rand(3, 12, seed=1))
    # explain at fault: the wrong number of explanations, for x or for the perturbed copies
    with pytest.raises(ValueError, match="^explain returned"):
        fn(model, x, lambda m, z, t: z[:1], 0, n_samples=2)
    with pytest.raises(ValueError, match="^explain returned"):
        fn(model, x, lambda m, z, t: z[:2], 0, n_samples=2, attributions=rand(2, 12, seed=1))
    with pytest.raises(ValueError, match="^explain returned NaN"):
        fn(model, x, lambda m, z, t: z * math.nan, 0, n_samples=2)
