"""Reference marginal gains of a batch of deep submodular functions (SPEC §7; SEA-NN, Manupriya et al.,
"Improving attribution methods by learning submodular functions", §3.2 and Algorithm 1).

A DSF ``f(x) = W_L g(… g(W_2 g(W_1 x + b_1) + b_2) …) + b_L`` (each ``W_l`` stored ``[h_{l−1}, h_l]``, applied as
``u W_l``) (weights ≥ 0, ``g`` concave and monotone:
``sqrt`` or ``log1p``) scores a set ``A`` through its indicator ``x = 1_A``. With the first-layer state
``z₁(A) = W_1 1_A + b_1``, adding ``v`` is the rank-1 update ``z₁(A ∪ {v}) = z₁(A) + W_1[:, v]``, and the
marginal gain of candidate ``v`` is

    ``f(v | A) = f(z₁(A) + W_1[:, v]) − f(z₁(A))``   (0 for ``v ∈ A``).

This reference runs the network from the updated state for every candidate and subtracts, in float64.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

ACTIVATIONS = ("sqrt", "log1p")


def activation(z: torch.Tensor, kind: str) -> torch.Tensor:
    """``g(z)``: ``sqrt(z)`` or ``log(1 + z)``."""
    return torch.sqrt(z) if kind == "sqrt" else torch.log1p(z)


def dsf_tail(z1: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
             kind: str) -> torch.Tensor:
    """``f`` from first-layer pre-activations ``z1`` ``[B, K, h1]`` through layers ``u ↦ u W_l + b_l``, ``W_l``
    ``[B, h_{l-1}, h_l]``, ``b_l`` ``[B, h_l]`` (``g`` after every layer but the last); returns ``[B, K]``."""
    u = activation(z1, kind)
    for i, (W, b) in enumerate(zip(weights, biases)):
        u = torch.baddbmm(b.unsqueeze(1), u, W)
        if i < len(weights) - 1:
            u = activation(u, kind)
    return u[..., 0]


def greedy_gains(z1: torch.Tensor, columns: torch.Tensor, weights: Sequence[torch.Tensor],
                 biases: Sequence[torch.Tensor], selected: torch.Tensor, candidates: Optional[torch.Tensor] = None,
                 kind: str = "sqrt", bounds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gains ``f(v | A)`` ``[B, K]`` of the candidates ``[B, K]`` (all ``n`` when None) for state ``z1`` ``[B, h1]``,
    the first layer's columns ``W_1[:, v]`` as rows ``columns`` ``[B, n, h1]``, the other layers, and ``A`` as
    ``selected`` ``[B, n]`` (bool); with ``bounds`` (upper bounds of the candidates' gains, sorted best first)
    only the chunks :func:`lazy` keeps are gains, the others their bounds."""
    dtype = z1.dtype
    z1, columns = z1.double(), columns.double()
    weights = [w.double() for w in weights]
    biases = [b.double() for b in biases]
    batch, n = selected.shape
    if candidates is None:
        candidates = torch.arange(n, device=z1.device).expand(batch, n)
    rows = torch.gather(columns, 1, candidates.unsqueeze(2).expand(-1, -1, columns.shape[2]))
    after = dsf_tail(z1.unsqueeze(1) + rows, weights, biases, kind)
    before = dsf_tail(z1.unsqueeze(1), weights, biases, kind)
    gains = (after - before).masked_fill(torch.gather(selected, 1, candidates), 0.0)
    return (gains if bounds is None else lazy(gains, bounds.double())).to(dtype)


LAZY_CHUNK = 32


def lazy(gains: torch.Tensor, bounds: torch.Tensor, chunk: int = LAZY_CHUNK) -> torch.Tensor:
    """Lazy evaluation of ``gains`` ``[B, K]`` given ``bounds`` sorted best first per row: chunks of ``chunk``
    candidates count as evaluated while the first bound of the chunk is not below the best gain of the chunks
    before (the first chunk always); the rest keep their bounds."""
    batch, k = gains.shape
    if k == 0:
        return gains
    n_chunks = -(-k // chunk)
    padded = torch.full((batch, n_chunks * chunk), -torch.inf, dtype=gains.dtype, device=gains.device)
    padded[:, :k] = gains
    best = padded.reshape(batch, n_chunks, chunk).amax(2).cummax(1).values
    before = torch.cat([torch.full_like(best[:, :1], -torch.inf), best[:, :-1]], 1)
    go = ~(bounds[:, ::chunk].to(gains.dtype) < before)
    evaluated = go.cumprod(1).bool().repeat_interleave(chunk, 1)[:, :k]
    return torch.where(evaluated, gains, bounds.to(gains.dtype))
