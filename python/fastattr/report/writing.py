"""What ``fastattr report`` produces and how it is written: :class:`ReportResult`, ``results.json`` /
``results.csv`` (one row per example × method × metric), the best value per metric and the printed
summary table (the HTML page is :mod:`fastattr.report.html`)."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..metrics import BETTER


@dataclass
class ReportResult:
    out: Path
    methods: list[str]
    metrics: list[str]
    n: int
    device: str = "cpu"
    skipped: dict[str, str] = field(default_factory=dict)  # default methods left out: method -> why
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    per_example: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # what the run chose (timing repeats, scale invariance, ...)


def _json_safe(obj):
    """NaN / Inf as null (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_tables(result: ReportResult, target: torch.Tensor) -> None:
    payload = {
        "n": result.n,
        "methods": result.methods,
        "skipped_methods": result.skipped,
        "metrics": result.metrics,
        "summary": result.summary,
        "per_example": result.per_example,
        "mean_curves": result.curves,
        "seconds": result.seconds,
        "settings": result.settings,
        "device": result.device,
        "torch_threads": torch.get_num_threads(),
        "target": target.tolist(),
    }
    (result.out / "results.json").write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False))
    with open(result.out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["example", "target", "method", "metric", "value"])
        for metric, by_method in result.per_example.items():
            for method, values in by_method.items():
                for i, v in enumerate(values):
                    writer.writerow([i, int(target[i]), method, metric, f"{v:.6g}"])




def describe_defaults(defaults: dict) -> str:
    """The size-dependent settings of a report (``settings["defaults"]``) as one sentence."""
    patch, n = defaults["patch_size"], defaults["features"]
    if defaults["occlusion_window"] is None:  # not images
        features = "feature ablation and the ranked metrics per element"
    elif patch is None:
        features = "feature ablation per element and the ranked metrics per pixel"
    else:
        features = f"feature ablation and the ranked metrics over {patch}x{patch}-pixel patches"
    parts = [f"{features} ({n} features, curve step {defaults['curve_step']})"]
    if defaults["occlusion_window"] is not None:
        window, stride = defaults["occlusion_window"], defaults["occlusion_stride"]
        parts.append(f"occlusion window {'x'.join(map(str, window))}, stride {'x'.join(map(str, stride))}")
    if defaults["surrogate_block"] is not None:
        side = defaults["surrogate_block"]
        parts.append(f"KernelSHAP / LIME over {side}x{side}-pixel blocks")
    if defaults.get("perturbations") is not None:
        parts.append(f"{defaults['perturbations']} samples for KernelSHAP / LIME / RISE")
    if "agg_samples" in defaults:
        parts.append(f"AGG m = {defaults['agg_samples']}")
    if defaults.get("sea_nn_grid") is not None:
        grid = defaults["sea_nn_grid"]
        parts.append(f"SEA-NN on a {grid}x{grid} grid")
    return "; ".join(parts)


def best_value(metric: str, values: dict[str, float]) -> Optional[float]:
    """The best of a metric's per-method means (NaN ignored; None when all are NaN)."""
    finite = [v for v in values.values() if not math.isnan(v)]
    return (min if BETTER.get(metric) == "lower" else max)(finite) if finite else None


def summary_table(result: ReportResult) -> str:
    """The per-method means as a text table, the best value per column marked with *."""
    cols = result.metrics
    rows = []
    for m in result.methods:
        cells = [m]
        for c in cols:
            vals = result.summary[c]
            cells.append(f"{vals[m]:.4f}{'*' if vals[m] == best_value(c, vals) else ' '}")
        cells.append(f"{result.seconds[f'method:{m}']:.2f}")
        rows.append(cells)
    header = ["method"] + [f"{c} ({BETTER.get(c, '')})" for c in cols] + ["attr s"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths))
    lines = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    lines += [f"skipped {m}: {why}" for m, why in result.skipped.items()]
    if "defaults" in result.settings:
        lines.append(f"defaults: {describe_defaults(result.settings['defaults'])}")
    if "estimate" in result.settings:
        lines.append(result.settings["estimate"]["message"])
    return "\n".join(lines)
