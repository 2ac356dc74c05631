"""Triton kernel of ``max_pool2d`` with indices (:mod:`fastattr.reference.max_pool`): one program per plane
and block of its ``OH·OW`` outputs scans each output's window row-major, taking a tap that is in range and
``> value`` or NaN, as torch's CPU and CUDA kernels do."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._grid import row_block, row_blocks

_BLOCK = 256


@triton.jit
def _pool_kernel(x_ptr, out_ptr, idx_ptr, H, W, OH, OW, sH, sW, pH, pW, dH, dW, per_row, KH: tl.constexpr,
                 KW: tl.constexpr, BLOCK: tl.constexpr):
    plane, _, j = row_block(per_row, BLOCK)
    inside = j < OH * OW
    oh, ow = j // OW, j % OW
    h0, w0 = oh * sH - pH, ow * sW - pW
    first_h = tl.where(h0 < 0, h0 + ((-h0 + dH - 1) // dH) * dH, h0)
    first_w = tl.where(w0 < 0, w0 + ((-w0 + dW - 1) // dW) * dW, w0)
    value = tl.full((BLOCK,), float("-inf"), x_ptr.dtype.element_ty)
    index = first_h * W + first_w
    base = x_ptr + plane * H * W
    for a in tl.static_range(KH):
        ih = h0 + a * dH
        for b in tl.static_range(KW):
            iw = w0 + b * dW
            tap = inside & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(base + ih * W + iw, mask=tap, other=float("-inf"))
            take = tap & ((v > value) | (v != v))
            value = tl.where(take, v, value)
            index = tl.where(take, ih * W + iw, index)
    tl.store(out_ptr + plane * OH * OW + j, value, mask=inside)
    tl.store(idx_ptr + plane * OH * OW + j, index, mask=inside)


def max_pool2d(x: torch.Tensor, out_hw: tuple[int, int], kernel_size, stride, padding, dilation
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, indices)`` ``[..., OH, OW]`` of contiguous float32 / float64 ``x [..., H, W]``."""
    h, w = x.shape[-2:]
    oh, ow = out_hw
    planes = x.numel() // (h * w) if h * w else 0
    out = torch.empty(x.shape[:-2] + (oh, ow), dtype=x.dtype, device=x.device)
    idx = torch.empty(out.shape, dtype=torch.int64, device=x.device)
    if out.numel():
        grid, per_row = row_blocks(planes, oh * ow, _BLOCK)
        _pool_kernel[grid](x, out, idx, h, w, oh, ow, stride[0], stride[1], padding[0], padding[1], dilation[0],
                           dilation[1], per_row, KH=kernel_size[0], KW=kernel_size[1], BLOCK=_BLOCK)
    return out, idx
