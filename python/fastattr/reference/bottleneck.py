"""Reference of the IBA bottleneck (SPEC §9; Schulz et al. 2020, Eq. 2–4 and App. A), pure torch:

    ``λ = G_σs ∗ sigmoid(α)`` (depthwise Gaussian, ``2·round(2σs) + 1`` taps, reflect padding),
    ``Z_j = λ R + (1 − λ)(σ ε_j + μ)``,
    ``capacity = −log(1 − λ) + (1 − λ)²/2 + λ² ((R − μ)/σ)²/2 − 1/2``  (``KL(N(μ_Z, σ_Z²) ‖ N(μ, σ²))``),

with ``1 − λ = G_σs ∗ sigmoid(−α)`` (the kernel sums to 1), which keeps ``log(1 − λ)`` accurate as λ → 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(smooth_sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    """The normalised 2-D Gaussian of IBA's smoothing ``[k, k]``, ``k = 2·round(2σs) + 1`` (1 tap at 0)."""
    radius = int(round(2 * smooth_sigma)) if smooth_sigma > 0 else 0
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * smooth_sigma ** 2)) if smooth_sigma > 0 \
        else torch.ones(1, 1, dtype=torch.float64)
    return (g / g.sum()).to(dtype=dtype, device=device)


def reflect_index(n: int, radius: int, device) -> torch.Tensor:
    """Indices ``−radius … n − 1 + radius`` of a side of ``n`` reflected into ``0 … n − 1`` (reflection
    without repeating the edge, bounced as often as needed; 0 when ``n = 1``)."""
    out = []
    for i in range(-radius, n + radius):
        while n > 1 and not 0 <= i < n:
            i = -i if i < 0 else 2 * (n - 1) - i
        out.append(0 if n == 1 else i)
    return torch.tensor(out, device=device)


def smooth(s: torch.Tensor, smooth_sigma: float) -> torch.Tensor:
    """``G_σs ∗ s`` per channel of ``s`` ``[B, C, H, W]``, reflect padding."""
    kernel = gaussian_kernel(smooth_sigma, s.dtype, s.device)
    radius = kernel.shape[0] // 2
    if radius == 0:
        return s
    rows = reflect_index(s.shape[-2], radius, s.device)
    cols = reflect_index(s.shape[-1], radius, s.device)
    padded = s[..., rows, :][..., cols]
    return F.conv2d(padded, kernel.expand(s.shape[1], 1, -1, -1), groups=s.shape[1])


def smooth_adjoint(g: torch.Tensor, smooth_sigma: float) -> torch.Tensor:
    """The adjoint of :func:`smooth` applied to ``g`` ``[B, C, H, W]``: the transposed depthwise
    convolution, then each padded row / column added back to the one it reflects."""
    kernel = gaussian_kernel(smooth_sigma, g.dtype, g.device)
    radius = kernel.shape[0] // 2
    if radius == 0:
        return g
    height, width = g.shape[-2:]
    padded = F.conv_transpose2d(g, kernel.expand(g.shape[1], 1, -1, -1), groups=g.shape[1])
    cols = g.new_zeros(padded.shape[:-1] + (width,)).index_add_(-1, reflect_index(width, radius, g.device), padded)
    return g.new_zeros(g.shape).index_add_(-2, reflect_index(height, radius, g.device), cols)


def bottleneck_backward(R: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                        eps: torch.Tensor, gZ: torch.Tensor, gcap: torch.Tensor,
                        smooth_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂L/∂R, ∂L/∂α)`` from ``∂L/∂Z`` and ``∂L/∂capacity``:
    ``g_λ = Σ_j g_Zj (R − σε_j − μ) + g_cap (1/(1 − λ) − (1 − λ) + λ z²)``,
    ``∂L/∂R = λ Σ_j g_Zj + g_cap λ² (R − μ)/σ²``, ``∂L/∂α = s(1 − s) · Gᵀ g_λ`` (``s = sigmoid(α)``)."""
    s = torch.sigmoid(alpha)
    lam, rest = smooth(s, smooth_sigma), smooth(torch.sigmoid(-alpha), smooth_sigma)
    diff = R - mu
    z = diff / sigma
    glam = (gZ * (diff[:, None] - sigma * eps)).sum(1) + gcap * (1 / rest - rest + lam * z ** 2)
    dR = lam * gZ.sum(1) + gcap * lam ** 2 * diff / sigma ** 2
    return dR, smooth_adjoint(glam, smooth_sigma) * s * (1 - s)


def bottleneck(R: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
               smooth_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Z [B, S, C, H, W], capacity [B, C, H, W])`` for ``R``, ``α`` ``[B, C, H, W]``, ``μ``, ``σ``
    ``[C, H, W]`` and the noise ``ε`` ``[B, S, C, H, W]``."""
    lam, rest = smooth(torch.sigmoid(alpha), smooth_sigma), smooth(torch.sigmoid(-alpha), smooth_sigma)
    z = (R - mu) / sigma
    capacity = -torch.log(rest) + 0.5 * rest ** 2 + 0.5 * lam ** 2 * z ** 2 - 0.5
    Z = lam[:, None] * R[:, None] + rest[:, None] * (sigma * eps + mu)
    return Z, capacity


__all__ = ["bottleneck", "bottleneck_backward", "gaussian_kernel", "reflect_index", "smooth", "smooth_adjoint"]
