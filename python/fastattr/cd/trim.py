"""TRIM: CD in a transformed domain (Singh et al. 2020, "Transformation importance", Sec. 2.3;
SPEC §4.4).

For an invertible transform T and a band mask M in the transformed domain, the relevant part of
the input is ``β₀ = T⁻¹(M ⊙ T(x))`` and ``γ₀ = x − β₀``; ordinary CD then scores the band. The
bands partition the transformed domain, so ``Σ_bands β₀ = x``. All bands go through CD as one
batch. Transforms: the 2-D FFT (radial bands of ``|frequency|``) and the orthonormal 2-D DCT-II
(bands of ``√(u² + v²)`` over coefficient indices).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..core import Target, check_inputs, model_entry
from .core import accepts_backend, contextual_decomposition

__all__ = ["frequency_bands", "band_components", "trim"]

TRANSFORMS = ("fft", "dct")


def _dct_matrix(n: int, dtype, device) -> Tensor:
    """Orthonormal DCT-II matrix ``D[k, i] = s_k cos(π (2i+1) k / 2n)``, so ``D⁻¹ = Dᵀ``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def frequency_bands(height: int, width: int, n_bands: int = 8, transform: str = "fft") -> Tensor:
    """``[n_bands, H, W]`` binary masks over the transformed domain: equal-width rings of the radius
    (FFT: ``√(f_y² + f_x²)`` with ``f`` from ``fftfreq``; DCT: ``√(u² + v²)/√2`` normalised indices),
    lowest frequencies first. Every coefficient belongs to exactly one band."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if isinstance(n_bands, bool) or not isinstance(n_bands, int) or n_bands < 1:
        raise ValueError(f"n_bands must be a positive int, got {n_bands!r}")
    if transform == "fft":
        fy, fx = torch.fft.fftfreq(height, dtype=torch.float64), torch.fft.fftfreq(width, dtype=torch.float64)
        radius = torch.sqrt(fy[:, None] ** 2 + fx[None] ** 2) / math.sqrt(0.5)
    else:
        u = torch.arange(height, dtype=torch.float64) / max(height, 1)
        v = torch.arange(width, dtype=torch.float64) / max(width, 1)
        radius = torch.sqrt(u[:, None] ** 2 + v[None] ** 2) / math.sqrt(2.0)
    index = torch.clamp((radius * n_bands).floor().long(), max=n_bands - 1)
    return torch.stack([(index == b) for b in range(n_bands)]).to(torch.float64)


def band_components(inputs: Tensor, bands: Tensor, transform: str = "fft") -> Tensor:
    """``β₀ = T⁻¹(M_k ⊙ T(x))`` for every band: ``[B, K, *inputs.shape[1:]]`` (transform over the last
    two axes). Real inputs give real components (FFT bands are symmetric under ``f → −f``)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if inputs.dim() < 3:
        raise ValueError(f"inputs must be [B, ..., H, W], got {tuple(inputs.shape)}")
    if bands.dim() != 3 or tuple(bands.shape[1:]) != tuple(inputs.shape[-2:]):
        raise ValueError(f"bands must be [K, H, W] with H, W = {tuple(inputs.shape[-2:])}, got {tuple(bands.shape)}")
    x = inputs[:, None]
    shape = (1, bands.shape[0]) + (1,) * (inputs.dim() - 3) + tuple(bands.shape[1:])
    m = bands.reshape(shape)
    if transform == "fft":
        spectrum = torch.fft.fft2(x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64))
        return torch.fft.ifft2(spectrum * m.to(spectrum.real.dtype)).real.to(inputs.dtype)
    dh = _dct_matrix(inputs.shape[-2], inputs.dtype, inputs.device)
    dw = _dct_matrix(inputs.shape[-1], inputs.dtype, inputs.device)
    coeff = dh @ x @ dw.T
    return dh.T @ (coeff * m.to(inputs.dtype)) @ dw


@accepts_backend
@model_entry
def trim(model: nn.Module, inputs: Tensor, target: Target = None, *, transform: str = "fft", n_bands: int = 8,
         bands: Optional[Tensor] = None, max_batch: Optional[int] = None) -> Tensor:
    """TRIM scores of frequency bands: CD of ``β₀ = T⁻¹(M_k ⊙ T(x))`` for each band ``k``.

    Args:
        inputs: ``[B, C, H, W]`` images. bands: ``[K, H, W]`` masks over the transformed domain
            (default :func:`frequency_bands` with ``n_bands`` rings). target: as in
            :func:`contextual_decomposition`.
    Returns:
        ``[B, K]`` band scores for the target (``[B, K, classes]`` with ``target=None``).

    Example: ``scores = trim(model, x, y, transform="dct", n_bands=6)``.
    """
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        raise TypeError("inputs must be a floating tensor [B, C, H, W]")
    check_inputs(inputs)
    if bands is None:
        bands = frequency_bands(inputs.shape[-2], inputs.shape[-1], n_bands, transform)
    bands = bands.to(inputs.device)
    relevant = band_components(inputs, bands, transform)
    beta, _ = contextual_decomposition(model, inputs, relevant=relevant, target=target, max_batch=max_batch)
    return beta
