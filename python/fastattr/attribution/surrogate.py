"""Surrogate attributions (SPEC §10): KernelSHAP and LIME.

Both explain ``M`` features (the segments of a ``feature_mask``, or every element) through
coalitions ``z ∈ {0, 1}^M``: the model is run on ``x̃(z) = where(z[ids], x, x')`` (``x'`` the
baseline) and a linear surrogate of ``v(z) = f_t(x̃(z))`` is fitted. Every coalition of every example
goes through the perturbation engine in memory-sized chunks, and every example's surrogate is fitted
in one batched solve (float64), where Captum draws one coalition per Python iteration, runs the
model one example at a time and calls scikit-learn per example.

- :func:`kernel_shap` (Lundberg & Lee 2017): weighted least squares with the Shapley kernel
  ``π(z) = (M − 1) / (C(M, |z|)·|z|·(M − |z|))`` and the efficiency constraint
  ``Σφ = f_t(x) − f_t(x')`` eliminated exactly (the last feature's value is what the others leave).
  With all ``2^M − 2`` coalitions (the default for ``M ≤ 12``) the solution is the exact Shapley
  values; otherwise coalitions are drawn from the kernel (size ``k`` with probability
  ``∝ (M − 1) / (k (M − k))``, then a uniform subset), paired with their complements, weight 1.
- :func:`lime` (Ribeiro et al. 2016): Bernoulli(0.5) coalitions per example, weights
  ``exp(−d(x, x̃)² / (2 w²))`` of the cosine (or Euclidean) distance in input space, and a Lasso
  (scikit-learn's objective ``1/(2 Σπ) Σ π (v − b − zβ)² + α‖β‖₁``), ridge or least-squares surrogate
  with an intercept.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Union

import torch

from ..core import (Target, check_count, check_flag, check_number, forward_chunks, make_generator, model_entry,
                    read_scores)
from .perturbation import Baselines, broadcast_mask, like_inputs, masked_scores, perturbation_setup

__all__ = ["SURROGATES", "kernel_shap", "lime"]

SURROGATES = ("lasso", "ridge", "ols")
DISTANCES = ("cosine", "euclidean")
EXACT_FEATURES = 12  # kernel_shap enumerates every coalition up to this many features by default


def feature_ids(inputs: torch.Tensor, feature_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``(ids [1 or B, D], M)``: each element's feature in ``0..M-1``. ``feature_mask`` holds integer ids
    ``0..M-1`` without gaps, broadcastable to ``inputs`` (None: every element its own feature); at
    least 2 features."""
    size = inputs[0].numel()
    if feature_mask is None:
        ids, m = torch.arange(size, device=inputs.device)[None], size
    else:
        mask = broadcast_mask(inputs, feature_mask)
        ids = mask.reshape(mask.shape[0], size).long()
        present = torch.unique(ids)
        m = int(present[-1]) + 1
        if int(present[0]) != 0 or present.numel() != m:
            missing = sorted(set(range(m)) - set(present.tolist()))[:5] if int(present[0]) >= 0 else []
            raise ValueError(f"feature_mask must hold the ids 0..M-1 without gaps, got ids from {int(present[0])} "
                             f"to {m - 1}" + (f" without {missing}" if missing else ""))
    if m < 2:
        raise ValueError(f"feature_mask defines {m} feature(s); a surrogate attribution needs at least 2")
    return ids, m


def _spread(values: torch.Tensor, ids: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Per-feature values ``[B, M]`` as a map like ``inputs`` (each element its feature's value)."""
    return like_inputs(values.gather(1, ids.expand(inputs.shape[0], -1)), inputs)


def _coalition_masks(coalitions: torch.Tensor, ids: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """The engine's masks (True: the baseline) of coalitions ``[B or 1, S, M]`` (True: kept from x),
    built for steps ``k0..k1-1`` as ``[k, B or 1, D]``."""
    def masks(k0: int, k1: int) -> torch.Tensor:
        z = coalitions[:, k0:k1].transpose(0, 1)
        rows = max(z.shape[1], ids.shape[0])
        index = ids.expand(rows, -1).unsqueeze(0).expand(k1 - k0, -1, -1)
        return ~z.expand(-1, rows, -1).gather(2, index)
    return masks


def _check_coalitions(coalitions, batch: int, m: int, per_example: bool) -> torch.Tensor:
    """Explicit coalitions as ``[1 or B, S, M]`` bool (``[B, S, M]`` only where ``per_example``)."""
    if not isinstance(coalitions, torch.Tensor) or coalitions.dtype != torch.bool:
        raise TypeError("coalitions must be a bool tensor (True: the feature is kept from the input)")
    z = coalitions.unsqueeze(0) if coalitions.dim() == 2 else coalitions
    rows = (1, batch) if per_example else (1,)
    if z.dim() != 3 or z.shape[2] != m or z.shape[0] not in rows or z.shape[1] < 1:
        want = f"[S, {m}]" + (f" or [{batch}, S, {m}]" if per_example else "")
        raise ValueError(f"coalitions must have shape {want}, got {tuple(coalitions.shape)}")
    return z


def shapley_coalitions(m: int, n_samples: Optional[int], paired: bool, generator: torch.Generator,
                       least_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(coalitions [S, M] bool, weights [S] float64, exact)``: every coalition but the empty and the
    full one with the Shapley kernel weight (``exact``), or ``n_samples`` drawn from the kernel with
    weight 1 (paired with their complements when ``paired``); fewer than ``M + 1`` only with
    ``least_norm``."""
    every = 2 ** m - 2
    if (n_samples is None and m <= EXACT_FEATURES) or (n_samples is not None and n_samples >= every):
        codes = torch.arange(1, 2 ** m - 1)
        z = (codes[:, None] >> torch.arange(m)) & 1 == 1
        k = z.sum(1)
        binomial = torch.tensor([math.comb(m, j) for j in range(m + 1)], dtype=torch.float64)
        weights = (m - 1) / (binomial[k] * k * (m - k))
        return z, weights, True
    n = 2 * m + 2048 if n_samples is None else n_samples
    if n < m + 1 and not least_norm:
        raise ValueError(f"n_samples must be at least M + 1 = {m + 1} coalitions for {m} features, got {n} "
                         "(underdetermined='least_norm' takes fewer)")
    draws = -(-n // 2) if paired else n
    k = torch.arange(1, m, dtype=torch.float64)
    sizes = torch.multinomial((m - 1) / (k * (m - k)), draws, replacement=True, generator=generator) + 1
    keys = torch.rand(draws, m, generator=generator)
    z = keys <= keys.sort(1).values.gather(1, (sizes - 1)[:, None])  # the k smallest keys: a uniform k-subset
    if paired:
        z = torch.cat([z, ~z])[:n]
    return z, torch.ones(n, dtype=torch.float64), False


def shapley_solve(z: torch.Tensor, weights: torch.Tensor, values: torch.Tensor, full: torch.Tensor,
                  empty: torch.Tensor) -> torch.Tensor:
    """``φ [B, M]`` minimising ``Σ_s π_s (v_s − v(∅) − z_s·φ)²`` subject to ``Σφ = v(full) − v(∅)``,
    the constraint eliminated exactly (``φ_M = Δ − Σ_{j<M} φ_j``); coalitions ``z [S, M]`` shared,
    ``values [B, S]``. One float64 normal-equation solve for every example (pseudo-inverse, so too few
    distinct coalitions give the least-norm solution)."""
    z, w = z.double(), weights.double().to(values.device)
    z = z.to(values.device)
    delta = (full - empty).double()
    y = values.double() - empty.double()[:, None] - z[:, -1][None] * delta[:, None]
    design = z[:, :-1] - z[:, -1:]
    gram = design.T @ (w[:, None] * design)
    head = (torch.linalg.pinv(gram, hermitian=True) @ ((design * w[:, None]).T @ y.T)).T
    return torch.cat([head, (delta - head.sum(1))[:, None]], 1)


def _soft(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0.0)


def fit_surrogate(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, surrogate: str, alpha: float, *,
                  max_iter: int = 10000, tol: float = 1e-10, memory: int = 256 << 20) -> torch.Tensor:
    """Coefficients ``[B, M]`` of a weighted linear fit with intercept, per example, all at once:
    samples ``x [B, S, M]``, targets ``y [B, S]``, weights ``w [B, S]`` (each example's summing to more
    than 0), in float64. The objectives are scikit-learn's: ``"lasso"`` ``1/(2 Σw) Σ w (y − b − xβ)² +
    α‖β‖₁``, ``"ridge"`` ``Σ w (y − b − xβ)² + α‖β‖²``, ``"ols"`` least squares (least-norm when
    rank-deficient, as ridge with ``α = 0``). Examples go in groups whose ``[M, M]`` Gram matrices fit
    in ``memory`` bytes."""
    per = max(1, memory // max(1, 8 * (x.shape[2] ** 2 + 3 * x.shape[1] * x.shape[2])))
    if x.shape[0] > per:
        return torch.cat([fit_surrogate(x[i:i + per], y[i:i + per], w[i:i + per], surrogate, alpha,
                                        max_iter=max_iter, tol=tol) for i in range(0, x.shape[0], per)])
    x, y, w = x.double(), y.double(), w.double()
    share = w / w.sum(1, keepdim=True)
    xc = x - (share[..., None] * x).sum(1, keepdim=True)
    yc = y - (share * y).sum(1, keepdim=True)
    if surrogate in ("ridge", "ols"):
        gram = xc.transpose(1, 2) @ (w[..., None] * xc)
        rhs = (xc.transpose(1, 2) @ (w * yc)[..., None])[..., 0]
        if surrogate == "ridge" and alpha > 0:
            return torch.linalg.solve(gram + alpha * torch.eye(x.shape[2], dtype=x.dtype, device=x.device), rhs)
        return (torch.linalg.pinv(gram, hermitian=True) @ rhs[..., None])[..., 0]
    gram = xc.transpose(1, 2) @ (share[..., None] * xc)
    corr = (xc.transpose(1, 2) @ (share * yc)[..., None])[..., 0]
    return _lasso(gram, corr, alpha, max_iter, tol)


def _lasso(gram: torch.Tensor, corr: torch.Tensor, alpha: float, max_iter: int, tol: float) -> torch.Tensor:
    """``argmin ½ βᵀGβ − cᵀβ + α‖β‖₁`` for every example: cyclic coordinate descent with an active set
    (sweeps over the coordinates that moved, a full sweep to confirm), until no coefficient moves by
    more than ``tol`` × the largest; a warning if ``max_iter`` sweeps do not get there."""
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    safe = torch.where(diag > 0, diag, torch.ones_like(diag))
    beta = torch.zeros_like(corr)
    active = list(range(corr.shape[1]))
    full = True
    for _ in range(max_iter):
        moved = torch.zeros(corr.shape[0], dtype=corr.dtype, device=corr.device)
        changed = []
        for j in active:
            old = beta[:, j].clone()
            r = corr[:, j] - (gram[:, j] * beta).sum(1) + diag[:, j] * old
            new = torch.where(diag[:, j] > 0, _soft(r, alpha) / safe[:, j], torch.zeros_like(r))
            beta[:, j] = new
            step = (new - old).abs()
            moved = torch.maximum(moved, step)
            if bool((step > 0).any()):
                changed.append(j)
        done = bool((moved <= tol * beta.abs().amax(1).clamp(min=1e-300)).all())
        if done and full:
            return beta
        full = done  # converged on the active set: confirm with a sweep over every coordinate
        active = list(range(corr.shape[1])) if done or not changed else changed
    warnings.warn(f"the Lasso did not converge in {max_iter} sweeps (tol {tol:g}); the coefficients are "
                  "approximate", RuntimeWarning, stacklevel=3)
    return beta


def _lime_weights(inputs: torch.Tensor, base: torch.Tensor, ids: torch.Tensor, m: int, z: torch.Tensor,
                  distance: str, width: float) -> torch.Tensor:
    """``exp(−d(x, x̃)² / (2 w²))`` for coalitions ``z [B, S, M]``, the distance taken between the
    flattened input and its perturbed copy, from per-feature sums (no copy is built)."""
    batch = inputs.shape[0]
    x = inputs.reshape(batch, -1).double()
    b = base.expand_as(inputs).reshape(batch, -1).double()
    index = ids.expand(batch, -1)

    def per_feature(values):
        return torch.zeros(batch, m, dtype=torch.float64, device=x.device).scatter_add_(1, index, values)

    keep = z.double()
    if distance == "cosine":
        xx, xb, bb = per_feature(x * x), per_feature(x * b), per_feature(b * b)
        dot = (keep * xx[:, None] + (1 - keep) * xb[:, None]).sum(2)
        norm = (keep * xx[:, None] + (1 - keep) * bb[:, None]).sum(2).sqrt()
        d = 1 - dot / (xx.sum(1, keepdim=True).sqrt() * norm).clamp(min=1e-8)
    else:
        d = ((1 - keep) * per_feature((x - b) ** 2)[:, None]).sum(2).sqrt()
    return torch.exp(-d * d / (2 * width * width))


@model_entry
def kernel_shap(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                feature_mask: Optional[torch.Tensor] = None, baselines: Baselines = 0.0,
                n_samples: Optional[int] = None, paired: bool = True, generator=None,
                coalitions: Optional[torch.Tensor] = None, return_input_shape: bool = True, score: str = "logit",
                underdetermined: str = "raise", max_batch: Optional[int] = None,
                memory_budget: Optional[int] = None, compile: Union[bool, dict] = False) -> torch.Tensor:
    """KernelSHAP values (Lundberg & Lee 2017, SPEC §10; see the module docstring) of the ``M`` features
    of ``feature_mask`` (integer ids ``0..M-1`` broadcastable to ``inputs``; None: every element).

    ``n_samples=None``: every coalition when ``M ≤ 12`` (the exact Shapley values), else
    ``2M + 2048`` coalitions drawn from ``generator`` (seed 0 by default); a given ``n_samples``
    (at least ``M + 1``) is drawn, or enumerated when it covers all ``2^M − 2``. ``paired``: each draw
    with its complement; fewer than ``M + 1`` draws raise, unless ``underdetermined="least_norm"``
    (the least-norm solution, what Captum's least squares gives). ``coalitions``: explicit ones
    ``[S, M]`` (bool, True: kept from the input; weight 1 each), e.g. to replay another library's
    draws. ``Σφ = f_t(x) − f_t(x')`` holds exactly.

    Returns a map like ``inputs`` (each element its feature's value), or ``[B, M]`` with
    ``return_input_shape=False``. Example::

        >>> from fastattr.core import patch_segments
        >>> phi = fastattr.kernel_shap(model, x, y, feature_mask=patch_segments((8, 8), 2))   # 16 patches
    """
    paired = check_flag(paired, "paired")
    return_input_shape = check_flag(return_input_shape, "return_input_shape")
    if underdetermined not in ("raise", "least_norm"):
        raise ValueError(f"underdetermined must be 'raise' or 'least_norm', got {underdetermined!r}")
    ids, m = feature_ids(inputs, feature_mask)
    gen = make_generator(generator)
    if coalitions is not None:
        z = _check_coalitions(coalitions, inputs.shape[0], m, per_example=False)[0]
        weights = torch.ones(z.shape[0], dtype=torch.float64)
    else:
        n_samples = check_count(n_samples, "n_samples", optional=True)
        z, weights, _ = shapley_coalitions(m, n_samples, paired, gen, underdetermined == "least_norm")
    t, full, base, chunk = perturbation_setup(model, inputs, target, baselines, score, z.shape[0], max_batch,
                                              memory_budget, generator=gen)
    empty = read_scores(forward_chunks(model, base.expand_as(inputs).contiguous(), chunk, any_rank=False), t, score)
    values = masked_scores(model, inputs, base, t, z.shape[0], _coalition_masks(z.to(inputs.device)[None], ids),
                           chunk, score, compile)
    phi = shapley_solve(z, weights, values, full, empty).to(values.dtype)
    return _spread(phi, ids, inputs) if return_input_shape else phi


@model_entry
def lime(model: Callable, inputs: torch.Tensor, target: Target = None, *,
         feature_mask: Optional[torch.Tensor] = None, baselines: Baselines = 0.0, n_samples: int = 1000,
         kernel_width: float = 0.25, distance: str = "cosine", surrogate: str = "lasso", alpha: float = 0.01,
         generator=None, coalitions: Optional[torch.Tensor] = None, return_input_shape: bool = True,
         score: str = "logit", max_batch: Optional[int] = None, memory_budget: Optional[int] = None,
         compile: Union[bool, dict] = False) -> torch.Tensor:
    """LIME (Ribeiro et al. 2016, SPEC §10; see the module docstring): the coefficients of a weighted
    linear surrogate of ``f_t`` over ``n_samples`` Bernoulli(0.5) coalitions of the ``M`` features of
    ``feature_mask`` (integer ids ``0..M-1``; None: every element), drawn per example from
    ``generator`` (seed 0 by default), or the given ``coalitions`` (``[S, M]`` or ``[B, S, M]`` bool,
    True: kept from the input).

    Weights ``exp(−d²/(2·kernel_width²))`` of the ``distance`` (``"cosine"`` or ``"euclidean"``)
    between the input and each perturbed copy; ``kernel_width=0.25`` is ``lime_image``'s kernel
    (Captum's ``Lime`` uses 1.0). ``surrogate``: ``"lasso"`` (scikit-learn's ``Lasso(alpha)``),
    ``"ridge"`` (``Ridge(alpha)``) or ``"ols"``, each with an intercept, fitted for every example in
    one batched solve. Returns a map like ``inputs``, or ``[B, M]`` with ``return_input_shape=False``.
    """
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    kernel_width = check_number(kernel_width, "kernel_width", minimum=0.0)
    if kernel_width == 0:
        raise ValueError("kernel_width must be > 0")
    alpha = check_number(alpha, "alpha")
    return_input_shape = check_flag(return_input_shape, "return_input_shape")
    ids, m = feature_ids(inputs, feature_mask)
    batch, gen = inputs.shape[0], make_generator(generator)
    if coalitions is not None:
        z = _check_coalitions(coalitions, batch, m, per_example=True).expand(batch, -1, -1)
    else:
        n_samples = check_count(n_samples, "n_samples", minimum=2)
        z = torch.rand(batch, n_samples, m, generator=gen) < 0.5
    z = z.to(inputs.device)
    t, _, base, chunk = perturbation_setup(model, inputs, target, baselines, score, z.shape[1], max_batch,
                                           memory_budget, generator=gen)
    values = masked_scores(model, inputs, base, t, z.shape[1], _coalition_masks(z, ids), chunk, score, compile)
    weights = _lime_weights(inputs, base, ids, m, z, distance, kernel_width)
    if bool((weights.sum(1) == 0).any()):
        raise ValueError(f"kernel_width={kernel_width:g} gives every coalition of some input weight 0 (the "
                         f"{distance} distances are too large for it); use a larger kernel_width")
    coef = fit_surrogate(z, values, weights, surrogate, alpha).to(values.dtype)
    return _spread(coef, ids, inputs) if return_input_shape else coef
