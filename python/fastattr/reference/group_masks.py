"""Reference of SOP GroupGen's group selection (You et al., "Sum-of-Parts Models", §3 and App. B;
SPEC §6): from the patch-attention logits ``[B, R, n]`` (``R`` candidate rows over ``n`` patches), the
``G`` rows of largest sparsemax peak ``max_j sparsemax(z_r)_j`` (then largest max logit, then lowest
index), each binarised to its ``K`` largest logits (ties by index), and for each kept group the first
kept group with the same mask. Sorting with stable torch sorts, in the compute dtype.
"""
from __future__ import annotations

import torch

from ..numerics import compute_dtype
from .sparsemax import sparsemax


def first_equal_group(masks: torch.Tensor) -> torch.Tensor:
    """For bool group masks ``[B, G, ...]``, the index of the first group of the same input with the same
    mask, ``[B, G]`` (a group's own index when no group before it holds the same features): the groups
    whose copies ``S_i ⊙ x`` are one input for the backbone."""
    flat = masks.reshape(masks.shape[0], masks.shape[1], -1)
    return (flat.unsqueeze(2) == flat.unsqueeze(1)).all(-1).to(torch.uint8).argmax(-1)


def group_masks(logits: torch.Tensor, n_groups: int, kept: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(masks [B, G, n] bool, rows [B, G] int64, first [B, G] int64)`` of finite ``logits [B, R, n]``:
    the kept rows best first, their top-``kept`` masks and :func:`first_equal_group` of the masks."""
    z = logits.to(compute_dtype(logits.dtype))
    by_max = torch.sort(z.amax(-1), dim=1, descending=True, stable=True).indices
    peak = sparsemax(z, -1).amax(-1).gather(1, by_max)
    rows = by_max.gather(1, torch.sort(peak, dim=1, descending=True, stable=True).indices)[:, :n_groups].contiguous()
    chosen = z.gather(1, rows.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
    top = torch.sort(chosen, dim=-1, descending=True, stable=True).indices[..., :kept]
    masks = torch.zeros(chosen.shape, dtype=torch.bool, device=z.device).scatter_(-1, top, True)
    return masks, rows, first_equal_group(masks)
