"""The least total deletion / insertion error any additive attribution can reach (SOP §2 and App. A,
Thm. 1, Lemma 1; SPEC §8).

For ``d`` features and every subset ``S`` of them, ``c_S = f(x) − f(x_{−S})`` (deletion: S set to the
baseline) or ``c_S = f(x_S) − f(x')`` (insertion: the baseline with S taken from x). The total error
of an additive attribution ``α ∈ R^d`` is ``Σ_S |c_S − Σ_{i∈S} α_i|`` (:func:`deletion_error`,
:func:`insertion_error` with ``max_exhaustive ≥ d``); its minimum over ``α`` is the linear program

    min_{α, t}  Σ_S t_S   s.t.   −t_S ≤ c_S − Σ_{i∈S} α_i ≤ t_S   (α free, t ≥ 0),

solved per example by scipy's HiGHS. The empty set contributes ``|c_∅| = 0`` (f is evaluated exactly),
so it is left out of the sum. The ``2^d − 1`` values come from one masked pass of the engine.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..core import (Baseline, Features, Target, all_subsets, check_flag, check_inputs, check_scalar_reader,
                    feature_layout, make_baseline, make_generator, model_entry, resolve_clean)
from ..core.features import unit_shape
from .sop import subset_changes

__all__ = ["MAX_LP_FEATURES", "min_total_error", "minimal_additive_error"]

KINDS = ("deletion", "insertion")
MAX_LP_FEATURES = 20  # 2^20 − 1 subsets: about two million LP constraints per example


def minimal_additive_error(subsets: torch.Tensor, changes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min_α Σ_S |c_S − Σ_{i∈S} α_i| [B], the minimising α [B, d])`` for bool ``subsets`` ``[K, d]``
    and ``changes`` ``c`` ``[B, K]``, one HiGHS linear program per example (float64)."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, hstack, identity, vstack

    k, d = subsets.shape
    member = csr_matrix(subsets.cpu().numpy().astype(np.float64))
    eye = identity(k, format="csr")
    # c − Mα ≤ t  ⇔  −Mα − t ≤ −c ;  Mα − c ≤ t  ⇔  Mα − t ≤ c
    a_ub = vstack([hstack([-member, -eye]), hstack([member, -eye])]).tocsc()
    cost = np.concatenate([np.zeros(d), np.ones(k)])
    bounds = [(None, None)] * d + [(0, None)] * k
    errors, alphas = [], []
    for c in changes.detach().double().cpu().numpy():
        res = linprog(cost, A_ub=a_ub, b_ub=np.concatenate([-c, c]), bounds=bounds, method="highs")
        if res.status != 0:
            raise RuntimeError(f"the minimal-error LP did not solve: {res.message}")
        errors.append(res.fun)
        alphas.append(res.x[:d])
    return (torch.tensor(errors, dtype=torch.float64, device=changes.device),
            torch.tensor(np.array(alphas), dtype=torch.float64, device=changes.device).reshape(-1, d))


@model_entry
def min_total_error(model: Callable, inputs: torch.Tensor, target: Target = None, *, kind: str = "deletion",
                    segments: Optional[torch.Tensor] = None, patch_size=None, granularity: Optional[str] = None,
                    baseline: Baseline = 0.0, score: str = "logit", return_attributions: bool = False,
                    generator=None, max_batch: Optional[int] = None,
                    memory_budget: Optional[int] = None) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The least total deletion (``kind="deletion"``) or insertion error any additive attribution can
    reach on ``inputs`` (SOP Thm. 1; lower bound of :func:`deletion_error` / :func:`insertion_error`
    over all ``2^d − 1`` subsets), float64 ``[B]``:

        ``min_α Σ_{S ≠ ∅} |c_S − Σ_{i∈S} α_i|``,  ``c_S = f_t(x) − f_t(x_{−S})`` or ``f_t(x_S) − f_t(x')``.

    Features as in :func:`fastattr.metrics.deletion`: pixels or elements, ``segments`` (ids ``0..d−1``)
    or ``patch_size``; ``d ≤`` :data:`MAX_LP_FEATURES`. ``score`` is the target logit by default.
    ``return_attributions=True`` also returns the minimising ``α`` ``[B, d]`` (one value per feature).
    A given map's :func:`deletion_error` (same features, ``max_exhaustive ≥ d``) minus this floor is its
    excess over the best additive attribution. ``generator`` seeds a random ``baseline``.

    Example::

        >>> floor = fastattr.metrics.min_total_error(model, x, y, patch_size=2)   # 16 patches of a digit
        >>> excess = fastattr.metrics.deletion_error(model, x, ig, y, patch_size=2, max_exhaustive=16) - floor
    """
    check_inputs(inputs)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check_scalar_reader(score)
    return_attributions = check_flag(return_attributions, "return_attributions")
    unit, ids = feature_layout(inputs, granularity=granularity, segments=segments, patch_size=patch_size,
                               default="pixel" if inputs.dim() > 2 else "element")
    n_units = math.prod(unit_shape(inputs, unit))
    d = n_units if ids is None else int(ids.max()) + 1
    if d > MAX_LP_FEATURES:
        raise ValueError(f"min_total_error solves an LP over all 2^d − 1 subsets of d ≤ {MAX_LP_FEATURES} features; "
                         f"the inputs have d = {d} (pass segments= or patch_size= to group them)")
    feats = Features(torch.zeros(inputs.shape[0], d, device=inputs.device), ids, n_units, unit)
    insert = kind == "insertion"
    t, clean = resolve_clean(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    base = make_baseline(inputs, baseline, generator=make_generator(generator))
    subsets = all_subsets(d)
    changes = subset_changes(model, inputs, t, feats, subsets.unsqueeze(0), insert=insert, baseline=base,
                             score=score, max_batch=max_batch, memory_budget=memory_budget,
                             reference=None if insert else clean)
    error, alpha = minimal_additive_error(subsets, changes)
    return (error, alpha) if return_attributions else error
