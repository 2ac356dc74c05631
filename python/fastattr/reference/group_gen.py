"""Reference of SOP's GroupGen (You et al., "Sum-of-Parts Models", §3 and App. B; SPEC §6): the patch
embeddings ``e = X W_pᵀ + b_p + pos``, per head ``j`` the attention logits ``(e A_j) eᵀ`` with
``A_j = W_{q,j}ᵀ W_{k,j} / √d`` (one product of ``e`` fewer than ``(W_q e)(W_k e)ᵀ``), and the groups of
:func:`~fastattr.reference.group_masks.group_masks` on them. Torch products in the compute dtype,
differentiable in every floating argument.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..numerics import compute_dtype
from .group_masks import group_masks


def patch_embeddings(x: torch.Tensor, proj_weight: torch.Tensor, proj_bias: Optional[torch.Tensor],
                     position: torch.Tensor) -> torch.Tensor:
    """``e = X W_pᵀ + b_p + pos`` ``[B, P, d]`` (the tensors already in one dtype)."""
    return F.linear(x, proj_weight, proj_bias) + position


def bilinear_forms(query_weight: torch.Tensor, key_weight: torch.Tensor, d: int) -> torch.Tensor:
    """``A_j = W_{q,j}ᵀ W_{k,j} / √d`` ``[h, d, d]`` from the heads' ``[h·d, d]`` weights."""
    h = query_weight.shape[0] // d
    return torch.bmm(query_weight.view(h, d, d).transpose(1, 2), key_weight.view(h, d, d)).div_(math.sqrt(d))


def group_logits(patches: torch.Tensor, proj_weight: torch.Tensor, proj_bias: Optional[torch.Tensor],
                 position: torch.Tensor, query_weight: torch.Tensor, key_weight: torch.Tensor) -> torch.Tensor:
    """``[B, h·P, P]`` logits of ``patches [B, P, D]`` (row ``j·P + p``: head ``j``, query patch ``p``)."""
    dtype = compute_dtype(patches.dtype)
    x, wp, pos, wq, wk = (t.to(dtype) for t in (patches, proj_weight, position, query_weight, key_weight))
    b, n, d = x.shape[0], x.shape[1], wp.shape[0]
    e = patch_embeddings(x, wp, None if proj_bias is None else proj_bias.to(dtype), pos)
    h = wq.shape[0] // d
    if h == 1:
        return torch.bmm(e @ torch.mm(wq.t(), wk).div_(math.sqrt(d)), e.transpose(1, 2))
    q = e @ bilinear_forms(wq, wk, d).transpose(0, 1).reshape(d, h * d)              # every head in one product
    return (q.view(b, n, h, d).transpose(1, 2) @ e.unsqueeze(1).transpose(-1, -2)).reshape(b, h * n, n)


def group_gen(patches: torch.Tensor, proj_weight: torch.Tensor, proj_bias: Optional[torch.Tensor],
              position: torch.Tensor, query_weight: torch.Tensor, key_weight: torch.Tensor, n_groups: int,
              kept: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits [B, h·P, P], masks [B, G, P] bool, rows [B, G], first [B, G])``: :func:`group_logits` and the
    groups :func:`~fastattr.reference.group_masks.group_masks` takes from them."""
    logits = group_logits(patches, proj_weight, proj_bias, position, query_weight, key_weight)
    return (logits, *group_masks(logits.detach(), n_groups, kept))
