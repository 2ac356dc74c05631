"""``fastattr bench sparsemax``: every backend vs ``entmax.sparsemax`` (and liger-kernel's
sparsemax on GPU when installed), forward and forward+backward, ratios from the same run.

On CUDA it also reports the memory-bandwidth floor: bytes that must move (forward: read x,
write p; backward: read p and g, write dx) divided by the measured device-copy bandwidth, and the
fraction of that floor each implementation reaches (floor time / measured time).
"""
from __future__ import annotations

import math
import statistics
from typing import Callable, Optional

import torch

from .. import _backend
from ..numerics import dtype_name
from ..ops.sparsemax import sparsemax
from . import Table, machine_info, time_median


def _peers(device: torch.device) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    peers: dict[str, Callable] = {}
    try:
        import entmax

        peers["entmax.sparsemax"] = lambda x: entmax.sparsemax(x, dim=-1)
    except ImportError:
        pass
    if device.type == "cuda":
        try:
            from liger_kernel.transformers.functional import liger_sparsemax

            peers["liger_kernel.sparsemax"] = lambda x: liger_sparsemax(x, dim=-1)
        except Exception:
            pass
    return peers


def _copy_bandwidth(x: torch.Tensor, repeat: int) -> float:
    """Bytes per second of a device copy of ``x`` (one read + one write)."""
    y = torch.empty_like(x)
    t = time_median(lambda: y.copy_(x), x.device, repeat=repeat, min_time=0.2)
    return 2 * x.numel() * x.element_size() / t


def _round_robin(calls: dict[str, Callable[[], object]], device: torch.device, rounds: int, block_s: float
                 ) -> dict[str, list[float]]:
    """Per implementation, one time per round: the median call of a block of calls lasting at least
    ``block_s`` seconds. Every round runs every implementation's block in turn, so ratios taken within
    a round share the host's state, and the block median ignores calls hit by a descheduled thread."""
    loops = {}
    for name, fn in calls.items():
        fn()  # warm-up
        loops[name] = max(1, math.ceil(block_s / max(time_median(fn, device, repeat=1, warmup=0), 1e-9)))
    out: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            out[name].append(time_median(fn, device, repeat=loops[name], warmup=0))
    return out


def run(shape: tuple[int, int] = (4096, 1024), dtype: torch.dtype = torch.float32,
        device: Optional[str] = None, repeat: int = 7, backends: Optional[list[str]] = None,
        block_s: float = 0.2) -> Table:
    """Times forward and forward+backward of each implementation on one ``[rows, n]`` input, round-robin
    (see :func:`_round_robin`)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    grad = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    impls: dict[str, Callable] = {}
    for name in backends or _backend.available_backends(device):
        impls[f"fastattr[{name}]"] = lambda t, name=name: sparsemax(t, -1, backend=name)
    impls.update(_peers(device))

    xr = x.detach().clone().requires_grad_()
    modes = {"fwd": lambda fn: fn(x), "fwd+bwd": lambda fn: torch.autograd.grad(fn(xr), xr, grad)}
    blocks: dict[str, dict[str, list[float]]] = {}
    for mode, call in modes.items():
        with torch.set_grad_enabled(mode != "fwd"):
            calls = {name: (lambda fn=fn: call(fn)) for name, fn in impls.items()}
            blocks[mode] = _round_robin(calls, device, repeat, block_s)
    fwd_t, fb_t = ({name: statistics.median(v) for name, v in blocks[m].items()} for m in modes)

    def speedup(mode, ref, name):
        return statistics.median(a / b for a, b in zip(blocks[mode][ref], blocks[mode][name]))

    peer = "entmax.sparsemax" if "entmax.sparsemax" in impls else None
    fast = next((n for n in ("fastattr[triton]", "fastattr[cpp]") if n in impls), None)
    columns = ["implementation", "fwd ms", "fwd+bwd ms", "fwd speedup vs entmax", "fwd+bwd speedup vs entmax"]
    bandwidth = None
    if device.type == "cuda":
        bandwidth = _copy_bandwidth(x, repeat)
        columns += ["fwd % of bw floor", "fwd+bwd % of bw floor"]
    table = Table(
        name=f"sparsemax {list(shape)} {dtype_name(dtype)} on {device.type}",
        columns=columns,
        machine=machine_info(device),
        params={"shape": list(shape), "dtype": str(dtype), "device": str(device), "repeat": repeat},
    )
    nbytes = x.numel() * x.element_size()
    for name in impls:
        row = [name, fwd_t[name] * 1e3, fb_t[name] * 1e3]
        row += [speedup("fwd", peer, name), speedup("fwd+bwd", peer, name)] if peer else ["-", "-"]
        if bandwidth:
            row += [100 * 2 * nbytes / bandwidth / fwd_t[name], 100 * 5 * nbytes / bandwidth / fb_t[name]]
        table.add(*row)
    table.notes.append(f"{repeat} round-robin rounds; in each, every implementation runs a block of calls "
                       f"lasting >= {block_s} s and contributes its median call; times are medians over the "
                       f"rounds, speed-ups medians of per-round ratios; torch threads = {torch.get_num_threads()}")
    if fast and peer:
        table.notes.append(f"{fast} fwd+bwd is {speedup('fwd+bwd', peer, fast):.1f}x faster than {peer}")
    if bandwidth:
        table.notes.append(f"measured device copy bandwidth {bandwidth / 1e9:.0f} GB/s; floor = bytes moved / that")
    if "fastattr[reference]" in impls and fast:
        table.notes.append(
            f"{fast} vs the sort-based threshold (fastattr[reference]): fwd "
            f"{speedup('fwd', 'fastattr[reference]', fast):.1f}x, fwd+bwd "
            f"{speedup('fwd+bwd', 'fastattr[reference]', fast):.1f}x")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 7) -> list[Table]:
    """The issue's configurations: CPU float32 [4096, 1024] and short rows [16384, 16] (SOP's patch
    attention: 16 patches per row); CUDA [16384, 4096] fp32 and bf16."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda":
        return [run((16384, 4096), dt, device, repeat) for dt in (torch.float32, torch.bfloat16)]
    return [run(shape, torch.float32, device, repeat) for shape in ((4096, 1024), (16384, 16))]

