"""Triton batched simplex QP (SPEC §5.1; AGG, "Optimized aggregation of attributions", §4): each
program solves ``min_{ω ≥ 0, Σω = 1} ωᵀGω + cᵀω`` for a few examples (``G`` of each in registers).

Accelerated projected gradient in float64 on ``f(ω) = ½ωᵀHω + cᵀω``, ``H = G + Gᵀ``: FISTA with
gradient restart (O'Donoghue & Candès 2015) from the uniform ``ω = 1/k``, step ``1/L``. ``L`` starts
at a lower bound of ``λ_max(H)`` (16 power iterations, at least ``max_i H_ii``) and is raised to the
Rayleigh quotient ``ΔᵀHΔ/‖Δ‖²`` of any step ``Δ`` that breaks the descent condition (that step is
dropped and the momentum restarts), so ``L ≤ λ_max(H)`` throughout. The simplex projection is
sparsemax by Michelot's iteration (exact, sort-free; see :mod:`fastattr.triton.sparsemax`). The
loop stops at the first checked iterate (every ``_CHECK_EVERY`` iterations) with
``‖ω − proj_Δ(ω − ∇f(ω)/L)‖_∞ ≤ tol``; that residual can only shrink as ``L`` grows, so the
reference's residual (``L = λ_max(H) = 2λ_max(G)``) is then at most ``tol`` too. ``∇f`` is linear,
so the gradient at the extrapolated point is extrapolated too: one ``[k, k]`` matrix-vector product
and one projection per iteration. ``G = 0`` gives the uniform weights over ``argmin c`` (the
reference's convention). Rows past ``B`` and lanes past ``k`` are masked.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

_POWER_ITERATIONS = 16
_CHECK_EVERY = 4  # iterations between residual checks
# Examples are packed into programs of about this many entries of G: few on a GPU (more programs,
# and a program waits for its slowest example), many in the interpreter (fewer programs to interpret).
_PROGRAM_ELEMENTS = {"cuda": 256, "cpu": 2048}


@triton.jit
def _project(z, mask):
    """Euclidean projection of the valid lanes of each row of ``z`` onto the simplex (sparsemax)."""
    v = tl.where(mask, z, float("-inf"))
    m = tl.max(v, axis=1)
    v = v - tl.where(m == float("-inf"), 0.0, m)[:, None]
    tau = tl.zeros_like(m) - 1.0
    active = v > tau[:, None]
    c = tl.sum(active.to(tl.int32), axis=1)
    s = tl.sum(tl.where(active, v, 0.0), axis=1)
    cnt = c + 1
    while tl.max((c < cnt).to(tl.int32), axis=0) > 0:
        shrunk = c < cnt
        tau = tl.where(shrunk, (s - 1.0) / tl.maximum(c, 1).to(tl.float64), tau)
        cnt = tl.where(shrunk, c, cnt)
        active = v > tau[:, None]
        c = tl.sum(active.to(tl.int32), axis=1)
        s = tl.sum(tl.where(active, v, 0.0), axis=1)
    return tl.where(mask, tl.maximum(v - tau[:, None], 0.0), 0.0)


@triton.jit
def _matvec(H, x):
    """``H_e x_e`` for every row ``e``: ``[R, K, K] x [R, K] -> [R, K]``."""
    return tl.sum(H * x[:, None, :], axis=2)


@triton.jit
def _dot(a, b):
    return tl.sum(a * b, axis=1)


@triton.jit
def _residual(x, gx, L, mask):
    """``‖x − proj_Δ(x − ∇f(x)/L)‖_∞`` per row."""
    return tl.max(tl.abs(x - _project(x - gx / L[:, None], mask)), axis=1)


@triton.jit
def _simplex_qp_kernel(G_ptr, c_ptr, out_ptr, iters_ptr, B, k, tol, max_iter, HAS_C: tl.constexpr,
                       POWER: tl.constexpr, CHECK_EVERY: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """``ROWS`` examples per program; a converged row stays as it is while the others go on."""
    ex = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    idx = tl.arange(0, BLOCK)
    mask = (ex[:, None] < B) & (idx[None, :] < k)
    mask3 = mask[:, :, None] & (idx[None, None, :] < k)
    base = G_ptr + ex[:, None, None] * k * k
    G = tl.load(base + idx[None, :, None] * k + idx[None, None, :], mask=mask3, other=0.0).to(tl.float64)
    Gt = tl.load(base + idx[None, None, :] * k + idx[None, :, None], mask=mask3, other=0.0).to(tl.float64)
    H = G + Gt
    if HAS_C:
        c = tl.load(c_ptr + ex[:, None] * k + idx[None, :], mask=mask, other=0.0).to(tl.float64)
    else:
        c = tl.zeros([ROWS, BLOCK], tl.float64)
    kf = tl.sum(mask.to(tl.float64), axis=1)
    valid = kf > 0
    kf = tl.maximum(kf, 1.0)

    linear = tl.max(tl.max(tl.abs(H), axis=2), axis=1) == 0.0
    v = tl.where(mask, 1.0 + idx[None, :].to(tl.float64) / kf[:, None], 0.0)
    for _ in range(POWER):
        u = _matvec(H, v)
        v = u / tl.maximum(tl.sqrt(_dot(u, u)), 1e-300)[:, None]
    eye = idx[:, None] == idx[None, :]
    diag = tl.max(tl.where(mask, tl.sum(tl.where(eye[None, :, :], H, 0.0), axis=2), float("-inf")), axis=1)
    L = tl.maximum(_dot(v, _matvec(H, v)), diag)
    L = tl.where(L > 0.0, L, 1.0)

    x = tl.where(mask, 1.0 / kf[:, None], 0.0)
    gx = _matvec(H, x) + c
    y = x
    gy = gx
    t = tl.full([ROWS], 1.0, tl.float64)
    r = tl.where(linear | ~valid, 0.0, _residual(x, gx, L, mask))
    it = 0
    while (tl.max(r, axis=0) > tol) & (it < max_iter):
        run = r > tol
        z = _project(y - gy / L[:, None], mask)
        gz = _matvec(H, z) + c
        dlt = z - y
        dd = _dot(dlt, dlt)
        curv = _dot(dlt, gz - gy)
        raise_L = curv > L * dd * (1.0 + 1e-12)
        restart = raise_L | (_dot(y - z, z - x) > 0.0)
        t_new = (1.0 + tl.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = ((t - 1.0) / t_new)[:, None]
        keep = (raise_L | ~run)[:, None]
        x_new = tl.where(keep, x, z)
        gx_new = tl.where(keep, gx, gz)
        still = (restart | ~run)[:, None]
        y = tl.where(still, x_new, z + beta * (z - x))
        gy = tl.where(still, gx_new, gz + beta * (gz - gx))
        t = tl.where(restart | ~run, 1.0, t_new)
        L = tl.where(raise_L & run, curv / tl.where(dd > 0.0, dd, 1.0), L)
        x = x_new
        gx = gx_new
        it += 1
        if it % CHECK_EVERY == 0:
            r = tl.where(run, _residual(x, gx, L, mask), r)

    cmin = tl.min(tl.where(mask, c, float("inf")), axis=1)
    best = mask & (c == cmin[:, None])
    w_linear = tl.where(best, 1.0 / tl.maximum(tl.sum(best.to(tl.float64), axis=1), 1.0)[:, None], 0.0)
    w = tl.where(linear[:, None], w_linear, x)
    tl.store(out_ptr + ex[:, None] * k + idx[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(iters_ptr + ex, tl.where(r > tol, -1, it), mask=ex < B)


def simplex_qp(G: torch.Tensor, c: Optional[torch.Tensor], tol: float, max_iter: int
               ) -> tuple[torch.Tensor, int]:
    """``(ω [B, k] in G's dtype, number of examples that hit max_iter)`` for contiguous float32 /
    float64 ``G [B, k, k]`` and ``c [B, k]`` (or None) of G's dtype."""
    B, k = G.shape[0], G.shape[-1]
    out = torch.empty((B, k), dtype=G.dtype, device=G.device)
    iters = torch.empty(B, dtype=torch.int32, device=G.device)
    if B == 0:
        return out, 0
    block = max(2, triton.next_power_of_2(k))
    budget = _PROGRAM_ELEMENTS.get(G.device.type, _PROGRAM_ELEMENTS["cuda"])
    rows = min(triton.next_power_of_2(B), max(1, budget // (block * block)))
    _simplex_qp_kernel[(triton.cdiv(B, rows),)](
        G, G if c is None else c, out, iters, B, k, float(tol), int(max_iter), HAS_C=c is not None,
        POWER=_POWER_ITERATIONS, CHECK_EVERY=_CHECK_EVERY, ROWS=rows, BLOCK=block,
        num_warps=max(1, min(8, rows * block * block // 256)))
    return out, int((iters < 0).sum())
