"""Reference ``max_pool2d`` with indices (torch's ``max_pool2d_with_indices``, bit for bit).

For ``x [N, C, H, W]`` (or ``[C, H, W]``), window ``(kH, kW)``, stride ``s``, padding ``p``, dilation
``d``: output ``(oh, ow)`` reads the window rows ``ih = oh·sH − pH + a·dH`` (``a < kH``) and columns
``iw = ow·sW − pW + b·dW`` (``b < kW``) that lie inside ``[0, H) × [0, W)``, scanned row-major:

    ``value ← −∞, index ← ih₀·W + iw₀`` (the first in-range row and column of the window);
    for each in-range ``(ih, iw)``: take ``x[ih, iw]`` when it is ``> value`` or NaN.

So the first maximum wins, a NaN wins over every number and the last NaN over an earlier one;
``indices`` are flat positions ``ih·W + iw`` within each ``[H, W]`` plane. The output size per axis
is ``⌊(H + 2p − d(k − 1) − 1 + (s − 1 if ceil_mode)) / s⌋ + 1``, less one in ``ceil_mode`` when the
last window would start in the right padding.
"""
from __future__ import annotations

import torch


def output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Pooled length of an axis of ``size`` (torch's ``pooling_output_shape``)."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _window(size: int, out: int, k: int, s: int, p: int, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[out, k]`` positions of each window's taps, whether each lies inside ``[0, size)``, and ``[out]``
    each window's first in-range position (past the padding)."""
    start = torch.arange(out) * s - p
    taps = start[:, None] + torch.arange(k) * d
    first = torch.where(start < 0, start + ((-start + d - 1) // d) * d, start)
    return taps, (taps >= 0) & (taps < size), first


def max_pool2d(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], ceil_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = x.shape[-2:]
    oh, ow = (output_size(n, k, s, p, d, ceil_mode) for n, k, s, p, d in
              zip((h, w), kernel_size, stride, padding, dilation))
    rows, row_in, row0 = (t.to(x.device) for t in _window(h, oh, kernel_size[0], stride[0], padding[0], dilation[0]))
    cols, col_in, col0 = (t.to(x.device) for t in _window(w, ow, kernel_size[1], stride[1], padding[1], dilation[1]))
    value = torch.full(x.shape[:-2] + (oh, ow), float("-inf"), dtype=x.dtype, device=x.device)
    index = (row0[:, None] * w + col0[None, :]).expand(value.shape).clone()
    for a in range(kernel_size[0]):
        for b in range(kernel_size[1]):
            ih, iw = rows[:, a], cols[:, b]
            v = x[..., ih.clamp(0, h - 1), :][..., iw.clamp(0, w - 1)]
            take = (row_in[:, a, None] & col_in[None, :, b]) & ((v > value) | v.isnan())
            value = torch.where(take, v, value)
            index = torch.where(take, ih[:, None] * w + iw[None, :], index)
    return value, index
