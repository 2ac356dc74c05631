"""Reference ``perturb_by_rank`` (SPEC §3.1, the perturbation engine's kernel).

With ``x``, ``x'`` viewed as ``[B, C, F]`` (``C`` channels sharing each of ``F`` features; ``C = 1``
for per-element features), ``rank [B, F]`` (0 = most important) and step counts ``n [K]``:
``out[k·B + b, c, i] = x[b, c, i]`` if ``(rank[b, i] < n_k) == insert`` else ``x'[b, c, i]``.
Insertion (``insert=True``) shows the top ``n_k`` features of x on the baseline; deletion removes
them from x. Output ``[K·B, C, F]``.
"""
from __future__ import annotations

import torch


def perturb_by_rank(x: torch.Tensor, baseline: torch.Tensor, rank: torch.Tensor, counts: torch.Tensor,
                    insert: bool) -> torch.Tensor:
    top = rank.unsqueeze(0).unsqueeze(2) < counts.view(-1, 1, 1, 1)  # [K, B, 1, F]
    keep = top if insert else ~top
    out = torch.where(keep, x.unsqueeze(0), baseline.unsqueeze(0))
    return out.reshape((-1,) + tuple(x.shape[1:]))
