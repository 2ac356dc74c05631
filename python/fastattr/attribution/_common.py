"""Plumbing shared by the attribution methods: argument checks, target resolution, chunk sizing,
and a guard that leaves the model exactly as it was found."""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

Target = Union[None, int, torch.Tensor]


def check_inputs(inputs: torch.Tensor, name: str = "inputs", integer: bool = False) -> None:
    """Gradient methods need a finite floating tensor with a batch axis; ``integer=True`` also takes
    integer tensors (token ids, for the perturbation methods)."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    ids = integer and is_integer(inputs)
    if not ids and not inputs.is_floating_point():
        raise TypeError(
            f"{name} has dtype {inputs.dtype}; this method needs floating inputs. For integer token "
            "ids, attribute to the embedding layer (a layer method such as layer_integrated_gradients) "
            "or use occlusion / feature_ablation, which take integer inputs")
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch axis, got shape {tuple(inputs.shape)}")
    if not ids and not torch.isfinite(inputs).all():
        raise ValueError(f"{name} contains NaN or Inf")


def check_flag(value, name: str) -> bool:
    """A bool argument (numpy bools too), or a ``TypeError`` naming it."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_count(value, name: str, *, minimum: int = 1, optional: bool = False) -> Optional[int]:
    """A count argument: an int >= ``minimum`` (numpy ints too; None when ``optional``), as an int, or a
    ``ValueError`` naming it."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def is_integer(t: torch.Tensor) -> bool:
    """An integer tensor (not bool, floating or complex)."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_model(model: nn.Module) -> None:
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function), got {type(model).__name__}")
    if isinstance(model, nn.Module) and model.training:
        warnings.warn("model is in training mode; fastattr uses it as given (call model.eval() for "
                      "deterministic attributions)", UserWarning, stacklevel=3)


@torch.no_grad()
def forward_chunks(model: Callable, inputs: torch.Tensor, max_batch: Optional[int] = None,
                   memory_budget: Optional[int] = None) -> torch.Tensor:
    """``model(inputs)`` without gradients, in chunks of :func:`chunk_size` inputs (a forward-only pass
    holds about 8× an input's size per input)."""
    chunk = chunk_size(inputs, inputs.shape[0], max_batch, memory_budget, per_input_factor=8.0)
    if chunk >= inputs.shape[0]:
        return model(inputs)
    return torch.cat([model(inputs[i:i + chunk]) for i in range(0, inputs.shape[0], chunk)])


def resolve_target(model: Callable, inputs: torch.Tensor, target: Target,
                   logits: Optional[torch.Tensor] = None, *, max_batch: Optional[int] = None,
                   memory_budget: Optional[int] = None) -> torch.Tensor:
    """Per-example target indices ``[B]`` in ``0..C-1``: an int, a ``[B]`` tensor, or None (the argmax of
    f(x)); negative indices count from the end, as in Python (``-1``: the last output). Without
    ``logits``, one forward of ``inputs`` (chunked under ``max_batch`` / ``memory_budget``) checks the
    range."""
    batch = inputs.shape[0]
    if logits is None:
        logits = forward_chunks(model, inputs, max_batch, memory_budget)
    if logits.dim() == 1:
        logits = logits[:, None]
    n_classes = logits.shape[-1]
    if target is None:
        return logits.argmax(-1)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        t = torch.full((batch,), int(target), dtype=torch.long, device=inputs.device)
    elif isinstance(target, torch.Tensor) and not target.is_floating_point() and target.dim() <= 1:
        t = target.to(device=inputs.device, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"target has {t.numel()} entries but inputs has batch size {batch}")
    elif isinstance(target, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in target):
        return resolve_target(model, inputs, torch.tensor(list(target)), logits)
    else:
        raise TypeError("target must be None, an int, or a 1-D integer tensor with one entry per example")
    if (t < -n_classes).any() or (t >= n_classes).any():
        raise ValueError(f"target out of range: the model has {n_classes} outputs, got {t.tolist()}")
    return t % n_classes


def select(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``f_t``: the target column of each row of the model output (a 1-D output is returned as is)."""
    if output.dim() == 1:
        return output
    return output.gather(1, target[:, None]).squeeze(1)


@contextlib.contextmanager
def eval_modes(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block; every submodule's training flag is restored after, even
    when an exception is raised."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def frozen_parameters(model: Callable) -> Iterator[None]:
    """Turns off ``requires_grad`` on the model's parameters, so no parameter gradient is ever
    computed, and restores every flag on exit, even when an exception is raised."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def free_memory(device: torch.device) -> int:
    """Bytes available for new tensors on ``device``. On CUDA: the driver's free memory plus what
    torch's caching allocator holds reserved but unused (``mem_get_info`` counts those blocks as
    taken, so after one large call it would report almost nothing free)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


CPU_WORKING_SET = 16 << 20  # bytes: the default chunk's activations on CPU (cache-sized)


def chunk_size(inputs: torch.Tensor, total: int, max_batch: Optional[int], memory_budget: Optional[int],
               per_input_factor: float = 24.0) -> int:
    """How many model inputs to run per forward/backward.

    ``max_batch`` wins when given; else ``memory_budget`` bytes divided by an estimate of the bytes
    one input costs (``per_input_factor`` × the input's own size: activations of small CNNs are a
    few dozen times the input). The default budget is a quarter of free memory, so a default call
    never runs out of memory; on CPU it is also capped at :data:`CPU_WORKING_SET` bytes, because
    CPU kernels run fastest when a chunk's activations stay in cache. Capped at ``total`` and at
    1024 inputs.
    """
    if max_batch is not None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        return min(max_batch, total)
    if memory_budget is None:
        memory_budget = free_memory(inputs.device) // 4
        if inputs.device.type == "cpu":
            memory_budget = min(memory_budget, CPU_WORKING_SET)
    elif isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float, np.number)) \
            or not memory_budget > 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    per_input = max(1, inputs[0].numel() * inputs.element_size()) * per_input_factor
    return int(max(1, min(total, 1024, math.floor(memory_budget / per_input))))


def saved_activation_bytes(model: Callable, x: torch.Tensor, autocast: Optional[torch.dtype] = None) -> int:
    """Bytes of the tensors autograd saves for the input gradient in one forward of ``x`` (the
    model's parameters and tensors saved twice counted once), under ``torch.autocast`` at
    ``autocast`` when given. Measures what a chunk of deep-model inputs really holds, where
    :func:`chunk_size`'s fixed ``per_input_factor`` guesses."""
    params = {p.data_ptr() for p in model.parameters()} if isinstance(model, nn.Module) else set()
    seen: dict = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    ctx = contextlib.nullcontext() if autocast is None else torch.autocast(x.device.type, dtype=autocast)
    with frozen_parameters(model), torch.enable_grad(), ctx, \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x.detach().requires_grad_(True))
    return sum(seen.values())


def gradient_chunk(model: Callable, inputs: torch.Tensor, total: int, max_batch: Optional[int],
                   memory_budget: Optional[int], autocast: Optional[torch.dtype] = None) -> int:
    """:func:`chunk_size` for forward + input-gradient passes. On CUDA with neither limit given, the
    per-input factor comes from the model's measured activations (:func:`measured_input_factor`): a
    GPU's free memory would otherwise admit chunks far larger than a deep model's backward fits."""
    factor = 24.0
    if inputs.is_cuda and max_batch is None and memory_budget is None:
        factor = measured_input_factor(model, inputs, autocast)
    return chunk_size(inputs, total, max_batch, memory_budget, per_input_factor=factor)


def measured_input_factor(model: Callable, inputs: torch.Tensor, autocast: Optional[torch.dtype] = None,
                          rows: int = 2) -> float:
    """:func:`chunk_size`'s ``per_input_factor`` from a probe forward of ``rows`` inputs: twice the
    saved activation bytes per input byte (room for the backward's transients), at least 24."""
    probe = inputs[:rows]
    saved = saved_activation_bytes(model, probe, autocast)
    return max(24.0, 2.0 * saved / max(1, probe.numel() * probe.element_size()))
