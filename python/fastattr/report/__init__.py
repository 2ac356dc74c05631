"""``fastattr report``: every available attribution method on N inputs, every applicable metric,
written as a self-contained HTML page plus ``results.json`` / ``results.csv``.

With no arguments it runs on the embedded default (:mod:`fastattr.zoo`: a CNN trained on the
scikit-learn digits). ``model`` / ``data`` point it at a user's own model and tensors.
"""
from __future__ import annotations

import contextlib
import csv
import importlib
import math
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .._backend import use_backend
from ..attribution._common import eval_modes
from ..attribution import LAYER_METHODS, METHODS
from ..cd import CD_METHODS
from ..metrics import BETTER
from ..metrics import EVALUATE_METRICS, evaluate


class ReportError(Exception):
    """A problem with what the user asked for (model path, data, names, output folder)."""


CONTROL = "random"  # a uniformly random map: the floor any method should beat
MULTIPLIED_BY_INPUTS = {"input_x_gradient", "integrated_gradients"}  # maps that carry the (x − x') factor


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


def load_model(spec: Optional[str]) -> torch.nn.Module:
    """``None`` → the embedded digits CNN; ``"module:callable"`` → ``callable()`` from that module."""
    if spec is None:
        from ..zoo import load_digits_cnn

        return load_digits_cnn()
    if ":" not in spec:
        raise ReportError(f"--model must look like 'package.module:factory', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ReportError(f"cannot import model module {module_name!r}: {e}") from e
    factory = getattr(module, attr, None)
    if factory is None:
        raise ReportError(f"module {module_name!r} has no attribute {attr!r}")
    try:
        model = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    except Exception as e:
        raise ReportError(f"{spec}() failed ({type(e).__name__}: {e}); --model names a function that takes no "
                          "arguments and returns the model") from e
    if not callable(model):
        raise ReportError(f"{spec} did not give a callable model")
    return model


def _load_images(folder: Path) -> torch.Tensor:
    import matplotlib.image as mpimg

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ReportError(f"no .png/.jpg images in {folder}")
    arrays = [torch.as_tensor(mpimg.imread(p)).float() for p in files]
    if len({a.shape for a in arrays}) != 1:
        raise ReportError(f"images in {folder} have different sizes")
    x = torch.stack(arrays)
    if x.max() > 1.5:
        x = x / 255.0
    return x.unsqueeze(1) if x.dim() == 3 else x[..., :3].permute(0, 3, 1, 2).contiguous()


def load_data(spec: Optional[str], n: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``None`` → the digits test split; a ``.pt`` / ``.npy`` file (a tensor, ``(x, y)`` or
    ``{"x": ..., "y": ...}``); or a folder of images. Returns the first ``n`` inputs and labels."""
    if spec is None:
        from ..zoo import load_digits

        return load_digits("test", n)
    path = Path(spec)
    if not path.exists():
        raise ReportError(f"--data {spec}: no such file or folder")
    y = None
    if path.is_dir():
        x = _load_images(path)
    elif path.suffix.lower() == ".npy":
        import numpy as np

        try:
            x = torch.from_numpy(np.load(path))
        except Exception as e:
            raise ReportError(f"cannot read --data {spec}: {e}") from e
    elif path.suffix.lower() in (".pt", ".pth"):
        try:
            obj = torch.load(path, weights_only=True)
        except Exception as e:
            raise ReportError(f"cannot read --data {spec} (a tensor file saved with torch.save): "
                              f"{str(e).splitlines()[0]}") from e
        x = y = None
        if isinstance(obj, dict):
            x, y = obj.get("x"), obj.get("y")
        elif isinstance(obj, (tuple, list)) and obj:
            x, y = obj[0], obj[1] if len(obj) > 1 else None
        else:
            x = obj
        if not isinstance(x, torch.Tensor):
            raise ReportError(f"--data {spec}: expected a tensor, (x, y) or {{'x': ..., 'y': ...}}")
        if y is not None and not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
    else:
        raise ReportError(f"--data must be a .pt or .npy file or a folder of images, got {spec}")
    return x[:n], (y[:n] if isinstance(y, torch.Tensor) else None)


def _check_data(x: torch.Tensor, model) -> torch.Tensor:
    """Inputs as the model's floating dtype (integer images and float64 / float16 arrays cast), checked
    non-empty and finite."""
    if x.dim() < 2 or x.shape[0] == 0:
        raise ReportError(f"--data holds no inputs [N, ...] (shape {tuple(x.shape)})")
    params = [p for p in model.parameters() if p.is_floating_point()] if isinstance(model, torch.nn.Module) else []
    x = x.to(params[0].dtype if params else torch.float32)
    if not torch.isfinite(x).all():
        raise ReportError("--data contains NaN or Inf")
    return x


def _check_labels(labels: torch.Tensor, n: int, n_classes: int) -> torch.Tensor:
    """Labels as ``[n]`` class indices (a ``[n, 1]`` column squeezed), checked against the model."""
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1 or labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ReportError(f"--target label needs one integer class index per input, got labels of shape "
                          f"{tuple(labels.shape)} and dtype {labels.dtype}")
    if labels.shape[0] < n:
        raise ReportError(f"--target label: {labels.shape[0]} labels for {n} inputs")
    labels = labels[:n].long()
    if ((labels < 0) | (labels >= n_classes)).any():
        raise ReportError(f"--target label: labels must be in 0..{n_classes - 1} for a model with {n_classes} "
                          f"outputs, got {sorted(set(labels.tolist()))[:8]}")
    return labels


def _check_fits(model, x: torch.Tensor) -> int:
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as e:
        raise ReportError(f"data of shape {tuple(x.shape)} does not fit the model: {e}") from e
    if not isinstance(out, torch.Tensor) or out.dim() not in (1, 2) or out.shape[0] != min(2, x.shape[0]):
        raise ReportError(f"the model must return [batch, classes] outputs, got {getattr(out, 'shape', type(out))}")
    return 1 if out.dim() == 1 else out.shape[1]


def _pick(names: Optional[Sequence[str]], available: dict, kind: str) -> list[str]:
    if names is None:
        return list(available)
    if not names:
        raise ReportError(f"no {kind} named; leave the option out for all of them")
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ReportError(f"unknown {kind} {', '.join(unknown)}; choose from {', '.join(available)}")
    return list(dict.fromkeys(names))


def feature_map(attr: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The map that metrics and heat maps use: channels summed for images (``[B, H, W]``); maps that
    are already per pixel (Grad-CAM) are kept."""
    return attr.sum(1) if inputs.dim() == 4 and attr.shape == inputs.shape else attr


def writable_folder(out: str | Path) -> Path:
    """``out`` created if needed and checked writable (before any long computation), or a ReportError."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ReportError(f"cannot write to output folder {path}: {e.strerror or e}") from e
    return path


def usable_device(spec: str) -> torch.device:
    """``--device``: cpu or cuda[:N], checked usable here, or a ReportError."""
    try:
        dev = torch.device(spec)
        if dev.type not in ("cpu", "cuda"):
            raise ReportError(f"--device must be cpu or cuda (cuda:N), got {spec!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ReportError("--device cuda requested but no CUDA device is available")
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise ReportError(f"--device {spec!r} is not a usable device: {str(e).splitlines()[0]}") from e
    return dev


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False)


class _Shards:
    """torch.distributed context of a ``torchrun`` launch: this rank's slice of the inputs and a
    gather of per-example results on rank 0. A plain run is one rank holding everything."""

    def __init__(self, device: torch.device):
        import os

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        self.device = device
        if self.active:
            import torch.distributed as dist

            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def bounds(self, n: int) -> tuple[int, int]:
        per = -(-n // self.world)
        return min(n, self.rank * per), min(n, (self.rank + 1) * per)

    def gather(self, obj):
        """Rank 0 gets the list of every rank's ``obj`` in rank order; other ranks get None."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def _attribute(name: str, net, x: torch.Tensor, t: torch.Tensor, first: int, seed: int) -> torch.Tensor:
    """One method on a slice of inputs whose first global index is ``first``. Random draws are
    seeded per global example, so a sharded run gives the same maps as a single process."""
    if name == CONTROL:
        return torch.cat([torch.rand((1,) + tuple(x.shape[1:]), dtype=x.dtype,
                                     generator=torch.Generator().manual_seed(seed * 1_000_003 + first + i))
                          for i in range(x.shape[0])]).to(x.device)
    if name == "smoothgrad":
        return torch.cat([METHODS[name](net, x[i:i + 1], t[i:i + 1], generator=seed * 1_000_003 + first + i)
                          for i in range(x.shape[0])])
    if name == "rise":  # one set of masks for every example: the same on every rank
        return METHODS[name](net, x, t, generator=seed)
    if name in CD_METHODS:
        return CD_METHODS[name](net, x, t)
    if name in LAYER_METHODS:
        return LAYER_METHODS[name](net, x, t, layer=_convs(net)[-1])
    return METHODS[name](net, x, t)


def _convs(net) -> list:
    return [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)] if isinstance(net, torch.nn.Module) else []


def _unavailable(name: str, net, x: torch.Tensor) -> Optional[str]:
    """Why ``name`` cannot run on this model and data, or None."""
    if name in LAYER_METHODS and not _convs(net):
        return "needs a model with a Conv2d layer"
    if name in CD_METHODS and x.dim() != 4:
        return "needs image inputs [N, C, H, W]"
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


TIMED_INPUTS = 8  # inputs on which every method and evaluate() are re-timed on both backends


def _backend_timings(net, x: torch.Tensor, t: torch.Tensor, method_names: list[str], metric_names: list[str],
                     seed: int, n_subsets: int, show: bool) -> dict[str, float]:
    """Seconds of each method and of ``evaluate`` on the same inputs, with fastattr's default backend
    (cpp on CPU, triton on CUDA) and with the pure-torch reference backend of every op:
    ``{"backend:<name>:<fastattr|reference>": s}``."""
    out: dict[str, float] = {}
    maps = {}
    for backend, label in (("auto", "fastattr"), ("reference", "reference")):
        with use_backend(backend):
            for name in _progress([m for m in method_names if m != CONTROL], f"timing ({label} backend)", show):
                _sync(x.device)
                start = time.perf_counter()
                attr = _attribute(name, net, x, t, 0, seed)
                _sync(x.device)
                out[f"backend:{name}:{label}"] = time.perf_counter() - start
                maps[name] = feature_map(attr.detach(), x)
            if CONTROL in method_names:
                maps[CONTROL] = feature_map(_attribute(CONTROL, net, x, t, 0, seed), x)
            _sync(x.device)
            start = time.perf_counter()
            evaluate(net, x, t, attributions=maps, metrics=metric_names, n_subsets=n_subsets, generator=seed,
                     multiplied_by_inputs={m: m in MULTIPLIED_BY_INPUTS for m in maps})
            _sync(x.device)
            out[f"backend:evaluate:{label}"] = time.perf_counter() - start
    return out


def run_report(model: Optional[str | Callable] = None, data: Optional[str | torch.Tensor] = None,
               target: Optional[int | str] = None, methods: Optional[Sequence[str]] = None,
               metrics: Optional[Sequence[str]] = None, n: int = 32, device: str = "cpu",
               out: str | Path = "report", seed: int = 0, progress: bool = True,
               n_subsets: int = 100) -> Optional[ReportResult]:
    """Computes the report and writes ``out/index.html``, figures, ``results.json`` and ``results.csv``.

    Under ``torchrun --nproc-per-node N -m fastattr report ...`` the inputs are sharded across
    ranks (gloo on CPU, nccl on CUDA), each rank attributes and evaluates its shard, and rank 0
    gathers the per-example results and writes the same report as a single process (other ranks
    return None).

    Args:
        model: None (embedded digits CNN), ``"module:factory"``, or a model object.
        data: None (digits test split), a path (``.pt`` / ``.npy`` / image folder) or a tensor.
        target: None or ``"pred"`` (the predicted class), ``"label"`` (needs labels), or a class index.
        methods / metrics: names (default: all available; ``"random"`` is a control map).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ReportError(f"--n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ReportError(f"--seed must be an integer in [0, 2^32), got {seed!r}")
    chosen = methods is not None
    method_names = _pick(methods, {**METHODS, **LAYER_METHODS, **CD_METHODS, CONTROL: None}, "method")
    metric_names = _pick(metrics, dict.fromkeys(EVALUATE_METRICS), "metric")
    dev = usable_device(device)
    out_dir = writable_folder(out)
    torch.manual_seed(seed)
    net = model if (model is not None and not isinstance(model, str)) else load_model(model)
    if isinstance(data, torch.Tensor):
        x, labels = data[:n], None
    else:
        x, labels = load_data(data, n)
    shards = _Shards(dev)
    dev = shards.device
    with _borrowed(net, dev):
        return _run(net, _check_data(x, net).to(dev), labels, target, method_names, metric_names, chosen, out_dir,
                    seed, progress, n_subsets, shards, dev)


@contextlib.contextmanager
def _borrowed(net, device: torch.device):
    """The model in eval mode on ``device`` for the report, then back in its mode and on its device."""
    if not isinstance(net, torch.nn.Module):
        yield
        return
    first = next(iter(net.parameters()), None)
    home = first.device if first is not None else None
    net.to(device)
    try:
        with eval_modes(net):
            yield
    finally:
        if home is not None:
            net.to(home)


def _run(net, x, labels, target, method_names, metric_names, chosen, out_dir, seed, progress, n_subsets, shards,
         dev) -> Optional[ReportResult]:
    n_classes = _check_fits(net, x)
    with torch.no_grad():
        pred = net(x).reshape(x.shape[0], -1).argmax(-1)
    skipped = {} if chosen else {m: why for m in method_names if (why := _unavailable(m, net, x))}
    method_names = [m for m in method_names if m not in skipped]
    for name in method_names:
        why = _unavailable(name, net, x)
        if why:
            raise ReportError(f"method {name} {why}")
    if target in (None, "pred"):
        t = pred
    elif target == "label":
        if labels is None:
            raise ReportError("--target label needs data with labels")
        t = _check_labels(labels, x.shape[0], n_classes).to(dev)
    else:
        try:
            t = torch.full_like(pred, int(target))
        except (TypeError, ValueError):
            raise ReportError(f"--target must be 'pred', 'label' or a class index, got {target!r}") from None
        if not 0 <= int(target) < n_classes:
            raise ReportError(f"--target {target} is out of range for a model with {n_classes} outputs")

    lo, hi = shards.bounds(x.shape[0])
    xs, ts = x[lo:hi], t[lo:hi]
    show = progress and shards.rank == 0
    seconds: dict[str, float] = {}
    maps: dict[str, torch.Tensor] = {}
    for name in _progress(list(method_names), "attribution", show):
        _sync(dev)
        start = time.perf_counter()
        try:
            attr = _attribute(name, net, xs, ts, lo, seed) if hi > lo else xs.new_empty(xs.shape)
        except (ValueError, TypeError, NotImplementedError) as e:
            if chosen:
                raise ReportError(f"method {name} cannot run on this model and data: {e}") from e
            skipped[name] = str(e).splitlines()[0]  # the default list keeps what applies
            method_names.remove(name)
            continue
        _sync(dev)
        seconds[f"method:{name}"] = time.perf_counter() - start
        maps[name] = feature_map(attr.detach(), xs).cpu()
    values: dict[str, dict[str, torch.Tensor]] = {m: {} for m in metric_names}
    curves: dict[str, dict[str, torch.Tensor]] = {m: {} for m in metric_names}
    fractions: dict[str, list[float]] = {}
    start = time.perf_counter()
    # One evaluate() per example, seeded by its global index: every method shares that example's
    # model passes, and a sharded run draws the same subsets as a single process.
    for i in _progress(range(hi - lo), "evaluate", show):
        ev = evaluate(net, xs[i:i + 1], ts[i:i + 1], attributions={m: maps[m][i:i + 1].to(dev) for m in method_names},
                      metrics=metric_names, n_subsets=n_subsets, generator=seed * 1_000_003 + lo + i,
                      multiplied_by_inputs={m: m in MULTIPLIED_BY_INPUTS for m in method_names})
        for metric, by_method in ev.values.items():
            for name, v in by_method.items():
                values[metric][name] = torch.cat([values[metric].get(name, v[:0]).cpu(), v.cpu()])
        for metric, by_method in ev.curves.items():
            fractions[metric] = ev.fractions[metric].tolist()
            for name, c in by_method.items():
                curves[metric][name] = torch.cat([curves[metric].get(name, c[:0]).cpu(), c.cpu()])
    _sync(dev)
    seconds["metrics"] = time.perf_counter() - start
    if shards.rank == 0 and hi > lo:
        seconds.update(_backend_timings(net, xs[:TIMED_INPUTS], ts[:TIMED_INPUTS], method_names, metric_names,
                                        seed, n_subsets, show))

    parts = shards.gather((maps, values, curves, fractions, seconds))
    shards.close()
    if parts is None:
        return None
    maps = {name: torch.cat([p[0][name] for p in parts]) for name in method_names}
    result = ReportResult(out=out_dir, methods=method_names, metrics=metric_names, n=x.shape[0], device=str(dev),
                          skipped=skipped)
    result.seconds = {k: max(p[4].get(k, 0.0) for p in parts) for k in parts[0][4]}
    for metric in metric_names:
        result.per_example[metric], result.summary[metric] = {}, {}
        if any(metric in p[3] for p in parts):
            result.curves[metric] = {"_fractions": next(p[3][metric] for p in parts if metric in p[3])}
        for name in method_names:
            # A rank with an empty shard (more ranks than inputs) contributes nothing.
            v = torch.cat([p[1][metric][name] for p in parts if name in p[1][metric]]).double()
            if v.dim() > 1:  # Sensitivity-N: one value per n; the report shows their mean
                v = v.nanmean(1)
            result.per_example[metric][name] = v.tolist()
            result.summary[metric][name] = v.nanmean().item()
            if metric in result.curves:
                c = torch.cat([p[2][metric][name] for p in parts if name in p[2][metric]])
                result.curves[metric][name] = c.mean(0).tolist()

    from .html import write_html

    write_html(result, x.cpu(), maps, t.cpu(), pred.cpu())
    _write_tables(result, t.cpu())
    return result


def _json_safe(obj):
    """NaN / Inf as null (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_tables(result: ReportResult, target: torch.Tensor) -> None:
    payload = {
        "n": result.n,
        "methods": result.methods,
        "skipped_methods": result.skipped,
        "metrics": result.metrics,
        "summary": result.summary,
        "per_example": result.per_example,
        "mean_curves": result.curves,
        "seconds": result.seconds,
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
    return "\n".join(lines)
