"""The perturbation engine (SPEC §3.1): the model on many copies ``x̃ = m ⊙ x + (1 − m) ⊙ x'``.

*Units* are what one mask entry switches: pixels (all channels of one position, "channel-shared";
the unit of a map with the channel axis reduced, ``[B, H, W]`` for ``[B, C, H, W]`` inputs) or
elements (a map with the input's shape); ``granularity`` picks them explicitly. *Features* are the
units themselves, or segments of them (``segments``: integer ids; ``patch_size``: a grid of
patches), scored by the sum (default) or mean of the attribution inside (:func:`feature_space`).

Mask sources: (a) ranking schedules — features sorted by score (stable, descending, ties broken by
feature index), step k keeps or removes the top ``n_k`` (:func:`ranked_curve`, :func:`step_counts`,
step in features or as a fraction); (b) random subsets of a fixed size or Bernoulli(p) from a seeded
generator (:func:`random_subsets`), or every non-empty subset (:func:`all_subsets`); (c) explicit
masks (:func:`masked_scores`); (d) feature groups — segment ids or possibly overlapping binary masks
(:func:`group_masks`) applied in a given order: a unit's rank is the position of the first group
that holds it (:func:`group_unit_rank`), so the ranking kernel applies them and a unit already
changed is not changed again. Ranked chunks are written by the ``perturb_by_rank`` op in one pass.

Chunks hold at most ``max_batch`` perturbed inputs (or what ``memory_budget`` allows); results do
not depend on the chunk size. ``compile=True`` (or a dict of ``torch.compile`` options) runs the
model through ``torch.compile`` on chunks of one fixed shape (the last chunk is padded).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..attribution._common import forward_chunks, resolve_target, select
from ..attribution.gradient import _generator
from ..ops.perturb_by_rank import perturb_by_rank

READERS = ("probability", "logit", "log_probability", "regression")  # one score per input; plus "logits"
GRANULARITIES = ("pixel", "element")
SEGMENT_SCORES = ("sum", "mean")
Baseline = Union[float, str, "Blur", "Uniform", torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


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


@dataclass(frozen=True)
class Blur:
    """Baseline: ``x`` blurred by a separable Gaussian of standard deviation ``sigma`` over an odd
    ``kernel`` (default ``2·max(1, ⌊3σ⌋) + 1``), edges replicated (Fong & Vedaldi 2017's blurred
    image; ``baseline="blur"`` is ``Blur()``)."""

    sigma: float = 1.0
    kernel: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not self.sigma > 0:
            raise ValueError(f"Blur sigma must be a number > 0, got {self.sigma!r}")
        k = self.kernel
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0):
            raise ValueError(f"Blur kernel must be an odd int >= 1, got {k!r}")

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 4:
            raise ValueError("a blurred baseline needs image inputs [B, C, H, W]")
        radius = max(1, int(3 * self.sigma)) if self.kernel is None else self.kernel // 2
        t = torch.arange(-radius, radius + 1, dtype=inputs.dtype, device=inputs.device)
        k1 = torch.exp(-0.5 * (t / self.sigma) ** 2)
        k1 = k1 / k1.sum()
        c = inputs.shape[1]
        padded = F.pad(inputs, (radius,) * 4, mode="replicate")
        out = F.conv2d(padded, k1.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(out, k1.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@dataclass(frozen=True)
class Uniform:
    """Baseline: noise ``U[low, high)`` drawn from the metric's ``generator``; without a range, each
    example's own min and max (``baseline="uniform"`` is ``Uniform()``)."""

    low: Optional[float] = None
    high: Optional[float] = None

    def __post_init__(self):
        given = (self.low is not None, self.high is not None)
        if given[0] != given[1] or (all(given) and not float(self.low) < float(self.high)):
            raise ValueError(f"Uniform needs both low and high with low < high (or neither), "
                             f"got low={self.low!r}, high={self.high!r}")

    def draw(self, inputs: torch.Tensor, generator) -> torch.Tensor:
        batch = inputs.shape[0]
        view = (batch,) + (1,) * (inputs.dim() - 1)
        if self.low is None:
            lo = inputs.reshape(batch, -1).amin(1).view(view)
            hi = inputs.reshape(batch, -1).amax(1).view(view)
        else:
            lo, hi = float(self.low), float(self.high)
        u = torch.rand(inputs.shape, generator=_generator(generator), dtype=inputs.dtype).to(inputs.device)
        return lo + (hi - lo) * u


def make_baseline(inputs: torch.Tensor, baseline: Baseline, *, generator=None) -> torch.Tensor:
    """The replacement values ``x'`` for ``inputs`` (SPEC §3.1), checked finite.

    ``baseline``: a number (constant; 0 = "black"), ``"mean"`` (per-example, per-channel mean),
    :class:`Blur` (``Blur(sigma, kernel)``; ``"blur"`` = ``Blur()``), :class:`Uniform` (noise drawn
    from ``generator``; ``Uniform(low, high)``, ``"uniform"`` = each example's own range), a tensor
    broadcastable to ``inputs``, or a callable ``x -> x'``.
    """
    out = _baseline_values(inputs, baseline, generator)
    if not torch.isfinite(out).all():
        raise ValueError("baseline contains NaN or Inf")
    return out


def _baseline_values(inputs: torch.Tensor, baseline: Baseline, generator) -> torch.Tensor:
    if isinstance(baseline, bool):
        raise TypeError("baseline must be a number, a string, Blur, Uniform, a tensor or a callable, "
                        "got a bool")
    if isinstance(baseline, (int, float)):
        return torch.full_like(inputs, float(baseline))
    if isinstance(baseline, str) and baseline in ("blur", "uniform"):
        baseline = Blur() if baseline == "blur" else Uniform()
    if isinstance(baseline, Uniform):
        return baseline.draw(inputs, generator)
    if callable(baseline) and not isinstance(baseline, torch.Tensor):
        baseline = baseline(inputs)
        if not isinstance(baseline, torch.Tensor):
            raise TypeError(f"a callable baseline must return a tensor, got {type(baseline).__name__}")
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(inputs), inputs.shape)
        except RuntimeError:
            raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to inputs "
                             f"{tuple(inputs.shape)}") from None
    if baseline == "mean":
        dims = tuple(range(2, inputs.dim()))
        if not dims:
            return inputs.mean(1, keepdim=True).expand_as(inputs)
        return inputs.mean(dims, keepdim=True).expand_as(inputs)
    raise ValueError("baseline must be a number, 'mean', 'blur', 'uniform', Blur(...), Uniform(...), "
                     f"a tensor or a callable, got {baseline!r}")


def check_scalar_reader(score: str) -> str:
    """A reader that gives one number per input (every reader but ``"logits"``)."""
    if score not in READERS:
        raise ValueError(f"score must be one of {READERS}, got {score!r}")
    return score


def read_scores(output: torch.Tensor, target: torch.Tensor, reader: str) -> torch.Tensor:
    """The score read off the model output (SPEC §3.1): ``"logit"`` ``f_t``, ``"probability"``
    ``softmax(f)_t``, ``"log_probability"`` ``log_softmax(f)_t``, ``"regression"`` the raw output
    (of a ``[N]`` or ``[N, k]`` model, column t), ``"logits"`` the whole output ``[N, C]``. A model
    with one output (``[N]`` or ``[N, 1]``) is read as is by every reader but ``"logits"``: a softmax
    over one class would be 1 whatever the input (end such a model in a sigmoid for a probability)."""
    if reader not in READERS and reader != "logits":
        raise ValueError(f"score must be one of {READERS + ('logits',)}, got {reader!r}")
    if reader == "logits":
        return output.reshape(output.shape[0], -1)
    if reader in ("logit", "regression") or output.dim() == 1 or output.shape[-1] == 1:
        return select(output, target)
    if reader == "probability":
        return select(output.softmax(-1), target)
    return select(output.log_softmax(-1), target)


class CountingModel(torch.nn.Module):
    """Wraps a model and counts forward calls and the inputs they carried (padding included);
    ``on_call(n)``, when given, hears of every call's ``n`` inputs (e.g. to advance a progress bar)."""

    def __init__(self, model: Callable, on_call: Optional[Callable[[int], object]] = None):
        super().__init__()
        self.model = model
        self.calls = 0
        self.inputs = 0
        self.on_call = on_call
        self.training = bool(getattr(model, "training", False))  # mirrors the wrapped model's mode

    def count(self, x: torch.Tensor) -> None:
        self.calls += 1
        self.inputs += x.shape[0]
        if self.on_call is not None:
            self.on_call(x.shape[0])

    def forward(self, x):
        self.count(x)
        return self.model(x)


class ChunkRunner:
    """Calls the model on chunks. With ``compile`` (True or a dict of ``torch.compile`` options) the
    model runs through ``torch.compile(dynamic=False)`` and every chunk is padded to ``size`` rows
    (copies of its last row, dropped from the output), so one graph serves all chunks. A
    :class:`CountingModel` keeps counting eagerly around its compiled model."""

    def __init__(self, model: Callable, size: int, compile: Union[bool, dict] = False):
        if not isinstance(compile, (bool, dict)):
            raise TypeError("compile must be a bool or a dict of torch.compile options, "
                            f"got {type(compile).__name__}")
        self.size, self.pad, self.fn = size, bool(compile), model
        if compile:
            options = {"dynamic": False, **(compile if isinstance(compile, dict) else {})}
            if isinstance(model, CountingModel):
                inner = torch.compile(model.model, **options)

                def counted(x):
                    model.count(x)
                    return inner(x)

                self.fn = counted
            else:
                self.fn = torch.compile(model, **options)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.pad and n < self.size:
            x = torch.cat([x, x[-1:].expand((self.size - n,) + tuple(x.shape[1:]))])
        out = self.fn(x)
        return out[:n] if self.pad else out


def _store(out: Optional[torch.Tensor], lead: tuple, scores: torch.Tensor, precise: bool = False
           ) -> torch.Tensor:
    """Allocates the result buffer on the first chunk: float32 for scores (the model's dtype, at least
    float32, for logits or when ``precise``)."""
    if out is not None:
        return out
    precise = precise or scores.dim() > 1
    dtype = torch.promote_types(torch.float32, scores.dtype) if precise else torch.float32
    return torch.empty(lead + tuple(scores.shape[1:]), dtype=dtype, device=scores.device)


def resolve_clean(model: Callable, inputs: torch.Tensor, target, *, max_batch: Optional[int] = None,
                  memory_budget: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets [B], f(x))``: one chunked forward on ``inputs`` resolves the targets, and its output
    is kept for the metric's passes that need ``f(x)``."""
    clean = forward_chunks(model, inputs, max_batch, memory_budget)
    return resolve_target(model, inputs, target, logits=clean), clean


@torch.no_grad()
def ranked_curve(model: Callable, inputs: torch.Tensor, baseline: torch.Tensor, rank: torch.Tensor,
                 counts: torch.Tensor, target: torch.Tensor, *, keep_top: bool, reader: str,
                 chunk: int, compile: Union[bool, dict] = False) -> torch.Tensor:
    """Scores ``[B, K]`` (``[B, K, C]`` for ``reader="logits"``) of the model on ``x̃_k``: the units
    ranked below ``counts[k]`` come from ``inputs`` (``keep_top=True``, insertion) or from
    ``baseline`` (``keep_top=False``, deletion).

    Each chunk of (example block × steps) is written by :func:`fastattr.ops.perturb_by_rank` in
    one pass straight into the model's input batch."""
    batch, n_points = inputs.shape[0], counts.numel()
    block = min(batch, chunk)
    per = min(n_points, max(1, chunk // block))
    runner = ChunkRunner(model, block * per, compile)
    out = None
    for e0 in range(0, batch, block):
        e1 = min(batch, e0 + block)
        for k0 in range(0, n_points, per):
            k1 = min(n_points, k0 + per)
            perturbed = perturb_by_rank(inputs[e0:e1], baseline[e0:e1], rank[e0:e1], counts[k0:k1],
                                        insert=keep_top)
            scores = read_scores(runner(perturbed), target[e0:e1].repeat(k1 - k0), reader)
            out = _store(out, (batch, n_points), scores)
            step_major = scores.to(out.dtype).view((k1 - k0, e1 - e0) + tuple(scores.shape[1:]))
            out[e0:e1, k0:k1] = step_major.transpose(0, 1)
    return out


@torch.no_grad()
def masked_scores(model: Callable, inputs: torch.Tensor, baseline: torch.Tensor, masks: torch.Tensor,
                  target: torch.Tensor, *, reader: str, chunk: int, features: Optional["Features"] = None,
                  compile: Union[bool, dict] = False, precise: bool = False,
                  fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scores ``[B, K]`` (``[B, K, C]`` for ``"logits"``) of the model on explicit masks:
    ``x̃_{b,k} = x'_b`` on the features where ``masks[b, k]`` is True and ``x_b`` elsewhere.

    ``masks``: bool ``[B, K, F]`` or ``[1, K, F]`` (shared by every example) over ``F`` features —
    the units (pixels or elements), or the features of ``features`` (segments are mapped to their
    units). ``fill`` ``[B, K]``: mask k of example b sets its features to the one value ``fill[b, k]``
    instead of the baseline (Quantus's "uniform" replacement). Pairs (example, mask) run example-major
    in chunks of ``chunk``. Scores are kept in float32, or in the model's dtype with ``precise=True``."""
    batch, n_masks = inputs.shape[0], masks.shape[1]
    n_units = masks.shape[2] if features is None else features.n_units
    if inputs[0].numel() % n_units:
        raise ValueError(f"masks over {n_units} units do not fit inputs of shape {tuple(inputs.shape)}")
    x3 = inputs.reshape(batch, -1, n_units)
    b3 = baseline.reshape(batch, -1, n_units)
    total = batch * n_masks
    masks = masks.to(inputs.device)
    runner = ChunkRunner(model, min(chunk, total), compile)
    out = None
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(total, start + chunk), device=inputs.device)
        bs, ks = idx // n_masks, idx % n_masks
        m = masks[bs if masks.shape[0] > 1 else torch.zeros_like(bs), ks]
        if features is not None and features.index is not None:
            m = m.gather(1, features.index[bs])
        base = b3[bs] if fill is None else fill[bs, ks].to(inputs).view(-1, 1, 1)
        perturbed = torch.where(m.unsqueeze(1), base, x3[bs]).reshape((-1,) + tuple(inputs.shape[1:]))
        scores = read_scores(runner(perturbed), target[bs], reader)
        out = _store(out, (batch, n_masks), scores, precise)
        out[bs, ks] = scores.to(out.dtype)
    return out


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


# ---- features: units, segments, patches, groups ------------------------------------------------

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


# ---- random and exhaustive subsets ----------------------------------------------------------------

def _smallest_keys(keys: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
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
    gen = _generator(generator)
    if size is not None:
        sizes = [size] * n_subsets if isinstance(size, int) else list(size)
        if len(sizes) != n_subsets or any(not 1 <= s <= n_features for s in sizes):
            raise ValueError(f"subset sizes must be in [1, {n_features}], got {sorted(set(sizes))[:5]}")
        # one example's keys at a time (the same draws as one [B, K, F] call): memory O(K·F) for the keys
        sizes = torch.tensor(sizes, device=device)
        masks = torch.empty(batch, n_subsets, n_features, dtype=torch.bool, device=device)
        for b in range(batch):
            keys = torch.rand(1, n_subsets, n_features, generator=gen).to(device)
            masks[b] = _smallest_keys(keys, sizes)[0]
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
