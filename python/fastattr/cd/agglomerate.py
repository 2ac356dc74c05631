"""Agglomerative contextual decomposition, ACD (Singh et al. 2019, Sec. 2.2; SPEC §4.3).

Units are words (1-D) or ``sweep × sweep`` pixel blocks (2-D), scored by CD. Growth: each iteration
selects the unselected units whose score is at or above the ``percentile`` of the unselected scores;
connected components of everything selected (2-neighbourhood in 1-D, 8-neighbourhood in 2-D) are
the groups; every unselected unit bordering a group is re-scored by ``CD(group ∪ unit) − CD(group)``
(its best gain over the groups it borders). After ``n_iters`` growth steps (or when everything is
selected) the groups merge pairwise by ``CD(C1 ∪ C2) − max(CD(C1), CD(C2))`` until one remains.
Every CD evaluation of one iteration — all groups, all candidate unions — is one batch of masks.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..core import Target, model_entry, resolve_target
from .core import accepts_backend, contextual_decomposition

__all__ = ["Hierarchy", "agglomerate_1d", "agglomerate_2d", "plot_hierarchy"]


@dataclass
class Hierarchy:
    """ACD's result as plain data.

    ``unit_scores``: CD score of every single unit (grid shaped). ``levels``: one entry per step,
    each ``{"labels": int array on the unit grid (0 = not in a group, i = group i),
    "scores": {group id: CD score}}``; the last level holds a single group. ``sweep``: unit size in
    input positions; ``target``: the explained class; ``spatial``: the input's spatial shape (edge
    units are cropped to it when ``sweep`` does not divide it; None: not cropped).
    """

    unit_scores: np.ndarray
    levels: List[dict] = field(default_factory=list)
    sweep: int = 1
    target: int = 0
    n_growth: int = 0
    spatial: Optional[Tuple[int, ...]] = None

    def to_dict(self) -> dict:
        return {"unit_scores": self.unit_scores.tolist(), "sweep": self.sweep, "target": self.target,
                "n_growth": self.n_growth, "spatial": None if self.spatial is None else list(self.spatial),
                "levels": [{"labels": lv["labels"].tolist(), "scores": {int(k): float(v) for k, v in
                                                                       lv["scores"].items()}} for lv in self.levels]}

    def input_mask(self, level: int, group: int) -> np.ndarray:
        """Boolean mask over input positions (``spatial``) of one group of one level."""
        grid = self.levels[level]["labels"] == group
        for axis in range(grid.ndim):
            grid = np.repeat(grid, self.sweep, axis=axis)
        if self.spatial is not None:
            grid = grid[tuple(slice(0, s) for s in self.spatial)]
        return grid


def _unit_masks(groups: np.ndarray, sweep: int, spatial: tuple) -> Tensor:
    """``[K, *grid]`` booleans → ``[K, *spatial]`` float masks (blocks of ``sweep`` cropped to the input)."""
    m = torch.from_numpy(groups.astype(np.float32))
    for axis in range(1, m.dim()):
        m = m.repeat_interleave(sweep, dim=axis)
    index = (slice(None),) + tuple(slice(0, s) for s in spatial)
    return m[index]


class _Scorer:
    """CD score of the target class for batches of unit-grid masks (one CD call per batch)."""

    def __init__(self, model, x, target, sweep, spatial, channel_axis, max_batch):
        self.model, self.x, self.target = model, x, target
        self.sweep, self.spatial, self.channel_axis = sweep, spatial, channel_axis
        self.max_batch = max_batch
        self.evaluations = 0

    def __call__(self, groups: np.ndarray) -> np.ndarray:
        if len(groups) == 0:
            return np.zeros(0)
        masks = _unit_masks(np.asarray(groups), self.sweep, self.spatial)
        if self.channel_axis:
            masks = masks[:, None]
        masks = masks.to(device=self.x.device, dtype=self.x.dtype if self.x.is_floating_point() else torch.float32)
        beta, _ = contextual_decomposition(self.model, self.x, masks, target=self.target, max_batch=self.max_batch)
        self.evaluations += len(groups)
        return beta[0].double().cpu().numpy()


def _agglomerate(scorer: _Scorer, grid: tuple, structure: np.ndarray, percentile: float, n_iters: int,
                 sweep: int, target: int, spatial: tuple) -> Hierarchy:
    from scipy import ndimage  # optional dependency (ships with scikit-learn); imported on use

    n_units = int(np.prod(grid))
    singles = np.eye(n_units, dtype=bool).reshape((n_units,) + grid)
    unit_scores = scorer(singles).reshape(grid)
    scores = unit_scores.copy()
    selected = np.zeros(grid, dtype=bool)
    hierarchy = Hierarchy(unit_scores=unit_scores, sweep=sweep, target=target, spatial=tuple(spatial))
    labels = np.zeros(grid, dtype=np.int64)
    for _ in range(n_iters):
        if selected.all():
            break
        free = scores[~selected]
        threshold = np.percentile(free, percentile)
        selected = selected | ((scores >= threshold) & ~selected)
        labels, n_groups = ndimage.label(selected, structure=structure)
        group_masks = np.stack([labels == g for g in range(1, n_groups + 1)])
        candidates, owners, units = [], [], []
        for g, gm in enumerate(group_masks):
            border = ndimage.binary_dilation(gm, structure=structure) & ~selected
            for unit in zip(*np.nonzero(border)):
                cand = gm.copy()
                cand[unit] = True
                candidates.append(cand)
                owners.append(g)
                units.append(unit)
        batch = np.concatenate([group_masks, np.stack(candidates)]) if candidates else group_masks
        result = scorer(batch)
        group_scores, cand_scores = result[:n_groups], result[n_groups:]
        hierarchy.levels.append({"labels": labels.copy(),
                                 "scores": {g + 1: float(s) for g, s in enumerate(group_scores)}})
        gains = {}
        for owner, unit, s in zip(owners, units, cand_scores):
            gains[unit] = max(gains.get(unit, -np.inf), s - group_scores[owner])
        for unit, gain in gains.items():
            scores[unit] = gain
    hierarchy.n_growth = len(hierarchy.levels)
    current = dict(hierarchy.levels[-1]["scores"])
    while len(current) > 1:
        ids = sorted(current)
        pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
        unions = np.stack([(labels == a) | (labels == b) for a, b in pairs])
        union_scores = scorer(unions)
        gains = [s - max(current[a], current[b]) for (a, b), s in zip(pairs, union_scores)]
        best = int(np.argmax(gains))
        a, b = pairs[best]
        labels = labels.copy()
        labels[labels == b] = a
        current.pop(b)
        current[a] = float(union_scores[best])
        hierarchy.levels.append({"labels": labels, "scores": dict(current)})
    return hierarchy


def _single(inputs: Tensor, per_example_dims: int) -> Tensor:
    """One example, with or without its batch axis of 1."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() == per_example_dims:
        return inputs[None]
    if inputs.dim() == per_example_dims + 1 and inputs.shape[0] == 1:
        return inputs
    raise ValueError(f"inputs must be one example ({per_example_dims} dims, or {per_example_dims + 1} with a "
                     f"batch of 1), got shape {tuple(inputs.shape)}")


def _check(percentile: float, n_iters: int, sweep: int) -> "tuple[float, int, int]":
    """Checked ``(percentile, n_iters, sweep)`` as Python numbers (numpy scalars accepted)."""
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    if isinstance(n_iters, bool) or not isinstance(n_iters, numbers.Integral) or n_iters < 1:
        raise ValueError(f"n_iters must be a positive int, got {n_iters!r}")
    if isinstance(sweep, bool) or not isinstance(sweep, numbers.Integral) or sweep < 1:
        raise ValueError(f"sweep must be a positive int, got {sweep!r}")
    return float(percentile), int(n_iters), int(sweep)


@accepts_backend
@model_entry
def agglomerate_2d(model: nn.Module, inputs: Tensor, target: Target = None, *, sweep: int = 1,
                   percentile: float = 99.0, n_iters: int = 5, max_batch: Optional[int] = None) -> Hierarchy:
    """ACD on one image ``[C, H, W]`` (or ``[1, C, H, W]``): units are ``sweep × sweep`` blocks shared
    across channels, 8-connected groups. Returns a :class:`Hierarchy`.

    Example: ``h = agglomerate_2d(model, x[0], sweep=2); plot_hierarchy(h, x[0])``."""
    percentile, n_iters, sweep = _check(percentile, n_iters, sweep)
    x = _single(inputs, 3)
    t = int(resolve_target(model, x, target)[0])
    spatial = tuple(x.shape[2:])
    grid = tuple(-(-s // sweep) for s in spatial)
    scorer = _Scorer(model, x, t, sweep, spatial, True, max_batch)
    return _agglomerate(scorer, grid, np.ones((3, 3), dtype=bool), percentile, n_iters, sweep, t, spatial)


@accepts_backend
@model_entry
def agglomerate_1d(model: nn.Module, inputs: Tensor, target: Target = None, *, sweep: int = 1,
                   percentile: float = 99.5, n_iters: int = 5, max_batch: Optional[int] = None) -> Hierarchy:
    """ACD on one sequence: ``[T]``, ``[1, T]`` or ``[1, C, T]`` (token ids for a model starting with an
    Embedding, or features); units are ``sweep`` consecutive positions, groups are runs of
    adjacent units. Returns a :class:`Hierarchy`."""
    percentile, n_iters, sweep = _check(percentile, n_iters, sweep)
    x = _single(inputs, 1) if inputs.dim() == 1 else _single(inputs, inputs.dim() - 1)
    t = int(resolve_target(model, x, target)[0])
    spatial = (x.shape[-1],)
    grid = (-(-spatial[0] // sweep),)
    scorer = _Scorer(model, x, t, sweep, spatial, x.dim() == 3, max_batch)
    return _agglomerate(scorer, grid, np.ones(3, dtype=bool), percentile, n_iters, sweep, t, spatial)


def plot_hierarchy(hierarchy: Hierarchy, image: Optional[Tensor] = None, levels: Optional[List[int]] = None,
                   ax=None):
    """Draw the groups of selected levels side by side (2-D: over the image; 1-D: one row per level).
    Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    levels = list(range(len(hierarchy.levels))) if levels is None else levels
    if not levels:
        raise ValueError("hierarchy has no levels to plot")
    if ax is None:
        fig, axes = plt.subplots(1, len(levels), figsize=(2.2 * len(levels), 2.4), squeeze=False)
        axes = axes[0]
    else:
        axes = np.atleast_1d(ax)
        fig = axes[0].figure
    for a, lv in zip(axes, levels):
        labels = hierarchy.levels[lv]["labels"]
        grid = labels if labels.ndim == 2 else labels[None]
        if image is not None and labels.ndim == 2:
            img = image.detach().float().cpu()
            img = img.mean(0) if img.dim() == 3 else img
            a.imshow(img.numpy(), cmap="gray")
            full = np.kron(grid, np.ones((hierarchy.sweep, hierarchy.sweep)))[:img.shape[-2], :img.shape[-1]]
            a.imshow(np.ma.masked_equal(full, 0), cmap="tab10", alpha=0.55, vmin=1, vmax=10)
        else:
            a.imshow(np.ma.masked_equal(grid, 0), cmap="tab10", vmin=1, vmax=10, aspect="auto")
        best = max(hierarchy.levels[lv]["scores"].values())
        a.set_title(f"level {lv}\nbest {best:.2f}", fontsize=8)
        a.set_xticks([])
        a.set_yticks([])
    return fig
