"""``fastattr.evaluate``: many attribution methods × many metrics with shared model passes (SPEC §3.3).

One clean forward resolves the targets. Per method, one deletion-ranked pass serves deletion,
MDRS, AUPC and MoRF (the union of their step counts; MDRS and AUPC need every segment, which is
the deletion curve itself when the step is one segment), and one insertion-ranked pass serves
insertion and LeRF (LeRF removes the tail of the same ranking). The random-subset metrics draw their
subsets once and run the model on them once for all methods: faithfulness correlation and subset
infidelity share the same perturbed inputs (same subset fraction and baseline), Sensitivity-N shares
one set per n, the SOP deletion / insertion errors one set of subsets each; only the attribution
mass is computed per method. The wrapped model counts every forward call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..core import (CountingModel, Target, check_attributions, check_count, check_flag, check_inputs,
                    check_scalar_reader, feature_space, forward_chunks, fraction_count, make_baseline, make_generator,
                    model_entry, resolve_clean, step_counts)
from .complexity import DIRECTIONS
from .faithfulness import (MORF_FRACTIONS, check_fractions, columns, mdrs_from_logits, ranked_scores,
                           scores_from_logits)
from .sop import additive_errors, additive_mass, error_passes
from .subsets import (correlation, infidelity_from, sensitivity_from, sensitivity_passes,
                      subset_deltas)

EVALUATE_METRICS = ("deletion", "insertion", "infidelity", "faithfulness_correlation", "sensitivity_n",
                    "mdrs", "aupc", "morf", "lerf", "deletion_error", "insertion_error")
BETTER = {"deletion": "lower", "insertion": "higher", "infidelity": "lower",
          "faithfulness_correlation": "higher", "sensitivity_n": "higher", "mdrs": "lower", "aupc": "lower",
          "morf": "higher", "lerf": "lower", "deletion_error": "lower", "insertion_error": "lower",
          **DIRECTIONS}

__all__ = ["BETTER", "EVALUATE_METRICS", "CountingModel", "Evaluation", "evaluate"]


@dataclass
class Evaluation:
    """Per-example values ``values[metric][method]`` (``[B]``, Sensitivity-N ``[B, len(ns)]``), the
    curves ``curves[metric][method]`` (``[B, K]``: deletion / insertion scores, AUPC scores after
    each segment, MoRF / LeRF drops) over ``fractions[metric]`` (fraction of features or segments
    changed; for MoRF / LeRF the removed fractions), and the forward passes that produced them."""

    values: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    curves: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    fractions: dict[str, torch.Tensor] = field(default_factory=dict)
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
             attributions: dict[str, torch.Tensor], metrics: Sequence[str] = EVALUATE_METRICS,
             subset_fraction: float = 0.2, n_subsets: int = 200, ns: Optional[Sequence[int]] = None,
             baseline=0.0, step=None, generator=0, multiplied_by_inputs: bool | dict[str, bool] = False,
             fractions: Sequence[float] = MORF_FRACTIONS, max_exhaustive: int = 12,
             granularity: Optional[str] = None, segments: Optional[torch.Tensor] = None, patch_size=None,
             segment_score: str = "sum", score: Optional[str] = None, infidelity: str = "subset",
             noise_std: float = 0.1, normalize: bool = False, compile: bool | dict = False,
             max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
             progress: bool = False) -> Evaluation:
    """Evaluates every attribution in ``attributions`` ({name: map}) with every metric in ``metrics``
    (any of :data:`EVALUATE_METRICS`; :data:`BETTER` says which direction is better).

    Same values as calling each metric on its own with the same ``generator`` seed (each family of
    random metrics starts from its own copy of the generator); fewer model passes.
    ``multiplied_by_inputs`` (one bool, or one per method) means what it means in :func:`infidelity`;
    ``fractions`` to MoRF / LeRF; ``max_exhaustive`` and ``n_subsets`` to the SOP errors;
    ``granularity`` / ``segments`` / ``patch_size`` / ``segment_score`` define the features of the
    ranked metrics (deletion, insertion, MDRS, AUPC, MoRF, LeRF) and of the SOP errors (the
    random-subset metrics use the map's own features); ``score`` is the reader of every metric (None:
    each metric's own default, the probability for the ranked metrics and the logit for the others);
    ``infidelity`` (``"subset"`` or ``"gaussian"``) and ``noise_std`` mean what they mean in
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
    feats = {name: check_attributions(inputs, a) for name, a in attributions.items()}
    n_features = {f.shape[1] for f in feats.values()}
    if len(n_features) != 1:
        raise ValueError("all attributions must have the same shape (all per element or all channel-reduced)")
    n_features = n_features.pop()
    space = dict(granularity=granularity, segments=segments, patch_size=patch_size,
                 segment_score=segment_score)
    spaces = {name: feature_space(inputs, a, **space) for name, a in attributions.items()} \
        if set(metrics) - {"infidelity", "faithfulness_correlation", "sensitivity_n"} else {}
    bar = _bar(progress)
    counted = CountingModel(model, on_call=None if bar is None else bar.update)
    chunks = dict(max_batch=max_batch, memory_budget=memory_budget)
    t, clean = resolve_clean(counted, inputs, target, **chunks)
    ev = Evaluation()
    ends = None  # the model's outputs on x and on the baseline, when the ranked metrics run
    if {"deletion", "insertion", "mdrs", "aupc", "morf", "lerf"} & set(metrics):
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
    ev.forward_calls, ev.forward_inputs = counted.calls, counted.inputs
    if bar is not None:
        bar.close()
    return ev
