"""Triton kernel of SOP GroupSelect (SPEC §6; :mod:`fastattr.ops.group_select`): one program per example and
block of classes gathers the features of the example's groups, accumulates the partial logits and the
scores over tiles of the feature width, takes the sparsemax of each class's scores over the groups
(Michelot's iteration in registers, as :mod:`fastattr.triton.sparsemax`) and the logits. float64 in float64,
the rest in float32.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .sparsemax import _nan_to_inf, _threshold, _to_compute

_TILE_ELEMENTS = 8192  # groups × classes × feature tile held per step


@triton.jit
def _select_kernel(z_ptr, slot_ptr, w_ptr, b_ptr, q_ptr, p_ptr, y_ptr, l_ptr, G, C, H, HAS_BIAS: tl.constexpr,
                   IS_F64: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    g = tl.arange(0, BLOCK_G)
    rows = tl.load(slot_ptr + b * G + g, mask=g < G, other=0)
    yt = _to_compute(tl.zeros([BLOCK_C, BLOCK_G], tl.float32), IS_F64)   # y transposed: [class, group]
    s = _to_compute(tl.zeros([BLOCK_C, BLOCK_G], tl.float32), IS_F64)
    for h0 in range(0, H, BLOCK_H):
        k = h0 + tl.arange(0, BLOCK_H)
        zt = _to_compute(tl.load(z_ptr + rows[:, None] * H + k[None, :], mask=(g < G)[:, None] & (k < H)[None, :],
                                 other=0.0), IS_F64)
        cmask = (c < C)[:, None] & (k < H)[None, :]
        wt = _to_compute(tl.load(w_ptr + c[:, None] * H + k[None, :], mask=cmask, other=0.0), IS_F64)
        qt = _to_compute(tl.load(q_ptr + c[:, None] * H + k[None, :], mask=cmask, other=0.0), IS_F64)
        yt += tl.sum(wt[:, None, :] * zt[None, :, :], axis=2)
        s += tl.sum(qt[:, None, :] * zt[None, :, :], axis=2)
    if HAS_BIAS:
        yt += _to_compute(tl.load(b_ptr + c, mask=c < C, other=0.0), IS_F64)[:, None]
    s = tl.where((g < G)[None, :], s, float("-inf"))
    m = tl.max(_nan_to_inf(s), axis=1)
    bad = (m == float("inf")) | (m == float("-inf"))
    m = tl.where(bad, 0.0, m)
    v = tl.where(bad[:, None] & (g < G)[None, :], 0.0, s - m[:, None])
    tau = _threshold(v, m, IS_F64)
    p = tl.where(bad[:, None], float("nan"), tl.maximum(v - tau[:, None], 0.0))
    logits = tl.sum(tl.where((g < G)[None, :], p * yt, 0.0), axis=1)
    out = (c < C)[:, None] & (g < G)[None, :]
    tl.store(p_ptr + b * C * G + c[:, None] * G + g[None, :], p.to(p_ptr.dtype.element_ty), mask=out)
    tl.store(y_ptr + b * G * C + g[None, :] * C + c[:, None], yt.to(y_ptr.dtype.element_ty), mask=out)
    tl.store(l_ptr + b * C + c, logits.to(l_ptr.dtype.element_ty), mask=c < C)


def group_select(z: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(p [B, C, G], y [B, G, C], logits [B, C])`` of contiguous ``z [N, h]``, ``slot [B, G]`` (valid rows),
    ``weight`` / ``query [C, h]`` and ``bias [C]`` (or None), all in ``z``'s compute dtype."""
    b, g = slot.shape
    c, h = weight.shape
    block_g = triton.next_power_of_2(g)
    block_c = min(triton.next_power_of_2(c), 16)
    block_h = max(1, min(triton.next_power_of_2(h), _TILE_ELEMENTS // (block_g * block_c)))
    p = torch.empty((b, c, g), dtype=z.dtype, device=z.device)
    y = torch.empty((b, g, c), dtype=z.dtype, device=z.device)
    logits = torch.empty((b, c), dtype=z.dtype, device=z.device)
    _select_kernel[(b, triton.cdiv(c, block_c))](
        z, slot, weight, bias if bias is not None else weight, query, p, y, logits, g, c, h,
        HAS_BIAS=bias is not None, IS_F64=z.dtype == torch.float64, BLOCK_G=block_g, BLOCK_C=block_c, BLOCK_H=block_h)
    return p, y, logits
