"""``fastattr bench sop``: the Sum-of-Parts forward (and ``explain``) of the zoo's digits SOP against
the model-only floor: the backbone alone on the same ``B·G`` masked inputs, at its best batch size.
What SOP adds over the floor is GroupGen (patch attention, sparsemax, the masks), the masked copies
and GroupSelect."""
from __future__ import annotations

import time
from typing import Optional

import torch

from ..zoo import load_digits, load_digits_sop
from . import Table, machine_info, time_interleaved


def _best_chunk(fn, inputs: torch.Tensor, device: torch.device) -> int:
    """The batch size (of 64 … all) at which ``fn`` runs ``inputs`` fastest, timed once each after a warm-up."""
    best, best_time = inputs.shape[0], float("inf")
    with torch.no_grad():
        fn(inputs[:64])
        for chunk in sorted({64, 256, 1024, 4096, inputs.shape[0]}):
            if chunk > inputs.shape[0]:
                continue
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for i in range(0, inputs.shape[0], chunk):
                fn(inputs[i:i + chunk])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed < best_time:
                best, best_time = chunk, elapsed
    return best


def run(batch: int = 32, device: Optional[str] = None, repeat: int = 3) -> Table:
    """One table: floor, ``SumOfParts.forward`` (default and floor-sized chunks) and ``explain``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sop = load_digits_sop().to(device)
    x, _ = load_digits("test", batch)
    x = x.to(device)
    e = sop.explain(x)
    groups = e.masks.shape[1]
    copies = (x.unsqueeze(1) * e.masks.unsqueeze(2)).reshape(-1, *x.shape[1:])  # the B·G inputs SOP runs
    chunk = _best_chunk(sop.backbone, copies, device)

    def floor():
        with torch.no_grad():
            for i in range(0, copies.shape[0], chunk):
                sop.backbone(copies[i:i + chunk])

    def forward(max_batch=None):
        saved = sop.max_batch
        sop.max_batch = max_batch
        try:
            with torch.no_grad():
                sop(x)
        finally:
            sop.max_batch = saved

    impls = {"model-only floor": floor,
             "SumOfParts.forward": forward,
             f"SumOfParts.forward, max_batch={chunk}": lambda: forward(chunk),
             "SumOfParts.explain": lambda: sop.explain(x)}
    times, vs_floor = time_interleaved(impls, device, repeat=repeat)
    table = Table(name=f"Sum-of-Parts forward, digits SOP, batch {batch}, G = {groups} groups, {device.type}",
                  columns=["implementation", "ms", "time / floor"], machine=machine_info(device),
                  params={"batch": batch, "groups": groups, "backbone_inputs": copies.shape[0], "floor_chunk": chunk,
                          "repeat": repeat, "device": str(device)})
    for name, t in times.items():
        table.add(name, t * 1e3, vs_floor[name])
    table.notes.append(f"{repeat} round-robin rounds; times are medians, ratios medians of per-round ratios; "
                       f"torch threads = {torch.get_num_threads()}")
    table.notes.append(f"floor: the backbone (digits CNN net[:8]) alone on the {copies.shape[0]} masked inputs "
                       f"(B·G) in chunks of {chunk} (the fastest of 64 … all); SumOfParts: GroupGen, the masked "
                       "copies, the chunked backbone and GroupSelect, default chunks unless max_batch is given")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 3) -> list[Table]:
    """Batch 32, the shipped digits SOP (8 groups of 2×2-pixel patches)."""
    return [run(batch=32, device=device, repeat=repeat)]
