"""Perturbation attributions: occlusion, feature ablation and RISE.

Each runs the model on many perturbed copies ``x̃ = x + m ⊙ (x' − x)`` of every input (``x'`` the
baseline, ``m`` a mask per copy: how much of each element is replaced) and reads the target score
of each, as the perturbation engine does (SPEC §3.1). Copies of many masks and examples go through
the model together, in chunks of at most ``max_batch`` inputs (or what ``memory_budget`` bytes allow); masks are built
per chunk on the inputs' device and never for the whole run, and results do not depend on the
chunk size. No gradients are computed; inputs and the model are left as they were.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..core import (Blur, MaskBuilder, Target, Uniform, broadcasts_to, check_count, check_inputs, check_scalar_reader,
                    chunk_size, forward_chunks, integer_baseline, is_integer, make_baseline, make_generator,
                    model_entry, perturbed_scores, read_scores, resolve_target)
from ..numerics import accum_dtype

Baselines = Union[float, str, Blur, Uniform, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def resolve_baselines(inputs: torch.Tensor, baselines: Baselines, generator=None) -> torch.Tensor:
    """``baselines`` as a tensor shaped like ``inputs`` (a broadcast view where possible); random
    ones (``"uniform"``, :class:`Uniform`) drawn from ``generator``. Integer inputs (token ids) take
    a whole number or a tensor of whole numbers (e.g. the padding id)."""
    if isinstance(baselines, bool) or not (isinstance(baselines, (int, float, str, torch.Tensor, Uniform))
                                           or callable(baselines)):
        raise TypeError("baselines must be a number, 'mean', 'blur', 'uniform', Blur, Uniform, a tensor "
                        f"broadcastable to inputs or a callable x -> x', got {type(baselines).__name__}")
    if is_integer(inputs):
        return integer_baseline(inputs, baselines)
    try:
        return make_baseline(inputs, baselines, generator=generator)
    except ValueError as e:
        raise ValueError(f"baselines: {e}") from None


def like_inputs(attr: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Attributions shaped like ``inputs``, in their dtype (the scores' dtype for integer inputs)."""
    return attr.reshape(inputs.shape).to(inputs.dtype if inputs.is_floating_point() else attr.dtype)


def perturbation_setup(model, inputs, target, baselines, score, n_copies, max_batch, memory_budget, generator=None):
    """Checks, baseline, chunk size, and one clean pass: ``(target, clean scores, baseline, chunk)``."""
    check_inputs(inputs, integer=True)
    check_scalar_reader(score)
    base = resolve_baselines(inputs, baselines, generator)
    chunk = chunk_size(inputs, max(1, n_copies) * inputs.shape[0], max_batch, memory_budget)
    logits = forward_chunks(model, inputs, chunk, any_rank=False)
    t = resolve_target(model, inputs, target, logits)
    return t, read_scores(logits, t, score), base, chunk


def masked_scores(model: Callable, inputs: torch.Tensor, base: torch.Tensor, target: torch.Tensor, n_masks: int,
                   masks: Callable[[int, int], torch.Tensor], chunk: int, score: str,
                   compile: Union[bool, dict]) -> torch.Tensor:
    """``[B, n_masks]`` scores of ``x + m_j ⊙ (x' − x)`` from the engine, masks built a block at a time
    (:class:`~fastattr.core.MaskBuilder`), in the accumulation dtype of ``inputs``."""
    return perturbed_scores(model, inputs, base, MaskBuilder(n_masks, masks), target, reader=score, chunk=chunk,
                            compile=compile, precise=True).to(accum_dtype(inputs.dtype))


def _int_tuple(value, n: int, name: str, per: str = "non-batch dimension of the inputs") -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * n
    if not isinstance(value, (tuple, list)) or any(isinstance(v, bool) or not isinstance(v, int)
                                                   for v in value):
        raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}")
    if len(value) != n:
        raise ValueError(f"{name} must have one entry per {per} ({n}), got {tuple(value)}")
    return tuple(value)


class Windows:
    """Captum's sliding windows over a tensor of shape ``shape`` (no batch axis), at ``offset`` in the
    flattened input: along dimension d, windows start at ``0, s_d, 2 s_d, …`` for
    ``ceil((n_d − w_d) / s_d) + 1`` positions (the last may be cut off at the edge).
    ``cover[d][i, p]`` says whether position p covers index i along dimension d."""

    def __init__(self, shape: tuple, window, strides, device, offset: int = 0,
                 name: str = "sliding_window_shapes", strides_name: str = "strides"):
        if not isinstance(window, (tuple, list)):
            raise TypeError(f"{name} must be a tuple of ints, one per non-batch dimension of the inputs, "
                            f"got {window!r}")
        window = _int_tuple(tuple(window), len(shape), name)
        strides = _int_tuple(strides, len(shape), strides_name)
        self.cover = []
        for d, (n, w, s) in enumerate(zip(shape, window, strides)):
            if not 1 <= w <= n:
                raise ValueError(f"{name}[{d}] = {w} must be between 1 and the input size {n}")
            if s < 1:
                raise ValueError(f"{strides_name}[{d}] = {s} must be >= 1")
            if w < n and s > w:
                raise ValueError(f"{strides_name}[{d}] = {s} is larger than the window ({w}): elements "
                                 "would be left uncovered")
            starts = torch.arange(-(-(n - w) // s) + 1, device=device) * s
            i = torch.arange(n, device=device)[:, None]
            self.cover.append((i >= starts) & (i < starts + w))
        self.shape, self.offset, self.device = tuple(shape), offset, device
        self.size = math.prod(self.shape)
        self.positions = tuple(a.shape[1] for a in self.cover)
        self.count = math.prod(self.positions)

    def masks(self, p0: int, p1: int) -> torch.Tensor:
        """Window masks of positions ``p0..p1-1``, ``[k, size]``, numbered as Captum numbers them (the first
        dimension's position varies fastest), so that a forward of consecutive windows holds Captum's."""
        k = p1 - p0
        index = torch.arange(p0, p1, device=self.device)
        m = torch.ones(k, dtype=torch.bool, device=self.device)
        for d, a in enumerate(self.cover):
            p = (index // math.prod(self.positions[:d])) % self.positions[d]
            m = m.unsqueeze(-1) & a[:, p].T.reshape((k,) + (1,) * d + (a.shape[0],))
        return m.reshape(k, self.size)

    def spread(self, delta: torch.Tensor) -> torch.Tensor:
        """``attr[b, i] = Σ_{p covers i} Δ[b, p] / #{p covers i}`` for ``delta`` ``[B, count]`` (positions
        numbered as in :meth:`masks`): a product of one small matrix per dimension (no window masks);
        ``[B, size]``."""
        n = len(self.positions)
        out = delta.reshape((delta.shape[0],) + self.positions[::-1]).permute(0, *range(n, 0, -1))
        counts = torch.ones((), dtype=delta.dtype, device=delta.device)
        for d, a in enumerate(self.cover):
            a = a.to(delta.dtype)
            out = (out.movedim(d + 1, -1) @ a.T).movedim(-1, d + 1)
            counts = counts.unsqueeze(-1) * a.sum(1)
        return (out / counts).reshape(delta.shape[0], self.size)


def _default_window(inputs: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """All channels × about an eighth of each spatial side (at least 2), stride half the window;
    one element at a time for ``[B, D]``."""
    shape = tuple(inputs.shape[1:])
    if inputs.dim() < 3:
        return (1,) * len(shape), (1,) * len(shape)
    window = (shape[0],) + tuple(min(n, max(2, n // 8)) for n in shape[1:])
    return window, (1,) + tuple(max(1, w // 2) for w in window[1:])


def occlude(model: Callable, inputs: torch.Tensor, target: Target, parts: Callable[[torch.device], list],
             baselines: Baselines, score: str, max_batch: Optional[int],
             memory_budget: Optional[int], compile: Union[bool, dict] = False) -> torch.Tensor:
    """Occlusion over window sets ``parts`` that tile the flattened input in order; ``[B, D]``."""
    windows = parts(inputs.device)
    starts = [w.offset for w in windows]
    firsts = [sum(w.count for w in windows[:i]) for i in range(len(windows))]
    total = sum(w.count for w in windows)
    size = inputs[0].numel()

    def masks(j0: int, j1: int) -> torch.Tensor:
        m = torch.zeros(j1 - j0, 1, size, dtype=torch.bool, device=inputs.device)
        for w, first, start in zip(windows, firsts, starts):
            lo, hi = max(j0, first), min(j1, first + w.count)
            if lo < hi:
                m[lo - j0:hi - j0, 0, start:start + w.size] = w.masks(lo - first, hi - first)
        return m

    t, clean, base, chunk = perturbation_setup(model, inputs, target, baselines, score, total, max_batch,
                                               memory_budget)
    scores = masked_scores(model, inputs, base, t, total, masks, chunk, score, compile)
    delta = clean.to(scores.dtype)[:, None] - scores
    return torch.cat([w.spread(delta[:, f:f + w.count]) for w, f in zip(windows, firsts)], 1)


@model_entry
def occlusion(model: Callable, inputs: torch.Tensor, target: Target = None, *,
              sliding_window_shapes: Optional[Sequence[int]] = None,
              strides: Union[None, int, Sequence[int]] = None, baselines: Baselines = 0.0,
              score: str = "logit", max_batch: Optional[int] = None,
              memory_budget: Optional[int] = None, compile: Union[bool, dict] = False) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus 2014), with Captum's windows and averaging.

    A window of shape ``sliding_window_shapes`` (one entry per non-batch dimension) slides over
    each input from index 0 with step ``strides`` until it reaches the end of every dimension
    (the last window along a dimension may be cut off at the edge). For every window position p,
    ``Δ_p = f_t(x) − f_t(x̃_p)`` with ``x̃_p`` = ``x`` whose elements under the window are set to
    the baseline; an element's attribution is the mean of ``Δ_p`` over the windows covering it.

    Args:
        sliding_window_shapes: the window, e.g. ``(C, 4, 4)`` for ``[B, C, H, W]`` inputs. None:
            all channels × ``max(2, side // 8)`` for images (``(C, 2, 2)`` on 8×8), with ``strides``
            then half the window; ``(1,)`` for ``[B, D]`` inputs.
        strides: int or one int per dimension (default 1). A stride larger than the window
            along a dimension the window does not span is an error (elements would be skipped).
        baselines: the replacement values: a number, ``"mean"``, ``"blur"`` / ``Blur(σ, kernel)``,
            ``"uniform"`` / ``Uniform(low, high)`` (noise drawn with seed 0), a tensor broadcastable to
            ``inputs`` or a callable ``x -> x'`` (:func:`fastattr.core.make_baseline`).
        score: ``"logit"`` (the model's output, as Captum), ``"probability"``, ``"log_probability"``
            or ``"regression"``.
        compile: True (or a dict of ``torch.compile`` options) runs the model through
            ``torch.compile`` on perturbed chunks of one fixed shape (the last one padded).

    Returns ``[B, ...]`` like ``inputs``. Integer inputs (token ids) work too, with a whole-number
    baseline such as the padding id; their attributions come back in the scores' floating dtype.

    Example::

        >>> a = fastattr.occlusion(model, x, target=y, sliding_window_shapes=(3, 8, 8), strides=4)
    """
    check_inputs(inputs, integer=True)
    if sliding_window_shapes is None:
        sliding_window_shapes, derived = _default_window(inputs)
        strides = derived if strides is None else strides
    strides = 1 if strides is None else strides
    shape = tuple(inputs.shape[1:])

    def parts(device):
        return [Windows(shape, sliding_window_shapes, strides, device)]

    attr = occlude(model, inputs, target, parts, baselines, score, max_batch, memory_budget, compile)
    return like_inputs(attr, inputs)


def broadcast_mask(inputs: torch.Tensor, feature_mask, name: str = "feature_mask") -> torch.Tensor:
    """A segment-id mask checked against ``inputs`` and expanded to ``[1 or B, *inputs.shape[1:]]``."""
    if not isinstance(feature_mask, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of integer segment ids, got {type(feature_mask).__name__}")
    if feature_mask.is_floating_point() or feature_mask.is_complex():
        raise TypeError(f"{name} must hold integer segment ids, got dtype {feature_mask.dtype}")
    mask = feature_mask.to(inputs.device)
    if mask.dim() > inputs.dim():
        raise ValueError(f"{name} of shape {tuple(mask.shape)} has more dimensions than inputs "
                         f"{tuple(inputs.shape)}")
    mask = mask.reshape((1,) * (inputs.dim() - mask.dim()) + tuple(mask.shape))
    if not broadcasts_to(mask.shape, inputs.shape) or mask.numel() == 0:
        raise ValueError(f"{name} of shape {tuple(feature_mask.shape)} does not broadcast to inputs "
                         f"{tuple(inputs.shape)} (give one mask for all examples or one per example)")
    return mask.expand((mask.shape[0],) + tuple(inputs.shape[1:]))


def segment_ids(inputs: torch.Tensor, feature_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``(ids [1 or B, D], G)``: each element's group as an index in ``0..G-1`` (groups in
    increasing order of their segment id). None: every element its own group."""
    size = inputs[0].numel()
    if feature_mask is None:
        return torch.arange(size, device=inputs.device)[None], size
    mask = broadcast_mask(inputs, feature_mask)
    _, ids = torch.unique(mask, return_inverse=True)
    ids = ids.reshape(mask.shape[0], size)
    return ids, int(ids.max()) + 1


@model_entry
def feature_ablation(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                     baselines: Baselines = 0.0, feature_mask: Optional[torch.Tensor] = None,
                     score: str = "logit", max_batch: Optional[int] = None,
                     memory_budget: Optional[int] = None, compile: Union[bool, dict] = False) -> torch.Tensor:
    """Feature ablation, with Captum's semantics: ``attr_i = f_t(x) − f_t(x̃_{g(i)})``, where ``x̃_g``
    is ``x`` with every element of group g set to the baseline and ``g(i)`` is the group of element i.

    Args:
        feature_mask: integer segment ids broadcastable to ``inputs`` (e.g. ``[1, 1, H, W]``: one
            map shared by all examples and channels, or ``[B, ...]``: one per example); elements with
            the same id form one group. None: every element is its own group.
        baselines, score, compile: as in :func:`occlusion`.

    Returns ``[B, ...]`` like ``inputs``: each element carries its group's value. Integer inputs
    (token ids) work too, with a whole-number baseline such as the padding id; their attributions
    come back in the scores' floating dtype.

    Example::

        >>> from fastattr.core import patch_segments
        >>> patches = patch_segments((32, 32), 8)          # 16 patches of 8×8, ids [32, 32]
        >>> a = fastattr.feature_ablation(model, x, target=y, feature_mask=patches)   # x: [B, 3, 32, 32]
    """
    check_inputs(inputs, integer=True)
    ids, n_groups = segment_ids(inputs, feature_mask)

    def masks(g0: int, g1: int) -> torch.Tensor:
        return ids.unsqueeze(0) == torch.arange(g0, g1, device=ids.device).view(-1, 1, 1)

    t, clean, base, chunk = perturbation_setup(model, inputs, target, baselines, score, n_groups, max_batch,
                                               memory_budget)
    scores = masked_scores(model, inputs, base, t, n_groups, masks, chunk, score, compile)
    delta = clean.to(scores.dtype)[:, None] - scores
    attr = delta.gather(1, ids.expand(inputs.shape[0], -1))
    return like_inputs(attr, inputs)


def _spatial(inputs_shape: tuple) -> tuple[int, ...]:
    """The axes RISE masks cover: ``(L,)`` for ``[B, L]``; the axes after the channels otherwise."""
    if not 2 <= len(inputs_shape) <= 5:
        raise ValueError(f"rise needs inputs [B, L], [B, C, L], [B, C, H, W] or [B, C, D, H, W], "
                         f"got shape {inputs_shape}")
    return tuple(inputs_shape[1:]) if len(inputs_shape) == 2 else tuple(inputs_shape[2:])


def _rise_grid(spatial: tuple, mask_size, p: float) -> tuple[int, ...]:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"p must be a number in (0, 1), got {p!r}")
    if mask_size is None:
        return tuple(min(7, max(2, n // 2)) for n in spatial)
    grid = _int_tuple(mask_size, len(spatial), "mask_size", "spatial axis")
    if any(s < 1 for s in grid):
        raise ValueError(f"mask_size must be >= 1 along every axis, got {grid}")
    return grid


class _RiseMasks:
    """Random low-resolution grids (cells on with probability p) and random shifts, drawn on the CPU
    up front, upsampled on demand, so any mask can be rebuilt in any chunk."""

    def __init__(self, spatial: tuple, n_masks: int, grid: tuple, p: float, generator):
        n_masks = check_count(n_masks, "n_masks")
        gen = make_generator(generator)
        self.spatial, self.grid = spatial, grid
        self.cell = tuple(-(-n // s) for n, s in zip(spatial, grid))
        self.cells = torch.rand((n_masks,) + grid, generator=gen) < p
        self.shifts = torch.stack([torch.randint(c, (n_masks,), generator=gen) for c in self.cell], 1)

    def build(self, i0: int, i1: int, dtype: torch.dtype, device) -> torch.Tensor:
        """Masks ``i0..i1-1``, ``[k, *spatial]`` with values in [0, 1]."""
        k, dims = i1 - i0, len(self.spatial)
        cells = self.cells[i0:i1].to(device=device, dtype=dtype).unsqueeze(1)
        up = tuple((s + 1) * c for s, c in zip(self.grid, self.cell))
        mode = ("linear", "bilinear", "trilinear")[dims - 1]
        smooth = F.interpolate(cells, size=up, mode=mode, align_corners=False)[:, 0]
        shifts = self.shifts[i0:i1].to(device)
        index = [torch.arange(k, device=device).view((k,) + (1,) * dims)]
        for d, n in enumerate(self.spatial):
            view = [1] * (dims + 1)
            view[0], view[d + 1] = k, n
            index.append((shifts[:, d].view(-1, 1) + torch.arange(n, device=device)).view(view))
        return smooth[tuple(index)]


def rise_masks(shape: Sequence[int], n_masks: int = 1000, *, mask_size=None, p: float = 0.5,
               generator=None, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The ``n_masks`` RISE masks :func:`rise` uses for inputs of ``shape`` (``[B, ...]`` or without
    the batch axis given as ``(1, ...)``), ``[N, *spatial]``: the same draws for the same arguments."""
    spatial = _spatial((1,) + tuple(shape[1:]))
    masks = _RiseMasks(spatial, n_masks, _rise_grid(spatial, mask_size, p), p, generator)
    return masks.build(0, n_masks, dtype, device)


@model_entry
def rise(model: Callable, inputs: torch.Tensor, target: Target = None, *, n_masks: int = 1000,
         mask_size=None, p: float = 0.5, baselines: Baselines = 0.0, score: str = "probability",
         generator=None, max_batch: Optional[int] = None,
         memory_budget: Optional[int] = None, compile: Union[bool, dict] = False) -> torch.Tensor:
    """RISE (Petsiuk, Das & Saenko 2018): ``S = Σ_i f_t(x̃_i) M_i / (N · p)`` over N random smooth
    masks ``M_i``, with ``x̃_i = M_i ⊙ x + (1 − M_i) ⊙ x'``.

    Mask ``M_i``: a binary grid of ``mask_size`` cells per spatial axis, each on with probability
    ``p``, upsampled bilinearly (``align_corners=False``) to ``(s + 1) · ⌈n / s⌉`` per axis and
    cropped to the input at a random shift in ``[0, ⌈n / s⌉)``; shared by the channels and by
    every example. With the default baseline 0, ``x̃_i = x ⊙ M_i`` as in the paper.

    Args:
        n_masks: N (the paper uses 4000 for ImageNet).
        mask_size: cells per spatial axis, an int or one per axis. None: ``min(7, max(2, n // 2))``
            (the paper's 7 for large images, 4 for 8×8).
        baselines: the values where masks are off (as in :func:`occlusion`; a random one is drawn from
            ``generator`` after the masks).
        score: ``"probability"`` (the paper), ``"logit"``, ``"log_probability"`` or ``"regression"``.
        generator: torch.Generator or int seed (default seed 0); draws are made on the CPU, so the
            masks are the same on every device and for every chunk size (see :func:`rise_masks`).
        compile: True (or a dict of ``torch.compile`` options) runs the model through
            ``torch.compile`` on perturbed chunks of one fixed shape (the last one padded).

    Returns ``[B, ...]`` like ``inputs`` (the same map on every channel). Inputs are ``[B, L]``,
    ``[B, C, L]``, ``[B, C, H, W]`` or ``[B, C, D, H, W]``.

    Example::

        >>> s = fastattr.rise(model, x, target=y, n_masks=4000, mask_size=7, generator=0)
    """
    check_inputs(inputs)
    spatial = _spatial(tuple(inputs.shape))
    grid = _rise_grid(spatial, mask_size, p)
    gen = make_generator(generator)
    draws = _RiseMasks(spatial, n_masks, grid, p, gen)
    repeat = inputs[0].numel() // math.prod(spatial)

    def masks(i0: int, i1: int) -> torch.Tensor:
        off = 1 - draws.build(i0, i1, inputs.dtype, inputs.device).reshape(i1 - i0, 1, 1, -1)
        return off.expand(-1, -1, repeat, -1).reshape(i1 - i0, 1, -1)

    t, _, base, chunk = perturbation_setup(model, inputs, target, baselines, score, n_masks, max_batch,
                                           memory_budget, generator=gen)
    scores = masked_scores(model, inputs, base, t, n_masks, masks, chunk, score, compile)
    acc = scores.dtype
    saliency = torch.zeros(inputs.shape[0], math.prod(spatial), dtype=acc, device=inputs.device)
    for i0 in range(0, n_masks, 256):  # fixed blocks: the sum does not depend on the chunk size
        i1 = min(n_masks, i0 + 256)
        saliency += scores[:, i0:i1] @ draws.build(i0, i1, acc, inputs.device).reshape(i1 - i0, -1)
    saliency = saliency / (n_masks * p)
    view = (inputs.shape[0],) + ((1,) if inputs.dim() > 2 else ()) + spatial
    return saliency.reshape(view).expand(inputs.shape).to(inputs.dtype).contiguous()
