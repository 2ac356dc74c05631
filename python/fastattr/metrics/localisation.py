"""Localisation metrics (SPEC §3.2): the pointing game (Zhang et al. 2016), IoU of a thresholded
map with a box or mask (thesis ch. 8), and Effective Heat Ratios (EHR; thesis ch. 6, App. F).

They compare the map with a human annotation and never run the model: ``model`` and ``target``
are accepted for the common metric signature and unused. The map is per pixel: a map of the
input's shape is summed over channels. Regions are ``boxes`` ``[B, 4]`` / ``[4]`` as
``(x0, y0, x1, y1)`` integer pixel coordinates, half-open like slicing (``map[y0:y1, x0:x1]``), or
bool ``masks`` of the map's shape ``[B, *map]`` / ``[*map]`` (rasterise several boxes into one mask).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core import Target, check_flag, check_inputs, fraction_count, rank_features, unit_map

NORMALIZATIONS = ("max", "minmax", None)


def _map_and_region(inputs, attributions, boxes, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """The map ``[B, U]`` (float64) and the region ``[B, U]`` (bool) over pixels (elements for 2-D inputs)."""
    check_inputs(inputs)
    unit = "pixel" if inputs.dim() >= 3 else "element"
    amap = unit_map(inputs, attributions, unit).double()
    shape = tuple(inputs.shape[2:]) if unit == "pixel" else tuple(inputs.shape[1:])
    batch = inputs.shape[0]
    if (boxes is None) == (masks is None):
        raise ValueError("give exactly one of boxes and masks")
    if masks is not None:
        if not isinstance(masks, torch.Tensor) or masks.is_complex():
            raise TypeError("masks must be a bool (or 0/1) tensor")
        if tuple(masks.shape) not in ((batch,) + shape, shape):
            raise ValueError(f"masks of shape {tuple(masks.shape)} match neither {[batch, *shape]} "
                             f"nor {list(shape)}")
        if not ((masks == 0) | (masks == 1)).all():
            raise ValueError("masks must be binary (bool or 0/1)")
        region = masks.to(device=amap.device, dtype=torch.bool).reshape(-1, amap.shape[1]).expand(batch, -1)
    else:
        if len(shape) != 2:
            raise ValueError(f"boxes need 2-D maps [B, H, W]; got maps of shape {list(shape)} (use masks)")
        b = torch.as_tensor(boxes).to(device="cpu", dtype=torch.float64)
        if b.dim() == 1:
            b = b.unsqueeze(0).expand(batch, -1)
        height, width = shape
        if tuple(b.shape) != (batch, 4) or not torch.equal(b, b.round()):
            raise ValueError(f"boxes must be integer (x0, y0, x1, y1) of shape [{batch}, 4] or [4], "
                             f"got {tuple(b.shape)}")
        x0, y0, x1, y1 = b.long().unbind(1)
        if ((x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height) | (x0 >= x1) | (y0 >= y1)).any():
            raise ValueError(f"boxes must satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}, "
                             f"got {b.long().tolist()}")
        ys = torch.arange(height).view(1, -1, 1)
        xs = torch.arange(width).view(1, 1, -1)
        region = ((ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1)) & (xs >= x0.view(-1, 1, 1))
                  & (xs < x1.view(-1, 1, 1))).reshape(batch, -1).to(amap.device)
    if not region.any(1).all():
        raise ValueError("masks: the region is empty in some example")
    return amap, region


def _normalise(amap: torch.Tensor, how: Optional[str]) -> torch.Tensor:
    """``"max"``: ``max(a, 0) / max a``; ``"minmax"``: ``(a − min) / (max − min)``; None: as given
    (must lie in [0, 1]). A map with nothing to scale (all ≤ 0, or constant) becomes 0."""
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {how!r}")
    if how is None:
        if (amap < 0).any() or (amap > 1).any():
            raise ValueError("normalize=None needs attributions in [0, 1]")
        return amap
    if how == "max":
        pos = amap.clamp_min(0)
        top = pos.amax(1, keepdim=True)
        return torch.where(top > 0, pos / top.clamp_min(1e-300), torch.zeros_like(pos))
    lo, hi = amap.amin(1, keepdim=True), amap.amax(1, keepdim=True)
    return torch.where(hi > lo, (amap - lo) / (hi - lo).clamp_min(1e-300), torch.zeros_like(amap))


def pointing_game(model, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *,
                  boxes=None, masks: Optional[torch.Tensor] = None, tolerance: float = 0.0) -> torch.Tensor:
    """Pointing game (Zhang et al. 2016; thesis ch. 8): 1.0 where the map's maximum (the first one in
    row-major order on ties) lies inside the region, or within ``tolerance`` pixels (Euclidean) of
    it; else 0.0. Returns float ``[B]``; higher is better.

    Example::

        >>> hits = fastattr.metrics.pointing_game(None, x, attr, boxes=torch.tensor([[2, 2, 6, 6]]))
    """
    amap, region = _map_and_region(inputs, attributions, boxes, masks)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    peak = amap.argmax(1)
    if tolerance == 0:
        return region.gather(1, peak[:, None]).squeeze(1).to(amap.dtype)
    shape = tuple(inputs.shape[2:]) if inputs.dim() >= 3 else tuple(inputs.shape[1:])
    flat = torch.arange(amap.shape[1], device=amap.device)
    coords = torch.stack(torch.unravel_index(flat, shape), 1).double()
    dist2 = ((coords.unsqueeze(0) - coords[peak].unsqueeze(1)) ** 2).sum(-1)  # [B, U]
    near = torch.where(region, dist2, torch.full_like(dist2, float("inf"))).amin(1)
    return (near <= tolerance ** 2).to(amap.dtype)


def iou(model, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *, boxes=None,
        masks: Optional[torch.Tensor] = None, threshold: float = 0.5, top_fraction: Optional[float] = None,
        normalize: Optional[str] = "max") -> torch.Tensor:
    """Intersection over union of the thresholded map with a box or mask (thesis ch. 8):
    ``|M ∩ R| / |M ∪ R|`` with ``M`` = pixels where the map normalised to [0, 1] (``normalize``:
    ``"max"`` — ``max(a, 0) / max a``, default —, ``"minmax"``, or None) is ≥ ``threshold``, or —
    with ``top_fraction`` — the top ``⌈q·d⌋`` pixels by value (ties by index). Returns float
    ``[B]``; higher is better.

    Example::

        >>> fastattr.metrics.iou(None, x, attr, masks=seg, top_fraction=0.1)
    """
    amap, region = _map_and_region(inputs, attributions, boxes, masks)
    if top_fraction is not None:
        k = fraction_count(top_fraction, amap.shape[1], "top_fraction")
        chosen = rank_features(amap) < k
    else:
        number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not number or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        chosen = _normalise(amap, normalize) >= threshold
    inter = (chosen & region).sum(1).double()
    union = (chosen | region).sum(1).double()
    return inter / union


def ehr(model, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None, *, boxes=None,
        masks: Optional[torch.Tensor] = None, base_threshold: float = 0.1, n_quantiles: int = 11,
        normalize: Optional[str] = "max", curves: bool = False):
    """Effective Heat Ratios (thesis ch. 6 §4.5, App. F; SPEC §3.2; higher is better).

    The map ``a`` is normalised to [0, 1] (``normalize="max"``: ``max(a, 0) / max a``, default;
    ``"minmax"``; None: ``a`` already in [0, 1]); values below ``base_threshold`` (0.1) are zeroed.
    For the quantile levels ``q`` in ``linspace(0, 1, n_quantiles)`` of the remaining (non-zero)
    values, ``t_q = min(quantile_q, 0.99 · max a)`` and
    ``ratio_q = Σ_{p ∈ R, a_p ≥ t_q} a_p / #{p : a_p ≥ t_q}``; EHR is the trapezoid area of the
    ratios over q. A map with no value left scores 0. **Convention:** "max" normalisation, so a
    map that also heats the outside of the region (App. F, Fig. 11b) scores lower than one that
    heats only the inside, as the thesis intends; min-max normalisation would score them equal.
    With ``curves=True`` returns ``(ehr [B], ratios [B, Q], q [Q])``.

    Example::

        >>> fastattr.metrics.ehr(None, x, attr, boxes=bbox)
    """
    amap, region = _map_and_region(inputs, attributions, boxes, masks)
    check_flag(curves, "curves")
    if isinstance(base_threshold, bool) or not isinstance(base_threshold, (int, float)) \
            or not 0.0 <= base_threshold < 1.0:
        raise ValueError(f"base_threshold must be in [0, 1), got {base_threshold!r}")
    if isinstance(n_quantiles, bool) or not isinstance(n_quantiles, int) or n_quantiles < 2:
        raise ValueError(f"n_quantiles must be an int >= 2, got {n_quantiles!r}")
    a = _normalise(amap, normalize)
    a = torch.where(a < base_threshold, torch.zeros_like(a), a)
    levels = torch.linspace(0, 1, n_quantiles, dtype=torch.float64, device=a.device)
    ratios = torch.zeros(a.shape[0], n_quantiles, dtype=torch.float64, device=a.device)
    for b in range(a.shape[0]):
        rest = a[b][a[b] > 0]
        if rest.numel() == 0:
            continue
        thresholds = torch.quantile(rest, levels).clamp_max(0.99 * a[b].max())
        above = a[b].unsqueeze(0) >= thresholds.unsqueeze(1)  # [Q, U]
        ratios[b] = (above & region[b]).double() @ a[b] / above.sum(1).double()
    value = torch.trapezoid(ratios, levels, dim=-1)
    return (value, ratios, levels) if curves else value
