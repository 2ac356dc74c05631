"""Helpers shared by the Captum drop-ins (:mod:`fastattr.integrations.captum` and its perturbation
module): Captum-style inputs, baselines, targets and ``additional_forward_args`` turned into what
fastattr's functions take."""
from __future__ import annotations

import functools
import inspect
import re
import sys
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..core import (batch_coupled, broadcasts_to, chunk_size, model_guard, resolve_target, rng_kept, select,
                    use_model_mode)


class CaptumAssertionError(ValueError, AssertionError):
    """A bad argument where Captum asserts: a ``ValueError`` (fastattr's convention) that Captum's callers
    can also catch as the ``AssertionError`` Captum raises."""


def _tensors(inputs, name: str = "inputs") -> Tuple[Tuple[torch.Tensor, ...], bool]:
    """The input tensors, and whether they came as a tuple."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), False
    if not isinstance(inputs, tuple) or not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError(f"{name} must be a tensor or a tuple of tensors (at least one), got "
                        f"{type(inputs).__name__}")
    return inputs, True


def _cast_back(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if part.dtype == dtype:
        return part
    return (part if dtype.is_floating_point or dtype == torch.bool else part.round()).to(dtype)


class _Packed(nn.Module):
    """``forward_func(x_1, …, x_n, *args)`` for several inputs packed as one ``[N, Σ D_i]`` tensor of a
    common floating dtype; each part is cast back to its input's dtype (integer, bool) before the call."""

    def __init__(self, forward_func: Callable, xs: Tuple[torch.Tensor, ...], float_parts=()):
        super().__init__()
        self.forward_func = forward_func
        self.shapes = [tuple(x.shape[1:]) for x in xs]
        self.dtypes = [x.dtype for x in xs]
        self.cast = [i not in float_parts for i in range(len(xs))]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.training = bool(getattr(forward_func, "training", False))

    def parts(self, z: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(p.reshape((z.shape[0],) + s) for p, s in zip(z.split(self.sizes, 1), self.shapes))

    def forward(self, z: torch.Tensor, *args) -> Any:
        return self.forward_func(*(_cast_back(p, d) if cast else p
                                   for p, d, cast in zip(self.parts(z), self.dtypes, self.cast)), *args)

    def unpack(self, flat: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Per-input attributions (floating inputs keep their dtype)."""
        return tuple(p.to(d) if d.is_floating_point else p for p, d in zip(self.parts(flat), self.dtypes))


def _packed_dtype(xs, forward_func) -> torch.dtype:
    """The floating inputs' common dtype; for integer and bool inputs alone, the model's floating dtype
    (float64 for a model without parameters)."""
    floating = [x.dtype for x in xs if x.dtype.is_floating_point]
    if not floating:
        params = forward_func.parameters() if isinstance(forward_func, nn.Module) else ()
        return next((q.dtype for q in params if q.is_floating_point()), torch.float64)
    dtype = floating[0]
    for d in floating[1:]:
        dtype = torch.promote_types(dtype, d)
    return dtype


def _each(value, n: int, name: str) -> tuple:
    """A per-input argument (``baselines``, ``feature_mask``) as a tuple of one entry per input: a tuple
    of ``n``, or one value (a number or None for any ``n``; anything for one input)."""
    if isinstance(value, tuple):
        if len(value) != n:
            raise CaptumAssertionError(f"{name} must be a tuple with one entry per input tensor ({n}), got a "
                                       f"tuple of {len(value)}")
        return value
    if n == 1 or value is None or isinstance(value, (int, float)):
        return (value,) * n
    raise CaptumAssertionError(f"{name} must be a tuple with one entry per input tensor ({n}), got "
                               f"{type(value).__name__}")


def _check_batch(xs, name: str = "inputs") -> torch.Tensor:
    """The first input, after checking that every input has its batch size and device."""
    first = xs[0]
    for i, x in enumerate(xs[1:], 1):
        if x.dim() < 1 or first.dim() < 1 or x.shape[0] != first.shape[0]:
            raise CaptumAssertionError(f"{name}[{i}] has shape {tuple(x.shape)}; every input needs the batch "
                                       f"size of {name}[0] (shape {tuple(first.shape)})")
        if x.device != first.device:
            raise ValueError(f"{name}[{i}] is on {x.device} but {name}[0] is on {first.device}")
    return first


class _Pack:
    """Captum's ``inputs`` (a tensor or a tuple of tensors) as the one tensor fastattr's functions take:
    one input as it is, several packed into ``[N, Σ D_i]`` (the model is still called once per chunk
    with all inputs). ``x`` the tensor, ``model`` what runs it, ``out`` the attributions in Captum's
    form, ``baselines`` per-input baselines packed likewise."""

    def __init__(self, forward_func: Callable, inputs, name: str = "inputs", pack_bool: bool = False,
                 float_parts=()):
        xs, self.is_tuple = _tensors(inputs, name)
        self.xs = xs
        first = _check_batch(xs, name)
        if len(xs) == 1 and not (pack_bool and first.dtype == torch.bool):
            self.packed = None
            self.x, self.model = first, forward_func
            return
        self.packed = _Packed(forward_func, xs, float_parts)
        dtype = _packed_dtype(xs, forward_func)
        self.x = torch.cat([x.detach().reshape(x.shape[0], -1).to(dtype) for x in xs], 1) \
            if len(xs) > 1 else first.detach().reshape(first.shape[0], -1).to(dtype)
        if any(x.requires_grad for x in xs):
            self.x.requires_grad_(True)
        self.model = self.packed if isinstance(forward_func, nn.Module) else self.packed.forward

    def out(self, attr: torch.Tensor):
        if self.packed is None:
            return (attr,) if self.is_tuple else attr
        parts = self.packed.unpack(attr)
        return parts if self.is_tuple else parts[0]

    def per_input(self, value, name: str) -> tuple:
        return _each(value, len(self.xs), name)

    def baselines(self, baselines, name: str = "baselines"):
        """Per-example baselines (None: zeros; a number; a tensor shaped like one example, ``[1, ...]``
        or ``[B, ...]``) as fastattr takes them: as given for one input, packed ``[1 or B, Σ D_i]`` for
        several."""
        values = self.per_input(baselines, name)
        if self.packed is None:
            return values[0]
        rows = self.x.shape[0]
        flat = []
        for i, (x, b) in enumerate(zip(self.xs, values)):
            b = torch.zeros((), dtype=self.x.dtype, device=x.device) if b is None else \
                torch.as_tensor(b, device=x.device).to(self.x.dtype)
            if b.dim() == x.dim() - 1:
                b = b.unsqueeze(0)
            try:
                b = torch.broadcast_to(b, (b.shape[0] if b.dim() == x.dim() else 1,) + tuple(x.shape[1:]))
            except RuntimeError:
                raise CaptumAssertionError(f"{name}[{i}] has shape {tuple(b.shape)}, which does not broadcast to "
                                           f"the input's {tuple(x.shape)}") from None
            flat.append(b.reshape(b.shape[0], -1))
        n = max(f.shape[0] for f in flat)
        if n not in (1, rows) or any(f.shape[0] not in (1, n) for f in flat):
            raise CaptumAssertionError(f"{name} must have 1 or {rows} rows per input")
        return torch.cat([f.expand(n, -1) for f in flat], 1)

    def distribution(self, baselines, name: str = "baselines"):
        """Reference distributions ``[M_i, ...]``: the tensor for one input, a list of ``[M_i, D_i]``
        tensors for several."""
        values = self.per_input(baselines, name)
        if self.packed is None:
            return values[0]
        flat = []
        for i, (x, b) in enumerate(zip(self.xs, values)):
            if not isinstance(b, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a tensor [M, ...] of reference inputs")
            b = b.to(self.x.dtype)
            if b.dim() == x.dim() - 1:
                b = b.unsqueeze(0)
            if tuple(b.shape[1:]) != tuple(x.shape[1:]):
                raise CaptumAssertionError(f"{name}[{i}] has shape {tuple(b.shape)}; it needs [M, "
                                           f"{', '.join(map(str, x.shape[1:]))}]")
            flat.append(b.reshape(b.shape[0], -1))
        return flat


def _output(attr: torch.Tensor, is_tuple: bool):
    return (attr,) if is_tuple else attr


def _single_of(value, name: str = "baseline"):
    """A per-input argument (``baselines``, ``feature_mask``) given as a tuple of one → that one; other
    tuples are refused."""
    if isinstance(value, tuple):
        if len(value) != 1:
            raise CaptumAssertionError(f"one input tensor takes one {name}, got a tuple of {len(value)}")
        return value[0]
    return value


class _TextProgress:
    """A minimal progress bar on stderr (``desc: 42% 5/12``) for when tqdm is not installed."""

    def __init__(self, desc: str, total: Optional[int]):
        self.desc, self.total, self.n = desc, total, 0
        self.file = sys.stderr

    def update(self, n: int = 1) -> None:
        self.n += n
        done = f"{min(100, int(100 * self.n / self.total))}% {self.n}/{self.total}" if self.total else f"{self.n}"
        self.file.write(f"\r{self.desc}: {done}")
        self.file.flush()

    def close(self) -> None:
        self.file.write("\n")
        self.file.flush()


def _progress(desc: str, total: Optional[int] = None):
    """A progress bar on stderr: tqdm's when installed, else a plain one."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextProgress(desc, total)
    return tqdm(desc=desc, total=total, file=sys.stderr)


class _Counted(nn.Module):
    """``model`` advancing a progress bar by the perturbations (batches of ``rows`` inputs) it runs."""

    def __init__(self, model: Callable, bar, rows: int):
        super().__init__()
        self.model, self.bar, self.rows = model, bar, rows
        self.training = bool(getattr(model, "training", False))

    def forward(self, z: torch.Tensor, *args) -> Any:
        out = self.model(z, *args)
        self.bar.update(max(1, z.shape[0] // self.rows))
        return out


def _counted(model: Callable, bar, rows: int, perturbations: int) -> Callable:
    """``model`` counted on ``bar`` (None: ``model`` itself), the bar's total set to ``perturbations`` and
    the unperturbed forward."""
    if bar is None:
        return model
    bar.total = perturbations + 1
    counted = _Counted(model, bar, rows)
    return counted if isinstance(model, nn.Module) else counted.forward


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

    def __init__(self, forward_func: Callable, args: Optional[tuple], rows: int, flatten: bool,
                 one_output: bool = False):
        super().__init__()
        self.forward_func = forward_func
        self.args = args or ()
        self.rows = rows
        self.flatten = flatten
        self.one_output = one_output
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
        if self.one_output and isinstance(out, torch.Tensor) and out.numel() != z.shape[0]:
            raise CaptumAssertionError(
                f"target=None needs a model with one output per example; it returned shape {tuple(out.shape)} "
                f"for {z.shape[0]} inputs: pass target")
        return out.reshape(z.shape[0], -1) if self.flatten else out


def _flat_target(output_shape: tuple, target) -> torch.Tensor:
    """Row-major indices into the flattened output for a tuple or a list of tuples of indices."""
    dims = output_shape[1:]
    rows = [target] * output_shape[0] if isinstance(target, tuple) else list(target)
    flat = []
    for index in rows:
        if len(index) != len(dims) or not all(isinstance(i, (int, np.integer)) for i in index):
            raise CaptumAssertionError(
                f"target {index!r} must index every non-batch dimension of the output (shape "
                f"{tuple(output_shape)}) with an int; targets that select several outputs per example "
                "are not supported")
        if any(not -d <= i < d for i, d in zip(index, dims)):
            raise CaptumAssertionError(f"target {index!r} is out of range for an output of shape "
                                       f"{tuple(output_shape)}")
        flat.append(int(np.ravel_multi_index(tuple(int(i) % d for i, d in zip(index, dims)), dims)))
    return torch.tensor(flat, dtype=torch.long)


def _bind(forward_func: Callable, x: torch.Tensor, target, additional_forward_args, max_batch: Optional[int],
          total: int, strict: bool = True):
    """The model, target and ``max_batch`` to hand to fastattr for Captum-style arguments.

    ``total`` is the number of model inputs the method runs (e.g. ``n_steps * batch``). Without ``max_batch``
    (Captum's one forward of them all) a model that couples the rows of a forward (batch statistics,
    :func:`~fastattr.core.batch_coupled`) runs them in one forward, as in Captum. With ``strict`` (Captum's
    gradient methods), ``target=None`` needs a model with one output per example.
    """
    if max_batch is None and batch_coupled(forward_func):
        max_batch = total
    args = _as_args(additional_forward_args)
    if isinstance(target, torch.Tensor) and target.numel() == 1:
        target = int(target.item())
    flatten = isinstance(target, tuple) or (isinstance(target, list) and len(target) > 0
                                            and isinstance(target[0], tuple))
    one_output = strict and target is None
    if args is None and not flatten and not one_output:
        return forward_func, target, max_batch
    model = _Bound(forward_func, args, x.shape[0], flatten=False, one_output=one_output)
    if flatten:
        with torch.no_grad(), rng_kept(forward_func, x.device):
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
        inputs = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
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

    def attribute_future(self, *args, **kwargs):
        """Captum's asynchronous ``attribute``: not offered by this method (as in Captum)."""
        raise NotImplementedError(f"{type(self).__name__}.attribute_future is not implemented; call attribute")

    @functools.partial(_as_captum, inputs_name="end_point")
    def compute_convergence_delta(self, attributions, start_point, end_point, target=None,
                                  additional_forward_args: Any = None) -> torch.Tensor:
        """Per example, ``Σ attributions − (f_t(end_point) − f_t(start_point))`` (Sundararajan et al.
        2017's completeness gap), as Captum's: tensors or tuples (one per input); ``start_point`` a
        number, None (zeros) or tensors broadcasting to ``end_point``."""
        if not self._has_delta:
            raise NotImplementedError(f"{type(self).__name__} has no convergence delta")
        pack = _Pack(self.forward_func, end_point, "end_point")
        end = pack.x.detach()
        start = pack.baselines(start_point, "start_point")
        start = torch.as_tensor(0.0 if start is None else start, dtype=end.dtype, device=end.device)
        if not broadcasts_to(start.shape, end.shape):
            raise CaptumAssertionError(f"start_point of shape {tuple(start.shape)} does not broadcast to "
                                       f"end_point's {tuple(end.shape)}")
        start = torch.broadcast_to(start, end.shape)
        attrs, _ = _tensors(attributions, "attributions")
        if len(attrs) != len(pack.xs) or any(a.shape[0] != end.shape[0] for a in attrs):
            raise CaptumAssertionError(f"attributions must have one tensor per input ({len(pack.xs)}) with the "
                                       f"{end.shape[0]} rows of end_point")
        total = sum(a.reshape(a.shape[0], -1).sum(1) for a in attrs)
        model, t, _ = _bind(pack.model, end, target, additional_forward_args, None, end.shape[0])
        with torch.no_grad():  # Captum's order: the start point's forward, then the end point's
            start_out = model(start)
            out = model(end)
            t = resolve_target(model, end, t, logits=out)
            gap = select(out, t) - select(start_out, t)
        return total.to(gap.dtype) - gap

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs
