"""Triton ``bottleneck`` (SPEC §9): the noisy sample ``Z_j = λR + (1 − λ)(σε_j + μ)`` of every noise
draw and the capacity in one pass, and its backward (``∂/∂λ`` and ``∂/∂R``); one program per
(example, block of C·H·W). The mask ``λ`` (a smoothed sigmoid, per example) and its adjoint are small
depthwise convolutions, run by torch around the kernels."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._grid import row_block, row_blocks

_BLOCK = 1024


@triton.jit
def _load_block(r_ptr, lam_ptr, rest_ptr, mu_ptr, sigma_ptr, plane, per_row, BLOCK: tl.constexpr):
    """This program's block of one example: (b, offsets, mask, R, λ, 1 − λ, μ, σ), values in float64."""
    b, _, offs = row_block(per_row, BLOCK)
    mask = offs < plane
    r = tl.load(r_ptr + b * plane + offs, mask=mask, other=0.0).to(tl.float64)
    lam = tl.load(lam_ptr + b * plane + offs, mask=mask, other=0.0).to(tl.float64)
    rest = tl.load(rest_ptr + b * plane + offs, mask=mask, other=1.0).to(tl.float64)
    mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    sd = tl.load(sigma_ptr + offs, mask=mask, other=1.0).to(tl.float64)
    return b, offs, mask, r, lam, rest, mu, sd


@triton.jit
def _forward_kernel(r_ptr, lam_ptr, rest_ptr, mu_ptr, sigma_ptr, eps_ptr, z_ptr, cap_ptr, samples, plane, per_row,
                    BLOCK: tl.constexpr):
    b, offs, mask, r, lam, rest, mu, sd = _load_block(r_ptr, lam_ptr, rest_ptr, mu_ptr, sigma_ptr, plane, per_row,
                                                      BLOCK)
    z = (r - mu) / sd
    cap = -tl.log(rest) + 0.5 * rest * rest + 0.5 * lam * lam * z * z - 0.5
    tl.store(cap_ptr + b * plane + offs, cap.to(cap_ptr.dtype.element_ty), mask=mask)
    for j in range(0, samples):
        at = (b * samples + j) * plane + offs
        e = tl.load(eps_ptr + at, mask=mask, other=0.0).to(tl.float64)
        out = lam * r + rest * (sd * e + mu)
        tl.store(z_ptr + at, out.to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(r_ptr, lam_ptr, rest_ptr, mu_ptr, sigma_ptr, eps_ptr, gz_ptr, gcap_ptr, glam_ptr, dr_ptr, samples,
                     plane, per_row, BLOCK: tl.constexpr):
    b, offs, mask, r, lam, rest, mu, sd = _load_block(r_ptr, lam_ptr, rest_ptr, mu_ptr, sigma_ptr, plane, per_row,
                                                      BLOCK)
    gc = tl.load(gcap_ptr + b * plane + offs, mask=mask, other=0.0).to(tl.float64)
    diff = r - mu
    z = diff / sd
    gl = gc * (1.0 / rest - rest + lam * z * z)
    gsum = tl.zeros([BLOCK], dtype=tl.float64)
    for j in range(0, samples):
        at = (b * samples + j) * plane + offs
        g = tl.load(gz_ptr + at, mask=mask, other=0.0).to(tl.float64)
        e = tl.load(eps_ptr + at, mask=mask, other=0.0).to(tl.float64)
        gl += g * (diff - sd * e)
        gsum += g
    tl.store(glam_ptr + b * plane + offs, gl.to(glam_ptr.dtype.element_ty), mask=mask)
    dr = lam * gsum + gc * lam * lam * diff / (sd * sd)
    tl.store(dr_ptr + b * plane + offs, dr.to(dr_ptr.dtype.element_ty), mask=mask)


def bottleneck_forward(R, lam, rest, mu, sigma, eps):
    """Contiguous ``R``, ``λ``, ``1 − λ`` ``[B, C, H, W]``, ``μ``, ``σ`` ``[C, H, W]``, ``ε`` ``[B, S, C, H, W]`` →
    ``(Z, capacity)``."""
    batch, samples = eps.shape[:2]
    plane = R[0].numel()
    Z, cap = torch.empty_like(eps), torch.empty_like(R)
    if batch and plane:
        grid, per_row = row_blocks(batch, plane, _BLOCK)
        _forward_kernel[grid](R, lam, rest, mu, sigma, eps, Z, cap, samples, plane, per_row, BLOCK=_BLOCK,
                              num_warps=4)
    return Z, cap


def bottleneck_backward(R, lam, rest, mu, sigma, eps, gZ, gcap):
    """``(∂L/∂λ, ∂L/∂R)`` from the incoming ``∂L/∂Z`` and ``∂L/∂capacity`` (all contiguous)."""
    batch, samples = eps.shape[:2]
    plane = R[0].numel()
    glam, dR = torch.empty_like(R), torch.empty_like(R)
    if batch and plane:
        grid, per_row = row_blocks(batch, plane, _BLOCK)
        _backward_kernel[grid](R, lam, rest, mu, sigma, eps, gZ, gcap, glam, dR, samples, plane, per_row,
                               BLOCK=_BLOCK, num_warps=4)
    return glam, dR
