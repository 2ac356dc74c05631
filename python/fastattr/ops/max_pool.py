"""The ``fastattr::max_pool2d`` custom op: 2-D max pooling with the indices of the maxima, as torch's
``max_pool2d_with_indices`` computes it (:mod:`fastattr.reference.max_pool`: the first maximum of each
window scanned row-major, NaN winning, indices flat in each ``[H, W]`` plane), bit for bit.

Why an op: torch 2.13's CPU kernel for contiguous (NCHW) inputs takes 7–13× longer than its own
channels-last kernel on the same data (a 2×2 pool of ``[1024, 32, 8, 8]``: ~8 ms against ~1 ms on
2 threads), a fifth of every forward-and-backward pass of the digits CNN. The C++ kernel here is
OpenMP over planes; a 2×2 stride-2 window is unrolled, other windows update a row of outputs one tap
at a time (independent chains in place of one serial chain per output). Backends: reference, C++,
Triton. The backward is torch's own ``max_pool2d_with_indices_backward`` on the op's indices, so
gradients (and double backward) are torch's; called eagerly on CPU, a C++ kernel computes the same sums
in one pass (each plane zeroed and summed into in torch's order, where torch first zeroes the whole input
gradient; 3–8 % of the digits CNN's explainers), dropping the term of a window with no element in range,
which torch's kernel writes outside its plane. :mod:`fastattr.core.layer_kernels` runs a model's
``nn.MaxPool2d`` modules through this op during fastattr's calls on CPU.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..reference.max_pool import max_pool2d as reference_max_pool2d, output_size
from ._utils import check_backend, check_tensor, cpp_eager, eager_cpu, eager_without_compiler, in_compute, resolve, \
    run_cpp, run_op, triton_kernels

__all__ = ["beats_torch", "eager_pooling", "max_pool2d"]

# Below this many input elements torch's own kernel is done before the op's Python (~60 µs) is.
_MIN_ELEMENTS = 1 << 16

Size = Union[int, Sequence[int]]


def _pair(value, name: str, *, minimum: int) -> list[int]:
    items = [value, value] if isinstance(value, int) else list(value) if isinstance(value, (tuple, list)) else None
    if items is None or len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return items


def _sizes(x: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[int, int]:
    check_tensor(x, "x", floating=True)
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be [C, H, W] or [N, C, H, W], got shape {tuple(x.shape)}")
    if any(2 * p > k for p, k in zip(padding, kernel_size)):
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel_size}")
    out = tuple(output_size(n, k, s, p, d, ceil_mode) for n, k, s, p, d in
                zip(x.shape[-2:], kernel_size, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(f"x of shape {tuple(x.shape)} is too small for the window {kernel_size} (dilation "
                         f"{dilation}, padding {padding}): the output would be {out}")
    return out


def _cpp(x, out_hw, kernel_size, stride, padding, dilation):
    xc = in_compute(x)
    h, w = xc.shape[-2:]
    out = torch.empty(xc.shape[:-2] + tuple(out_hw), dtype=xc.dtype)
    idx = torch.empty(out.shape, dtype=torch.int64)
    if out.numel():
        run_cpp("max_pool2d", xc.data_ptr(), out.data_ptr(), idx.data_ptr(), xc.numel() // (h * w), h, w, *out_hw,
                *kernel_size, *stride, *padding, *dilation, dtype=xc.dtype)
    return out.to(x.dtype), idx


@torch.library.custom_op("fastattr::max_pool2d", mutates_args=())
def _max_pool2d_op(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                   dilation: list[int], ceil_mode: bool, backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    out_hw = _sizes(x, kernel_size, stride, padding, dilation, ceil_mode)
    name = resolve(x, backend)
    if name == "reference":
        return reference_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    if name == "cpp":
        return _cpp(x, out_hw, kernel_size, stride, padding, dilation)
    out, idx = triton_kernels("max_pool").max_pool2d(in_compute(x), out_hw, kernel_size, stride, padding, dilation)
    return out.to(x.dtype), idx


@_max_pool2d_op.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, backend):
    out_hw = _sizes(x, kernel_size, stride, padding, dilation, ceil_mode)
    shape = x.shape[:-2] + out_hw
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


def _setup(ctx, inputs, output):
    x, ctx.kernel_size, ctx.stride, ctx.padding, ctx.dilation, ctx.ceil_mode, _ = inputs
    ctx.save_for_backward(x, output[1])
    ctx.mark_non_differentiable(output[1])


def _vjp(ctx, grad, _grad_indices):
    x, idx = ctx.saved_tensors
    g = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, ctx.kernel_size, ctx.stride, ctx.padding,
                                                        ctx.dilation, ctx.ceil_mode, idx)
    return g, None, None, None, None, None, None


_max_pool2d_op.register_autograd(_vjp, setup_context=_setup)
eager_without_compiler(_max_pool2d_op)


def _cpp_backward(grad: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """torch's ``max_pool2d_with_indices_backward(grad, x, ..., idx)`` from the C++ kernel, bit for bit: each
    plane zeroed and summed into in one pass, where torch zeroes the whole tensor first. The one exception: a
    window with no element in range (padding with dilation) has an index outside its plane, which torch's
    kernel writes into the next plane or past the tensor's end; this one drops it (the window's −inf depends
    on no input)."""
    g = grad.contiguous()
    out = torch.empty(x.shape, dtype=g.dtype)
    h, w = x.shape[-2:]
    oh, ow = g.shape[-2:]
    if out.numel():
        run_cpp("max_pool2d_backward", g.data_ptr(), idx.data_ptr(), out.data_ptr(), out.numel() // (h * w), h, w,
                oh, ow, dtype=g.dtype)
    return out


class _EagerPool(torch.autograd.Function):
    """The C++ kernel called in eager mode without the custom op's dispatch (~70 µs a call with autograd on
    this project's 2-core VM), with the op's backward (from the C++ kernel unless a double backward records
    it)."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, out_hw):
        out, idx = _cpp(x, out_hw, kernel_size, stride, padding, dilation)
        _setup(ctx, (x, kernel_size, stride, padding, dilation, ceil_mode, None), (out, idx))
        return out, idx

    @staticmethod
    def backward(ctx, grad, grad_indices):
        if torch.is_grad_enabled() or grad.dtype not in (torch.float32, torch.float64) or not eager_cpu(grad):
            return _vjp(ctx, grad, grad_indices)   # a double backward, or a batched or wrapped gradient
        x, idx = ctx.saved_tensors
        return _cpp_backward(grad, x, idx), None, None, None, None, None, None


def max_pool2d(x: torch.Tensor, kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
               dilation: Size = 1, ceil_mode: bool = False, *, backend: Optional[str] = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, indices)`` of ``F.max_pool2d(x, ..., return_indices=True)`` (module docstring), for floating
    ``x [N, C, H, W]`` or ``[C, H, W]``; ``stride`` None means ``kernel_size``. Differentiable in ``x``.

    Args:
        backend: ``"auto" | "reference" | "cpp" | "triton"``; None uses :func:`fastattr.get_backend`.

    Example::

        >>> out, idx = fastattr.ops.max_pool2d(torch.randn(8, 16, 32, 32), 2)   # [8, 16, 16, 16] each
    """
    k = _pair(kernel_size, "kernel_size", minimum=1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else \
        _pair(stride, "stride", minimum=1)
    p = _pair(padding, "padding", minimum=0)
    d = _pair(dilation, "dilation", minimum=1)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    out_hw = _sizes(x, k, s, p, d, ceil_mode)
    if backend is not None:
        check_backend(backend)
    if eager_cpu(x, gradients=True) and resolve(x, backend) == "cpp":
        return _EagerPool.apply(x, k, s, p, d, ceil_mode, out_hw)
    return run_op(_max_pool2d_op, x, k, s, p, d, ceil_mode, backend)


def eager_pooling(x) -> bool:
    """Whether ``x`` is a plain CPU tensor in an eager call: no ``torch.compile``, tracing (``torch.fx`` passes
    proxies), torch function or dispatch mode, functorch transform or forward-mode AD, which must all see a
    model's own modules in its own order (:mod:`fastattr.core.layer_kernels`)."""
    return isinstance(x, torch.Tensor) and eager_cpu(x, gradients=True)


def beats_torch(x) -> bool:
    """Whether :func:`max_pool2d` with the C++ kernel is faster than torch's kernel on ``x``: a contiguous
    (NCHW) float32 / float64 tensor ``[N, C, H, W]`` or ``[C, H, W]`` of at least 2¹⁶ elements that
    :func:`max_pool2d` runs eagerly on the C++ kernel (a plain CPU tensor or parameter, no ``torch.compile``
    or tracing, torch function or dispatch mode, functorch transform or forward-mode AD; the C++ backend in
    force).
    Channels-last inputs keep torch's kernel, which is fast for them."""
    return cpp_eager(x) and x.dim() in (3, 4) and x.numel() >= _MIN_ELEMENTS and x.is_contiguous()

