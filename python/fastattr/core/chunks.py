"""Chunk sizing from the memory budget, the chunked forward, forward counting, the chunk runner
(eager or ``torch.compile`` on fixed-shape chunks) and the chunk iterator of every (examples ×
steps) loop of model passes (:class:`ChunkGrid`: blocks of examples × blocks of steps, masks or
samples)."""
from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from .contract import frozen_parameters, run_model


@torch.no_grad()
def forward_chunks(model: Callable, inputs: torch.Tensor, max_batch: Optional[int] = None,
                   memory_budget: Optional[int] = None, *, any_rank: bool = True) -> torch.Tensor:
    """``model(inputs)`` without gradients, in chunks of :func:`chunk_size` inputs (a forward-only pass
    holds about 8× an input's size per input), each run under the contract
    (:func:`~fastattr.core.contract.run_model`; ``any_rank=False``: outputs ``[N]`` or ``[N, C]`` only)."""
    chunk = chunk_size(inputs, inputs.shape[0], max_batch, memory_budget, per_input_factor=8.0)
    if chunk >= inputs.shape[0]:
        return run_model(model, inputs, any_rank=any_rank)
    return torch.cat([run_model(model, inputs[e0:e1], any_rank=any_rank)
                      for e0, e1, _, _ in ChunkGrid(inputs.shape[0], 1, chunk)])


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


def _unused_memory() -> int:
    """Bytes of memory nobody uses (``MemFree``; the ``MemAvailable`` :func:`free_memory` reads adds the
    reclaimable caches and takes off the kernel's reserve, well under a GiB), from one ``sysconf`` call
    (a fraction of a microsecond, where parsing ``/proc/meminfo`` takes tens); 0 where the platform
    lacks it."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


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
        if inputs.device.type == "cpu" and _unused_memory() >= 2 << 30:
            memory_budget = CPU_WORKING_SET  # 2 GiB unused: a quarter of what is available is far above the cap
        else:
            memory_budget = free_memory(inputs.device) // 4
            if inputs.device.type == "cpu":
                memory_budget = min(memory_budget, CPU_WORKING_SET)
    elif isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float, np.number)) \
            or not memory_budget > 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    per_input = max(1, math.prod(inputs.shape[1:]) * inputs.element_size()) * per_input_factor
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
        run_model(model, x.detach().requires_grad_(True))
    return sum(seen.values())


def gradient_chunk(model: Callable, inputs: torch.Tensor, total: int, max_batch: Optional[int],
                   memory_budget: Optional[int], autocast: Optional[torch.dtype] = None) -> int:
    """:func:`chunk_size` for forward + input-gradient passes. With neither limit given and more inputs
    to run than the fixed 24× factor's chunk, the factor comes from the model's measured activations
    (:func:`measured_input_factor`): a GPU's free memory would otherwise admit chunks far larger than
    a deep model's backward fits, and on CPU the chunk would overrun the working set of a model whose
    activations are many times its input (a long IG path on a small CNN)."""
    chunk = chunk_size(inputs, total, max_batch, memory_budget)
    if max_batch is None and memory_budget is None and (inputs.is_cuda or chunk < total):
        factor = measured_input_factor(model, inputs, autocast)
        chunk = chunk_size(inputs, total, max_batch, memory_budget, per_input_factor=factor)
    return chunk


def measured_input_factor(model: Callable, inputs: torch.Tensor, autocast: Optional[torch.dtype] = None,
                          rows: int = 2) -> float:
    """:func:`chunk_size`'s ``per_input_factor`` from a probe forward of ``rows`` inputs: twice the
    saved activation bytes per input byte (room for the backward's transients), at least 24."""
    probe = inputs[:rows]
    saved = saved_activation_bytes(model, probe, autocast)
    return max(24.0, 2.0 * saved / max(1, probe.numel() * probe.element_size()))


class CountingModel(torch.nn.Module):
    """Wraps a model and counts forward calls and the inputs they carried (padding included);
    ``on_call(n)``, when given, hears of every call's ``n`` inputs (e.g. to advance a progress bar)."""

    def __init__(self, model: Callable, on_call: Optional[Callable[[int], object]] = None):
        super().__init__()
        self.model = model
        self.calls = 0
        self.inputs = 0
        self.on_call = on_call
        self.training = bool(getattr(model, "training", False))  # mirrors the wrapped model's mode

    def count(self, x: torch.Tensor) -> None:
        self.calls += 1
        self.inputs += x.shape[0]
        if self.on_call is not None:
            self.on_call(x.shape[0])

    def forward(self, x):
        self.count(x)
        return self.model(x)


class ChunkRunner:
    """Calls the model on chunks. With ``compile`` (True or a dict of ``torch.compile`` options) the
    model runs through ``torch.compile(dynamic=False)`` and every chunk is padded to ``size`` rows
    (copies of its last row, dropped from the output), so one graph serves all chunks. A
    :class:`CountingModel` keeps counting eagerly around its compiled model."""

    def __init__(self, model: Callable, size: int, compile: Union[bool, dict] = False):
        if not isinstance(compile, (bool, dict)):
            raise TypeError("compile must be a bool or a dict of torch.compile options, "
                            f"got {type(compile).__name__}")
        self.size, self.pad, self.fn = size, bool(compile), model
        if compile:
            options = {"dynamic": False, **(compile if isinstance(compile, dict) else {})}
            if isinstance(model, CountingModel):
                inner = torch.compile(model.model, **options)

                def counted(x):
                    model.count(x)
                    return inner(x)

                self.fn = counted
            else:
                self.fn = torch.compile(model, **options)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.pad and n < self.size:
            x = torch.cat([x, x[-1:].expand((self.size - n,) + tuple(x.shape[1:]))])
        out = self.fn(x)
        return out[:n] if self.pad else out


class ChunkGrid:
    """The chunk iterator: ``n`` steps (path points, masks, samples, subsets) of ``batch`` examples
    in chunks of at most ``chunk`` model inputs. A chunk holds ``block = min(batch, chunk)`` examples
    × ``per = min(n, max(1, chunk // block))`` steps, step-major (row ``j·e + i``: step ``k0 + j`` of
    example ``e0 + i``); iterating yields ``(e0, e1, k0, k1)`` with the steps outermost, so what a
    block of steps needs (masks, noise draws) is made once for all examples."""

    def __init__(self, batch: int, n: int, chunk: int):
        self.batch, self.n = batch, n
        self.block = min(batch, chunk)
        self.per = max(1, min(n, chunk // self.block))

    @property
    def rows(self) -> int:
        """The most model inputs one chunk holds."""
        return self.block * self.per

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        for k0 in range(0, self.n, self.per):
            for e0 in range(0, self.batch, self.block):
                yield e0, min(self.batch, e0 + self.block), k0, min(self.n, k0 + self.per)
