"""The perturbation engine (SPEC §3.1): the model on many copies ``x̃ = m ⊙ x + (1 − m) ⊙ x'``.

This version covers ranking schedules (insertion / deletion): features are ranked by
attribution (stable sort, descending, ties broken by feature index), and step k keeps or
removes the top ``n_k`` of them; the ``perturb_by_rank`` op writes each chunk of perturbed inputs. A feature is one element of the attribution map; a map with
the channel axis reduced (``[B, H, W]`` for ``[B, C, H, W]`` inputs) makes one feature of all
channels of a pixel. Chunks hold at most ``max_batch`` perturbed inputs; results do not depend
on the chunk size.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from ..attribution._common import select
from ..ops.perturb_by_rank import perturb_by_rank

READERS = ("probability", "logit", "log_probability")


def check_attributions(inputs: torch.Tensor, attributions: torch.Tensor) -> torch.Tensor:
    """Validates an attribution map against ``inputs``; returns it as ``[B, d]`` features."""
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    shape, ishape = tuple(attributions.shape), tuple(inputs.shape)
    channel_reduced = inputs.dim() >= 3 and shape == ishape[:1] + ishape[2:]
    if shape != ishape and not channel_reduced:
        raise ValueError(f"attributions of shape {shape} match neither inputs {ishape} nor the channel-reduced "
                         f"map {ishape[:1] + ishape[2:]}")
    if not torch.isfinite(attributions).all():
        raise ValueError("attributions contain NaN or Inf")
    return attributions.reshape(shape[0], -1)


def rank_features(scores: torch.Tensor) -> torch.Tensor:
    """``rank[b, i]`` = position of feature i when sorted by score, highest first (stable: ties by index)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return rank


def make_baseline(inputs: torch.Tensor, baseline: Union[float, str, torch.Tensor], blur_sigma: float = 1.0) -> torch.Tensor:
    """A constant, ``"mean"`` (per-example, per-channel mean), ``"blur"`` (Gaussian blur of x), or a tensor."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(inputs), inputs.shape)
        except RuntimeError:
            raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to inputs "
                             f"{tuple(inputs.shape)}") from None
    if baseline == "mean":
        dims = tuple(range(2, inputs.dim()))
        return inputs.mean(dims, keepdim=True).expand_as(inputs) if dims else inputs.mean(1, keepdim=True).expand_as(inputs)
    if baseline == "blur":
        if inputs.dim() != 4:
            raise ValueError("baseline='blur' needs image inputs [B, C, H, W]")
        radius = max(1, int(3 * blur_sigma))
        t = torch.arange(-radius, radius + 1, dtype=inputs.dtype, device=inputs.device)
        k1 = torch.exp(-0.5 * (t / blur_sigma) ** 2)
        k1 = k1 / k1.sum()
        c = inputs.shape[1]
        padded = F.pad(inputs, (radius,) * 4, mode="replicate")
        out = F.conv2d(padded, k1.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(out, k1.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    raise ValueError(f"baseline must be a number, 'mean', 'blur' or a tensor, got {baseline!r}")


def read_scores(output: torch.Tensor, target: torch.Tensor, reader: str) -> torch.Tensor:
    """The score of the target read off the model output (SPEC §3.1)."""
    if reader == "logit" or output.dim() == 1:
        return select(output, target)
    if reader == "probability":
        return select(output.softmax(-1), target)
    if reader == "log_probability":
        return select(output.log_softmax(-1), target)
    raise ValueError(f"score must be one of {READERS}, got {reader!r}")


@torch.no_grad()
def ranked_curve(model: Callable, inputs: torch.Tensor, baseline: torch.Tensor, rank: torch.Tensor,
                 counts: torch.Tensor, target: torch.Tensor, *, keep_top: bool, reader: str,
                 chunk: int) -> torch.Tensor:
    """Scores ``[B, K]`` of the model on ``x̃_k``: the top ``counts[k]`` ranked features come from
    ``inputs`` (``keep_top=True``, insertion) or from ``baseline`` (``keep_top=False``, deletion).

    Each chunk of (example block × steps) is written by :func:`fastattr.ops.perturb_by_rank` in
    one pass straight into the model's input batch."""
    batch, n_points = inputs.shape[0], counts.numel()
    out = torch.empty(batch, n_points, dtype=torch.float32, device=inputs.device)
    block = min(batch, chunk)
    per = max(1, chunk // block)
    for e0 in range(0, batch, block):
        e1 = min(batch, e0 + block)
        for k0 in range(0, n_points, per):
            k1 = min(n_points, k0 + per)
            perturbed = perturb_by_rank(inputs[e0:e1], baseline[e0:e1], rank[e0:e1], counts[k0:k1], insert=keep_top)
            scores = read_scores(model(perturbed), target[e0:e1].repeat(k1 - k0), reader)
            out[e0:e1, k0:k1] = scores.float().view(k1 - k0, e1 - e0).T
    return out


def step_counts(n_features: int, step: Union[int, float, None]) -> torch.Tensor:
    """Numbers of perturbed features at each point of a curve: 0, s, 2s, …, d (last step may be short).

    ``step`` is a feature count (int ≥ 1), a fraction of the features in (0, 1], or None
    (about 64 steps)."""
    if step is None:
        size = max(1, -(-n_features // 64))
    elif isinstance(step, bool):
        raise TypeError("step must be an int, a float fraction or None")
    elif isinstance(step, int):
        if step < 1:
            raise ValueError(f"step must be >= 1 feature, got {step}")
        if step > n_features:
            raise ValueError(f"step ({step}) is larger than the number of features ({n_features})")
        size = step
    elif isinstance(step, float):
        if not 0.0 < step <= 1.0:
            raise ValueError(f"step as a fraction must be in (0, 1], got {step}")
        size = max(1, round(step * n_features))
    else:
        raise TypeError(f"step must be an int, a float fraction or None, got {type(step).__name__}")
    counts = list(range(0, n_features, size)) + [n_features]
    return torch.tensor(counts)

