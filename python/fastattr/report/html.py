"""Figures (matplotlib) and the self-contained ``index.html`` of ``fastattr report``."""
from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .writing import ReportResult


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _display_image(x: torch.Tensor):
    """An input as something imshow draws: grayscale ``[H, W]`` or RGB ``[H, W, 3]`` in [0, 1]."""
    if x.dim() == 3 and x.shape[0] in (1, 3):
        img = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    elif x.dim() == 2:
        img = x
    else:
        img = x.reshape(1, -1)
    lo, hi = img.min(), img.max()
    return ((img - lo) / (hi - lo + 1e-12)).numpy()


def heatmap_grid(x: torch.Tensor, maps: dict[str, torch.Tensor], target: torch.Tensor, rows: int = 8) -> bytes:
    """Rows: examples; columns: the input then each method's map (diverging colours, symmetric scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, x.shape[0])
    names = list(maps)
    fig, axes = plt.subplots(rows, len(names) + 1, figsize=(1.6 * (len(names) + 1), 1.6 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(_display_image(x[r]), cmap="gray")
        axes[r, 0].set_ylabel(f"#{r} t={int(target[r])}", fontsize=8)
        for c, name in enumerate(names, start=1):
            m = maps[name][r]
            m = m.reshape(m.shape[-2:]) if m.dim() >= 2 else m.reshape(1, -1)
            v = float(m.abs().max()) or 1.0
            axes[r, c].imshow(m.numpy(), cmap="RdBu_r", vmin=-v, vmax=v)
    for c, name in enumerate(["input"] + names):
        axes[0, c].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    png = _figure_png(fig)
    plt.close(fig)
    return png


def curves_figure(result: "ReportResult") -> bytes:
    """Mean insertion / deletion curves per method over the fraction of features changed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(result.curves)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        fractions = result.curves[metric]["_fractions"]
        for name in result.methods:
            auc = result.summary[metric][name]
            ax.plot(fractions, result.curves[metric][name], label=f"{name} ({auc:.3f})")
        ax.set_title(f"{metric} (area in legend)", fontsize=10)
        ax.set_xlabel("fraction of features changed")
        ax.set_ylabel("target probability")
        ax.legend(fontsize=7)
    png = _figure_png(fig)
    plt.close(fig)
    return png


def _img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _metric_table(result: "ReportResult") -> str:
    from ..metrics import BETTER
    from .writing import best_value

    head = "".join(f"<th>{html.escape(m)} ({BETTER.get(m, '')} is better)</th>" for m in result.metrics)
    rows = []
    for name in result.methods:
        cells = []
        for metric in result.metrics:
            values = result.summary[metric]
            v = values[name]
            cls = ' class="best"' if v == best_value(metric, values) else ""
            cells.append(f"<td{cls}>{v:.4f}</td>")
        secs = result.seconds[f"method:{name}"]
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}<td>{secs:.3f}</td></tr>")
    return (f'<table id="metrics"><tr><th>method</th>{head}<th>attribution time (s)</th></tr>'
            + "".join(rows) + "</table>")


def _skipped(result: "ReportResult") -> str:
    return "".join(f" Left out: <code>{html.escape(m)}</code> ({html.escape(why)})."
                   for m, why in result.skipped.items())


def _backend_table(result: "ReportResult") -> str:
    """fastattr's default backend vs the reference backend, per method and for evaluate()."""
    names = [k.split(":")[1] for k in result.seconds if k.startswith("backend:") and k.endswith(":fastattr")]
    if not names:
        return "<p>(backend timings not measured)</p>"
    rows = []
    for name in names:
        fast, ref = result.seconds[f"backend:{name}:fastattr"], result.seconds[f"backend:{name}:reference"]
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{fast:.3f}</td><td>{ref:.3f}</td>"
                    f"<td>{ref / max(fast, 1e-9):.2f}x</td></tr>")
    return ('<table id="backends"><tr><th>method / metric pass</th><th>fastattr backend (s)</th>'
            '<th>reference backend (s)</th><th>speed-up</th></tr>' + "".join(rows) + "</table>")


def write_html(result: "ReportResult", x: torch.Tensor, maps: dict[str, torch.Tensor], target: torch.Tensor,
               pred: torch.Tensor) -> None:
    """Writes ``heatmaps.png``, ``curves.png`` and ``index.html`` (images inlined) into ``result.out``."""
    grid = heatmap_grid(x, maps, target)
    curves = curves_figure(result) if result.curves else None
    (result.out / "heatmaps.png").write_bytes(grid)
    if curves:
        (result.out / "curves.png").write_bytes(curves)
    else:
        (result.out / "curves.png").unlink(missing_ok=True)  # a previous run's figure would mislead
    metric_secs = result.seconds.get("metrics", 0.0)
    method_secs = sum(v for k, v in result.seconds.items() if k.startswith("method:"))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fastattr report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #bbb; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; background: #d9f2d9; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>fastattr report</h1>
<p>{result.n} inputs; {len(result.methods)} attribution methods; metrics: {", ".join(result.metrics)}.
Targets: the predicted class unless chosen otherwise ({int((pred == target).sum())} of {result.n} targets equal the prediction).
<code>random</code> is a control map that any method should beat.{_skipped(result)}</p>
<h2>Metrics (mean over inputs; best per column in bold)</h2>
<p>Deletion / insertion: area under the target-probability curve as the top features are removed /
restored. Faithfulness correlation and Sensitivity-N: correlation between the attribution mass of
random feature subsets and the drop of the target logit when they are removed (Sensitivity-N: mean over
subset sizes n). Infidelity: mean
squared gap between the two (lower is better; maps that include the input factor use I = mask).</p>
{_metric_table(result)}
<h2>Heat maps</h2>
<p>Red: evidence for the target, blue: against (each map on its own symmetric scale).</p>
<div id="heatmaps">{_img_tag(grid, "heat maps")}</div>
<h2>Insertion / deletion curves</h2>
<div id="curves">{_img_tag(curves, "curves") if curves else "<p>no curve metrics selected</p>"}</div>
<h2>Timings</h2>
<p>Attribution: {method_secs:.2f} s in all; metrics: {metric_secs:.2f} s in all (device: {html.escape(result.device)},
{torch.get_num_threads()} CPU threads).
Per-example values are in <code>results.csv</code> and <code>results.json</code>.</p>
<p>The same methods and metric passes on the first {min(result.n, 8)} inputs with fastattr's kernels (cpp on
CPU, Triton on CUDA) and with the pure-torch reference of every op (one run each; methods without a
fastattr op run the same code on both):</p>
{_backend_table(result)}
</body></html>
"""
    (result.out / "index.html").write_text(page)
