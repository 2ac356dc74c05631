"""Reference of SOP GroupSelect (You et al., "Sum-of-Parts Models", §3; SPEC §6), per example ``b`` and the
features ``z[slot[b, g]]`` of its groups: partial logits ``y[b, g] = W z + bias``, group scores
``s[b, c, g] = Q[c] · z`` (``Q``: the class queries ``W_q' C`` folded with the key projection ``W_k'`` and
``1/√h``), their sparsemax over the groups per class ``p[b, c] = sparsemax(s[b, c])``, and the logits
``Σ_g p[b, c, g] y[b, g, c]``. Torch products in the compute dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..numerics import compute_dtype
from .sparsemax import sparsemax


def group_select(z: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(p [B, C, G], y [B, G, C], logits [B, C])`` of features ``z [N, h]``, ``slot [B, G]`` (rows of ``z``),
    the class head ``weight [C, h]`` / ``bias [C]`` (or None) and the folded queries ``query [C, h]``."""
    dtype = compute_dtype(z.dtype)
    rows = z.to(dtype)[slot]                                              # [B, G, h]
    y = rows @ weight.to(dtype).T
    if bias is not None:
        y = y + bias.to(dtype)
    p = sparsemax(torch.einsum("ch,bgh->bcg", query.to(dtype), rows), -1)
    return p, y, (p * y.transpose(1, 2)).sum(-1)
