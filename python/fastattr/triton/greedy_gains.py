"""Triton marginal gains of a batch of deep submodular functions (SPEC §7; SEA-NN, Algorithm 1): the first
two layers, fused. Each program takes one DSF and a block of candidates ``v`` and computes, tile by tile,

    ``d₁ = g(z₁ + W₁[:, v]) − g(z₁)`` (``e / (√(z + e) + √z)`` or ``log1p(e / (1 + z))``), ``e₂ = W₂ d₁``,

then ``d₂ = g(z₂ + e₂) − g(z₂)`` where another layer follows (else ``e₂`` is the gain). The first layer's
activations never reach memory; the remaining (small) layers propagate the difference in torch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_C, _BLOCK_J, _BLOCK_K = 16, 32, 32


@triton.jit
def _difference(z, e, KIND: tl.constexpr):
    if KIND == 0:
        s = tl.sqrt(z + e) + tl.sqrt(z)
        return tl.where(s > 0, e / tl.where(s > 0, s, 1.0), 0.0)
    y = e / (1.0 + z)
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * y / tl.where(u == 1.0, 1.0, u - 1.0))  # log1p(y), Kahan's way


@triton.jit
def _first_two_layers(z1_ptr, col_ptr, cand_ptr, w2_ptr, z2_ptr, out_ptr, n, n_cand, h1, h2,
                      HAS_CAND: tl.constexpr, LAST: tl.constexpr, KIND: tl.constexpr, DOUBLE: tl.constexpr,
                      BLOCK_C: tl.constexpr,
                      BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_j = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_c = offs_c < n_cand
    mask_j = offs_j < h2
    if HAS_CAND:
        v = tl.load(cand_ptr + b * n_cand + offs_c, mask=mask_c, other=0)
    else:
        v = offs_c
    if DOUBLE:
        acc = tl.zeros([BLOCK_C, BLOCK_J], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK_C, BLOCK_J], dtype=tl.float32)
    for k0 in range(0, h1, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < h1
        z = tl.load(z1_ptr + b * h1 + offs_k, mask=mask_k, other=0.0)
        col = tl.load(col_ptr + (b * n + v[:, None]) * h1 + offs_k[None, :], mask=mask_c[:, None] & mask_k[None, :],
                      other=0.0)
        d = _difference(z[None, :], col, KIND)
        w = tl.load(w2_ptr + (b * h1 + offs_k[:, None]) * h2 + offs_j[None, :], mask=mask_k[:, None] & mask_j[None, :],
                    other=0.0)
        if DOUBLE:  # float64: no tensor-core dot, a broadcast product summed over k
            acc += tl.sum(d[:, :, None] * w[None, :, :], axis=1)
        else:
            acc += tl.dot(d.to(tl.float32), w.to(tl.float32), input_precision="ieee")
    if LAST:
        result = acc
    else:
        z2 = tl.load(z2_ptr + b * h2 + offs_j, mask=mask_j, other=0.0).to(acc.dtype)
        result = _difference(z2[None, :], acc, KIND)
    tl.store(out_ptr + (b * n_cand + offs_c[:, None]) * h2 + offs_j[None, :], result.to(out_ptr.dtype.element_ty),
             mask=mask_c[:, None] & mask_j[None, :])


def first_two_layers(z1, columns, candidates, W2, z2, kind: int, last: bool):
    """Contiguous ``z1`` ``[B, h1]``, ``columns`` ``[B, n, h1]``, ``candidates`` ``[B, K]`` (int64) or None,
    ``W2`` ``[B, h1, h2]``, ``z2`` ``[B, h2]`` → ``d₂`` (or ``e₂`` when ``last``) ``[B, K, h2]``."""
    batch, n, h1 = columns.shape
    h2 = W2.shape[2]
    n_cand = n if candidates is None else candidates.shape[1]
    out = torch.empty((batch, n_cand, h2), dtype=z1.dtype, device=z1.device)
    if out.numel():
        grid = (batch, triton.cdiv(n_cand, _BLOCK_C), triton.cdiv(h2, _BLOCK_J))
        _first_two_layers[grid](z1, columns, candidates if candidates is not None else z1, W2, z2, out, n, n_cand, h1,
                                h2, HAS_CAND=candidates is not None, LAST=last, KIND=kind,
                                DOUBLE=z1.dtype == torch.float64, BLOCK_C=_BLOCK_C,
                                BLOCK_J=_BLOCK_J, BLOCK_K=_BLOCK_K, num_warps=4)
    return out
