"""ROAD and its imputation op (issue 21), two tables for ``fastattr bench metrics``.

Table 1: the ``noisy_linear_impute`` op on 16 images of 3×224×224 against ``scipy.sparse.linalg.spsolve``
per image (fastattr's reference backend: one sparse LU per image, its three channels as three
right-hand sides). The masks remove the top p % of a map: "noisy" ranks i.i.d. noise (scattered
holes, like a gradient map), "smooth" ranks noise blurred with σ = 8 px (large holes, like a CAM),
the slow case for an iterative solver.

Table 2: ROAD (MoRF, accuracy, 10 levels) of saliency maps on 8 images of 3×64×64 (the VGG-style CNN)
against Quantus 0.6. Quantus's ``ROAD`` raises an IndexError for a channel-reduced map on RGB inputs,
so its peer row runs Quantus's own loop (``ROAD.evaluate_batch``: per level, per image
``quantus.functions.perturb_func.noisy_linear_imputation``, then one prediction of the level's batch)
on the map's pixel ranking; a second pair of rows runs ``quantus.ROAD`` itself on the one-channel
version (the grey images and a one-channel copy of the CNN).
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attribution import saliency
from ..metrics.road import road
from ..ops import noisy_linear_impute
from . import Table, machine_info, time_interleaved
from .ig import vgg_style

LEVELS = tuple(range(5, 100, 10))


def _masks(kind: str, n: int, size: int, percent: int, generator: torch.Generator) -> torch.Tensor:
    score = torch.rand(n, 1, size, size, generator=generator)
    if kind == "smooth":
        r = torch.arange(-24, 25, dtype=torch.float32)
        k = torch.exp(-r ** 2 / (2 * 8.0 ** 2))
        k = (k / k.sum()).view(1, 1, 1, -1)
        score = F.conv2d(F.conv2d(score, k, padding=(0, 24)), k.transpose(2, 3), padding=(24, 0))
    flat = score.reshape(n, -1)
    count = int(flat.shape[1] * percent / 100)
    top = torch.topk(flat, count, dim=1).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, top, True).reshape(n, size, size)


def impute_table(device: Optional[str] = None, n: int = 16, size: int = 224, repeat: int = 3) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=gen)
    table = Table(name=f"noisy_linear_impute, {n} images of 3×{size}×{size}, {device.type}",
                  columns=["mask", "removed %", "fastattr ms", "scipy spsolve ms", "speed-up", "max |diff|"],
                  machine=machine_info(device), params={"n": n, "size": size, "repeat": repeat, "device": str(device)})
    for kind in ("noisy", "smooth"):
        for percent in (20, 50, 80):
            removed = _masks(kind, n, size, percent, gen)
            xd, md = x.to(device), removed.to(device)
            fast = lambda: noisy_linear_impute(xd, md, noise=0.0)  # noqa: E731
            scipy = lambda: noisy_linear_impute(x, removed, noise=0.0, backend="reference")  # noqa: E731
            diff = (fast().cpu() - scipy()).abs().max().item()
            times, ratios = time_interleaved({"scipy": scipy, "fastattr": fast}, device, repeat=repeat, warmup=0)
            table.add(kind, percent, times["fastattr"] * 1e3, times["scipy"] * 1e3, 1 / ratios["fastattr"], diff)
    table.notes.append(f"{repeat} round-robin rounds, medians; speed-up = median per-round ratio; torch threads = "
                       f"{torch.get_num_threads()}; fastattr: float32 images, holes of <= 32 pixels solved directly, "
                       "larger ones by CG in float64 to a relative residual of 1e-6 (the float32 default), "
                       "right-hand side, solve and write-back in one C++ pass; "
                       "scipy: one spsolve per image with the 3 channels as right-hand sides")
    return table


def _quantus_loop(model, x: np.ndarray, y: np.ndarray, pixel_map: np.ndarray, percentages) -> np.ndarray:
    """Quantus 0.6's ``ROAD.evaluate_batch`` with the pixels of a channel-reduced map as indices."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    order = np.argsort(-pixel_map.reshape(x.shape[0], -1), axis=1)
    size = pixel_map[0].size
    out = []
    for p in percentages:
        top = order[:, :int(size * p / 100)]
        perturbed = np.stack([noisy_linear_imputation(arr=xi, indices=ti, noise=0.01) for xi, ti in zip(x, top)])
        with torch.no_grad():
            pred = model(torch.as_tensor(perturbed, dtype=torch.float32)).argmax(1).numpy()
        out.append(pred == y)
    return np.stack(out, 1)


def road_table(device: Optional[str] = None, n: int = 8, repeat: int = 3) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = vgg_style(0).to(device)
    gray_model = vgg_style(0)
    with torch.no_grad():
        first = nn.Conv2d(1, 16, 3, padding=1)
        first.weight.copy_(gray_model[0].weight.sum(1, keepdim=True))
        first.bias.copy_(gray_model[0].bias)
    gray_model[0] = first
    gray_model = gray_model.eval().to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 64, 64, generator=gen).to(device)
    y = model(x).argmax(1)
    a = saliency(model, x, y).abs().sum(1, keepdim=True)
    gray = x.mean(1, keepdim=True)
    gy = gray_model(gray).argmax(1)
    ga = saliency(gray_model, gray, gy).abs()
    impls = {"fastattr.metrics.road": lambda: road(model, x, a, y, percentages=LEVELS)}
    peers = {}
    try:
        import quantus
        xn, yn, an = x.cpu().numpy(), y.cpu().numpy(), a.cpu().numpy()
        cpu_model = model.cpu() if device.type == "cpu" else vgg_style(0)
        peers["quantus ROAD loop (RGB)"] = lambda: _quantus_loop(cpu_model, xn, yn, an, LEVELS)
        impls.update(peers)
        impls["fastattr.metrics.road (grey)"] = lambda: road(gray_model, gray, ga, gy, percentages=LEVELS)
        gn, gyn, gan = gray.cpu().numpy(), gy.cpu().numpy(), ga.cpu().numpy()
        gray_cpu = gray_model if device.type == "cpu" else gray_model.cpu()
        impls["quantus.ROAD (grey)"] = lambda: quantus.ROAD(percentages=list(LEVELS), disable_warnings=True)(
            model=gray_cpu, x_batch=gn, y_batch=gyn, a_batch=gan, device="cpu")
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times, ratios = time_interleaved(impls, device, repeat=repeat, warmup=1)
    table = Table(name=f"ROAD, MoRF accuracy at {len(LEVELS)} levels, saliency, {n} images of 3×64×64, {device.type}",
                  columns=["implementation", "ms", "speed-up of fastattr"], machine=machine_info(device),
                  params={"n": n, "levels": list(LEVELS), "repeat": repeat, "device": str(device)})
    pair = {"quantus ROAD loop (RGB)": "fastattr.metrics.road", "quantus.ROAD (grey)": "fastattr.metrics.road (grey)"}
    for name, t in times.items():
        ours = pair.get(name)
        table.add(name, t * 1e3, ratios[name] / ratios[ours] if ours else "-")
    table.notes.append(f"{repeat} round-robin rounds, medians; speed-up = median per-round ratio; torch threads = "
                       f"{torch.get_num_threads()}; quantus.ROAD raises an IndexError on RGB with a channel-reduced "
                       "map, so the RGB peer is its own loop on the pixel ranking (module docstring)")
    if not peers:
        table.notes.append("quantus not installed: pip install quantus for the peer rows")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 3) -> list[Table]:
    return [impute_table(device, repeat=repeat), road_table(device, repeat=repeat)]
