"""ROAD, RemOve And Debias (SPEC §11; Rong et al. 2022, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods", ICML; Quantus 0.6 ``ROAD``): remove the most (MoRF) or least
(LeRF) relevant ``p %`` of an image's features by **noisy linear imputation**
(:func:`fastattr.ops.noisy_linear_impute`: each removed pixel the weighted mean of its 8
neighbours plus ``N(0, σ²)`` noise, so the removal leaks no shape of the mask) and read the model
on what is left::

    ROAD_p(x) = s_t(x̃_p),   x̃_p = impute(x, top-or-bottom ⌊d·p/100⌋ features of a)

``s`` the accuracy ``1[argmax f(x̃) = t]`` (Rong et al., Quantus) or a score (probability, logit…).
The per-example value is the mean over the levels ``p``: lower is better for MoRF (relevant pixels
removed first should hurt fast), higher for LeRF. All levels and examples are imputed in batches
(one op call per chunk) and read in the same chunks.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence

import torch

from ..core import (READERS, Target, check_attributions, check_flag, check_inputs, check_number, chunk_size,
                    forward_chunks, make_generator, model_entry, rank_features, read_scores, resolve_target)
from ..ops import noisy_linear_impute

__all__ = ["ROAD_PERCENTAGES", "road", "road_counts", "road_scores"]

#: Rong et al.'s levels (Quantus's default is 1, 3, …, 99)
ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ORDERS = ("morf", "lerf")


def road_counts(percentages: Sequence[float], n_features: int) -> list[int]:
    """Features removed at each level: ``int(d · p / 100)``, Quantus's rounding; a clear error unless
    every ``p`` is a number in (0, 100)."""
    if isinstance(percentages, (str, bytes)) or not isinstance(percentages, Sequence) or not len(percentages):
        raise ValueError(f"percentages must be a non-empty list of numbers in (0, 100), got {percentages!r}")
    for p in percentages:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p < 100:
            raise ValueError(f"percentages must be numbers in (0, 100), got {p!r} in {list(percentages)!r}")
    return [int(n_features * p / 100) for p in percentages]


def _read(logits: torch.Tensor, t: torch.Tensor, score: str) -> torch.Tensor:
    if score == "accuracy":
        return (logits.reshape(logits.shape[0], -1).argmax(1) == t).double()
    return read_scores(logits, t, score).double()


def road_scores(model: Callable, inputs: torch.Tensor, rank: torch.Tensor, counts: Sequence[int],
                level_noise: Callable[[int], torch.Tensor], read: Callable, target: torch.Tensor, *, chunk: int,
                tol: Optional[float] = None) -> torch.Tensor:
    """``[B, P]``: ``read(f(x̃), t)`` for every example and level, ``x̃`` the inputs with the features of
    ``rank < counts[l]`` imputed (``rank`` ``[B, H, W]`` per pixel or ``[B, C, H, W]`` per element, 0 =
    removed first) plus ``level_noise(l)`` ``[B, C, H, W]`` (called once per level, in level order).
    ``chunk`` (level, example) pairs, level-major, are imputed by one op call and read by one forward."""
    batch, levels = inputs.shape[0], len(counts)
    total = levels * batch
    out = torch.empty(batch, levels, dtype=torch.float64, device=inputs.device)
    drawn: dict[int, torch.Tensor] = {}
    solver = {} if tol is None else {"tol": tol}
    size = torch.tensor(counts, device=inputs.device)
    for start in range(0, total, chunk):
        pairs = torch.arange(start, min(start + chunk, total), device=inputs.device)
        level, example = pairs // batch, pairs % batch
        first, last = int(level[0]), int(level[-1])
        drawn = {k: v for k, v in drawn.items() if k >= first}
        for lv in range(first, last + 1):
            if lv not in drawn:
                drawn[lv] = level_noise(lv).to(inputs.device)
        removed = rank[example] < size[level].view((-1,) + (1,) * (rank.dim() - 1))
        eps = torch.stack([drawn[lv][e] for lv, e in zip(level.tolist(), example.tolist())])
        imputed = noisy_linear_impute(inputs[example], removed, noise=eps, **solver)
        out[example, level] = read(forward_chunks(model, imputed, max_batch=chunk), target[example]).to(out)
    return out


@model_entry
def road(model: Callable, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
         percentages: Sequence[float] = ROAD_PERCENTAGES, order: str = "morf", score: str = "accuracy",
         noise: float = 0.01, generator=0, curves: bool = False, tol: Optional[float] = None,
         max_batch: Optional[int] = None, memory_budget: Optional[int] = None):
    """ROAD (Rong et al. 2022) per example: the mean over ``percentages`` of the score after noisy
    linear imputation of the ``order`` = ``"morf"`` (most relevant first; lower is better) or
    ``"lerf"`` (least relevant first; higher is better) ``⌊d·p/100⌋`` features.

    Args:
        inputs: images ``[B, C, H, W]``.
        attributions: ``[B, C, H, W]`` (each element ranked, each channel imputed with its own mask)
            or channel-reduced ``[B, H, W]`` / ``[B, 1, H, W]`` (pixels ranked and removed in every
            channel — this works on RGB inputs, where Quantus 0.6's ROAD raises an IndexError).
            Ties are ranked by position (stable sort).
        percentages: levels ``p`` in (0, 100) (default 10, 20, …, 90, Rong et al.'s).
        score: ``"accuracy"`` (``1[argmax f = t]``, Rong et al. and Quantus) or a reader of
            ``fastattr.core.READERS`` (``"probability"``, ``"logit"``, …).
        noise: ``σ`` of the imputation noise (Rong et al.'s and Quantus's 0.01).
        generator: torch.Generator or int seed; one ``[B, C, H, W]`` draw per level, in level order,
            so the result does not depend on the chunk size.
        curves: also return the scores at every level and the levels.
        tol: the imputation solver's tolerance (default: the op's).
        max_batch / memory_budget: imputed images per op call and per forward.

    Returns ``[B]`` float64, or ``(values [B], scores [B, P], percentages [P])`` with ``curves=True``.
    Example::

        >>> fastattr.metrics.road(model, x, fastattr.saliency(model, x, y), y, order="morf")
    """
    check_inputs(inputs)
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be images [B, C, H, W] (ROAD imputes pixels from their 8 neighbours), "
                         f"got shape {tuple(inputs.shape)}")
    if order not in ORDERS:
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    if score != "accuracy" and score not in READERS:
        raise ValueError(f"score must be 'accuracy' or one of {READERS}, got {score!r}")
    check_flag(curves, "curves")
    sigma = check_number(noise, "noise")
    feats = check_attributions(inputs, attributions).detach()
    counts = road_counts(percentages, feats.shape[1])
    batch, channels, height, width = inputs.shape
    per_pixel = feats.shape[1] == height * width
    rank = rank_features(feats.double() if order == "morf" else -feats.double())
    mask_shape = (batch, height, width) if per_pixel else (batch, channels, height, width)
    rank = rank.reshape(mask_shape)
    t = resolve_target(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    gen = make_generator(generator)

    def level_noise(level: int) -> torch.Tensor:
        if sigma == 0:
            return torch.zeros(inputs.shape, dtype=inputs.dtype)
        return sigma * torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype)

    chunk = chunk_size(inputs, len(counts) * batch, max_batch, memory_budget)
    out = road_scores(model, inputs, rank, counts, level_noise, lambda logits, tt: _read(logits, tt, score), t,
                      chunk=chunk, tol=tol)
    values = out.mean(1)
    if curves:
        return values, out, torch.tensor([float(p) for p in percentages])
    return values
