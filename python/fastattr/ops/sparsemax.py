"""The ``fastattr::sparsemax`` custom op: forward and backward on every backend.

``sparsemax(z)_i = max(z_i - tau, 0)`` with ``sum_i max(z_i - tau, 0) = 1`` (Martins & Astudillo
2016, "From Softmax to Sparsemax"); backward ``dz = (g - mean_{S} g) * 1_S``, ``S = {p > 0}``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import reference
from ..numerics import compute_dtype
from ._utils import (check_backend, check_tensor, eager_cpu, eager_without_compiler, resolve, run_cpp, run_op,
                     triton_kernels)


def _rowwise(x: torch.Tensor, dim: int, kernel: Callable[..., torch.Tensor], *others: torch.Tensor,
             half_native: bool = False) -> torch.Tensor:
    """Moves ``dim`` last, views every tensor as contiguous ``[rows, n]``, runs ``kernel``, and
    returns a contiguous result shaped like ``x``. fp16/bf16 go through float32 copies unless
    ``half_native`` (the Triton kernels load them and compute in float32 in registers, which moves
    half the bytes and skips two casting passes)."""
    compute = x.dtype if half_native else compute_dtype(x.dtype)
    if dim == x.dim() - 1 and all(t.dtype == compute and t.is_contiguous() for t in (x, *others)):
        n = x.shape[-1]  # already [rows, n] of the compute dtype in memory: views in, the kernel's tensor out
        return kernel(*(t.view(-1, n) for t in (x, *others))).view(x.shape)
    moved = [t.movedim(dim, -1) for t in (x, *others)]
    shape = moved[0].shape
    rows2d = [t.to(compute).contiguous().reshape(-1, shape[-1]) for t in moved]
    out = kernel(*rows2d).reshape(shape).to(x.dtype)
    return out.movedim(-1, dim).contiguous()


def _cpp_forward(z: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(z)
    run_cpp("sparsemax_forward", z.data_ptr(), out.data_ptr(), z.shape[0], z.shape[1], dtype=z.dtype)
    return out


def _cpp_backward(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(g)
    run_cpp("sparsemax_backward", p.data_ptr(), g.data_ptr(), out.data_ptr(), p.shape[0], p.shape[1], dtype=p.dtype)
    return out


def _check(x: torch.Tensor, dim: int, name: str = "x", other: torch.Tensor | None = None) -> None:
    """Inside the custom ops: a floating tensor (and a gradient of its shape) and an axis in range."""
    check_tensor(x, name, floating=True)
    if other is not None:
        check_tensor(other, "grad", floating=True)
        if other.shape != x.shape:
            raise ValueError(f"grad must have the shape of p {tuple(x.shape)}, got {tuple(other.shape)}")
    if not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        raise IndexError(f"dim {dim} is out of range for a tensor with {x.dim()} dimensions")


@torch.library.custom_op("fastattr::sparsemax", mutates_args=())
def _sparsemax_op(x: torch.Tensor, dim: int, backend: Optional[str]) -> torch.Tensor:
    _check(x, dim)
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    name = resolve(x, backend)
    if name == "reference":
        return reference.sparsemax(x, dim).contiguous()
    if name == "cpp":
        return _rowwise(x, dim, _cpp_forward)
    return _rowwise(x, dim, triton_kernels("sparsemax").sparsemax_forward, half_native=True)


@_sparsemax_op.register_fake
def _(x, dim, backend):
    _check(x, dim)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastattr::sparsemax_backward", mutates_args=())
def _sparsemax_backward_op(p: torch.Tensor, grad: torch.Tensor, dim: int, backend: Optional[str]) -> torch.Tensor:
    _check(p, dim, "p", grad)
    if p.numel() == 0:
        return torch.empty_like(grad, memory_format=torch.contiguous_format)
    name = resolve(p, backend)
    if name == "reference":
        return reference.sparsemax_backward(p, grad, dim).contiguous()
    if name == "cpp":
        return _rowwise(grad, dim, lambda g, q: _cpp_backward(q, g), p)
    return _rowwise(grad, dim, lambda g, q: triton_kernels("sparsemax").sparsemax_backward(q, g), p, half_native=True)


@_sparsemax_backward_op.register_fake
def _(p, grad, dim, backend):
    _check(p, dim, "p", grad)
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _setup_forward(ctx, inputs, output):
    _, ctx.dim, ctx.backend = inputs
    ctx.save_for_backward(output)


def _forward_vjp(ctx, grad):
    (p,) = ctx.saved_tensors
    return _sparsemax_backward_op(p, grad, ctx.dim, ctx.backend), None, None


def _setup_backward(ctx, inputs, output):
    p, _, ctx.dim, ctx.backend = inputs
    ctx.save_for_backward(p)


def _backward_vjp(ctx, grad):
    # The backward is linear in g with a symmetric Jacobian that is piecewise constant in p.
    (p,) = ctx.saved_tensors
    return None, _sparsemax_backward_op(p, grad, ctx.dim, ctx.backend), None, None


_sparsemax_op.register_autograd(_forward_vjp, setup_context=_setup_forward)
_sparsemax_backward_op.register_autograd(_backward_vjp, setup_context=_setup_backward)
eager_without_compiler(_sparsemax_op)
eager_without_compiler(_sparsemax_backward_op)


def sparsemax(x: torch.Tensor, dim: int = -1, *, backend: Optional[str] = None) -> torch.Tensor:
    """Sparsemax along ``dim``: the Euclidean projection of ``x`` onto the probability simplex.

    ``p_i = max(x_i - tau, 0)`` with tau chosen so that ``sum_i p_i = 1`` (Martins & Astudillo 2016,
    "From Softmax to Sparsemax: A Sparse Model of Attention and Multi-Label Classification").
    Differentiable: ``dL/dx = (g - mean_{i in S} g_i) * 1_S`` with support ``S = {p > 0}``.

    Args:
        x: floating tensor of any shape (float32/float64 natively; fp16/bf16 computed in fp32).
        dim: the axis to normalise over.
        backend: ``"auto" | "reference" | "cpp" | "triton"``; None uses :func:`fastattr.get_backend`.

    Returns a new contiguous tensor shaped like ``x``. Kernel-level semantics (as softmax): ``-inf``
    entries get 0; a slice containing NaN or ``+inf``, or one that is all ``-inf``, becomes NaN.

    Example::

        >>> fastattr.sparsemax(torch.tensor([1.0, 0.8, -1.0]))
        tensor([0.6000, 0.4000, 0.0000])
    """
    check_tensor(x, "x", floating=True)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    _check(x, dim)
    if backend is not None:
        check_backend(backend)
    if x.dim() == 0:
        return run_op(_sparsemax_op, x.reshape(1), 0, backend).reshape(())
    if eager_cpu(x) and resolve(x, backend) == "cpp":
        return _rowwise(x, dim % x.dim(), _cpp_forward)
    return run_op(_sparsemax_op, x, dim % x.dim(), backend)
