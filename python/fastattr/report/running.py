"""Running ``fastattr report``: the methods chosen and available on the model, the attributions of
this process's shard of the inputs (torchrun), :func:`fastattr.evaluate` on them, the timings on
both backends, then the tables and the HTML page written by rank 0."""
from __future__ import annotations

import contextlib
import math
import statistics
import time
import weakref
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .._backend import use_backend
from ..attribution import LAYER_METHODS, METHODS, aggregate, iba, iba_statistics, sea_nn
from ..attribution.aggregate import abs_max, combine
from ..cd import CD_METHODS
from ..core import eval_modes, patch_segments
from ..metrics import (EVALUATE_METRICS, EXPLAIN_METRICS, FAITHFULNESS_METRICS, evaluate, grouped_deletion,
                       grouped_insertion)
from ..metrics.evaluate import LOCALISATION_METRICS
from .loading import (ReportError, check_data, check_fits, check_labels, load_data, load_model, usable_device,
                      writable_folder)
from .writing import ReportResult, write_tables

CONTROL = "random"  # a uniformly random map: the floor any method should beat
MULTIPLIED_BY_INPUTS = {"input_x_gradient", "integrated_gradients"}  # maps that carry the (x − x') factor
SURROGATE_METHODS = ("kernel_shap", "lime")
AGG = "agg"  # AGG_opt (Decker et al. 2024) over AGG_METHODS, weights chosen per example
AGG_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "deeplift")
IBA = "iba"  # IBA (Schulz et al. 2020) at the last Conv2d, its statistics from the training digits
SOP = "sop"  # the Sum-of-Parts wrapper's own grouped attribution (fastattr.zoo.load_digits_sop), as a map
SEA_NN = "sea_nn"  # SEA-NN (Manupriya et al.) ensembling AGG_METHODS' maps, each image's DSF seeded by its index
#: SEA-NN's settings in a report: single-pixel segments, a DSF of 64-32-8 on the grid (28, or the image's side)
SEA_NN_SETTINGS = {"segments": None, "percentiles": (80, 85, 90, 95), "hidden": (64, 32, 8), "epochs": 100,
                   "lr": 1e-2}
#: why the rows that need the embedded default model are left out for a user's model
DEFAULT_ONLY = {IBA: "needs the embedded default model: IBA's layer statistics come from its training digits",
                SOP: "needs the embedded default model: its Sum-of-Parts wrapper (fastattr.zoo.load_digits_sop), whose "
                     "groups the grouped deletion / insertion columns use too"}
#: grouped deletion / insertion over each input's SOP groups (default model only): the sop row on the SOP
#: model with its scores, every other row on the model with each group scored by the sum of its map
GROUPED_METRICS = {"grouped_deletion": grouped_deletion, "grouped_insertion": grouped_insertion}
#: the columns the sop row leaves empty: Sensitivity-N is 800 SOP forwards (6,400 backbone passes) per
#: input, and model randomisation would re-initialise the SOP's own layers, not the model's
SOP_LEFT_OUT = ("sensitivity_n", "model_randomisation")
SOP_TOP_GROUPS = 4  # groups drawn per input on the page, highest score first
#: the metrics of a report without --metrics: faithfulness, complexity and the random-logit test (the
#: relative stabilities and model randomisation explain every input many times: chosen with --metrics)
REPORT_METRICS = FAITHFULNESS_METRICS + ("sparseness", "complexity", "random_logit")
STABILITY_SAMPLES = 10  # perturbations per input of the relative-stability metrics in a report


MAX_FEATURES = 256  # features per input up to which feature ablation and the ranked metrics keep single units
CURVE_STEPS = 100  # steps of a deletion / insertion curve over patches: about 1% of the features each
#: the report's size-dependent settings (:func:`report_defaults`), each overridable with ``defaults=``
DEFAULT_KEYS = ("patch_size", "occlusion_window", "surrogate_block", "curve_step")
_IMAGE_KEYS = ("patch_size", "occlusion_window", "surrogate_block")


def _grid(side: int, shape: Sequence[int]) -> int:
    """Square patches of ``side`` pixels over a map of ``shape`` (the last ones cut at the edge)."""
    return math.prod(-(-n // side) for n in shape)


def report_defaults(x: torch.Tensor, overrides: Optional[dict] = None) -> dict:
    """The report's settings that grow with the input, chosen from the shape of ``x [N, ...]``:

    - ``patch_size``: the side of the square patches (channels shared) that are the features of feature
      ablation and of the ranked metrics (deletion, insertion, MDRS, AUPC, MoRF, LeRF, SOP errors). None
      when an input has at most :data:`MAX_FEATURES` elements (ablation per element, the metrics per
      pixel); else the smallest side giving at most 256 patches, so 64–256 features whatever the size;
    - ``occlusion_window``: occlusion's window ``[h, w]``, ``max(2, side // 8)`` per side (at most the side),
      with ``occlusion_stride`` half of it;
    - ``surrogate_block``: the side of KernelSHAP's and LIME's pixel blocks, ``max(2, ⌈side / 8⌉)`` (at
      most 64 blocks);
    - ``curve_step``: features per step of the deletion / insertion curves: ``⌈G / 64⌉`` of G single
      pixels or elements (evaluate's default), ``⌈G / 100⌉`` (about 1%, :data:`CURVE_STEPS`) of G patches.

    For inputs that are not images only ``curve_step`` applies (the others are None). ``overrides``
    ({key: value}, keys :data:`DEFAULT_KEYS`) replace the chosen values; ``occlusion_window`` takes one
    side. Returns ``{key: value}`` with ``occlusion_stride`` and ``features`` (G) added."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ReportError(f"--defaults must be a dict {{name: value}}, got {type(overrides).__name__}")
    unknown = [k for k in overrides if k not in DEFAULT_KEYS]
    if unknown:
        raise ReportError(f"--defaults has unknown name {', '.join(map(str, unknown))}; choose from "
                          f"{', '.join(DEFAULT_KEYS)}")
    image = x.dim() == 4
    spatial = tuple(x.shape[2:]) if image else ()
    side = max(spatial) if image else 0
    for key, value in overrides.items():
        if key in _IMAGE_KEYS and not image:
            raise ReportError(f"--defaults {key} needs image inputs [N, C, H, W], got inputs of shape "
                              f"{tuple(x.shape)}")
        if key == "patch_size" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ReportError(f"--defaults {key} must be a positive integer"
                              f"{' or None' if key == 'patch_size' else ''}, got {value!r}")
        if key in _IMAGE_KEYS and value > side:
            raise ReportError(f"--defaults {key} ({value}) is larger than the image side ({side})")
    if image:
        patch = None if x[0].numel() <= MAX_FEATURES else \
            next(p for p in range(1, side + 1) if _grid(p, spatial) <= MAX_FEATURES)
        patch = overrides.get("patch_size", patch)
        window = overrides.get("occlusion_window")
        window = [min(n, max(2, n // 8) if window is None else window) for n in spatial]
        chosen = {"patch_size": patch, "occlusion_window": window,
                  "occlusion_stride": [max(1, w // 2) for w in window],
                  "surrogate_block": overrides.get("surrogate_block", max(2, -(-side // 8)))}
        features = math.prod(spatial) if patch is None else _grid(patch, spatial)
    else:
        chosen = {"patch_size": None, "occlusion_window": None, "occlusion_stride": None, "surrogate_block": None}
        features = x[0].numel()
    step = -(-features // (64 if chosen["patch_size"] in (None, 1) else CURVE_STEPS))
    step = overrides.get("curve_step", step)
    if step > features:
        raise ReportError(f"--defaults curve_step ({step}) is larger than the number of features ({features})")
    return {**chosen, "curve_step": step, "features": features}


def _blocks(x: torch.Tensor, defaults: dict) -> torch.Tensor:
    """The surrogate methods' features: ``defaults["surrogate_block"]``-pixel blocks shared by the channels
    for images; for other inputs at most 64 runs of consecutive elements."""
    if x.dim() == 4:
        side = defaults["surrogate_block"]
        return patch_segments(tuple(x.shape[2:]), side).reshape(1, 1, *x.shape[2:]).to(x.device)
    size = x[0].numel()
    return (torch.arange(size, device=x.device) * min(size, 64) // size).reshape((1,) + tuple(x.shape[1:]))


def _patches(x: torch.Tensor, defaults: dict) -> Optional[torch.Tensor]:
    """Feature ablation's features: ``defaults["patch_size"]``-pixel patches shared by the channels, or None
    (every element its own feature)."""
    if defaults["patch_size"] is None:
        return None
    return patch_segments(tuple(x.shape[2:]), defaults["patch_size"]).reshape(1, 1, *x.shape[2:]).to(x.device)


def _pick(names: Optional[Sequence[str]], available: dict, kind: str,
          default: Optional[Sequence[str]] = None) -> list[str]:
    if names is None:
        return list(available if default is None else default)
    if not names:
        raise ReportError(f"no {kind} named; leave the option out for all of them")
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ReportError(f"unknown {kind} {', '.join(unknown)}; choose from {', '.join(available)}")
    return list(dict.fromkeys(names))


_IBA_PRIORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _iba_statistics(net, layer):
    """IBA's prior at ``layer``: :func:`fastattr.iba_statistics` over the training digits, once per model and
    state of its parameters (model randomisation explains a copy whose layers it re-initialises in place)."""
    state = tuple((p.data_ptr(), p._version) for p in net.parameters())
    known = _IBA_PRIORS.get(net)
    if known is None or known[0] != state:
        from ..zoo import load_digits

        known = (state, iba_statistics(net, layer, load_digits("train")[0].to(next(net.parameters()).device)))
        _IBA_PRIORS[net] = known
    return known[1]


def feature_map(attr: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The map that metrics and heat maps use: channels summed for images (``[B, H, W]``); maps that
    are already per pixel (Grad-CAM) are kept."""
    return attr.sum(1) if inputs.dim() == 4 and attr.shape == inputs.shape else attr


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


def _attribute(name: str, net, x: torch.Tensor, t: torch.Tensor, first: int, seed: int,
               period: Optional[int] = None, *, defaults: Optional[dict] = None) -> torch.Tensor:
    """One method, with the features and windows of ``defaults`` (:func:`report_defaults`; None: chosen from
    ``x``), on a slice of inputs whose first global index is ``first``. Random draws are
    seeded per global example, so a sharded run gives the same maps as a single process. With
    ``period`` the rows are copies of a batch of ``period`` examples (a metric's perturbed or
    re-targeted inputs): row ``r`` is seeded as example ``first + r % period``."""
    def example_seed(i: int) -> int:
        return seed * 1_000_003 + first + (i % period if period else i)

    defaults = report_defaults(x) if defaults is None else defaults
    if name == AGG:
        return _aggregate(net, x, t, first, seed, defaults=defaults)[0]
    if name == SOP:  # net: the SOP model; one example at a time, as the backbone's chunks of a batch and of a
        # shard can differ in the last bit
        return torch.cat([net.explain(x[i:i + 1], t[i:i + 1]).feature_map() for i in range(x.shape[0])])
    if name == SEA_NN:  # the ensembled maps as the report computes them; each DSF drawn from its example's seed
        maps = {m: _attribute(m, net, x, t, first, seed, period, defaults=defaults).detach() for m in AGG_METHODS}
        return sea_nn(net, x, t, methods=maps, generator=[example_seed(i) for i in range(x.shape[0])],
                      **SEA_NN_SETTINGS)
    if name == IBA:  # the noise of every example drawn from its own seed
        layer = _convs(net)[-1]
        prior = _iba_statistics(net, layer)
        return torch.cat([iba(net, x[i:i + 1], t[i:i + 1], layer=layer, statistics=prior, generator=example_seed(i))
                          for i in range(x.shape[0])])
    if name == CONTROL:
        return torch.cat([torch.rand((1,) + tuple(x.shape[1:]), dtype=x.dtype,
                                     generator=torch.Generator().manual_seed(example_seed(i)))
                          for i in range(x.shape[0])]).to(x.device)
    if name == "smoothgrad":
        return torch.cat([METHODS[name](net, x[i:i + 1], t[i:i + 1], generator=example_seed(i))
                          for i in range(x.shape[0])])
    if name in SURROGATE_METHODS:  # coalitions seeded per global example, features: blocks of pixels
        mask = _blocks(x, defaults)
        return torch.cat([METHODS[name](net, x[i:i + 1], t[i:i + 1], feature_mask=mask,
                                        generator=example_seed(i)) for i in range(x.shape[0])])
    if name in ("occlusion", "feature_ablation"):
        # a = f(x) − f(x̃) per example: one at a time, as f(x) from a batch of 5 and from a shard of 2
        # can differ in the last bit (MKL's small-batch GEMM), which the SOP errors amplify ~75×
        if name == "feature_ablation":
            kw = {"feature_mask": _patches(x, defaults)}
        elif x.dim() == 4:
            kw = {"sliding_window_shapes": (x.shape[1], *defaults["occlusion_window"]),
                  "strides": (1, *defaults["occlusion_stride"])}
        else:
            kw = {}
        return torch.cat([METHODS[name](net, x[i:i + 1], t[i:i + 1], **kw) for i in range(x.shape[0])])
    if name == "rise":  # one set of masks for every example: the same on every rank
        return METHODS[name](net, x, t, generator=seed)
    if name in CD_METHODS:
        return CD_METHODS[name](net, x, t)
    if name in LAYER_METHODS:
        return LAYER_METHODS[name](net, x, t, layer=_convs(net)[-1])
    return METHODS[name](net, x, t)


def _aggregate(net, x: torch.Tensor, t: torch.Tensor, first: int, seed: int, *,
               defaults: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``agg`` method: :func:`fastattr.aggregate` (objective ``"opt"``, the paper's settings) over
    :data:`AGG_METHODS` with the report's settings, one example at a time seeded by its global index
    (a sharded run matches a single process); ``(attribution, weights [B, k])``."""
    maps, weights = [], []
    for i in range(x.shape[0]):
        methods = {m: (lambda net_, z, tz, _m=m: _attribute(_m, net_, z, tz, first + i, seed, 1, defaults=defaults))
                   for m in AGG_METHODS}
        agg = aggregate(net, x[i:i + 1], t[i:i + 1], methods=methods, objective="opt",
                        generator=seed * 1_000_003 + first + i)
        maps.append(agg.attribution)
        weights.append(agg.weights)
    return torch.cat(maps), torch.cat(weights)


def _fixed_agg(weights: torch.Tensor, seed: int, first: int, period: int, *,
               defaults: Optional[dict] = None) -> Callable:
    """``agg`` as an explain function with the weights chosen on the clean inputs: row ``r`` of a batch
    of copies of ``period`` examples gets ``Σ_j w_j · |φ_j|/max|φ_j|`` with its example's weights."""
    def explain(net, z, t):
        maps = torch.stack([abs_max(_attribute(m, net, z, t, first, seed, period, defaults=defaults).detach())
                            for m in AGG_METHODS], 1)
        return combine(weights.to(z.device)[torch.arange(z.shape[0], device=z.device) % period], maps)
    return explain


def _explain(names: Sequence[str], seed: int, first: int, period: int,
             agg_weights: Optional[torch.Tensor] = None, *, defaults: Optional[dict] = None) -> dict[str, Callable]:
    """Each method as the explain function of the metrics that explain again: the method with the
    report's settings, as the map the metrics read (:func:`feature_map`), for inputs that are copies of
    the ``period`` examples starting at global index ``first``; ``agg`` keeps the weights it chose on
    the clean inputs (``agg_weights``), as the paper scores an aggregate."""
    def one(name: str) -> Callable:
        if name == AGG:
            fixed = _fixed_agg(agg_weights, seed, first, period, defaults=defaults)
            return lambda net, z, t: feature_map(fixed(net, z, t), z)
        return lambda net, z, t: feature_map(_attribute(name, net, z, t, first, seed, period,
                                                        defaults=defaults).detach(), z)

    return {name: one(name) for name in names}


def _evaluate(net, x: torch.Tensor, t: torch.Tensor, maps: dict[str, torch.Tensor], metric_names: list[str],
              seed: int, first: int, generator: int, n_subsets: int, agg_weights: Optional[torch.Tensor] = None, *,
              defaults: Optional[dict] = None):
    """:func:`evaluate` with the report's settings on inputs whose first global index is ``first``: the ranked
    metrics over the patches of ``defaults`` (:func:`report_defaults`; None: chosen from ``x``) with its curve
    step."""
    defaults = report_defaults(x) if defaults is None else defaults
    explain = _explain(list(maps), seed, first, x.shape[0], agg_weights, defaults=defaults) \
        if set(metric_names) & set(EXPLAIN_METRICS) else None
    return evaluate(net, x, t, attributions=maps, metrics=metric_names, n_subsets=n_subsets, generator=generator,
                    patch_size=defaults["patch_size"], step=defaults["curve_step"],
                    normalize=True, multiplied_by_inputs={m: m in MULTIPLIED_BY_INPUTS for m in maps},
                    explain=explain, metric_kwargs={"relative_stability": {"n_samples": STABILITY_SAMPLES}})


def _convs(net) -> list:
    return [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)] if isinstance(net, torch.nn.Module) else []


def _unavailable(name: str, net, x: torch.Tensor, default: bool) -> Optional[str]:
    """Why ``name`` cannot run on this model and data (``default``: the embedded digits CNN), or None."""
    if name in DEFAULT_ONLY and not default:
        return DEFAULT_ONLY[name]
    if name in LAYER_METHODS and not _convs(net):
        return "needs a model with a Conv2d layer"
    if name in (*CD_METHODS, SEA_NN) and x.dim() != 4:
        return "needs image inputs [N, C, H, W]"
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


TIMED_INPUTS = 2  # the first inputs of rank 0's shard: every method and evaluate() re-timed on them, both backends
TIMING_REPEATS = 3  # timed runs (after one warm-up run) of each, on each backend


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float, float, object]:
    """``(median, min, max)`` seconds of ``repeats`` runs of ``fn`` after one untimed warm-up run, and
    the last run's result."""
    out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times), out


def _backend_timings(net, x: torch.Tensor, t: torch.Tensor, method_names: list[str], metric_names: list[str],
                     seed: int, n_subsets: int, show: bool, defaults: dict,
                     nets: Optional[dict] = None) -> dict[str, float]:
    """Seconds of each method and of ``evaluate`` on the same inputs, with fastattr's default backend
    (cpp on CPU, triton on CUDA) and with the pure-torch reference backend of every op:
    ``{"backend:<name>:<fastattr|reference>": median s}``, with ``:lo`` / ``:hi`` the range, over
    :data:`TIMING_REPEATS` runs after a warm-up run. ``evaluate`` is timed on the metrics that read the
    maps (those that explain again re-run the methods, timed on their own) of the methods on ``net``; a
    method in ``nets`` (``sop``) explains its own model."""
    out: dict[str, float] = {}
    nets = nets or {}
    passes = [m for m in metric_names if m not in EXPLAIN_METRICS]

    def record(key: str, fn: Callable[[], object]):
        out[key], out[key + ":lo"], out[key + ":hi"], result = _timed(fn, x.device, TIMING_REPEATS)
        return result

    for backend, label in (("auto", "fastattr"), ("reference", "reference")):
        maps = {}
        with use_backend(backend):
            for name in _progress([m for m in method_names if m != CONTROL], f"timing ({label} backend)", show):
                attr = record(f"backend:{name}:{label}",
                              lambda: _attribute(name, nets.get(name, net), x, t, 0, seed, defaults=defaults))
                if name not in nets:
                    maps[name] = feature_map(attr.detach(), x)
            if CONTROL in method_names:
                maps[CONTROL] = feature_map(_attribute(CONTROL, net, x, t, 0, seed, defaults=defaults), x)
            if passes and maps:
                record(f"backend:evaluate:{label}",
                       lambda: _evaluate(net, x, t, maps, passes, seed, 0, seed, n_subsets, defaults=defaults))
    return out


def run_report(model: Optional[str | Callable] = None, data: Optional[str | torch.Tensor] = None,
               target: Optional[int | str] = None, methods: Optional[Sequence[str]] = None,
               metrics: Optional[Sequence[str]] = None, n: int = 32, device: str = "cpu",
               out: str | Path = "report", seed: int = 0, progress: bool = True,
               n_subsets: int = 100, defaults: Optional[dict] = None) -> Optional[ReportResult]:
    """Computes the report and writes ``out/index.html``, figures, ``results.json`` and ``results.csv``.

    Under ``torchrun --nproc-per-node N -m fastattr report ...`` the inputs are sharded across
    ranks (gloo on CPU, nccl on CUDA), each rank attributes and evaluates its shard, and rank 0
    gathers the per-example results and writes the same report as a single process (other ranks
    return None).

    Args:
        model: None (embedded digits CNN), ``"module:factory"``, or a model object.
        data: None (digits test split), a path (``.pt`` / ``.npy`` / image folder) or a tensor.
        target: None or ``"pred"`` (the predicted class), ``"label"`` (needs labels), or a class index.
        methods / metrics: names (default: every available method, ``"random"`` a control map, and the
            metrics :data:`REPORT_METRICS`, with :data:`GROUPED_METRICS` on the default model). The metrics
            that explain again use each method with the report's settings as its explain function; the
            relative stabilities draw :data:`STABILITY_SAMPLES` perturbations per input.
        defaults: ``{name: value}`` replacing the settings :func:`report_defaults` chooses from the input size
            (``patch_size``, ``occlusion_window``, ``surrogate_block``, ``curve_step``); the values used are
            in ``results.json`` under ``settings["defaults"]`` and on the page.

    Every method and ``evaluate`` are re-timed on both backends on the first :data:`TIMED_INPUTS` inputs.

    On the embedded default model two more rows: ``iba`` (IBA at the last Conv2d, its statistics from the
    training digits) and ``sop``, the zoo's Sum-of-Parts wrapper of the CNN explaining itself: its map is
    ``explain(x, target).feature_map()`` (``Σ c_i S_i``), every column of that row is measured on the SOP
    model (but :data:`SOP_LEFT_OUT`, NaN), and its groups are drawn on the page and stored in
    ``results.json``. With a user's model both rows and the grouped columns are left out, with the reason on
    the page.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ReportError(f"--n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ReportError(f"--seed must be an integer in [0, 2^32), got {seed!r}")
    chosen = methods is not None
    default = model is None
    method_names = _pick(methods, {**METHODS, **LAYER_METHODS, **CD_METHODS, AGG: None, SEA_NN: None, IBA: None,
                                   SOP: None, CONTROL: None}, "method")
    metric_names = _pick(metrics, dict.fromkeys(EVALUATE_METRICS + tuple(GROUPED_METRICS)), "metric",
                         REPORT_METRICS + (tuple(GROUPED_METRICS) if default else ()))
    for metric in metric_names:
        if metric in GROUPED_METRICS and not default:
            raise ReportError(f"metric {metric} {DEFAULT_ONLY[SOP]}")
        if metric in LOCALISATION_METRICS:
            raise ReportError(f"metric {metric} compares each map with a known box, and the report's data has none; "
                              "call fastattr.evaluate(..., metrics=['ehr'], boxes=...) with your boxes")
    dev = usable_device(device)
    out_dir = writable_folder(out)
    torch.manual_seed(seed)
    net = model if (model is not None and not isinstance(model, str)) else load_model(model)
    sop_net = None
    if default and (SOP in method_names or set(GROUPED_METRICS) & set(metric_names)):
        from ..zoo import load_digits_sop

        sop_net = load_digits_sop()
    if isinstance(data, torch.Tensor):
        x, labels = data[:n], None
    else:
        x, labels = load_data(data, n)
    shards = _Shards(dev)
    dev = shards.device
    with _borrowed(net, dev), _borrowed(sop_net, dev):
        x = check_data(x, net).to(dev)
        return _run(net, x, labels, target, method_names, metric_names, chosen, out_dir, seed, progress, n_subsets,
                    report_defaults(x, defaults), shards, dev, default, sop_net)


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


def _groups(sop_net, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The SOP groups of each input for its target, one example at a time (as :func:`_attribute`): masks
    ``[B, G, *map]``, scores ``[B, G]`` and the SOP model's own prediction ``[B]``."""
    parts = [sop_net.explain(x[i:i + 1], t[i:i + 1]) for i in range(x.shape[0])]
    return {"masks": torch.cat([e.masks for e in parts]).cpu(), "scores": torch.cat([e.scores for e in parts]).cpu(),
            "prediction": torch.cat([e.logits.argmax(1) for e in parts]).cpu()}


def _grouped(net, sop_net, x: torch.Tensor, t: torch.Tensor, maps: dict[str, torch.Tensor], groups: dict,
             metric: str) -> dict[str, torch.Tensor]:
    """Grouped deletion or insertion of one input ``x [1, ...]`` over its SOP groups: the sop row on the SOP
    model with its group scores, the other methods' maps on ``net`` in one call (each group scored by the sum
    of the map over it, as SOP's Table 1 scores post-hoc methods)."""
    fn, masks = GROUPED_METRICS[metric], groups["masks"].to(x.device)
    out = {}
    others = [m for m in maps if m != SOP]
    if others:
        k = len(others)
        values = fn(net, x.expand(k, *x.shape[1:]), torch.cat([maps[m] for m in others]), t.expand(k),
                    groups=masks.expand(k, *masks.shape[1:]))
        out.update({m: values[j:j + 1] for j, m in enumerate(others)})
    if SOP in maps:
        out[SOP] = fn(sop_net, x, groups["scores"].to(x.device), t, groups=masks)
    return out


def _bits(masks: torch.Tensor) -> list[list[str]]:
    """Bool group masks ``[B, G, *map]`` as one string of 0 / 1 per group (the map flattened row-major)."""
    flat = masks.reshape(masks.shape[0], masks.shape[1], -1).to(torch.uint8)
    return [["".join(map(str, g.tolist())) for g in example] for example in flat]


def _run(net, x, labels, target, method_names, metric_names, chosen, out_dir, seed, progress, n_subsets, defaults,
         shards, dev, default=False, sop_net=None) -> Optional[ReportResult]:
    n_classes = check_fits(net, x)
    with torch.no_grad():
        pred = net(x).reshape(x.shape[0], -1).argmax(-1)
    skipped = {} if chosen else {m: why for m in method_names if (why := _unavailable(m, net, x, default))}
    method_names = [m for m in method_names if m not in skipped]
    for name in method_names:
        why = _unavailable(name, net, x, default)
        if why:
            raise ReportError(f"method {name} {why}")
    if target in (None, "pred"):
        t = pred
    elif target == "label":
        if labels is None:
            raise ReportError("--target label needs data with labels")
        t = check_labels(labels, x.shape[0], n_classes).to(dev)
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
    nets = {SOP: sop_net} if sop_net is not None else {}
    agg_weights = torch.zeros(0, len(AGG_METHODS))
    for name in _progress(list(method_names), "attribution", show):
        model = nets.get(name, net)
        try:
            if hi > lo:  # one untimed call first: one-time costs (imports, kernel set-up) are not the method's
                _attribute(name, model, xs[:1], ts[:1], lo, seed, defaults=defaults)
            _sync(dev)
            start = time.perf_counter()
            if name == AGG and hi > lo:
                attr, agg_weights = _aggregate(net, xs, ts, lo, seed, defaults=defaults)
            else:
                attr = _attribute(name, model, xs, ts, lo, seed, defaults=defaults) if hi > lo \
                    else xs.new_empty(xs.shape)
        except (ValueError, TypeError, NotImplementedError) as e:
            if chosen:
                raise ReportError(f"method {name} cannot run on this model and data: {e}") from e
            skipped[name] = str(e).splitlines()[0]  # the default list keeps what applies
            method_names.remove(name)
            continue
        _sync(dev)
        seconds[f"method:{name}"] = time.perf_counter() - start
        maps[name] = feature_map(attr.detach(), xs).cpu()
    grouped = [m for m in metric_names if m in GROUPED_METRICS]
    evaluated = [m for m in metric_names if m not in GROUPED_METRICS]
    sop_metrics = [m for m in evaluated if m not in SOP_LEFT_OUT]
    on_net = [m for m in method_names if m != SOP]
    groups = _groups(sop_net, xs, ts) if sop_net is not None and hi > lo else None
    values: dict[str, dict[str, torch.Tensor]] = {m: {} for m in metric_names}
    curves: dict[str, dict[str, torch.Tensor]] = {m: {} for m in metric_names}
    fractions: dict[str, list[float]] = {}
    layers: list[str] = []  # model randomisation's layers, in the order randomised
    start = time.perf_counter()

    def keep(ev_values: dict, ev_curves: dict) -> None:
        for metric, by_method in ev_values.items():
            for name, v in by_method.items():
                values[metric][name] = torch.cat([values[metric].get(name, v[:0]).cpu(), v.cpu()])
        for metric, by_method in ev_curves.items():
            for name, c in by_method.items():
                curves[metric][name] = torch.cat([curves[metric].get(name, c[:0]).cpu(), c.cpu()])

    # One evaluate() per example, seeded by its global index: every method shares that example's
    # model passes, and a sharded run draws the same subsets as a single process.
    for i in _progress(range(hi - lo), "evaluate", show):
        one = {m: maps[m][i:i + 1].to(dev) for m in method_names}
        x1, t1, generator = xs[i:i + 1], ts[i:i + 1], seed * 1_000_003 + lo + i
        if evaluated and on_net:
            ev = _evaluate(net, x1, t1, {m: one[m] for m in on_net}, evaluated, seed, lo + i, generator, n_subsets,
                           agg_weights[i:i + 1], defaults=defaults)
            keep(ev.values, ev.curves)
            layers = ev.layers or layers
            fractions.update({metric: f.tolist() for metric, f in ev.fractions.items()})
        if SOP in method_names:  # the SOP's own map, scored on the SOP model
            ev = _evaluate(sop_net, x1, t1, {SOP: one[SOP]}, sop_metrics, seed, lo + i, generator, n_subsets,
                           defaults=defaults) \
                if sop_metrics else None
            nan = torch.full((1,), math.nan, dtype=torch.float64)
            keep({**(ev.values if ev else {}), **{m: {SOP: nan} for m in evaluated if m in SOP_LEFT_OUT}},
                 ev.curves if ev else {})
            fractions.update({metric: f.tolist() for metric, f in (ev.fractions if ev else {}).items()})
        for metric in grouped:
            keep({metric: _grouped(net, sop_net, x1, t1, one, {k: v[i:i + 1] for k, v in groups.items()}, metric)}, {})
    _sync(dev)
    seconds["metrics"] = time.perf_counter() - start
    if shards.rank == 0 and hi > lo:
        seconds.update(_backend_timings(net, xs[:TIMED_INPUTS], ts[:TIMED_INPUTS], method_names, evaluated,
                                        seed, n_subsets, show, defaults, nets))

    parts = shards.gather((maps, values, curves, fractions, seconds, layers, agg_weights.cpu(), groups))
    shards.close()
    if parts is None:
        return None
    maps = {name: torch.cat([p[0][name] for p in parts]) for name in method_names}
    result = ReportResult(out=out_dir, methods=method_names, metrics=metric_names, n=x.shape[0], device=str(dev),
                          skipped=skipped)
    result.settings = {"timed_inputs": min(TIMED_INPUTS, x.shape[0]), "timing_repeats": TIMING_REPEATS,
                       "n_subsets": n_subsets, "seed": seed, "scale_invariant": True,
                       "surrogate_features": f"{defaults['surrogate_block']}x{defaults['surrogate_block']}-pixel blocks"
                       if x.dim() == 4 else f"{min(64, x[0].numel())} runs of consecutive elements",
                       "defaults": defaults}
    if any(m.startswith("relative_") for m in metric_names):
        result.settings["stability_samples"] = STABILITY_SAMPLES
    if "model_randomisation" in metric_names:
        result.settings["randomised_layers"] = next((p[5] for p in parts if p[5]), [])
    if AGG in method_names:
        w = torch.cat([p[6] for p in parts]).double()
        result.settings["agg"] = {"objective": "opt", "methods": list(AGG_METHODS),
                                  "mean_weights": dict(zip(AGG_METHODS, w.mean(0).tolist())),
                                  "weights": w.tolist()}
    if SEA_NN in method_names and x.dim() == 4:
        result.settings["sea_nn"] = {"methods": list(AGG_METHODS), "generator": "seeded per example",
                                     **{k: list(v) if isinstance(v, tuple) else v for k, v in SEA_NN_SETTINGS.items()}}
    if IBA in method_names:
        layer = _convs(net)[-1]
        result.settings["iba"] = {"layer": next(n for n, m in net.named_modules() if m is layer),
                                  "statistics": "the training digits (fastattr.zoo.load_digits('train'))",
                                  "beta": 10.0, "steps": 10, "n_noise": 10, "generator": "seeded per example"}
    sop_groups = None
    if sop_net is not None:
        sop_groups = {k: torch.cat([p[7][k] for p in parts if p[7] is not None]) for k in ("masks", "scores",
                                                                                          "prediction")}
        result.settings["sop"] = {
            "model": "fastattr.zoo.load_digits_sop()", "row": SOP in method_names,
            "patch_size": sop_net.patch_size, "n_groups": sop_net.n_groups, "k": sop_net.k,
            "map": "sum of the scores of the groups holding each pixel", "left_out": list(SOP_LEFT_OUT),
            "grouped_metrics": {"sop": "on the SOP model, its group scores",
                                "other methods": "on the model, each SOP group scored by the sum of the map over it"},
            "mask_shape": list(sop_groups["masks"].shape[2:]), "masks": _bits(sop_groups["masks"]),
            "scores": sop_groups["scores"].double().tolist(), "prediction": sop_groups["prediction"].tolist()}
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
            if metric in result.curves and any(name in p[2][metric] for p in parts):
                c = torch.cat([p[2][metric][name] for p in parts if name in p[2][metric]])
                result.curves[metric][name] = c.mean(0).tolist()

    from .html import write_html

    write_html(result, x.cpu(), maps, t.cpu(), pred.cpu(), result.settings, sop_groups, SOP_TOP_GROUPS)
    write_tables(result, t.cpu())
    return result
