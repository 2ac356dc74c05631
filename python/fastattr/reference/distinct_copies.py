"""Reference of SOP's distinct masked copies (You et al., "Sum-of-Parts Models", §3; SPEC §6): for bool
group masks ``[B, G, P]`` over ``P`` patches and ``first [B, G]`` (:func:`first_equal_group`), the groups
``(b, i)`` with ``first[b, i] = i`` are the distinct ones, numbered example-major; copy ``n`` of distinct
group ``(b, i)`` is ``x[b] ⊙ masks[b, i][unit_patch]`` (every unit ``l`` of ``x [B, C, L]`` times its
patch's 0/1 value, a product) and ``slot[b, i]`` is the copy group ``i`` reads. Torch indexing.
"""
from __future__ import annotations

import torch


def distinct_slots(first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(slot [B, G], rows [N])`` of a valid ``first [B, G]``: the copy each group reads and the flat group
    ``b·G + i`` of each copy, the distinct groups numbered example-major."""
    b, g = first.shape
    keep = (first == torch.arange(g, device=first.device)).reshape(-1)
    return (keep.cumsum(0) - 1).view(b, g).gather(1, first), keep.nonzero().squeeze(1)


def distinct_copies(x: torch.Tensor, masks: torch.Tensor, first: torch.Tensor,
                    unit_patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(copies [N, C, L], slot [B, G])`` of ``x [B, C, L]``, bool ``masks [B, G, P]``, a valid ``first [B, G]``
    and ``unit_patch [L]`` (each unit's patch)."""
    b, g = first.shape
    slot, rows = distinct_slots(first)
    values = masks.reshape(b * g, -1).index_select(0, rows)[:, unit_patch].to(x.dtype)   # [N, L]
    return x.index_select(0, torch.div(rows, g, rounding_mode="floor")) * values.unsqueeze(1), slot
