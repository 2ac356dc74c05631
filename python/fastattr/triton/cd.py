"""Triton kernel of the contextual-decomposition bias split (SPEC §4.2; see ``reference/cd.py``).

One program per block of elements of the stacked ``[n_ref·(1+K), C·P]`` buffer: reference rows get
``z + b``, β rows ``u + b (|u|+ε)/(|u|+|z−u|+2ε)`` with ``z`` read from their reference row; optional
ReLU (NaN propagates); computed in fp32 (fp64 for fp64 inputs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _bias_split_kernel(y_ptr, bias_ptr, out_ptr, n_ref, k, channels, positions, total,
                       RELU: tl.constexpr, COMPUTE_F64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    row_len = channels * positions
    row = offs // row_len
    col = offs % row_len
    ctype = tl.float64 if COMPUTE_F64 else tl.float32
    b = tl.load(bias_ptr + col // positions, mask=mask, other=0.0).to(ctype)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ctype)
    is_ref = row < n_ref
    ref_row = tl.where(is_ref, row, (row - n_ref) // k)
    z = tl.load(y_ptr + ref_row * row_len + col, mask=mask, other=0.0).to(ctype)
    pu = tl.abs(y) + 1e-20
    pg = tl.abs(z - y) + 1e-20
    out = tl.where(is_ref, y + b, y + b * pu / (pu + pg))
    if RELU:
        out = tl.where(out < 0, 0.0, out)  # NaN propagates (tl.maximum would give 0)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def cd_bias_split(y: torch.Tensor, bias: torch.Tensor, n_ref: int, k: int, channels: int, positions: int,
                  relu: bool) -> torch.Tensor:
    """``y`` contiguous ``[n_ref·(1+k), channels·positions]``, ``bias`` contiguous ``[channels]``."""
    out = torch.empty_like(y)
    total = y.numel()
    if total:
        grid = (triton.cdiv(total, _BLOCK),)
        _bias_split_kernel[grid](y, bias, out, n_ref, k, channels, positions, total, RELU=relu,
                                 COMPUTE_F64=y.dtype == torch.float64, BLOCK=_BLOCK)
    return out
