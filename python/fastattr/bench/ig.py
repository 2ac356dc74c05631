"""``fastattr bench ig``: Integrated Gradients against the model-only floor and Captum.

Time: a VGG-style CNN (3 conv+pool blocks, 2 linear) on 3×64×64, batch 8, 50 Gauss–Legendre
steps. The floor is the model's own forward + input-gradient over the same 400 inputs at the same
chunk size; Captum's ``IntegratedGradients`` runs with ``internal_batch_size`` set to that chunk.
Memory: peak resident memory of one process running IG with default settings (fastattr) vs
Captum without ``internal_batch_size``, at 50 / 200 / 1000 steps (each in a fresh process; CUDA:
``max_memory_allocated``).
CUDA only: ResNet-50 (random weights, eval mode) on 224², batch 16, 64 steps: fastattr vs Captum
time at fastattr's default chunk, fastattr's bf16 autocast vs fp32, both with and without
Captum's ``internal_batch_size``, with the peak ``max_memory_allocated`` of every call.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..attribution import integrated_gradients
from ..core import chunk_size, measured_input_factor
from ..zoo.resnet import resnet50
from . import Table, cuda_or_note, is_out_of_memory, machine_info, time_interleaved


def vgg_style(seed: int = 0) -> nn.Module:
    """3 × (conv 3×3 + ReLU + 2×2 max-pool) then 2 linear layers, for 3×64×64 inputs, 10 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10),
    ).eval()


def _captum_ig(model):
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        return None
    return IntegratedGradients(model)


def run(batch: int = 8, n_steps: int = 50, chunk: int = 100, device: Optional[str] = None, repeat: int = 5) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = vgg_style().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(device)
    target = model(x).argmax(1)
    steps_per_chunk = max(1, chunk // batch)
    used_chunk = steps_per_chunk * batch
    # The floor: forward + input-gradient over the same number of inputs in the same chunks.
    n_chunks = -(-n_steps // steps_per_chunk)
    sizes = [min(steps_per_chunk, n_steps - i * steps_per_chunk) * batch for i in range(n_chunks)]
    floor_inputs = [torch.rand(s, 3, 64, 64, generator=torch.Generator().manual_seed(i)).to(device)
                    for i, s in enumerate(sizes)]
    floor_targets = [target.repeat(s // batch) for s in sizes]

    def floor():
        for inp, t in zip(floor_inputs, floor_targets):
            inp = inp.requires_grad_(True)
            out = model(inp).gather(1, t[:, None]).sum()
            torch.autograd.grad(out, inp)

    impls = {
        "model-only floor": floor,
        "fastattr.integrated_gradients": lambda: integrated_gradients(model, x, target, n_steps=n_steps, max_batch=chunk),
    }
    captum_ig = _captum_ig(model)
    if captum_ig is not None:
        impls["captum IntegratedGradients"] = lambda: captum_ig.attribute(
            x, target=target, n_steps=n_steps, method="gausslegendre", internal_batch_size=chunk)
    times, vs_floor = time_interleaved(impls, device, repeat=repeat)
    table = Table(
        name=f"integrated gradients, VGG-style CNN 3x64x64, batch {batch}, {n_steps} steps, chunk {used_chunk} inputs, {device.type}",
        columns=["implementation", "ms", "time / floor", "speed-up vs captum"],
        machine=machine_info(device),
        params={"batch": batch, "n_steps": n_steps, "chunk": used_chunk, "device": str(device), "repeat": repeat},
    )
    cap = "captum IntegratedGradients" in times
    for name, t in times.items():
        table.add(name, t * 1e3, vs_floor[name],
                  vs_floor["captum IntegratedGradients"] / vs_floor[name] if cap else "-")
    table.notes.append(f"{repeat} interleaved rounds (floor, fastattr, captum in turn); ratios are medians of "
                       f"per-round ratios; torch threads = {torch.get_num_threads()}")
    if not cap:
        table.notes.append("captum not installed: pip install captum for the peer column")
    return table


_PEAK_RSS = """
import ctypes, threading, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
def peak_rss_above_start(fn):
    # malloc_trim first, so freed heap is returned and the call's allocations show in RSS; a thread
    # samples RSS every 0.2 ms while fn runs
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start, peak, done = rss(), [0], []
    def watch():
        while not done:
            peak[0] = max(peak[0], rss())
            time.sleep(0.0002)
    thread = threading.Thread(target=watch)
    thread.start()
    try:
        fn()
    finally:
        done.append(1)
        thread.join()
    return max(peak[0], rss()) - start
"""

_MEMORY_SCRIPT = _PEAK_RSS + """
import json, sys, torch
from fastattr.bench.ig import vgg_style
which, n_steps, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(int(sys.argv[4]))
model = vgg_style().to(device)
x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(device)
t = model(x).argmax(1)
if which == "fastattr":
    from fastattr import integrated_gradients
    call = lambda n: integrated_gradients(model, x, t, n_steps=n)
else:
    from captum.attr import IntegratedGradients
    call = lambda n: IntegratedGradients(model).attribute(x, target=t, n_steps=n)
if device == "cpu":
    cold = peak_rss_above_start(lambda: call(2))
else:
    call(2)  # the warm-up, as on CPU; its cost is not reported on CUDA
    cold = 0
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
    call(n_steps)
    peak = torch.cuda.max_memory_allocated() - before
else:
    peak = peak_rss_above_start(lambda: call(n_steps))
print(json.dumps({"peak_extra_bytes": peak, "cold_bytes": cold}))
"""


def memory(steps=(50, 200, 1000), device: Optional[str] = None) -> Table:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    peers = ["fastattr"] + (["captum"] if _captum_ig(nn.Identity()) is not None else [])
    kind = "max_memory_allocated" if device == "cuda" else "peak RSS above the pre-call RSS (sampled, after malloc_trim)"
    table = Table(name=f"integrated gradients peak memory (MB), VGG-style CNN, batch 8, default settings, {device}",
                  columns=["n_steps"] + [f"{p} MB" for p in peers] + (["captum / fastattr"] if len(peers) > 1 else []),
                  machine=machine_info(device), params={"steps": list(steps), "measure": kind})
    cold: dict = {}
    for n in steps:
        row = [n]
        for p in peers:
            proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, p, str(n), device, str(torch.get_num_threads())],
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                row.append(f"failed: {last[:60]}")
                continue
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            row.append(out["peak_extra_bytes"] / 2**20)
            cold.setdefault(p, []).append(out["cold_bytes"] / 2**20)
        if len(peers) > 1 and all(isinstance(v, float) for v in row[1:]):
            row.append(row[2] / row[1])
        table.add(*row)
    table.notes.append(f"{kind}, measured in a fresh process after a warm-up call with 2 steps (the warm-up's own "
                       "cost, imports and one-time allocations included, is not counted); fastattr chunks from free "
                       "memory by default, Captum stacks all steps in one batch")
    if device == "cpu" and cold:
        table.notes.append("the cold first call (2 steps; imports and one-time allocations) costs "
                           + ", ".join(f"{p} {np.median(v):.0f} MB" for p, v in cold.items()) + " (medians)")
    return table


def _peak_mb(fn: Callable[[], object], device: torch.device):
    """Peak ``max_memory_allocated`` above the pre-call level in MB for one call of ``fn`` (CUDA),
    ``"OOM"`` when it runs out of memory, ``"-"`` off CUDA."""
    if device.type != "cuda":
        fn()
        return "-"
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    try:
        fn()
        torch.cuda.synchronize(device)
    except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
        if not is_out_of_memory(error):
            raise
        torch.cuda.empty_cache()
        return "OOM"
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def resnet_case(batch: int = 16, n_steps: int = 64, size: int = 224, device: str = "cuda", repeat: int = 5,
                arch: Callable[..., nn.Module] = resnet50) -> Table:
    """IG on a ResNet (random weights, eval mode): fastattr fp32 / bf16 autocast vs Captum vs the floor.

    The chunk is what a default fastattr call picks on this device (free memory and the model's
    measured activations); fastattr runs with ``max_batch`` and Captum with ``internal_batch_size``
    set to it, and both also run with their defaults (Captum: all steps in one batch). Calls that
    run out of memory are reported as OOM and left out of the timing.
    """
    device = torch.device(device)
    model = arch().to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # the floor and Captum compute no parameter gradients either
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    total = n_steps * batch
    factor = measured_input_factor(model, x) if device.type == "cuda" else 24.0
    chunk = chunk_size(x, total, None, None, per_input_factor=factor)
    used = max(1, chunk // batch) * batch
    sizes = [min(used, total - i) for i in range(0, total, used)]
    floor_inputs = [torch.rand(s, 3, size, size, generator=torch.Generator().manual_seed(i)).to(device)
                    for i, s in enumerate(sizes)]

    def floor():
        for inp in floor_inputs:
            inp = inp.requires_grad_(True)
            out = model(inp).gather(1, target.repeat(inp.shape[0] // batch)[:, None]).sum()
            torch.autograd.grad(out, inp)

    kw = dict(n_steps=n_steps)
    impls = {
        "model-only floor": floor,
        "fastattr IG fp32": lambda: integrated_gradients(model, x, target, max_batch=chunk, **kw),
        "fastattr IG bf16 autocast": lambda: integrated_gradients(model, x, target, max_batch=chunk,
                                                                  autocast=torch.bfloat16, **kw),
        "fastattr IG fp32, default settings": lambda: integrated_gradients(model, x, target, **kw),
    }
    captum_ig = _captum_ig(model)
    if captum_ig is not None:
        impls["captum IG, internal_batch_size = chunk"] = lambda: captum_ig.attribute(
            x, target=target, internal_batch_size=chunk, **kw)
        impls["captum IG, default (one batch)"] = lambda: captum_ig.attribute(x, target=target, **kw)
    peaks = {name: _peak_mb(fn, device) for name, fn in impls.items()}
    timed = {name: fn for name, fn in impls.items() if peaks[name] != "OOM"}
    times, vs_floor = time_interleaved(timed, device, repeat=repeat)
    peer = "captum IG, internal_batch_size = chunk"
    table = Table(
        name=f"integrated gradients, {arch.__name__} {size}x{size}, batch {batch}, {n_steps} steps, "
             f"chunk {used} inputs, {device.type}",
        columns=["implementation", "ms", "time / floor", "speed-up vs captum (same chunk)", "peak MB"],
        machine=machine_info(device),
        params={"arch": arch.__name__, "batch": batch, "n_steps": n_steps, "size": size, "chunk": used,
                "device": str(device), "repeat": repeat},
    )
    for name in impls:
        if name not in times:
            table.add(name, "OOM", "-", "-", peaks[name])
            continue
        speed = vs_floor[peer] / vs_floor[name] if peer in times else "-"
        table.add(name, times[name] * 1e3, vs_floor[name], speed, peaks[name])
    fp32 = integrated_gradients(model, x, target, max_batch=chunk, **kw)
    bf16 = integrated_gradients(model, x, target, max_batch=chunk, autocast=torch.bfloat16, **kw)
    err = ((bf16 - fp32).norm() / fp32.norm()).item()
    pair = ("fastattr IG bf16 autocast", "fastattr IG fp32")
    ratio = f"{vs_floor[pair[0]] / vs_floor[pair[1]]:.3g}" if all(n in times for n in pair) else "-"
    table.notes.append(f"bf16 autocast / fp32 time: {ratio}; relative difference of the attributions: "
                       f"{err:.3g}")
    table.notes.append(f"{repeat} interleaved rounds; ratios are medians of per-round ratios; peak MB = "
                       "max_memory_allocated above the pre-call level (CUDA); cudnn TF32 as torch's default "
                       f"({torch.backends.cudnn.allow_tf32}) for every row")
    if captum_ig is None:
        table.notes.append("captum not installed: pip install captum for the peer rows")
    return table


_NODES_SCRIPT = _PEAK_RSS + """
import json, sys, time, torch
from fastattr import integrated_gradients
from fastattr.zoo import load_digits, load_digits_cnn
n_steps = int(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
model, (x, y) = load_digits_cnn(), load_digits("test", 8)
integrated_gradients(model, x, y, n_steps=8)  # torch's one-time allocations (thread pools, kernels) first
seconds = []
def call():
    start = time.perf_counter()
    integrated_gradients(model, x, y, n_steps=n_steps)
    seconds.append(time.perf_counter() - start)
peak = peak_rss_above_start(call)
print(json.dumps({"peak_extra_bytes": peak, "seconds": seconds[0]}))
"""


def nodes_memory(steps=(1000, 5000)) -> Table:
    """Peak memory of long Gauss–Legendre paths on a small model (the zoo's digits CNN, 8 inputs of
    8×8), where the quadrature nodes, not the model, could dominate; each run in a fresh process,
    with fastattr's nodes and with numpy's ``leggauss`` at every length (what it used before)."""
    table = Table(name="integrated gradients with long paths, digits CNN, 8 inputs, cpu",
                  columns=["n_steps", "nodes", "peak MB above the start", "seconds"], machine=machine_info("cpu"),
                  params={"steps": list(steps), "method": "gausslegendre",
                          "measure": "peak RSS above the pre-call RSS (sampled, after malloc_trim)"})
    for n in steps:
        for nodes, prefix in (("fastattr (Newton, O(n))", ""),
                              ("numpy leggauss", "import fastattr.attribution.gradient as g\n"
                                                 "g.EXACT_GAUSS_LEGENDRE = 10 ** 9\n")):
            proc = subprocess.run([sys.executable, "-c", prefix + _NODES_SCRIPT, str(n), str(torch.get_num_threads())],
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                table.add(n, nodes, f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:60]}", "-")
                continue
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            table.add(n, nodes, out["peak_extra_bytes"] / 2**20, out["seconds"])
    table.notes.append("peak RSS during the call above the RSS at its start (sampled every 0.2 ms, after malloc_trim "
                       "returned freed heap), after a warm-up call with 8 steps; "
                       "fastattr's nodes past 128 steps by Newton's iteration in O(n) memory "
                       "(fastattr.attribution.gradient.gauss_legendre), cached per n_steps")
    return table


def gpu_tables(device: Optional[str] = None, repeat: int = 5) -> list[Table]:
    """The ResNet-50 case (224², batch 16, 64 steps) when CUDA is there; otherwise a printed note."""
    device = cuda_or_note(device, "ResNet-50 IG benchmark")
    return [] if device is None else [resnet_case(device=device, repeat=repeat)]


def default_tables(device: Optional[str] = None, repeat: int = 5) -> list[Table]:
    tables = [run(device=device, repeat=repeat), memory(device=device)]
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":
        tables.append(nodes_memory())
    return tables + gpu_tables(device, repeat)
