"""Triton ``perturb_by_rank`` (SPEC §3.1): ``out[k·B + b, c, i] = x[b, c, i]`` when
``(rank[b, i] < n_k) == insert``, else ``x'[b, c, i]``; one program per (row, channel, block)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._grid import row_block, row_blocks

_BLOCK = 1024


@triton.jit
def _perturb_kernel(x_ptr, base_ptr, rank_ptr, counts_ptr, out_ptr, batch, channels, features, per_row,
                    INSERT: tl.constexpr, BLOCK: tl.constexpr):
    plane, _, offs = row_block(per_row, BLOCK)   # plane = row · channels + c
    row = plane // channels
    c = plane - row * channels
    mask = offs < features
    k = row // batch
    b = row % batch
    count = tl.load(counts_ptr + k)
    rank = tl.load(rank_ptr + b * features + offs, mask=mask, other=0)
    top = rank < count
    from_x = top if INSERT else rank >= count
    src = (b * channels + c) * features + offs
    x = tl.load(x_ptr + src, mask=mask & from_x, other=0.0)
    base = tl.load(base_ptr + src, mask=mask & (~from_x), other=0.0)
    tl.store(out_ptr + (row * channels + c) * features + offs, tl.where(from_x, x, base), mask=mask)


def perturb_by_rank(x: torch.Tensor, baseline: torch.Tensor, rank: torch.Tensor, counts: torch.Tensor,
                    insert: bool) -> torch.Tensor:
    """x, baseline ``[B, C, F]``, rank ``[B, F]`` int64, counts ``[K]`` int64, contiguous → ``[K·B, C, F]``."""
    batch, channels, features = x.shape
    steps = counts.shape[0]
    out = torch.empty((steps * batch, channels, features), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    grid, per_row = row_blocks(steps * batch * channels, features, _BLOCK)
    _perturb_kernel[grid](x, baseline, rank, counts, out, batch, channels, features, per_row, INSERT=insert,
                          BLOCK=_BLOCK, num_warps=4)
    return out
