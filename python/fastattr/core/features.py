"""Features of an attribution map (SPEC §3.1): *units* are what one mask entry switches — pixels
(all channels of one position, "channel-shared"; the unit of a map with the channel axis reduced)
or elements (a map with the input's shape); ``granularity`` picks them explicitly. *Features* are
the units themselves, or segments of them (``segments``: integer ids; ``patch_size``: a grid of
patches), scored by the sum (default) or mean of the attribution inside (:func:`feature_space`).
Feature groups — segment ids or possibly overlapping binary masks (:func:`group_masks`) — are
applied in a given order: a unit's rank is the position of the first group that holds it
(:func:`group_unit_rank`). Ranking schedules: features sorted by score (stable, descending, ties by
index), step k perturbs the top ``n_k`` (:func:`rank_features`, :func:`step_counts`)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

GRANULARITIES = ("pixel", "element")
SEGMENT_SCORES = ("sum", "mean")


def map_shapes(inputs: torch.Tensor) -> list[tuple]:
    """The attribution map shapes ``inputs`` takes: its own shape (per element) and, with a channel axis,
    the channel-reduced ``[B, H, W]`` and keepdim ``[B, 1, H, W]`` shapes (per pixel)."""
    ishape = tuple(inputs.shape)
    if inputs.dim() < 3:
        return [ishape]
    return [ishape, ishape[:1] + ishape[2:], ishape[:1] + (1,) + ishape[2:]]


def check_attributions(inputs: torch.Tensor, attributions: torch.Tensor) -> torch.Tensor:
    """Validates an attribution map against ``inputs``; returns it as ``[B, d]`` features. A map of the
    input's shape has one feature per element; a channel-reduced one, ``[B, H, W]`` or ``[B, 1, H, W]``
    (Captum's keepdim form), one per pixel."""
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    shape, allowed = tuple(attributions.shape), map_shapes(inputs)
    if shape not in allowed:
        raise ValueError(f"attributions of shape {shape} match neither inputs {allowed[0]} nor the "
                         f"channel-reduced map {' or '.join(map(str, allowed[1:])) or '(no channel axis)'}")
    if not torch.isfinite(attributions).all():
        raise ValueError("attributions contain NaN or Inf")
    return attributions.reshape(shape[0], -1)


def rank_features(scores: torch.Tensor) -> torch.Tensor:
    """``rank[b, i]`` = position of feature i when sorted by score, highest first (stable: ties by index)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return rank


def step_counts(n_features: int, step: Union[int, float, None]) -> torch.Tensor:
    """Numbers of perturbed features at each point of a curve: 0, s, 2s, …, d (last step may be short).

    ``step`` is a feature count (int ≥ 1), a fraction of the features in (0, 1], or None
    (about 64 steps)."""
    if step is None:
        size = max(1, -(-n_features // 64))
    elif isinstance(step, bool):
        raise TypeError("step must be an int, a float fraction or None")
    elif isinstance(step, numbers.Integral):
        step = int(step)
        if step < 1:
            raise ValueError(f"step must be >= 1 feature, got {step}")
        if step > n_features:
            raise ValueError(f"step ({step}) is larger than the number of features ({n_features})")
        size = step
    elif isinstance(step, float):
        if not 0.0 < step <= 1.0:
            raise ValueError(f"step as a fraction must be in (0, 1], got {step}")
        size = fraction_count(step, n_features, "step")
    else:
        raise TypeError(f"step must be an int, a float fraction or None, got {type(step).__name__}")
    counts = list(range(0, n_features, size)) + [n_features]
    return torch.tensor(counts)


def fraction_count(fraction: float, n_features: int, name: str) -> int:
    """``max(1, ⌊fraction · n + ½⌋)`` features (halves round up) for a fraction in (0, 1]; a clear error
    naming ``name``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"{name} must be a fraction in (0, 1], got {fraction!r}")
    return max(1, math.floor(fraction * n_features + 0.5))


@dataclass
class Features:
    """The features of an attribution map: ``scores [B, G]``, the unit kind (``"pixel"`` or
    ``"element"``) and ``n_units`` per example, and ``index [B, U]`` (the feature of each unit; None
    when every unit is its own feature)."""

    scores: torch.Tensor
    index: Optional[torch.Tensor]
    n_units: int
    unit: str

    @property
    def n(self) -> int:
        return self.scores.shape[1]

    def unit_rank(self, rank: torch.Tensor) -> torch.Tensor:
        """A per-feature rank ``[B, G]`` as the per-unit rank map the ranking kernel reads."""
        return rank if self.index is None else rank.gather(1, self.index)

    def unit_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Feature masks ``[B or 1, K, G]`` as unit masks ``[B', K, U]``."""
        if self.index is None:
            return masks
        batch = max(masks.shape[0], self.index.shape[0])
        idx = self.index.expand(batch, -1).unsqueeze(1).expand(-1, masks.shape[1], -1)
        return masks.expand(batch, -1, -1).gather(2, idx)


def unit_shape(inputs: torch.Tensor, unit: str) -> tuple:
    """The map shape of one example: spatial dims for pixels, the input's own shape for elements."""
    return tuple(inputs.shape[2:]) if unit == "pixel" else tuple(inputs.shape[1:])


def _units(inputs: torch.Tensor, granularity: Optional[str]) -> list[str]:
    if granularity is not None and granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES} or None, got {granularity!r}")
    kinds = ["pixel", "element"] if inputs.dim() >= 3 else ["element"]
    if granularity is not None and granularity not in kinds:
        raise ValueError("granularity='pixel' needs inputs with a channel axis [B, C, ...]")
    return [granularity] if granularity else kinds


def _segment_ids(inputs: torch.Tensor, segments: torch.Tensor, granularity: Optional[str],
                 name: str = "segments", prefer: Optional[str] = None) -> tuple[torch.Tensor, str]:
    """Integer segment ids of map shape (per example or shared) as ``[B, U]`` ids 0..G−1 and the unit.
    Without ``granularity``, the shapes of ``prefer``'s units are tried first (the map's own unit: a
    shared ``[C, H, W]`` element segmentation is not mistaken for per-example pixel segments when
    B = C)."""
    if not isinstance(segments, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer ids, got {type(segments).__name__}")
    if segments.is_floating_point() or segments.is_complex() or segments.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer segment ids, got dtype {segments.dtype}")
    batch = inputs.shape[0]
    expected = []
    for unit in sorted(_units(inputs, granularity), key=lambda u: u != prefer):
        shape = unit_shape(inputs, unit)
        expected += [(batch,) + shape, shape]
        if tuple(segments.shape) in ((batch,) + shape, shape):
            ids = segments.to(device=inputs.device, dtype=torch.long).reshape(-1, math.prod(shape))
            break
    else:
        raise ValueError(f"{name} of shape {tuple(segments.shape)} match none of the map shapes "
                         f"{', '.join(str(list(s)) for s in expected)}")
    if ids.numel() == 0 or ids.min() < 0:
        raise ValueError(f"{name} must be non-negative integer ids")
    n_groups = int(ids.max()) + 1
    sizes = torch.zeros(ids.shape[0], n_groups, dtype=torch.long, device=ids.device)
    sizes.scatter_add_(1, ids, torch.ones_like(ids))
    empty = (sizes == 0).nonzero()
    if len(empty):
        b, g = empty[0].tolist()
        raise ValueError(f"{name}: id {g} is empty in example {b}; ids must run 0..G-1 in every example")
    return ids.expand(batch, -1), unit


def patch_segments(spatial: Sequence[int], patch_size: Union[int, Sequence[int]]) -> torch.Tensor:
    """Segment ids of a grid of patches over ``spatial`` (row-major; edge patches may be smaller)."""
    sizes = (patch_size,) * len(spatial) if isinstance(patch_size, int) else tuple(patch_size)
    bad = [p for p in sizes if isinstance(p, bool) or not isinstance(p, int) or p < 1]
    if len(sizes) != len(spatial) or bad:
        raise ValueError(f"patch_size must be an int >= 1 or one per spatial dim {tuple(spatial)}, "
                         f"got {patch_size!r}")
    ids = torch.zeros(tuple(spatial), dtype=torch.long)
    for axis, (n, p) in enumerate(zip(spatial, sizes)):
        view = [1] * len(spatial)
        view[axis] = n
        ids = ids * -(-n // p) + (torch.arange(n) // p).view(view)
    return ids


def map_unit(inputs: torch.Tensor, attributions: torch.Tensor) -> str:
    """``"element"`` for a map of the input's shape, ``"pixel"`` for a channel-reduced one."""
    return "element" if tuple(attributions.shape) == tuple(inputs.shape) else "pixel"


def unit_map(inputs: torch.Tensor, attributions: torch.Tensor, unit: str) -> torch.Tensor:
    """The map as ``[B, U]`` values over ``unit``s (checked; a per-element map is summed over channels
    for pixels)."""
    flat = check_attributions(inputs, attributions)
    have = map_unit(inputs, attributions)
    if unit == "pixel" and have == "element":
        return flat.reshape(inputs.shape[0], inputs.shape[1], -1).sum(1)
    if unit == "element" and have == "pixel" and inputs.shape[1] != 1:
        raise ValueError("granularity='element' needs attributions of the input's shape "
                         f"{tuple(inputs.shape)}, got {tuple(attributions.shape)}")
    return flat


def feature_layout(inputs: torch.Tensor, *, granularity: Optional[str] = None, segments=None, patch_size=None,
                   default: str = "pixel") -> tuple[str, Optional[torch.Tensor]]:
    """The unit kind and the segment id ``[B, U]`` of each unit (None: every unit is a feature)."""
    if segments is not None and patch_size is not None:
        raise ValueError("give segments or patch_size, not both")
    if segments is not None:
        ids, unit = _segment_ids(inputs, segments, granularity, prefer=default)
        return unit, ids
    if patch_size is not None:
        if _units(inputs, granularity or "pixel") != ["pixel"]:
            raise ValueError("patch_size makes patches of pixels: it needs granularity='pixel' or None")
        ids = patch_segments(inputs.shape[2:], patch_size).reshape(1, -1).to(inputs.device)
        return "pixel", ids.expand(inputs.shape[0], -1)
    return _units(inputs, granularity or default)[0], None


def feature_space(inputs: torch.Tensor, attributions: torch.Tensor, *, granularity: Optional[str] = None,
                  segments: Optional[torch.Tensor] = None, patch_size=None,
                  segment_score: str = "sum") -> Features:
    """The features of ``attributions`` (shape checked against ``inputs``; NaN/Inf rejected).

    ``granularity`` ``"pixel"`` (channel-shared; a per-element map is summed over channels) or
    ``"element"``; None: from the map's shape (or the segments'). ``segments``: integer ids 0..G−1
    of map shape, per example ``[B, *map]`` or shared ``[*map]``; ``patch_size``: a patch grid over
    the spatial dims (pixel units). A segment's score is the ``segment_score`` (``"sum"`` or
    ``"mean"``) of the attribution inside it."""
    check_attributions(inputs, attributions)
    if segment_score not in SEGMENT_SCORES:
        raise ValueError(f"segment_score must be one of {SEGMENT_SCORES}, got {segment_score!r}")
    unit, ids = feature_layout(inputs, granularity=granularity, segments=segments, patch_size=patch_size,
                               default=map_unit(inputs, attributions))
    flat = unit_map(inputs, attributions, unit)
    if ids is None:
        return Features(flat, None, flat.shape[1], unit)
    scores = torch.zeros(flat.shape[0], int(ids.max()) + 1, dtype=flat.dtype, device=flat.device)
    scores.scatter_add_(1, ids, flat)
    if segment_score == "mean":
        scores = scores / torch.zeros_like(scores).scatter_add_(1, ids, torch.ones_like(flat))
    return Features(scores, ids, flat.shape[1], unit)


def group_masks(inputs: torch.Tensor, groups: torch.Tensor, *, granularity: Optional[str] = None
                ) -> tuple[torch.Tensor, str]:
    """Feature groups as bool masks ``[B or 1, G, U]`` over units, and the unit kind.

    ``groups``: integer segment ids of map shape (disjoint groups, see :func:`feature_space`), or
    binary masks (bool, or float 0/1) with a group axis — ``[B, G, *map]`` per example or
    ``[G, *map]`` shared — that may overlap. Integer tensors are always read as segment ids: pass
    0/1 masks from numpy or OpenCV as bool. Every group must hold at least one unit."""
    if not isinstance(groups, torch.Tensor):
        raise TypeError(f"groups must be a torch.Tensor, got {type(groups).__name__}")
    batch = inputs.shape[0]
    if not (groups.is_floating_point() or groups.dtype == torch.bool):
        try:
            ids, unit = _segment_ids(inputs, groups, granularity, name="groups")
        except ValueError as e:
            raise ValueError(f"{e} (integer groups are segment ids; give 0/1 group masks as bool)") from None
        n_groups = int(ids.max()) + 1
        masks = ids.unsqueeze(1) == torch.arange(n_groups, device=ids.device).view(1, -1, 1)
        return masks, unit
    expected = []
    for unit in _units(inputs, granularity):
        shape = unit_shape(inputs, unit)
        expected += [f"[{batch}, G, {', '.join(map(str, shape))}]", f"[G, {', '.join(map(str, shape))}]"]
        if groups.dim() == len(shape) + 2 and groups.shape[0] == batch and tuple(groups.shape[2:]) == shape:
            masks = groups.reshape(batch, groups.shape[1], math.prod(shape))
            break
        if groups.dim() == len(shape) + 1 and tuple(groups.shape[1:]) == shape:
            masks = groups.reshape(1, groups.shape[0], math.prod(shape))
            break
    else:
        raise ValueError(f"groups of shape {tuple(groups.shape)} match none of the group mask shapes "
                         f"{', '.join(expected)} (or integer segment ids of map shape)")
    if groups.is_floating_point() and not ((masks == 0) | (masks == 1)).all():
        raise ValueError("groups given as float masks must be binary (0 or 1)")
    masks = masks.to(device=inputs.device, dtype=torch.bool)
    if masks.shape[1] == 0:
        raise ValueError("groups holds no group")
    empty = (~masks.any(-1)).nonzero()
    if len(empty):
        b, g = empty[0].tolist()
        raise ValueError(f"groups: group {g} of example {b} is empty")
    return masks, unit


def group_scores(inputs: torch.Tensor, attributions: torch.Tensor, masks: torch.Tensor, unit: str,
                 segment_score: str = "sum") -> torch.Tensor:
    """Group scores ``c [B, G]``: ``attributions`` of shape ``[B, G]`` are taken as given (a grouped
    attribution, SOP Def. 3; also when a ``[B, d]`` map could be read either way); a map is reduced
    over each group's units by ``segment_score`` (``"sum"`` or ``"mean"``)."""
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if segment_score not in SEGMENT_SCORES:
        raise ValueError(f"segment_score must be one of {SEGMENT_SCORES}, got {segment_score!r}")
    batch, n_groups = inputs.shape[0], masks.shape[1]
    shape = tuple(attributions.shape)
    if shape == (batch, n_groups):
        if not torch.isfinite(attributions).all():
            raise ValueError("attributions contain NaN or Inf")
        return attributions
    if shape not in map_shapes(inputs):
        raise ValueError(f"attributions of shape {shape} are neither group scores [{batch}, {n_groups}] nor "
                         f"a map of shape {' or '.join(map(str, map_shapes(inputs)))}")
    flat = unit_map(inputs, attributions, unit)
    m = masks.to(flat.dtype).expand(batch, -1, -1)
    scores = torch.einsum("bgu,bu->bg", m, flat)
    return scores / m.sum(-1) if segment_score == "mean" else scores


def group_unit_rank(masks: torch.Tensor, group_rank: torch.Tensor) -> torch.Tensor:
    """``[B, U]``: for each unit the position (``group_rank``) of the first group that holds it, G
    when none does — so perturbing units of rank < k perturbs the union of the first k groups."""
    batch, n_groups = group_rank.shape
    out = torch.empty(batch, masks.shape[-1], dtype=torch.long, device=group_rank.device)
    for b in range(batch):
        m = masks[b if masks.shape[0] > 1 else 0]
        out[b] = torch.where(m, group_rank[b].unsqueeze(1), n_groups).amin(0)
    return out
