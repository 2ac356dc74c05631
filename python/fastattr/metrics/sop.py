"""Insertion and deletion error of additive and grouped attributions (SOP Sec. 2 and App. A,
Def. 1, 2, 4, 5; SPEC §3.2).

For a subset S of features, with ``x_{−S}`` = x with S set to the baseline (0) and ``x_S`` = the
baseline with S taken from x:

- ``DelErr(a, S) = |f(x) − f(x_{−S}) − Σ_{i∈S} a_i|``, ``InsErr(a, S) = |f(x_S) − f(0) − Σ_{i∈S} a_i|``;
- grouped (attribution ``{(S_i, c_i)}``): the attribution term becomes ``Σ_{i : S ⊆ S_i} c_i``
  (``rule="subset"``, Def. 4–5 as printed) or ``Σ_{i : S_i ⊆ S} c_i`` (``rule="contains"``: a
  group counts when all of it is in S — the reading the proof of Corollary 1 uses for insertion,
  and the one under which singleton groups give Def. 1–2 back).

Totals are summed over a set of subsets: every non-empty subset when ``d ≤ max_exhaustive``
(the paper's total error), else ``n_subsets`` random non-empty Bernoulli(``p``) subsets, or the
explicit ``subsets``. ``f`` is the target logit by default. The model passes do not depend on the
attribution, so :func:`fastattr.evaluate` shares them across methods.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..core import (Baseline, Features, MaskSet, Target, all_subsets, check_count, check_flag, check_inputs,
                    check_scalar_reader, chunk_size, feature_layout, feature_space, group_masks, group_scores,
                    make_baseline, make_generator, model_entry, perturbed_scores, random_subsets, read_scores,
                    resolve_clean)
from .subsets import check_masks

GROUP_RULES = ("subset", "contains")
REDUCTIONS = ("sum", "mean")


def choose_subsets(batch: int, n_features: int, *, subsets=None, n_subsets: int = 200,
                   max_exhaustive: int = 12, p: float = 0.5, generator=None) -> torch.Tensor:
    """The subsets to test, bool ``[B or 1, K, d]``: explicit ``subsets`` (``[B, K, d]`` / ``[K, d]``),
    all ``2^d − 1`` non-empty subsets when ``d ≤ max_exhaustive``, else ``n_subsets`` non-empty
    Bernoulli(``p``) subsets per example drawn from ``generator``."""
    if subsets is not None:
        return check_masks(subsets, batch, n_features, "subsets")
    if n_features <= check_count(max_exhaustive, "max_exhaustive", minimum=0):
        if n_features > 24:
            raise ValueError(f"max_exhaustive={max_exhaustive} asks for all 2^{n_features} − 1 subsets of "
                             f"{n_features} features; exhaustive totals take at most 24 features")
        return all_subsets(n_features).unsqueeze(0)
    n_subsets = check_count(n_subsets, "n_subsets")
    return random_subsets(batch, n_subsets, n_features, p=p, generator=generator, nonempty=True)


@torch.no_grad()
def subset_changes(model: Callable, inputs: torch.Tensor, target: torch.Tensor, feats: Features,
                   subsets: torch.Tensor, *, insert: bool, baseline: torch.Tensor, score: str = "logit",
                   max_batch=None, memory_budget=None, compile=False,
                   reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[B, K]``: ``f(x) − f(x_{−S})`` (deletion) or ``f(x_S) − f(x')`` (insertion) for each subset,
    from one masked pass whose first mask is the reference input (x for deletion, the baseline for
    insertion), unless ``reference``, the model's output on that input, is already known."""
    batch = inputs.shape[0]
    subsets = subsets.to(inputs.device)
    masks = ~subsets if insert else subsets
    if reference is None:
        ref = torch.full((subsets.shape[0], 1, subsets.shape[2]), insert, dtype=torch.bool,
                         device=inputs.device)
        masks = torch.cat([ref, masks], 1)
    chunk = chunk_size(inputs, batch * masks.shape[1], max_batch, memory_budget, per_input_factor=8.0)
    out = perturbed_scores(model, inputs, baseline, MaskSet(inputs, masks, feats), target, reader=score, chunk=chunk,
                           compile=compile, precise=True).double()
    if reference is not None:
        ref = read_scores(reference, target, score).double().unsqueeze(1)
        return out - ref if insert else ref - out
    return out[:, 1:] - out[:, :1] if insert else out[:, :1] - out[:, 1:]


def error_passes(model: Callable, inputs: torch.Tensor, target: torch.Tensor, feats: Features, *,
                 insert: bool, subsets=None, n_subsets: int = 200,
                 max_exhaustive: int = 12, p: float = 0.5, baseline: Baseline = 0.0, score: str = "logit",
                 generator=None, max_batch=None, memory_budget=None, compile=False,
                 reference: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The subsets and :func:`subset_changes` of the SOP errors, drawn from one ``generator``: a random
    baseline first, then the subsets; ``reference``: the model's output on x (deletion) or on the
    baseline (insertion), when known. Returns ``(subsets [B or 1, K, d], changes [B, K])``."""
    gen = make_generator(generator)
    base = make_baseline(inputs, baseline, generator=gen)
    s = choose_subsets(inputs.shape[0], feats.n, subsets=subsets, n_subsets=n_subsets,
                       max_exhaustive=max_exhaustive, p=p, generator=gen)
    change = subset_changes(model, inputs, target, feats, s, insert=insert, baseline=base, score=score,
                            max_batch=max_batch, memory_budget=memory_budget, compile=compile,
                            reference=reference)
    return s, change


def _standalone_passes(model, inputs, target, feats, *, insert, max_batch, memory_budget, **kw):
    """:func:`error_passes` after one chunked forward of x, which resolves the targets and gives the
    deletion reference ``f(x)``."""
    t, clean = resolve_clean(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    return error_passes(model, inputs, t, feats, insert=insert, max_batch=max_batch,
                        memory_budget=memory_budget, reference=None if insert else clean, **kw)


def additive_mass(subsets: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: ``Σ_{i∈S} a_i`` for subsets ``[B or 1, K, d]`` (one example at a time, to bound memory)."""
    subsets = subsets.to(scores.device)
    return torch.stack([subsets[b if subsets.shape[0] > 1 else 0].to(scores.dtype) @ scores[b]
                        for b in range(scores.shape[0])])


def grouped_mass(unit_subsets: torch.Tensor, masks: torch.Tensor, c: torch.Tensor, rule: str) -> torch.Tensor:
    """``[B, K]``: ``Σ_{i : S ⊆ S_i} c_i`` (``rule="subset"``) or ``Σ_{i : S_i ⊆ S} c_i`` (``"contains"``)
    for unit masks of the subsets ``[B or 1, K, U]`` and of the groups ``[B or 1, G, U]``."""
    out = []
    for b in range(c.shape[0]):
        s = unit_subsets[b if unit_subsets.shape[0] > 1 else 0].to(c.device, torch.float32)
        g = masks[b if masks.shape[0] > 1 else 0].to(torch.float32)
        outside = s @ (1 - g).T if rule == "subset" else (1 - s) @ g.T  # [K, G] units breaking the relation
        out.append((outside == 0).to(c.dtype) @ c[b])
    return torch.stack(out)


def additive_errors(change: torch.Tensor, mass: torch.Tensor, rescale: bool = False) -> torch.Tensor:
    """``[B, K]``: ``|Δf_S − c·Σ_{i∈S} a_i|`` with ``c = 1``, or with ``rescale`` the best scale
    ``c = argmin_{c ≥ 0} Σ_S |Δf_S − c·A_S|`` per example (a weighted median of ``Δf_S / A_S`` with
    weights ``|A_S|``, clipped at 0), which makes the total error independent of the map's scale."""
    if not rescale:
        return (change - mass).abs()
    ratio = torch.where(mass != 0, change / torch.where(mass != 0, mass, torch.ones_like(mass)),
                        torch.zeros_like(mass))
    order = ratio.argsort(1)
    weights = mass.abs().gather(1, order).cumsum(1)
    half = weights[:, -1:] / 2
    index = torch.searchsorted(weights, half).clamp(max=mass.shape[1] - 1)
    scale = ratio.gather(1, order).gather(1, index).clamp(min=0)
    scale = torch.where(weights[:, -1:] > 0, scale, torch.zeros_like(scale))
    return (change - scale * mass).abs()


def _reduce(errors: torch.Tensor, reduction: str) -> torch.Tensor:
    return errors.sum(-1) if reduction == "sum" else errors.mean(-1)


def _check(reduction: str, rule: Optional[str] = None) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if rule is not None and rule not in GROUP_RULES:
        raise ValueError(f"rule must be one of {GROUP_RULES}, got {rule!r}")


def _additive_error(model, inputs, attributions, target, *, insert, subsets, n_subsets, max_exhaustive, p,
                    baseline, score, reduction, granularity, segments, patch_size, segment_score, generator,
                    max_batch, memory_budget, compile, rescale):
    check_inputs(inputs)
    rescale = check_flag(rescale, "rescale")
    check_scalar_reader(score)
    _check(reduction)
    feats = feature_space(inputs, attributions, granularity=granularity, segments=segments,
                          patch_size=patch_size, segment_score=segment_score)
    s, change = _standalone_passes(model, inputs, target, feats, insert=insert, subsets=subsets,
                                   n_subsets=n_subsets, max_exhaustive=max_exhaustive, p=p, baseline=baseline,
                                   score=score, generator=generator, max_batch=max_batch,
                                   memory_budget=memory_budget, compile=compile)
    return _reduce(additive_errors(change, additive_mass(s, feats.scores.double()), rescale), reduction)


@model_entry
def deletion_error(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor,
                   target: Target = None, *, subsets: Optional[torch.Tensor] = None, n_subsets: int = 200,
                   max_exhaustive: int = 12, p: float = 0.5, baseline: Baseline = 0.0, score: str = "logit",
                   reduction: str = "sum", granularity: Optional[str] = None,
                   segments: Optional[torch.Tensor] = None, patch_size=None, segment_score: str = "sum",
                   generator=None, max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
                   compile: Union[bool, dict] = False, rescale: bool = False) -> torch.Tensor:
    """Total deletion error of an additive attribution (SOP Def. 1; lower is better), float64 ``[B]``:
    ``Σ_S |f_t(x) − f_t(x_{−S}) − Σ_{i∈S} a_i|`` over every non-empty subset of the d features when
    ``d ≤ max_exhaustive``, else over ``n_subsets`` random non-empty Bernoulli(``p``) subsets (or the
    explicit bool ``subsets`` ``[B, K, d]`` / ``[K, d]``). ``reduction="mean"`` averages instead.
    Features as in :func:`fastattr.metrics.deletion` (pixels, elements, ``segments``,
    ``patch_size``); ``score`` defaults to the target logit, where ``a_i = θ_i x_i`` of a linear
    model ``θᵀx`` has zero error. ``rescale=True``: the error of the best-scaled map ``c·a`` (``c ≥ 0``
    chosen per example to minimise the total), so that maps of different scales compare.

    Example::

        >>> fastattr.metrics.deletion_error(model, x, attr, y, patch_size=8)
    """
    return _additive_error(model, inputs, attributions, target, insert=False, subsets=subsets,
                           n_subsets=n_subsets, max_exhaustive=max_exhaustive, p=p, baseline=baseline,
                           score=score, reduction=reduction, granularity=granularity, segments=segments,
                           patch_size=patch_size, segment_score=segment_score, generator=generator,
                           max_batch=max_batch, memory_budget=memory_budget, compile=compile, rescale=rescale)


@model_entry
def insertion_error(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor,
                    target: Target = None, *, subsets: Optional[torch.Tensor] = None, n_subsets: int = 200,
                    max_exhaustive: int = 12, p: float = 0.5, baseline: Baseline = 0.0, score: str = "logit",
                    reduction: str = "sum", granularity: Optional[str] = None,
                    segments: Optional[torch.Tensor] = None, patch_size=None, segment_score: str = "sum",
                    generator=None, max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
                    compile: Union[bool, dict] = False, rescale: bool = False) -> torch.Tensor:
    """Total insertion error of an additive attribution (SOP Def. 2; lower is better), float64 ``[B]``:
    ``Σ_S |f_t(x_S) − f_t(x') − Σ_{i∈S} a_i|`` with ``x_S`` = the baseline (0) with S taken from x;
    subsets and arguments as :func:`deletion_error`.

    Example::

        >>> fastattr.metrics.insertion_error(model, x, attr, y)
    """
    return _additive_error(model, inputs, attributions, target, insert=True, subsets=subsets,
                           n_subsets=n_subsets, max_exhaustive=max_exhaustive, p=p, baseline=baseline,
                           score=score, reduction=reduction, granularity=granularity, segments=segments,
                           patch_size=patch_size, segment_score=segment_score, generator=generator,
                           max_batch=max_batch, memory_budget=memory_budget, compile=compile, rescale=rescale)


def _grouped_error(model, inputs, attributions, target, *, insert, groups, rule, subsets, n_subsets,
                   max_exhaustive, p, baseline, score, reduction, granularity, segments, patch_size,
                   segment_score, generator, max_batch, memory_budget, compile):
    check_inputs(inputs)
    check_scalar_reader(score)
    _check(reduction, rule)
    masks, unit = group_masks(inputs, groups, granularity=granularity)
    c = group_scores(inputs, attributions, masks, unit, segment_score).double()
    subset_unit, ids = feature_layout(inputs, granularity=unit, segments=segments, patch_size=patch_size,
                                      default=unit)
    n_units = masks.shape[2]
    n_features = n_units if ids is None else int(ids.max()) + 1
    feats = Features(torch.zeros(inputs.shape[0], n_features), ids, n_units, subset_unit)
    s, change = _standalone_passes(model, inputs, target, feats, insert=insert, subsets=subsets,
                                   n_subsets=n_subsets, max_exhaustive=max_exhaustive, p=p, baseline=baseline,
                                   score=score, generator=generator, max_batch=max_batch,
                                   memory_budget=memory_budget, compile=compile)
    mass = grouped_mass(feats.unit_masks(s.to(inputs.device)), masks, c, rule)
    return _reduce((change - mass).abs(), reduction)


@model_entry
def grouped_deletion_error(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor,
                           target: Target = None, *, groups: torch.Tensor, rule: str = "subset",
                           subsets: Optional[torch.Tensor] = None,
                           n_subsets: int = 200, max_exhaustive: int = 12, p: float = 0.5,
                           baseline: Baseline = 0.0, score: str = "logit", reduction: str = "sum",
                           granularity: Optional[str] = None, segments: Optional[torch.Tensor] = None,
                           patch_size=None, segment_score: str = "sum", generator=None,
                           max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
                           compile: Union[bool, dict] = False) -> torch.Tensor:
    """Total grouped deletion error (SOP Def. 4; lower is better), float64 ``[B]``:
    ``Σ_S |f_t(x) − f_t(x_{−S}) − Σ_{i : S ⊆ S_i} c_i|`` (``rule="subset"``, as printed) or with
    ``Σ_{i : S_i ⊆ S} c_i`` (``rule="contains"``).

    ``attributions``: group scores ``c [B, G]`` or a map reduced over each group; ``groups``: masks
    ``[B, G, *map]`` / ``[G, *map]`` (may overlap) or segment ids, as in
    :func:`fastattr.metrics.grouped_deletion`. Subsets S range over the units of the groups (or
    over ``segments`` / ``patch_size``); which subsets and the other arguments as
    :func:`deletion_error`.

    Example::

        >>> fastattr.metrics.grouped_deletion_error(model, x, c, y, groups=masks)
    """
    return _grouped_error(model, inputs, attributions, target, insert=False, groups=groups, rule=rule,
                          subsets=subsets, n_subsets=n_subsets, max_exhaustive=max_exhaustive, p=p,
                          baseline=baseline, score=score, reduction=reduction, granularity=granularity,
                          segments=segments, patch_size=patch_size, segment_score=segment_score,
                          generator=generator, max_batch=max_batch, memory_budget=memory_budget,
                          compile=compile)


@model_entry
def grouped_insertion_error(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor,
                            target: Target = None, *, groups: torch.Tensor, rule: str = "subset",
                            subsets: Optional[torch.Tensor] = None,
                            n_subsets: int = 200, max_exhaustive: int = 12, p: float = 0.5,
                            baseline: Baseline = 0.0, score: str = "logit", reduction: str = "sum",
                            granularity: Optional[str] = None, segments: Optional[torch.Tensor] = None,
                            patch_size=None, segment_score: str = "sum", generator=None,
                            max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
                            compile: Union[bool, dict] = False) -> torch.Tensor:
    """Total grouped insertion error (SOP Def. 5; lower is better), float64 ``[B]``:
    ``Σ_S |f_t(x_S) − f_t(x') − Σ_{i : S ⊆ S_i} c_i|`` (``rule="subset"``) or with
    ``Σ_{i : S_i ⊆ S} c_i`` (``rule="contains"``); arguments as :func:`grouped_deletion_error`.

    Example::

        >>> fastattr.metrics.grouped_insertion_error(model, x, c, y, groups=masks, rule="contains")
    """
    return _grouped_error(model, inputs, attributions, target, insert=True, groups=groups, rule=rule,
                          subsets=subsets, n_subsets=n_subsets, max_exhaustive=max_exhaustive, p=p,
                          baseline=baseline, score=score, reduction=reduction, granularity=granularity,
                          segments=segments, patch_size=patch_size, segment_score=segment_score,
                          generator=generator, max_batch=max_batch, memory_budget=memory_budget,
                          compile=compile)
