"""The launch grid of the kernels that cut rows into blocks, written once: every (row, block) program on grid
axis 0. CUDA caps grid axes 1 and 2 at 65 535 programs (axis 0 at 2³¹ − 1), so with the blocks of a row on
axis 1, a row of more than about 67 M entries (65 535 blocks of 1024) would not launch; on axis 0 with the
rows, each program finds its row and block from its one index (:func:`row_block`)."""
from __future__ import annotations

import triton
import triton.language as tl


def row_blocks(rows: int, n: int, block: int) -> tuple[tuple[int], int]:
    """``(grid, blocks per row)`` for ``rows`` rows of ``n`` entries in blocks of ``block``."""
    per_row = triton.cdiv(n, block)
    return (rows * per_row,), per_row


@triton.jit
def row_block(per_row, BLOCK: tl.constexpr):
    """This program's ``(row, block index, offsets of its block in the row)``, all int64."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // per_row
    block = pid - row * per_row
    return row, block, block * BLOCK + tl.arange(0, BLOCK)
