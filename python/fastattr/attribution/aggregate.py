"""Optimized aggregation of attributions (AGG; SPEC §5; Decker et al. 2024, "Optimizing
Aggregation of Attributions", §3–4 and App. C): ``k`` attribution maps of one input, each
preprocessed to ``|φ|/max|φ|``, combined with convex weights chosen per example.

For a generalized L2 metric ``Q(φ) = E‖γ₁φ − γ₂‖²`` and ``φ_ω = Φω`` (``Φ ∈ R^{d×k}``),
``Q(φ_ω) = ωᵀGω`` with ``G = E[ΓᵀΓ]``, ``Γ = γ₁Φ − γ₂1ᵀ``, so the best weights solve the simplex QP
``ω* = argmin_{ω ∈ Δ_k} ωᵀGω`` (the ``simplex_qp`` op, all examples at once). Objectives:

- ``"robust"`` (squared average sensitivity): ``Γ_j = Φ(x) − Φ(x + ε_j)``, ``ε_j ~ U[−r, r]^d``;
- ``"faith"`` (infidelity): ``Γ_j = I_jᵀΦ − Δf_j 1ᵀ``, ``I_j = x − x̃_j`` where ``x̃_j`` has a random
  20 % of the map's features replaced by the blurred image, ``Δf_j = f_t(x) − f_t(x̃_j)``;
- ``"opt"``: ``λ₁ G_robust/‖G_robust‖_F + λ₂ G_faith/‖G_faith‖_F`` (``λ = (½, ½)``);
- ``"mean"``: ``ω = 1/k``; ``"var"``: ``(1/k) Σ φⁱ / (σ + ε)``, ``σ`` the per-feature standard
  deviation of the k maps (the weights reported are ``1/k``).

Every explainer runs on all ``m·B`` perturbed inputs in chunks (one call per chunk and method; methods
named with settings that share model passes, such as saliency and input × gradient, or SmoothGrad and
VarGrad, run them once: :mod:`fastattr.attribution.shared`); for ``"robust"`` and ``"opt"`` the ``B`` inputs
themselves ride in the first chunk, ahead of their perturbed copies (a seeded random method such as SmoothGrad
draws the noise of both from one stream, so its clean maps are not those of a call on the inputs alone). The
infidelity copies go through the perturbation engine, and ``G`` accumulates chunk by chunk (memory ``O(B·k²)``
beyond one chunk).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..core import (Baseline, MaskSet, Target, check_count, check_inputs, check_number, chunk_size, make_baseline,
                    make_generator, model_entry, perturbed_scores, random_subsets, read_scores, resolve_clean)
from ..ops import simplex_qp
from .shared import MethodSet

__all__ = ["AGG_OBJECTIVES", "Aggregation", "abs_max", "aggregate", "aggregation_matrices", "combine", "explainers",
           "map_batch", "preprocessor"]

AGG_OBJECTIVES = ("mean", "var", "robust", "faith", "opt")


@dataclass
class Aggregation:
    """``attribution`` (shaped like one method's map) = ``Σ_i weights[:, i] · maps[:, i]``; ``maps``
    ``[B, k, ...]`` the preprocessed maps of ``names``; ``G`` ``[B, k, k]`` the objective's matrices
    (None for ``mean`` / ``var``); ``objective`` the one optimised."""

    attribution: torch.Tensor
    weights: torch.Tensor
    names: list
    maps: torch.Tensor
    G: Optional[torch.Tensor]
    objective: str


def abs_max(a: torch.Tensor) -> torch.Tensor:
    """``|a| / max|a|`` per example (0 where the map is 0)."""
    m = a.abs().reshape(a.shape[0], -1).amax(1).view((-1,) + (1,) * (a.dim() - 1))
    return a.abs() / torch.where(m > 0, m, torch.ones_like(m))


def combine(weights: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``Σ_i weights[:, i] · maps[:, i]``: the aggregate of preprocessed maps ``[B, k, ...]`` with weights
    ``[B, k]`` (cast to the maps' dtype), shaped like one map."""
    w = weights.to(device=maps.device, dtype=maps.dtype)
    return torch.einsum("bk,bkd->bd", w, maps.reshape(maps.shape[0], maps.shape[1], -1)).reshape(
        (maps.shape[0],) + tuple(maps.shape[2:]))


def preprocessor(preprocess) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map preprocessing named by ``preprocess``: None (as is), ``"abs_max"`` (:func:`abs_max`) or a
    function of an ``[N, ...]`` batch."""
    if preprocess is None:
        return lambda a: a
    if preprocess == "abs_max":
        return abs_max
    if callable(preprocess):
        return preprocess
    raise ValueError(f"preprocess must be 'abs_max', None or a function of a [N, ...] batch, got {preprocess!r}")


def explainers(methods, chunks: dict) -> MethodSet:
    """``methods`` (``{name: method name, (name, {settings}) pair, function or map}``, at least two) as a
    :class:`~fastattr.attribution.shared.MethodSet`: the named methods run with ``chunks`` (their
    ``max_batch`` / ``memory_budget``), and those with passes in common share them."""
    if not isinstance(methods, dict) or len(methods) < 2:
        raise ValueError("methods must be a dict of at least two {name: method name, (name, {settings}) pair, "
                         f"function or precomputed map}}, got {methods!r}")
    return MethodSet(methods, chunks, "a method name, a (name, {settings}) pair, a function fn(model, x, target) "
                                      "or a tensor")


def map_batch(out, name: str, n: int, shape: Optional[tuple]) -> torch.Tensor:
    """``out`` detached, after checking it is ``n`` finite maps (of ``shape`` when given), the error naming ``name``."""
    if not isinstance(out, torch.Tensor) or out.shape[:1] != (n,) or (shape is not None and out.shape[1:] != shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        want = f"[{n}, {', '.join(map(str, shape))}]" if shape is not None else f"{n} maps"
        raise ValueError(f"methods[{name!r}] gave {got}; expected {want} (all maps of one shape)")
    if not torch.isfinite(out).all():
        raise ValueError(f"methods[{name!r}] gave NaN or Inf")
    return out.detach()


#: bytes the robust objective holds per call of the explainers (the perturbed inputs, their noise, maps and
#: float64 differences) when no ``memory_budget`` is given; the explainers chunk their own model passes
EXPLAIN_BUDGET = 256 << 20


def explain_chunk(inputs: torch.Tensor, total: int, k: int, max_batch: Optional[int],
                  memory_budget: Optional[int]) -> int:
    """Perturbed inputs per call of the ``k`` explainers: ``max_batch`` when given, else as many as
    ``memory_budget`` (default :data:`EXPLAIN_BUDGET`) holds at ``(2·itemsize + 20k)`` bytes per input
    element, at most ``total``."""
    if max_batch is not None:
        return min(max_batch, total)
    per_input = inputs[0].numel() * (2 * inputs.element_size() + 20 * k)
    budget = EXPLAIN_BUDGET if memory_budget is None else memory_budget
    return int(max(1, min(total, budget // per_input)))


def clean_maps(fns: MethodSet, outputs: dict, batch: int, prep, device) -> torch.Tensor:
    """``Φ [B, k, ...]``: the methods' maps of ``batch`` inputs (``{name: output}``), preprocessed, one shape."""
    shape, maps = None, []
    for name, out in outputs.items():
        out = map_batch(out, name, batch, shape)
        shape = tuple(out.shape[1:])
        maps.append(prep(out.to(device)))
    return torch.stack(maps, 1)


def _robust_matrix(model, inputs, t, fns: MethodSet, phi, prep, *, n_samples, radius, generator,
                   chunk) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Φ, G_robust [B, k, k])``, ``G_robust = (1/m) Σ_j (Φ(x) − Φ(x + ε_j))ᵀ(Φ(x) − Φ(x + ε_j))``; ``ε_j`` one
    full-batch draw of ``U[−r, r]`` per sample, in sample order, on the CPU; ``chunk`` perturbed inputs per call
    of the explainers. With ``phi`` None the clean maps ``Φ`` come from the first call, the inputs ahead of
    their perturbed copies (the explainers' per-call costs paid once; a seeded random method draws for both
    from one stream)."""
    batch = inputs.shape[0]
    per = max(1, chunk // batch)
    ride = phi is None and per > 1  # the inputs ride in the first call, beside at least one draw
    if phi is None and not ride:
        phi = clean_maps(fns, fns(model, inputs, t), batch, prep, inputs.device)
    reps = (1,) * (inputs.dim() - 1)
    g, j0 = 0.0, 0
    while j0 < n_samples:
        s = min(per - ride, n_samples - j0)
        j0 += s
        noise = torch.cat([(2 * torch.rand(inputs.shape, generator=generator, dtype=inputs.dtype) - 1) * radius
                           for _ in range(s)]).to(inputs.device)
        z, tz = inputs.repeat(s, *reps) + noise, t.repeat(s)
        if ride:
            outs = fns(model, torch.cat([inputs, z]), torch.cat([t, tz]))
            phi = clean_maps(fns, {name: out[:batch] for name, out in outs.items()}, batch, prep, inputs.device)
            outs, ride = {name: out[batch:] for name, out in outs.items()}, False
        else:
            outs = fns(model, z, tz)
        flat = phi.reshape(batch, phi.shape[1], -1).double()
        diffs = []
        for i, (name, out) in enumerate(outs.items()):
            e = prep(map_batch(out, name, s * batch, tuple(phi.shape[2:])))
            diffs.append(flat[:, i].unsqueeze(0) - e.reshape(s, batch, -1).double())
        d = torch.stack(diffs, -1)  # [s, B, d, k]
        g = g + torch.einsum("sbdi,sbdl->bil", d, d)
    return phi, g / n_samples


def _faith_matrix(model, inputs, t, clean, phi, *, n_samples, fraction, baseline, generator, chunk) -> torch.Tensor:
    """``G_faith [B, k, k] = (1/m) Σ_j (I_jᵀΦ − Δf_j)ᵀ(I_jᵀΦ − Δf_j)`` over random subsets of
    ``fraction`` of the map's features set to ``baseline``."""
    batch, k = phi.shape[:2]
    feats = phi[0, 0].numel()
    size = max(1, int(round(fraction * feats)))
    masks = random_subsets(batch, n_samples, feats, size=size, generator=generator, device=inputs.device)
    base = make_baseline(inputs, baseline, generator=generator)
    scores = perturbed_scores(model, inputs, base, MaskSet(inputs, masks), t, reader="logit", chunk=chunk,
                              precise=True).double()
    delta = clean.double().unsqueeze(1) - scores  # [B, m]
    diff = (inputs - base).double().reshape(batch, -1, feats).sum(1)  # x − x' per feature (channels summed)
    weighted = diff.unsqueeze(-1) * phi.reshape(batch, k, feats).transpose(1, 2).double()  # [B, F, k]
    a = torch.einsum("bmf,bfk->bmk", masks.double(), weighted)
    gamma = a - delta.unsqueeze(-1)
    return torch.einsum("bmi,bml->bil", gamma, gamma) / n_samples


def _check_reexplainable(fns: MethodSet, objective: str) -> None:
    """The error for precomputed maps among the methods of an objective that re-explains perturbed inputs."""
    given = list(fns.given)
    if given:
        raise ValueError(f"objective {objective!r} re-explains perturbed inputs, so every method must be a name, a "
                         f"(name, {{settings}}) pair or a function; {', '.join(map(repr, given))} "
                         f"{'is a' if len(given) == 1 else 'are'} precomputed map(s)")


def aggregation_matrices(model, inputs, t, clean, fns, phi, prep, *, objective, n_samples, radius, fraction,
                         baseline, lam, generator, chunk, explain: Optional[int] = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Φ, G [B, k, k])``: the clean maps and the objective's ``G`` (module docstring): robust, faith, or their
    normalised blend; ``fns`` the methods, a :class:`~fastattr.attribution.shared.MethodSet` or
    ``{name: fn(model, x, target)}``; ``chunk`` inputs per forward, ``explain`` (default ``chunk``) perturbed
    inputs per call of the explainers. ``phi`` the clean maps ``[B, k, ...]``, returned as given; None (robust
    and opt only) explains the inputs in the first call of the perturbed ones."""
    parts = {}
    if objective in ("robust", "opt"):
        fns = fns if isinstance(fns, MethodSet) else MethodSet(fns)
        _check_reexplainable(fns, objective)
        phi, parts["robust"] = _robust_matrix(model, inputs, t, fns, phi, prep, n_samples=n_samples, radius=radius,
                                              generator=generator, chunk=chunk if explain is None else explain)
    elif phi is None:
        raise ValueError(f"objective {objective!r} needs the clean maps phi")
    if objective in ("faith", "opt"):
        parts["faith"] = _faith_matrix(model, inputs, t, clean, phi, n_samples=n_samples, fraction=fraction,
                                       baseline=baseline, generator=generator, chunk=chunk)
    if objective != "opt":
        return phi, parts[objective]

    def unit(g):
        norm = torch.linalg.matrix_norm(g).view(-1, 1, 1)
        return g / torch.where(norm > 0, norm, torch.ones_like(norm))

    return phi, lam[0] * unit(parts["robust"]) + lam[1] * unit(parts["faith"])


def _lambdas(lam) -> tuple[float, float]:
    ok = isinstance(lam, (tuple, list)) and len(lam) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in lam)
    if not ok or sum(lam) <= 0:
        raise ValueError(f"lam must be two non-negative numbers (λ_robust, λ_faith), not both 0, got {lam!r}")
    return float(lam[0]), float(lam[1])


@model_entry
def aggregate(model: Callable, inputs: torch.Tensor, target: Target = None, *, methods: dict,
              objective: str = "opt", n_samples: int = 50, radius: float = 0.1, subset_fraction: float = 0.2,
              baseline: Baseline = "blur", lam: Sequence[float] = (0.5, 0.5), preprocess="abs_max",
              var_eps: float = 1e-8, generator=0, max_batch: Optional[int] = None,
              memory_budget: Optional[int] = None, backend: Optional[str] = None) -> Aggregation:
    """AGG (Decker et al. 2024): the per-example convex combination of ``methods`` that minimises the
    ``objective`` (module docstring for the formulas).

    Args:
        methods: ``{name: method}``, at least two; a method is a name in ``fastattr.attribution.METHODS``
            or a ``(name, {settings})`` pair (run with this call's ``max_batch`` / ``memory_budget``; the
            ones with model passes in common share them), a function ``fn(model, x, target)`` returning
            one map per input, or a precomputed map ``[B, ...]`` (only for ``"mean"``, ``"var"`` and
            ``"faith"``: ``"robust"`` and ``"opt"`` re-explain perturbed inputs).
        objective: ``"mean"``, ``"var"``, ``"robust"``, ``"faith"`` or ``"opt"``.
        n_samples: ``m``, the draws of ``ε`` and of the infidelity subsets (the paper's 50).
        radius: ``r`` of ``ε ~ U[−r, r]`` (0.1). subset_fraction: the features per infidelity subset
            (20 %). baseline: what the subsets' features become (default: the blurred image).
        lam: ``(λ_robust, λ_faith)`` of ``"opt"``.
        preprocess: ``"abs_max"`` (``|φ| / max|φ|`` per example, the paper's), None, or a function.
        var_eps: ``ε`` of ``"var"``.
        generator: torch.Generator or int seed (noise, then subsets, then a random baseline's draws).
        max_batch / memory_budget: perturbed inputs per explainer call and per forward (without them,
            a forward is cache-sized and a call of the explainers as large as :data:`EXPLAIN_BUDGET` holds).
        backend: the ``simplex_qp`` backend.

    Returns an :class:`Aggregation`. Example::

        >>> agg = fastattr.aggregate(model, x, y, methods={"ig": "integrated_gradients", "sg": "smoothgrad"})
        >>> agg.attribution, agg.weights
    """
    check_inputs(inputs)
    if objective not in AGG_OBJECTIVES:
        raise ValueError(f"objective must be one of {AGG_OBJECTIVES}, got {objective!r}")
    n_samples = check_count(n_samples, "n_samples", minimum=2)
    radius = check_number(radius, "radius")
    if radius == 0:
        raise ValueError("radius must be > 0")
    if isinstance(subset_fraction, bool) or not isinstance(subset_fraction, numbers.Real) \
            or not 0 < subset_fraction <= 1:
        raise ValueError(f"subset_fraction must be in (0, 1], got {subset_fraction!r}")
    lam = _lambdas(lam)
    prep = preprocessor(preprocess)
    fns = explainers(methods, dict(max_batch=max_batch, memory_budget=memory_budget))
    if objective in ("robust", "opt"):
        _check_reexplainable(fns, objective)
    t, clean = resolve_clean(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    batch, names, k = inputs.shape[0], list(fns.names), len(fns.names)
    # robust and opt explain the inputs in their first call of the explainers
    phi = None if objective in ("robust", "opt") else clean_maps(fns, fns(model, inputs, t), batch, prep,
                                                                  inputs.device)
    if objective in ("mean", "var"):
        weights = torch.full((batch, k), 1.0 / k, dtype=phi.dtype, device=phi.device)
        if objective == "mean":
            return Aggregation(phi.mean(1), weights, names, phi, None, objective)
        sigma = phi.std(1, unbiased=False)
        return Aggregation(phi.mean(1) / (sigma + var_eps), weights, names, phi, None, objective)
    chunk = chunk_size(inputs, n_samples * batch, max_batch, memory_budget)
    phi, g = aggregation_matrices(model, inputs, t, read_scores(clean, t, "logit"), fns, phi, prep,
                                  objective=objective, n_samples=n_samples, radius=radius,
                                  fraction=float(subset_fraction), baseline=baseline, lam=lam,
                                  generator=make_generator(generator), chunk=chunk,
                                  explain=explain_chunk(inputs, (n_samples + (phi is None)) * batch, k, max_batch,
                                                        memory_budget))
    weights = simplex_qp(g, backend=backend).to(phi.dtype)
    return Aggregation(combine(weights, phi), weights, names, phi, g, objective)
