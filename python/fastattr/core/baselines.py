"""Baselines ``x'``: the replacement values of the perturbation engine (constants, ``"mean"``,
:class:`Blur`, :class:`Uniform` noise, tensors, callables; whole numbers for token ids), the path
start points of the gradient methods and the reference sets of GradientSHAP (SPEC §2, §3.1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from .contract import broadcasts_to, make_generator

Baseline = Union[float, str, "Blur", "Uniform", torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


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
        u = torch.rand(inputs.shape, generator=make_generator(generator), dtype=inputs.dtype).to(inputs.device)
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


def integer_baseline(inputs: torch.Tensor, baselines) -> torch.Tensor:
    """Baselines for integer inputs (token ids): a whole number or a tensor of whole numbers (e.g. the
    padding id), broadcast to ``inputs``."""
    value = torch.as_tensor(baselines) if isinstance(baselines, (int, float)) else baselines
    if not isinstance(value, torch.Tensor) or value.is_complex() or value.dtype == torch.bool \
            or not torch.equal(value, value.round() if value.is_floating_point() else value):
        raise ValueError(f"baselines for integer inputs (token ids) must be a whole number or a tensor of "
                         f"whole numbers, got {baselines!r}")
    try:
        return torch.broadcast_to(value.to(inputs), inputs.shape)
    except RuntimeError:
        raise ValueError(f"baselines of shape {tuple(value.shape)} do not broadcast to inputs "
                         f"{tuple(inputs.shape)}") from None


def path_baselines(inputs: torch.Tensor, baselines) -> torch.Tensor:
    """Baselines as ``[B, ...]`` (one per example) or ``[1, ...]`` (one shared by all)."""
    if baselines is None:
        return torch.zeros((1,) + tuple(inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device)
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return torch.full((1,) + tuple(inputs.shape[1:]), float(baselines), dtype=inputs.dtype, device=inputs.device)
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(f"baselines must be None, a number or a tensor, got {type(baselines).__name__}")
    b = baselines.to(device=inputs.device, dtype=inputs.dtype)
    if b.dim() < inputs.dim():
        b = b.reshape((1,) * (inputs.dim() - b.dim()) + tuple(b.shape))
    if not broadcasts_to(b.shape, inputs.shape):
        raise ValueError(f"baselines of shape {tuple(baselines.shape)} do not broadcast to inputs of shape "
                         f"{tuple(inputs.shape)} (give one per example, one for all, or a scalar)")
    b = b.expand((b.shape[0],) + tuple(inputs.shape[1:])).contiguous()
    if not torch.isfinite(b).all():
        raise ValueError("baselines contain NaN or Inf")
    return b


def reference_inputs(inputs: torch.Tensor, baselines, name: str = "baselines") -> torch.Tensor:
    """A checked ``[M, ...]`` set of reference inputs on ``inputs``' device and dtype."""
    if not isinstance(baselines, torch.Tensor) or baselines.dim() != inputs.dim() \
            or baselines.shape[1:] != inputs.shape[1:] or baselines.shape[0] < 1:
        raise ValueError(f"{name} must be a tensor [M, {', '.join(map(str, inputs.shape[1:]))}] of reference "
                         f"inputs, got {getattr(baselines, 'shape', type(baselines).__name__)}")
    refs = baselines.to(device=inputs.device, dtype=inputs.dtype)
    if not torch.isfinite(refs).all():
        raise ValueError(f"{name} contain NaN or Inf")
    return refs
