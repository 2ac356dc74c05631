"""The perturbation engine (SPEC §3.1): the model on copies ``x̃ = m ⊙ x' + (1 − m) ⊙ x`` of every
input, for every method and metric that runs the model on perturbed copies.

:func:`perturbed_scores` walks the chunks of :class:`~fastattr.core.chunks.ChunkGrid`, asks a mask
source for each chunk's copies, runs the model (:class:`~fastattr.core.chunks.ChunkRunner`) and
reads one score (or a row of logits) per copy. Sources:

- :class:`RankSchedule` — ranking schedules (insertion / deletion curves, ordered groups): the
  ``perturb_by_rank`` op writes a chunk in one pass from the rank map, with no mask tensors;
- :class:`MaskSet` — explicit masks over units or features (random or exhaustive subsets, SOP
  coalitions, groups), per example or shared, optionally with one fill value per copy;
- :class:`MaskBuilder` — masks built on demand one block of steps at a time (occlusion windows,
  ablation groups, RISE's smooth masks), boolean or fractional, so the masks of a whole run never
  exist at once;
- :class:`GaussianNoise` — additive noise ``x − ε`` drawn per step from a seeded generator.

Results do not depend on the chunk size.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..ops.perturb_by_rank import perturb_by_rank
from .chunks import ChunkGrid, ChunkRunner
from .contract import check_output
from .features import Features
from .targets import read_scores


class Source:
    """A mask source: ``n`` perturbed copies per example. The engine calls :meth:`start` once per block
    of steps, before that block's chunks (what a block needs, masks or noise draws, is made there once
    for all examples), then :meth:`perturb` for each chunk: copies ``k0..k1-1`` of examples
    ``e0..e1-1``, step-major ``[(k1 − k0)·(e1 − e0), ...]``."""

    n: int

    def start(self, inputs: torch.Tensor, k0: int, k1: int) -> None:
        """Prepares the block of steps ``k0..k1-1`` (nothing by default)."""

    def perturb(self, inputs, baseline, e0, e1, k0, k1) -> torch.Tensor:
        raise NotImplementedError


class RankSchedule(Source):
    """Step k keeps (``keep_top=True``, insertion) or removes (deletion) the units whose ``rank``
    ``[B, U]`` is below ``counts[k]``; the other units come from the baseline (insertion) or stay."""

    def __init__(self, rank: torch.Tensor, counts: torch.Tensor, keep_top: bool):
        self.rank, self.counts, self.keep_top = rank, counts, keep_top
        self.n = counts.numel()

    def perturb(self, inputs, baseline, e0, e1, k0, k1) -> torch.Tensor:
        return perturb_by_rank(inputs[e0:e1], baseline[e0:e1], self.rank[e0:e1], self.counts[k0:k1],
                               insert=self.keep_top)


class MaskSet(Source):
    """Explicit bool masks ``[B or 1, K, F]`` (True: the baseline) over ``F`` features of ``inputs`` —
    its units, or the features of ``features`` (segments are mapped to their units). ``fill``
    ``[B, K]``: mask k of example b sets its features to the one value ``fill[b, k]`` instead of the
    baseline (Quantus's "uniform" replacement)."""

    def __init__(self, inputs: torch.Tensor, masks: torch.Tensor, features: Optional[Features] = None,
                 fill: Optional[torch.Tensor] = None):
        self.units = masks.shape[2] if features is None else features.n_units
        if inputs[0].numel() % self.units:
            raise ValueError(f"masks over {self.units} units do not fit inputs of shape {tuple(inputs.shape)}")
        self.masks = masks.to(inputs.device)
        self.index = None if features is None else features.index
        self.fill = fill
        self.n = masks.shape[1]

    def perturb(self, inputs, baseline, e0, e1, k0, k1) -> torch.Tensor:
        m = self.masks[e0:e1, k0:k1] if self.masks.shape[0] > 1 else self.masks[:, k0:k1]
        if self.index is not None:
            m = m.expand(e1 - e0, -1, -1).gather(2, self.index[e0:e1].unsqueeze(1).expand(-1, k1 - k0, -1))
        m = m.transpose(0, 1).unsqueeze(2)  # [k, e or 1, 1, U], step-major
        x = inputs[e0:e1].reshape(e1 - e0, -1, self.units)
        if self.fill is None:
            base = baseline[e0:e1].reshape(x.shape)
        else:
            base = self.fill[e0:e1, k0:k1].T.to(inputs).view(k1 - k0, e1 - e0, 1, 1)
        return torch.where(m, base, x).reshape(((k1 - k0) * (e1 - e0),) + tuple(inputs.shape[1:]))


class MaskBuilder(Source):
    """``n`` masks built on demand: ``build(k0, k1)`` returns masks ``k0..k1-1`` flattened over the
    elements, ``[k, 1 or B, D]``: bool (True: the baseline) or float weights in [0, 1]
    (``x̃ = x + m ⊙ (x' − x)``). A block of masks is built once for all examples."""

    def __init__(self, n: int, build: Callable[[int, int], torch.Tensor]):
        self.n, self.build = n, build

    def start(self, inputs, k0, k1) -> None:
        self.masks = self.build(k0, k1)

    def perturb(self, inputs, baseline, e0, e1, k0, k1) -> torch.Tensor:
        m = self.masks if self.masks.shape[1] == 1 else self.masks[:, e0:e1]
        x = inputs[e0:e1].reshape(e1 - e0, -1)
        b = baseline[e0:e1].reshape(e1 - e0, -1)
        copies = torch.where(m, b, x) if m.dtype == torch.bool else torch.lerp(x, b, m)
        return copies.reshape(((k1 - k0) * (e1 - e0),) + tuple(inputs.shape[1:]))


class GaussianNoise(Source):
    """``n`` copies ``x − ε_j``, ``ε_j ~ N(0, std²)`` per element, one full-batch draw per copy from
    ``generator`` in copy order (so draws do not depend on the chunk size). ``weight`` ``[B, n, F]``
    collects ``Σ ε`` over the units of each of ``F`` features (channels and elements folded)."""

    def __init__(self, inputs: torch.Tensor, n: int, std: float, generator: torch.Generator, n_features: int,
                 dtype: torch.dtype):
        self.n, self.std, self.generator, self.n_features = n, std, generator, n_features
        self.weight = torch.empty(inputs.shape[0], n, n_features, dtype=dtype, device=inputs.device)

    def start(self, inputs, k0, k1) -> None:
        draws = torch.stack([torch.randn(inputs.shape, generator=self.generator, dtype=inputs.dtype)
                             for _ in range(k1 - k0)])
        self.draws = (draws * self.std).to(inputs.device)

    def perturb(self, inputs, baseline, e0, e1, k0, k1) -> torch.Tensor:
        eps = self.draws[:, e0:e1]
        x = inputs[e0:e1].unsqueeze(0)
        perturbed = x - eps
        size = (x - perturbed).to(self.weight.dtype).reshape(k1 - k0, e1 - e0, -1, self.n_features).sum(2)
        self.weight[e0:e1, k0:k1] = size.transpose(0, 1)
        return perturbed.reshape(((k1 - k0) * (e1 - e0),) + tuple(inputs.shape[1:]))


@torch.no_grad()
def perturbed_scores(model: Callable, inputs: torch.Tensor, baseline: Optional[torch.Tensor], source: Source,
                     target: torch.Tensor, *, reader: str, chunk: int, compile: Union[bool, dict] = False,
                     precise: bool = False) -> torch.Tensor:
    """Scores ``[B, K]`` (``[B, K, C]`` for ``reader="logits"``) of the model on the ``K`` perturbed
    copies of every example that ``source`` makes from ``inputs`` and ``baseline`` (see the module
    docstring), ``chunk`` model inputs at a time. Scores are kept in float32, or in the model's
    dtype (at least float32) for logits or with ``precise=True``."""
    batch = inputs.shape[0]
    if source.n < 1:
        raise ValueError("the mask source makes no perturbed copies (n = 0)")
    grid = ChunkGrid(batch, source.n, chunk)
    runner = ChunkRunner(model, grid.rows, compile)
    out = None
    for e0, e1, k0, k1 in grid:
        if e0 == 0:
            source.start(inputs, k0, k1)
        x = source.perturb(inputs, baseline, e0, e1, k0, k1)
        output = check_output(runner(x), x.shape[0], any_rank=reader == "logits")
        scores = read_scores(output, target[e0:e1].repeat(k1 - k0), reader)
        if out is None:
            wide = precise or scores.dim() > 1
            dtype = torch.promote_types(torch.float32, scores.dtype) if wide else torch.float32
            out = torch.empty((batch, source.n) + tuple(scores.shape[1:]), dtype=dtype, device=scores.device)
        step_major = scores.to(out.dtype).view((k1 - k0, e1 - e0) + tuple(scores.shape[1:]))
        out[e0:e1, k0:k1] = step_major.transpose(0, 1)
    return out
