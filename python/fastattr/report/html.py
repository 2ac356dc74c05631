"""Figures and the self-contained ``index.html`` of ``fastattr report``: the metric table in a
scrolling box with a sticky header, heat maps for every input (pages of 8, a selector), each map
coloured on its own scale (signed maps on a diverging scale, one-signed maps from their minimum to
their maximum), the curves with one legend outside the axes, and the timings with their spread."""
from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .writing import describe_defaults

if TYPE_CHECKING:
    from .writing import ReportResult

PAGE = 8  # inputs per page of heat maps
SIGNED, ONE_SIGN, FLAT = "signed", "one sign", "constant"
CURVE_LABELS = {"deletion": "target probability", "insertion": "target probability", "aupc": "target probability",
                "morf": "drop of the target probability f(x) − f(x̃)",
                "lerf": "drop of the target probability f(x) − f(x̃)",
                "model_randomisation": "Spearman correlation with the original map"}
CURVE_XLABELS = {"model_randomisation": "layers re-initialised (cascading, from the output)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    """An ``[H, W, 3]`` float array in [0, 1] as PNG bytes."""
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, np.clip(rgb, 0.0, 1.0), format="png")
    return buf.getvalue()


def _display_image(x: torch.Tensor) -> np.ndarray:
    """An input as RGB ``[H, W, 3]`` in [0, 1] (grayscale repeated; other shapes as one row)."""
    if x.dim() == 3 and x.shape[0] in (1, 3):
        img = x.permute(1, 2, 0)
    elif x.dim() == 2:
        img = x[..., None]
    else:
        img = x.reshape(1, -1, 1)
    img = img.double()
    lo, hi = img.min(), img.max()
    img = ((img - lo) / (hi - lo + 1e-12)).numpy()
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def map_colours(m: torch.Tensor) -> tuple[np.ndarray, str]:
    """A map ``[..., H, W]`` as RGB on its own scale, and its kind: signed maps on RdBu (red for the
    target, blue against, symmetric about 0), maps of one sign from their minimum (dark) to their
    maximum (bright) on magma, constant maps grey."""
    from matplotlib import colormaps

    m = m.double()
    m = m.reshape(m.shape[-2:]) if m.dim() >= 2 else m.reshape(1, -1)
    lo, hi = float(m.min()), float(m.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1e-30):
        return np.full(tuple(m.shape) + (3,), 0.6), FLAT
    if lo < 0 < hi:
        v = max(-lo, hi)
        return colormaps["RdBu_r"]((m.numpy() / v + 1) / 2)[..., :3], SIGNED
    return colormaps["magma"]((m.numpy() - lo) / (hi - lo))[..., :3], ONE_SIGN


def _img_tag(png: bytes, alt: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def heatmap_grid(x: torch.Tensor, maps: dict[str, torch.Tensor], target: torch.Tensor, rows: int = PAGE) -> bytes:
    """``heatmaps.png``: the first ``rows`` inputs as columns, the input then each method as rows
    (method names on the left), each map on its own scale as in :func:`map_colours`."""
    plt = _pyplot()
    cols = min(rows, x.shape[0])
    names = list(maps)
    fig, axes = plt.subplots(len(names) + 1, cols, figsize=(1.25 * cols + 1.6, 1.25 * (len(names) + 1)),
                             squeeze=False)
    for c in range(cols):
        axes[0, c].imshow(_display_image(x[c]), interpolation="nearest")
        axes[0, c].set_title(f"#{c}  t={int(target[c])}", fontsize=9)
        for r, name in enumerate(names, start=1):
            axes[r, c].imshow(map_colours(maps[name][c])[0], interpolation="nearest")
    for r, name in enumerate(["input"] + names):
        axes[r, 0].set_ylabel(name, fontsize=10, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    png = _figure_png(fig)
    plt.close(fig)
    return png


def _styles(names: list[str]) -> dict[str, dict]:
    """One distinct line style per method: 10 colours × 4 dash patterns; the control black, dotted."""
    from matplotlib import colormaps

    colours = colormaps["tab10"].colors
    dashes = ["-", "--", "-.", (0, (1, 1))]
    out = {}
    for i, name in enumerate(n for n in names if n != "random"):
        out[name] = dict(color=colours[i % 10], linestyle=dashes[(i // 10) % 4], linewidth=1.6)
    if "random" in names:
        out["random"] = dict(color="black", linestyle=":", linewidth=2.0)
    return out


def curves_figure(result: "ReportResult") -> bytes:
    """Mean curves per method over the fraction of features changed, two panels per row, one
    legend outside the panels (the areas are in the metric table)."""
    plt = _pyplot()
    metrics = list(result.curves)
    ncols = min(2, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False)
    styles = _styles(result.methods)
    for ax, metric in zip(axes.flat, metrics):
        fractions = result.curves[metric]["_fractions"]
        for name in (m for m in result.methods if m in result.curves[metric]):
            ax.plot(fractions, result.curves[metric][name], label=name, **styles[name])
        ax.set_title(metric, fontsize=11)
        ax.set_xlabel(CURVE_XLABELS.get(metric, "fraction of features changed"), fontsize=9)
        if metric == "model_randomisation":  # one point per layer: 1 = the output layer re-initialised
            ax.set_xticks(fractions, [str(int(f) + 1) for f in fractions])
        ax.set_ylabel(CURVE_LABELS.get(metric, "target score"), fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    fig.tight_layout()
    png = _figure_png(fig)
    plt.close(fig)
    return png


def _metric_table(result: "ReportResult") -> str:
    from ..metrics import BETTER
    from .writing import best_value

    arrow = {"lower": "↓", "higher": "↑"}
    head = "".join(f'<th title="{html.escape(BETTER.get(m, ""))} is better">{html.escape(m)} '
                   f'{arrow.get(BETTER.get(m, ""), "")}</th>' for m in result.metrics)
    rows = []
    for name in result.methods:
        cells = []
        for metric in result.metrics:
            values = result.summary[metric]
            v = values[name]
            cls = ' class="best"' if v == best_value(metric, values) else ""
            cells.append(f"<td{cls}>{v:.4g}</td>")
        secs = result.seconds[f"method:{name}"]
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}<td>{secs:.3f}</td></tr>")
    return (f'<div class="table-box" id="metrics-box"><table id="metrics"><thead><tr><th>method</th>{head}'
            f'<th>attribution time (s)</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>")


def control_sentence(result: "ReportResult", reference: str = "integrated_gradients") -> str:
    """Which columns, if any, the random control wins against ``reference``."""
    from ..metrics import BETTER

    if "random" not in result.methods or reference not in result.methods:
        return ""
    lost = []
    for metric in result.metrics:
        r, ref = result.summary[metric]["random"], result.summary[metric][reference]
        if math.isnan(r) or math.isnan(ref):
            continue
        if (r < ref) if BETTER.get(metric) == "lower" else (r > ref):
            lost.append(metric)
    if not lost:
        return f"The random control loses to <code>{reference}</code> in every column."
    return (f"The random control beats <code>{reference}</code> on {', '.join(map(html.escape, lost))}: read "
            "those columns with care on this model and data.")


MORE_METRICS = {
    "sparseness": "sparseness: the Gini index of |a|",
    "complexity": "complexity: the entropy of the fractional contributions |a_i| / Σ|a|",
    "random_logit": "random logit: the SSIM between the map for the target and the map for a random other class",
    "relative_input_stability": "relative input / output / representation stability: the largest relative "
                                "change of the map over {samples} uniform perturbations of each input, over the "
                                "relative change of the input, the logits' change or the hidden layers' relative "
                                "change (NaN when a perturbation flips the prediction, as in Quantus)",
    "model_randomisation": "model randomisation: the Spearman correlation of the map with the map of the model "
                           "whose layers are re-initialised one after the other from the output (cascading), "
                           "averaged over the layers",
}


def _more_metrics(result: "ReportResult") -> str:
    """The sentences on the complexity, randomisation and stability columns present; each method is
    its own explain function, with the report's settings."""
    stability = [m for m in result.metrics if m.startswith("relative_")]
    keys = [m for m in MORE_METRICS if m in result.metrics or (m == "relative_input_stability" and stability)]
    if not keys:
        return ""
    samples = result.settings.get("stability_samples", "")
    parts = [html.escape(MORE_METRICS[k].format(samples=samples)) for k in keys]
    return " Also: " + "; ".join(parts) + " (each method explains again with the report's settings)."


def _agg_sentence(result: "ReportResult") -> str:
    """What the ``agg`` row is, and its weights per method averaged over the inputs."""
    agg = result.settings.get("agg")
    if not agg:
        return ""
    weights = ", ".join(f"<code>{html.escape(m)}</code> {w:.2f}" for m, w in agg["mean_weights"].items())
    return (" <code>agg</code> is AGG_opt (Decker et al. 2024): per input, the convex combination of the "
            "|map|/max|map| of the gradient methods that minimises ½ sensitivity + ½ infidelity on 50 draws "
            f"each; mean weights: {weights} (per input in <code>results.json</code>; the metrics that explain "
            "again keep each input's weights).")


def _sea_nn_sentence(result: "ReportResult") -> str:
    """What the ``sea_nn`` row is."""
    sea = result.settings.get("sea_nn")
    if not sea:
        return ""
    methods = ", ".join(f"<code>{html.escape(m)}</code>" for m in sea["methods"])
    return (" <code>sea_nn</code> is SEA-NN (Manupriya et al.): per input, a deep submodular function "
            f"({'-'.join(map(str, sea['hidden']))}, {sea['epochs']} epochs, seeded per input) learned from the maps of "
            f"{methods}, the attribution of a pixel its marginal gain when greedy picks it.")


def _defaults_sentence(result: "ReportResult") -> str:
    """The settings chosen from the input size (``settings["defaults"]``)."""
    defaults = result.settings.get("defaults")
    if not defaults:
        return ""
    estimate = result.settings.get("estimate")
    return ("\nChosen from the input size (<code>--defaults</code> replaces them): "
            f"{html.escape(describe_defaults(defaults))}."
            + (f"\nThe run's {html.escape(estimate['message'])}." if estimate else ""))


def _iba_sentence(result: "ReportResult") -> str:
    """What the ``iba`` row is."""
    iba = result.settings.get("iba")
    if not iba:
        return ""
    return (f" <code>iba</code> is Information Bottleneck Attribution (Schulz et al. 2020) at "
            f"<code>{html.escape(iba['layer'])}</code>, the last conv layer, its noise prior the layer's statistics "
            f"over {html.escape(iba['statistics'])}: β = {iba['beta']:g}, {iba['steps']} steps × {iba['n_noise']} "
            "noise draws seeded per input; the map is the capacity in bits, upsampled.")


def _sop_sentence(result: "ReportResult") -> str:
    """What the ``sop`` row and the grouped columns are."""
    sop = result.settings.get("sop")
    if not sop:
        return ""
    grouped = [m for m in result.metrics if m.startswith("grouped_")]
    left_out = [m for m in sop["left_out"] if m in result.metrics]
    text = ""
    if sop["row"]:
        text += (" <code>sop</code> is the zoo's Sum-of-Parts wrapper of the CNN explaining itself "
                 f"(<code>{html.escape(sop['model'])}</code>: {sop['n_groups']} groups of {sop['patch_size']}×"
                 f"{sop['patch_size']}-pixel patches per input, the prediction Σ c<sub>i</sub>·y<sub>i</sub>): its "
                 "map gives each pixel the sum of the scores c<sub>i</sub> of the groups that hold it, and every "
                 "column of its row is measured on the SOP model itself, for the same targets (not on the CNN)"
                 + (f"; {', '.join(html.escape(m) for m in left_out)} not computed for it (NaN)." if left_out else "."))
    if grouped:
        text += (f" {' / '.join(html.escape(m) for m in grouped)}: the SOP groups of each input removed / restored "
                 "one whole group at a time, highest score first (the area over the fraction of pixels changed); "
                 + ("<code>sop</code> on the SOP model by its own scores, " if sop["row"] else "")
                 + "the other methods on the model, each group scored by the sum of the method's map over it (as "
                   "SOP's Table 1).")
    return text


def _groups_figure(x: torch.Tensor, groups: dict, target: torch.Tensor, top: int, rows: int = PAGE) -> bytes:
    """``sop_groups.png``: the first ``rows`` inputs as rows, the input then its ``top`` highest-scoring SOP
    groups, each drawn as the digit with the pixels outside the group dimmed and the group outlined,
    its score c in the title."""
    from matplotlib.collections import LineCollection

    plt = _pyplot()
    n = min(rows, x.shape[0])
    top = min(top, groups["scores"].shape[1])
    fig, axes = plt.subplots(n, top + 1, figsize=(1.3 * (top + 1) + 0.4, 1.35 * n), squeeze=False)
    for r in range(n):
        image = _display_image(x[r])
        axes[r, 0].imshow(image, interpolation="nearest")
        axes[r, 0].set_title(f"#{r}  t={int(target[r])}", fontsize=8)
        order = torch.argsort(groups["scores"][r], descending=True, stable=True)[:top]
        for c, g in enumerate(order.tolist(), start=1):
            mask = groups["masks"][r, g].numpy()
            axes[r, c].imshow(image * np.where(mask, 1.0, 0.25)[..., None], interpolation="nearest")
            axes[r, c].add_collection(LineCollection(_outline(mask), colors="#ff3b30", linewidths=1.6))
            axes[r, c].set_title(f"c={float(groups['scores'][r, g]):.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    png = _figure_png(fig)
    plt.close(fig)
    return png


def _outline(mask: np.ndarray) -> list:
    """The edges between a mask's pixels and the pixels outside it (or the border), as line segments in
    ``imshow``'s coordinates."""
    h, w = mask.shape
    padded = np.pad(mask, 1)
    segments = []
    for i, j in zip(*np.nonzero(mask)):
        y, x = i + 1, j + 1
        if not padded[y - 1, x]:
            segments.append([(j - 0.5, i - 0.5), (j + 0.5, i - 0.5)])
        if not padded[y + 1, x]:
            segments.append([(j - 0.5, i + 0.5), (j + 0.5, i + 0.5)])
        if not padded[y, x - 1]:
            segments.append([(j - 0.5, i - 0.5), (j - 0.5, i + 0.5)])
        if not padded[y, x + 1]:
            segments.append([(j + 0.5, i - 0.5), (j + 0.5, i + 0.5)])
    return segments


def _groups_section(result: "ReportResult", x: torch.Tensor, groups: Optional[dict], target: torch.Tensor,
                    top: int) -> str:
    """The page's Sum-of-Parts section: the figure of :func:`_groups_figure`, written as ``sop_groups.png``."""
    if groups is None:
        (result.out / "sop_groups.png").unlink(missing_ok=True)  # a previous run's figure would mislead
        return ""
    png = _groups_figure(x, groups, target, top)
    (result.out / "sop_groups.png").write_bytes(png)
    shown = min(PAGE, x.shape[0])
    return (f"<h2>Sum-of-Parts groups</h2><p>The SOP model's {top} highest-scoring groups of the first {shown} "
            "inputs for their targets (outlined; pixels outside the group dimmed) with their scores c; every "
            "input's groups and scores are in <code>results.json</code> (<code>settings.sop</code>).</p>"
            f'<div id="sop-groups">{_img_tag(png, "Sum-of-Parts groups")}</div>')


def _skipped(result: "ReportResult") -> str:
    return "".join(f" Left out: <code>{html.escape(m)}</code> ({html.escape(why)})."
                   for m, why in result.skipped.items())


def _heatmap_pages(x: torch.Tensor, maps: dict[str, torch.Tensor], target: torch.Tensor) -> str:
    """Every input's heat maps: one table per page of :data:`PAGE` inputs (inputs as columns,
    methods as rows), a selector to switch pages."""
    n = x.shape[0]
    pages = []
    for p, start in enumerate(range(0, n, PAGE)):
        idx = range(start, min(n, start + PAGE))
        head = "".join(f"<th>#{i}<br>t={int(target[i])}</th>" for i in idx)
        rows = ['<tr data-method="input"><th>input</th>'
                + "".join(f"<td>{_img_tag(_png(_display_image(x[i])), f'input {i}', 'map')}</td>" for i in idx)
                + "</tr>"]
        for name, m in maps.items():
            cells, kinds = [], set()
            for i in idx:
                rgb, kind = map_colours(m[i])
                kinds.add(kind)
                cells.append(f"<td>{_img_tag(_png(rgb), f'{name} {i}', 'map')}</td>")
            note = f'<span class="kind">{html.escape(", ".join(sorted(kinds)))}</span>'
            rows.append(f'<tr data-method="{html.escape(name)}"><th>{html.escape(name)} {note}</th>'
                        f'{"".join(cells)}</tr>')
        hidden = "" if p == 0 else ' style="display:none"'
        pages.append(f'<table class="maps" data-page="{p}"{hidden}><thead><tr><th></th>{head}</tr></thead>'
                     f'<tbody>{"".join(rows)}</tbody></table>')
    options = "".join(f'<option value="{p}">inputs {s + 1}–{min(n, s + PAGE)}</option>'
                      for p, s in enumerate(range(0, n, PAGE)))
    selector = (f'<label>Show <select id="page" onchange="showPage(this.value)">{options}</select></label>'
                if len(pages) > 1 else "")
    return f'{selector}<div class="table-box" id="heatmaps">{"".join(pages)}</div>'


def _backend_table(result: "ReportResult") -> str:
    """fastattr's default backend vs the reference backend, per method that calls a fastattr op and for
    evaluate(): medians of repeated runs after a warm-up (one run for runs over a second), with their range;
    the methods that call no op named below it."""
    names = [k.split(":")[1] for k in result.seconds if k.startswith("backend:") and k.endswith(":fastattr")]
    if not names:
        return "<p>(backend timings not measured)</p>"
    same = [m for m in result.methods if m not in names and m != "random"]
    note = (f"<p>{html.escape(', '.join(same))}: no fastattr op, the same code on both backends (not re-timed)."
            "</p>") if same else ""

    def cell(name: str, label: str) -> str:
        key = f"backend:{name}:{label}"
        lo, hi = result.seconds.get(key + ":lo"), result.seconds.get(key + ":hi")
        spread = f' <span class="spread">({lo:.3f}–{hi:.3f})</span>' if lo is not None and hi is not None else ""
        return f"<td>{result.seconds[key]:.3f}{spread}</td>"

    rows = []
    for name in names:
        fast, ref = result.seconds[f"backend:{name}:fastattr"], result.seconds[f"backend:{name}:reference"]
        rows.append(f"<tr><th>{html.escape(name)}</th>{cell(name, 'fastattr')}{cell(name, 'reference')}"
                    f"<td>{ref / max(fast, 1e-9):.2f}×</td></tr>")
    return ('<div class="table-box"><table id="backends"><thead><tr><th>method / metric pass</th>'
            '<th>fastattr backend (s)</th><th>reference backend (s)</th><th>speed-up</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>" + note)


STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1880px; }
.table-box { max-width: 100%; overflow: auto; border: 1px solid #ddd; }
#metrics-box { max-height: 75vh; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
thead th { position: sticky; top: 0; background: #f3f3f3; z-index: 2; }
tbody th { position: sticky; left: 0; background: #fafafa; text-align: left; z-index: 1; }
thead th:first-child { text-align: left; }
td.best { font-weight: bold; background: #d9f2d9; }
table.maps td { padding: 2px; }
img.map { width: 88px; height: 88px; image-rendering: pixelated; display: block; }
.kind, .spread { color: #777; font-size: 80%; font-weight: normal; }
img { max-width: 100%; }
"""


def write_html(result: "ReportResult", x: torch.Tensor, maps: dict[str, torch.Tensor], target: torch.Tensor,
               pred: torch.Tensor, settings: Optional[dict] = None, sop_groups: Optional[dict] = None,
               top_groups: int = 4) -> None:
    """Writes ``heatmaps.png``, ``curves.png``, ``sop_groups.png`` (with ``sop_groups``: masks ``[N, G, H, W]``
    and scores ``[N, G]``, the ``top_groups`` best drawn) and ``index.html`` (images inlined) into
    ``result.out``."""
    grid = heatmap_grid(x, maps, target)
    curves = curves_figure(result) if result.curves else None
    (result.out / "heatmaps.png").write_bytes(grid)
    if curves:
        (result.out / "curves.png").write_bytes(curves)
    else:
        (result.out / "curves.png").unlink(missing_ok=True)  # a previous run's figure would mislead
    metric_secs = result.seconds.get("metrics", 0.0)
    method_secs = sum(v for k, v in result.seconds.items() if k.startswith("method:"))
    timed = (settings or {}).get("timed_inputs", min(result.n, 8))
    repeats = (settings or {}).get("timing_repeats", 1)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fastattr report</title>
<style>{STYLE}</style>
<script>function showPage(p) {{
  document.querySelectorAll("table.maps").forEach(t => t.style.display = t.dataset.page === p ? "" : "none");
}}</script></head><body>
<h1>fastattr report</h1>
<p>{result.n} inputs; {len(result.methods)} attribution methods; metrics: {", ".join(result.metrics)}.
Targets: the predicted class unless chosen otherwise ({int((pred == target).sum())} of {result.n} targets equal
the prediction).{_defaults_sentence(result)}
<code>random</code> is a control map that any method should beat. {control_sentence(result)}{_agg_sentence(result)}{_sea_nn_sentence(result)}{_iba_sentence(result)}{_sop_sentence(result)}{_skipped(result)}</p>
<h2>Metrics (mean over inputs; ↓ lower / ↑ higher is better; best per column in bold)</h2>
<p>Deletion / insertion: area under the target-probability curve as the top features are removed /
restored; MoRF / LeRF: the mean drop of the target probability as the most / least relevant features are
removed; MDRS / AUPC: segments removed until the prediction flips, area under the prediction curve.
Faithfulness correlation and Sensitivity-N: correlation between the attribution mass of random feature
subsets and the drop of the target logit when they are removed (Sensitivity-N: mean over subset sizes n).
Every column is independent of a map's scale: infidelity is that of the best-rescaled map (the optimal
rescaling of Yeh et al.) and the SOP deletion / insertion errors are those of the best-scaled map
<code>c·a</code>, <code>c ≥ 0</code> per input.{_more_metrics(result)}</p>
{_metric_table(result)}
<h2>Heat maps</h2>
<p>Each map on its own scale. Signed maps: red for the target, blue against, symmetric about 0. Maps of one
sign (marked): dark at their minimum, bright at their maximum. Constant maps: grey.</p>
{_heatmap_pages(x, maps, target)}
{_groups_section(result, x, sop_groups, target, top_groups)}
<h2>Curves</h2>
<div id="curves">{_img_tag(curves, "curves") if curves else "<p>no curve metrics selected</p>"}</div>
<h2>Timings</h2>
<p>Attribution: {method_secs:.2f} s in all; metrics: {metric_secs:.2f} s in all (device: {html.escape(result.device)},
{torch.get_num_threads()} CPU threads), over the inputs after each shard's first: the first runs alone as the
warm-up (every method, twice when under a quarter second, then every metric), its results kept and its
times the estimate ({html.escape((settings or {}).get("estimate", {}).get("message", "not made"))}); with
a single input per shard these are the warm-up's times.
Per-example values are in <code>results.csv</code> and <code>results.json</code>.</p>
<p>The methods that call a fastattr op and the metric pass on the first {timed} inputs with fastattr's
kernels (cpp on CPU, Triton on CUDA) and with the pure-torch reference of every op: medians of {repeats} runs
after a warm-up run, the range in brackets, or one run where the warm-up took over a second (on fastattr's
backend, where it took over 2 s, the warm-up's own run on the same input); the metric pass is
<code>evaluate</code> on the ranked metrics (deletion, insertion, MDRS, AUPC, MoRF, LeRF, those chosen) of the
first method's map, whose perturbed inputs
come from fastattr's <code>perturb_by_rank</code> op (the other metrics call no op):</p>
{_backend_table(result)}
</body></html>
"""
    (result.out / "index.html").write_text(page)
