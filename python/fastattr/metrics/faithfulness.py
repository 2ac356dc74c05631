"""Ranked-removal metrics (SPEC §3.2): deletion and insertion (Petsiuk et al. 2018, RISE; SOP
App. C.2.2; thesis ch. 6), MoRF / LeRF (ROAD-style), MDRS and AUPC (SEA-NN Eq. 3).

Features are ordered by attribution, highest first (stable; ties broken by feature index). Deletion
starts from x and replaces the top features by the baseline step by step; insertion starts from the
baseline and restores them. The score after each step (target softmax probability by default)
traces a curve over the fraction of features changed in [0, 1]; deletion / insertion are its
trapezoid area (lower is better for deletion, higher for insertion). A feature is a pixel (map
``[B, H, W]``, channel-shared), an element (map of the input's shape), or a segment / patch
(``segments`` / ``patch_size``, scored by the sum or mean of the attribution inside, see
:func:`fastattr.core.feature_space`). Every metric here runs on the ranking kernel.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..core import (Baseline, Features, RankSchedule, Target, check_flag, check_inputs, check_scalar_reader,
                    chunk_size, feature_space, fraction_count, make_baseline, model_entry, perturbed_scores,
                    rank_features, read_scores, resolve_clean, step_counts)

MORF_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _area(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    return torch.trapezoid(curve, fractions.to(curve), dim=-1)


def ranked_setup(model, inputs, attributions, target, *, granularity=None, segments=None, patch_size=None,
                 segment_score="sum", max_batch=None, memory_budget=None
                 ) -> tuple[Features, torch.Tensor, torch.Tensor]:
    """Checks the arguments; the features of the map, the resolved targets ``[B]``, and the model's
    output on ``inputs`` (the forward that checked the targets, reused as the curves' x end)."""
    check_inputs(inputs)
    feats = feature_space(inputs, attributions, granularity=granularity, segments=segments,
                          patch_size=patch_size, segment_score=segment_score)
    t, clean = resolve_clean(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    return feats, t, clean


def ranked_scores(model: Callable, inputs: torch.Tensor, feats: Features, target: torch.Tensor,
                  counts: torch.Tensor, *, keep_top: bool, baseline: torch.Tensor, reader: str,
                  max_batch=None, memory_budget=None, compile=False,
                  known: Optional[dict[int, torch.Tensor]] = None) -> torch.Tensor:
    """Scores ``[B, K]`` (``[B, K, C]`` for ``"logits"``) after keeping (``keep_top``) or removing the
    top ``counts[k]`` features of ``feats``, highest score first.

    ``known``: model outputs already computed for some counts (the ends 0 and d, which are x or the
    baseline whatever the ranking); those counts are read from them instead of run again."""
    known = known or {}
    todo = [int(c) for c in counts if int(c) not in known]
    out = None
    if todo:
        total = inputs.shape[0] * len(todo)
        chunk = chunk_size(inputs, total, max_batch, memory_budget, per_input_factor=8.0)
        rank = feats.unit_rank(rank_features(feats.scores))
        steps = RankSchedule(rank, torch.tensor(todo, device=inputs.device), keep_top)
        out = perturbed_scores(model, inputs, baseline, steps, target, reader=reader, chunk=chunk, compile=compile)
        if len(todo) == counts.numel():
            return out
    cols = {c: i for i, c in enumerate(todo)}
    read = {c: read_scores(logits, target, reader) for c, logits in known.items()}
    dtype = out.dtype if out is not None else \
        torch.promote_types(torch.float32, next(iter(read.values())).dtype) if reader == "logits" else torch.float32
    return torch.stack([read[int(c)].to(dtype) if int(c) in read else out[:, cols[int(c)]] for c in counts], 1)


def scores_from_logits(logits: torch.Tensor, target: torch.Tensor, reader: str) -> torch.Tensor:
    """``[B, K, C]`` logits → ``[B, K]`` float32 scores, the same numbers the reader gives directly."""
    batch, k = logits.shape[:2]
    flat = read_scores(logits.reshape(batch * k, -1), target.repeat_interleave(k), reader)
    return flat.float().view(batch, k)


def columns(union: Sequence[int], wanted) -> torch.Tensor:
    """Positions of the ``wanted`` step counts in the sorted ``union`` of counts one pass ran."""
    where = {c: i for i, c in enumerate(union)}
    return torch.tensor([where[int(c)] for c in wanted], dtype=torch.long)


def check_fractions(fractions, n_features: int, name: str = "fractions") -> list[int]:
    """Feature counts ``max(1, round(p · d))`` for a non-empty list of fractions in (0, 1]."""
    if isinstance(fractions, (int, float)) or not len(fractions):
        raise ValueError(f"{name} must be a non-empty sequence of fractions in (0, 1], got {fractions!r}")
    return [fraction_count(p, n_features, name) for p in fractions]


def mdrs_from_logits(logits: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """MDRS from the logits ``[B, G, C]`` after removing 1..G segments: the first k whose argmax
    differs from the prediction on x (``clean``: the logits ``[B, C]`` of x); G when none does."""
    if logits.shape[-1] < 2 or clean.dim() != 2:
        raise ValueError("mdrs needs a classifier with at least 2 outputs (it counts until the argmax "
                         "changes)")
    flipped = logits.argmax(-1) != clean.argmax(-1).unsqueeze(1)
    first = flipped.float().argmax(1) + 1
    return torch.where(flipped.any(1), first, logits.shape[1]).float()


def _space(granularity, segments, patch_size, segment_score):
    return dict(granularity=granularity, segments=segments, patch_size=patch_size,
                segment_score=segment_score)


def _ranked_metric(model, inputs, attributions, target, *, keep_top, baseline, step, score, curves,
                   max_batch, memory_budget, space, generator, compile):
    check_scalar_reader(score)
    check_flag(curves, "curves")
    feats, t, clean = ranked_setup(model, inputs, attributions, target, **space, max_batch=max_batch,
                                   memory_budget=memory_budget)
    counts = step_counts(feats.n, step)
    curve = ranked_scores(model, inputs, feats, t, counts, keep_top=keep_top, reader=score, compile=compile,
                          baseline=make_baseline(inputs, baseline, generator=generator),
                          max_batch=max_batch, memory_budget=memory_budget,
                          known={feats.n if keep_top else 0: clean})
    fractions = counts.to(torch.float32) / feats.n
    auc = _area(curve, fractions.to(curve.device))
    return (auc, curve, fractions) if curves else auc


@model_entry
def deletion(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
             baseline: Baseline = 0.0, step: Union[int, float, None] = None,
             score: str = "probability", curves: bool = False, max_batch: Optional[int] = None,
             memory_budget: Optional[int] = None, granularity: Optional[str] = None,
             segments: Optional[torch.Tensor] = None, patch_size=None, segment_score: str = "sum",
             generator=None, compile: Union[bool, dict] = False):
    """Deletion AUC per example: remove the most important features first (lower is better).

    ``x̃_k = x`` with the top ``n_k`` features set to ``baseline`` (0 = black by default, as SOP);
    ``AUC = ∫ f_t(x̃) d(fraction)`` by the trapezoid rule, x-axis = fraction of features (segments
    when ``segments`` / ``patch_size`` is given). ``step``: features per step (int) or a fraction
    of them (float in (0, 1]); default about 64 steps. ``score``: a reader of
    :func:`~fastattr.core.read_scores`. ``generator`` seeds ``baseline="uniform"``.
    ``compile=True`` runs the model through ``torch.compile`` on fixed-shape chunks. With
    ``curves=True`` returns ``(auc [B], curves [B, K], fractions [K])``.

    Example::

        >>> auc = fastattr.metrics.deletion(model, x, attr.sum(1), target=y)
    """
    return _ranked_metric(model, inputs, attributions, target, keep_top=False, baseline=baseline, step=step,
                          score=score, curves=curves, max_batch=max_batch, memory_budget=memory_budget,
                          space=_space(granularity, segments, patch_size, segment_score), generator=generator,
                          compile=compile)


@model_entry
def insertion(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
              baseline: Baseline = 0.0, step: Union[int, float, None] = None,
              score: str = "probability", curves: bool = False, max_batch: Optional[int] = None,
              memory_budget: Optional[int] = None, granularity: Optional[str] = None,
              segments: Optional[torch.Tensor] = None, patch_size=None, segment_score: str = "sum",
              generator=None, compile: Union[bool, dict] = False):
    """Insertion AUC per example: restore the most important features first (higher is better).

    ``x̃_k = baseline`` with the top ``n_k`` features taken from x (``baseline="blur"`` gives the
    RISE paper's blurred start); same arguments, curve and area conventions as :func:`deletion`.

    Example::

        >>> auc = fastattr.metrics.insertion(model, x, attr.sum(1), target=y, baseline="blur", step=0.02)
    """
    return _ranked_metric(model, inputs, attributions, target, keep_top=True, baseline=baseline, step=step,
                          score=score, curves=curves, max_batch=max_batch, memory_budget=memory_budget,
                          space=_space(granularity, segments, patch_size, segment_score), generator=generator,
                          compile=compile)


def _removal(model, inputs, attributions, target, *, most, fractions, baseline, score, curves, max_batch,
             memory_budget, space, generator, compile):
    check_scalar_reader(score)
    check_flag(curves, "curves")
    feats, t, logits = ranked_setup(model, inputs, attributions, target, **space, max_batch=max_batch,
                                    memory_budget=memory_budget)
    n = check_fractions(fractions, feats.n)
    # MoRF removes the top n (deletion counts n); LeRF removes the last n of the same ranking, i.e.
    # keeps the top d − n (insertion counts d − n). The clean score is count 0 / count d.
    clean = 0 if most else feats.n
    at = n if most else [feats.n - k for k in n]
    union = sorted({clean, *at})
    curve = ranked_scores(model, inputs, feats, t, torch.tensor(union), keep_top=not most, reader=score,
                          baseline=make_baseline(inputs, baseline, generator=generator), compile=compile,
                          max_batch=max_batch, memory_budget=memory_budget, known={clean: logits})
    drops = curve[:, columns(union, [clean])] - curve[:, columns(union, at)]
    value = drops.mean(1)
    return (value, drops, torch.tensor([float(p) for p in fractions])) if curves else value


@model_entry
def morf(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
         fractions: Sequence[float] = MORF_FRACTIONS, baseline: Baseline = 0.0, score: str = "probability",
         curves: bool = False, max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
         granularity: Optional[str] = None, segments: Optional[torch.Tensor] = None, patch_size=None,
         segment_score: str = "sum", generator=None, compile: Union[bool, dict] = False):
    """MoRF (most relevant first, ROAD-style; SPEC §3.2): the average drop of the target score
    ``mean_p [f_t(x) − f_t(x without its top ⌈p·d⌋ features)]`` over the ``fractions`` p (default
    10 %, …, 90 %); removed features take the ``baseline``. Higher is better. With ``curves=True``
    returns ``(value [B], drops [B, P], fractions [P])``. Other arguments as :func:`deletion`.

    Example::

        >>> fastattr.metrics.morf(model, x, attr, y, fractions=[0.1, 0.5])
    """
    return _removal(model, inputs, attributions, target, most=True, fractions=fractions, baseline=baseline,
                    score=score, curves=curves, max_batch=max_batch, memory_budget=memory_budget,
                    space=_space(granularity, segments, patch_size, segment_score), generator=generator,
                    compile=compile)


@model_entry
def lerf(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
         fractions: Sequence[float] = MORF_FRACTIONS, baseline: Baseline = 0.0, score: str = "probability",
         curves: bool = False, max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
         granularity: Optional[str] = None, segments: Optional[torch.Tensor] = None, patch_size=None,
         segment_score: str = "sum", generator=None, compile: Union[bool, dict] = False):
    """LeRF (least relevant first, ROAD-style; SPEC §3.2): as :func:`morf` but removing the bottom
    ``⌈p·d⌋`` features — **convention:** the last ones of the same ranking (among equal scores the
    higher feature index goes first), so LeRF shares the insertion pass. Lower is better.

    Example::

        >>> fastattr.metrics.lerf(model, x, attr, y)
    """
    return _removal(model, inputs, attributions, target, most=False, fractions=fractions, baseline=baseline,
                    score=score, curves=curves, max_batch=max_batch, memory_budget=memory_budget,
                    space=_space(granularity, segments, patch_size, segment_score), generator=generator,
                    compile=compile)


def _segment_pass(model, inputs, attributions, target, *, reader, baseline, max_batch, memory_budget, space,
                  generator, compile):
    feats, t, clean = ranked_setup(model, inputs, attributions, target, **space, max_batch=max_batch,
                                   memory_budget=memory_budget)
    counts = torch.arange(1, feats.n + 1)
    out = ranked_scores(model, inputs, feats, t, counts, keep_top=False, reader=reader, compile=compile,
                        baseline=make_baseline(inputs, baseline, generator=generator),
                        max_batch=max_batch, memory_budget=memory_budget)
    return out, t, counts, clean


@model_entry
def mdrs(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
         baseline: Baseline = 0.0, max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
         granularity: Optional[str] = None, segments: Optional[torch.Tensor] = None, patch_size=None,
         segment_score: str = "sum", generator=None, compile: Union[bool, dict] = False) -> torch.Tensor:
    """Minimal Discriminative Region Size (SEA-NN Eq. 3, greedy as in the paper; lower is better).

    Segments are set to ``baseline`` (0) one at a time in decreasing attribution order (segment
    score = ``segment_score`` of the map inside it); MDRS is the smallest k with
    ``argmax f(x̃_k) ≠ argmax f(x)``: the prediction flips, whatever class ``target`` names (the
    attribution may explain another class; SEA-NN Eq. 3, SPEC §3.2). **Convention:** counted in
    segments (features when no ``segments`` / ``patch_size`` is given); k = G, the number of
    segments, when the prediction never flips. Returns float ``[B]``.

    Example::

        >>> fastattr.metrics.mdrs(model, x, attr, patch_size=4)
    """
    logits, _, _, clean = _segment_pass(model, inputs, attributions, target, reader="logits",
                                        baseline=baseline, max_batch=max_batch, memory_budget=memory_budget,
                                        generator=generator, compile=compile,
                                        space=_space(granularity, segments, patch_size, segment_score))
    return mdrs_from_logits(logits, clean)


@model_entry
def aupc(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
         baseline: Baseline = 0.0, score: str = "probability", curves: bool = False,
         max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
         granularity: Optional[str] = None, segments: Optional[torch.Tensor] = None, patch_size=None,
         segment_score: str = "sum",
         generator=None, compile: Union[bool, dict] = False):
    """Area under the perturbation curve (SEA-NN; SPEC §3.2; lower is better):
    ``AUPC = Σ_{k=1}^{G} softmax(f(x̃_k))_t`` with ``x̃_k`` = x after setting the top k segments to
    ``baseline`` (0), one segment per step — unnormalised, unit step, the clean score not included.
    ``t`` = the predicted class by default. With ``curves=True`` returns
    ``(aupc [B], curve [B, G], fraction of segments removed [G])`` (k / G, as in
    :func:`fastattr.evaluate`). Other arguments as :func:`mdrs`.

    Example::

        >>> fastattr.metrics.aupc(model, x, attr, segments=slic_ids)
    """
    check_flag(curves, "curves")
    curve, _, counts, _ = _segment_pass(model, inputs, attributions, target, reader=check_scalar_reader(score),
                                        baseline=baseline, max_batch=max_batch, memory_budget=memory_budget,
                                        space=_space(granularity, segments, patch_size, segment_score),
                                        generator=generator, compile=compile)
    value = curve.sum(1)
    return (value, curve, counts.float() / counts.numel()) if curves else value
