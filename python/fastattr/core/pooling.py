"""Faster max pooling inside fastattr's calls on CPU.

torch 2.13's CPU ``max_pool2d`` on contiguous (NCHW) inputs is 7–13× slower than its channels-last kernel
(:mod:`fastattr.ops.max_pool`), a fifth of each forward-and-backward pass of a small pooling CNN. For the
duration of a guarded call (:func:`~fastattr.core.model_guard`) on CPU inputs, every module of exact type
``nn.MaxPool2d`` runs its forward through :func:`fastattr.ops.max_pool2d` where that op beats torch's
kernel (:func:`fastattr.ops.max_pool.beats_torch`) and through its own forward otherwise. Values, indices
and gradients are torch's bit for bit; the module's hooks run as before. The module gets an instance
``forward`` for the call, removed on exit even when the call raises; a module that already has one, or a
subclass of ``nn.MaxPool2d`` (its forward may differ), is left alone. Under :func:`torch_pooling`, and in
other threads, every module pools through torch's kernel.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
from torch import nn

from ..ops import max_pool2d
from ..ops.max_pool import beats_torch

__all__ = ["fast_pool_here", "fast_pooling", "torch_pooling"]

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("fastattr_fast_pooling", default=True)
_active: contextvars.ContextVar[bool] = contextvars.ContextVar("fastattr_pooling_call", default=False)


def fast_pool_here(x) -> bool:
    """Whether fastattr pools ``x`` with :func:`fastattr.ops.max_pool2d`: inside a :func:`fast_pooling` block
    of this thread, outside :func:`torch_pooling`, where the op beats torch's kernel (``beats_torch``)."""
    return _active.get() and _enabled.get() and beats_torch(x)


def _pool_forward(self: nn.MaxPool2d, input: torch.Tensor):
    """``nn.MaxPool2d.forward`` through :func:`fastattr.ops.max_pool2d` where :func:`fast_pool_here`; torch's
    forward otherwise."""
    if not fast_pool_here(input):
        return nn.MaxPool2d.forward(self, input)
    out, idx = max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
    return (out, idx) if self.return_indices else out


class _PoolForward:
    """The instance ``forward`` a pool carries during a call. A copy of the module made meanwhile
    (``copy.deepcopy``, pickling) carries one bound to the copy, which pools as torch does outside
    fastattr's calls and unpickles wherever fastattr is installed."""

    __slots__ = ("module",)

    def __init__(self, module: nn.MaxPool2d):
        self.module = module

    def __call__(self, input: torch.Tensor):
        return _pool_forward(self.module, input)

    def __reduce__(self):
        return _PoolForward, (self.module,)


def _ours(module: nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return isinstance(forward, _PoolForward) and forward.module is module


@contextlib.contextmanager
def fast_pooling(modules: list[nn.Module], inputs) -> Iterator[None]:
    """The ``nn.MaxPool2d`` modules inside ``modules`` pool through :func:`fastattr.ops.max_pool2d` for the
    block when ``inputs`` is a CPU tensor (module docstring); other threads' calls of them keep torch's
    kernel."""
    on = _enabled.get() and isinstance(inputs, torch.Tensor) and inputs.device.type == "cpu"
    pools = [m for root in modules for m in root.modules()
             if type(m) is nn.MaxPool2d and "forward" not in m.__dict__] if on else []
    for m in pools:
        m.forward = _PoolForward(m)
    token = _active.set(_active.get() or on)
    try:
        yield
    finally:
        _active.reset(token)
        for m in pools:
            if _ours(m):
                del m.forward


@contextlib.contextmanager
def torch_pooling() -> Iterator[None]:
    """fastattr's calls in the block leave every ``nn.MaxPool2d`` on torch's own kernel (:func:`fast_pooling`
    off): for a comparison, or a model whose pooling must not be touched."""
    token = _enabled.set(False)
    try:
        yield
    finally:
        _enabled.reset(token)
