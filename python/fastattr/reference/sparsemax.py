"""Reference sparsemax (Martins & Astudillo 2016), the sorted formulation.

``sparsemax(z) = argmin_{p in simplex} ||p - z||^2``; with ``z_(1) >= ... >= z_(n)``:
``k = max{j : 1 + j z_(j) > sum_{i<=j} z_(i)}``, ``tau = (sum_{i<=k} z_(i) - 1) / k``,
``p_i = max(z_i - tau, 0)``. Backward with ``S = {p > 0}``: ``dz = (g - mean_S g) * 1_S``.

Kernel-level semantics: ``-inf`` entries get 0; a row containing NaN or ``+inf``, or a row that is
all ``-inf``, becomes NaN. fp16/bf16 are computed in float32 and returned in the input dtype.
"""
from __future__ import annotations

import torch

from ..numerics import compute_dtype


def sparsemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax of ``x`` along ``dim`` by sorting (the specification of the fast kernels)."""
    if x.numel() == 0:
        return torch.empty_like(x)
    z = x.to(compute_dtype(x.dtype)).movedim(dim, -1)
    bad = torch.isnan(z).any(-1, keepdim=True) | torch.isposinf(z).any(-1, keepdim=True)
    bad |= torch.isneginf(z).all(-1, keepdim=True)
    z = z.masked_fill(bad, 0.0)
    z = z - z.max(-1, keepdim=True).values
    zs = torch.sort(z, dim=-1, descending=True).values
    cumsum = zs.cumsum(-1)
    j = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    in_support = 1 + j * zs > cumsum
    k = (in_support * j).amax(-1, keepdim=True)
    tau = (cumsum.gather(-1, k.long() - 1) - 1) / k
    p = torch.relu(z - tau).masked_fill(bad, float("nan"))  # relu: derivative 0 at the support's edge, as the backward
    return p.movedim(-1, dim).to(x.dtype)


def sparsemax_backward(p: torch.Tensor, grad: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Vector-Jacobian product of sparsemax at output ``p``: ``(g - mean_S g) * 1_S``."""
    if p.numel() == 0:
        return torch.empty_like(grad)
    dtype = compute_dtype(grad.dtype)
    support = (p > 0).to(dtype)
    g = grad.to(dtype) * support
    mean = g.sum(dim, keepdim=True) / support.sum(dim, keepdim=True).clamp_min(1)
    return ((g - mean) * support).to(grad.dtype)
