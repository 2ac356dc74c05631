"""Random-subset faithfulness metrics (SPEC §3.2): faithfulness correlation (Bhatt et al. 2020),
Sensitivity-N (Ancona et al. 2018; thesis ch. 6) and infidelity (Yeh et al. 2019).

All three compare the attribution mass of a perturbation with the change of the target score it
causes. The perturbed inputs do not depend on the attribution, so :func:`subset_deltas` runs the
model once for a set of subsets and every method reuses the result (see :func:`fastattr.evaluate`).
A feature is one element of the attribution map (a channel-reduced map makes one feature of all
channels of a pixel).
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from ..core import (GaussianNoise, MaskSet, Target, check_attributions, check_count, check_inputs, chunk_size,
                    forward_chunks, fraction_count, make_baseline, make_generator, model_entry, perturbed_scores,
                    random_subsets, read_scores, resolve_clean, resolve_target)
from ..numerics import accum_dtype


@dataclass
class SubsetPasses:
    """Model passes shared by every attribution: ``delta [B, K] = f_t(x) − f_t(x̃)`` (float64 for
    float64 models), and the perturbation size per feature (``Σ_c (x − x̃)`` over the channels of a
    feature): on subset-to-baseline passes the subsets ``masks [B, K, F]`` (True = perturbed) and
    ``change [B, F]`` (None when every subset had its own fill value); on Gaussian passes
    ``weight [B, K, F]`` for every feature (no subsets)."""

    masks: Optional[torch.Tensor]
    delta: torch.Tensor
    change: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    _as_float: dict = field(default_factory=dict, repr=False)

    def attribution_mass(self, feats: torch.Tensor, weighted: bool) -> torch.Tensor:
        """``[B, K]``: ``Σ_{i∈S} a_i`` (``weighted=False``) or ``Iᵀa = Σ_i I_i a_i`` (``weighted=True``;
        on subset passes ``Σ_{i∈S} (x − x')_i a_i``). One batched product with the masks, converted to
        the attribution's dtype once and reused by every method."""
        if weighted and self.weight is not None:
            return torch.einsum("bkf,bf->bk", self.weight, feats.to(self.weight.dtype))
        if self.masks is None:
            raise ValueError("Gaussian passes perturb every feature: only the weighted mass Iᵀa exists")
        if weighted:
            if self.change is None:
                raise ValueError("subsets filled with their own values have no single perturbation size "
                                 "(x − x'): only the unweighted mass exists")
            feats = feats.to(self.change.dtype) * self.change
        masks = self._as_float.get(feats.dtype)
        if masks is None:
            masks = self._as_float[feats.dtype] = self.masks.to(feats.dtype)
        return torch.bmm(masks, feats.unsqueeze(-1)).squeeze(-1)


def check_masks(masks: torch.Tensor, batch: int, n_features: int, name: str = "masks") -> torch.Tensor:
    """Explicit subsets: bool ``[B, K, F]`` or ``[K, F]`` (shared by every example) → ``[B or 1, K, F]``."""
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor [B, K, F] or [K, F] (True = perturbed)")
    if masks.dim() == 2:
        masks = masks.unsqueeze(0)
    if masks.dim() != 3 or masks.shape[0] not in (1, batch) or masks.shape[2] != n_features \
            or not masks.shape[1]:
        raise ValueError(f"{name} must have shape [{batch}, K, {n_features}] or [K, {n_features}] with "
                         f"K >= 1, got {tuple(masks.shape)}")
    return masks


@torch.no_grad()
@model_entry
def subset_deltas(model: Callable, inputs: torch.Tensor, target: Target, n_features: int, *,
                  subset_size: Union[int, Sequence[int], None] = None, n_subsets: Optional[int] = None,
                  baseline=0.0, noise: Optional[float] = None, score: str = "logit", generator=None,
                  max_batch=None, memory_budget=None, p: Optional[float] = None,
                  masks: Optional[torch.Tensor] = None, compile: Union[bool, dict] = False,
                  logits: Optional[torch.Tensor] = None, fill: Optional[torch.Tensor] = None) -> SubsetPasses:
    """Runs the model on perturbed inputs for a set of feature subsets, shared by every attribution.

    Subsets: ``n_subsets`` random ones per example of ``subset_size`` features (one size per subset
    when a sequence is given), or Bernoulli(``p``) subsets, or explicit bool ``masks`` ``[B, K, F]``
    / ``[K, F]``. ``noise=None``: the subset is replaced by ``baseline`` (I = (x − x') ⊙ m).
    ``noise=σ``: ``n_subsets`` Gaussian perturbations of every element, ``x̃ = x − I`` with
    ``I ~ N(0, σ²)``, one draw shaped like ``inputs`` per perturbation, in order (no subsets and no
    baseline are drawn; the noise is drawn chunk by chunk, so it never exists all at once). Draws come
    from ``generator`` on the CPU, so the passes are reproducible on every device: a random baseline
    (``"uniform"``) first, then the subsets.
    ``logits``: the model's output on ``inputs`` when the caller already has it. ``fill`` ``[B, K]``:
    subset k of example b is set to the one value ``fill[b, k]`` instead of the baseline.
    """
    check_inputs(inputs)
    n_features = check_count(n_features, "n_features")
    gen = make_generator(generator)
    batch = inputs.shape[0]
    if masks is None:
        n_subsets = check_count(n_subsets, "n_subsets")
    if noise is not None:
        if masks is not None:
            raise ValueError("give masks (subsets set to the baseline) or noise (Gaussian), not both")
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not noise > 0:
            raise ValueError(f"noise_std must be a number > 0, got {noise!r}")
    elif masks is not None:
        masks = check_masks(masks, batch, n_features).to(inputs.device)
        n_subsets = masks.shape[1]
        base = make_baseline(inputs, baseline, generator=gen)
    else:
        if subset_size is None and p is None:
            raise ValueError("give subset_size or p (random subsets), or explicit masks")
        base = make_baseline(inputs, baseline, generator=gen)  # drawn before the subsets
        masks = random_subsets(batch, n_subsets, n_features, size=subset_size, p=p, generator=gen,
                               device=inputs.device)
    if fill is not None and (noise is not None or tuple(fill.shape) != (batch, n_subsets)):
        raise ValueError(f"fill must hold one value per example and subset, shape ({batch}, {n_subsets}), "
                         "and goes with subsets, not noise")
    if logits is None:
        logits = forward_chunks(model, inputs, max_batch, memory_budget)
    target = resolve_target(model, inputs, target, logits=logits)
    wdtype = accum_dtype(inputs.dtype)
    clean = read_scores(logits, target, score).to(wdtype)
    chunk = chunk_size(inputs, batch * n_subsets, max_batch, memory_budget, per_input_factor=8.0)
    if noise is None:
        out = perturbed_scores(model, inputs, base, MaskSet(inputs, masks, fill=fill), target, reader=score,
                               chunk=chunk, compile=compile, precise=True).to(wdtype)
        change = None if fill is not None else \
            (inputs - base).to(wdtype).reshape(batch, -1, n_features).sum(1)
        return SubsetPasses(masks=masks.expand(batch, -1, -1), delta=clean.unsqueeze(1) - out, change=change)
    source = GaussianNoise(inputs, n_subsets, noise, gen, n_features, wdtype)
    out = perturbed_scores(model, inputs, None, source, target, reader=score, chunk=chunk, compile=compile,
                           precise=True).to(wdtype)
    delta, weight = clean.unsqueeze(1) - out, source.weight
    return SubsetPasses(masks=None, delta=delta, weight=weight)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis (NaN where either side is constant: tested exactly, as
    the centred values of a constant need not round to 0)."""
    a, b = a.double(), b.double()
    constant = (a == a[..., :1]).all(-1) | (b == b[..., :1]).all(-1)
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).masked_fill(constant, float("nan"))


def correlation(passes: SubsetPasses, feats: torch.Tensor, metric: str) -> torch.Tensor:
    """``[B]`` float64: Pearson correlation over the subsets of ``Σ_{i∈S} a_i`` with ``delta``. Where the
    attribution mass is the same for every subset (e.g. all-equal attributions and subsets of one size)
    the correlation is undefined: NaN, with a warning naming the examples."""
    mass = passes.attribution_mass(feats, weighted=False)
    flat = (mass == mass[:, :1]).all(1)
    if flat.any():
        warnings.warn(f"{metric}: the attributions give the same mass Σ_{{i∈S}} a_i on every subset for "
                      f"examples {flat.nonzero().flatten().tolist()} (all-equal attributions?); their "
                      "correlation is undefined and returned as NaN", RuntimeWarning, stacklevel=3)
    return pearson(mass, passes.delta)


def _setup(model, inputs, attributions, target, max_batch, memory_budget):
    """Checks the arguments; the attribution's features, the targets, and the model's output on
    ``inputs`` (the forward that checked the targets, reused by the passes)."""
    check_inputs(inputs)
    feats = check_attributions(inputs, attributions)
    return (feats,) + resolve_clean(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)


def default_ns(n_features: int) -> list[int]:
    """About 8 subset sizes log-spaced from 1 to half the features (Sensitivity-N's default grid)."""
    grid = torch.logspace(0, torch.log10(torch.tensor(n_features / 2)), 8).tolist()
    return sorted({max(1, round(v)) for v in grid})


@model_entry
def faithfulness_correlation(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor,
                             target: Target = None, *, subset_fraction: float = 0.2, n_subsets: int = 200,
                             baseline=0.0, score: str = "logit", generator=None, max_batch=None,
                             memory_budget=None, passes: Optional[SubsetPasses] = None,
                             compile: Union[bool, dict] = False):
    """Faithfulness correlation (FCOR, Bhatt et al. 2020): per example, the Pearson correlation over
    ``n_subsets`` random subsets S (``|S|`` = ``subset_fraction`` of the features) between
    ``Σ_{i∈S} a_i`` and ``f_t(x) − f_t(x with S set to the baseline)``. Higher is better.

    Example::

        >>> fastattr.metrics.faithfulness_correlation(model, x, attr, y, generator=0)
    """
    feats, t, clean = _setup(model, inputs, attributions, target, max_batch, memory_budget)
    if passes is None:
        n_subsets = check_count(n_subsets, "n_subsets", minimum=2)  # a correlation needs two points
        passes = subset_deltas(model, inputs, t, feats.shape[1], n_subsets=n_subsets, baseline=baseline,
                               subset_size=fraction_count(subset_fraction, feats.shape[1], "subset_fraction"),
                               score=score, generator=generator, max_batch=max_batch,
                               memory_budget=memory_budget, compile=compile, logits=clean)
    return correlation(passes, feats, "faithfulness_correlation").to(inputs.dtype)


@model_entry
def sensitivity_n(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
                  ns: Optional[Sequence[int]] = None, n_subsets: int = 200, baseline=0.0,
                  score: str = "logit", generator=None, max_batch=None, memory_budget=None,
                  compile: Union[bool, dict] = False) -> torch.Tensor:
    """Sensitivity-N (Ancona et al. 2018; thesis ch. 6): for each n, the Pearson correlation over
    ``n_subsets`` random subsets of n features between ``f_t(x) − f_t(x̃)`` (subset set to the
    baseline) and the attribution inside the subset. Returns ``[B, len(ns)]``; default ``ns``:
    about 8 sizes log-spaced from 1 to half the features.

    Example::

        >>> fastattr.metrics.sensitivity_n(model, x, attr, y, ns=[1, 8, 32])
    """
    feats, t, clean = _setup(model, inputs, attributions, target, max_batch, memory_budget)
    n_subsets = check_count(n_subsets, "n_subsets", minimum=2)  # a correlation needs two points
    passes = sensitivity_passes(model, inputs, t, feats.shape[1], ns, n_subsets=n_subsets, baseline=baseline,
                                score=score, generator=generator, max_batch=max_batch,
                                memory_budget=memory_budget, compile=compile, logits=clean)
    return sensitivity_from(passes, feats).to(inputs.dtype)


def sensitivity_passes(model: Callable, inputs: torch.Tensor, target: torch.Tensor, n_features: int,
                       ns: Optional[Sequence[int]], *, n_subsets: int, baseline=0.0, score: str = "logit",
                       generator=None, max_batch=None, memory_budget=None, compile: Union[bool, dict] = False,
                       logits: Optional[torch.Tensor] = None) -> list[SubsetPasses]:
    """Sensitivity-N's passes, one :class:`SubsetPasses` per n of ``ns`` (default :func:`default_ns`),
    shared by every attribution: one baseline drawn first, then the subsets of each n in turn, all
    from ``generator``."""
    ns = default_ns(n_features) if ns is None else ns
    if isinstance(ns, (str, numbers.Number, torch.Tensor)) or not hasattr(ns, "__len__") or not len(ns) \
            or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= n_features
                   for n in ns):
        raise ValueError(f"ns must be a non-empty sequence of ints in [1, {n_features}], got {ns!r}")
    ns = [int(n) for n in ns]
    gen = make_generator(generator)
    base = make_baseline(inputs, baseline, generator=gen)
    return [subset_deltas(model, inputs, target, n_features, subset_size=n, n_subsets=n_subsets,
                          baseline=base, score=score, generator=gen, max_batch=max_batch,
                          memory_budget=memory_budget, compile=compile, logits=logits) for n in ns]


def sensitivity_from(passes: list[SubsetPasses], feats: torch.Tensor, label: str = "sensitivity_n"
                     ) -> torch.Tensor:
    """``[B, len(ns)]`` float64: per n, the Pearson correlation of ``Σ_{i∈S} a_i`` with the output
    change; the part of :func:`sensitivity_n` that depends on the attribution."""
    return torch.stack([correlation(p, feats, label) for p in passes], 1)


@model_entry
def infidelity(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
               perturbation: str = "subset", subset_fraction: float = 0.2, noise_std: float = 0.1,
               n_subsets: int = 200, baseline=0.0, normalize: bool = False,
               multiplied_by_inputs: bool = False, score: str = "logit", generator=None, max_batch=None,
               memory_budget=None, passes: Optional[SubsetPasses] = None,
               compile: Union[bool, dict] = False) -> torch.Tensor:
    """Infidelity (Yeh et al. 2019): ``E_I[(Iᵀa − (f_t(x) − f_t(x − I)))²]`` per example; lower is better.

    ``perturbation="subset"``: ``I = (x − x') ⊙ m`` for random subsets of ``subset_fraction`` of the
    features; ``"gaussian"``: ``I ~ N(0, noise_std²)`` on every element. ``normalize=True`` first
    scales the attribution by the optimal ``β = E[(Iᵀa) Δ] / E[(Iᵀa)²]`` (Yeh's implementation).
    ``multiplied_by_inputs=True`` is for attributions that already carry the ``(x − x')`` factor
    (Integrated Gradients, input × gradient): the subset perturbation is then the mask itself,
    ``Iᵀa = Σ_{i∈S} a_i`` (Captum's ``multiply_by_inputs`` convention), so it is not counted twice.

    Example::

        >>> fastattr.metrics.infidelity(model, x, attr, y, perturbation="gaussian", noise_std=0.1)
    """
    feats, t, clean = _setup(model, inputs, attributions, target, max_batch, memory_budget)
    if perturbation not in ("subset", "gaussian"):
        raise ValueError(f"perturbation must be 'subset' or 'gaussian', got {perturbation!r}")
    if passes is None:
        size = fraction_count(subset_fraction, feats.shape[1], "subset_fraction")
        passes = subset_deltas(model, inputs, t, feats.shape[1], subset_size=size, n_subsets=n_subsets,
                               baseline=baseline, noise=noise_std if perturbation == "gaussian" else None,
                               score=score, generator=generator, max_batch=max_batch,
                               memory_budget=memory_budget, compile=compile, logits=clean)
    weighted = not (multiplied_by_inputs and perturbation == "subset")
    return infidelity_from(passes, feats, weighted=weighted, normalize=normalize).to(inputs.dtype)


def infidelity_from(passes: SubsetPasses, feats: torch.Tensor, *, weighted: bool, normalize: bool
                    ) -> torch.Tensor:
    """``mean_k (Iᵀa − Δ)²`` over the passes (float64 ``[B]``), ``Iᵀa`` optionally rescaled by the
    optimal ``β``; the part of :func:`infidelity` that depends on the attribution."""
    mass = passes.attribution_mass(feats, weighted=weighted).double()
    delta = passes.delta.double()
    if normalize:
        beta = (mass * delta).mean(-1, keepdim=True) / (mass * mass).mean(-1, keepdim=True).clamp_min(1e-300)
        mass = beta * mass
    return ((mass - delta) ** 2).mean(-1)
