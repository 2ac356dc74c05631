"""Grouped deletion and insertion (SOP App. C.2.2; SPEC §3.2).

A grouped attribution is a set of (possibly overlapping) feature groups ``S_1..S_G`` with scores
``c_1..c_G`` (SOP Def. 3). Groups are deleted (inserted) one whole group per step in decreasing
score; a feature already removed (inserted) is not changed again, so a step changes only the new
part of its group. The x-axis is the fraction of features changed so far, so it differs per
example; the metric is the trapezoid area of the score curve over it. The groups run on the
ranking kernel: a unit's rank is the position of the first group that holds it.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..core import (Baseline, RankSchedule, Target, check_flag, check_inputs, check_scalar_reader, chunk_size,
                    group_masks, group_scores, group_unit_rank, make_baseline, model_entry, perturbed_scores,
                    rank_features, resolve_target)


def _grouped(model, inputs, attributions, target, *, insert, groups, baseline, score, curves, granularity,
             segment_score, generator, max_batch, memory_budget, compile):
    check_inputs(inputs)
    check_scalar_reader(score)
    check_flag(curves, "curves")
    masks, unit = group_masks(inputs, groups, granularity=granularity)
    c = group_scores(inputs, attributions, masks, unit, segment_score)
    t = resolve_target(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    n_groups, batch = masks.shape[1], inputs.shape[0]
    rank = group_unit_rank(masks, rank_features(c))
    counts = torch.arange(n_groups + 1)
    chunk = chunk_size(inputs, batch * counts.numel(), max_batch, memory_budget, per_input_factor=8.0)
    curve = perturbed_scores(model, inputs, make_baseline(inputs, baseline, generator=generator),
                             RankSchedule(rank, counts.to(inputs.device), insert), t, reader=score, chunk=chunk,
                             compile=compile)
    # fraction changed after k groups = #{units of rank < k} / U
    ones = torch.ones_like(rank, dtype=torch.float64)
    per_step = torch.zeros(batch, n_groups + 1, dtype=torch.float64, device=rank.device)
    per_step.scatter_add_(1, rank, ones)
    changed = torch.cat([per_step.new_zeros(batch, 1), per_step[:, :-1].cumsum(1)], 1)
    fractions = (changed / rank.shape[1]).float()
    auc = torch.trapezoid(curve, fractions.to(curve), dim=-1)
    return (auc, curve, fractions) if curves else auc


@model_entry
def grouped_deletion(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor,
                     target: Target = None, *,
                     groups: torch.Tensor, baseline: Baseline = 0.0, score: str = "probability",
                     curves: bool = False, granularity: Optional[str] = None, segment_score: str = "sum",
                     generator=None, max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
                     compile: Union[bool, dict] = False):
    """Grouped deletion AUC per example (SOP App. C.2.2; lower is better).

    Step k sets the union of the k highest-scoring groups to ``baseline`` (0 = black, as SOP);
    ``AUC = ∫ f_t(x̃) d(fraction of features changed)`` (trapezoid; features in no group are
    never changed, so the x-axis may end below 1).

    Args:
        attributions: group scores ``c [B, G]``, or an attribution map whose sum (``segment_score=
            "mean"``: mean) over each group is its score.
        groups: bool / 0-1 masks ``[B, G, *map]`` or ``[G, *map]`` (may overlap), or integer segment
            ids of map shape; ``*map`` is the spatial shape (pixels, channel-shared) or the input's
            shape (elements); ``granularity`` settles an ambiguous shape.
        curves: also return ``curve [B, G+1]`` and ``fractions [B, G+1]``.

    With singleton groups this is :func:`fastattr.metrics.deletion` with ``step=1``.

    Example::

        >>> auc = fastattr.metrics.grouped_deletion(model, x, sop_scores, y, groups=sop_masks)
    """
    return _grouped(model, inputs, attributions, target, insert=False, groups=groups, baseline=baseline,
                    score=score, curves=curves, granularity=granularity, segment_score=segment_score,
                    generator=generator, max_batch=max_batch, memory_budget=memory_budget, compile=compile)


@model_entry
def grouped_insertion(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor,
                      target: Target = None, *,
                      groups: torch.Tensor, baseline: Baseline = 0.0, score: str = "probability",
                      curves: bool = False, granularity: Optional[str] = None, segment_score: str = "sum",
                      generator=None, max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
                      compile: Union[bool, dict] = False):
    """Grouped insertion AUC per example (SOP App. C.2.2; higher is better): start from ``baseline``
    and restore the union of the k highest-scoring groups of x at step k; arguments and x-axis as
    :func:`grouped_deletion`.

    Example::

        >>> auc = fastattr.metrics.grouped_insertion(model, x, sop_scores, y, groups=sop_masks)
    """
    return _grouped(model, inputs, attributions, target, insert=True, groups=groups, baseline=baseline,
                    score=score, curves=curves, granularity=granularity, segment_score=segment_score,
                    generator=generator, max_batch=max_batch, memory_budget=memory_budget, compile=compile)
