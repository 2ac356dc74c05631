"""``fastattr.evaluate``: many attribution methods × many metrics with shared model passes (SPEC §3.3).

One clean forward resolves the targets. Per method, one deletion-ranked pass serves deletion,
MDRS, AUPC and MoRF (the union of their step counts; MDRS and AUPC need every segment, which is
the deletion curve itself when the step is one segment), and one insertion-ranked pass serves
insertion and LeRF (LeRF removes the tail of the same ranking). The random-subset metrics draw their
subsets once and run the model on them once for all methods: faithfulness correlation and subset
infidelity share the same perturbed inputs (same subset fraction and baseline), Sensitivity-N shares
one set per n, the SOP deletion / insertion errors one set of subsets each; only the attribution
mass is computed per method. The wrapped model counts every forward call.

Beyond faithfulness: sparseness and complexity read the maps; random logit, the relative
stabilities and model parameter randomisation explain again (``explain=``, one function per method)
and run as one multi-method call each: the off-target classes drawn once, one set of perturbations
and one hooked forward per chunk for every requested stability kind, each layer re-initialised once.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..core import (CountingModel, Target, check_attributions, check_count, check_flag, check_inputs,
                    check_scalar_reader, feature_space, forward_chunks, fraction_count, make_baseline, make_generator,
                    model_entry, resolve_clean, step_counts)
from .complexity import DIRECTIONS, complexity, sparseness
from .faithfulness import (MORF_FRACTIONS, check_fractions, columns, mdrs_from_logits, ranked_scores,
                           scores_from_logits)
from .localisation import ehr, iou, pointing_game
from .randomisation import model_randomisation, random_logit
from .road import road
from .robustness import Explain, explainer
from .sop import additive_errors, additive_mass, error_passes
from .stability import KINDS, relative_stability
from .subsets import (correlation, infidelity_from, sensitivity_from, sensitivity_passes,
                      subset_deltas)

#: the faithfulness metrics: :func:`evaluate`'s default
FAITHFULNESS_METRICS = ("deletion", "insertion", "infidelity", "faithfulness_correlation", "sensitivity_n",
                        "mdrs", "aupc", "morf", "lerf", "deletion_error", "insertion_error")
#: ``relative_<kind>_stability`` -> the kind of :func:`relative_stability`
STABILITY_METRICS = {f"relative_{kind}_stability": kind for kind in KINDS}
#: the metrics that explain again and need ``explain=``
EXPLAIN_METRICS = (*STABILITY_METRICS, "random_logit", "model_randomisation")
#: ROAD by noisy linear imputation, most / least relevant first -> the ``order`` of :func:`road`
ROAD_METRICS = {"road_morf": "morf", "road_lerf": "lerf"}
#: the metrics that compare the map with a known region (``boxes=``), never running the model
LOCALISATION_METRICS = {"pointing_game": pointing_game, "iou": iou, "ehr": ehr}
#: every metric :func:`evaluate` runs
EVALUATE_METRICS = (FAITHFULNESS_METRICS + ("sparseness", "complexity", *ROAD_METRICS) + EXPLAIN_METRICS
                    + tuple(LOCALISATION_METRICS))
BETTER = {"deletion": "lower", "insertion": "higher", "infidelity": "lower",
          "faithfulness_correlation": "higher", "sensitivity_n": "higher", "mdrs": "lower", "aupc": "lower",
          "morf": "higher", "lerf": "lower", "deletion_error": "lower", "insertion_error": "lower",
          "road_morf": "lower", "road_lerf": "higher", "pointing_game": "higher", "iou": "higher", "ehr": "higher",
          "grouped_deletion": "lower", "grouped_insertion": "higher", **DIRECTIONS}
# the metrics evaluate calls as their own function, which ``metric_kwargs`` reach ("relative_stability":
# the options of all three kinds), and the arguments evaluate sets itself
_OWN = {"sparseness": sparseness, "complexity": complexity, "random_logit": random_logit,
        "relative_stability": relative_stability, **{m: relative_stability for m in STABILITY_METRICS},
        "model_randomisation": model_randomisation, **{m: road for m in ROAD_METRICS}, **LOCALISATION_METRICS}
_SET_BY_EVALUATE = ("model", "inputs", "explain", "target", "attributions", "generator", "kinds", "order", "curves")
#: the metrics over the features ranked by the map: their perturbed inputs come from the perturb_by_rank op
RANKED_METRICS = ("deletion", "insertion", "mdrs", "aupc", "morf", "lerf")

__all__ = ["BETTER", "EVALUATE_METRICS", "EXPLAIN_METRICS", "FAITHFULNESS_METRICS", "LOCALISATION_METRICS",
           "RANKED_METRICS", "ROAD_METRICS", "CountingModel", "Evaluation", "evaluate"]


@dataclass
class Evaluation:
    """Per-example values ``values[metric][method]`` (``[B]``, Sensitivity-N ``[B, len(ns)]``), the
    curves ``curves[metric][method]`` (``[B, K]``: deletion / insertion scores, AUPC scores after
    each segment, MoRF / LeRF drops, model randomisation's similarity per layer) over
    ``fractions[metric]`` (fraction of features or segments changed; for MoRF / LeRF the removed
    fractions; for model randomisation the layer indices 0…L−1 of ``layers``, the layers in the order
    randomised), and the forward passes that produced them."""

    values: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    curves: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    fractions: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    forward_calls: int = 0
    forward_inputs: int = 0

    def __getitem__(self, metric: str) -> dict[str, torch.Tensor]:
        return self.values[metric]

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean over examples (and over n for Sensitivity-N) per metric and method."""
        return {m: {k: v.double().nanmean().item() for k, v in by.items()} for m, by in self.values.items()}

    def to_pandas(self):
        """Long table: one row per (method, metric, example[, n])."""
        import pandas as pd

        rows = []
        for metric, by in self.values.items():
            for method, v in by.items():
                flat = v.reshape(v.shape[0], -1)
                for i in range(flat.shape[0]):
                    for j in range(flat.shape[1]):
                        rows.append({"method": method, "metric": metric, "example": i,
                                     "n_index": j if v.dim() > 1 else None, "value": flat[i, j].item()})
        return pd.DataFrame(rows)


def _fresh(generator) -> torch.Generator:
    """A generator in the state a metric called on its own would start from."""
    if isinstance(generator, torch.Generator):
        copy = torch.Generator(device=generator.device)
        copy.set_state(generator.get_state())
        return copy
    return make_generator(generator)


def _seeded(generator):
    """``generator`` for a metric called by evaluate: an int seed as is (model randomisation reads it
    as its seed), a torch.Generator as a fresh copy (:func:`_fresh`)."""
    return _fresh(generator) if isinstance(generator, torch.Generator) else generator


def _metric_kwargs(metric_kwargs) -> dict[str, dict]:
    """``metric_kwargs`` checked: known metric names that evaluate calls as their own function, each
    with a dict of keywords that function takes and evaluate does not set itself."""
    if metric_kwargs is None:
        return {}
    if not isinstance(metric_kwargs, dict):
        raise TypeError(f"metric_kwargs must be a dict {{metric name: {{keyword: value}}}}, got "
                        f"{type(metric_kwargs).__name__}")
    for metric, kw in metric_kwargs.items():
        if metric not in _OWN:
            if metric in EVALUATE_METRICS:
                raise ValueError(f"metric_kwargs[{metric!r}]: evaluate computes {metric} from passes shared with "
                                 "other metrics; set its options with evaluate's own arguments (step=, baseline=, "
                                 "n_subsets=, ...)")
            raise ValueError(f"metric_kwargs names an unknown metric {metric!r}; it takes "
                             f"{', '.join(_OWN)}")
        if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
            raise TypeError(f"metric_kwargs[{metric!r}] must be a dict {{keyword: value}}, got {kw!r}")
        fn = _OWN[metric]
        own = [k for k in kw if k in _SET_BY_EVALUATE]
        if own:
            raise ValueError(f"metric_kwargs[{metric!r}] sets {', '.join(own)}, which evaluate sets itself (from its "
                             "own arguments: target=, attributions=, explain=, generator=, metrics=)")
        takes = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _SET_BY_EVALUATE]
        bad = [k for k in kw if k not in takes]
        if bad:
            raise ValueError(f"metric_kwargs[{metric!r}] has keyword(s) {', '.join(bad)} that {fn.__name__} does "
                             f"not take; it takes {', '.join(takes)}")
    return metric_kwargs


def _with_method_kwargs(explain: dict, method_kwargs, chunks: dict) -> dict:
    """``explain`` with each method of ``method_kwargs`` ({method: {keyword: value}}) bound to its keywords
    (a named method also to evaluate's ``max_batch`` / ``memory_budget`` where it takes them)."""
    if method_kwargs is None:
        return explain
    if not isinstance(method_kwargs, dict) or not all(isinstance(v, dict) for v in method_kwargs.values()):
        raise TypeError(f"method_kwargs must be a dict {{method name: {{keyword: value}}}}, got {method_kwargs!r}")
    unknown = [k for k in method_kwargs if k not in explain]
    if unknown:
        raise ValueError(f"method_kwargs has methods {unknown} that explain does not; its methods are {list(explain)}")
    return {name: explainer(e, method_kwargs[name], chunks) if name in method_kwargs else e
            for name, e in explain.items()}


def _regions(metrics, boxes, metric_kwargs) -> dict[str, dict]:
    """The keywords of each localisation metric requested: its ``metric_kwargs``, with ``boxes`` unless they
    give boxes or masks themselves; a clear error when neither gives a region."""
    out = {}
    for metric in (m for m in LOCALISATION_METRICS if m in metrics):
        kw = dict(metric_kwargs.get(metric, {}))
        if "boxes" not in kw and "masks" not in kw:
            if boxes is None:
                raise ValueError(f"{metric} compares each map with a known region: pass boxes= ([B, 4] or [4] integer "
                                 f"(x0, y0, x1, y1)) or metric_kwargs={{{metric!r}: {{'masks': ...}}}}")
            kw["boxes"] = boxes
        out[metric] = kw
    return out


def _same(a: dict, b: dict) -> bool:
    """Whether two keyword dicts are the same options (tensors only when they are the same object)."""
    if a.keys() != b.keys():
        return False
    for k, u in a.items():
        v = b[k]
        if u is v:
            continue
        if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
            return False
        try:
            if not bool(u == v):
                return False
        except (RuntimeError, TypeError, ValueError):  # e.g. lists holding tensors
            return False
    return True


@contextlib.contextmanager
def _counting(model: Callable, counted: CountingModel):
    """``model`` for the metrics that explain again, its forward calls counted by ``counted``: a forward
    pre-hook on an ``nn.Module`` (removed on exit; it also hears the deep copy model randomisation
    makes), a counting function otherwise. The metric and the explain functions get the user's model."""
    if not isinstance(model, torch.nn.Module):
        def run(z):
            counted.count(z)
            return model(z)
        yield run
        return

    def hook(module, args):
        if args and isinstance(args[0], torch.Tensor):
            counted.count(args[0])

    handle = model.register_forward_pre_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def _explained(ev: Evaluation, model, inputs, t, metrics, attributions, explain, metric_kwargs, generator,
               chunks) -> None:
    """Random logit, the relative stabilities and model randomisation: one multi-method call each (the
    stability kinds with the same options in one call), the precomputed maps as ``attributions``."""
    common = dict(attributions=attributions)
    if "random_logit" in metrics:
        ev.values["random_logit"] = random_logit(model, inputs, explain, t, generator=_seeded(generator), **common,
                                                 **{**chunks, **metric_kwargs.get("random_logit", {})})
    groups: list[tuple[dict, list[str]]] = []
    for metric in (m for m in STABILITY_METRICS if m in metrics):
        kw = {**chunks, **metric_kwargs.get("relative_stability", {}), **metric_kwargs.get(metric, {})}
        same = next((members for options, members in groups if _same(options, kw)), None)
        if same is None:
            groups.append((kw, [metric]))
        else:
            same.append(metric)
    for kw, members in groups:
        out = relative_stability(model, inputs, explain, t, kinds=[STABILITY_METRICS[m] for m in members],
                                 generator=_seeded(generator), **common, **kw)
        for metric in members:
            ev.values[metric] = {name: out[name][STABILITY_METRICS[metric]] for name in explain}
    if "model_randomisation" in metrics:
        out = model_randomisation(model, inputs, explain, t, generator=_seeded(generator), **common,
                                  **{**chunks, **metric_kwargs.get("model_randomisation", {})})
        for name, by_layer in out.items():
            ev.layers = list(by_layer)
            curve = torch.stack(list(by_layer.values()), 1)
            _put(ev, "model_randomisation", name, curve.mean(1), curve,
                 torch.arange(curve.shape[1], dtype=torch.float32))


def _put(ev: Evaluation, metric: str, name: str, value, curve=None, fractions=None) -> None:
    ev.values.setdefault(metric, {})[name] = value
    if curve is not None:
        ev.curves.setdefault(metric, {})[name] = curve
        ev.fractions[metric] = fractions


def _ranked(ev, counted, inputs, t, feats, name, metrics, *, base, ends, step, fractions, score, chunks,
            compile):
    """Deletion-ranked (deletion, MDRS, AUPC, MoRF) and insertion-ranked (insertion, LeRF) metrics of one
    method, one model pass per direction over the union of the step counts. The two ends of every
    curve, x itself and the baseline, do not depend on the ranking: their logits ``ends`` (x, baseline)
    are computed once for all methods."""
    g = feats.n
    segments = list(range(1, g + 1))
    removed = check_fractions(fractions, g) if {"morf", "lerf"} & set(metrics) else []
    for keep_top, wanted in ((False, ("deletion", "mdrs", "aupc", "morf")), (True, ("insertion", "lerf"))):
        wanted = [m for m in wanted if m in metrics]
        if not wanted:
            continue
        removal = {"morf", "lerf"} & set(wanted)
        parts = {"curve": step_counts(g, step).tolist() if {"deletion", "insertion"} & set(wanted) else [],
                 "segments": segments if {"mdrs", "aupc"} & set(wanted) else [],
                 "clean": [g if keep_top else 0] if removal else [],
                 "removed": [g - n if keep_top else n for n in removed] if removal else []}
        union = sorted(set().union(*parts.values()))
        reader = "logits" if "mdrs" in wanted else score
        # 0 features changed is x for deletion and the baseline for insertion; g features the other one
        x_end, base_end = (g, 0) if keep_top else (0, g)
        out = ranked_scores(counted, inputs, feats, t, torch.tensor(union), keep_top=keep_top, baseline=base,
                            reader=reader, compile=compile, known={x_end: ends[0], base_end: ends[1]}, **chunks)
        probs = scores_from_logits(out, t, score) if reader == "logits" else out
        at = lambda key: probs[:, columns(union, parts[key])]  # noqa: E731
        for metric in wanted:
            if metric in ("deletion", "insertion"):
                x = torch.tensor(parts["curve"], dtype=torch.float32) / g
                curve = at("curve")
                _put(ev, metric, name, torch.trapezoid(curve, x.to(curve), dim=-1), curve, x)
            elif metric == "mdrs":
                _put(ev, metric, name, mdrs_from_logits(out[:, columns(union, segments)], ends[0]))
            elif metric == "aupc":
                curve = at("segments")
                _put(ev, metric, name, curve.sum(1), curve, torch.tensor(segments, dtype=torch.float32) / g)
            else:
                drops = at("clean") - at("removed")
                _put(ev, metric, name, drops.mean(1), drops, torch.tensor([float(p) for p in fractions]))


def _bar(progress: bool):
    """A tqdm bar counting model inputs, or None."""
    if not check_flag(progress, "progress"):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    return tqdm(desc="evaluate", unit=" inputs")


@model_entry
def evaluate(model: Callable, inputs: torch.Tensor, target: Target = None, *,
             attributions: dict[str, torch.Tensor], metrics: Sequence[str] = FAITHFULNESS_METRICS,
             explain: Optional[dict[str, Explain]] = None, method_kwargs: Optional[dict[str, dict]] = None,
             metric_kwargs: Optional[dict[str, dict]] = None, boxes=None,
             subset_fraction: float = 0.2, n_subsets: int = 200, ns: Optional[Sequence[int]] = None,
             baseline=0.0, step=None, generator=0, multiplied_by_inputs: bool | dict[str, bool] = False,
             fractions: Sequence[float] = MORF_FRACTIONS, max_exhaustive: int = 12,
             granularity: Optional[str] = None, segments: Optional[torch.Tensor] = None, patch_size=None,
             segment_score: str = "sum", score: Optional[str] = None, infidelity: str = "subset",
             noise_std: float = 0.1, normalize: bool = False, compile: bool | dict = False,
             max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
             progress: bool = False) -> Evaluation:
    """Evaluates every attribution in ``attributions`` ({name: map}) with every metric in ``metrics``
    (any of :data:`EVALUATE_METRICS`, default the faithfulness metrics :data:`FAITHFULNESS_METRICS`;
    :data:`BETTER` says which direction is better).

    Same values as calling each metric on its own with the same ``generator`` seed (each family of
    random metrics starts from its own copy of the generator); fewer model passes.

    Beyond faithfulness: ``"sparseness"`` and ``"complexity"`` read the maps (:func:`sparseness`,
    :func:`complexity`); ``"road_morf"`` / ``"road_lerf"`` run :func:`road` per method (accuracy unless
    ``score`` is given; the levels' scores in ``curves``, the levels as fractions in ``fractions``). ``"random_logit"``, ``"relative_input_stability"``,
    ``"relative_output_stability"``, ``"relative_representation_stability"`` and
    ``"model_randomisation"`` explain again, so they need ``explain`` ({name: attribution function or
    method name — a ``METHODS`` name, a layer method such as ``"grad_cam"``, the IBA family (``"iba"``,
    ``"multi_layer_iba"``, ``"input_iba"``) or ``"sea_nn"`` —, keyed like
    ``attributions``, returning maps shaped like ``attributions[name]``; the map given is each metric's
    ``e(x)``, not recomputed); ``method_kwargs`` ({name: {keyword: value}}) are the keywords of a
    method's explain calls, e.g. ``{"iba": {"layer": "net.2", "statistics": stats, "generator": 0}}``.
    Each runs as one call for all methods
    (:func:`random_logit`, :func:`relative_stability`, :func:`model_randomisation` with a dict
    ``explain``): the stability kinds requested with the same options share one set of perturbations.
    ``model_randomisation``'s value is the mean similarity over the randomised layers (Quantus
    ``MPRT(return_average_correlation=True)``, whose 0.6 average also counts the unrandomised model's
    similarity, 1 for a map explain reproduces); its per-layer values are ``curves["model_randomisation"]``
    (``[B, L]``, the layers in ``ev.layers``). ``metric_kwargs`` ({metric: {keyword: value}}) passes
    options to these metrics' own functions (e.g. ``{"relative_input_stability": {"n_samples": 50},
    "model_randomisation": {"mode": "independent"}}``; ``"relative_stability"`` sets all three kinds;
    entries of metrics not requested are ignored); the others take evaluate's own arguments below.
    ``multiplied_by_inputs`` (one bool, or one per method) means what it means in :func:`infidelity`;
    ``fractions`` to MoRF / LeRF; ``max_exhaustive`` and ``n_subsets`` to the SOP errors;
    ``granularity`` / ``segments`` / ``patch_size`` / ``segment_score`` define the features of the
    ranked metrics (deletion, insertion, MDRS, AUPC, MoRF, LeRF) and of the SOP errors (the
    random-subset metrics use the map's own features); ``score`` is the reader of every metric (None:
    each metric's own default, the probability for the ranked metrics and the logit for the others);
    ``"pointing_game"``, ``"iou"`` and ``"ehr"`` (:func:`pointing_game`, :func:`iou`, :func:`ehr`) compare
    each map with a known region and need ``boxes`` (integer ``(x0, y0, x1, y1)`` per example ``[B, 4]``, or
    one ``[4]`` for all; bool region masks through ``metric_kwargs={"ehr": {"masks": m}}``); they never
    run the model. ``infidelity`` (``"subset"`` or ``"gaussian"``) and ``noise_std`` mean what they mean in
    :func:`infidelity` (subset infidelity shares the correlation's passes, Gaussian infidelity runs its
    own, shared by every method); ``normalize=True`` makes every scale-dependent column
    scale-invariant: infidelity with the optimal rescaling (:func:`infidelity`'s ``normalize``) and the
    SOP errors of the best-scaled map (their ``rescale``); ``compile`` runs the model through ``torch.compile`` on
    fixed-shape chunks; ``progress=True`` shows a tqdm bar of the model inputs run (tqdm needed).
    Returns an :class:`Evaluation` (``ev["deletion"]["ig"]`` is a ``[B]`` tensor; ``ev.summary()``,
    ``ev.to_pandas()``, ``ev.forward_calls``, ``ev.forward_inputs``).

    Example::

        >>> ev = fastattr.evaluate(model, x, y, attributions={"ig": ig, "saliency": sal})
        >>> ev.summary()["insertion"]
        >>> ev = fastattr.evaluate(model, x, y, attributions={"saliency": sal}, explain={"saliency": "saliency"},
        ...                        metrics=["sparseness", "random_logit", "relative_input_stability"],
        ...                        metric_kwargs={"relative_input_stability": {"n_samples": 50}})
        >>> stats = fastattr.iba_statistics(model, "net.2", x_train)
        >>> ev = fastattr.evaluate(model, x, y, attributions={"iba": fastattr.iba(model, x, y, layer="net.2",
        ...                        statistics=stats)}, explain={"iba": "iba"}, metrics=["insertion", "random_logit"],
        ...                        method_kwargs={"iba": {"layer": "net.2", "statistics": stats}})
        >>> fastattr.evaluate(model, x, y, attributions={"iba": heat}, metrics=["ehr"],
        ...                   boxes=torch.tensor([2, 1, 6, 7]))
    """
    check_inputs(inputs)
    if not isinstance(attributions, dict) or not attributions:
        raise ValueError("attributions must be a non-empty dict {method name: attribution map}")
    if score is not None:
        check_scalar_reader(score)
    if infidelity not in ("subset", "gaussian"):
        raise ValueError(f"infidelity must be 'subset' or 'gaussian', got {infidelity!r}")
    normalize = check_flag(normalize, "normalize")
    if isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics) or not len(metrics):
        raise TypeError(f"metrics must be a non-empty list of metric names, got {metrics!r}")
    unknown = [m for m in metrics if m not in EVALUATE_METRICS]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(unknown)}; choose from {', '.join(EVALUATE_METRICS)}")
    metric_kwargs = _metric_kwargs(metric_kwargs)
    if explain is not None:
        if not isinstance(explain, dict):
            raise TypeError("explain must be a dict {method name: attribution function or METHODS name}, keyed like "
                            f"attributions, got {type(explain).__name__}")
        extra = [k for k in explain if k not in attributions]
        if extra:
            raise ValueError(f"explain has methods {extra} that attributions does not; its methods are "
                             f"{list(attributions)}")
    needs = [m for m in metrics if m in EXPLAIN_METRICS]
    missing = [k for k in attributions if (explain or {}).get(k) is None]
    if needs and missing:
        raise ValueError(f"{', '.join(needs)} explain the inputs again: pass explain={{method name: attribution "
                         f"function or METHODS name}} for every method; explain has none for {', '.join(missing)}")
    if method_kwargs is not None and explain is None:
        raise ValueError("method_kwargs are the keywords of the explain methods: pass explain= too")
    chunks = dict(max_batch=max_batch, memory_budget=memory_budget)
    if explain is not None:
        explain = _with_method_kwargs(explain, method_kwargs, chunks)
    regions = _regions(metrics, boxes, metric_kwargs)
    feats = {name: check_attributions(inputs, a) for name, a in attributions.items()}
    n_features = {f.shape[1] for f in feats.values()}
    if len(n_features) != 1:
        raise ValueError("all attributions must have the same shape (all per element or all channel-reduced)")
    n_features = n_features.pop()
    space = dict(granularity=granularity, segments=segments, patch_size=patch_size,
                 segment_score=segment_score)
    spaces = {name: feature_space(inputs, a, **space) for name, a in attributions.items()} \
        if set(metrics) & {*RANKED_METRICS, "deletion_error", "insertion_error"} else {}
    bar = _bar(progress)
    counted = CountingModel(model, on_call=None if bar is None else bar.update)
    t, clean = resolve_clean(counted, inputs, target, **chunks)
    ev = Evaluation()
    for metric, kw in regions.items():
        ev.values[metric] = {name: LOCALISATION_METRICS[metric](None, inputs, a, t, **kw)
                             for name, a in attributions.items()}
    ends = None  # the model's outputs on x and on the baseline, when the ranked metrics run
    if set(RANKED_METRICS) & set(metrics):
        base = make_baseline(inputs, baseline, generator=_fresh(generator))
        ends = (clean, forward_chunks(counted, base, **chunks))
        for name in attributions:
            _ranked(ev, counted, inputs, t, spaces[name], name, metrics, base=base, ends=ends, step=step,
                    fractions=fractions, score=score or "probability", chunks=chunks, compile=compile)
    subset_kw = dict(n_subsets=n_subsets, baseline=baseline, score=score or "logit", compile=compile,
                     logits=clean, **chunks)
    size = fraction_count(subset_fraction, n_features, "subset_fraction")
    correlated = {"faithfulness_correlation", "sensitivity_n"} & set(metrics)
    check_count(n_subsets, "n_subsets", minimum=2 if correlated else 1)  # a correlation needs two points
    gaussian = infidelity == "gaussian" and "infidelity" in metrics
    if "faithfulness_correlation" in metrics or ("infidelity" in metrics and not gaussian):
        passes = subset_deltas(counted, inputs, t, n_features, subset_size=size, generator=_fresh(generator),
                               **subset_kw)
        if "faithfulness_correlation" in metrics:
            ev.values["faithfulness_correlation"] = {
                name: correlation(passes, f, f"faithfulness_correlation[{name}]").to(inputs.dtype)
                for name, f in feats.items()}
    if "infidelity" in metrics:
        if gaussian:
            passes = subset_deltas(counted, inputs, t, n_features, noise=noise_std,
                                   generator=_fresh(generator), **subset_kw)
        mult = multiplied_by_inputs if isinstance(multiplied_by_inputs, dict) else {}
        ev.values["infidelity"] = {
            name: infidelity_from(passes, f, normalize=normalize, weighted=gaussian or not (
                mult.get(name, False) if mult else bool(multiplied_by_inputs))).to(inputs.dtype)
            for name, f in feats.items()}
    if "sensitivity_n" in metrics:
        per_n = sensitivity_passes(counted, inputs, t, n_features, ns, generator=_fresh(generator),
                                   **subset_kw)
        ev.values["sensitivity_n"] = {name: sensitivity_from(per_n, f, f"sensitivity_n[{name}]")
                                      .to(inputs.dtype) for name, f in feats.items()}
    references = (clean, ends[1] if ends else None)  # f(x) for deletion, f(x') for insertion, when run
    for metric, insert in (("deletion_error", False), ("insertion_error", True)):
        if metric in metrics:
            first = next(iter(spaces.values()))
            s, change = error_passes(counted, inputs, t, first, insert=insert, n_subsets=n_subsets,
                                     max_exhaustive=max_exhaustive, baseline=baseline, score=score or "logit",
                                     generator=_fresh(generator), compile=compile,
                                     reference=references[insert], **chunks)
            ev.values[metric] = {name: additive_errors(change, additive_mass(s, f.scores.double()), normalize).sum(-1)
                                 for name, f in spaces.items()}
    for metric, order in ROAD_METRICS.items():
        if metric in metrics:
            for name, a in attributions.items():
                kw = {"score": score or "accuracy", **chunks, **metric_kwargs.get(metric, {})}
                value, curve, levels = road(counted, inputs, a, t, order=order, curves=True,
                                            generator=_fresh(generator), **kw)
                _put(ev, metric, name, value, curve, levels / 100)
    for metric, fn in (("sparseness", sparseness), ("complexity", complexity)):
        if metric in metrics:
            ev.values[metric] = {name: fn(model, inputs, a, t, **metric_kwargs.get(metric, {}))
                                 for name, a in attributions.items()}
    if needs:
        with _counting(model, counted) as run:
            _explained(ev, run, inputs, t, metrics, attributions, {k: explain[k] for k in attributions},
                       metric_kwargs, generator, chunks)
    ev.forward_calls, ev.forward_inputs = counted.calls, counted.inputs
    if bar is not None:
        bar.close()
    return ev
