"""Sort-free Triton sparsemax along the last dim of a contiguous ``[R, N]`` tensor.

Sparsemax (Martins & Astudillo 2016, "From Softmax to Sparsemax") is the Euclidean projection onto
the probability simplex: ``p_i = max(z_i - tau, 0)`` with ``sum_i max(z_i - tau, 0) = 1``. The
backward is ``dz = (g - mean_{i in S} g_i) * 1_S`` with support ``S = {p > 0}``.

tau is found without sorting by Michelot's iteration on ``v = z - max z`` (so ``tau - max z`` lies in
``[-1, 0)``, which keeps huge magnitudes exact): start from the superset ``{v > -1}`` of the support,
set ``tau = (sum_{active} v - 1) / |active|`` and ``active = {v > tau}``, and repeat while the active
set shrinks. tau only increases, every active set contains the support, and the last one is the
support itself, so tau equals the sorted formula up to summation order (ties are all in or all out).

Rows of up to ``_ONCHIP_MAX`` elements are held in registers (read once, written once); longer rows
are streamed from global memory in tiles, one tiled pass per iteration. Semantics follow
:mod:`fastattr.reference.sparsemax`: ``-inf`` gets 0; a row with NaN or ``+inf``, or all ``-inf``,
becomes NaN. float64 is computed in float64, everything else in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_ONCHIP_MAX = {4: 16384, 8: 8192}  # largest on-chip row length by compute element size (bytes)
_TILE = {4: 8192, 8: 4096}  # multi-pass tile length by compute element size
_ROW_ELEMENTS = 4096  # on-chip: short rows are packed into programs of about this many elements


@triton.jit
def _to_compute(x, IS_F64: tl.constexpr):
    if IS_F64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    return x


@triton.jit
def _div(a, b, IS_F64: tl.constexpr):
    """Correctly rounded division (plain ``/`` on float32 is approximate on CUDA)."""
    if IS_F64:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def _row_stats(v, tau):
    """Count and sum of the entries of each row of ``v`` above that row's ``tau``."""
    active = v > tau[:, None]
    return tl.sum(active.to(tl.int32), axis=1), tl.sum(tl.where(active, v, 0.0), axis=1)


@triton.jit
def _threshold(v, m, IS_F64: tl.constexpr):
    """tau of every row of ``v = x - max x`` held in registers (``m``: any per-row vector, for the shape): Michelot's
    iteration from the superset ``{v > -1}`` of the support, all rows together until none shrinks."""
    tau = tl.zeros_like(m) - 1.0
    c, s = _row_stats(v, tau)
    cnt = c + 1
    while tl.max((c < cnt).to(tl.int32), axis=0) > 0:
        shrunk = c < cnt
        tau = tl.where(shrunk, _div(s - 1.0, tl.maximum(c, 1).to(s.dtype), IS_F64), tau)
        cnt = tl.where(shrunk, c, cnt)
        c, s = _row_stats(v, tau)
    return tau


@triton.jit
def _nan_to_inf(x):
    """NaN -> +inf, so that one max finds NaN and +inf together (as a +inf max)."""
    return tl.where(x != x, float("inf"), x)


@triton.jit
def _forward_onchip_kernel(x_ptr, out_ptr, R, N, IS_F64: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """``ROWS`` whole rows per program, held in registers."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < R) & (cols[None, :] < N)
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    x = _to_compute(tl.load(x_ptr + offs, mask=mask, other=float("-inf")), IS_F64)

    m = tl.max(_nan_to_inf(x), axis=1)
    bad = (m == float("inf")) | (m == float("-inf"))
    m = tl.where(bad, 0.0, m)
    # Bad rows become a uniform dummy (so the iteration stays finite) and are set to NaN at the end.
    v = tl.where(bad[:, None] & mask, 0.0, x - m[:, None])

    tau = _threshold(v, m, IS_F64)
    p = tl.maximum(v - tau[:, None], 0.0)
    p = tl.where(bad[:, None], float("nan"), p)
    tl.store(out_ptr + offs, p.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tiled_stats(row_ptr, N, m, bad, tau, IS_F64: tl.constexpr, TILE: tl.constexpr):
    """One pass over a row in global memory: count and sum of ``v = x - m`` above ``tau``."""
    cols = tl.arange(0, TILE)
    c_acc = tl.zeros([TILE], tl.int32)
    s_acc = tl.zeros([TILE], m.dtype)
    for start in range(0, N, TILE):
        mask = start + cols < N
        x = _to_compute(tl.load(row_ptr + start + cols, mask=mask, other=float("-inf")), IS_F64)
        v = tl.where(bad, tl.where(mask, 0.0, float("-inf")), x - m)
        active = v > tau
        c_acc += active.to(tl.int32)
        s_acc += tl.where(active, v, 0.0)
    return tl.sum(c_acc, axis=0), tl.sum(s_acc, axis=0)


@triton.jit
def _forward_multipass_kernel(x_ptr, out_ptr, N, IS_F64: tl.constexpr, TILE: tl.constexpr):
    """One row per program, streamed in tiles: a max pass, one pass per iteration, a write pass."""
    row_x = x_ptr + tl.program_id(0).to(tl.int64) * N
    row_out = out_ptr + tl.program_id(0).to(tl.int64) * N
    cols = tl.arange(0, TILE)

    m_acc = _to_compute(tl.full([TILE], float("-inf"), tl.float32), IS_F64)
    for start in range(0, N, TILE):
        mask = start + cols < N
        x = _to_compute(tl.load(row_x + start + cols, mask=mask, other=float("-inf")), IS_F64)
        m_acc = tl.maximum(m_acc, _nan_to_inf(x))
    m = tl.max(m_acc, axis=0)
    bad = (m == float("inf")) | (m == float("-inf"))
    m = tl.where(bad, 0.0, m)

    tau = tl.zeros_like(m) - 1.0
    c, s = _tiled_stats(row_x, N, m, bad, tau, IS_F64, TILE)
    cnt = c + 1
    while c < cnt:
        tau = _div(s - 1.0, c.to(s.dtype), IS_F64)
        cnt = c
        c, s = _tiled_stats(row_x, N, m, bad, tau, IS_F64, TILE)

    for start in range(0, N, TILE):
        mask = start + cols < N
        x = _to_compute(tl.load(row_x + start + cols, mask=mask, other=float("-inf")), IS_F64)
        p = tl.maximum(tl.where(bad, 0.0, x - m) - tau, 0.0)
        p = tl.where(bad, float("nan"), p)
        tl.store(row_out + start + cols, p.to(row_out.dtype.element_ty), mask=mask)


@triton.jit
def _backward_onchip_kernel(p_ptr, g_ptr, out_ptr, R, N, IS_F64: tl.constexpr, ROWS: tl.constexpr,
                            BLOCK: tl.constexpr):
    """``(g - mean_S g) * 1_S`` for ``ROWS`` whole rows per program."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < R) & (cols[None, :] < N)
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    support = tl.load(p_ptr + offs, mask=mask, other=0.0) > 0
    g = _to_compute(tl.load(g_ptr + offs, mask=mask, other=0.0), IS_F64)
    g = tl.where(support, g, 0.0)
    count = tl.sum(support.to(tl.int32), axis=1)
    mean = _div(tl.sum(g, axis=1), tl.maximum(count, 1).to(g.dtype), IS_F64)
    dz = tl.where(support, g - mean[:, None], 0.0)
    tl.store(out_ptr + offs, dz.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_multipass_kernel(p_ptr, g_ptr, out_ptr, N, IS_F64: tl.constexpr, TILE: tl.constexpr):
    """``(g - mean_S g) * 1_S`` for one long row: a reduction pass and a write pass."""
    row = tl.program_id(0).to(tl.int64) * N
    cols = tl.arange(0, TILE)
    c_acc = tl.zeros([TILE], tl.int32)
    s_acc = _to_compute(tl.zeros([TILE], tl.float32), IS_F64)
    for start in range(0, N, TILE):
        mask = start + cols < N
        support = tl.load(p_ptr + row + start + cols, mask=mask, other=0.0) > 0
        g = _to_compute(tl.load(g_ptr + row + start + cols, mask=mask, other=0.0), IS_F64)
        c_acc += support.to(tl.int32)
        s_acc += tl.where(support, g, 0.0)
    mean = _div(tl.sum(s_acc, axis=0), tl.maximum(tl.sum(c_acc, axis=0), 1).to(s_acc.dtype), IS_F64)
    for start in range(0, N, TILE):
        mask = start + cols < N
        support = tl.load(p_ptr + row + start + cols, mask=mask, other=0.0) > 0
        g = _to_compute(tl.load(g_ptr + row + start + cols, mask=mask, other=0.0), IS_F64)
        dz = tl.where(support, g - mean, 0.0)
        tl.store(out_ptr + row + start + cols, dz.to(out_ptr.dtype.element_ty), mask=mask)


def _element_size(dtype: torch.dtype) -> int:
    return 8 if dtype == torch.float64 else 4


def _num_warps(elements: int) -> int:
    """About 16 elements per thread, between 1 and 16 warps."""
    return max(1, min(16, elements // 512))


def _launch(rows: int, n: int, dtype: torch.dtype, onchip, multipass, *tensors: torch.Tensor) -> None:
    is_f64 = dtype == torch.float64
    if n <= _ONCHIP_MAX[_element_size(dtype)]:
        block = triton.next_power_of_2(n)
        per_program = min(triton.next_power_of_2(rows), max(1, _ROW_ELEMENTS // block))
        onchip[(triton.cdiv(rows, per_program),)](
            *tensors, rows, n, IS_F64=is_f64, ROWS=per_program, BLOCK=block,
            num_warps=_num_warps(per_program * block))
    else:
        tile = _TILE[_element_size(dtype)]
        multipass[(rows,)](*tensors, n, IS_F64=is_f64, TILE=tile, num_warps=_num_warps(tile))


def _check(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dim() != 2 or t.shape != tensors[0].shape or t.dtype != tensors[0].dtype:
            raise ValueError("expected 2-D tensors of one shape and dtype, got "
                             f"{[(tuple(u.shape), u.dtype) for u in tensors]}")


def sparsemax_forward(x: torch.Tensor) -> torch.Tensor:
    """Sparsemax of each row of ``x`` (2-D contiguous ``[R, N]``); returns a new tensor like ``x``."""
    _check(x)
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel() > 0:
        _launch(x.shape[0], x.shape[1], x.dtype, _forward_onchip_kernel, _forward_multipass_kernel, x, out)
    return out


def sparsemax_backward(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gradient wrt the input of sparsemax at output ``p`` for upstream grad ``g`` (both ``[R, N]``)."""
    _check(p, g)
    p, g = p.contiguous(), g.contiguous()
    out = torch.empty_like(g)
    if g.numel() > 0:
        _launch(g.shape[0], g.shape[1], g.dtype, _backward_onchip_kernel, _backward_multipass_kernel, p, g, out)
    return out
