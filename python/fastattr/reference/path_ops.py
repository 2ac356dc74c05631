"""Reference integrated-gradient path ops (Sundararajan et al. 2017; SPEC §2 "fused path accumulation").

``path_interpolate(x, x', α)[s·B + b] = x'_b + α_s (x_b − x'_b)``: the chunk of interpolated
inputs for steps ``α``, stacked step-major into ``[S·B, ...]`` (``x'`` is per-example ``[B, ...]``
or shared ``[1, ...]``); fp16/bf16 are computed in float32.

``path_accumulate(acc, g, w, diff) = (acc + Σ_s w_s g_s) ⊙ diff``, ``g`` of shape ``[S, B, ...]``,
computed in ``acc``'s dtype; ``diff=None`` skips the multiply (it is fused into the last chunk).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..numerics import compute_dtype


def path_interpolate(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    steps = alphas.shape[0]
    compute = compute_dtype(x.dtype)
    xc, bc = x.to(compute), baseline.to(compute)
    a = alphas.to(compute).view((steps,) + (1,) * x.dim())
    out = bc.unsqueeze(0) + a * (xc - bc).unsqueeze(0)
    return out.reshape((steps * x.shape[0],) + tuple(x.shape[1:])).to(x.dtype)


def path_accumulate(acc: torch.Tensor, grads: torch.Tensor, weights: torch.Tensor,
                    diff: Optional[torch.Tensor] = None) -> torch.Tensor:
    out = acc + torch.tensordot(weights.to(acc.dtype), grads.to(acc.dtype), dims=1)
    return out if diff is None else out * diff.to(acc.dtype)
