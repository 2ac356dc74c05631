"""Reference input gradient of a 2-D convolution (groups 1), written out.

For ``grad [N, Co, OH, OW]`` of ``y = conv2d(x, weight, stride s, padding p, dilation d)``, ``x [N, Ci, H, W]``,
``weight [Co, Ci, KH, KW]``:

    ``∂L/∂x[n, ci, ih, iw] = Σ_{co, kh, kw, oh, ow} weight[co, ci, kh, kw] · grad[n, co, oh, ow]``
    over ``ih = oh·sH − pH + kh·dH``, ``iw = ow·sW − pW + kw·dW``.

Computed as the dense C++ kernel computes it: per tap ``k = (kh, kw)`` the channel sums
``cols[n, ci, k] = Σ_co weight[co, ci, k] · grad[n, co]``, each added at its tap's offset into a zeroed
buffer covering the padding, whose in-range part is the gradient. The sparse C++ kernel sums the same terms,
the zero ones of ``grad`` left out, per output position over its nonzero channels.
"""
from __future__ import annotations

import torch


def conv2d_input_grad(grad: torch.Tensor, weight: torch.Tensor, input_size: tuple[int, int],
                      stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    n, _, oh, ow = grad.shape
    ci, kh, kw = weight.shape[1:]
    (h, w), (sh, sw), (ph, pw), (dh, dw) = input_size, stride, padding, dilation
    cols = torch.einsum("ncp,cik->nikp", grad.reshape(n, -1, oh * ow), weight.reshape(-1, ci, kh * kw))
    cols = cols.reshape(n, ci, kh, kw, oh, ow)
    buf = grad.new_zeros(n, ci, max((oh - 1) * sh + (kh - 1) * dh + 1, ph + h),
                         max((ow - 1) * sw + (kw - 1) * dw + 1, pw + w))
    for a in range(kh):
        for b in range(kw):
            rows = slice(a * dh, a * dh + (oh - 1) * sh + 1, sh)
            cols_ = slice(b * dw, b * dw + (ow - 1) * sw + 1, sw)
            buf[:, :, rows, cols_] += cols[:, :, a, b]
    return buf[:, :, ph:ph + h, pw:pw + w].contiguous()
