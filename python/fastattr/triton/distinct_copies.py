"""Triton kernel of SOP's distinct masked copies (SPEC §6; :mod:`fastattr.ops.distinct_copies`): one program
per copy and block of its ``C·L`` entries multiplies ``x`` of the copy's example by the 0/1 mask value of each
entry's patch (a product, so the bits are those of ``S ⊙ x``). The numbering of the distinct groups is the
wrapper's, in torch."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._grid import row_block, row_blocks

_BLOCK = 1024


@triton.jit
def _copy_kernel(x_ptr, m_ptr, rows_ptr, up_ptr, out_ptr, G, CL, L, P, per_row, BLOCK: tl.constexpr):
    n, _, j = row_block(per_row, BLOCK)
    inside = j < CL
    row = tl.load(rows_ptr + n)
    patch = tl.load(up_ptr + j % L, mask=inside, other=0)
    keep = tl.load(m_ptr + row * P + patch, mask=inside, other=0) != 0
    xv = tl.load(x_ptr + (row // G) * CL + j, mask=inside, other=0.0)
    tl.store(out_ptr + n * CL + j, xv * tl.where(keep, 1.0, 0.0).to(xv.dtype), mask=inside)


def distinct_copies(x: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor, unit_patch: torch.Tensor,
                    groups: int) -> torch.Tensor:
    """``copies [N, C, L]`` of contiguous ``x [B, C, L]``, bool ``masks [B·G, P]`` (as uint8), the flat groups
    ``rows [N]`` and valid ``unit_patch [L]``."""
    n, (_, c, length) = rows.shape[0], x.shape
    out = torch.empty((n, c, length), dtype=x.dtype, device=x.device)
    if n:
        grid, per_row = row_blocks(n, c * length, _BLOCK)
        _copy_kernel[grid](x, masks.view(torch.uint8), rows, unit_patch, out, groups, c * length, length,
                           masks.shape[-1], per_row, BLOCK=_BLOCK)
    return out
