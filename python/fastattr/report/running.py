"""Running ``fastattr report``: the methods chosen and available on the model, the attributions of
this process's shard of the inputs (torchrun), :func:`fastattr.evaluate` on them, the timings on
both backends, then the tables and the HTML page written by rank 0."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .._backend import record_backends, use_backend
from ..attribution import LAYER_METHODS, METHODS, aggregate, iba, iba_statistics, sea_nn
from ..attribution.aggregate import abs_max, combine
from ..cd import CD_METHODS
from ..core import eval_modes, example_draws, patch_segments
from ..metrics import (EVALUATE_METRICS, EXPLAIN_METRICS, FAITHFULNESS_METRICS, RANKED_METRICS, evaluate,
                       grouped_deletion, grouped_insertion)
from ..metrics.evaluate import LOCALISATION_METRICS
from .loading import (ReportError, check_data, check_fits, check_labels, load_boxes, load_data, load_model,
                      usable_device, writable_folder)
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


MAX_FEATURES = 64  # features per input up to which feature ablation and the ranked metrics keep single units
CURVE_STEPS = 100  # steps of a deletion / insertion curve over patches: about 1% of the features each
PERTURBATIONS = 256  # perturbed inputs of KernelSHAP, LIME and RISE per input beyond MAX_FEATURES elements
AGG_SAMPLES = 3  # AGG's noise draws and infidelity subsets (m) per input beyond MAX_FEATURES elements
#: the report's size-dependent settings (:func:`report_defaults`), each overridable with ``defaults=``
DEFAULT_KEYS = ("patch_size", "occlusion_window", "surrogate_block", "curve_step", "perturbations", "agg_samples",
                "sea_nn_grid")
_IMAGE_KEYS = ("patch_size", "occlusion_window", "surrogate_block", "sea_nn_grid")
_OPTIONAL_KEYS = ("patch_size", "perturbations", "sea_nn_grid")  # None: the method's own default


def known_names() -> tuple[list[str], list[str]]:
    """The attribution methods (the report's ``"random"`` control map aside) and the metrics a report can
    run, in the order the report runs them: for ``--help`` and error messages."""
    return [*METHODS, *LAYER_METHODS, *CD_METHODS, AGG, SEA_NN, IBA, SOP], [*EVALUATE_METRICS, *GROUPED_METRICS]


def _grid(side: int, shape: Sequence[int]) -> int:
    """Square patches of ``side`` pixels over a map of ``shape`` (the last ones cut at the edge)."""
    return math.prod(-(-n // side) for n in shape)


def report_defaults(x: torch.Tensor, overrides: Optional[dict] = None) -> dict:
    """The report's settings that grow with the input, chosen from the shape of ``x [N, ...]``:

    - ``patch_size``: the side of the square patches (channels shared) that are the features of feature
      ablation and of the ranked metrics (deletion, insertion, MDRS, AUPC, MoRF, LeRF, SOP errors). None
      when an input has at most :data:`MAX_FEATURES` elements (ablation per element, the metrics per
      pixel); else the smallest side giving at most 64 patches (about 50–64 features whatever the size);
    - ``occlusion_window``: occlusion's window ``[h, w]``, ``max(2, side // 8)`` per side (at most the side),
      with ``occlusion_stride`` half of it;
    - ``surrogate_block``: the side of KernelSHAP's and LIME's pixel blocks, ``max(2, ⌈side / 8⌉)`` (at
      most 64 blocks);
    - ``curve_step``: features per step of the deletion / insertion curves: ``⌈G / 64⌉`` of G single
      pixels or elements (evaluate's default), ``⌈G / 100⌉`` (about 1%, :data:`CURVE_STEPS`) of G patches;
    - ``perturbations``: KernelSHAP's and LIME's coalitions and RISE's masks per input: None (their own
      defaults, ``2M + 2048``, 1000 and 1000) up to :data:`MAX_FEATURES` elements, else
      :data:`PERTURBATIONS`, whatever the size;
    - ``agg_samples``: AGG's ``m`` (noise draws and infidelity subsets): the paper's 50 up to
      :data:`MAX_FEATURES` elements, else :data:`AGG_SAMPLES` (each draw explains the input again with
      all six methods);
    - ``sea_nn_grid``: the side of SEA-NN's grid of cells: None (its default, 28 or the image's side) up to
      :data:`MAX_FEATURES` elements, else the patches per side.

    For inputs that are not images ``patch_size``, ``occlusion_window``, ``surrogate_block`` and
    ``sea_nn_grid`` are None. ``overrides`` ({key: value}, keys :data:`DEFAULT_KEYS`) replace the chosen
    values; ``occlusion_window`` takes one side. Returns ``{key: value}`` with ``occlusion_stride`` and
    ``features`` (G) added."""
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
    small = x[0].numel() <= MAX_FEATURES
    for key, value in overrides.items():
        if key in _IMAGE_KEYS and not image:
            raise ReportError(f"--defaults {key} needs image inputs [N, C, H, W], got inputs of shape "
                              f"{tuple(x.shape)}")
        if key in _OPTIONAL_KEYS and value is None:
            continue
        minimum = 2 if key in ("agg_samples", "sea_nn_grid") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ReportError(f"--defaults {key} must be {'a positive integer' if minimum == 1 else 'an integer >= 2'}"
                              f"{' or None' if key in _OPTIONAL_KEYS else ''}, got {value!r}")
        if key in _IMAGE_KEYS and value > side:
            raise ReportError(f"--defaults {key} ({value}) is larger than the image side ({side})")
    if image:
        patch = None if small else next(p for p in range(1, side + 1) if _grid(p, spatial) <= MAX_FEATURES)
        patch = overrides.get("patch_size", patch)
        window = overrides.get("occlusion_window")
        window = [min(n, max(2, n // 8) if window is None else window) for n in spatial]
        chosen = {"patch_size": patch, "occlusion_window": window,
                  "occlusion_stride": [max(1, w // 2) for w in window],
                  "surrogate_block": overrides.get("surrogate_block", max(2, -(-side // 8))),
                  "sea_nn_grid": overrides.get("sea_nn_grid", None if small or patch is None else -(-side // patch))}
        features = math.prod(spatial) if patch is None else _grid(patch, spatial)
    else:
        chosen = {"patch_size": None, "occlusion_window": None, "occlusion_stride": None, "surrogate_block": None,
                  "sea_nn_grid": None}
        features = x[0].numel()
    step = -(-features // (64 if chosen["patch_size"] in (None, 1) else CURVE_STEPS))
    step = overrides.get("curve_step", step)
    if step > features:
        raise ReportError(f"--defaults curve_step ({step}) is larger than the number of features ({features})")
    return {**chosen, "curve_step": step, "features": features,
            "perturbations": overrides.get("perturbations", None if small else PERTURBATIONS),
            "agg_samples": overrides.get("agg_samples", 50 if small else AGG_SAMPLES)}


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

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

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


#: the report's phase for :func:`_replayed`: "record" (the attribution pass), "replay" (evaluate), None (off)
_REPLAY: contextvars.ContextVar[Optional[tuple]] = contextvars.ContextVar("report_replay", default=None)
REPLAYED = ("occlusion", "feature_ablation", "rise", *SURROGATE_METHODS)  # the scores of any target from one pass


@contextlib.contextmanager
def _replay_phase(phase: Optional[str], store: dict):
    """:func:`_replayed` and :func:`_attribute`'s maps in ``phase`` ("record", "replay" or None) for the block,
    kept in ``store`` by example (``{example: {key: value}}``)."""
    token = _REPLAY.set((phase, store) if phase else None)
    try:
        yield
    finally:
        _REPLAY.reset(token)


def _fingerprint(z: torch.Tensor) -> torch.Tensor:
    """Per-row ``z · w`` with a fixed pseudo-random ``w`` (in ``z``'s dtype, no copy of ``z``): equal for equal
    inputs."""
    flat = z.detach().reshape(z.shape[0], -1)
    if not flat.is_floating_point():
        flat = flat.double()
    w = torch.rand(flat.shape[1], generator=torch.Generator().manual_seed(flat.shape[1]), dtype=torch.float64)
    return flat @ w.to(device=flat.device, dtype=flat.dtype)


def _replayed(net, name: str, example: int):
    """``net`` as the perturbation method ``name`` (one of :data:`REPLAYED`, whose maps for any target come from
    the same model outputs) runs it on global ``example``: in the attribution pass ("record") the outputs of
    every call are kept; in ``evaluate`` ("replay") a call on the same perturbed inputs as the kept call in
    its place (checked by :func:`_fingerprint`) reads the kept outputs instead of running the model again,
    so the random-logit test's re-explanation for another class costs no model passes. Keyed by the model
    object and the state of its parameters (model randomisation's copies run the model); off: ``net``."""
    phase = _REPLAY.get()
    if phase is None or name not in REPLAYED or not isinstance(net, torch.nn.Module):
        return net
    mode, kept = phase
    store = kept.setdefault(example, {})  # by example: freed with it
    key = (name, id(net), tuple((p.data_ptr(), p._version) for p in net.parameters()))
    if mode == "record":
        calls = store[key] = []
    else:
        calls = store.get(key, [])
    position = 0

    def model(z):
        nonlocal position
        fp = _fingerprint(z)
        kept = calls[position] if mode == "replay" and position < len(calls) else None
        position += 1
        if kept is not None and kept[0].shape == fp.shape and torch.equal(kept[0], fp):
            return kept[1].clone()
        out = net(z)
        if mode == "record":
            calls.append((fp, out.detach().clone()))
        return out
    return model


def _attribute(name: str, net, x: torch.Tensor, t: torch.Tensor, first: int, seed: int,
               period: Optional[int] = None, *, defaults: Optional[dict] = None) -> torch.Tensor:
    """:func:`_attribution`, whose maps the metrics' re-explanations in ``evaluate`` ("replay" phase) keep per
    call: the random-logit test explains each example for one other class with every method, and the
    ensembles (``agg``, ``sea_nn``) explain it again with the six methods they combine — the same calls,
    answered once. Keyed by the model, the state of its parameters, every argument and the inputs'
    :func:`_fingerprint`; the attribution pass and the timing runs are never served from it."""
    phase = _REPLAY.get()
    if phase is None or phase[0] != "replay":
        return _attribution(name, net, x, t, first, seed, period, defaults=defaults)
    state = tuple((p.data_ptr(), p._version) for p in net.parameters()) if isinstance(net, torch.nn.Module) else ()
    store = phase[1].setdefault(first, {})  # by the first example: freed with it
    key = ("map", name, id(net), state, seed, period, tuple(t.tolist()), id(defaults))
    fp = _fingerprint(x)
    kept = store.get(key)
    if kept is not None and kept[0].shape == fp.shape and torch.equal(kept[0], fp):
        return kept[1]
    out = _attribution(name, net, x, t, first, seed, period, defaults=defaults)
    store[key] = (fp, out.detach())
    return out


def _attribution(name: str, net, x: torch.Tensor, t: torch.Tensor, first: int, seed: int,
                 period: Optional[int] = None, *, defaults: Optional[dict] = None) -> torch.Tensor:
    """One method, with the features and windows of ``defaults`` (:func:`report_defaults`; None: chosen from
    ``x``), on a slice of inputs whose first global index is ``first``. Random draws are
    seeded per global example and a shard's inputs run one at a time, so a sharded run gives the same maps as
    a single process and an input's map does not depend on the inputs beside it. With ``period`` the rows are
    copies of a batch of ``period`` examples (a metric's perturbed or re-targeted inputs), run in one call:
    row ``r`` is seeded as example ``first + r % period``."""
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
                      grid=defaults["sea_nn_grid"], **SEA_NN_SETTINGS)
    if name == IBA:  # the noise of every example drawn from its own seed
        layer = _convs(net)[-1]
        prior = _iba_statistics(net, layer)
        return torch.cat([iba(net, x[i:i + 1], t[i:i + 1], layer=layer, statistics=prior, generator=example_seed(i))
                          for i in range(x.shape[0])])
    if name == CONTROL:
        seeds = [example_seed(i) for i in range(x.shape[0])]
        return example_draws(seeds, x.shape[0])(torch.rand, x.shape, dtype=x.dtype).to(x.device)
    if name == "smoothgrad":  # copies of a batch in one call, each row's noise from its example's seed
        if period is not None:
            return METHODS[name](net, x, t, generator=[example_seed(i) for i in range(x.shape[0])])
        return torch.cat([METHODS[name](net, x[i:i + 1], t[i:i + 1], generator=example_seed(i))
                          for i in range(x.shape[0])])
    if name in SURROGATE_METHODS:  # coalitions seeded per global example, features: blocks of pixels
        mask = _blocks(x, defaults)
        kw = {} if defaults["perturbations"] is None else {"n_samples": defaults["perturbations"]}
        return torch.cat([METHODS[name](_replayed(net, name, first + i), x[i:i + 1], t[i:i + 1], feature_mask=mask,
                                        generator=example_seed(i), **kw) for i in range(x.shape[0])])
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
        return torch.cat([METHODS[name](_replayed(net, name, first + i), x[i:i + 1], t[i:i + 1], **kw)
                          for i in range(x.shape[0])])
    if name == "rise":  # one set of masks for every example (the same on every rank), one example at a time
        kw = {} if defaults["perturbations"] is None else {"n_masks": defaults["perturbations"]}
        return torch.cat([METHODS[name](_replayed(net, name, first + i), x[i:i + 1], t[i:i + 1], generator=seed, **kw)
                          for i in range(x.shape[0])])
    if name in CD_METHODS:
        fn = CD_METHODS[name]
    elif name in LAYER_METHODS:
        fn = functools.partial(LAYER_METHODS[name], layer=_convs(net)[-1])
    else:
        fn = METHODS[name]
    if period is not None:  # copies of the same examples whatever the shard: one call
        return fn(net, x, t)
    # a shard's inputs one at a time too: an input's map does not depend on the batch or shard it is in
    return torch.cat([fn(net, x[i:i + 1], t[i:i + 1]) for i in range(x.shape[0])])


def _aggregate(net, x: torch.Tensor, t: torch.Tensor, first: int, seed: int, *,
               defaults: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``agg`` method: :func:`fastattr.aggregate` (objective ``"opt"``, the paper's settings but
    ``m = defaults["agg_samples"]``) over :data:`AGG_METHODS` with the report's settings, one example at a time
    seeded by its global index (a sharded run matches a single process); ``(attribution, weights [B, k])``."""
    defaults = report_defaults(x) if defaults is None else defaults
    maps, weights = [], []
    for i in range(x.shape[0]):
        methods = {m: (lambda net_, z, tz, _m=m: _attribute(_m, net_, z, tz, first + i, seed, 1, defaults=defaults))
                   for m in AGG_METHODS}
        agg = aggregate(net, x[i:i + 1], t[i:i + 1], methods=methods, objective="opt",
                        n_samples=defaults["agg_samples"], generator=seed * 1_000_003 + first + i)
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
              defaults: Optional[dict] = None, boxes: Optional[torch.Tensor] = None):
    """:func:`evaluate` with the report's settings on inputs whose first global index is ``first``: the ranked
    metrics over the patches of ``defaults`` (:func:`report_defaults`; None: chosen from ``x``) with its curve
    step; ``boxes`` for the localisation metrics."""
    defaults = report_defaults(x) if defaults is None else defaults
    explain = _explain(list(maps), seed, first, x.shape[0], agg_weights, defaults=defaults) \
        if set(metric_names) & set(EXPLAIN_METRICS) else None
    return evaluate(net, x, t, attributions=maps, metrics=metric_names, n_subsets=n_subsets, generator=generator,
                    patch_size=defaults["patch_size"], step=defaults["curve_step"],
                    normalize=True, multiplied_by_inputs={m: m in MULTIPLIED_BY_INPUTS for m in maps},
                    explain=explain, metric_kwargs={"relative_stability": {"n_samples": STABILITY_SAMPLES}},
                    **({"boxes": boxes} if boxes is not None else {}))


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


TIMED_INPUTS = 1  # the first inputs of rank 0's shard: the methods that call a fastattr op and evaluate() re-timed
TIMING_REPEATS = 3  # timed runs (after one warm-up run) of each, on each backend, when a run is short
LONG_RUN = 1.0  # seconds from which a run is timed once: the attribution pass has already run it once (warm)
SHORT_RUN = 0.25  # seconds under which a warm-up run is run again for the estimate (one-time costs dominate it)
WARM_TIMING = 2.0  # seconds from which the warm-up's run is fastattr's timing (one-time costs: a fraction of it)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int,
           warm_up: bool = True) -> tuple[float, float, float, object]:
    """``(median, min, max)`` seconds of ``repeats`` runs of ``fn`` (after one untimed warm-up run when
    ``warm_up``), and the last run's result."""
    out = fn() if warm_up else None
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times), out


def _backend_timings(net, x: torch.Tensor, t: torch.Tensor, method_names: list[str], metric_names: list[str],
                     seed: int, n_subsets: int, show: bool, defaults: dict, estimate: dict[str, float],
                     maps: dict[str, torch.Tensor], nets: Optional[dict] = None,
                     warm: Optional[dict] = None) -> dict[str, float]:
    """Seconds of each method in ``estimate`` (those that call a fastattr op; the others run the same code on
    both backends) and of ``evaluate`` on the same inputs, with fastattr's default backend (cpp on CPU,
    triton on CUDA) and with the pure-torch reference backend of every op:
    ``{"backend:<name>:<fastattr|reference>": median s}``, with ``:lo`` / ``:hi`` the range, over
    :data:`TIMING_REPEATS` runs after a warm-up run, or of one run when ``estimate[name]`` (the seconds the
    warm-up suggests for these inputs) is at least :data:`LONG_RUN`; from :data:`WARM_TIMING` seconds, fastattr's
    run is the warm-up's own (``warm[name]``, on the same first input, its one-time costs a small part of it).
    ``evaluate`` is timed on
    the ranked metrics (``RANKED_METRICS``: their perturbed inputs come from an op; the other metrics call
    none) of ``maps`` (the attribution pass's map of the first method on ``net``); a method in ``nets``
    (``sop``) explains its own model."""
    out: dict[str, float] = {}
    nets, warm = nets or {}, warm or {}
    passes = [m for m in metric_names if m in RANKED_METRICS]  # the others call no fastattr op

    def record(key: str, fn: Callable[[], object], name: str):
        long = estimate.get(name, 0.0) >= LONG_RUN
        out[key], out[key + ":lo"], out[key + ":hi"], result = _timed(fn, x.device, 1 if long else TIMING_REPEATS,
                                                                      warm_up=not long)
        return result

    for backend, label in (("auto", "fastattr"), ("reference", "reference")):
        with use_backend(backend):
            for name in _progress([m for m in method_names if m in estimate], f"timing ({label} backend)", show):
                if label == "fastattr" and estimate[name] >= WARM_TIMING and name in warm:
                    key = f"backend:{name}:fastattr"  # the warm-up's run on these inputs (one-time costs in it)
                    out[key] = out[key + ":lo"] = out[key + ":hi"] = warm[name]
                    continue
                record(f"backend:{name}:{label}",
                       lambda: _attribute(name, nets.get(name, net), x, t, 0, seed, defaults=defaults), name)
            if passes and maps:
                record(f"backend:evaluate:{label}",
                       lambda: _evaluate(net, x, t, maps, passes, seed, 0, seed, n_subsets, defaults=defaults),
                       "evaluate")
    return out


def _timing_estimate(warm: dict[str, float], with_ops: set, method_names: list[str]) -> dict[str, float]:
    """Seconds the timing pass's runs should take, from the warm-up (``warm``: seconds of each method and of
    ``"evaluate"`` on one input): the methods in ``with_ops`` on :data:`TIMED_INPUTS` inputs, and evaluate on
    one map of the ``len(method_names)`` the warm-up scored."""
    out = {name: warm.get(name, 0.0) * TIMED_INPUTS for name in method_names if name in with_ops}
    out["evaluate"] = warm.get("evaluate", 0.0) * TIMED_INPUTS / max(1, len(method_names))
    return out


def _plan(warm: dict[str, float], timed: dict[str, float], n: int, shards: "_Shards",
          max_seconds: Optional[float], elapsed: float) -> dict:
    """The run's estimate after the warm-up (``warm``: seconds of each method and of ``"evaluate"`` on the
    first input, whose results are kept): ``per_input`` seconds times the rest of the largest shard, plus the
    backend timing runs (``timed``: :func:`_timing_estimate`, each run once when over :data:`LONG_RUN`, else a
    warm-up and :data:`TIMING_REPEATS` runs, on both backends). With ``max_seconds`` (counted from the start,
    ``elapsed`` seconds ago), ``n`` shrinks to the most inputs that fit (at least one). Rank 0's plan, on
    every rank; ``{"n", "n_requested", "per_input", "attribution", "metrics", "timing", "total",
    "max_seconds", "message"}`` (``total``: the seconds still to come)."""
    attribution = sum(v for k, v in warm.items() if k != "evaluate")
    per_input = attribution + warm.get("evaluate", 0.0)
    timing = sum(v * (2 * (TIMING_REPEATS + 1) if v < LONG_RUN else 1 if k != "evaluate" and v >= WARM_TIMING
                      else 2) for k, v in timed.items())  # a very long method's fastattr time is the warm-up's
    fit = n
    if max_seconds is not None and per_input > 0:
        fit = max(1, min(n, (1 + max(0, int((max_seconds - elapsed - timing) // per_input))) * shards.world))
    total = per_input * (-(-fit // shards.world) - 1) + timing
    where = f" on {shards.world} processes" if shards.world > 1 else ""
    message = (f"estimate: {per_input:.1f} s per input ({attribution:.1f} s attribution, "
               f"{warm.get('evaluate', 0.0):.1f} s metrics, from the first input) and {timing:.0f} s of backend "
               f"timings: about {total:.0f} s more for {fit} inputs{where}")
    if fit < n:
        message += f" (--max-seconds {max_seconds:g}: --n {n} shrunk to {fit} to fit)"
    plan = {"n": fit, "n_requested": n, "per_input": per_input, "attribution": attribution,
            "metrics": warm.get("evaluate", 0.0), "timing": timing, "total": total, "max_seconds": max_seconds,
            "message": message}
    return shards.broadcast(plan)


def run_report(model: Optional[str | Callable] = None, data: Optional[str | torch.Tensor] = None,
               target: Optional[int | str] = None, methods: Optional[Sequence[str]] = None,
               metrics: Optional[Sequence[str]] = None, n: int = 32, device: str = "cpu",
               out: str | Path = "report", seed: int = 0, progress: bool = True,
               n_subsets: int = 100, defaults: Optional[dict] = None,
               max_seconds: Optional[float] = None,
               boxes: Optional[str | torch.Tensor] = None) -> Optional[ReportResult]:
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
            (:data:`DEFAULT_KEYS`); the values used are in ``results.json`` under ``settings["defaults"]`` and on
            the page.
        boxes: one box per input (``.pt`` path or integer tensor ``[N, 4]``, ``x0, y0, x1, y1`` in pixels, end
            exclusive): the localisation metrics (EHR, pointing game, IoU) join the default metrics.
        max_seconds: a budget for the whole run: after the warm-up (every method and the metrics once on the
            first input) the estimate is printed and ``n`` shrinks to the inputs that fit, saying so (the
            estimate is in ``settings["estimate"]``).

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
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                    or not 0 < max_seconds < math.inf):
        raise ReportError(f"--max-seconds must be a positive number of seconds, got {max_seconds!r}")
    started = time.perf_counter()
    chosen = methods is not None
    default = model is None
    method_names = _pick(methods, {**METHODS, **LAYER_METHODS, **CD_METHODS, AGG: None, SEA_NN: None, IBA: None,
                                   SOP: None, CONTROL: None}, "method")
    metric_names = _pick(metrics, dict.fromkeys(EVALUATE_METRICS + tuple(GROUPED_METRICS)), "metric",
                         REPORT_METRICS + (tuple(GROUPED_METRICS) if default else ())
                         + (tuple(LOCALISATION_METRICS) if boxes is not None else ()))
    for metric in metric_names:
        if metric in GROUPED_METRICS and not default:
            raise ReportError(f"metric {metric} {DEFAULT_ONLY[SOP]}")
        if metric in LOCALISATION_METRICS and boxes is None:
            raise ReportError(f"metric {metric} compares each map with a known box: give one box per input with "
                              "--boxes boxes.pt (an integer tensor [N, 4] of x0, y0, x1, y1)")
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
    box_tensor = None if boxes is None else load_boxes(boxes, x)
    shards = _Shards(dev)
    dev = shards.device
    with _borrowed(net, dev), _borrowed(sop_net, dev):
        x = check_data(x, net).to(dev)
        return _run(net, x, labels, target, method_names, metric_names, chosen, out_dir, seed, progress, n_subsets,
                    report_defaults(x, defaults), shards, dev, default, sop_net, max_seconds, started, box_tensor)


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
         shards, dev, default=False, sop_net=None, max_seconds=None, started=0.0,
         boxes=None) -> Optional[ReportResult]:
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

    show = progress and shards.rank == 0
    nets = {SOP: sop_net} if sop_net is not None else {}
    grouped = [m for m in metric_names if m in GROUPED_METRICS]
    evaluated = [m for m in metric_names if m not in GROUPED_METRICS]
    sop_metrics = [m for m in evaluated if m not in SOP_LEFT_OUT]

    def box(i: int) -> Optional[torch.Tensor]:
        return None if boxes is None else boxes[i:i + 1].to(dev)

    def score(i: int, x1: torch.Tensor, t1: torch.Tensor, one: dict, weights: torch.Tensor, kept: dict,
              groups: Optional[dict]) -> list:
        """Every metric of global example ``i`` (``x1 [1, ...]``, its maps ``one``): one evaluate() seeded by
        its index, so every method shares that example's model passes and a sharded run draws the same
        subsets as a single process; ``[(values, curves, fractions, layers)]``."""
        generator, out = seed * 1_000_003 + i, []
        on_net = [m for m in one if m != SOP]
        if evaluated and on_net:
            with _replay_phase("replay", kept):
                ev = _evaluate(net, x1, t1, {m: one[m] for m in on_net}, evaluated, seed, i, generator, n_subsets,
                               weights, defaults=defaults, boxes=box(i))
            kept.pop(i, None)
            out.append((ev.values, ev.curves, ev.fractions, ev.layers))
        if SOP in one:  # the SOP's own map, scored on the SOP model
            ev = _evaluate(sop_net, x1, t1, {SOP: one[SOP]}, sop_metrics, seed, i, generator, n_subsets,
                           defaults=defaults, boxes=box(i)) if sop_metrics else None
            nan = torch.full((1,), math.nan, dtype=torch.float64)
            out.append(({**(ev.values if ev else {}), **{m: {SOP: nan} for m in evaluated if m in SOP_LEFT_OUT}},
                        ev.curves if ev else {}, ev.fractions if ev else {}, []))
        for metric in grouped:
            out.append(({metric: _grouped(net, sop_net, x1, t1, one, groups, metric)}, {}, {}, []))
        return out

    # Warm-up: the shard's first input on its own, every method (run twice when short: the first run is then
    # mostly one-time costs, imports and kernel set-up) and every metric on those maps. Its results are kept as
    # that input's; the times give the estimate; the other inputs are timed after it.
    lo, hi = shards.bounds(x.shape[0])
    first = lo
    warm: dict[str, float] = {}
    with_ops: set[str] = set()  # the methods that called a fastattr op
    warm_maps: dict[str, torch.Tensor] = {}
    warm_weights = torch.zeros(1, len(AGG_METHODS))
    warm_scores: list = []
    kept: dict = {}  # the perturbation methods' model outputs and the re-explained maps, per example

    def once(fn: Callable[[], object]) -> tuple[float, object]:
        """Seconds of ``fn`` and its result, run again when under :data:`SHORT_RUN`."""
        for _ in range(2):
            _sync(dev)
            start = time.perf_counter()
            out = fn()
            _sync(dev)
            took = time.perf_counter() - start
            if took >= SHORT_RUN:
                break
        return took, out

    for name in _progress(list(method_names), "warm-up", show) if hi > lo else []:
        try:
            with record_backends() as used, _replay_phase("record", kept):
                if name == AGG:
                    warm[name], (attr, warm_weights) = once(lambda: _aggregate(net, x[lo:lo + 1], t[lo:lo + 1], lo,
                                                                               seed, defaults=defaults))
                else:
                    warm[name], attr = once(lambda: _attribute(name, nets.get(name, net), x[lo:lo + 1], t[lo:lo + 1],
                                                               lo, seed, defaults=defaults))
        except (ValueError, TypeError, NotImplementedError) as e:
            if chosen:
                raise ReportError(f"method {name} cannot run on this model and data: {e}") from e
            skipped[name] = str(e).splitlines()[0]  # the default list keeps what applies
            method_names.remove(name)
            continue
        if used:
            with_ops.add(name)
        warm_maps[name] = feature_map(attr.detach(), x[lo:lo + 1]).cpu()
    first_groups = _groups(sop_net, x[lo:lo + 1], t[lo:lo + 1]) if sop_net is not None and hi > lo else None
    if hi > lo:
        warm["evaluate"], warm_scores = once(lambda: score(
            lo, x[lo:lo + 1], t[lo:lo + 1], {m: v.to(dev) for m, v in warm_maps.items()}, warm_weights,
            {k: dict(v) for k, v in kept.items()}, first_groups))
    kept.clear()
    plan = _plan(warm, _timing_estimate(warm, with_ops, method_names), x.shape[0], shards, max_seconds,
                 time.perf_counter() - started)
    if plan["n"] < x.shape[0]:
        x, t, pred = x[:plan["n"]], t[:plan["n"]], pred[:plan["n"]]
        lo, hi = shards.bounds(x.shape[0])
    if show:
        print(plan["message"], file=sys.stderr, flush=True)

    reuse = hi > lo == first  # the warm-up input is still this shard's first
    start_at = lo + 1 if reuse else lo
    xs, ts = x[lo:hi], t[lo:hi]
    xr, tr = x[start_at:hi], t[start_at:hi]
    seconds: dict[str, float] = {}
    maps: dict[str, torch.Tensor] = {}
    agg_weights = warm_weights[:1 if reuse else 0]
    for name in _progress(list(method_names), "attribution", show):
        model = nets.get(name, net)
        _sync(dev)
        start = time.perf_counter()
        with _replay_phase("record", kept):
            if name == AGG and hi > start_at:
                attr, weights = _aggregate(net, xr, tr, start_at, seed, defaults=defaults)
                agg_weights = torch.cat([agg_weights, weights])
            else:
                attr = _attribute(name, model, xr, tr, start_at, seed, defaults=defaults) if hi > start_at \
                    else xr.new_empty(xr.shape)
        _sync(dev)
        seconds[f"method:{name}"] = time.perf_counter() - start if hi > start_at else warm.get(name, 0.0)
        maps[name] = torch.cat([warm_maps[name]] * reuse + [feature_map(attr.detach(), xr).cpu()])
    groups = None
    if sop_net is not None and hi > lo:
        rest = _groups(sop_net, xr, tr) if hi > start_at else None
        groups = {k: torch.cat([first_groups[k]] * reuse + ([rest[k]] if rest else [])) for k in first_groups}
    values: dict[str, dict[str, torch.Tensor]] = {m: {} for m in metric_names}
    curves: dict[str, dict[str, torch.Tensor]] = {m: {} for m in metric_names}
    fractions: dict[str, list[float]] = {}
    layers: list[str] = []  # model randomisation's layers, in the order randomised
    start = time.perf_counter()
    for i in _progress(range(hi - lo), "evaluate", show):
        if reuse and i == 0:
            scored = warm_scores
        else:
            one = {m: maps[m][i:i + 1].to(dev) for m in method_names}
            scored = score(lo + i, xs[i:i + 1], ts[i:i + 1], one, agg_weights[i:i + 1], kept,
                           {k: v[i:i + 1] for k, v in groups.items()} if groups is not None else None)
        for ev_values, ev_curves, ev_fractions, ev_layers in scored:
            for metric, by_method in ev_values.items():
                for name, v in by_method.items():
                    values[metric][name] = torch.cat([values[metric].get(name, v[:0]).cpu(), v.cpu()])
            for metric, by_method in ev_curves.items():
                for name, c in by_method.items():
                    curves[metric][name] = torch.cat([curves[metric].get(name, c[:0]).cpu(), c.cpu()])
            fractions.update({metric: f.tolist() for metric, f in ev_fractions.items()})
            layers = ev_layers or layers
    _sync(dev)
    seconds["metrics"] = time.perf_counter() - start if hi > start_at else warm.get("evaluate", 0.0)
    if shards.rank == 0 and hi > lo:
        estimate = _timing_estimate(warm, with_ops, method_names)
        on_net = [m for m in method_names if m != SOP][:1]  # evaluate timed on the first method's map
        seconds.update(_backend_timings(net, xs[:TIMED_INPUTS], ts[:TIMED_INPUTS], method_names, evaluated,
                                        seed, n_subsets, show, defaults, estimate,
                                        {m: maps[m][:TIMED_INPUTS].to(dev) for m in on_net}, nets,
                                        warm if reuse and TIMED_INPUTS == 1 else None))

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
                       "defaults": defaults,
                       "estimate": plan}
    if boxes is not None:
        result.settings["boxes"] = boxes[:x.shape[0]].tolist()
    if any(m.startswith("relative_") for m in metric_names):
        result.settings["stability_samples"] = STABILITY_SAMPLES
    if "model_randomisation" in metric_names:
        result.settings["randomised_layers"] = next((p[5] for p in parts if p[5]), [])
    if AGG in method_names:
        w = torch.cat([p[6] for p in parts]).double()
        result.settings["agg"] = {"objective": "opt", "methods": list(AGG_METHODS),
                                  "n_samples": defaults["agg_samples"],
                                  "mean_weights": dict(zip(AGG_METHODS, w.mean(0).tolist())),
                                  "weights": w.tolist()}
    if SEA_NN in method_names and x.dim() == 4:
        result.settings["sea_nn"] = {"methods": list(AGG_METHODS), "generator": "seeded per example",
                                     "grid": defaults["sea_nn_grid"] or min(28, *x.shape[2:]),
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
