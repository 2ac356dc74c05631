"""``fastattr.evaluate``: many attribution methods × many metrics with shared model passes (SPEC §3.3).

One clean forward resolves the targets. The random-subset metrics draw their subsets once and run
the model on them once: faithfulness correlation and subset infidelity share the same perturbed
inputs (same subset fraction and baseline), Sensitivity-N shares one set per n, and only the
attribution mass ``Σ_{i∈S} a_i`` / ``Iᵀa`` is computed per method. Deletion and insertion depend on
each method's ranking, so they run per method. The wrapped model counts every forward call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..attribution._common import Target, check_inputs, check_model, resolve_target
from ..attribution.gradient import _generator
from .faithfulness import deletion, insertion
from .perturb import check_attributions
from .subsets import _fraction_size, _pearson, infidelity, subset_deltas

EVALUATE_METRICS = ("deletion", "insertion", "infidelity", "faithfulness_correlation", "sensitivity_n")


class CountingModel(torch.nn.Module):
    """Wraps a model and counts forward calls and the inputs they carried."""

    def __init__(self, model: Callable):
        super().__init__()
        self.model = model
        self.calls = 0
        self.inputs = 0
        self.training = bool(getattr(model, "training", False))  # mirrors the wrapped model's mode

    def forward(self, x):
        self.calls += 1
        self.inputs += x.shape[0]
        return self.model(x)


@dataclass
class Evaluation:
    """Per-example values ``values[metric][method]`` (``[B]``, Sensitivity-N ``[B, len(ns)]``), the
    deletion / insertion curves ``curves[metric][method]`` (``[B, K]``) over ``fractions[metric]``,
    and the forward passes that produced them."""

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
                                     "n_index": j if flat.shape[1] > 1 else None, "value": flat[i, j].item()})
        return pd.DataFrame(rows)


def evaluate(model: Callable, inputs: torch.Tensor, target: Target = None, *, attributions: dict[str, torch.Tensor],
             metrics: Sequence[str] = EVALUATE_METRICS, subset_fraction: float = 0.2, n_subsets: int = 200,
             ns: Optional[Sequence[int]] = None, baseline=0.0, step=None, generator=0,
             multiplied_by_inputs: bool | dict[str, bool] = False,
             max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> Evaluation:
    """Evaluates every attribution in ``attributions`` ({name: map}) with every metric in ``metrics``.

    Same values as calling each metric on its own with the same ``generator`` seed; fewer model
    passes. ``multiplied_by_inputs`` (one bool, or one per method) is passed to :func:`infidelity`. Returns an :class:`Evaluation` (``ev["deletion"]["ig"]`` is a ``[B]`` tensor;
    ``ev.summary()``, ``ev.to_pandas()``, ``ev.forward_calls``, ``ev.forward_inputs``).

    Example::

        >>> ev = fastattr.evaluate(model, x, y, attributions={"ig": ig, "saliency": sal})
        >>> ev.summary()["insertion"]
    """
    check_model(model)
    check_inputs(inputs)
    if not isinstance(attributions, dict) or not attributions:
        raise ValueError("attributions must be a non-empty dict {method name: attribution map}")
    unknown = [m for m in metrics if m not in EVALUATE_METRICS]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(unknown)}; choose from {', '.join(EVALUATE_METRICS)}")
    feats = {name: check_attributions(inputs, a) for name, a in attributions.items()}
    n_features = {f.shape[1] for f in feats.values()}
    if len(n_features) != 1:
        raise ValueError("all attributions must have the same shape (all per element or all channel-reduced)")
    n_features = n_features.pop()
    counted = CountingModel(model)
    t = resolve_target(counted, inputs, target)
    gen = _generator(generator)
    chunks = dict(max_batch=max_batch, memory_budget=memory_budget)
    ev = Evaluation()
    for metric, fn in (("deletion", deletion), ("insertion", insertion)):
        if metric in metrics:
            ev.values[metric], ev.curves[metric] = {}, {}
            for name in attributions:
                auc, curve, fractions = fn(counted, inputs, attributions[name], t, baseline=baseline, step=step,
                                           curves=True, **chunks)
                ev.values[metric][name], ev.curves[metric][name], ev.fractions[metric] = auc, curve, fractions
    if "faithfulness_correlation" in metrics or "infidelity" in metrics:
        passes = subset_deltas(counted, inputs, t, n_features, n_subsets=n_subsets, baseline=baseline,
                               subset_size=_fraction_size(subset_fraction, n_features, "subset_fraction"),
                               generator=gen, **chunks)
        if "faithfulness_correlation" in metrics:
            ev.values["faithfulness_correlation"] = {
                name: _pearson(passes.attribution_mass(f, weighted=False), passes.delta).to(inputs.dtype)
                for name, f in feats.items()}
        if "infidelity" in metrics:
            mult = multiplied_by_inputs if isinstance(multiplied_by_inputs, dict) else {}
            ev.values["infidelity"] = {
                name: infidelity(counted, inputs, attributions[name], t, passes=passes,
                                 multiplied_by_inputs=mult.get(name, False) if mult else bool(multiplied_by_inputs))
                for name in attributions}
    if "sensitivity_n" in metrics:
        if ns is None:
            ns = sorted({max(1, round(v)) for v in torch.logspace(0, torch.log10(torch.tensor(n_features / 2)), 8).tolist()})
        per_n = [subset_deltas(counted, inputs, t, n_features, subset_size=n, n_subsets=n_subsets, baseline=baseline,
                               generator=gen, **chunks) for n in ns]
        ev.values["sensitivity_n"] = {
            name: torch.stack([_pearson(p.attribution_mass(f, weighted=False), p.delta) for p in per_n], 1).to(inputs.dtype)
            for name, f in feats.items()}
    ev.forward_calls, ev.forward_inputs = counted.calls, counted.inputs
    return ev
