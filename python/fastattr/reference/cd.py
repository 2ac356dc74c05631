"""Reference of the contextual-decomposition bias split (Murdoch et al. 2018; SPEC §4.1–4.2).

``y`` stacks ``n_ref`` reference rows ``z_b = W a_b`` and then ``n_ref·K`` rows ``u_{b,k} = W β_{b,k}``
(row ``n_ref + b·K + k``), shape ``[n_ref·(1+K), C, *positions]``, all without the bias ``b [C]``::

    out[b]      = z_b + b
    out[b, k]   = u + b · (|u| + ε) / (|u| + |z_b − u| + 2ε)        ε = 1e-20 (0/0 splits 50/50)

then ``ReLU`` on every row when ``relu``. ``z_b − u = W γ`` is the irrelevant part's pre-activation,
so this is CD's linear rule with only β propagated. fp16/bf16 are computed in fp32.
"""
from __future__ import annotations

import torch

from ..numerics import compute_dtype

EPS = 1e-20


def cd_bias_split(y: torch.Tensor, bias: torch.Tensor, n_ref: int, relu: bool) -> torch.Tensor:
    compute = compute_dtype(y.dtype)
    yc = y.to(compute)
    b = bias.to(compute).reshape((1, -1) + (1,) * (y.dim() - 2))
    ref, u = yc[:n_ref], yc[n_ref:]
    z = ref.repeat_interleave(u.shape[0] // n_ref, 0)
    pu, pg = u.abs() + EPS, (z - u).abs() + EPS
    out = torch.cat([ref + b, u + b * pu / (pu + pg)])
    return (torch.relu(out) if relu else out).to(y.dtype)  # relu: derivative 0 at 0, as the op's backward
