"""The methods fastattr knows by name (:data:`METHODS`), and several of them on the same inputs sharing
the model passes they have in common.

A method is named alone (``"saliency"``) or with its settings (``("smoothgrad", {"n_samples": 10,
"variant": "vargrad"})``), or given as a function ``fn(model, x, target)`` or, where the caller allows
it, as a precomputed map. Methods named with settings that give the same model passes run them once:

- ``saliency`` (either ``abs``) and ``input_x_gradient``: one gradient ``g = ∂f_t/∂x``; ``|g|`` or
  ``g``, and ``x ⊙ g``;
- ``smoothgrad`` entries with the same settings but ``variant`` (SmoothGrad, SmoothGrad², VarGrad)
  and a seed (None or an int, not a ``torch.Generator``, whose stream separate calls would consume
  in turn): one set of noisy gradients, reduced per variant (:func:`smoothgrad_variants`).

Settings are shared only when they are equal and of the same types and name only the method's own
arguments, so a bad setting gets the error of its method's own call. For a model whose forward draws
no random numbers every map equals what a separate call of its method with the same settings returns,
bit for bit when both calls run the same chunks (a default chunk can follow free memory: give ``max_batch``
to pin it), as a tensor of its own.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..core import Target, check_flag, model_entry, resolve_target
from .cam import guided_backprop
from .deeplift import deeplift
from .gradient import VARIANTS, input_x_gradient, integrated_gradients, saliency, smoothgrad, smoothgrad_variants
from .layer import pathway_gradient
from .perturbation import feature_ablation, occlusion, rise
from .surrogate import kernel_shap, lime

__all__ = ["METHODS", "MethodSet", "explain_all", "method_function", "method_spec"]

METHODS = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": integrated_gradients,
    "smoothgrad": smoothgrad,
    "guided_backprop": guided_backprop,
    "deeplift": deeplift,
    "pathway_gradient": pathway_gradient,
    "occlusion": occlusion,
    "feature_ablation": feature_ablation,
    "rise": rise,
    "kernel_shap": kernel_shap,
    "lime": lime,
}

_CHUNKS = {"max_batch", "memory_budget"}
_GRADIENT = {"saliency": {"abs"} | _CHUNKS, "input_x_gradient": _CHUNKS}
_NOISE = {"n_samples", "stdev", "stdev_spread", "variant", "abs", "generator"} | _CHUNKS


def method_spec(method) -> Optional[tuple[str, dict]]:
    """``(method name, settings)`` for a method named alone or as a ``(name, {settings})`` pair; None for
    anything else (a function, a map)."""
    if isinstance(method, str):
        return method, {}
    if isinstance(method, (tuple, list)) and len(method) == 2 and isinstance(method[0], str) \
            and isinstance(method[1], dict):
        return method[0], dict(method[1])
    return None


def method_function(name: str, method, kwargs: dict, accepted: str = "a method name, a (name, {settings}) pair "
                    "or a function fn(model, x, target)"):
    """``fn(model, x, target)`` for entry ``name`` of a ``methods`` argument: a :data:`METHODS` name, run with
    ``kwargs``, or a ``(name, {settings})`` pair, run with ``kwargs`` updated by its settings; a function,
    kept as it is; else an error naming ``methods[name]`` and ``accepted``."""
    spec = method_spec(method)
    if spec is not None:
        if spec[0] not in METHODS:
            raise ValueError(f"methods[{name!r}] = {spec[0]!r} is not one of fastattr.attribution.METHODS "
                             f"({', '.join(sorted(METHODS))}): not a method fastattr knows by name")
        return lambda model, x, t, _fn=METHODS[spec[0]], _kw={**kwargs, **spec[1]}: _fn(model, x, t, **_kw)
    if callable(method):
        return method
    raise TypeError(f"methods[{name!r}] must be {accepted}, got {type(method).__name__}")


def _typed(settings: dict, leave: str = "") -> Optional[tuple]:
    """The settings (but ``leave``) as a hashable key in which equal values of different types differ (``1``
    and ``True``, ``4`` and ``4.0``), or None when a value cannot be hashed."""
    key = tuple(sorted((k, type(v).__name__, v) for k, v in settings.items() if k != leave))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _share_key(method: str, settings: dict):
    """The key under which a named method shares its passes with others, or None when it runs alone."""
    if method in _GRADIENT and set(settings) <= _GRADIENT[method]:
        key = _typed({k: v for k, v in settings.items() if k in _CHUNKS})
        return None if key is None else ("gradient",) + key
    seed, variant = settings.get("generator"), settings.get("variant", "smoothgrad")
    if method == "smoothgrad" and set(settings) <= _NOISE and (seed is None or type(seed) is int) \
            and type(variant) is str and variant in VARIANTS:
        key = _typed(settings, leave="variant")
        return None if key is None else ("noise",) + key
    return None


def _own(maps: dict) -> dict:
    """``maps`` with every tensor a tensor of its own (a repeat of one already given is cloned)."""
    seen: set = set()
    out = {}
    for name, m in maps.items():
        out[name] = m.clone() if id(m) in seen else m
        seen.add(id(m))
    return out


def _gradient_group(members: list) -> Callable:
    settings = members[0][2]
    chunks = {k: settings[k] for k in _CHUNKS if k in settings}
    flags = {name: check_flag(kw.get("abs", True), "abs") for name, method, kw in members if method == "saliency"}

    def run(model, x, t) -> dict:
        g = saliency(model, x, t, abs=False, **chunks)
        return _own({name: (g.abs() if flags[name] else g) if method == "saliency" else x.detach() * g
                     for name, method, _ in members})
    return run


def _noise_group(members: list) -> Callable:
    settings = {k: v for k, v in members[0][2].items() if k != "variant"}
    variants = {name: kw.get("variant", "smoothgrad") for name, _, kw in members}

    def run(model, x, t) -> dict:
        maps = smoothgrad_variants(model, x, t, variants=tuple(dict.fromkeys(variants.values())), **settings)
        return _own({name: maps[v] for name, v in variants.items()})
    return run


def _group(members: list, kind: str) -> Callable:
    if len(members) == 1:
        name, _, _, fn = members[0]
        return lambda model, x, t: {name: fn(model, x, t)}
    group = [(name, method, settings) for name, method, settings, _ in members]
    return _gradient_group(group) if kind == "gradient" else _noise_group(group)


class MethodSet:
    """``methods`` (``{name: method}``) ready to run: ``names`` in order, ``given`` the precomputed maps
    (``{name: tensor}``, detached), and a call ``(model, x, t) -> {name: map}`` (the given maps as they
    are) that runs each group of methods sharing passes once, where its first member stands (module
    docstring). Named methods run with ``chunks`` (``max_batch`` / ``memory_budget``) unless their
    settings say otherwise; ``accepted`` says what a method may be, for the error on anything else."""

    def __init__(self, methods: dict, chunks: Optional[dict] = None,
                 accepted: str = "a method name, a (name, {settings}) pair or a function fn(model, x, target)"):
        chunks = {k: v for k, v in (chunks or {}).items() if v is not None}
        self.names = list(methods)
        self.given: dict[str, torch.Tensor] = {}
        runs: list = []  # a function, or the key of a group
        shared: dict = {}
        for name, m in methods.items():
            if isinstance(m, torch.Tensor):
                self.given[name] = m.detach()
                continue
            fn = method_function(name, m, chunks, accepted)
            spec = method_spec(m)
            settings = {**chunks, **spec[1]} if spec is not None else {}
            key = _share_key(spec[0], settings) if spec is not None else None
            if key is None:
                runs.append(lambda model, x, t, _n=name, _f=fn: {_n: _f(model, x, t)})
                continue
            if key not in shared:
                runs.append(key)
            shared.setdefault(key, []).append((name, spec[0], settings, fn))
        self._runs: list[Callable] = [r if callable(r) else _group(shared[r], r[0]) for r in runs]

    def __call__(self, model: Callable, x: torch.Tensor, t: torch.Tensor) -> dict:
        out = dict(self.given)
        for run in self._runs:
            out.update(run(model, x, t))
        return {name: out[name] for name in self.names}


@model_entry
def explain_all(model: Callable, inputs: torch.Tensor, target: Target = None, *, methods: dict,
                max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> dict:
    """``{name: map}``: every method of ``methods`` (``{name: method name, (name, {settings}) or
    fn(model, x, target)}``) on ``inputs`` for the same targets, the passes that several of them need
    run once (module docstring); each map equals its method's own call.

    Example::

        >>> maps = fastattr.attribution.explain_all(model, x, y, methods={
        ...     "sg": ("smoothgrad", {"n_samples": 10}), "vg": ("smoothgrad", {"n_samples": 10, "variant": "vargrad"}),
        ...     "sal": "saliency", "ixg": "input_x_gradient"})   # 11 gradient passes of x, not 22
    """
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"methods must be a non-empty dict of {{name: method}}, got {methods!r}")
    for name, m in methods.items():
        if isinstance(m, torch.Tensor):
            raise TypeError(f"methods[{name!r}] must be a method name, a (name, {{settings}}) pair or a function "
                            "fn(model, x, target), got a tensor")
    t = resolve_target(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    return MethodSet(methods, dict(max_batch=max_batch, memory_budget=memory_budget))(model, inputs, t)
