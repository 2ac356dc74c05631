"""Triton kernels of SOP GroupGen's group selection (SPEC §6; :mod:`fastattr.ops.group_masks`).

Three launches: the sparsemax peak ``−τ`` and the max of every candidate row (Michelot's iteration on
``v = z − max z`` held in registers, as :mod:`fastattr.triton.sparsemax`); per example, each row's rank by
counting the rows that come before it (larger peak, then larger max, then lower index), which places the
first ``G``; per kept group, each entry's rank among its row's logits (larger, then lower index), so the
mask is ``rank < K`` (the op compares the masks for the first equal group in torch). Logits are finite
(the op checks). float64 in float64, the rest in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sparsemax import _threshold, _to_compute

_ROW_ELEMENTS = 4096  # peak kernel: rows are packed into programs of about this many elements
_BLOCK_J = 32         # rank kernels: rows / entries compared per step


@triton.jit
def _peaks_kernel(z_ptr, peak_ptr, top_ptr, RT, N, IS_F64: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """``ROWS`` rows per program: ``peak = −τ`` (τ relative to the row max) and the row max."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < RT) & (cols[None, :] < N)
    z = _to_compute(tl.load(z_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask,
                            other=float("-inf")), IS_F64)
    m = tl.max(z, axis=1)
    m = tl.where(rows < RT, m, 0.0)
    v = z - m[:, None]
    tau = _threshold(v, m, IS_F64)
    tl.store(peak_ptr + rows, (0.0 - tau).to(peak_ptr.dtype.element_ty), mask=rows < RT)
    tl.store(top_ptr + rows, m.to(top_ptr.dtype.element_ty), mask=rows < RT)


@triton.jit
def _rank_rows_kernel(peak_ptr, top_ptr, rows_ptr, R, G, BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    """One example per program: ``rows[rank_i] = i`` for the rows whose rank is below ``G``."""
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_R)
    p_i = tl.load(peak_ptr + b * R + i, mask=i < R, other=0.0)
    t_i = tl.load(top_ptr + b * R + i, mask=i < R, other=0.0)
    rank = tl.zeros([BLOCK_R], tl.int32)
    for j0 in range(0, R, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        p_j = tl.load(peak_ptr + b * R + j, mask=j < R, other=0.0)
        t_j = tl.load(top_ptr + b * R + j, mask=j < R, other=0.0)
        before = (p_j[None, :] > p_i[:, None]) | ((p_j[None, :] == p_i[:, None]) & (
            (t_j[None, :] > t_i[:, None]) | ((t_j[None, :] == t_i[:, None]) & (j[None, :] < i[:, None]))))
        rank += tl.sum((before & (j[None, :] < R)).to(tl.int32), axis=1)
    tl.store(rows_ptr + b * G + rank, i.to(tl.int64), mask=(i < R) & (rank < G))


@triton.jit
def _top_mask_kernel(z_ptr, rows_ptr, mask_ptr, R, N, G, K, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr):
    """One kept group per program: its row's ``K`` largest logits (ties by index) as a 0/1 mask."""
    bg = tl.program_id(0).to(tl.int64)
    row = tl.load(rows_ptr + bg)
    base = z_ptr + ((bg // G) * R + row) * N
    i = tl.arange(0, BLOCK_N)
    z_i = tl.load(base + i, mask=i < N, other=0.0)
    rank = tl.zeros([BLOCK_N], tl.int32)
    for j0 in range(0, N, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        z_j = tl.load(base + j, mask=j < N, other=0.0)
        before = (z_j[None, :] > z_i[:, None]) | ((z_j[None, :] == z_i[:, None]) & (j[None, :] < i[:, None]))
        rank += tl.sum((before & (j[None, :] < N)).to(tl.int32), axis=1)
    tl.store(mask_ptr + bg * N + i, (rank < K).to(tl.int8), mask=i < N)


def group_masks(z: torch.Tensor, n_groups: int, kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masks [B, G, n] bool, rows [B, G] int64)`` of contiguous finite logits ``z [B, R, n]`` in their
    compute dtype (the op adds the first equal group of each)."""
    b, r, n = z.shape
    block = triton.next_power_of_2(n)
    per = max(1, min(_ROW_ELEMENTS // block, triton.next_power_of_2(b * r)))
    peak = torch.empty((b, r), dtype=z.dtype, device=z.device)
    top = torch.empty_like(peak)
    _peaks_kernel[(triton.cdiv(b * r, per),)](z, peak, top, b * r, n, IS_F64=z.dtype == torch.float64, ROWS=per,
                                              BLOCK=block)
    rows = torch.empty((b, n_groups), dtype=torch.int64, device=z.device)
    _rank_rows_kernel[(b,)](peak, top, rows, r, n_groups, BLOCK_R=triton.next_power_of_2(r), BLOCK_J=_BLOCK_J)
    masks = torch.empty((b, n_groups, n), dtype=torch.int8, device=z.device)
    _top_mask_kernel[(b * n_groups,)](z, rows, masks, r, n, n_groups, kept, BLOCK_N=block, BLOCK_J=_BLOCK_J)
    return masks.bool(), rows
