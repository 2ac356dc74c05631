"""The ``fastattr::bottleneck`` custom op (SPEC §9; Schulz et al. 2020, "Restricting the Flow",
Eq. 2–4): IBA's per-sample bottleneck at a layer with activation ``R``,

    ``λ = G_σs ∗ sigmoid(α)``,  ``Z_j = λR + (1 − λ)(σε_j + μ)``,
    ``capacity = −log(1 − λ) + (1 − λ)²/2 + λ²((R − μ)/σ)²/2 − 1/2``  (the KL of ``N(μ_Z, σ_Z²)`` to ``N(μ, σ²)``),

for all ``S`` noise draws of every example in one pass, with its backward (``∂/∂R`` and ``∂/∂α``; ``μ``,
``σ`` and ``ε`` are constants). ``1 − λ`` is computed as ``G_σs ∗ sigmoid(−α)``, accurate as λ → 1. Backends: the pure-torch reference, C++ (one pass per plane: sigmoid,
reflect-padded Gaussian, samples and KL; the backward recomputes λ and applies the smoothing's
adjoint) and Triton (the samples, KL and their backward in one kernel each; the small smoothing by
torch).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from ..numerics import compute_dtype
from ..reference.bottleneck import bottleneck as reference_bottleneck, bottleneck_backward as reference_backward, \
    smooth, smooth_adjoint
from ._utils import check_tensor, eager_without_compiler, resolve, run_cpp, run_op, triton_kernels


def _check(R, alpha, mu, sigma, eps, smooth_sigma) -> None:
    check_tensor(R, "R", floating=True, dim=4)
    for name, t in (("alpha", alpha), ("mu", mu), ("sigma", sigma), ("eps", eps)):
        check_tensor(t, name, floating=True)
        if t.device != R.device:
            raise ValueError(f"{name} must be on R's device ({R.device}), got {t.device}")
    if alpha.shape != R.shape:
        raise ValueError(f"alpha must have R's shape {tuple(R.shape)}, got {tuple(alpha.shape)}")
    for name, t in (("mu", mu), ("sigma", sigma)):
        if t.shape != R.shape[1:]:
            raise ValueError(f"{name} must be [C, H, W] = {tuple(R.shape[1:])}, got {tuple(t.shape)}")
    if eps.dim() != 5 or eps.shape[0] != R.shape[0] or eps.shape[2:] != R.shape[1:]:
        raise ValueError(f"eps must be [B, S, C, H, W] with [B, C, H, W] = {tuple(R.shape)}, got {tuple(eps.shape)}")
    if isinstance(smooth_sigma, bool) or not isinstance(smooth_sigma, numbers.Real) \
            or not (math.isfinite(smooth_sigma) and smooth_sigma >= 0):
        raise ValueError(f"smooth_sigma must be a finite number >= 0, got {smooth_sigma!r}")


def _work(*tensors, dtype):
    return [t.to(dtype).contiguous() for t in tensors]


@torch.library.custom_op("fastattr::bottleneck", mutates_args=())
def _bottleneck_op(R: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
                   smooth_sigma: float, backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    _check(R, alpha, mu, sigma, eps, smooth_sigma)
    name = resolve(R, backend)
    dtype = compute_dtype(R.dtype)  # half types computed in float32, on every backend
    r, a, m, s, e = _work(R, alpha, mu, sigma, eps, dtype=dtype)
    if name == "reference":
        Z, cap = reference_bottleneck(r, a, m, s, e, smooth_sigma)
    elif name == "triton":
        lam, rest = (smooth(torch.sigmoid(v), smooth_sigma).contiguous() for v in (a, -a))
        Z, cap = triton_kernels("bottleneck").bottleneck_forward(r, lam, rest, m, s, e)
    else:
        Z, cap = torch.empty_like(e), torch.empty_like(r)
        if Z.numel():
            batch, samples, channels, height, width = e.shape
            run_cpp("bottleneck_forward", r.data_ptr(), a.data_ptr(), m.data_ptr(), s.data_ptr(), e.data_ptr(),
                    Z.data_ptr(), cap.data_ptr(), batch, samples, channels, height, width, float(smooth_sigma),
                    dtype=dtype)
        elif cap.numel():
            cap = reference_bottleneck(r, a, m, s, e, smooth_sigma)[1]
    return Z.to(R.dtype).contiguous(), cap.to(R.dtype).contiguous()


@_bottleneck_op.register_fake
def _(R, alpha, mu, sigma, eps, smooth_sigma, backend):
    _check(R, alpha, mu, sigma, eps, smooth_sigma)
    return torch.empty_like(eps, dtype=R.dtype), torch.empty_like(R)


@torch.library.custom_op("fastattr::bottleneck_backward", mutates_args=())
def _bottleneck_backward_op(R: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                            eps: torch.Tensor, gZ: torch.Tensor, gcap: torch.Tensor, smooth_sigma: float,
                            backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    name = resolve(R, backend)
    dtype = compute_dtype(R.dtype)
    r, a, m, s, e, gz, gc = _work(R, alpha, mu, sigma, eps, gZ, gcap, dtype=dtype)
    if name == "reference":
        dR, dalpha = reference_backward(r, a, m, s, e, gz, gc, smooth_sigma)
    elif name == "triton":
        sig = torch.sigmoid(a)
        lam, rest = smooth(sig, smooth_sigma).contiguous(), smooth(torch.sigmoid(-a), smooth_sigma).contiguous()
        glam, dR = triton_kernels("bottleneck").bottleneck_backward(r, lam, rest, m, s, e, gz, gc)
        dalpha = smooth_adjoint(glam, smooth_sigma) * sig * (1 - sig)
    else:
        dR, dalpha = torch.empty_like(r), torch.empty_like(r)
        batch, samples, channels, height, width = e.shape
        if dR.numel():
            run_cpp("bottleneck_backward", r.data_ptr(), a.data_ptr(), m.data_ptr(), s.data_ptr(), e.data_ptr(),
                    gz.data_ptr(), gc.data_ptr(), dR.data_ptr(), dalpha.data_ptr(), batch, samples, channels, height,
                    width, float(smooth_sigma), dtype=dtype)
    return dR.to(R.dtype).contiguous(), dalpha.to(R.dtype).contiguous()


@_bottleneck_backward_op.register_fake
def _(R, alpha, mu, sigma, eps, gZ, gcap, smooth_sigma, backend):
    return torch.empty_like(R), torch.empty_like(R)


def _setup(ctx, inputs, output):
    R, alpha, mu, sigma, eps, ctx.smooth_sigma, ctx.backend = inputs
    ctx.save_for_backward(R, alpha, mu, sigma, eps)


def _vjp(ctx, gZ, gcap):
    R, alpha, mu, sigma, eps = ctx.saved_tensors
    gZ = torch.zeros_like(eps, dtype=R.dtype) if gZ is None else gZ
    gcap = torch.zeros_like(R) if gcap is None else gcap
    dR, dalpha = _bottleneck_backward_op(R, alpha, mu, sigma, eps, gZ, gcap, ctx.smooth_sigma, ctx.backend)
    return dR, dalpha, None, None, None, None, None


_bottleneck_op.register_autograd(_vjp, setup_context=_setup)
eager_without_compiler(_bottleneck_op)
eager_without_compiler(_bottleneck_backward_op)


def bottleneck(R: torch.Tensor, alpha: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, *,
               smooth_sigma: float = 1.0, backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IBA's bottleneck (module docstring): ``(Z [B, S, C, H, W], capacity [B, C, H, W])`` in nats, for
    the activation ``R`` and the mask logits ``alpha`` ``[B, C, H, W]``, the layer statistics ``mu`` and
    ``sigma`` ``[C, H, W]`` (:func:`fastattr.iba_statistics`) and standard normal noise ``eps``
    ``[B, S, C, H, W]``. Differentiable in ``R`` and ``alpha``. ``smooth_sigma`` is the std of the
    Gaussian that smooths ``sigmoid(alpha)`` (IBA's 1; 0: none). Kernel-level: NaN propagates, and
    ``λ = 1`` gives an infinite capacity.

    Example::

        >>> Z, cap = fastattr.ops.bottleneck(R, torch.full_like(R, 5.0), stats.mean, stats.std,
        ...                                  torch.randn(R.shape[0], 10, *R.shape[1:]))
    """
    if isinstance(smooth_sigma, numbers.Real) and not isinstance(smooth_sigma, bool):
        smooth_sigma = float(smooth_sigma)
    return run_op(_bottleneck_op, R, alpha, mu, sigma, eps, smooth_sigma, backend)
