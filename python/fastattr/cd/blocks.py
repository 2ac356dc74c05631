"""CD over image blocks as an attribution map (the report's ``cd_blocks`` method).

The image is tiled into ``block × block`` squares (shared across channels); all tiles go through
CD as one batch of masks, and each pixel gets its tile's CD score of the target spread evenly over
the tile's elements, so the map sums to ``Σ_tiles β_tile`` (Singh et al. 2019 use such tiles as ACD's
units).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..core import Target, model_entry, patch_segments, resolve_target
from .core import accepts_backend, contextual_decomposition

__all__ = ["block_masks", "cd_blocks"]


def block_masks(height: int, width: int, block: int) -> Tensor:
    """``[K, 1, H, W]`` binary masks, one per tile (row-major; edge tiles are cropped)."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    tile = patch_segments((height, width), block)
    return (tile[None] == torch.arange(int(tile.max()) + 1)[:, None, None]).float()[:, None]


@accepts_backend
@model_entry
def cd_blocks(model: nn.Module, inputs: Tensor, target: Target = None, *, block: Optional[int] = None,
              max_batch: Optional[int] = None) -> Tensor:
    """Attribution map ``[B, C, H, W]`` from CD scores of ``block × block``-pixel tiles (default side: a
    quarter of the image's shorter side, e.g. 2-pixel tiles, 16 of them, on 8×8 digits).
    Example: ``a = cd_blocks(model, x, y, block=2)``."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        raise ValueError(f"inputs must be floating images [B, C, H, W], got "
                         f"{tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__}")
    height, width = inputs.shape[-2:]
    block = max(1, min(height, width) // 4) if block is None else block
    masks = block_masks(height, width, block).to(device=inputs.device, dtype=inputs.dtype)
    t = resolve_target(model, inputs, target)
    beta, _ = contextual_decomposition(model, inputs, masks, target=t, max_batch=max_batch)
    sizes = masks.sum((1, 2, 3)) * inputs.shape[1]
    per_element = beta / sizes
    return torch.einsum("bk,khw->bhw", per_element, masks[:, 0])[:, None].expand_as(inputs).contiguous()
