"""Several attribution methods on the same inputs, sharing the model passes they have in common.

A method is named as in :data:`fastattr.attribution.METHODS`, alone (``"saliency"``) or with its
settings (``("smoothgrad", {"n_samples": 10, "variant": "vargrad"})``), or given as a function
``fn(model, x, target)`` or, where the caller allows it, as a precomputed map. Methods named with
settings that give the same model passes run them once:

- ``saliency`` (either ``abs``) and ``input_x_gradient``: one gradient ``g = ∂f_t/∂x``; ``|g|`` or
  ``g``, and ``x ⊙ g``;
- ``smoothgrad`` entries with the same settings but ``variant`` (SmoothGrad, SmoothGrad², VarGrad)
  and a seed (None or an int, not a ``torch.Generator``, whose stream separate calls would consume
  in turn): one set of noisy gradients, reduced per variant (:func:`smoothgrad_variants`).

Every map equals what a separate call of its method with the same settings returns, bit for bit.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional

import torch

from ..core import Target, check_flag, model_entry, resolve_target

__all__ = ["MethodSet", "explain_all", "method_spec"]

_GRADIENT = {"saliency": {"abs", "max_batch", "memory_budget"}, "input_x_gradient": {"max_batch", "memory_budget"}}


def method_spec(method) -> Optional[tuple[str, dict]]:
    """``(method name, settings)`` for a method named alone or as a ``(name, {settings})`` pair; None for
    anything else (a function, a map)."""
    if isinstance(method, str):
        return method, {}
    if isinstance(method, (tuple, list)) and len(method) == 2 and isinstance(method[0], str) \
            and isinstance(method[1], dict):
        return method[0], dict(method[1])
    return None


def _share_key(method: str, settings: dict):
    """The key under which a named method shares its passes with others, or None when it runs alone."""
    if method in _GRADIENT and set(settings) <= _GRADIENT[method]:
        return "gradient", settings.get("max_batch"), settings.get("memory_budget")
    seed = settings.get("generator")
    if method == "smoothgrad" and (seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool))):
        key = ("noise",) + tuple(sorted((k, v) for k, v in settings.items() if k != "variant"))
        try:
            hash(key)
        except TypeError:
            return None
        return key
    return None


def _gradient_group(members: list) -> Callable:
    from .gradient import saliency

    settings = members[0][2]
    chunks = {k: settings[k] for k in ("max_batch", "memory_budget") if k in settings}
    flags = {name: check_flag(kw.get("abs", True), "abs") for name, method, kw in members if method == "saliency"}

    def run(model, x, t) -> dict:
        g = saliency(model, x, t, abs=False, **chunks)
        return {name: (g.abs() if flags[name] else g) if method == "saliency" else x.detach() * g
                for name, method, _ in members}
    return run


def _noise_group(members: list) -> Callable:
    from .gradient import smoothgrad_variants

    settings = {k: v for k, v in members[0][2].items() if k != "variant"}
    variants = {name: kw.get("variant", "smoothgrad") for name, _, kw in members}

    def run(model, x, t) -> dict:
        maps = smoothgrad_variants(model, x, t, variants=tuple(dict.fromkeys(variants.values())), **settings)
        return {name: maps[v] for name, v in variants.items()}
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
    are) that runs each group of methods sharing passes once (module docstring). Named methods run
    with ``chunks`` (``max_batch`` / ``memory_budget``) unless their settings say otherwise; ``accepted``
    says what a method may be, for the error on anything else."""

    def __init__(self, methods: dict, chunks: Optional[dict] = None,
                 accepted: str = "a method name, a (name, {settings}) pair or a function fn(model, x, target)"):
        from . import method_function

        chunks = {k: v for k, v in (chunks or {}).items() if v is not None}
        self.names = list(methods)
        self.given: dict[str, torch.Tensor] = {}
        runs: list = []  # a function, or the key of a group (run where its first member stands)
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
        ...     "sal": "saliency", "ixg": "input_x_gradient"})   # two gradient passes, not 22
    """
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"methods must be a non-empty dict of {{name: method}}, got {methods!r}")
    t = resolve_target(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    return MethodSet(methods, dict(max_batch=max_batch, memory_budget=memory_budget))(model, inputs, t)
