"""A 2-D convolution whose input gradient comes from fastattr's C++ kernels: :func:`conv2d_input_grad`
(:mod:`fastattr.reference.conv`), and :func:`conv2d`, torch's own forward with that backward.

Why: oneDNN, torch 2.13's CPU convolution, spends ~2 µs per 8×8 example on the input gradient of the digits
CNN's first layer (one input channel, 16 outputs, 3×3: 9,216 multiply-adds), a tenth of every gradient
pass; the dense C++ kernel (channel sums per tap over register blocks of outputs, then the taps' rows added
into a padded buffer) takes about a third of that where the input has at most :data:`MAX_CHANNELS` channels;
with more, oneDNN's blocked kernels win on a dense gradient. But behind a max pool (and a ReLU) most of a
convolution's output gradient is zero: at most one output in each pooling window has one. The sparse C++
kernel sums, per example and output position, the weights of the channels whose gradient is nonzero
(``Σ_{co: g[co, o] ≠ 0} g[co, o] · weight[co, :, k]`` in registers, added at each tap ``k`` into a
channels-last buffer), work in proportion to the nonzeros; on the digits CNN's second layer (16 → 32 channels,
~16 % nonzero) it is about 1.7× faster than oneDNN (``fastattr bench agg --tables conv``). :func:`conv2d` uses it
for a layer that its caller knows feeds a max pool (``sparse_gradient``): the choice rests on the model's
structure, not on the data, so an example's gradient does not depend on the batch it came in.
Backends: reference and C++. A CUDA tensor keeps torch's (cuDNN) kernel: the op exists to replace oneDNN's on
CPU (:mod:`fastattr.core.layer_kernels`), so it has no Triton kernel. The sums run in another order than
oneDNN's, so gradients agree with torch's to rounding (~1e-7 relative in float32), not bit for bit; the
forward is torch's own call, bit for bit.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import _backend
from ..reference.conv import conv2d_input_grad as reference_input_grad
from ._utils import check_backend, check_tensor, cpp_eager, eager_cpu, resolve, run_cpp

__all__ = ["conv2d", "conv2d_input_grad", "conv_beats_torch", "sparse_kernel_fits"]

# Input channels up to which the dense kernel beats oneDNN's on the shapes measured (`fastattr bench agg
# --tables conv`).
MAX_CHANNELS = 2


def _quad(stride, padding, dilation) -> list[list[int]]:
    """``stride``, ``padding``, ``dilation`` as pairs of ints; a ``ValueError`` naming any that is not one."""
    out = []
    for name, v in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        pair = [v, v] if isinstance(v, int) else list(v) if isinstance(v, (tuple, list)) else None
        if pair is None or len(pair) != 2 or any(isinstance(a, bool) or not isinstance(a, int) for a in pair):
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        out.append(pair)
    return out


def conv2d_input_grad(grad: torch.Tensor, weight: torch.Tensor, input_size: Sequence[int], stride=1, padding=0,
                      dilation=1, *, backend: Optional[str] = None) -> torch.Tensor:
    """``∂L/∂x [N, Ci, H, W]`` of ``y = F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation)``
    (groups 1) from ``grad = ∂L/∂y [N, Co, OH, OW]`` (:mod:`fastattr.reference.conv`); ``input_size`` is
    ``(H, W)``. ``backend``: ``"auto" | "reference" | "cpp"`` (None: :func:`fastattr.get_backend`); a CUDA tensor, or
    ``"triton"``, runs torch's own kernel.

    Example::

        >>> g = fastattr.ops.conv2d_input_grad(torch.randn(4, 16, 8, 8), torch.randn(16, 1, 3, 3), (8, 8), padding=1)
    """
    check_tensor(grad, "grad", floating=True, dim=4)
    check_tensor(weight, "weight", dtype=grad.dtype, dim=4)
    if grad.shape[1] != weight.shape[0]:
        raise ValueError(f"grad has {grad.shape[1]} channels but weight has {weight.shape[0]} output channels")
    if weight.device != grad.device:
        raise ValueError(f"weight is on {weight.device} but grad on {grad.device}")
    if (not isinstance(input_size, (tuple, list)) or len(input_size) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in input_size)):
        raise ValueError(f"input_size must be (H, W), two positive ints, got {input_size!r}")
    s, p, d = _quad(stride, padding, dilation)
    out_hw = [(n + 2 * pp - dd * (k - 1) - 1) // ss + 1
              for n, k, ss, pp, dd in zip(input_size, weight.shape[2:], s, p, d)]
    if min(s + d) < 1 or min(p) < 0 or list(grad.shape[2:]) != out_hw:
        raise ValueError(f"grad of shape {tuple(grad.shape)} is not the output of a convolution of an input "
                         f"{tuple(input_size)} with weight {tuple(weight.shape)}, stride {s}, padding {p}, "
                         f"dilation {d} (expected {out_hw})")
    if grad.device.type != "cpu" or (backend or _backend.get_backend()) == "triton":
        check_backend(backend or "auto")
        return _torch_input_grad(grad, weight, input_size, s, p, d)
    if resolve(grad, backend) == "cpp" and grad.dtype in (torch.float32, torch.float64):
        return _cpp(grad, weight, tuple(input_size), s, p, d)
    return reference_input_grad(grad, weight, tuple(input_size), s, p, d)


def _torch_input_grad(grad, weight, input_size, s, p, d) -> torch.Tensor:
    shape = [grad.shape[0], weight.shape[1], *input_size]
    return torch.ops.aten.convolution_backward(grad, grad.new_empty(shape), weight, None, s, p, d, False, [0, 0], 1,
                                               [True, False, False])[0]


def _cpp(grad, weight, input_size, s, p, d) -> torch.Tensor:
    """The C++ input gradient: the sparse kernel where :func:`sparse_kernel_fits` (never for the few input channels
    of the dense kernel's layers) and every weight is finite (a skipped zero times one that is not would be NaN),
    the dense kernel otherwise."""
    g, w = grad.contiguous(), weight.contiguous()
    n, co, oh, ow = g.shape
    ci, kh, kw = w.shape[1:]
    out = torch.empty((n, ci) + tuple(input_size), dtype=g.dtype)
    args = (g.data_ptr(), w.data_ptr(), out.data_ptr(), n, co, ci, oh, ow, *input_size, kh, kw, *s, *p, *d)
    if out.numel() and not (sparse_kernel_fits(ci, co) and run_cpp("conv2d_input_grad_sparse", *args, dtype=g.dtype)):
        run_cpp("conv2d_input_grad", *args, dtype=g.dtype)
    return out


def _will_run(node) -> bool:
    """Whether the backward in progress reaches autograd node ``node`` (a parameter's gradient that
    ``torch.autograd.grad(out, inputs)`` does not ask for is skipped, as torch's own convolution skips it);
    True where torch cannot tell."""
    try:
        return node is None or bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):
        return True


class _Conv2d(torch.autograd.Function):
    """torch's ``conv2d`` forward; its backward the C++ input gradient and torch's weight and bias gradients
    where the backward uses them (torch's own backward for a double backward or a wrapped gradient)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.geometry = (stride, padding, dilation)
        ctx.nodes = (weight.grad_fn, None if bias is None else bias.grad_fn)
        ctx.save_for_backward(x, weight, bias)
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        s, p, d = _quad(*ctx.geometry)
        need = list(ctx.needs_input_grad[:3])
        bias_sizes = None if bias is None else list(bias.shape)
        if torch.is_grad_enabled() or not eager_cpu(grad, gradients=True) or grad.dtype != x.dtype:
            out = torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, s, p, d, False, [0, 0], 1, need)
            return out[0], out[1], out[2], None, None, None
        need[1] = need[1] and _will_run(ctx.nodes[0])
        need[2] = need[2] and _will_run(ctx.nodes[1])
        gx = _cpp(grad, weight, tuple(x.shape[2:]), s, p, d) if need[0] else None
        gw = gb = None
        if need[1] or need[2]:
            _, gw, gb = torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, s, p, d, False, [0, 0], 1,
                                                            [False, need[1], need[2]])
        return gx, gw, gb, None, None, None


def sparse_kernel_fits(in_channels: int, out_channels: int) -> bool:
    """Whether the sparse kernel's fast path (float32, AVX2) takes a convolution of these channel counts:
    multiples of 8 both."""
    return in_channels % 8 == 0 and out_channels % 8 == 0


def conv_beats_torch(x, weight, sparse_gradient: bool = False) -> bool:
    """Whether :func:`conv2d` beats torch's ``conv2d`` on ``x``: a plain CPU float32 / float64 ``[N, Ci, H, W]``
    tensor that needs its gradient, in an eager call (no ``torch.compile``, tracing, torch function or dispatch
    mode, functorch transform or forward-mode AD) with the C++ backend in force, and ``weight`` of its dtype,
    with ``Ci ≤`` :data:`MAX_CHANNELS` (the dense kernel) or, for a layer whose output gradient is mostly zero
    (``sparse_gradient``: it feeds a max pool), in float32 with channel counts that :func:`sparse_kernel_fits`."""
    if not (cpp_eager(x, weight) and torch.is_grad_enabled() and x.requires_grad and x.dim() == weight.dim() == 4
            and x.shape[1] == weight.shape[1]):
        return False
    return x.shape[1] <= MAX_CHANNELS or (sparse_gradient and x.dtype == torch.float32
                                          and sparse_kernel_fits(weight.shape[1], weight.shape[0]))


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1, padding=0,
           dilation=1, *, sparse_gradient: bool = False) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation)`` (groups 1, numeric padding), bit for bit, whose
    input gradient comes from :func:`conv2d_input_grad`'s C++ kernels where :func:`conv_beats_torch` (the sparse
    one for ``sparse_gradient``: a layer that feeds a max pool); torch's call otherwise.

    Example::

        >>> y = fastattr.ops.conv.conv2d(x.requires_grad_(), conv.weight, conv.bias, padding=1)
    """
    if not conv_beats_torch(x, weight, sparse_gradient):
        return F.conv2d(x, weight, bias, stride, padding, dilation)
    return _Conv2d.apply(x, weight.view_as(weight) if weight.requires_grad else weight,
                         None if bias is None else bias.view_as(bias) if bias.requires_grad else bias,
                         stride, padding, dilation)
