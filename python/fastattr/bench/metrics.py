"""``fastattr bench metrics``: insertion + deletion against the model-only floor and Quantus.

A VGG-style CNN on 3×64×64, 8 images, saliency maps, 64 steps each for insertion and deletion
(64 pixels per step, 65 curve points). The floor is the model's plain forward over the same number
of inputs at its best batch size; Quantus ``PixelFlipping`` (deletion with the same step) is the
peer. Everything is timed round-robin; ratios are medians of per-round ratios.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..attribution import saliency
from ..metrics import deletion, insertion
from . import Table, machine_info, time_interleaved
from .ig import vgg_style


def _quantus_deletion(model, x, y, attr, step):
    try:
        import quantus
    except ImportError:
        return None
    import numpy as np

    # Curves, integrated here: Quantus 0.6's own AUC calls np.trapz, which numpy 2.4 removed.
    metric = quantus.PixelFlipping(features_in_step=step, perturb_baseline="black", normalise=False,
                                   return_auc_per_sample=False, disable_warnings=True)
    x_np, y_np, a_np = x.cpu().numpy(), y.cpu().numpy(), attr.unsqueeze(1).cpu().numpy()
    return lambda: np.trapezoid(np.asarray(metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np,
                                                  device=str(x.device), softmax=True)), axis=1)


def run(n_images: int = 8, steps: int = 64, device: Optional[str] = None, repeat: int = 5) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = vgg_style().to(device)
    x = torch.rand(n_images, 3, 64, 64, generator=torch.Generator().manual_seed(2)).to(device)
    y = model(x).argmax(1)
    attr = saliency(model, x, y).sum(1)
    step = (64 * 64) // steps
    n_inputs = 2 * n_images * (steps + 1)
    pool = torch.rand(n_inputs, 3, 64, 64, generator=torch.Generator().manual_seed(3)).to(device)

    def forward_all(bs):
        with torch.no_grad():
            for i in range(0, n_inputs, bs):
                model(pool[i:i + bs])

    sizes = (8, 16, 24, 32, 40, 48, 64, 96, 128, 256, 512, 1024)
    search, _ = time_interleaved({bs: (lambda bs=bs: forward_all(bs)) for bs in sizes}, device, repeat=5)
    best_bs = min(search, key=search.get)
    impls = {
        "model-only floor": lambda: forward_all(best_bs),
        "fastattr insertion + deletion": lambda: (insertion(model, x, attr, y, step=step),
                                                  deletion(model, x, attr, y, step=step)),
        "fastattr deletion": lambda: deletion(model, x, attr, y, step=step),
    }
    quantus_fn = _quantus_deletion(model, x, y, attr, step)
    if quantus_fn is not None:
        impls["quantus PixelFlipping (deletion)"] = quantus_fn
    times, vs_floor = time_interleaved(impls, device, repeat=repeat)
    table = Table(
        name=f"insertion + deletion, VGG-style CNN 3x64x64, {n_images} images, {steps} steps each, {device.type}",
        columns=["implementation", "ms", "time / floor", "speed-up vs quantus (deletion)"],
        machine=machine_info(device),
        params={"n_images": n_images, "steps": steps, "inputs": n_inputs, "floor_batch": best_bs, "repeat": repeat},
    )
    q = "quantus PixelFlipping (deletion)"
    for name, t in times.items():
        speedup = "-"
        if q in times and name in ("fastattr deletion", q):
            speedup = vs_floor[q] / vs_floor[name]
        table.add(name, t * 1e3, vs_floor[name], speedup)
    table.notes.append(f"floor: plain forward over the same {n_inputs} inputs at its best batch size ({best_bs}); "
                       f"{repeat} interleaved rounds; torch threads = {torch.get_num_threads()}")
    if q not in times:
        table.notes.append("quantus not installed: pip install quantus for the peer row")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 5) -> list[Table]:
    return [run(device=device, repeat=repeat)]
