"""Robustness of explanations (SPEC §3.2): average and max sensitivity (Yeh et al. 2019, "On the
(In)fidelity and Sensitivity of Explanations"; Bhatt et al. 2020, "Evaluating and Aggregating
Feature-based Model Explanations").

For an explanation function ``e`` and noise ``ε ~ U[−r, r]^d``, the sensitivity of one sample is
``||e(x) − e(x + ε)||`` (divided by ``||e(x)||`` with ``normalise=True``); average sensitivity is its
mean over m samples and max sensitivity its maximum (a Monte-Carlo estimate of the max over the
ball). Lower is better. The samples are folded into the batch: one call of ``e`` explains k whole
perturbed copies of the batch (``k·B`` inputs, sample-major), so ``e`` runs ``⌈m / k⌉`` times.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Dict, Optional, Union

import torch

from ..core import Target, check_count, check_inputs, chunk_size, make_generator, model_entry, resolve_target
from ..attribution.aggregate import preprocessor
from ..numerics import accum_dtype

Explain = Union[str, Callable]
# distance(e(x) [B, ...], e(x + ε) [k, B, ...], x + ε [k·B, ...]) -> [k, B]
Distance = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _named_methods() -> dict[str, Callable]:
    """The attribution methods ``explain`` may name: ``attribution.METHODS``, the layer methods
    (``grad_cam``, ...), the IBA family and ``sea_nn``; the layer methods need their ``layer`` (IBA its
    ``statistics``, SEA-NN its ``methods``) in the explain keywords."""
    from ..attribution import LAYER_METHODS, METHODS, iba, input_iba, multi_layer_iba, sea_nn

    return {**METHODS, **LAYER_METHODS, "iba": iba, "multi_layer_iba": multi_layer_iba, "input_iba": input_iba,
            "sea_nn": sea_nn}


def explainer(explain: Explain, explain_kwargs: Optional[dict], chunks: Optional[dict] = None) -> Callable:
    """``fn(model, inputs, target)`` from an attribution function or a name in :func:`_named_methods`;
    a named method also gets the metric's ``max_batch`` / ``memory_budget`` (``chunks``), where it
    takes them, unless ``explain_kwargs`` sets them."""
    kwargs = dict(explain_kwargs or {})
    if isinstance(explain, str):
        methods = _named_methods()
        if explain not in methods:
            raise ValueError(f"unknown explain method {explain!r}; choose from {', '.join(sorted(methods))} "
                             "or pass a function fn(model, inputs, target)")
        name, explain = explain, methods[explain]
        params = inspect.signature(explain).parameters
        kwargs = {**{k: v for k, v in (chunks or {}).items() if v is not None and k in params}, **kwargs}
        missing = [p.name for p in params.values()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
                   and p.name not in kwargs]
        if missing:
            raise ValueError(f"explain method {name!r} needs {' and '.join(missing)}: pass them with its keyword "
                             f"arguments (explain_kwargs; in evaluate, method_kwargs[{name!r}])")
    if not callable(explain):
        raise TypeError(f"explain must be an attribution function or a method name, "
                        f"got {type(explain).__name__}")
    return lambda model, x, t: explain(model, x, t, **kwargs)


def explainers(explain: Union[Explain, Dict[str, Explain]], explain_kwargs: Optional[dict],
               chunks: Optional[dict] = None) -> tuple[Dict[Optional[str], Callable], bool]:
    """``({name: fn}, several)``: one :func:`explainer` per method of a dict ``explain`` (``several``),
    or ``{None: fn}`` for one function or name. ``explain_kwargs`` go to every method."""
    if not isinstance(explain, dict):
        return {None: explainer(explain, explain_kwargs, chunks)}, False
    if not explain or not all(isinstance(k, str) for k in explain):
        raise ValueError("explain must be an attribution function, a method name, or a non-empty dict "
                         f"{{method name: function or method name}}, got {explain!r}")
    return {name: explainer(e, explain_kwargs, chunks) for name, e in explain.items()}, True


def given_attributions(attributions, fns: Dict[Optional[str], Callable], several: bool) -> dict:
    """The precomputed explanations per method of :func:`explainers`: ``{name: e(x)}`` for the methods
    that have one (a dict keyed like ``explain`` when it is a dict, else one tensor or None)."""
    if attributions is None:
        return {}
    if not several:
        if isinstance(attributions, dict):
            raise TypeError("attributions may be a dict {method name: e(x)} only when explain is a dict of methods")
        return {None: attributions}
    if not isinstance(attributions, dict):
        raise TypeError("attributions must be a dict {method name: e(x)} (or None) when explain is a dict, got "
                        f"{type(attributions).__name__}")
    unknown = [k for k in attributions if k not in fns]
    if unknown:
        raise ValueError(f"attributions has methods {unknown} that explain does not; its methods are {list(fns)}")
    return {k: v for k, v in attributions.items() if v is not None}


def label(argument: str, name: Optional[str]) -> str:
    """How errors name an argument of method ``name``: ``explain`` or ``explain['ig']``."""
    return argument if name is None else f"{argument}[{name!r}]"


def explanations_of(fn: Callable, model: Callable, inputs: torch.Tensor, target: torch.Tensor,
                    attributions: Optional[torch.Tensor] = None, name: Optional[str] = None) -> torch.Tensor:
    """``e(x)``: the given ``attributions`` or ``fn(model, inputs, target)``, checked to hold one finite
    explanation per input (errors name ``attributions`` or ``explain``, whichever gave it, with the
    method ``name`` of a dict call)."""
    given = attributions is not None
    a_name, e_name = label("attributions", name), label("explain", name)
    if not given:
        attributions = fn(model, inputs, target)
    if not isinstance(attributions, torch.Tensor) or attributions.shape[:1] != inputs.shape[:1]:
        got = tuple(attributions.shape) if isinstance(attributions, torch.Tensor) else type(attributions).__name__
        if given:
            raise ValueError(f"{a_name} must be e(x), a tensor with {inputs.shape[0]} rows, got {got}")
        raise ValueError(f"{e_name} returned {got} for {inputs.shape[0]} inputs; expected one explanation per input")
    if not torch.isfinite(attributions).all():
        raise ValueError(f"{a_name} contain NaN or Inf" if given else f"{e_name} returned NaN or Inf for the inputs")
    return attributions


def uniform_noise(generator: torch.Generator, like: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """One draw of ``U[low, high]`` shaped like ``like``, on the CPU from ``generator`` (the stream of
    :func:`sensitivity_samples`: one full-batch draw per sample, in sample order)."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return low + (high - low) * torch.rand(like.shape, generator=generator, dtype=dtype)


def sensitivity_samples(model: Callable, inputs: torch.Tensor, explain: Union[Callable, Dict[str, Callable]],
                        target: torch.Tensor, *, explained: Union[torch.Tensor, Dict[str, torch.Tensor]], low: float,
                        high: float, n_samples: int, generator: torch.Generator, chunk: int, distance: Distance,
                        explain_name: str = "explain", explained_name=None) -> torch.Tensor:
    """``[B, n_samples]``: ``distance(e(x), e(x + ε_j))`` for ``ε_j ~ U[low, high]`` (every element).

    ``explain(model, z, t)`` gets ``k = max(1, chunk // B)`` perturbed copies of the whole batch at
    once (``z`` is ``[k·B, ...]``, sample-major, ``t`` the targets repeated). Noise is drawn per
    sample from ``generator`` (:func:`uniform_noise`), so results do not depend on ``chunk``. Errors
    name the caller's arguments: ``explain_name`` for ``explain`` and, when ``explained`` was given
    rather than computed by ``explain``, ``explained_name`` for it.

    Several methods on one set of perturbations: ``explain`` a dict ``{name: fn}``, ``explained`` the
    dict of their ``e(x)`` and ``explained_name`` a dict ``{name: str or None}``; each chunk is drawn
    once and explained by every method, and ``distance`` gets both dicts.
    """
    several = isinstance(explain, dict)
    fns = explain if several else {None: explain}
    known = explained if several else {None: explained}
    names = (explained_name or {}) if several else {None: explained_name}
    batch = inputs.shape[0]
    per = max(1, chunk // batch)
    reps = (1,) * (inputs.dim() - 1)
    out = torch.empty(batch, n_samples, dtype=torch.float64, device=inputs.device)
    for j0 in range(0, n_samples, per):
        k = min(per, n_samples - j0)
        noise = torch.cat([uniform_noise(generator, inputs, low, high).to(inputs.device) for _ in range(k)])
        perturbed = inputs.repeat(k, *reps) + noise
        targets = target.repeat(k)
        e = {name: _explained(fn(model, perturbed, targets), k, known[name], label(explain_name, name),
                              names.get(name)) for name, fn in fns.items()}
        out[:, j0:j0 + k] = distance(explained, e if several else e[None], perturbed).to(out).T
    return out


def _explained(e, k: int, explained: torch.Tensor, explain_name: str, explained_name: Optional[str]) -> torch.Tensor:
    """One method's explanations of ``k`` perturbed copies of the batch as ``[k, B, ...]``, or an error."""
    batch = explained.shape[0]
    if not isinstance(e, torch.Tensor) or tuple(e.shape) != (k * batch,) + tuple(explained.shape[1:]):
        if explained_name is not None and isinstance(e, torch.Tensor) and e.shape[:1] == (k * batch,):
            raise ValueError(f"{explained_name} has {tuple(explained.shape[1:])} per example but {explain_name} "
                             f"returns {tuple(e.shape[1:])} per input; {explained_name} must be e(x), shaped "
                             f"like {explain_name}'s output")
        got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
        raise ValueError(f"{explain_name} returned {got} for {k * batch} inputs; expected one explanation "
                         f"shaped like e(x) {tuple(explained.shape[1:])} per input")
    return e.detach().reshape((k,) + tuple(explained.shape))


def _norm_order(norm) -> float:
    if norm == "fro":
        return 2.0
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm > 0:
        raise ValueError(f"norm must be a positive number, math.inf or 'fro', got {norm!r}")
    return float(norm)


def _sensitivity(model, inputs, explain, target, *, radius, n_samples, norm, normalise, preprocess,
                 attributions, explain_kwargs, generator, max_batch, memory_budget, reduce):
    check_inputs(inputs)
    n_samples = check_count(n_samples, "n_samples")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 < radius < math.inf:
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    p = _norm_order(norm)
    fn = explainer(explain, explain_kwargs, dict(max_batch=max_batch, memory_budget=memory_budget))
    prep = preprocessor(preprocess)
    t = resolve_target(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    given = attributions is not None
    attributions = explanations_of(fn, model, inputs, t, attributions)
    acc = accum_dtype(inputs.dtype)
    e_x = prep(attributions.detach()).to(acc)
    scale = torch.linalg.vector_norm(e_x.reshape(e_x.shape[0], -1), ord=p, dim=1) if normalise else None

    def distance(ex, e, perturbed):
        pe = prep(e.reshape((-1,) + tuple(e.shape[2:]))).to(acc)
        diff = pe - ex.repeat(e.shape[0], *(1,) * (ex.dim() - 1))
        d = torch.linalg.vector_norm(diff.reshape(e.shape[0], e.shape[1], -1), ord=p, dim=2)
        return d / scale if normalise else d

    chunk = chunk_size(inputs, n_samples * inputs.shape[0], max_batch, memory_budget)
    samples = sensitivity_samples(model, inputs, fn, t, explained=e_x, low=-float(radius), high=float(radius),
                                  n_samples=n_samples, generator=make_generator(generator), chunk=chunk,
                                  distance=distance, explained_name="attributions" if given else None)
    return reduce(samples).to(inputs.dtype)


@model_entry
def avg_sensitivity(model: Callable, inputs: torch.Tensor, explain: Explain, target: Target = None, *,
                    radius: float = 0.1, n_samples: int = 200, norm: Union[float, str] = 2,
                    normalise: bool = False, preprocess=None, attributions: Optional[torch.Tensor] = None,
                    explain_kwargs: Optional[dict] = None, generator=0, max_batch: Optional[int] = None,
                    memory_budget: Optional[int] = None) -> torch.Tensor:
    """Average sensitivity (Yeh et al. 2019; Bhatt et al. 2020) per example, lower is better:
    ``(1/m) Σ_j ||e(x) − e(x + ε_j)||_p``, ``ε_j ~ U[−r, r]^d`` (``r = radius``, ``m = n_samples``).

    Args:
        explain: an attribution function ``fn(model, inputs, target, **explain_kwargs)`` returning one
            explanation per input (e.g. ``fastattr.saliency``), or a name in
            ``fastattr.attribution.METHODS``. The targets are resolved once on the clean inputs.
        norm: the vector norm of the flattened difference (``2`` = ``"fro"``, ``1``, ``math.inf``…).
        normalise: divide by ``||e(x)||_p`` (NaN / Inf where ``e(x) = 0``).
        preprocess: applied to every explanation before comparing: ``"abs_max"`` (``|a| / max|a|`` per
            example, the AGG paper's preprocessing) or a per-example function of an ``[N, ...]`` batch.
        attributions: a precomputed ``e(x)`` (default: ``explain`` on the clean inputs).
        generator: torch.Generator or int seed; noise is drawn on the CPU, one full batch per sample.
        max_batch / memory_budget: perturbed inputs per call of ``explain`` (at least one copy of the
            batch); the result does not depend on them. A method given by name also chunks its own
            model calls under them; give a function its limits through ``explain_kwargs``.

    Returns ``[B]``. Example::

        >>> s = fastattr.metrics.avg_sensitivity(model, x, fastattr.saliency, y, radius=0.05)
    """
    return _sensitivity(model, inputs, explain, target, radius=radius, n_samples=n_samples, norm=norm,
                        normalise=normalise, preprocess=preprocess, attributions=attributions,
                        explain_kwargs=explain_kwargs, generator=generator, max_batch=max_batch,
                        memory_budget=memory_budget, reduce=lambda s: s.mean(1))


@model_entry
def max_sensitivity(model: Callable, inputs: torch.Tensor, explain: Explain, target: Target = None, *,
                    radius: float = 0.1, n_samples: int = 200, norm: Union[float, str] = 2,
                    normalise: bool = False, preprocess=None, attributions: Optional[torch.Tensor] = None,
                    explain_kwargs: Optional[dict] = None, generator=0, max_batch: Optional[int] = None,
                    memory_budget: Optional[int] = None) -> torch.Tensor:
    """Max sensitivity (Yeh et al. 2019, Def. 3.1) per example, lower is better:
    ``max_j ||e(x) − e(x + ε_j)||_p`` over ``n_samples`` draws ``ε_j ~ U[−r, r]^d``, a Monte-Carlo
    estimate of ``max_{||ε||_∞ ≤ r}``. Arguments as :func:`avg_sensitivity` (same seed, same samples).

    Example::

        >>> s = fastattr.metrics.max_sensitivity(model, x, "integrated_gradients", y, n_samples=50)
    """
    return _sensitivity(model, inputs, explain, target, radius=radius, n_samples=n_samples, norm=norm,
                        normalise=normalise, preprocess=preprocess, attributions=attributions,
                        explain_kwargs=explain_kwargs, generator=generator, max_batch=max_batch,
                        memory_budget=memory_budget, reduce=lambda s: s.amax(1))
