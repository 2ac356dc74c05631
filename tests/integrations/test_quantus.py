"""fastattr.integrations.quantus gives Quantus 0.6's scores.

Deterministic metrics (PixelFlipping, RegionPerturbation morf/lerf, SensitivityN, Infidelity with a
fixed baseline) must agree with Quantus to float32 round-off. The random ones draw from fastattr's
seeded generator; to compare them draw for draw, Quantus's own draws (``np.random.choice`` for the
FaithfulnessCorrelation subsets, ``np.random.uniform`` for the sensitivity noise) are replaced in
the test by the draws fastattr makes from the same seed, so both run on identical perturbations.

Known differences (documented in the module): ties in the attribution (stable order in fastattr,
numpy's quicksort in Quantus) — the maps here are continuous, and a channel-reduced map is only
broadcast-ranked with steps of whole pixels; ``"mean"`` / ``"uniform"`` baselines — not compared.
"""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

quantus = pytest.importorskip("quantus")

import fastattr  # noqa: E402
from fastattr.integrations import quantus as fq  # noqa: E402
from fastattr.metrics.robustness import uniform_noise  # noqa: E402
from fastattr.metrics.subsets import subset_deltas  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


def cnn(softmax: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2),
              nn.Flatten(), nn.Linear(16, 5)]
    return nn.Sequential(*layers, *([nn.Softmax(dim=-1)] if softmax else [])).eval()


def data(n: int = 3, seed: int = 0, hw=(8, 8)):
    """Seeded images in [0, 1] ``[n, 3, *hw]``, the model's labels, and continuous attribution maps:
    a channel-reduced one ``[n, 1, *hw]`` and a per-element one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, *hw, generator=g)
    y = cnn()(x).argmax(1)
    pixel = torch.randn(n, 1, *hw, generator=g)
    element = torch.randn(n, 3, *hw, generator=g)
    return x.numpy(), y.numpy(), pixel.numpy(), element.numpy()


def close(ours, theirs):
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64),
                               rtol=RTOL, atol=ATOL)


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("PYTEST", "1")  # Quantus's switch for its warnings
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # Quantus 0.6 calls np.trapz (numpy 2.4)


def saliency_explain(model, inputs, targets, **kwargs):
    """A Quantus-convention explain_func (numpy in and out) shared by both libraries."""
    x = torch.as_tensor(inputs, dtype=torch.float32)
    return fastattr.saliency(model, x, torch.as_tensor(targets)).sum(1, keepdim=True).numpy()


@pytest.mark.parametrize("step,which,hw,baseline,softmax", [
    (3, "pixel", (6, 8), "black", True), (12, "pixel", (6, 8), "white", False),
    (4, "pixel", (8, 8), "black", True),
    (4, "element", (8, 8), 0.3, True), (1, "element", (4, 4), "black", False)])
def test_pixel_flipping_curves(step, which, hw, baseline, softmax):
    x, y, pixel, element = data(hw=hw)
    a = pixel if which == "pixel" else element
    kw = dict(features_in_step=step, perturb_baseline=baseline, disable_warnings=True)
    ours = fq.PixelFlipping(**kw)(cnn(), x, y, a, softmax=softmax)
    theirs = quantus.PixelFlipping(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=a, softmax=softmax)
    assert np.asarray(ours).shape == (3, x[0].size // step)
    # A channel-reduced map ranks each pixel's channels as a tie: where a step splits a pixel, the
    # libraries may remove different channels first, so compare after whole pixels only.
    whole = slice(None) if which == "element" or step % 3 == 0 else slice(2, None, 3)
    close(np.asarray(ours)[:, whole], np.asarray(theirs)[:, whole])
    auc = dict(kw, return_auc_per_sample=True, abs=True)
    ours_auc = fq.PixelFlipping(**auc)(cnn(), x, y, a)
    if whole == slice(None):
        close(ours_auc, quantus.PixelFlipping(**auc)(model=cnn(), x_batch=x, y_batch=y, a_batch=a))
    close(ours_auc, np.trapezoid(fq.PixelFlipping(**dict(kw, abs=True))(cnn(), x, y, a), axis=1))


@pytest.mark.parametrize("patch,order,regions", [(4, "morf", 100), (3, "lerf", 5), (2, "morf", 7)])
def test_region_perturbation_curves(patch, order, regions):
    x, y, pixel, _ = data(seed=1)
    kw = dict(patch_size=patch, order=order, regions_evaluation=regions, disable_warnings=True)
    ours = fq.RegionPerturbation(**kw)(cnn(), x, y, pixel)
    theirs = quantus.RegionPerturbation(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=pixel)
    assert np.asarray(ours).shape == (3, min(regions, (-(-8 // patch)) ** 2))
    close(ours, theirs)


def test_region_perturbation_random_order_is_seeded():
    x, y, pixel, _ = data()
    metric = fq.RegionPerturbation(patch_size=4, order="random")
    a, b, c = (metric(cnn(), x, y, pixel, generator=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Every order removes all four patches: the last point is the fully-perturbed input either way.
    np.testing.assert_allclose(np.asarray(a)[:, -1], np.asarray(c)[:, -1], rtol=1e-6)


def replay_subsets(monkeypatch, masks):
    """Make ``np.random.choice`` return fastattr's subsets in Quantus's draw order (run, example)."""
    runs, batch = masks.shape[1], masks.shape[0]
    draws = iter([np.flatnonzero(masks[b, k]) for k in range(runs) for b in range(batch)])
    monkeypatch.setattr(np.random, "choice", lambda n, size, replace=True: next(draws))


@pytest.mark.parametrize("softmax,similarity", [(False, None), (True, "spearman")])
def test_faithfulness_correlation_on_the_same_subsets(monkeypatch, softmax, similarity):
    x, y, pixel, _ = data(n=4, seed=2)
    func = quantus.similarity_func.correlation_spearman if similarity else None
    kw = dict(nr_runs=30, subset_size=40, similarity_func=func, return_aggregate=False, disable_warnings=True)
    ours = fq.FaithfulnessCorrelation(**kw)(cnn(), x, y, pixel, softmax=softmax, generator=5)
    masks = subset_deltas(cnn(), torch.as_tensor(x), torch.as_tensor(y), 3 * 64, subset_size=40, n_subsets=30,
                          generator=5).masks.numpy()
    replay_subsets(monkeypatch, masks)
    theirs = quantus.FaithfulnessCorrelation(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=pixel,
                                                   softmax=softmax)
    assert len(ours) == 4 and np.isfinite(ours).all()
    close(ours, theirs)
    aggregate = fq.FaithfulnessCorrelation(**dict(kw, return_aggregate=True))
    aggregated = aggregate(cnn(), x, y, pixel, softmax=softmax, generator=5)
    close(aggregated, [np.mean(ours)])


@pytest.mark.parametrize("step,which,hw", [(3, "pixel", (6, 8)), (4, "pixel", (8, 8)), (2, "element", (8, 8)),
                                           (16, "element", (8, 8))])
def test_sensitivity_n(step, which, hw):
    x, y, pixel, element = data(n=6, seed=3, hw=hw)
    a = pixel if which == "pixel" else element
    kw = dict(features_in_step=step, n_max_percentage=0.5, return_aggregate=False, disable_warnings=True)
    ours = fq.SensitivityN(**kw)(cnn(), x, y, a)
    theirs = quantus.SensitivityN(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=a)
    assert ours.shape == (int(0.5 * hw[0] * hw[1] // step),) and np.isfinite(ours).all()
    whole = slice(None) if which == "element" or step % 3 == 0 else slice(2, None, 3)  # as for PixelFlipping
    close(ours[whole], theirs[whole])
    if whole == slice(None):
        agg = dict(kw, return_aggregate=True)
        close(fq.SensitivityN(**agg)(cnn(), x, y, a),
              quantus.SensitivityN(**agg)(model=cnn(), x_batch=x, y_batch=y, a_batch=a))


@pytest.mark.parametrize("sizes,baseline,normalise", [([4], "black", False), ([2, 4], 0.5, True)])
def test_infidelity(sizes, baseline, normalise):
    x, y, pixel, element = data(seed=4)
    for a in (pixel, element):
        kw = dict(perturb_patch_sizes=sizes, perturb_baseline=baseline, n_perturb_samples=2,
                  normalise=normalise, disable_warnings=True)
        ours = fq.Infidelity(**kw)(cnn(), x, y, a)
        theirs = quantus.Infidelity(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=a)
        assert len(ours) == 3 and (np.asarray(ours) > 0).all()
        close(ours, theirs)


def test_infidelity_pads_sizes_quantus_cannot_take():
    x, y, pixel, _ = data()
    ours = fq.Infidelity(perturb_patch_sizes=[3])(cnn(), x, y, pixel)  # 8 = 3 + 3 + 2: padded like regions
    whole = fq.Infidelity(perturb_patch_sizes=[8])(cnn(), x, y, pixel)
    assert np.isfinite(ours).all() and not np.allclose(ours, whole)


def replay_noise(monkeypatch, seed, shapes):
    """Make ``np.random.uniform`` return fastattr's noise (same seed, same order of draws)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(low=0.0, high=1.0, size=None):
        like = torch.empty(shapes.pop(0), dtype=torch.float32)
        return uniform_noise(gen, like, low, high).numpy().astype(np.float64).reshape(size)

    monkeypatch.setattr(np.random, "uniform", uniform)


@pytest.mark.parametrize("cls,bounds,normalise,nan", [
    ("AvgSensitivity", (0.1, None), True, False), ("MaxSensitivity", (0.05, 0.3), False, False),
    ("AvgSensitivity", (2.0, None), False, True), ("MaxSensitivity", (2.0, None), True, True)])
def test_sensitivity_on_the_same_noise(monkeypatch, cls, bounds, normalise, nan):
    x, y, _, _ = data(n=5, seed=5)
    kw = dict(nr_samples=4, lower_bound=bounds[0], upper_bound=bounds[1], normalise=normalise,
              return_nan_when_prediction_changes=nan, disable_warnings=True)
    call = dict(explain_func=saliency_explain, batch_size=2)
    ours = np.asarray(getattr(fq, cls)(**kw)(cnn(), x, y, None, generator=3, max_batch=4, **call))
    replay_noise(monkeypatch, 3, [(2, 3, 8, 8)] * 8 + [(1, 3, 8, 8)] * 4)
    theirs = np.asarray(getattr(quantus, cls)(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=None, **call))
    assert ours.shape == (5,)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    close(np.nan_to_num(ours), np.nan_to_num(theirs))
    # Noise of ±2 on [0, 1] images flips some predictions: those examples are NaN.
    assert np.isnan(ours).any() if nan else (ours > 0).all()


def test_sensitivity_with_quantus_functions_and_a_batch(monkeypatch):
    x, y, _, _ = data(n=3, seed=6)
    a = saliency_explain(cnn(), x, y)
    funcs = dict(similarity_func=quantus.similarity_func.difference,
                 norm_numerator=quantus.norm_func.linf_norm, norm_denominator=quantus.norm_func.l2_norm)
    kw = dict(nr_samples=3, lower_bound=0.1, abs=True, disable_warnings=True, **funcs)
    ours = fq.MaxSensitivity(**kw)(cnn(), x, y, a, explain_func=saliency_explain, generator=2)
    replay_noise(monkeypatch, 2, [(3, 3, 8, 8)] * 3)
    theirs = quantus.MaxSensitivity(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=a,
                                          explain_func=saliency_explain)
    close(ours, theirs)


def test_the_explanations_of_perturbed_copies_are_batched():
    x, y, _, _ = data(n=2, seed=7)
    sizes = []

    def explain(model, inputs, targets, **kwargs):
        sizes.append(len(inputs))
        return saliency_explain(model, inputs, targets)

    fq.AvgSensitivity(nr_samples=10)(cnn(), x, y, None, explain_func=explain, max_batch=8)
    assert sizes == [2, 8, 8, 4]  # e(x), then 4 + 4 + 2 copies of the batch of 2


@pytest.mark.filterwarnings("ignore:The combination of the value of the passed softmax")
@pytest.mark.parametrize("softmax", [True, False])
def test_model_ending_in_softmax(softmax):
    x, y, pixel, _ = data(seed=8, hw=(6, 8))
    kw = dict(features_in_step=12, disable_warnings=True)
    ours = fq.PixelFlipping(**kw)(cnn(softmax=True), x, y, pixel, softmax=softmax)
    theirs = quantus.PixelFlipping(**kw)(model=cnn(softmax=True), x_batch=x, y_batch=y, a_batch=pixel,
                                         softmax=softmax)
    close(ours, theirs)
    close(ours, fq.PixelFlipping(**kw)(cnn(), x, y, pixel, softmax=softmax))


def test_conventions_layouts_and_state():
    x, y, pixel, _ = data(hw=(6, 8))
    metric = fq.PixelFlipping(features_in_step=12, return_auc_per_sample=True)
    first = metric(cnn(), x, y, pixel[:, 0])  # [B, H, W] maps get their channel axis back
    last = metric(cnn(), np.moveaxis(x, 1, -1), y, pixel, channel_first=False)
    close(first, last)
    assert len(metric.all_evaluation_scores) == 6 and metric.evaluation_scores == last
    agg = fq.PixelFlipping(features_in_step=12, return_auc_per_sample=True, return_aggregate=True)
    close(agg(cnn(), x, y, pixel), [np.mean(first)])
    x0 = x.copy()
    explained = fq.PixelFlipping(features_in_step=12)(cnn(), x, y, explain_func=saliency_explain)
    np.testing.assert_array_equal(x, x0)
    close(explained, fq.PixelFlipping(features_in_step=12)(cnn(), x, y, saliency_explain(cnn(), x, y)))


def test_bad_input():
    x, y, pixel, _ = data()
    with pytest.raises(ValueError, match="unexpected keyword"):
        fq.PixelFlipping(feature_in_step=2)
    with pytest.raises(ValueError, match="unexpected keyword"):
        fq.PixelFlipping()(cnn(), x, y, pixel, softmx=True)
    with pytest.raises(NotImplementedError, match="perturb_func"):
        fq.PixelFlipping(perturb_func=lambda arr, indices, **kw: arr)
    with pytest.raises(ValueError, match="a_batch of shape"):
        fq.PixelFlipping()(cnn(), x, y, pixel[:, :, :4])
    with pytest.raises(ValueError, match="a_batch or explain_func"):
        fq.PixelFlipping()(cnn(), x, y)
    with pytest.raises(ValueError, match="features_in_step"):
        fq.PixelFlipping(features_in_step=5)(cnn(), x, y, pixel)
    with pytest.raises(ValueError, match="perturb_baseline"):
        fq.PixelFlipping(perturb_baseline="random")(cnn(), x, y, pixel)
    with pytest.raises(ValueError, match="y_batch out of range"):
        fq.PixelFlipping()(cnn(), x, y + 5, pixel)
    with pytest.raises(ValueError, match="NaN"):
        fq.PixelFlipping(normalise=False)(cnn(), x, y, np.full_like(pixel, np.nan))
    with pytest.raises(ValueError, match="order"):
        fq.RegionPerturbation(order="best")
    with pytest.raises(ValueError, match="subset_size"):
        fq.FaithfulnessCorrelation(subset_size=64)(cnn(), x, y, pixel)
    with pytest.raises(ValueError, match="explain_func"):
        fq.AvgSensitivity()(cnn(), x, y, pixel)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fq.PixelFlipping()(lambda z: z, x, y, pixel)
    with pytest.raises(ValueError, match="training mode"):
        fq.PixelFlipping()(cnn().train(), x, y, pixel)


def record_uniform(monkeypatch):
    """Record every block of "uniform" baseline values the drop-in draws (``[B, calls]`` each)."""
    drawn = []
    original = fq._Metric._uniform_values

    def spy(self, x, n_calls, generator):
        values = original(self, x, n_calls, generator)
        drawn.append(values.cpu().numpy())
        return values

    monkeypatch.setattr(fq._Metric, "_uniform_values", spy)
    return drawn


def replay_uniform(monkeypatch, drawn, tail: bool = False):
    """Make Quantus's one ``np.random.uniform(size=B)`` per batched replacement return the drop-in's
    values, one column per call in call order; ``tail``: then the mid-range for calls the drop-in skips
    (Quantus's SensitivityN perturbs past the steps it scores)."""
    columns = [block[:, k] for block in drawn for k in range(block.shape[1])]
    columns = itertools.chain(columns, itertools.repeat(np.full(drawn[0].shape[0], 0.45, np.float32))) \
        if tail else iter(columns)
    monkeypatch.setattr(np.random, "uniform", lambda low=0.0, high=1.0, size=None: next(columns))


@pytest.mark.parametrize("name", ["PixelFlipping", "RegionPerturbation", "SensitivityN", "Infidelity",
                                  "FaithfulnessCorrelation"])
def test_uniform_baseline_is_one_value_per_example_and_call(monkeypatch, name):
    """Quantus's batched replacement fills every feature one call replaces (a step, a region, a patch, a
    subset) with one U[low, high) value per example; the drop-in draws the same way, so on Quantus's
    draws replayed the scores agree, and every perturbed input holds one value per call so far."""
    x, y, pixel, _ = data(n=4, seed=6, hw=(6, 8) if name in ("PixelFlipping", "SensitivityN") else (8, 8))
    kw = {"PixelFlipping": dict(features_in_step=12), "RegionPerturbation": dict(patch_size=4),
          "SensitivityN": dict(features_in_step=6, n_max_percentage=0.8, return_aggregate=False),
          "Infidelity": dict(perturb_patch_sizes=[2, 4], n_perturb_samples=2),
          "FaithfulnessCorrelation": dict(nr_runs=20, subset_size=40, return_aggregate=False)}[name]
    kw = dict(kw, perturb_baseline="uniform", perturb_func_kwargs={"uniform_low": 0.2, "uniform_high": 0.7},
              disable_warnings=True)
    seen = []

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = cnn()

        def forward(self, z):
            seen.append(z.detach().clone())
            return self.net(z)

    drawn = record_uniform(monkeypatch)
    ours = getattr(fq, name)(**kw)(Recording().eval(), x, y, pixel, generator=3)
    values = np.concatenate([d.reshape(-1) for d in drawn])
    assert drawn and values.min() >= 0.2 and values.max() < 0.7
    clean = torch.as_tensor(x)
    calls = 1 if name == "FaithfulnessCorrelation" else max(block.shape[1] for block in drawn)
    n_changed = []
    for row in torch.cat(seen):
        source = clean[(row == clean).flatten(1).sum(1).argmax()]
        n_changed.append(row[row != source].unique().numel())
    assert max(n_changed) == calls if name != "RegionPerturbation" else 1 < max(n_changed) <= calls
    if name == "FaithfulnessCorrelation":
        gen = torch.Generator().manual_seed(3)
        torch.rand(4, 20, generator=gen)  # the drop-in draws the fill values first, then the subsets
        masks = subset_deltas(cnn(), clean, torch.as_tensor(y), clean[0].numel(), subset_size=40, n_subsets=20,
                              generator=gen).masks.numpy()
        replay_subsets(monkeypatch, masks)
    replay_uniform(monkeypatch, drawn, tail=name == "SensitivityN")
    theirs = getattr(quantus, name)(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=pixel)
    close(ours, theirs)


def test_perturb_baseline_in_perturb_func_kwargs_wins():
    """As in Quantus's ``make_perturb_func``, ``perturb_func_kwargs["perturb_baseline"]`` overrides the
    ``perturb_baseline`` keyword."""
    x, y, _, element = data(seed=7)
    for cls, kw in ((fq.PixelFlipping, dict(features_in_step=16)), (fq.Infidelity, dict(n_perturb_samples=1))):
        given = cls(perturb_func_kwargs={"perturb_baseline": "white"}, **kw)(cnn(), x, y, element)
        white = cls(perturb_baseline="white", **kw)(cnn(), x, y, element)
        black = cls(**kw)(cnn(), x, y, element)
        close(given, white)
        assert not np.allclose(np.asarray(given, dtype=np.float64), np.asarray(black, dtype=np.float64))
        theirs = getattr(quantus, cls.__name__)(perturb_func_kwargs={"perturb_baseline": "white"},
                                                disable_warnings=True, **kw)
        close(given, theirs(model=cnn(), x_batch=x, y_batch=y, a_batch=element))


def test_softmax_none_reads_the_logits_as_in_quantus():
    x, y, _, element = data(seed=8)
    metric = fq.PixelFlipping(features_in_step=16)
    logits = metric(cnn(), x, y, element, softmax=False)
    close(metric(cnn(), x, y, element, softmax=None), logits)
    assert not np.allclose(metric(cnn(), x, y, element), logits)  # PixelFlipping's default: probabilities
    theirs = quantus.PixelFlipping(features_in_step=16, disable_warnings=True)
    close(logits, theirs(model=cnn(), x_batch=x, y_batch=y, a_batch=element, softmax=None))


def zero_explain(model, inputs, targets, **kwargs):
    return np.zeros((len(inputs), 1) + inputs.shape[2:], dtype=np.float32)


# (metric, constructor keywords, call keywords, what Quantus 0.6 raises, what our error names). Where
# Quantus asserts (AssertionError), the drop-in raises QuantusAssertionError: a ValueError and that
# AssertionError at once; elsewhere a ValueError naming the argument (Quantus's own error is often a
# ZeroDivisionError or a numpy error from deep inside).
BAD = [
    # assert_attributions (quantus/helpers/asserts.py) on a_batch, before normalisation
    ("PixelFlipping", {}, dict(a_batch="zero"), AssertionError, "a_batch is all zero"),
    ("RegionPerturbation", {}, dict(a_batch="one"), AssertionError, "a_batch has one value"),
    ("Infidelity", {}, dict(a_batch="constant"), AssertionError, "a_batch has one value"),
    ("SensitivityN", {}, dict(a_batch="negative"), AssertionError, "a_batch is negative everywhere"),
    # ... and on explain_func's output, for x_batch and for the perturbed inputs of the sensitivities
    ("FaithfulnessCorrelation", dict(subset_size=10), dict(a_batch=None, explain_func=zero_explain),
     AssertionError, "explain_func is all zero"),
    ("MaxSensitivity", dict(nr_samples=2), dict(explain_func=zero_explain), AssertionError,
     "explain_func is all zero"),
    # scipy's pearsonr: "`x` and `y` must have length at least 2."
    ("FaithfulnessCorrelation", dict(nr_runs=1, subset_size=10), {}, ValueError, "nr_runs"),
    ("SensitivityN", {}, dict(n=1), ValueError, "at least 2"),
    ("FaithfulnessCorrelation", dict(nr_runs=0, subset_size=10), {}, ValueError, "nr_runs"),
    ("FaithfulnessCorrelation", dict(subset_size=-1), {}, ValueError, "subset_size"),
    ("PixelFlipping", dict(features_in_step=0), {}, ZeroDivisionError, "features_in_step"),
    ("PixelFlipping", dict(features_in_step=5), {}, AssertionError, "features_in_step"),  # 5 ∤ 64
    ("SensitivityN", dict(features_in_step=-4), {}, ValueError, "features_in_step"),
    ("SensitivityN", dict(n_max_percentage=float("nan")), {}, ValueError, "n_max_percentage"),
    ("RegionPerturbation", dict(order="best"), {}, AssertionError, "order"),
    ("RegionPerturbation", dict(patch_size=0), {}, ZeroDivisionError, "patch_size"),
    ("RegionPerturbation", dict(regions_evaluation=0), {}, ValueError, "regions_evaluation"),
    ("Infidelity", dict(perturb_patch_sizes=[0]), {}, ZeroDivisionError, "perturb_patch_sizes"),
    ("Infidelity", dict(n_perturb_samples=0), {}, ValueError, "n_perturb_samples"),
    ("AvgSensitivity", dict(nr_samples=-1), {}, ValueError, "nr_samples"),
    ("MaxSensitivity", dict(lower_bound=0.3, upper_bound=0.1), {}, AssertionError, "upper_bound"),
    ("AvgSensitivity", dict(lower_bound=float("inf")), {}, OverflowError, "lower_bound"),
]


def bad_call(name, ctor, call, lib, x, y, pixel):
    values = {"zero": 0 * pixel, "one": np.ones_like(pixel), "constant": np.full_like(pixel, 0.5),
              "negative": -np.abs(pixel) - 0.1}
    n = call.get("n", len(x))
    kw = dict(a_batch=pixel[:n])
    kw.update((k, values[v] if isinstance(v, str) else v) for k, v in call.items() if k != "n")
    if "Sensitivity" in name and name != "SensitivityN":
        kw.setdefault("explain_func", saliency_explain)
    return getattr(lib, name)(disable_warnings=True, **ctor)(model=cnn(), x_batch=x[:n], y_batch=y[:n], **kw)


@pytest.mark.filterwarnings("ignore")  # Quantus's warnings on the way to its error
@pytest.mark.parametrize("name,ctor,call,theirs,names", BAD)
def test_bad_input_raises_where_quantus_does(name, ctor, call, theirs, names):
    """Quantus is the oracle: the same bad configuration raises in both libraries."""
    x, y, pixel, _ = data()
    with pytest.raises(theirs):
        bad_call(name, ctor, call, quantus, x, y, pixel)
    with pytest.raises(ValueError, match=names) as ours:
        bad_call(name, ctor, call, fq, x, y, pixel)
    assert isinstance(ours.value, AssertionError) == (theirs is AssertionError)


@pytest.mark.filterwarnings("ignore")  # Quantus's warnings (mean of an empty slice, constant input)
@pytest.mark.parametrize("name,ctor,names,theirs", [
    ("SensitivityN", dict(n_max_percentage=0), "n_max_percentage", "nan"),  # no step: the mean of none
    ("SensitivityN", dict(n_max_percentage=-0.1), "n_max_percentage", "finite"),  # steps sliced off the end
    ("FaithfulnessCorrelation", dict(nr_runs=10, subset_size=0), "subset_size", "nan"),  # nothing perturbed
    ("MaxSensitivity", dict(lower_bound=-1), "lower_bound", "finite"),  # noise from U(-1, 1]: flipped
    ("AvgSensitivity", dict(lower_bound=-1), "lower_bound", "finite"),
    ("PixelFlipping", dict(abs="yes"), "abs", "finite"),  # any truthy value
    ("MaxSensitivity", dict(return_nan_when_prediction_changes=1), "return_nan_when_prediction_changes", "finite"),
])
def test_bad_input_quantus_runs_with(name, ctor, names, theirs):
    """Settings Quantus runs with although they make no sense: the drop-in raises (a TypeError for a flag
    that is not a bool), naming the argument."""
    x, y, pixel, _ = data()
    out = bad_call(name, dict(ctor, nr_samples=2) if "Sensitivity" in name and name != "SensitivityN" else ctor,
                   {}, quantus, x, y, pixel)
    assert (np.isnan if theirs == "nan" else np.isfinite)(np.asarray(out, dtype=np.float64)).all()
    with pytest.raises((ValueError, TypeError), match=names):
        bad_call(name, ctor, {}, fq, x, y, pixel)


def test_valid_edge_settings_still_run_as_in_quantus():
    """What Quantus takes and means stays: a negative lower_bound with an upper_bound, an n_max_percentage
    above 1 (it counts pixels, the steps count elements), two runs of FaithfulnessCorrelation."""
    x, y, pixel, element = data()
    assert np.isfinite(fq.MaxSensitivity(nr_samples=2, lower_bound=-0.3, upper_bound=0.1)(
        cnn(), x, y, None, explain_func=saliency_explain)).all()
    kw = dict(n_max_percentage=1.5, features_in_step=4, disable_warnings=True)
    close(fq.SensitivityN(**kw)(cnn(), x, y, element),
          quantus.SensitivityN(**kw)(model=cnn(), x_batch=x, y_batch=y, a_batch=element))
    assert np.isfinite(fq.FaithfulnessCorrelation(nr_runs=2, subset_size=10)(cnn(), x, y, pixel)).all()


def test_errors_name_a_batch_or_explain_func():
    x, y, pixel, element = data()
    with pytest.raises(ValueError, match="explain_func of shape"):
        fq.PixelFlipping()(cnn(), x, y, explain_func=lambda model, inputs, targets, **kw: pixel[:, :, :4])
    with pytest.raises(ValueError, match="a_batch has .* per example but explain_func returns"):
        fq.AvgSensitivity(nr_samples=2)(cnn(), x, y, element, explain_func=saliency_explain)
