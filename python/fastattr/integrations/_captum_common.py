"""Helpers shared by the Captum drop-ins (:mod:`fastattr.integrations.captum` and its perturbation
module): Captum-style inputs, baselines, targets and ``additional_forward_args`` turned into what
fastattr's functions take."""
from __future__ import annotations

import functools
import inspect
import re
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..core import chunk_size, model_guard, resolve_target, select, use_model_mode


def _single_input(inputs) -> Tuple[torch.Tensor, bool]:
    """The one input tensor, and whether it came as a tuple."""
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise NotImplementedError(
                f"fastattr.integrations.captum attributes one input tensor; got a tuple of {len(inputs)}. "
                "Models with several input tensors are not supported yet: pass the others through "
                "additional_forward_args (not attributed) or use captum.attr for this model")
        return inputs[0], True
    return inputs, False


def _output(attr: torch.Tensor, is_tuple: bool):
    return (attr,) if is_tuple else attr


def _single_of(value, name: str = "baseline"):
    """A per-input argument (``baselines``, ``feature_mask``) given as a tuple of one → that one; other
    tuples are refused."""
    if isinstance(value, tuple):
        if len(value) != 1:
            raise ValueError(f"one input tensor takes one {name}, got a tuple of {len(value)}")
        return value[0]
    return value


def _unsupported(**arguments) -> None:
    """``NotImplementedError`` naming each Captum argument given a value fastattr does not support."""
    for name, value in arguments.items():
        if value is not None:
            raise NotImplementedError(f"{name}={value!r} is not supported by fastattr.integrations.captum; "
                                      f"leave it None or use captum.attr for this call")


def _as_args(additional_forward_args) -> Optional[tuple]:
    if additional_forward_args is None or isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _per_example(arg, rows: int) -> bool:
    """Whether ``arg`` holds one row per example: a tensor whose first dimension is the batch size."""
    return isinstance(arg, torch.Tensor) and arg.dim() > 0 and arg.shape[0] == rows


def _has_batch_tensor(args, rows: int) -> bool:
    """Whether ``args`` (tuples, lists and dicts searched) hold a per-example tensor."""
    if isinstance(args, (tuple, list)):
        return any(_has_batch_tensor(a, rows) for a in args)
    if isinstance(args, dict):
        return any(_has_batch_tensor(a, rows) for a in args.values())
    return _per_example(args, rows)


def _tiled(args, copies: int, rows: int, interleave: bool = False):
    """``args`` with every per-example tensor repeated ``copies`` times along dim 0 (whole batches one
    after another, or each row ``copies`` times in place with ``interleave``; tuples, lists and dicts
    rebuilt around them); every other value, shared tensors included, passed as it is."""
    if isinstance(args, (tuple, list)):
        return type(args)(_tiled(a, copies, rows, interleave) for a in args)
    if isinstance(args, dict):
        return {k: _tiled(a, copies, rows, interleave) for k, a in args.items()}
    if not _per_example(args, rows):
        return args
    if interleave:
        return args.repeat_interleave(copies, dim=0)
    return args.repeat((copies,) + (1,) * (args.dim() - 1))


class _Bound(nn.Module):
    """``forward_func(z, *additional_forward_args)``, optionally with the output flattened to ``[N, -1]``.

    fastattr stacks copies of the batch along dim 0 (steps or samples, each a whole batch of
    ``rows`` examples in order), so every tensor argument whose first dimension is the batch size
    (also inside tuples, lists and dicts) is tiled to match; other tensors are shared by every row
    and passed as they are.
    """

    def __init__(self, forward_func: Callable, args: Optional[tuple], rows: int, flatten: bool):
        super().__init__()
        self.forward_func = forward_func
        self.args = args or ()
        self.rows = rows
        self.flatten = flatten
        self.training = bool(getattr(forward_func, "training", False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        args = self.args
        if _has_batch_tensor(args, self.rows):
            copies, rest = divmod(z.shape[0], self.rows)
            if rest or copies == 0:
                raise RuntimeError(f"internal error: a chunk of {z.shape[0]} inputs is not whole batches of "
                                   f"{self.rows}")
            args = _tiled(args, copies, self.rows)
        out = self.forward_func(z, *args)
        return out.reshape(z.shape[0], -1) if self.flatten else out


def _flat_target(output_shape: tuple, target) -> torch.Tensor:
    """Row-major indices into the flattened output for a tuple or a list of tuples of indices."""
    dims = output_shape[1:]
    rows = [target] * output_shape[0] if isinstance(target, tuple) else list(target)
    flat = []
    for index in rows:
        if len(index) != len(dims) or not all(isinstance(i, (int, np.integer)) for i in index):
            raise NotImplementedError(
                f"target {index!r} must index every non-batch dimension of the output (shape "
                f"{tuple(output_shape)}) with an int; targets that select several outputs per example "
                "are not supported")
        if any(not -d <= i < d for i, d in zip(index, dims)):
            raise ValueError(f"target {index!r} is out of range for an output of shape {tuple(output_shape)}")
        flat.append(int(np.ravel_multi_index(tuple(int(i) % d for i, d in zip(index, dims)), dims)))
    return torch.tensor(flat, dtype=torch.long)


def _bind(forward_func: Callable, x: torch.Tensor, target, additional_forward_args, max_batch: Optional[int],
          total: int):
    """The model, target and ``max_batch`` to hand to fastattr for Captum-style arguments.

    ``total`` is the number of model inputs the method runs (e.g. ``n_steps * batch``).
    """
    args = _as_args(additional_forward_args)
    if isinstance(target, torch.Tensor) and target.numel() == 1:
        target = int(target.item())
    flatten = isinstance(target, tuple) or (isinstance(target, list) and len(target) > 0
                                            and isinstance(target[0], tuple))
    if args is None and not flatten:
        return forward_func, target, max_batch
    model = _Bound(forward_func, args, x.shape[0], flatten=False)
    if flatten:
        with torch.no_grad():
            target = _flat_target(tuple(model(x).shape), target)
        model.flatten = True
    if _has_batch_tensor(args, x.shape[0]):
        # Chunks must hold whole batches for the tiling in _Bound (Captum never splits a batch either).
        limit = max_batch if max_batch is not None else chunk_size(x, total, None, None)
        max_batch = max(limit, x.shape[0])
    # A plain function stays a function, so layer lookups do not search the wrapper's (empty) modules.
    return (model if isinstance(forward_func, nn.Module) else model.forward), target, max_batch


def _as_captum(method: Callable, inputs_name: str = "inputs") -> Callable:
    """``method`` run under Captum's train-mode semantics with the model's state guarded; its argument
    ``inputs_name`` holds what the model runs (checked against the model's dtype)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            inputs = signature.bind(self, *args, **kwargs).arguments.get(inputs_name)
        except TypeError:
            return method(self, *args, **kwargs)
        inputs = inputs[0] if isinstance(inputs, tuple) and len(inputs) == 1 else inputs
        with use_model_mode("as_given"), model_guard(self.forward_func, inputs, name=inputs_name):
            return method(self, *args, **kwargs)
    return call


class _Attribution:
    """What Captum's ``Attribution`` offers: ``forward_func``, ``has_convergence_delta``, ``multiplies_by_inputs``.

    Subclasses set ``_has_delta`` (class) and ``_multiply_by_inputs`` (class default, or the
    constructor's ``multiply_by_inputs`` for the methods where Captum makes it a choice). Every
    ``attribute`` and ``compute_convergence_delta`` runs the model as Captum does, in the mode it is
    given (``use_model_mode("as_given")``: batch statistics and dropout of a model in training mode),
    and leaves its flags and buffers as they were (:func:`fastattr.core.model_guard`)."""

    _has_delta = False
    _multiply_by_inputs = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "attribute" in cls.__dict__:
            cls.attribute = _as_captum(cls.__dict__["attribute"])

    def __init__(self, forward_func: Callable, multiply_by_inputs: Optional[bool] = None):
        self.forward_func = forward_func
        if multiply_by_inputs is not None:
            self._multiply_by_inputs = multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return self._has_delta

    @classmethod
    def get_name(cls) -> str:
        """The class name in words (``"IntegratedGradients"`` → ``"Integrated Gradients"``), as Captum's."""
        return re.sub(r"(?<=.)([A-Z])", r" \1", cls.__name__)

    @functools.partial(_as_captum, inputs_name="end_point")
    def compute_convergence_delta(self, attributions, start_point, end_point, target=None,
                                  additional_forward_args: Any = None) -> torch.Tensor:
        """Per example, ``Σ attributions − (f_t(end_point) − f_t(start_point))`` (Sundararajan et al.
        2017's completeness gap), as Captum's; ``start_point`` may broadcast to ``end_point``."""
        if not self._has_delta:
            raise NotImplementedError(f"{type(self).__name__} has no convergence delta")
        end, _ = _single_input(end_point)
        start = torch.broadcast_to(_single_of(start_point, "start_point"), end.shape)
        attr, _ = _single_input(attributions)
        model, t, _ = _bind(self.forward_func, end, target, additional_forward_args, None, end.shape[0])
        with torch.no_grad():
            t = resolve_target(model, end, t)
            gap = select(model(end), t) - select(model(start), t)
        return attr.reshape(attr.shape[0], -1).sum(1).to(gap.dtype) - gap

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs
