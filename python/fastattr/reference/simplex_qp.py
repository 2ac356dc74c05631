"""Reference batched simplex QP (SPEC §5.1; AGG, Mehrpooya et al., "Optimized aggregation of
attributions", §4): per example ``ω* = argmin_{ω ≥ 0, Σω = 1} f(ω)``, ``f(ω) = ωᵀGω + cᵀω``.

Accelerated projected gradient (FISTA with gradient restart, O'Donoghue & Candès 2015) in float64
with step ``1/L``, ``L = 2 λ_max(G)`` (the Lipschitz constant of ``∇f = 2Gω + c``; ``G`` enters
through its symmetric part), and the simplex projection ``proj_Δ = sparsemax`` (SPEC §1), from
the uniform ``ω = 1/k``, until the KKT residual (the gradient mapping, zero exactly at the KKT points)

    ``r(ω) = ‖ω − proj_Δ(ω − ∇f(ω) / L)‖_∞``

is at most ``tol = 1e-10``. **Convention:** ``G = 0`` (a linear problem) gives the uniform weights
over ``argmin_i c_i`` (all of ``1..k`` when ``c`` is None), which is where this iteration goes.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from .sparsemax import sparsemax

TOL = 1e-10
MAX_ITER = 100_000
_CHECK_EVERY = 10


def lipschitz(G: torch.Tensor) -> torch.Tensor:
    """``L = 2 λ_max(sym(G))`` per example, float64 ``[B]``: the Lipschitz constant of ``∇f``."""
    G = G.to(torch.float64)
    return 2 * torch.linalg.eigvalsh((G + G.mT) / 2)[..., -1]


def objective(G: torch.Tensor, w: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``f(ω) = ωᵀGω + cᵀω`` per example, float64 ``[B]``."""
    G, w = G.to(torch.float64), w.to(torch.float64)
    f = torch.einsum("bi,bij,bj->b", w, G, w)
    return f if c is None else f + (c.to(torch.float64) * w).sum(-1)


def kkt_residual(G: torch.Tensor, w: torch.Tensor, c: Optional[torch.Tensor] = None,
                 L: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``r(ω) = ‖ω − proj_Δ(ω − ∇f(ω)/L)‖_∞`` per example (float64 ``[B]``; ``L`` from
    :func:`lipschitz`, 1 where ``G = 0``)."""
    G, w = G.to(torch.float64), w.to(torch.float64)
    if L is None:
        L = lipschitz(G)
    L = torch.where(L > 0, L, torch.ones_like(L))
    return (w - sparsemax(w - _gradient(G, w, c) / L[:, None])).abs().amax(-1)


def _gradient(G: torch.Tensor, w: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
    g = torch.einsum("bij,bj->bi", G + G.mT, w)
    return g if c is None else g + c


def _linear(c: Optional[torch.Tensor], B: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """The convention for ``G = 0``: uniform over ``argmin c``."""
    if c is None:
        return torch.full((B, k), 1.0 / k, dtype=torch.float64, device=like.device)
    best = (c == c.amin(-1, keepdim=True)).to(torch.float64)
    return best / best.sum(-1, keepdim=True)


def simplex_qp(G: torch.Tensor, c: Optional[torch.Tensor] = None, *, tol: float = TOL,
               max_iter: int = MAX_ITER) -> torch.Tensor:
    """``ω* [B, k]`` for ``G [B, k, k]`` (symmetric PSD) and optional ``c [B, k]``, in ``G``'s dtype.
    Warns when some example has not reached ``r(ω) ≤ tol`` after ``max_iter`` iterations."""
    B, k = G.shape[0], G.shape[-1]
    if B == 0:
        return G.new_empty((0, k))
    G64 = (G.to(torch.float64) + G.to(torch.float64).mT) / 2
    c64 = None if c is None else c.to(torch.float64)
    L = lipschitz(G64)
    zero = (G64 == 0).flatten(1).all(-1)
    L = torch.where(zero, torch.ones_like(L), L)[:, None]
    x = torch.full((B, k), 1.0 / k, dtype=torch.float64, device=G.device)
    y, t = x, torch.ones(B, 1, dtype=torch.float64, device=G.device)
    done = zero.clone()
    for it in range(1, max_iter + 1):
        x_new = sparsemax(y - _gradient(G64, y, c64) / L)
        restart = ((y - x_new) * (x_new - x)).sum(-1, keepdim=True) > 0
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        y_new = x_new + ((t - 1) / t_new) * (x_new - x)
        keep = done[:, None]
        x = torch.where(keep, x, x_new)
        y = torch.where(keep | restart, x, y_new)
        t = torch.where(keep | restart, torch.ones_like(t), t_new)
        if it % _CHECK_EVERY == 0:
            done |= kkt_residual(G64, x, c64, L[:, 0]) <= tol
            if bool(done.all()):
                break
    else:
        warnings.warn(f"simplex_qp (reference): {int((~done).sum())} of {B} examples did not reach the KKT "
                      f"residual {tol:g} within {max_iter} iterations", RuntimeWarning, stacklevel=2)
    x = torch.where(zero[:, None], _linear(c64, B, k, x), x)
    return x.to(G.dtype)
