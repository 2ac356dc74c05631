"""Triton ``stencil_solve`` (SPEC §11): conjugate gradients for the noisy-linear-imputation system
of every (plane, right-hand side) at once, on the full grid. One fused kernel per iteration computes
``q = A p`` (``(A p)_i = s_i p_i − Σ_{j∈N(i)} w_ij p_j`` on removed pixels, 0 elsewhere; ``p`` is 0 on
known pixels, so only removed neighbours count) with the per-block partial sums of ``p·q``; the
vector updates are torch ops on the same device, and convergence (``‖r‖ ≤ tol ‖b‖`` for every
solve) is checked every few iterations."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._grid import row_block, row_blocks

_BLOCK = 1024
_CHECK_EVERY = 8


@triton.jit
def _neighbour(p_ptr, base, y, x, height, width, inside, DY: tl.constexpr, DX: tl.constexpr):
    yy = y + DY
    xx = x + DX
    ok = inside & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
    return tl.load(p_ptr + base + yy * width + xx, mask=ok, other=0.0), ok.to(tl.float64)


@triton.jit
def _matvec_kernel(p_ptr, mask_ptr, q_ptr, partial_ptr, n_rhs, height, width, n_blocks, BLOCK: tl.constexpr):
    plane, block, offs = row_block(n_blocks, BLOCK)
    n_pix = height * width
    inside = offs < n_pix
    y = offs // width
    x = offs % width
    base = plane * n_pix
    removed = tl.load(mask_ptr + (plane // n_rhs) * n_pix + offs, mask=inside, other=0).to(tl.int1)
    p = tl.load(p_ptr + base + offs, mask=inside, other=0.0)
    edge = 1.0 / 6.0
    corner = 1.0 / 12.0
    v0, k0 = _neighbour(p_ptr, base, y, x, height, width, inside, -1, -1)
    v1, k1 = _neighbour(p_ptr, base, y, x, height, width, inside, -1, 0)
    v2, k2 = _neighbour(p_ptr, base, y, x, height, width, inside, -1, 1)
    v3, k3 = _neighbour(p_ptr, base, y, x, height, width, inside, 0, -1)
    v4, k4 = _neighbour(p_ptr, base, y, x, height, width, inside, 0, 1)
    v5, k5 = _neighbour(p_ptr, base, y, x, height, width, inside, 1, -1)
    v6, k6 = _neighbour(p_ptr, base, y, x, height, width, inside, 1, 0)
    v7, k7 = _neighbour(p_ptr, base, y, x, height, width, inside, 1, 1)
    s = corner * (k0 + k2 + k5 + k7) + edge * (k1 + k3 + k4 + k6)
    around = corner * (v0 + v2 + v5 + v7) + edge * (v1 + v3 + v4 + v6)
    q = tl.where(removed & inside, s.to(p.dtype) * p - around.to(p.dtype), 0.0)
    tl.store(q_ptr + base + offs, q, mask=inside)
    tl.store(partial_ptr + plane * n_blocks + block, tl.sum(p * q, axis=0))


def stencil_solve(rhs: torch.Tensor, removed: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, int]:
    """rhs ``[G, R, H, W]`` float32/64, removed ``[G, H, W]`` bool, contiguous → (u ``[G, R, H, W]`` in
    rhs's dtype, the number of solves that did not converge). Iterates in float64."""
    groups, n_rhs, height, width = rhs.shape
    n_pix = height * width
    planes = groups * n_rhs
    out = torch.zeros_like(rhs)
    if out.numel() == 0:
        return out, 0
    mask = removed.reshape(groups, 1, n_pix).expand(groups, n_rhs, n_pix).reshape(planes, n_pix)
    # planes with no removed pixel, or no known one (singular), stay 0
    solvable = mask.any(1) & ~mask.all(1)
    r = torch.where(mask & solvable[:, None], rhs.reshape(planes, n_pix).double(), 0.0)
    u = torch.zeros_like(r)
    p = r.clone()
    rr = (r * r).sum(1)
    stop = tol * tol * rr
    active = rr > stop
    grid, n_blocks = row_blocks(planes, n_pix, _BLOCK)
    q = torch.empty_like(r)
    partial = torch.empty(planes, n_blocks, dtype=torch.float64, device=r.device)
    mask8 = removed.to(torch.uint8).contiguous()
    for it in range(max_iter):
        if it % _CHECK_EVERY == 0 and not bool(active.any()):
            break
        _matvec_kernel[grid](p, mask8, q, partial, n_rhs, height, width, n_blocks, BLOCK=_BLOCK)
        pq = partial.sum(1)
        alpha = torch.where(active & (pq > 0), rr / torch.where(pq > 0, pq, 1.0), 0.0)
        u.addcmul_(alpha[:, None], p)
        r.addcmul_(alpha[:, None], q, value=-1.0)
        rn = (r * r).sum(1)
        beta = torch.where(active & (rr > 0), rn / torch.where(rr > 0, rr, 1.0), 0.0)
        p = r + beta[:, None] * p
        rr = torch.where(active, rn, rr)
        active = active & (rn > stop) & (pq > 0)
    failed = int(active.sum())
    return u.reshape(rhs.shape).to(rhs.dtype), failed
