"""fastattr's native metrics (``fastattr.metrics.*``) against Captum 0.9 and Quantus 0.6 where both
define the same quantity, on identical perturbations.

The peers draw their own noise; here their perturbation functions (Captum's ``perturb_func``,
Quantus's ``np.random.uniform``) replay the draws fastattr makes from the same seed, taken from the
documented stream: ``infidelity`` draws its subsets ``random_subsets(B, K, F)`` first (also for the
Gaussian perturbation, which does not use them), then ``randn((K,) + x.shape) · σ``; the sensitivities
draw one ``U[−r, r]`` batch per sample, ``−r + 2r · rand(x.shape)``.

Compared: infidelity (Gaussian and subset perturbations, both ``normalize``) with
``captum.metrics.infidelity``; max sensitivity with ``captum.metrics.sensitivity_max`` (which always
divides by ``||e(x)||``: ``normalise=True``); avg / max sensitivity with Quantus's (the wrappers in
``fastattr.integrations.quantus`` are compared in test_quantus.py; here the native functions are); the
pointing game with ``quantus.PointingGame``, and top-k IoU through ``quantus.TopKIntersection``.

Not compared, the definitions differ: thresholded ``iou`` and ``ehr`` have no Quantus counterpart
(RelevanceMass/RankAccuracy, AttributionLocalisation, AUC and Focus measure other quantities);
Captum's ``sensitivity_max`` divides by 1 where ``e(x) = 0`` (fastattr: NaN / Inf); Quantus's
pointing game counts a hit when any of several tied maxima is in the region (fastattr: the first
one) — the maps here are continuous, so there are no ties.
"""
import math

import numpy as np
import pytest
import torch

captum_metrics = pytest.importorskip("captum.metrics")
quantus = pytest.importorskip("quantus")

import fastattr  # noqa: E402
from fastattr.core import fraction_count, random_subsets  # noqa: E402
from tests.integrations.models import cnn, digits, mlp  # noqa: E402
from tests.models import rand, small_cnn  # noqa: E402

# Every case is float64, and fastattr keeps the score differences f_t(x) − f_t(x̃) in float64 for
# float64 models: infidelity matches Captum's to float64 rounding.
INFID_RTOL = 1e-9
SENS_RTOL = 1e-9  # float64
QUANTUS_RTOL = 1e-5  # float32 models


class Replay:
    """A Captum ``perturb_func`` that hands out ``draws [K, B, ...]`` in Captum's row order (each
    example repeated for the samples of the call, ``repeat_interleave``), in as many calls as Captum
    makes; ``perturbation(draw)`` gives Captum's ``I``, ``perturbed(x, draw)`` the perturbed input."""

    def __init__(self, inputs, draws, perturbation=None, perturbed=None):
        self.inputs, self.draws, self.used = inputs, draws, 0
        self.perturbation = perturbation
        self.perturbed = perturbed

    def __call__(self, expanded):
        batch = self.inputs.shape[0]
        n = expanded.shape[0] // batch
        draw = self.draws[self.used:self.used + n].transpose(0, 1).reshape(expanded.shape)
        assert torch.equal(expanded, self.inputs.repeat_interleave(n, 0))
        self.used += n
        perturbed = self.perturbed(expanded, draw)
        return perturbed if self.perturbation is None else (self.perturbation(expanded, draw), perturbed)


def gaussian_draws(inputs, n_subsets, noise, seed):
    """The ``I ~ N(0, σ²)`` draws ``[K, B, ...]`` of ``infidelity(perturbation="gaussian")``: one draw
    shaped like the inputs per perturbation, in order (nothing is drawn before them)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype)
                        for _ in range(n_subsets)]) * noise


def subset_draws(inputs, n_features, n_subsets, seed, subset_fraction=0.2):
    """The masks of ``infidelity(perturbation="subset")`` as ``[K, B, ...]`` 0/1 over the input's
    elements (a pixel feature covers all channels of the pixel)."""
    gen = torch.Generator().manual_seed(seed)
    masks = random_subsets(inputs.shape[0], n_subsets, n_features, generator=gen,
                           size=fraction_count(subset_fraction, n_features, "subset_fraction"))
    per_pixel = n_features != inputs[0].numel()
    shape = (inputs.shape[0], n_subsets, 1 if per_pixel else inputs.shape[1]) + tuple(inputs.shape[2:])
    return masks.reshape(shape).expand(-1, -1, inputs.shape[1], *inputs.shape[2:]).transpose(0, 1).to(inputs)


def digits_case():
    """Real digits ``[6, 1, 8, 8]`` on the digits CNN, the model's labels, signed saliency maps."""
    x, _ = digits(6)
    model = cnn()
    y = model(x).argmax(1)
    return model, x, y, fastattr.saliency(model, x, y, abs=False)


def rgb_case():
    """Seeded RGB images ``[4, 3, 8, 8]`` on a small CNN, labels, channel-summed saliency ``[4, 8, 8]``."""
    x = rand(4, 3, 8, 8, seed=1)
    model = small_cnn(seed=1)
    y = model(x).argmax(1)
    return model, x, y, fastattr.saliency(model, x, y, abs=False).sum(1)


def per_element(a, x):
    """An attribution as Captum takes it, of the input's shape (a pixel map repeated over channels:
    ``Σ_{c,p} a_p I_{c,p} = Σ_p a_p Σ_c I_{c,p}``, fastattr's pixel-feature mass)."""
    return a if a.shape == x.shape else a.unsqueeze(1).expand_as(x)


CASES = {"digits": digits_case, "rgb-pixel-map": rgb_case}


def close(ours, theirs, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64),
                               rtol=rtol, atol=atol)


# ---- infidelity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("case,noise", [("digits", 0.1), ("rgb-pixel-map", 0.3)])
def test_gaussian_infidelity_matches_captum(case, noise, normalize):
    model, x, y, a = CASES[case]()
    k = 12
    ours = fastattr.metrics.infidelity(model, x, a, y, perturbation="gaussian", noise_std=noise, n_subsets=k,
                                       normalize=normalize, generator=7)
    draws = gaussian_draws(x, k, noise, seed=7)
    # Captum's perturb_func returns (I, x − I) and scores f(x) − f(x − I): fastattr's convention.
    replay = Replay(x, draws, perturbation=lambda inp, d: d, perturbed=lambda inp, d: inp - d)
    theirs = captum_metrics.infidelity(model, replay, x, per_element(a, x), target=y, n_perturb_samples=k,
                                       normalize=normalize, max_examples_per_batch=5 * len(x))
    assert replay.used == k and ours.shape == (len(x),) and (ours > 0).all()
    close(ours, theirs, INFID_RTOL)
    # The comparison sees the sign of the perturbation: x + I gives other values on these models.
    flipped = Replay(x, draws, perturbation=lambda inp, d: -d, perturbed=lambda inp, d: inp + d)
    other = captum_metrics.infidelity(model, flipped, x, per_element(a, x), target=y, n_perturb_samples=k,
                                      normalize=normalize)
    assert not np.allclose(ours.numpy(), other.numpy(), rtol=1e-2)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("case,baseline,fraction", [("digits", 0.3, 0.2), ("rgb-pixel-map", 0.0, 0.3)])
def test_subset_infidelity_matches_captum(case, baseline, fraction, normalize):
    model, x, y, a = CASES[case]()
    n_features, k = a[0].numel(), 10
    ours = fastattr.metrics.infidelity(model, x, a, y, perturbation="subset", subset_fraction=fraction,
                                       baseline=baseline, n_subsets=k, normalize=normalize, generator=3)
    masks = subset_draws(x, n_features, k, seed=3, subset_fraction=fraction)
    # I = (x − x') ⊙ m, x − I = x with the subset set to the baseline.
    replay = Replay(x, masks, perturbation=lambda inp, m: (inp - baseline) * m,
                    perturbed=lambda inp, m: inp - (inp - baseline) * m)
    theirs = captum_metrics.infidelity(model, replay, x, per_element(a, x), target=y, n_perturb_samples=k,
                                       normalize=normalize)
    assert replay.used == k and (ours > 0).all()
    close(ours, theirs, INFID_RTOL)


def test_subset_infidelity_of_global_attributions_matches_captums_multiply_by_inputs():
    """Integrated Gradients already carries ``(x − x')``: fastattr's ``multiplied_by_inputs=True``
    (``Iᵀa = Σ_{i∈S} a_i``) is Captum's ``infidelity_perturb_func_decorator(multiply_by_inputs=True)``
    (``I = (x − x̃) / (x − x')``, 0 where ``x = x'``, where IG's attribution is 0 too)."""
    x, _ = digits(5, offset=10)
    model = mlp()
    y = model(x).argmax(1)
    a = fastattr.integrated_gradients(model, x, y, n_steps=16)
    k = 16
    for normalize in (False, True):
        ours = fastattr.metrics.infidelity(model, x, a, y, perturbation="subset", subset_fraction=0.25,
                                           n_subsets=k, multiplied_by_inputs=True, normalize=normalize,
                                           generator=11)
        masks = subset_draws(x, 64, k, seed=11, subset_fraction=0.25)
        replay = Replay(x, masks, perturbed=lambda inp, m: inp * (1 - m))
        decorated = captum_metrics.infidelity_perturb_func_decorator(True)(lambda inp, base: replay(inp))
        theirs = captum_metrics.infidelity(model, decorated, x, a, baselines=0.0, target=y,
                                           n_perturb_samples=k, normalize=normalize)
        assert (ours > 0).all()
        close(ours, theirs, INFID_RTOL)
        unweighted = fastattr.metrics.infidelity(model, x, a, y, perturbation="subset", subset_fraction=0.25,
                                                 n_subsets=k, normalize=normalize, generator=11)
        assert not np.allclose(ours.numpy(), unweighted.numpy(), rtol=1e-2)


# ---- sensitivity --------------------------------------------------------------------------------

def uniform_draws(inputs, n_samples, radius, seed):
    """The ``ε_j ~ U[−r, r]`` draws ``[m, B, ...]`` of ``avg_sensitivity`` / ``max_sensitivity``."""
    gen = torch.Generator().manual_seed(seed)
    low, high = -float(radius), float(radius)
    return torch.stack([low + (high - low) * torch.rand(inputs.shape, generator=gen, dtype=inputs.dtype)
                        for _ in range(n_samples)])


def saliency_on(model):
    """Signed saliency as Captum's ``explanation_func(inputs, target=...)`` (a tensor, or a 1-tuple
    answered with a 1-tuple like Captum's own attribution methods) and as fastattr's
    ``explain(model, inputs, target)``."""
    def captum_explain(inputs, target):
        if isinstance(inputs, tuple):
            return (fastattr.saliency(model, inputs[0], target, abs=False),)
        return fastattr.saliency(model, inputs, target, abs=False)

    def explain(m, inputs, target):
        return fastattr.saliency(m, inputs, target, abs=False)

    return captum_explain, explain


@pytest.mark.parametrize("make,norm,captum_norm,radius,per_call", [
    (cnn, 2, "fro", 0.05, None), (cnn, math.inf, math.inf, 0.2, 12), (mlp, 1, 1, 0.1, 18)])
def test_max_sensitivity_matches_captum(make, norm, captum_norm, radius, per_call):
    model = make()
    x, _ = digits(6, offset=20)
    y = model(x).argmax(1)
    m = 7
    captum_explain, explain = saliency_on(model)
    ours = fastattr.metrics.max_sensitivity(model, x, explain, y, radius=radius, n_samples=m, norm=norm,
                                            normalise=True, generator=5, max_batch=per_call)
    replay = Replay(x, uniform_draws(x, m, radius, seed=5), perturbed=lambda inp, e: inp + e)
    theirs = captum_metrics.sensitivity_max(captum_explain, x, perturb_func=replay, n_perturb_samples=m,
                                            norm_ord=captum_norm, max_examples_per_batch=per_call, target=y)
    assert replay.used == m and (ours > 0).all()
    close(ours, theirs, SENS_RTOL)
    average = fastattr.metrics.avg_sensitivity(model, x, explain, y, radius=radius, n_samples=m, norm=norm,
                                               normalise=True, generator=5)
    assert (average < ours).all()  # the samples differ: mean < max, not a single repeated value


@pytest.fixture
def quantus_env(monkeypatch):
    monkeypatch.setenv("PYTEST", "1")  # Quantus's switch for its warnings


def replay_numpy_uniform(monkeypatch, draws):
    """Make ``np.random.uniform`` (Quantus's ``batch_uniform_noise``) return ``draws [m, B, ...]`` in turn."""
    queue = list(draws)

    def uniform(low=0.0, high=1.0, size=None):
        return queue.pop(0).numpy().astype(np.float64).reshape(size)

    monkeypatch.setattr(np.random, "uniform", uniform)
    return queue


@pytest.mark.parametrize("name,radius", [("AvgSensitivity", 0.1), ("MaxSensitivity", 0.3)])
def test_sensitivity_matches_quantus(monkeypatch, quantus_env, name, radius):
    """Quantus divides ``||e(x) − e(x + ε)||₂`` by ``||e(x)||₂``: fastattr's ``normalise=True``."""
    model = cnn().float()
    x, _ = digits(5, offset=30)
    x = x.float()
    y = model(x).argmax(1)
    m = 6
    ours_fn = {"AvgSensitivity": fastattr.metrics.avg_sensitivity,
               "MaxSensitivity": fastattr.metrics.max_sensitivity}[name]
    ours = ours_fn(model, x, saliency_on(model)[1], y, radius=radius, n_samples=m, normalise=True,
                   generator=9)

    def explain_func(model, inputs, targets, **kwargs):
        z = torch.as_tensor(inputs, dtype=torch.float32)
        return fastattr.saliency(model, z, torch.as_tensor(targets), abs=False).numpy()

    queue = replay_numpy_uniform(monkeypatch, uniform_draws(x, m, radius, seed=9))
    metric = getattr(quantus, name)(nr_samples=m, lower_bound=radius, normalise=False, abs=False,
                                    disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
                    explain_func=explain_func)
    assert not queue and (ours > 0).all()
    close(ours, theirs, QUANTUS_RTOL)


# ---- localisation -------------------------------------------------------------------------------

def localisation_case(n=9, seed=0):
    """Real digits, continuous saliency maps of the digits CNN ``[n, 1, 8, 8]`` and seeded boxes
    ``(x0, y0, x1, y1)`` of 2–3 pixels a side, with their masks ``[n, 1, 8, 8]``: every third box
    covers the map's peak, every third starts two pixels beside it, the rest lie anywhere."""
    x, _ = digits(n, offset=40)
    model = cnn()
    a = fastattr.saliency(model, x, model(x).argmax(1))
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, 8, 8, dtype=torch.bool)
    boxes = []
    for b in range(n):
        row, col = divmod(int(a[b].argmax()), 8)
        w, h, dx, dy, c0, r0 = torch.randint(0, 6, (6,), generator=g).tolist()
        w, h = 2 + w % 2, 2 + h % 2
        if b % 3 == 0:  # over the peak
            c0, r0 = min(max(col - dx % w, 0), 8 - w), min(max(row - dy % h, 0), 8 - h)
        elif b % 3 == 1:  # at distance 2 from the peak: a hit from tolerance 2 on
            c0 = col + 2 if col + 2 + w <= 8 else col - 1 - w
            r0 = min(max(row - dy % h, 0), 8 - h)
        else:
            c0, r0 = min(c0, 8 - w), min(r0, 8 - h)
        boxes.append([c0, r0, c0 + w, r0 + h])
        masks[b, 0, r0:r0 + h, c0:c0 + w] = True
    return model, x, a, torch.tensor(boxes), masks


def dilate(masks, radius):
    """Pixels within Euclidean ``radius`` of the mask (brute force over pixel pairs)."""
    h, w = masks.shape[-2:]
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)
    near = (torch.cdist(coords.double(), coords.double()) <= radius + 1e-9)  # [U, U]
    flat = masks.reshape(masks.shape[0], -1)
    return ((flat.double() @ near.double()) > 0).reshape(masks.shape)


@pytest.mark.parametrize("tolerance", [0, 1, 1.9, 2])
def test_pointing_game_matches_quantus(quantus_env, tolerance):
    """fastattr's ``tolerance`` is Quantus's pointing game on the region dilated by that radius."""
    model, x, a, boxes, masks = localisation_case()
    ours = fastattr.metrics.pointing_game(model, x, a, boxes=boxes, tolerance=tolerance)
    from_masks = fastattr.metrics.pointing_game(model, x, a, masks=masks[:, 0], tolerance=tolerance)
    region = dilate(masks, tolerance) if tolerance else masks
    metric = quantus.PointingGame(normalise=False, abs=False, disable_warnings=True)
    theirs = metric(model=model.float(), x_batch=x.float().numpy(), y_batch=np.zeros(len(x), dtype=int),
                    a_batch=a.numpy(), s_batch=region.numpy().astype(np.float64))
    assert 0 < ours.sum() < len(ours)  # some hits and some misses
    close(ours, theirs, 0.0)
    close(from_masks, ours, 0.0)


@pytest.mark.parametrize("fraction", [0.125, 0.25])
def test_top_k_iou_matches_quantus_top_k_intersection(quantus_env, fraction):
    """``iou(top_fraction=q)`` with ``k = round(q·d)`` pixels and Quantus's ``TopKIntersection``
    ``t = |top-k ∩ R| / k`` count the same intersection: ``IoU = t·k / (k + |R| − t·k)``."""
    model, x, a, _, masks = localisation_case(seed=1)
    ours = fastattr.metrics.iou(model, x, a, masks=masks[:, 0], top_fraction=fraction)
    k = fraction_count(fraction, 64, "top_fraction")
    metric = quantus.TopKIntersection(k=k, normalise=False, abs=False, disable_warnings=True)
    t = np.asarray(metric(model=model.float(), x_batch=x.float().numpy(), y_batch=np.zeros(len(x), dtype=int),
                          a_batch=a.numpy(), s_batch=masks.numpy().astype(np.float64)))
    inter, size = t * k, masks.reshape(len(x), -1).sum(1).numpy()
    assert 0 < t.max() and t.min() < 1 and len(set(np.round(t, 6))) > 1
    close(ours, inter / (k + size - inter), 1e-12)
