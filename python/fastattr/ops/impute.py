"""Noisy linear imputation (SPEC §11; Rong et al. 2022, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods", ICML, §4): every removed pixel becomes the weighted mean of its
8 neighbours (``1/6`` edge, ``1/12`` corner; removed neighbours are themselves unknowns), plus
Gaussian noise — one sparse linear system per image plane.

The hot part is the ``fastattr::stencil_solve`` custom op: ``s_i u_i − Σ_{j∈N(i)∩U} w_ij u_j = b_i``
on the removed pixels ``U`` of each plane (reference: ``scipy.sparse.linalg.spsolve``; C++: each
8-connected hole of at most 32 pixels solved directly, larger ones by conjugate gradients on the
stencil; Triton: conjugate gradients; every plane, channel and level of a batch in one call).
Its matrix is symmetric, so its backward is the same solve of the incoming gradient.
:func:`noisy_linear_impute` builds ``b`` from the known pixels with a 3×3 convolution, solves, and
adds the noise.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..reference.impute import STENCIL, stencil_solve as reference_stencil_solve
from ._utils import check_tensor, eager_without_compiler, resolve, run_cpp, run_op, triton_kernels



def default_tol(dtype: torch.dtype) -> float:
    """The solver's relative residual target: ``1e-8`` for float64, ``1e-6`` otherwise (the imputed
    values then agree with a direct solve to about 1e-6, far below the 0.01 noise ROAD adds)."""
    return 1e-8 if dtype == torch.float64 else 1e-6


def _check(rhs: torch.Tensor, removed: torch.Tensor) -> None:
    check_tensor(rhs, "rhs", floating=True, dim=4)
    check_tensor(removed, "removed", dtype=torch.bool, dim=3)
    if removed.shape != (rhs.shape[0],) + tuple(rhs.shape[2:]) or removed.device != rhs.device:
        raise ValueError(f"removed must be a bool [G, H, W] mask on rhs's device for rhs [G, R, H, W] "
                         f"{tuple(rhs.shape)}, got {tuple(removed.shape)} on {removed.device}")


def default_max_iter(height: int, width: int) -> int:
    """CG iterations allowed per solve: ``10 (H + W) + 100``, several times what the slowest mask
    (one large removed region) needs at ``tol = 1e-8``."""
    return 10 * (height + width) + 100


@torch.library.custom_op("fastattr::stencil_solve", mutates_args=())
def _stencil_solve_op(rhs: torch.Tensor, removed: torch.Tensor, tol: float, max_iter: int,
                      backend: Optional[str]) -> torch.Tensor:
    _check(rhs, removed)
    name = resolve(rhs, backend)
    if name == "reference":
        return reference_stencil_solve(rhs, removed)
    groups, n_rhs, height, width = rhs.shape
    work = rhs.to(torch.float64 if rhs.dtype == torch.float64 else torch.float32).contiguous()
    mask = removed.contiguous()
    if name == "triton":
        out, failed = triton_kernels("impute").stencil_solve(work, mask, tol, max_iter)
    else:
        out = torch.empty_like(work)
        failed = run_cpp("stencil_solve", work.data_ptr(), mask.data_ptr(), out.data_ptr(), groups,
                         n_rhs, height, width, False, float(tol), int(max_iter), dtype=work.dtype) \
            if work.numel() else 0
    _warn_unconverged(failed, groups * n_rhs, tol, max_iter)
    return out.to(rhs.dtype)


def _warn_unconverged(failed: int, solves: int, tol: float, max_iter: int) -> None:
    if failed:
        warnings.warn(f"stencil_solve: {failed} of {solves} solves did not reach tol={tol:g} within "
                      f"max_iter={max_iter} CG iterations", RuntimeWarning, stacklevel=3)


def _same_shape(values, removed, tol, max_iter, backend):
    """The fake kernel of both ops: a tensor like ``values`` (``rhs`` or ``x``)."""
    _check(values, removed)
    return torch.empty_like(values)


def _setup(ctx, inputs, output):
    """Both ops' autograd context: the mask and the solver settings."""
    _, removed, ctx.tol, ctx.max_iter, ctx.backend = inputs
    ctx.save_for_backward(removed)


_stencil_solve_op.register_fake(_same_shape)


def _vjp(ctx, grad):
    (removed,) = ctx.saved_tensors
    return _stencil_solve_op(grad, removed, ctx.tol, ctx.max_iter, ctx.backend), None, None, None, None


_stencil_solve_op.register_autograd(_vjp, setup_context=_setup)
eager_without_compiler(_stencil_solve_op)


def stencil_solve(rhs: torch.Tensor, removed: torch.Tensor, *, tol: Optional[float] = None,
                  max_iter: Optional[int] = None, backend: Optional[str] = None) -> torch.Tensor:
    """``u`` ``[G, R, H, W]`` with ``s_i u_i − Σ_{j∈N(i), removed} w_ij u_j = rhs_i`` on the removed
    pixels of ``removed`` ``[G, H, W]`` (bool) for each of the ``R`` right-hand sides of plane ``g``;
    zero on known pixels and on planes with no known pixel. The iterative backends stop at
    ``‖r‖ ≤ tol ‖b‖`` (default :func:`default_tol`; a warning if ``max_iter`` runs out first; default
    :func:`default_max_iter`).
    Kernel-level: NaN propagates."""
    check_tensor(rhs, "rhs", floating=True, dim=4)
    tol, max_iter = _solver_limits(rhs, tol, max_iter)
    return run_op(_stencil_solve_op, rhs, removed, tol, max_iter, backend, reference=False)


def _solver_limits(x: torch.Tensor, tol, max_iter) -> tuple[float, int]:
    """``(tol, max_iter)`` checked, their defaults for ``x`` ``[G, R, H, W]`` where None."""
    if tol is None:
        tol = default_tol(x.dtype)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if max_iter is None:
        max_iter = default_max_iter(x.shape[2], x.shape[3])
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    return float(tol), int(max_iter)


@torch.library.custom_op("fastattr::linear_impute", mutates_args=())
def _linear_impute_op(x: torch.Tensor, removed: torch.Tensor, tol: float, max_iter: int,
                      backend: Optional[str]) -> torch.Tensor:
    _check(x, removed)
    name = resolve(x, backend)
    if name != "cpp":  # reference and Triton: the right-hand side and the write-back in torch around the solve
        full = removed[:, None].expand_as(x)
        u = _stencil_solve_op(_neighbour_sum(x.masked_fill(full, 0)), removed, tol, max_iter, name)
        return torch.where(full, u, x)
    groups, n_rhs, height, width = x.shape
    work = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    mask, out = removed.contiguous(), torch.empty_like(work)
    failed = run_cpp("stencil_solve", work.data_ptr(), mask.data_ptr(), out.data_ptr(), groups,
                     n_rhs, height, width, True, float(tol), int(max_iter), dtype=work.dtype) if work.numel() else 0
    _warn_unconverged(failed, groups * n_rhs, tol, max_iter)
    return out.to(x.dtype)


_linear_impute_op.register_fake(_same_shape)


def _impute_vjp(ctx, grad):
    """``out = K⊙x + R⊙u``, ``u = A⁻¹ N(K⊙x)`` with ``A`` and the neighbour sum ``N`` symmetric:
    ``∂L/∂x = K⊙(g + N(A⁻¹(R⊙g)))`` (``K`` known, ``R`` removed pixels)."""
    (removed,) = ctx.saved_tensors
    full = removed[:, None].expand_as(grad)
    back = _stencil_solve_op(grad.masked_fill(~full, 0), removed, ctx.tol, ctx.max_iter, ctx.backend)
    return (grad + _neighbour_sum(back)).masked_fill(full, 0), None, None, None, None


_linear_impute_op.register_autograd(_impute_vjp, setup_context=_setup)
eager_without_compiler(_linear_impute_op)


def linear_impute(x: torch.Tensor, removed: torch.Tensor, *, tol: Optional[float] = None,
                  max_iter: Optional[int] = None, backend: Optional[str] = None) -> torch.Tensor:
    """``x`` ``[G, R, H, W]`` with the pixels of ``removed`` ``[G, H, W]`` (bool, shared by the ``R``
    channels of plane ``g``) replaced by the solution ``u`` of the imputation system whose right-hand
    side is the weighted sum of the known neighbours: ``s_i u_i − Σ_{j∈N(i), removed} w_ij u_j =
    Σ_{j∈N(i), known} w_ij x_j``. The C++ backend builds the right-hand side, solves and writes the image
    back in one pass; the others run :func:`stencil_solve` between torch ops. ``tol`` / ``max_iter``
    as in :func:`stencil_solve`. Kernel-level: NaN propagates."""
    check_tensor(x, "x", floating=True, dim=4)
    tol, max_iter = _solver_limits(x, tol, max_iter)
    return run_op(_linear_impute_op, x, removed, tol, max_iter, backend, reference=False)


def _neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """``Σ_{j∈N(i)} w_ij v_j`` over the in-image neighbours of every pixel of ``v`` ``[..., H, W]``
    (eight shifted adds of the zero-padded planes: a 3×3 one-channel convolution, several times faster
    than ``conv2d`` on CPU)."""
    height, width = v.shape[-2:]
    padded = F.pad(v, (1, 1, 1, 1))
    out = torch.zeros_like(v)
    for dy, dx, w in STENCIL:
        out = out + w * padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
    return out


def _check_noise(noise, x: torch.Tensor):
    if isinstance(noise, torch.Tensor):
        try:
            return torch.broadcast_to(noise.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError:
            raise ValueError(f"noise of shape {tuple(noise.shape)} does not broadcast to x {tuple(x.shape)}") from None
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a standard deviation >= 0 or a tensor of noise values, got {noise!r}")
    return float(noise)


def _generator(generator) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return torch.Generator().manual_seed(int(generator))


def noisy_linear_impute(x: torch.Tensor, removed: torch.Tensor, *, noise: Union[float, torch.Tensor] = 0.01,
                        generator=None, tol: Optional[float] = None, max_iter: Optional[int] = None,
                        backend: Optional[str] = None) -> torch.Tensor:
    """``x`` with its ``removed`` pixels replaced by noisy linear imputation (Rong et al. 2022):

        ``x̃_i = u_i + σ ε_i``,  ``u_i = Σ_{j∈N(i)} w_ij v_j / Σ_{j∈N(i)} w_ij``,  ``v = x`` on known and ``u`` on removed pixels

    ``N(i)`` the in-image 8-neighbours, ``w = 1/6`` (edge) and ``1/12`` (corner), ``ε ~ N(0, 1)``.

    Args:
        x: ``[N, C, H, W]`` images (not modified).
        removed: bool ``[N, H, W]`` or ``[N, 1, H, W]`` (pixels removed in every channel) or
            ``[N, C, H, W]`` (each channel its own mask).
        noise: ``σ`` (default 0.01, as Rong et al. and Quantus), or a tensor broadcastable to ``x`` of
            the noise values to add to the removed pixels.
        generator: torch.Generator or int seed for ``ε`` (drawn on the CPU, shaped like ``x``).
        tol / max_iter / backend: passed to :func:`stencil_solve`.

    Returns a new ``[N, C, H, W]`` tensor. Example::

        >>> removed = saliency_map > saliency_map.flatten(1).quantile(0.9, dim=1).view(-1, 1, 1)
        >>> x_road = fastattr.ops.noisy_linear_impute(x, removed, generator=0)
    """
    check_tensor(x, "x", floating=True, dim=4)
    check_tensor(removed, "removed", dtype=torch.bool)
    n, c, height, width = x.shape
    if removed.dim() == 3:
        removed = removed.unsqueeze(1)
    if removed.dim() != 4 or removed.shape[0] != n or removed.shape[1] not in (1, c) \
            or tuple(removed.shape[2:]) != (height, width):
        raise ValueError(f"removed must be [N, H, W], [N, 1, H, W] or [N, C, H, W] for x {tuple(x.shape)}, "
                         f"got {tuple(removed.shape)}")
    removed = removed.to(x.device)
    noise = _check_noise(noise, x)
    if isinstance(noise, float) and noise > 0:
        draw = torch.randn(x.shape, generator=_generator(generator), dtype=x.dtype)
        noise = noise * draw.to(x.device)
    groups = n * removed.shape[1]
    out = linear_impute(x.reshape(groups, -1, height, width), removed.reshape(groups, height, width), tol=tol,
                        max_iter=max_iter, backend=backend).reshape(n, c, height, width)
    if isinstance(noise, torch.Tensor):
        out = torch.where(removed.expand(n, c, height, width), out + noise, out)
    return out
