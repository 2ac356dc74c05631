"""Relative stability of explanations (SPEC §11; Agarwal et al. 2022, "Rethinking Stability for
Attribution-based Explanations"), with Quantus 0.6's definitions (``RelativeInputStability``,
``RelativeOutputStability``, ``RelativeRepresentationStability``).

For an explanation function ``e``, perturbations ``x' = x + ε`` and ``⊘`` the element-wise division
in which a zero divisor entry is replaced by ``ε_min``::

    RIS(x) = max_x' ‖(e_x − e_x') ⊘ e_x‖₂ / max(‖(x − x') ⊘ x‖₂, ε_min)
    ROS(x) = max_x' ‖(e_x − e_x') ⊘ e_x‖₂ / max(‖h(x) − h(x')‖₂, ε_min)
    RRS(x) = max_x' ‖(e_x − e_x') ⊘ e_x‖₂ / max(‖(L(x) − L(x')) ⊘ L(x)‖₂, ε_min)

``h`` the model's output (logits), ``L`` an internal representation (the outputs of the chosen
layers, flattened and concatenated), every norm over all elements of one example. As in Quantus,
``max(n, ε_min)`` is ``n`` with a zero ``n`` replaced by ``ε_min``. Lower is better. One set of
perturbations serves all three: per chunk of perturbed inputs (drawn and explained by
:func:`~fastattr.metrics.robustness.sensitivity_samples`, as for max sensitivity), one hooked forward
gives ``h`` and ``L`` and one call of ``e`` the explanations. Several explanation functions (``explain``
a dict) share the perturbations and the hooked forward: only their explain calls are per method.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..core import (Layer, Target, check_count, check_inputs, check_number, chunk_size, hidden_layers,
                    make_generator, model_entry, resolve_layers, resolve_target, run_model)
from .robustness import Explain, explainers, explanations_of, given_attributions, label, sensitivity_samples

__all__ = ["KINDS", "hidden_layers", "relative_stability"]

KINDS = ("input", "output", "representation")
LABEL_PRESERVING = ("quantus", "max_over_preserving", "all")


def _forward(model: Callable, z: torch.Tensor, layers: list[nn.Module]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(h(z) [N, C], L(z) [N, D] or None)``: one forward without gradients, the outputs of
    ``layers`` read by forward hooks (every call of a layer, in call order) and flattened."""
    n, reps = z.shape[0], []

    def hook(module, args, out):
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"layer {type(module).__name__} returned {got} for inputs of shape {tuple(z.shape)}; "
                             "a representation layer must return one tensor [N, ...]")
        reps.append(out.detach().reshape(n, -1).clone())

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            out = run_model(model, z)
    finally:
        for h in handles:
            h.remove()
    if layers and not reps:
        raise ValueError("layer did not run in the model's forward: pass a module the model calls")
    return out.detach().reshape(n, -1), (torch.cat(reps, 1) if layers else None)


def _relative_norm(a: torch.Tensor, b: torch.Tensor, eps: float, relative: bool = True) -> torch.Tensor:
    """``[k, B]``: ``‖(a − b) ⊘ a‖₂`` (``‖a − b‖₂`` when not ``relative``) of ``a`` ``[1, B, ...]`` and
    ``b`` ``[k, B, ...]`` over the trailing axes, in float64."""
    a, b = a.double(), b.double()
    d = (a - b) / torch.where(a == 0, eps, a) if relative else a - b
    return torch.linalg.vector_norm(d.reshape(d.shape[0], d.shape[1], -1), dim=2)


def _radius(radius) -> tuple[float, float]:
    """The noise interval ``(low, high)``: a pair as given, a number ``r`` as ``(−r, r)``."""
    def finite(v) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)

    if isinstance(radius, (tuple, list)) and len(radius) == 2 and all(map(finite, radius)) and radius[0] < radius[1]:
        return float(radius[0]), float(radius[1])
    if finite(radius) and radius > 0:
        return -float(radius), float(radius)
    raise ValueError(f"radius must be a positive finite number r (noise U[−r, r]) or a pair (low, high) of finite "
                     f"numbers with low < high (noise U[low, high]), got {radius!r}")


@model_entry
def relative_stability(model: Callable, inputs: torch.Tensor, explain: Union[Explain, Dict[str, Explain]],
                       target: Target = None, *, kinds: Union[str, Sequence[str]] = KINDS, layer: Layer = None,
                       n_samples: int = 200, radius: Union[float, tuple[float, float]] = (0.02, 0.2),
                       eps_min: float = 1e-6, label_preserving: str = "quantus",
                       attributions: Union[None, torch.Tensor, Dict[str, torch.Tensor]] = None,
                       explain_kwargs: Optional[dict] = None, generator=0, max_batch: Optional[int] = None,
                       memory_budget: Optional[int] = None) -> dict:
    """Relative input / output / representation stability (Agarwal et al. 2022; Quantus 0.6) per
    example, lower is better (module docstring for the formulas), all from one set of perturbations.

    Args:
        explain: an attribution function ``fn(model, inputs, target, **explain_kwargs)`` or a name in
            ``fastattr.attribution.METHODS``; called once per chunk of perturbed inputs (``k`` whole
            copies of the batch, sample-major). The targets are resolved once on the clean inputs.
            A dict ``{method name: function or name}`` evaluates several methods on the same
            perturbations (the same as one call per method with the same ``generator``): each chunk
            is drawn once and run once through the hooked forward (``h`` and ``L``), then explained by
            every method.
        kinds: any of ``"input"`` (RIS), ``"output"`` (ROS), ``"representation"`` (RRS).
        layer: where ``L`` is read for RRS: a module, a module name, a list of those (outputs
            concatenated), or None: Quantus's default, every submodule that is neither an
            ``nn.Sequential`` nor of the model's class (:func:`hidden_layers`).
        n_samples: perturbations per example.
        radius: ``ε ~ U[low, high]`` element-wise for a pair ``(low, high)``, ``U[−r, r]`` for a number ``r``.
            The default ``(0.02, 0.2)`` is Quantus's (``batch_uniform_noise``, ``lower_bound=0.02``,
            ``upper_bound=0.2``).
        eps_min: replaces zero divisors and zero denominator norms (Quantus's ``eps_min``).
        label_preserving: perturbations that change the prediction (``argmax h``): ``"quantus"`` makes
            them NaN, so an example is NaN if any of its perturbations flips it (Quantus's
            ``return_nan_when_prediction_changes=True``; ``np.max`` propagates NaN);
            ``"max_over_preserving"``: the max over the label-preserving ones only (Agarwal et al.'s
            definition; NaN if none is); ``"all"``: the max over all (Quantus's ``False``).
        attributions: a precomputed ``e(x)`` (default: ``explain`` on the clean inputs); with a dict
            ``explain``, a dict ``{method name: e(x)}`` for some or all of its methods.
        explain_kwargs: keyword arguments of every ``explain`` call.
        generator: torch.Generator or int seed; noise is drawn on the CPU, one full batch per sample,
            in sample order (:func:`fastattr.metrics.robustness.uniform_noise`), as Quantus draws its
            ``np.random.uniform`` noise, so replayed draws give Quantus's scores.
        max_batch / memory_budget: perturbed inputs per forward and per call of ``explain``; the
            result does not depend on them.

    Returns ``{kind: [B]}`` (float64) in the order of ``kinds``; for a dict ``explain``,
    ``{method: {kind: [B]}}``. Example::

        >>> s = fastattr.metrics.relative_stability(model, x, fastattr.saliency, y, layer="4", n_samples=50)
        >>> s["input"], s["output"], s["representation"]
        >>> both = fastattr.metrics.relative_stability(model, x, {"sal": "saliency", "ig": "integrated_gradients"}, y)
        >>> both["ig"]["output"]
    """
    check_inputs(inputs)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds) if isinstance(kinds, (list, tuple)) else kinds
    if not isinstance(kinds, tuple) or not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) < len(kinds):
        raise ValueError(f"kinds must be distinct names from {KINDS}, got {kinds!r}")
    n_samples = check_count(n_samples, "n_samples")
    low, high = _radius(radius)
    if check_number(eps_min, "eps_min") == 0:
        raise ValueError("eps_min must be a positive number (it replaces zero divisors), got 0")
    if label_preserving not in LABEL_PRESERVING:
        raise ValueError(f"label_preserving must be one of {LABEL_PRESERVING}, got {label_preserving!r}")
    layers = resolve_layers(model, layer) if "representation" in kinds else []
    fns, several = explainers(explain, explain_kwargs, dict(max_batch=max_batch, memory_budget=memory_budget))
    given = given_attributions(attributions, fns, several)
    chunk = chunk_size(inputs, n_samples * inputs.shape[0], max_batch, memory_budget)
    clean = [_forward(model, inputs[i:i + chunk], layers) for i in range(0, inputs.shape[0], chunk)]
    h_x = torch.cat([h for h, _ in clean])
    l_x = torch.cat([r for _, r in clean]) if layers else None
    t = resolve_target(model, inputs, target, logits=h_x)
    e_x = {name: explanations_of(fn, model, inputs, t, given.get(name), name).detach() for name, fn in fns.items()}

    batch, labels = inputs.shape[0], h_x.argmax(1)
    values = torch.empty(len(fns), len(kinds), batch, n_samples, dtype=torch.float64, device=inputs.device)
    done = [0]

    def objectives(explained, e, perturbed):  # e: {method: [k, B, ...]}; records every kind, returns the flips [k, B]
        e = e if several else {None: e}
        k = perturbed.shape[0] // batch
        h, rep = _forward(model, perturbed, layers)
        dens = []
        for kind in kinds:
            if kind == "input":
                den = _relative_norm(inputs.unsqueeze(0), perturbed.reshape((k,) + inputs.shape), eps_min)
            elif kind == "output":
                den = _relative_norm(h_x.unsqueeze(0), h.reshape(k, batch, -1), eps_min, relative=False)
            else:
                den = _relative_norm(l_x.unsqueeze(0), rep.reshape(k, batch, -1), eps_min)
            dens.append(torch.where(den == 0, eps_min, den))
        for m, name in enumerate(fns):
            num = _relative_norm(e_x[name].unsqueeze(0), e[name], eps_min)
            for i, den in enumerate(dens):
                values[m, i, :, done[0]:done[0] + k] = (num / den).T
        done[0] += k
        return (h.argmax(1).reshape(k, batch) != labels).double()

    flipped = sensitivity_samples(
        model, inputs, fns if several else fns[None], t, explained=e_x if several else e_x[None], low=low, high=high,
        n_samples=n_samples, generator=make_generator(generator), chunk=chunk, distance=objectives,
        explained_name={name: label("attributions", name) if name in given else None for name in fns}
        if several else ("attributions" if given else None)).bool()
    if label_preserving == "quantus":
        result = values.masked_fill(flipped, math.nan).amax(3)
    elif label_preserving == "max_over_preserving":
        result = values.masked_fill(flipped, -math.inf).amax(3)
        result = result.masked_fill(flipped.all(1), math.nan)
    else:
        result = values.amax(3)
    out = {name: {kind: result[m, i] for i, kind in enumerate(kinds)} for m, name in enumerate(fns)}
    return out if several else out[None]
