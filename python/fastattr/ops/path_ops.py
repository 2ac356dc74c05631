"""The integrated-gradient path ops (Sundararajan et al. 2017; SPEC §2 "fused path accumulation").

``fastattr::path_interpolate``: ``out[s·B + b] = x'_b + α_s (x_b − x'_b)``, the interpolated inputs
of a chunk of steps written straight into one ``[S·B, ...]`` model-input buffer.
``fastattr::path_accumulate``: ``(acc + Σ_s w_s g_s) ⊙ diff``, the fp32 (fp64) running sum of
weighted path gradients, with the final multiply by ``x − x'`` fused into the last chunk.
Both are custom ops with fake kernels and autograd, dispatched to cpp / triton / reference.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..numerics import accum_dtype, compute_dtype
from ..reference import path_ops as reference_path_ops
from ._utils import check_tensor, eager_without_compiler, resolve, rows, run_cpp, run_op, triton_kernels


def _check_interpolate(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> None:
    for name, t in (("x", x), ("baseline", baseline), ("alphas", alphas)):
        check_tensor(t, name, floating=True)
    if x.dim() < 1 or baseline.dim() != x.dim() or baseline.shape[0] not in (1, x.shape[0]) \
            or baseline.shape[1:] != x.shape[1:] or baseline.dtype != x.dtype:
        raise ValueError(f"baseline must have shape [B, ...] or [1, ...] matching x {tuple(x.shape)} and its "
                         f"dtype {x.dtype}, got {baseline.dtype} {tuple(baseline.shape)}")
    check_tensor(alphas, "alphas", dim=1)


def _check_accumulate(acc: torch.Tensor, grads: torch.Tensor, weights: torch.Tensor,
                      diff: Optional[torch.Tensor]) -> None:
    for name, t in (("acc", acc), ("grads", grads), ("weights", weights)):
        check_tensor(t, name, floating=True)
    if acc.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"acc must be float32 or float64 (the accumulator), got {acc.dtype}")
    if grads.dim() != acc.dim() + 1 or grads.shape[1:] != acc.shape:
        raise ValueError(f"grads must have shape [S, *acc.shape] = [S, {', '.join(map(str, acc.shape))}], "
                         f"got {tuple(grads.shape)}")
    if weights.shape != grads.shape[:1]:
        raise ValueError(f"weights must have shape [{grads.shape[0]}], got {tuple(weights.shape)}")
    if diff is not None:
        check_tensor(diff, "diff", floating=True)
        if diff.shape != acc.shape:
            raise ValueError(f"diff must have the shape of acc {tuple(acc.shape)}, got {tuple(diff.shape)}")


def _interpolate_kernel(name: str, x2: torch.Tensor, b2: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` x, ``[B or 1, D]`` baseline, ``[S]`` alphas (contiguous) → ``[S·B, D]``."""
    if name == "triton":
        return triton_kernels("path_ops").path_interpolate(x2, b2, alphas.to(x2.dtype).contiguous())
    compute = compute_dtype(x2.dtype)
    xc, bc, ac = x2.to(compute), b2.to(compute), alphas.to(compute).contiguous()
    out = torch.empty((ac.shape[0] * xc.shape[0], xc.shape[1]), dtype=compute, device=x2.device)
    if out.numel():
        run_cpp("path_interpolate", xc.data_ptr(), bc.data_ptr(), ac.data_ptr(), out.data_ptr(), ac.shape[0],
                xc.shape[0], xc.shape[1], bc.shape[0] == 1 and xc.shape[0] > 1, dtype=compute)
    return out.to(x2.dtype)


@torch.library.custom_op("fastattr::path_interpolate", mutates_args=())
def _path_interpolate_op(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor,
                         backend: Optional[str]) -> torch.Tensor:
    _check_interpolate(x, baseline, alphas)
    name = resolve(x, backend)
    if name == "reference":
        return reference_path_ops.path_interpolate(x, baseline, alphas).contiguous()
    batch = x.shape[0]
    x2, b2 = rows(x, x.dtype), rows(baseline, baseline.dtype)
    out = _interpolate_kernel(name, x2, b2, alphas)
    return out.reshape((alphas.shape[0] * batch,) + tuple(x.shape[1:]))


@_path_interpolate_op.register_fake
def _(x, baseline, alphas, backend):
    _check_interpolate(x, baseline, alphas)
    return x.new_empty((alphas.shape[0] * x.shape[0],) + tuple(x.shape[1:]))


def _interpolate_setup(ctx, inputs, output):
    x, baseline, alphas, ctx.backend = inputs
    ctx.shared = baseline.shape[0] == 1 and x.shape[0] > 1
    ctx.save_for_backward(x, baseline, alphas)


def _interpolate_vjp(ctx, grad):
    x, baseline, alphas = ctx.saved_tensors
    steps, batch = alphas.shape[0], x.shape[0]
    g = grad.reshape((steps, batch) + tuple(x.shape[1:]))
    acc_dtype = accum_dtype(x.dtype)
    zeros = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
    a = alphas.to(acc_dtype)
    grad_x = _path_accumulate_op(zeros, g, a, None, ctx.backend).to(x.dtype)
    grad_base = _path_accumulate_op(zeros, g, 1 - a, None, ctx.backend).to(baseline.dtype)
    if ctx.shared:
        grad_base = grad_base.sum(0, keepdim=True)
    grad_alphas = (g.to(acc_dtype) * (x - baseline).to(acc_dtype).unsqueeze(0)).reshape(steps, -1).sum(1)
    return grad_x, grad_base, grad_alphas.to(alphas.dtype), None


_path_interpolate_op.register_autograd(_interpolate_vjp, setup_context=_interpolate_setup)
eager_without_compiler(_path_interpolate_op)


@torch.library.custom_op("fastattr::path_accumulate", mutates_args=())
def _path_accumulate_op(acc: torch.Tensor, grads: torch.Tensor, weights: torch.Tensor,
                        diff: Optional[torch.Tensor], backend: Optional[str]) -> torch.Tensor:
    _check_accumulate(acc, grads, weights, diff)
    name = resolve(acc, backend)
    if name == "reference":
        return reference_path_ops.path_accumulate(acc, grads, weights, diff).contiguous()
    batch = acc.shape[0]
    a2 = acc.reshape(batch, -1).contiguous()
    w = weights.to(acc.dtype).contiguous()
    d2 = diff.to(acc.dtype).reshape(batch, -1).contiguous() if diff is not None else None
    if name == "triton":
        g3 = grads.reshape(grads.shape[0], batch, -1).contiguous()
        return triton_kernels("path_ops").path_accumulate(a2, g3, w, d2).reshape(acc.shape)
    g3 = grads.to(acc.dtype).reshape(grads.shape[0], batch, -1).contiguous()
    out = torch.empty_like(a2)
    if out.numel():
        run_cpp("path_accumulate", a2.data_ptr(), g3.data_ptr(), w.data_ptr(), d2.data_ptr() if d2 is not None else 0,
                out.data_ptr(), g3.shape[0], batch, a2.shape[1], dtype=a2.dtype)
    return out.reshape(acc.shape)


@_path_accumulate_op.register_fake
def _(acc, grads, weights, diff, backend):
    _check_accumulate(acc, grads, weights, diff)
    return torch.empty_like(acc, memory_format=torch.contiguous_format)


def _accumulate_setup(ctx, inputs, output):
    acc, grads, weights, diff, ctx.backend = inputs
    ctx.has_diff = diff is not None
    ctx.grads_dtype, ctx.weights_dtype = grads.dtype, weights.dtype
    ctx.save_for_backward(acc, grads, weights, diff if diff is not None else acc)


def _accumulate_vjp(ctx, grad):
    acc, grads, weights, diff = ctx.saved_tensors
    scale = grad * diff if ctx.has_diff else grad
    grad_grads = (weights.to(acc.dtype).view((-1,) + (1,) * acc.dim()) * scale.unsqueeze(0)).to(ctx.grads_dtype)
    grad_weights = (grads.to(acc.dtype) * scale.unsqueeze(0)).reshape(grads.shape[0], -1).sum(1)
    grad_diff = None
    if ctx.has_diff:
        grad_diff = (acc + torch.tensordot(weights.to(acc.dtype), grads.to(acc.dtype), dims=1)) * grad
    return scale, grad_grads, grad_weights.to(ctx.weights_dtype), grad_diff, None


_path_accumulate_op.register_autograd(_accumulate_vjp, setup_context=_accumulate_setup)
eager_without_compiler(_path_accumulate_op)


def path_interpolate(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor, *,
                     backend: Optional[str] = None) -> torch.Tensor:
    """Interpolated inputs of a chunk of IG steps, step-major: ``out[s·B + b] = x'_b + α_s (x_b − x'_b)``.

    Args:
        x: ``[B, ...]`` inputs.
        baseline: ``[B, ...]`` (one per example) or ``[1, ...]`` (shared), same dtype as ``x``.
        alphas: ``[S]`` path positions in [0, 1].
    Returns ``[S·B, ...]``, ready to be fed to the model as one batch. Differentiable.
    """
    for name, t in (("x", x), ("baseline", baseline), ("alphas", alphas)):
        check_tensor(t, name, floating=True)
    return run_op(_path_interpolate_op, x, baseline.to(x.dtype), alphas, backend)


def path_accumulate(acc: torch.Tensor, grads: torch.Tensor, weights: torch.Tensor,
                    diff: Optional[torch.Tensor] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    """``(acc + Σ_s w_s g_s) ⊙ diff`` in ``acc``'s dtype (float32 or float64), as a new tensor.

    Args:
        acc: ``[B, ...]`` running sum (float32, or float64 for float64 attributions).
        grads: ``[S, B, ...]`` gradients of one chunk of steps (any float dtype; upcast on the fly).
        weights: ``[S]`` quadrature weights.
        diff: ``[B, ...]`` ``x − x'`` for the last chunk (the fused final multiply), else None.
    """
    for name, t in (("acc", acc), ("grads", grads), ("weights", weights)):
        check_tensor(t, name, floating=True)
    return run_op(_path_accumulate_op, acc, grads, weights, diff, backend)
