"""Triton kernels of SOP GroupGen's patch attention logits (SPEC §6; :class:`fastattr.models.sop.SumOfParts`):

    e[b, p]               = patches[b, p] @ proj_weightᵀ + proj_bias + position[p]     [B, P, d]
    logits[b, j·P + p, q] = e[b, p] @ bilinear[j] @ e[b, q]                             [B, h·P, P]

Three launches: the embeddings ``e`` (blocks of rows, the whole width, over tiles of the patch features);
their products ``f[b, j, p] = e[b, p] @ bilinear[j]`` (blocks of rows and one head, over tiles of the width);
per example, head and block of query patches, the logits ``f[b, j, p] · e[b, q]`` over blocks of key patches
and tiles of the width. Every product is a broadcast sum over a bounded tile (``_TILE_ELEMENTS``: small on a
GPU, larger in the interpreter). float64 in float64, float32 in float32.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._grid import row_block, row_blocks
from .sparsemax import _to_compute

# Per device type: bounded tiles on a GPU (registers, no spills on sm_90 at d = 128), larger ones in the
# interpreter (fewer steps to interpret).
_TILE_ELEMENTS = {"cuda": {4: 8192, 8: 4096}, "cpu": {4: 65536, 8: 65536}}  # per step, by element size (bytes)
_BLOCK_ROWS = {"cuda": 32, "cpu": 128}  # embedding / projection: rows of e per program
_BLOCK_QUERY = {"cuda": 16, "cpu": 64}  # logits: query patches per program
_BLOCK_KEY = {"cuda": 32, "cpu": 64}    # logits: key patches per step


@triton.jit
def _embed_kernel(x_ptr, w_ptr, b_ptr, pos_ptr, e_ptr, R, P, D, d, HAS_BIAS: tl.constexpr, IS_F64: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr):
    """``BLOCK_R`` rows of ``e = x @ wᵀ + bias + position`` per program, over tiles of the features."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    l = tl.arange(0, BLOCK_L)
    acc = _to_compute(tl.zeros([BLOCK_R, BLOCK_L], tl.float32), IS_F64)
    for k0 in range(0, D, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = _to_compute(tl.load(x_ptr + r[:, None] * D + k[None, :], mask=(r < R)[:, None] & (k < D)[None, :],
                                other=0.0), IS_F64)
        wt = _to_compute(tl.load(w_ptr + l[None, :] * D + k[:, None], mask=(k < D)[:, None] & (l < d)[None, :],
                                 other=0.0), IS_F64)
        acc += tl.sum(x[:, :, None] * wt[None, :, :], axis=1)
    if HAS_BIAS:
        acc += _to_compute(tl.load(b_ptr + l, mask=l < d, other=0.0), IS_F64)[None, :]
    out = (r < R)[:, None] & (l < d)[None, :]
    acc += _to_compute(tl.load(pos_ptr + (r % P)[:, None] * d + l[None, :], mask=out, other=0.0), IS_F64)
    tl.store(e_ptr + r[:, None] * d + l[None, :], acc.to(e_ptr.dtype.element_ty), mask=out)


@triton.jit
def _project_kernel(e_ptr, m_ptr, f_ptr, R, P, d, H, IS_F64: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr):
    """``BLOCK_R`` rows of ``e`` and one head ``j`` per program: ``f[b, j, p] = e[b, p] @ bilinear[j]``."""
    pid = tl.program_id(0).to(tl.int64)
    j = pid % H
    r = (pid // H) * BLOCK_R + tl.arange(0, BLOCK_R)
    l = tl.arange(0, BLOCK_L)
    acc = _to_compute(tl.zeros([BLOCK_R, BLOCK_L], tl.float32), IS_F64)
    for k0 in range(0, d, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = _to_compute(tl.load(e_ptr + r[:, None] * d + k[None, :], mask=(r < R)[:, None] & (k < d)[None, :],
                                other=0.0), IS_F64)
        m = _to_compute(tl.load(m_ptr + j * d * d + k[:, None] * d + l[None, :],
                                mask=(k < d)[:, None] & (l < d)[None, :], other=0.0), IS_F64)
        acc += tl.sum(x[:, :, None] * m[None, :, :], axis=1)
    b = r // P
    rows = (b * H + j) * P + (r - b * P)
    tl.store(f_ptr + rows[:, None] * d + l[None, :], acc.to(f_ptr.dtype.element_ty),
             mask=(r < R)[:, None] & (l < d)[None, :])


@triton.jit
def _logits_kernel(f_ptr, e_ptr, out_ptr, P, d, H, per_row, IS_F64: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr):
    """Example ``b``, head ``j`` (row ``b·H + j``) and a block of query patches per program:
    ``f[b, j, p] · e[b, q]`` over blocks of key patches ``q`` and tiles of the width."""
    row, _, p = row_block(per_row, BLOCK_P)
    f_row = f_ptr + row * P * d
    e_row = e_ptr + (row // H) * P * d
    for q0 in range(0, P, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        acc = _to_compute(tl.zeros([BLOCK_P, BLOCK_Q], tl.float32), IS_F64)
        for l0 in range(0, d, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            fq = _to_compute(tl.load(f_row + p[:, None] * d + l[None, :], mask=(p < P)[:, None] & (l < d)[None, :],
                                     other=0.0), IS_F64)
            ek = _to_compute(tl.load(e_row + q[:, None] * d + l[None, :], mask=(q < P)[:, None] & (l < d)[None, :],
                                     other=0.0), IS_F64)
            acc += tl.sum(fq[:, None, :] * ek[None, :, :], axis=2)
        tl.store(out_ptr + row * P * P + p[:, None] * P + q[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=(p < P)[:, None] & (q < P)[None, :])


def group_logits(patches: torch.Tensor, proj_weight: torch.Tensor, proj_bias: Optional[torch.Tensor],
                 position: torch.Tensor, bilinear: torch.Tensor) -> torch.Tensor:
    """``logits [B, h·P, P]`` of contiguous ``patches [B, P, D]``, ``proj_weight [d, D]``, ``proj_bias [d]`` (or
    None), ``position [P, d]`` and ``bilinear [h, d, d]``, all float32 or all float64."""
    b, p, big_d = patches.shape
    h, d = bilinear.shape[0], proj_weight.shape[0]
    out = torch.empty((b, h * p, p), dtype=patches.dtype, device=patches.device)
    if b == 0:
        return out
    is_f64 = patches.dtype == torch.float64
    kind = patches.device.type if patches.device.type in _TILE_ELEMENTS else "cuda"
    tile = _TILE_ELEMENTS[kind][patches.element_size()]
    r = b * p
    block_l = triton.next_power_of_2(d)
    block_r = min(triton.next_power_of_2(r), _BLOCK_ROWS[kind])
    e = torch.empty((b, p, d), dtype=patches.dtype, device=patches.device)
    _embed_kernel[(triton.cdiv(r, block_r),)](
        patches, proj_weight, proj_bias if proj_bias is not None else proj_weight, position, e, r, p, big_d, d,
        HAS_BIAS=proj_bias is not None, IS_F64=is_f64, BLOCK_R=block_r,
        BLOCK_K=max(1, min(triton.next_power_of_2(big_d), tile // (block_r * block_l))), BLOCK_L=block_l)
    f = torch.empty((b, h, p, d), dtype=patches.dtype, device=patches.device)
    _project_kernel[(triton.cdiv(r, block_r) * h,)](
        e, bilinear, f, r, p, d, h, IS_F64=is_f64, BLOCK_R=block_r,
        BLOCK_K=max(1, min(block_l, tile // (block_r * block_l))), BLOCK_L=block_l)
    block_p = min(triton.next_power_of_2(p), _BLOCK_QUERY[kind])
    block_q = min(triton.next_power_of_2(p), _BLOCK_KEY[kind])
    grid, per_row = row_blocks(b * h, p, block_p)
    _logits_kernel[grid](f, e, out, p, d, h, per_row, IS_F64=is_f64, BLOCK_P=block_p, BLOCK_Q=block_q,
                         BLOCK_L=max(1, min(block_l, tile // (block_p * block_q))))
    return out
