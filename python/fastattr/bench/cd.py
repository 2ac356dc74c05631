"""``fastattr bench cd``: contextual decomposition against acd and the model-only floor.

1. Block masks: the VGG-style CNN (``bench.ig.vgg_style``) on one 3×64×64 image with the 64 block
   masks of 8×8 pixels. fastattr's batched β-only CD (cpp / triton op), the pair reference (β and
   γ both propagated, batched), acd's ``cd`` called once per mask, and the floor: one batched
   forward of the same 64 inputs. Round-robin medians; ratios from the same rounds.
2. ACD on a 28×28 input (a digit upsampled; a CNN with the layer types acd's generic ``cd``
   walks): seconds per input for ``fastattr.cd.agglomerate_2d`` (median of ``repeat`` runs after a
   warm-up) and acd's ``agg_2d.agglomerate`` (one run: it takes minutes) with the same sweep (1),
   percentile (99) and growth iterations (5).
3. On CUDA: ResNet-18 (random weights, eval) on 224², 1024 block masks of 7×7: fastattr vs acd's
   ``cd(model_type="resnet18")`` per mask (timed on the first 32 masks, scaled to 1024) and vs one
   batched forward of 1024 inputs.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cd import agglomerate_2d, contextual_decomposition
from ..cd.blocks import block_masks
from ..zoo import load_digits
from ..zoo.resnet import resnet18
from . import Table, cuda_or_note, machine_info, time_interleaved
from .ig import vgg_style


def _acd():
    try:
        import acd
    except ImportError:
        return None
    return acd


def run_blocks(device: Optional[str] = None, repeat: int = 7) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = vgg_style().to(device)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    masks = block_masks(64, 64, 8).to(device)
    batch = x.expand(64, -1, -1, -1).contiguous()
    acd = _acd()
    np_masks = [m[0].cpu().numpy() for m in masks]

    def floor():
        with torch.no_grad():
            model(batch)

    fns = {"forward of 64 inputs (floor)": floor,
           "fastattr CD (beta, 64 masks batched)": lambda: contextual_decomposition(model, x, masks),
           "fastattr CD pair reference (batched)": lambda: contextual_decomposition(model, x, masks, mode="pair")}
    if acd is not None:
        def acd_per_mask():
            with torch.no_grad():
                for m in np_masks:
                    acd.cd(x, model, mask=m, device=str(device))
        fns["acd.cd per mask"] = acd_per_mask
    medians, ratios = time_interleaved(fns, device, repeat=repeat)
    table = Table("CD, VGG-style CNN 3x64x64, 64 block masks of 8x8",
                  ["implementation", "median ms", "x floor (same rounds)", "fastattr speed-up"])
    fast = "fastattr CD (beta, 64 masks batched)"
    for name in fns:
        speed = medians[name] / medians[fast]
        table.add(name, medians[name] * 1e3, ratios[name], f"{speed:.1f}x" if name != fast else "1x")
    if acd is None:
        table.notes.append("acd not installed: no per-mask comparison")
    table.notes.append("fastattr speed-up = median time of the row / median time of fastattr's batched CD")
    table.machine = machine_info(device)
    table.params = {"device": str(device), "repeat": repeat, "threads": torch.get_num_threads(),
                    "medians_s": medians, "ratios_to_floor": ratios}
    return table


def digit_28(seed: int = 0) -> "tuple[nn.Module, torch.Tensor]":
    """A 28×28 grayscale CNN (random weights) that acd's generic ``cd`` can walk, and one digit."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(),
                          nn.Linear(64, 10)).eval()
    x, _ = load_digits("test", n=1)
    return model, F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)


def run_acd(repeat: int = 3) -> Table:
    model, x = digit_28()
    target = int(model(x).argmax())
    acd = _acd()
    table = Table("ACD on one 28x28 input (sweep 1, percentile 99, 5 growth iterations)",
                  ["implementation", "seconds per input (median)", "CD masks evaluated"])
    agglomerate_2d(model, x[0], target, sweep=1, percentile=99, n_iters=5)  # warm-up (first-call costs)
    fa_times, fa_levels = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        h = agglomerate_2d(model, x[0], target, sweep=1, percentile=99, n_iters=5)
        fa_times.append(time.perf_counter() - start)
        fa_levels = len(h.levels)
    table.add("fastattr.cd.agglomerate_2d", float(np.median(fa_times)), f"{fa_levels} levels")
    if acd is not None:
        from acd.agglomeration import agg_2d
        from acd.scores import score_funcs

        # acd's agglomerate forwards device= only to its first scoring call; later calls default to
        # "cuda", so pin them to the CPU for this comparison.
        original = score_funcs.cd
        score_funcs.cd = lambda *a, **k: original(*a, **{**k, "device": "cpu"})
        acd_times = []
        try:
            for _ in range(1):  # acd takes minutes per input: one run
                start = time.perf_counter()
                with torch.no_grad():
                    lists = agg_2d.agglomerate(model, None, 99, "cd", 1, x[0, 0].numpy(), target, num_iters=5,
                                               im_torch=x, model_type=None, device="cpu")
                acd_times.append(time.perf_counter() - start)
        finally:
            score_funcs.cd = original
        table.add("acd agg_2d.agglomerate", float(np.median(acd_times)), f"{len(lists['comps_list'])} levels")
        table.notes.append(f"speed-up {np.median(acd_times) / np.median(fa_times):.1f}x")
    else:
        table.notes.append("acd not installed: no comparison")
    table.machine = machine_info("cpu")
    table.params = {"device": "cpu", "repeat": repeat, "threads": torch.get_num_threads()}
    return table


def run_resnet(repeat: int = 5, n_masks: int = 1024, acd_masks: int = 32) -> Table:
    device = torch.device("cuda")
    model = resnet18().to(device).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    masks = block_masks(224, 224, 7).to(device)[:n_masks]
    batch = x.expand(len(masks), -1, -1, -1).contiguous()
    acd = _acd()

    def floor():
        with torch.no_grad():
            model(batch)

    fns = {"forward of 1024 inputs (floor)": floor,
           "fastattr CD (1024 masks)": lambda: contextual_decomposition(model, x, masks)}
    if acd is not None:
        subset = [m[0].cpu().numpy() for m in masks[:acd_masks]]

        def acd_subset():
            with torch.no_grad():
                for m in subset:
                    acd.cd(x, model, mask=m, model_type="resnet18", device="cuda")
        fns[f"acd.cd per mask ({acd_masks} masks)"] = acd_subset
    medians, ratios = time_interleaved(fns, device, repeat=repeat)
    table = Table("CD on CUDA, ResNet-18 224x224, 1024 block masks of 7x7",
                  ["implementation", "median ms", "x floor (same rounds)"])
    for name in fns:
        table.add(name, medians[name] * 1e3, ratios[name])
    if acd is not None:
        scaled = medians[f"acd.cd per mask ({acd_masks} masks)"] * len(masks) / acd_masks
        table.notes.append(f"acd scaled to {len(masks)} masks: {scaled * 1e3:.0f} ms, "
                           f"{scaled / medians['fastattr CD (1024 masks)']:.1f}x fastattr")
    table.machine = machine_info(device)
    table.params = {"device": "cuda", "repeat": repeat, "medians_s": medians}
    return table


def default_tables(device: Optional[str] = None, repeat: int = 7) -> list:
    tables = [run_blocks(device, repeat), run_acd(max(1, repeat // 2))]
    if cuda_or_note(device, "ResNet-18 CD benchmark (1024 masks vs acd)") is not None:
        tables.append(run_resnet(repeat))
    return tables
