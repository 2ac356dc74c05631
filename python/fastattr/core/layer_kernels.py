"""A model's max pooling and first convolutions through fastattr's faster CPU kernels inside its calls.

torch 2.13's CPU ``max_pool2d`` on contiguous (NCHW) inputs is 7–13× slower than its channels-last kernel
(:mod:`fastattr.ops.max_pool`), a fifth of each forward-and-backward pass of a small pooling CNN. For the
duration of a guarded call (:func:`~fastattr.core.model_guard`) on CPU inputs, every module of exact type
``nn.MaxPool2d`` runs its forward through :func:`fastattr.ops.max_pool2d` where that op beats torch's
kernel (:func:`fastattr.ops.max_pool.beats_torch`) and through its own forward otherwise. Values, indices
and gradients are torch's bit for bit; the module's hooks run as before. The module gets an instance
``forward`` for the call, removed on exit even when the call raises; a module that already has one, or a
subclass of ``nn.MaxPool2d`` (its forward may differ), is left alone.

In the same calls an ``nn.Sequential`` (exact type) pools before its ReLU wherever an ``nn.ReLU`` child is
followed by a max-pool child (``nn.MaxPool1d/2d/3d``, ``nn.AdaptiveMaxPool1d/2d/3d``, no indices returned):
``maxpool(ReLU(h)) = ReLU(maxpool(h))`` for windows with an element in range, since a window's first
maximum of ``h`` is positive exactly when it is the window's first maximum of ``ReLU(h)`` (else both
gradients are zero), so values and gradients are those of the model's order bit for bit — but for the sign
of a zero (a window whose maximum is ``−0.0`` gives ``−0.0``, where the model's order gives ``+0.0``) and
NaN payloads — while the ReLU and its backward touch a pooled tensor (a quarter of ``h`` for a 2×2 pool)
instead of ``h``. The pair is left in order when either module (or, for an in-place ReLU, the child that
made ``h``) has hooks or a forward of its own, when global module hooks are set, for a pool with padding
and dilation in one axis (a window may have no element in range: ``−inf``, which the ReLU would make 0),
for an in-place ReLU whose input did not come from a convolution, linear or batch-norm child of the same
``Sequential`` (its in-place update could be seen elsewhere), and for an input that is not a plain CPU
tensor in an eager call (:func:`fastattr.ops.max_pool.eager_pooling`: ``torch.fx`` tracing, as
contextual decomposition and IBA do, ``torch.compile``, modes and transforms see the model's own order).
Under :func:`torch_pooling`, and in other threads, every module pools through torch's kernel in the
model's order.

In the same calls every ``nn.Conv2d`` (exact type, groups 1, zero padding given as numbers, no forward of its
own) whose input needs its gradient runs through :func:`fastattr.ops.conv.conv2d` where one of its C++ input
gradients fits: the dense kernel for at most :data:`fastattr.ops.conv.MAX_CHANNELS` input channels (oneDNN takes
about 3× longer on a grayscale CNN's first layer), the sparse one for a float32 layer of channel counts that
:func:`fastattr.ops.conv.sparse_kernel_fits` whose next sibling in an ``nn.Sequential`` (exact type) is a 2-D max
pool, or a ReLU and then one (at most one output in each window gets a gradient; about 1.7× faster than oneDNN on
the digits CNN's second layer). The forward is torch's, bit for bit; the input gradient equals torch's to
rounding; weight and bias gradients are torch's, computed only where the backward uses them.
:func:`torch_convolution` keeps torch's own backward.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from ..ops import max_pool2d
from ..ops.conv import MAX_CHANNELS, conv2d, conv_beats_torch, sparse_kernel_fits
from ..ops.max_pool import beats_torch, eager_pooling

__all__ = ["fast_conv_here", "fast_layers", "fast_pool_here", "torch_convolution", "torch_pooling"]

_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
              nn.AdaptiveMaxPool3d)
# Children whose output is a tensor of their own, which an in-place ReLU after them may update unseen.
_FRESH = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_forward_hooks_always_called",
                 "_global_backward_pre_hooks", "_global_backward_hooks")

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("fastattr_fast_pooling", default=True)
_conv_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("fastattr_fast_convolution", default=True)
_active: contextvars.ContextVar[bool] = contextvars.ContextVar("fastattr_pooling_call", default=False)


def fast_pool_here(x) -> bool:
    """Whether fastattr pools ``x`` with :func:`fastattr.ops.max_pool2d`: inside a :func:`fast_layers` block
    of this thread, outside :func:`torch_pooling`, where the op beats torch's kernel (``beats_torch``)."""
    return _active.get() and _enabled.get() and beats_torch(x)


def _pool_forward(self: nn.MaxPool2d, input: torch.Tensor):
    """``nn.MaxPool2d.forward`` through :func:`fastattr.ops.max_pool2d` where :func:`fast_pool_here`; torch's
    forward otherwise."""
    if not fast_pool_here(input):
        return nn.MaxPool2d.forward(self, input)
    out, idx = max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
    return (out, idx) if self.return_indices else out


class _InstanceForward:
    """The instance ``forward`` a module carries during a call. A copy of the module made meanwhile
    (``copy.deepcopy``, pickling) carries one bound to the copy, which runs as torch does outside fastattr's
    calls and unpickles wherever fastattr is installed."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        self.module = module

    def __reduce__(self):
        return type(self), (self.module,)


class _PoolForward(_InstanceForward):
    """An ``nn.MaxPool2d``'s: :func:`_pool_forward`."""

    __slots__ = ()

    def __call__(self, input: torch.Tensor):
        return _pool_forward(self.module, input)


def fast_conv_here(x, conv: nn.Conv2d, sparse_gradient: bool = False) -> bool:
    """Whether fastattr runs ``conv`` on ``x`` through :func:`fastattr.ops.conv.conv2d`: inside a
    :func:`fast_layers` block of this thread, outside :func:`torch_convolution`, for a convolution with groups 1
    and numeric zero padding where that op beats torch's (:func:`~fastattr.ops.conv.conv_beats_torch`)."""
    return (_active.get() and _conv_enabled.get() and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and conv_beats_torch(x, conv.weight, sparse_gradient))


class _ConvForward(_InstanceForward):
    """An ``nn.Conv2d``'s: :func:`fastattr.ops.conv.conv2d` where :func:`fast_conv_here`, torch's forward
    otherwise."""

    __slots__ = ()
    sparse_gradient = False

    def __call__(self, input):
        conv = self.module
        if not fast_conv_here(input, conv, self.sparse_gradient):
            return nn.Conv2d.forward(conv, input)
        return conv2d(input, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                      sparse_gradient=self.sparse_gradient)


class _PooledConvForward(_ConvForward):
    """An ``nn.Conv2d``'s that feeds a max pool: its output gradient is mostly zero (the sparse kernel)."""

    __slots__ = ()
    sparse_gradient = True


_POOLS_2D = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


def _pooled_convs(modules: list[nn.Module]) -> set[int]:
    """The ids of the ``nn.Conv2d`` children of exact ``nn.Sequential`` modules under ``modules`` whose next
    sibling is a 2-D max pool, or a ReLU followed by one."""
    out = set()
    for root in modules:
        for seq in root.modules():
            if type(seq) is not nn.Sequential:
                continue
            kinds = [type(child) for child in seq] + [None]
            for child, nxt, after in zip(seq, kinds[1:], kinds[2:] + [None]):
                if type(child) is nn.Conv2d and (nxt in _POOLS_2D or (nxt is nn.ReLU and after in _POOLS_2D)):
                    out.add(id(child))
    return out


def _ours(module: nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return isinstance(forward, _InstanceForward) and forward.module is module


def _plain(module: nn.Module) -> bool:
    """No hooks on ``module`` and no forward of its own but fastattr's."""
    return (not (module._forward_pre_hooks or module._forward_hooks or module._backward_pre_hooks
                 or module._backward_hooks)
            and ("forward" not in module.__dict__ or _ours(module)))


def _relu_then_pool(a: nn.Module, b: nn.Module) -> bool:
    return type(a) is nn.ReLU and type(b) in _MAX_POOLS


def _every_window_in_range(pool: nn.Module) -> bool:
    """No window of ``pool`` misses the input: an adaptive pool, or in each axis no padding or no dilation."""
    if not hasattr(pool, "dilation"):
        return True
    axes = _MAX_POOLS.index(type(pool)) + 1

    def per_axis(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * axes

    return all(p == 0 or d == 1 for p, d in zip(per_axis(pool.padding), per_axis(pool.dilation)))


def _pools_first(children: list, i: int) -> bool:
    """Whether ``children[i]``, ``children[i + 1]`` is a ReLU and a max pool that may run pool first."""
    relu, pool = children[i], children[i + 1]
    if not (_relu_then_pool(relu, pool) and not pool.return_indices
            and _plain(relu) and _plain(pool) and _every_window_in_range(pool)):
        return False
    return not relu.inplace or (i > 0 and type(children[i - 1]) in _FRESH and _plain(children[i - 1]))


def _sequential_forward(self: nn.Sequential, input):
    """``nn.Sequential.forward``, each ReLU child followed by a max-pool child run after it where
    :func:`_pools_first` (module docstring), during fastattr's calls on this thread."""
    if (not (_active.get() and _enabled.get() and eager_pooling(input))
            or any(getattr(torch_module, name) for name in _GLOBAL_HOOKS)):
        return nn.Sequential.forward(self, input)
    children, i = list(self), 0
    while i < len(children):
        if i + 1 < len(children) and _pools_first(children, i):
            input = children[i](children[i + 1](input))
            i += 2
        else:
            input = children[i](input)
            i += 1
    return input


class _SequentialForward(_InstanceForward):
    """An ``nn.Sequential``'s with a ReLU child before a max-pool child: :func:`_sequential_forward`."""

    __slots__ = ()

    def __call__(self, input):
        return _sequential_forward(self.module, input)


def _has_relu_pool(module: nn.Sequential) -> bool:
    children = list(module)
    return any(_relu_then_pool(a, b) for a, b in zip(children, children[1:]))


def _forward_class(m: nn.Module, pooled: set[int]):
    """The instance forward :func:`fast_layers` gives ``m`` (exact types without a forward of their own), or None;
    ``pooled``: the ids of the convolutions that feed a max pool (:func:`_pooled_convs`)."""
    if "forward" in m.__dict__:
        return None
    if type(m) is nn.MaxPool2d:
        return _PoolForward
    if type(m) is nn.Sequential and _has_relu_pool(m):
        return _SequentialForward
    if type(m) is nn.Conv2d and m.in_channels <= MAX_CHANNELS:
        return _ConvForward
    if type(m) is nn.Conv2d and id(m) in pooled and sparse_kernel_fits(m.in_channels, m.out_channels):
        return _PooledConvForward
    return None


@contextlib.contextmanager
def fast_layers(modules: list[nn.Module], inputs) -> Iterator[None]:
    """The ``nn.MaxPool2d`` modules inside ``modules`` pool through :func:`fastattr.ops.max_pool2d`, their
    ``nn.Sequential`` modules pool before a ReLU, and their ``nn.Conv2d`` modules take a C++ input gradient
    where one fits (few input channels, or a max pool next), for the block unless ``inputs`` is None or a tensor off the CPU (module docstring;
    ``inputs`` may be a dataset, as :func:`fastattr.evaluate_dataset` guards its whole loop: each call checks its
    own tensors);
    other threads' calls of them keep torch's kernels and the model's order."""
    off_cpu = inputs is None or (isinstance(inputs, torch.Tensor) and inputs.device.type != "cpu")
    on = (_enabled.get() or _conv_enabled.get()) and not off_cpu
    pooled = _pooled_convs(modules) if on else set()
    patched = [m for root in modules for m in root.modules() if on and _forward_class(m, pooled) is not None]
    for m in patched:
        m.forward = _forward_class(m, pooled)(m)
    token = _active.set(_active.get() or on)
    try:
        yield
    finally:
        _active.reset(token)
        for m in patched:
            if _ours(m):
                del m.forward


@contextlib.contextmanager
def torch_pooling() -> Iterator[None]:
    """fastattr's calls in the block leave every ``nn.MaxPool2d`` on torch's own kernel and every
    ``nn.Sequential`` in its own order (:func:`fast_layers` off for them): for a comparison, or a model whose
    pooling must not be touched."""
    token = _enabled.set(False)
    try:
        yield
    finally:
        _enabled.reset(token)


@contextlib.contextmanager
def torch_convolution() -> Iterator[None]:
    """fastattr's calls in the block leave every ``nn.Conv2d`` on torch's own backward (:func:`fast_layers` off
    for convolutions): for a comparison, or gradients that must be torch's bit for bit."""
    token = _conv_enabled.set(False)
    try:
        yield
    finally:
        _conv_enabled.reset(token)
