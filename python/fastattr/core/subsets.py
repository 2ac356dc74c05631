"""Random and exhaustive feature subsets, the mask sources of the subset metrics, the SOP errors and
the surrogate methods: fixed-size or Bernoulli subsets from a seeded generator, drawn on the CPU so
every device sees the same subsets, and every non-empty subset of a few features."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .contract import make_generator

_KEYS = 1 << 20  # random keys drawn at a time for fixed-size subsets (4 MiB)


def smallest_keys(keys: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, K, F]``: feature j of subset k is in when ``keys[b, k, j]`` is among the
    ``sizes[k]`` smallest of its row, ties taken in index order (a stable ascending sort).

    The threshold of each row is the largest of its ``size`` smallest keys (an unsorted ``topk``, a
    partial selection, 2–5× cheaper than a sort); the rare rows with a tie at the threshold are redone
    with a stable sort, so every subset has exactly its size."""
    masks = torch.empty(keys.shape, dtype=torch.bool, device=keys.device)
    for size in sizes.unique().tolist():
        cols = (sizes == size).nonzero().squeeze(1)
        part = keys if len(cols) == keys.shape[1] else keys[:, cols]
        threshold = part.topk(size, -1, largest=False, sorted=False).values.amax(-1, keepdim=True)
        masks[:, cols] = part <= threshold
    wrong = (masks.view(torch.uint8).sum(-1, dtype=torch.int32) != sizes).nonzero()
    for b, k in wrong.tolist():
        order = keys[b, k].sort(stable=True).indices
        masks[b, k] = False
        masks[b, k, order[:int(sizes[k])]] = True
    return masks


def random_subsets(batch: int, n_subsets: int, n_features: int, *,
                   size: Union[int, Sequence[int], None] = None, p: Optional[float] = None, generator=None,
                   nonempty: bool = False, device=None) -> torch.Tensor:
    """Random feature subsets, bool ``[B, K, F]``, drawn on the CPU from ``generator`` (the same subsets
    on every device): exactly ``size`` features each (one size per subset when a sequence is given),
    or each feature in with probability ``p`` (Bernoulli; ``nonempty=True`` redraws empty subsets).
    Fixed-size subsets are selected on ``device`` (default: the CPU); every result is returned there."""
    if (size is None) == (p is None):
        raise ValueError("give exactly one of size (fixed-size subsets) and p (Bernoulli subsets)")
    gen = make_generator(generator)
    if size is not None:
        sizes = [size] * n_subsets if isinstance(size, int) else list(size)
        if len(sizes) != n_subsets or any(not 1 <= s <= n_features for s in sizes):
            raise ValueError(f"subset sizes must be in [1, {n_features}], got {sorted(set(sizes))[:5]}")
        # the keys of as many examples at a time as _KEYS holds (the same draws as one [B, K, F] call)
        sizes = torch.tensor(sizes, device=device)
        masks = torch.empty(batch, n_subsets, n_features, dtype=torch.bool, device=device)
        per = max(1, _KEYS // max(1, n_subsets * n_features))
        for b in range(0, batch, per):
            keys = torch.rand(min(per, batch - b), n_subsets, n_features, generator=gen).to(device)
            masks[b:b + per] = smallest_keys(keys, sizes)
        return masks
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"p must be a probability in (0, 1], got {p!r}")
    masks = torch.rand(batch, n_subsets, n_features, generator=gen) < p
    for _ in range(10_000):
        empty = ~masks.any(-1)
        if not nonempty or not empty.any():
            return masks.to(device)
        masks[empty] = torch.rand(int(empty.sum()), n_features, generator=gen) < p
    raise ValueError(f"p={p} is too small to draw non-empty subsets of {n_features} features")


def all_subsets(n_features: int) -> torch.Tensor:
    """Every non-empty subset of ``n_features`` features, bool ``[2^d − 1, d]`` (row i: bits of i + 1)."""
    if not 1 <= n_features <= 24:
        raise ValueError(f"all subsets need 1 <= d <= 24 features, got {n_features}")
    codes = torch.arange(1, 2 ** n_features).unsqueeze(1)
    return ((codes >> torch.arange(n_features)) & 1).bool()
