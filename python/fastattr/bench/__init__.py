"""Benchmark harness behind ``fastattr bench``: medians of repeated timings, ratios measured in
the same run, the machine description, and JSON records for ``benchmarks/results/``.

Timings are never asserted in tests (DESIGN.md, performance protocol).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn: Callable[[], object], device: torch.device | str = "cpu", *, repeat: int = 7,
                warmup: int = 2, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs.

    On CUDA the device is synchronised around each run. ``min_time`` keeps repeating until the
    runs add up to at least that many seconds (for very short calls).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    total = 0.0
    while len(times) < repeat or total < min_time:
        start = time.perf_counter()
        fn()
        _sync(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        total += elapsed
        if len(times) >= 10 * repeat:
            break
    return statistics.median(times)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", *,
                     repeat: int = 7, warmup: int = 1) -> tuple[dict[str, float], dict[str, float]]:
    """Round-robin timing: every round runs each function once, in turn.

    Returns ``(median seconds per function, median per-round ratio to the first function)``.
    Ratios from the same round share the machine's state, so they resist the drift of a shared
    host far better than ratios of separately timed blocks.
    """
    device = torch.device(device)
    names = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeat):
        for n in names:
            _sync(device)
            start = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - start)
    medians = {n: statistics.median(v) for n, v in times.items()}
    ratios = {n: statistics.median(a / b for a, b in zip(times[n], times[names[0]])) for n in names}
    return medians, ratios


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means the device ran out of memory: torch's ``OutOfMemoryError``, or the
    plain ``RuntimeError`` cuDNN / cuBLAS raise when an allocation fails inside them."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        key in text for key in ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED",
                                "CUDNN_STATUS_INTERNAL_ERROR", "CUDNN_STATUS_EXECUTION_FAILED"))


def cuda_or_note(device: Optional[str], what: str) -> Optional[str]:
    """The device for a CUDA-only benchmark: ``device`` (default ``"cuda"``), or None after printing
    why ``what`` is skipped (no CUDA, or another device asked for)."""
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        why = "CUDA not available" if not torch.cuda.is_available() else f"device is {device}"
        print(f"note: {what} skipped (needs a CUDA device; {why})")
        return None
    return device or "cuda"


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What the figures were measured on: CPU / GPU, thread count, library versions."""
    device = torch.device(device)
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        pass
    from .. import __version__

    info["fastattr"] = __version__
    return info


def device_label(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-").lower()
    return f"cpu{torch.get_num_threads()}t"


@dataclass
class Table:
    """One benchmark's rows plus how it was measured; renders as text and serialises to JSON."""

    name: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def add(self, *row) -> None:
        self.rows.append(list(row))

    def render(self) -> str:
        def fmt(v):
            if isinstance(v, float):
                return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
            return str(v)

        cells = [self.columns] + [[fmt(v) for v in r] for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(self.columns))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
        out = [f"== {self.name} ==", line(cells[0]), line(["-" * w for w in widths])]
        out += [line(r) for r in cells[1:]]
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    def to_dict(self) -> dict:
        return asdict(self)


def write_results(tables: list[Table], out_dir: str | Path, device: torch.device | str = "cpu",
                  tag: Optional[str] = None) -> Path:
    """Writes ``<out_dir>/<date>-<device>[-tag].json`` with every table and the machine info."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = _dt.date.today().isoformat()
    name = f"{date}-{device_label(device)}" + (f"-{tag}" if tag else "") + ".json"
    path = out_dir / name
    payload = {"date": date, "machine": machine_info(device), "tables": [t.to_dict() for t in tables]}
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
