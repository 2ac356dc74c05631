"""Random-subset metrics (FCOR, Sensitivity-N, infidelity) on closed forms, and evaluate()."""
import pytest
import torch

import fastattr
import fastattr.metrics as M
from fastattr.metrics.evaluate import CountingModel
from fastattr.core import make_baseline
from tests.metrics.test_faithfulness import Weighted
from tests.models import rand, small_cnn

W = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 1.0, 3.0]


def _linear_case():
    model = Weighted(W)
    x = rand(3, 8, seed=1)
    return model, x, torch.tensor(W, dtype=torch.float64)


def test_exact_attribution_of_a_linear_model_is_perfectly_faithful():
    model, x, w = _linear_case()
    exact = w * x  # f(x) − f(x with S zeroed) = Σ_{i∈S} w_i x_i exactly
    fcor = M.faithfulness_correlation(model, x, exact, 0, n_subsets=50, generator=1)
    torch.testing.assert_close(fcor, torch.ones(3, dtype=torch.float64))
    sens = M.sensitivity_n(model, x, exact, 0, ns=[1, 2, 4], n_subsets=40, generator=2)
    torch.testing.assert_close(sens, torch.ones(3, 3, dtype=torch.float64))
    # Subset infidelity, I = (x − x') ⊙ m: the gradient w is exact; w ⊙ x is exact when declared
    # as multiplied by the inputs (then I = m).
    infd = M.infidelity(model, x, w.expand(3, 8), 0, n_subsets=30, generator=3)
    torch.testing.assert_close(infd, torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    infd_x = M.infidelity(model, x, exact, 0, n_subsets=30, generator=3, multiplied_by_inputs=True)
    torch.testing.assert_close(infd_x, torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    assert (M.infidelity(model, x, exact, 0, n_subsets=30, generator=3) > 1e-3).all()
    # Gaussian perturbations: Iᵀa = Δ exactly when a is the gradient w.
    gauss = M.infidelity(model, x, w.expand(3, 8), 0, perturbation="gaussian", noise_std=0.3, n_subsets=30)
    torch.testing.assert_close(gauss, torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)


def test_infidelity_by_hand_and_optimal_scaling():
    model, x, w = _linear_case()
    doubled = (2 * w).expand(3, 8)
    t = torch.zeros(3, dtype=torch.long)
    passes = M.subset_deltas(model, x, t, 8, subset_size=3, n_subsets=25, generator=4)
    mass = (passes.masks.double() * x.unsqueeze(1) * doubled.unsqueeze(1)).sum(-1)  # Iᵀa, I = x ⊙ m
    expected = ((mass - passes.delta.double()) ** 2).mean(-1)
    got = M.infidelity(model, x, doubled, 0, passes=passes)
    torch.testing.assert_close(got, expected)
    assert (got > 0).all()
    normalised = M.infidelity(model, x, doubled, 0, passes=passes, normalize=True)
    torch.testing.assert_close(normalised, torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)


def test_random_attribution_scores_worse_than_the_exact_one():
    model, x, w = _linear_case()
    noise = rand(3, 8, seed=9)
    assert (M.faithfulness_correlation(model, x, noise, 0, generator=5) < 0.99).all()
    assert (M.infidelity(model, x, noise, 0, generator=5) > 1e-3).all()


def test_subset_sizes_and_seeds():
    model, x, _ = _linear_case()
    t = torch.zeros(3, dtype=torch.long)
    p1 = M.subset_deltas(model, x, t, 8, subset_size=3, n_subsets=10, generator=7)
    p2 = M.subset_deltas(model, x, t, 8, subset_size=3, n_subsets=10, generator=7)
    assert (p1.masks.sum(-1) == 3).all()
    assert torch.equal(p1.masks, p2.masks) and torch.equal(p1.delta, p2.delta)
    bern = M.subset_deltas(model, x, t, 8, p=0.5, n_subsets=40, generator=7)
    expected = (bern.masks.double() * x.unsqueeze(1) * torch.tensor(W, dtype=torch.float64)).sum(-1)
    # f is linear, so Δ = Σ_{i∈S} w_i x_i
    torch.testing.assert_close(bern.delta.double(), expected, rtol=1e-5, atol=1e-5)
    explicit = M.subset_deltas(model, x, t, 8, masks=p1.masks[0])  # [K, F]: shared by every example
    torch.testing.assert_close(explicit.delta[0], p1.delta[0])
    with pytest.raises(ValueError, match="subset sizes"):
        M.subset_deltas(model, x, torch.zeros(3, dtype=torch.long), 8, subset_size=9, n_subsets=2)
    with pytest.raises(ValueError, match="subset_fraction"):
        M.faithfulness_correlation(model, x, x, 0, subset_fraction=0.0)
    with pytest.raises(ValueError, match="perturbation"):
        M.infidelity(model, x, x, 0, perturbation="uniform")


def test_evaluate_matches_the_metrics_and_shares_passes():
    model = small_cnn()
    x = rand(4, 3, 8, 8, seed=11)
    y = torch.tensor([0, 1, 2, 3])
    attrs = {"saliency": fastattr.saliency(model, x, y).sum(1),
             "ixg": fastattr.input_x_gradient(model, x, y).sum(1), "random": rand(4, 8, 8, seed=12)}
    ev = fastattr.evaluate(model, x, y, attributions=attrs, n_subsets=30, ns=[2, 8], generator=5)
    for name, a in attrs.items():
        torch.testing.assert_close(ev["deletion"][name], M.deletion(model, x, a, y))
        torch.testing.assert_close(ev["insertion"][name], M.insertion(model, x, a, y))
        torch.testing.assert_close(ev["faithfulness_correlation"][name],
                                   M.faithfulness_correlation(model, x, a, y, n_subsets=30, generator=5))
        torch.testing.assert_close(ev["infidelity"][name],
                                   M.infidelity(model, x, a, y, n_subsets=30, generator=5))
    only_sens = fastattr.evaluate(model, x, y, attributions=attrs, metrics=["sensitivity_n"], n_subsets=30,
                                  ns=[2, 8], generator=5)
    for name, a in attrs.items():
        torch.testing.assert_close(only_sens["sensitivity_n"][name],
                                   M.sensitivity_n(model, x, a, y, ns=[2, 8], n_subsets=30, generator=5))
    # Method by method, the random-subset metrics would run their passes once per method.
    separate = CountingModel(model)
    for a in attrs.values():
        M.faithfulness_correlation(separate, x, a, y, n_subsets=30, generator=5)
        M.infidelity(separate, x, a, y, n_subsets=30, generator=5)
        M.sensitivity_n(separate, x, a, y, ns=[2, 8], n_subsets=30, generator=5)
    shared = fastattr.evaluate(model, x, y, attributions=attrs, n_subsets=30, ns=[2, 8],
                               metrics=["faithfulness_correlation", "infidelity", "sensitivity_n"])
    # on its own, one metric runs one clean forward (the target check) and its subsets
    alone = CountingModel(model)
    M.faithfulness_correlation(alone, x, attrs["saliency"], y, n_subsets=30, generator=5)
    assert alone.inputs == 4 + 4 * 30
    # one clean forward, then 30 subsets per example for FCOR and infidelity together, 30 per n
    assert shared.forward_inputs == 4 + 4 * 30 + 4 * 30 * 2
    assert shared.forward_inputs * len(attrs) < separate.inputs
    summary = ev.summary()
    assert set(summary) == set(M.FAITHFULNESS_METRICS) and set(summary["deletion"]) == set(attrs)
    pd = pytest.importorskip("pandas")
    table = ev.to_pandas()
    # one row per example, method and metric; Sensitivity-N one per n as well
    assert isinstance(table, pd.DataFrame) and len(table) == 4 * 3 * (len(M.FAITHFULNESS_METRICS) - 1) + 4 * 3 * 2


def test_evaluate_bad_input():
    model = small_cnn()
    x = rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="non-empty dict"):
        fastattr.evaluate(model, x, attributions={})
    with pytest.raises(ValueError, match="unknown metric"):
        fastattr.evaluate(model, x, attributions={"a": rand(2, 8, 8)}, metrics=["accuracy"])
    with pytest.raises(ValueError, match="same shape"):
        fastattr.evaluate(model, x, attributions={"a": rand(2, 8, 8), "b": rand(2, 3, 8, 8)})
    with pytest.raises(ValueError, match="NaN"):
        fastattr.evaluate(model, x, attributions={"a": torch.full((2, 8, 8), float("nan"))})


def test_uniform_baseline_comes_from_the_metrics_generator():
    """``baseline="uniform"`` draws its noise from the metric's generator (first, then the subsets), in
    the random-subset metrics as in the ranked ones; evaluate() does the same from its own copy."""
    model = small_cnn()
    x, a = rand(2, 3, 8, 8, seed=91), rand(2, 3, 8, 8, seed=92)
    kw = dict(n_subsets=12)

    def replay(seed):
        gen = torch.Generator().manual_seed(seed)
        return make_baseline(x, "uniform", generator=gen), gen

    for seed in (5, 9):
        noise, gen = replay(seed)
        torch.testing.assert_close(
            M.faithfulness_correlation(model, x, a, 1, baseline="uniform", generator=seed, **kw),
            M.faithfulness_correlation(model, x, a, 1, baseline=noise, generator=gen, **kw))
        noise, gen = replay(seed)
        torch.testing.assert_close(M.infidelity(model, x, a, 1, baseline="uniform", generator=seed, **kw),
                                   M.infidelity(model, x, a, 1, baseline=noise, generator=gen, **kw))
        noise, gen = replay(seed)
        torch.testing.assert_close(
            M.sensitivity_n(model, x, a, 1, ns=[4, 40], baseline="uniform", generator=seed, **kw),
            M.sensitivity_n(model, x, a, 1, ns=[4, 40], baseline=noise, generator=gen, **kw))
    five = M.faithfulness_correlation(model, x, a, 1, baseline="uniform", generator=5, **kw)
    noise, _ = replay(0)
    other_noise = M.faithfulness_correlation(model, x, a, 1, baseline=noise, generator=5, **kw)
    assert not torch.allclose(five, other_noise)
    ev = fastattr.evaluate(model, x, 1, attributions={"a": a}, baseline="uniform", generator=5, ns=[4, 40],
                           metrics=["faithfulness_correlation", "infidelity", "sensitivity_n"], **kw)
    torch.testing.assert_close(ev["faithfulness_correlation"]["a"], five)
    sens = M.sensitivity_n(model, x, a, 1, ns=[4, 40], baseline="uniform", generator=5, **kw)
    torch.testing.assert_close(ev["sensitivity_n"]["a"], sens)


def test_all_equal_attributions_warn_that_the_correlation_is_undefined():
    model = small_cnn()
    x = rand(2, 3, 8, 8, seed=93)
    a = torch.stack([torch.full((8, 8), 0.7, dtype=torch.float64), rand(8, 8, seed=94)])
    with pytest.warns(RuntimeWarning, match=r"faithfulness_correlation: .* examples \[0\]"):
        fcor = M.faithfulness_correlation(model, x, a, 1, n_subsets=10)
    assert fcor[0].isnan() and fcor[1].isfinite()
    with pytest.warns(RuntimeWarning, match=r"sensitivity_n: .* examples \[0\]"):
        sens = M.sensitivity_n(model, x, a, 1, ns=[3, 30], n_subsets=10)
    assert sens[0].isnan().all() and sens[1].isfinite().all()


def test_gaussian_passes_have_no_subsets():
    model = small_cnn()
    x, a = rand(2, 3, 8, 8, seed=97), rand(2, 3, 8, 8, seed=98)
    passes = M.subset_deltas(model, x, torch.tensor([0, 1]), x[0].numel(), n_subsets=5, noise=0.1)
    assert passes.masks is None and passes.weight.shape == (2, 5, x[0].numel())
    with pytest.raises(ValueError, match="weighted mass"):
        passes.attribution_mass(a.flatten(1), weighted=False)
    with pytest.raises(ValueError, match="not both"):
        M.subset_deltas(model, x, torch.tensor([0, 1]), x[0].numel(), noise=0.1,
                        masks=torch.ones(5, x[0].numel(), dtype=torch.bool))


def test_gaussian_infidelity_draws_per_chunk_the_same_noise():
    """The noise is drawn one perturbation at a time, so any chunk size (within one example block or
    spanning several perturbations) gives the same values; the unused baseline draws nothing."""
    model = small_cnn()
    x, a = rand(4, 3, 8, 8, seed=99), rand(4, 8, 8, seed=100)
    kw = dict(perturbation="gaussian", noise_std=0.2, n_subsets=7, generator=3)
    ref = M.infidelity(model, x, a, 1, **kw)
    for max_batch in (3, 4, 9, 28):
        torch.testing.assert_close(M.infidelity(model, x, a, 1, max_batch=max_batch, **kw), ref)
    torch.testing.assert_close(M.infidelity(model, x, a, 1, baseline="uniform", **kw), ref)
    assert not torch.allclose(M.infidelity(model, x, a, 1, **{**kw, "generator": 4}), ref)


def test_constant_mass_gives_nan_whatever_the_rounding():
    """A constant attribution mass has no correlation: NaN, even where centring it leaves rounding noise
    (0.7 × 12 features in float64 is not exactly 12 · 0.7 for every subset order of summation)."""
    model = small_cnn()
    x = rand(3, 3, 8, 8, seed=95)
    a = torch.full((3, 8, 8), 0.7, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="undefined"):
        fcor = M.faithfulness_correlation(model, x, a, 1)
    assert fcor.isnan().all()
    centred = torch.tensor([[0.7 * 3] * 4], dtype=torch.float64)
    from fastattr.metrics.subsets import pearson
    assert pearson(centred + torch.tensor([[0.0, 4e-16, -4e-16, 0.0]]), rand(1, 4, seed=96)).isfinite().all()
    assert pearson(centred, rand(1, 4, seed=96)).isnan().all()


@pytest.mark.parametrize("call,error,match", [
    (lambda m, x, a: M.faithfulness_correlation(m, x, a, 1, n_subsets=0), ValueError, "n_subsets must be an int >= 2"),
    (lambda m, x, a: M.faithfulness_correlation(m, x, a, 1, n_subsets=1), ValueError, "n_subsets must be an int >= 2"),
    (lambda m, x, a: M.infidelity(m, x, a, 1, n_subsets=2.5), ValueError, "n_subsets must be an int >= 1"),
    (lambda m, x, a: M.infidelity(m, x, a, 1, perturbation="gaussian", n_subsets=0), ValueError, "n_subsets"),
    (lambda m, x, a: M.infidelity(m, x, a, 1, perturbation="gaussian", noise_std=-1), ValueError,
     "noise_std must be a number > 0"),
    (lambda m, x, a: M.sensitivity_n(m, x, a, 1, ns=[]), ValueError, "ns must be a non-empty sequence"),
    (lambda m, x, a: M.sensitivity_n(m, x, a, 1, ns=5), ValueError, "ns must be a non-empty sequence"),
    (lambda m, x, a: M.deletion(m, x, a, 1, baseline=float("nan")), ValueError, "baseline contains NaN"),
    (lambda m, x, a: M.deletion(m, x, a, 1, curves="yes"), TypeError, "curves must be a bool"),
    (lambda m, x, a: M.deletion(m, x, a, 1, memory_budget="1GB"), ValueError, "memory_budget must be"),
    (lambda m, x, a: M.deletion_error(m, x, a, 1, max_exhaustive=100), ValueError, "max_exhaustive=100"),
    (lambda m, x, a: fastattr.evaluate(m, x, 1, attributions={"a": a}, metrics="deletion"), TypeError,
     "metrics must be a non-empty list"),
    (lambda m, x, a: fastattr.evaluate(m, x, 1, attributions={"a": a}, metrics=[]), TypeError,
     "metrics must be a non-empty list"),
    (lambda m, x, a: fastattr.evaluate(m, x, 1, attributions={"a": a}, n_subsets=1), ValueError,
     "n_subsets must be an int >= 2"),
])
def test_bad_counts_and_arguments_are_named(call, error, match):
    model, x, a = small_cnn(), rand(2, 3, 8, 8, seed=97), rand(2, 8, 8, seed=98)
    copies = x.clone(), a.clone()
    with pytest.raises(error, match=match):
        call(model, x, a)
    assert torch.equal(x, copies[0]) and torch.equal(a, copies[1])
