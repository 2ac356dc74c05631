"""Deletion and insertion (Petsiuk et al. 2018, RISE; SOP App. C.2.2; thesis ch. 6).

Features are ordered by attribution, highest first. Deletion starts from x and replaces the top
features by the baseline step by step; insertion starts from the baseline and restores them.
The score after each step (target softmax probability by default) traces a curve over the
fraction of features changed in [0, 1]; the metric is its trapezoid area. Lower is better for
deletion, higher for insertion.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..attribution._common import Target, check_inputs, check_model, chunk_size, resolve_target
from .perturb import check_attributions, make_baseline, rank_features, ranked_curve, step_counts


def _area(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    return torch.trapezoid(curve, fractions.to(curve), dim=-1)


def _ranked_metric(model, inputs, attributions, target, *, keep_top, baseline, step, score, curves,
                   max_batch, memory_budget):
    check_model(model)
    check_inputs(inputs)
    feats = check_attributions(inputs, attributions)
    counts = step_counts(feats.shape[1], step)
    t = resolve_target(model, inputs, target)
    chunk = chunk_size(inputs, inputs.shape[0] * counts.numel(), max_batch, memory_budget, per_input_factor=8.0)
    curve = ranked_curve(model, inputs, make_baseline(inputs, baseline), rank_features(feats),
                         counts.to(inputs.device), t, keep_top=keep_top, reader=score, chunk=chunk)
    fractions = counts.to(torch.float32) / feats.shape[1]
    auc = _area(curve, fractions.to(curve.device))
    return (auc, curve, fractions) if curves else auc


def deletion(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
             baseline: Union[float, str, torch.Tensor] = 0.0, step: Union[int, float, None] = None,
             score: str = "probability", curves: bool = False, max_batch: Optional[int] = None,
             memory_budget: Optional[int] = None):
    """Deletion AUC per example: remove the most important features first (lower is better).

    ``x̃_k = x`` with the top ``n_k`` features set to ``baseline`` (0 = black by default, as SOP);
    ``AUC = ∫ f_t(x̃) d(fraction)`` by the trapezoid rule. With ``curves=True`` returns
    ``(auc [B], curves [B, K], fractions [K])``.

    Example::

        >>> auc = fastattr.metrics.deletion(model, x, attr.sum(1), target=y)
    """
    return _ranked_metric(model, inputs, attributions, target, keep_top=False, baseline=baseline, step=step,
                          score=score, curves=curves, max_batch=max_batch, memory_budget=memory_budget)


def insertion(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
              baseline: Union[float, str, torch.Tensor] = 0.0, step: Union[int, float, None] = None,
              score: str = "probability", curves: bool = False, max_batch: Optional[int] = None,
              memory_budget: Optional[int] = None):
    """Insertion AUC per example: restore the most important features first (higher is better).

    ``x̃_k = baseline`` with the top ``n_k`` features taken from x (``baseline="blur"`` gives the
    RISE paper's blurred start); same curve and area conventions as :func:`deletion`.
    """
    return _ranked_metric(model, inputs, attributions, target, keep_top=True, baseline=baseline, step=step,
                          score=score, curves=curves, max_batch=max_batch, memory_budget=memory_budget)
