"""Triton integrated-gradient path kernels (Sundararajan et al. 2017).

``path_interpolate``: ``out[s, b, :] = x'[b, :] + α_s (x[b, :] − x'[b, :])`` (shared ``x'``: row 0).
``path_accumulate``: ``out = (acc + Σ_s w_s g_s) ⊙ diff``; ``g`` is read in its own dtype and
upcast on chip (fp16/bf16 gradients never get an fp32 copy in memory).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._grid import row_block, row_blocks

_BLOCK = 1024


@triton.jit
def _interpolate_kernel(x_ptr, base_ptr, alpha_ptr, out_ptr, batch, d, per_row, SHARED: tl.constexpr,
                        COMPUTE_F64: tl.constexpr, BLOCK: tl.constexpr):
    row, _, offs = row_block(per_row, BLOCK)
    mask = offs < d
    s = row // batch
    b = row % batch
    ctype = tl.float64 if COMPUTE_F64 else tl.float32
    alpha = tl.load(alpha_ptr + s).to(ctype)
    x = tl.load(x_ptr + b * d + offs, mask=mask).to(ctype)
    base_row = 0 if SHARED else b
    base = tl.load(base_ptr + base_row * d + offs, mask=mask).to(ctype)
    out = base + alpha * (x - base)
    tl.store(out_ptr + row * d + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _accumulate_kernel(acc_ptr, g_ptr, w_ptr, diff_ptr, out_ptr, steps, n, HAS_DIFF: tl.constexpr,
                       BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    total = tl.load(acc_ptr + offs, mask=mask, other=0.0)
    g_row = g_ptr + offs  # advanced one row of n per step: pointer arithmetic, no 32-bit s·n product
    for s in range(0, steps):
        w = tl.load(w_ptr + s)
        g = tl.load(g_row, mask=mask, other=0.0)
        total += w * g.to(total.dtype)
        g_row += n
    if HAS_DIFF:
        total = total * tl.load(diff_ptr + offs, mask=mask, other=0.0).to(total.dtype)
    tl.store(out_ptr + offs, total, mask=mask)


def path_interpolate(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """x ``[B, D]``, baseline ``[B or 1, D]``, alphas ``[S]``, all contiguous → ``[S·B, D]``."""
    steps, batch, d = alphas.shape[0], x.shape[0], x.shape[1]
    out = torch.empty((steps * batch, d), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    grid, per_row = row_blocks(steps * batch, d, _BLOCK)
    _interpolate_kernel[grid](x, baseline, alphas, out, batch, d, per_row, SHARED=baseline.shape[0] == 1 and batch > 1,
                              COMPUTE_F64=x.dtype == torch.float64, BLOCK=_BLOCK, num_warps=4)
    return out


def path_accumulate(acc: torch.Tensor, grads: torch.Tensor, weights: torch.Tensor,
                    diff: Optional[torch.Tensor]) -> torch.Tensor:
    """acc ``[B, D]`` (fp32/fp64), grads ``[S, B, D]`` (any float dtype), weights ``[S]`` and diff
    ``[B, D]`` in acc's dtype, all contiguous → ``[B, D]``."""
    out = torch.empty_like(acc)
    n = acc.numel()
    if n == 0:
        return out
    _accumulate_kernel[(triton.cdiv(n, _BLOCK),)](acc, grads, weights, diff if diff is not None else acc, out,
                                                  grads.shape[0], n, HAS_DIFF=diff is not None, BLOCK=_BLOCK,
                                                  num_warps=4)
    return out
