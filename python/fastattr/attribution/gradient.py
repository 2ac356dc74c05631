"""Gradient attributions: saliency, input × gradient, Integrated Gradients, SmoothGrad family.

All take ``(model, inputs, target=None, ...)`` and return a tensor shaped like ``inputs``. Only
input gradients are computed (parameters' ``requires_grad`` is switched off and restored), and
the model is run in chunks of at most ``max_batch`` inputs (or what ``memory_budget`` bytes
allow), so results do not depend on the chunk size.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..core import (ChunkGrid, Target, batch_coupled, check_count, check_flag, check_inputs, check_number, example_draws,
                    frozen_parameters, gradient_chunk, make_generator, model_entry, path_baselines, reference_inputs,
                    resolve_target, run_model, select)
from ..numerics import accum_dtype
from ..ops.path_ops import path_accumulate, path_interpolate

QUADRATURE = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


EXACT_GAUSS_LEGENDRE = 128  # up to here numpy's leggauss (Captum's nodes to the bit); beyond, O(n) memory


@functools.lru_cache(maxsize=16)
def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ξ (ascending) and weights ω of the n-point Gauss–Legendre rule on [−1, 1], cached.

    Up to :data:`EXACT_GAUSS_LEGENDRE` points numpy's ``leggauss`` (Captum's nodes); beyond, Newton on
    ``P_n`` from ``ξ_i ≈ cos(π (i + ¾) / (n + ½))``, ``ω_i = 2 / ((1 − ξ_i²) P_n'(ξ_i)²)``: O(n) memory
    where ``leggauss``'s companion matrix takes O(n²)."""
    if n <= EXACT_GAUSS_LEGENDRE:
        return np.polynomial.legendre.leggauss(n)
    x = np.cos(np.pi * (np.arange(n) + 0.75) / (n + 0.5))

    def legendre(x):
        p_prev, p = np.ones_like(x), x.copy()
        for k in range(2, n + 1):
            p_prev, p = p, ((2 * k - 1) * x * p - (k - 1) * p_prev) / k
        return p, n * (x * p - p_prev) / (x * x - 1)  # P_n, P_n'

    for _ in range(100):
        p, dp = legendre(x)
        step = p / dp
        x = x - step
        if np.abs(step).max() < 1e-15:
            break
    _, dp = legendre(x)
    w = 2.0 / ((1 - x * x) * dp * dp)
    return x[::-1].copy(), w[::-1].copy()


def quadrature(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """Nodes α_s in [0, 1] and weights w_s of the IG path integral (Captum's conventions, SPEC §2).

    riemann_left/right/middle: w = 1/n at α = linspace(0, 1−1/n) / linspace(1/n, 1) /
    linspace(1/(2n), 1−1/(2n)); riemann_trapezoid: α = linspace(0, 1, n), w = 1/n with the end
    weights halved; gausslegendre: α = (ξ+1)/2, w = ω/2 for the n-point Gauss–Legendre rule.
    """
    n = check_count(n_steps, "n_steps")
    if method == "gausslegendre":
        nodes, weights = gauss_legendre(n)
        return list(0.5 * (nodes + 1)), list(0.5 * weights)
    if method not in QUADRATURE:
        raise ValueError(f"method must be one of {QUADRATURE}, got {method!r}")
    if n == 1 and method != "riemann_trapezoid":
        alpha = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
        return [alpha], [1.0]
    if n == 1:
        raise ValueError("n_steps must be >= 2 for riemann_trapezoid")
    weights = [1.0 / n] * n
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
    elif method == "riemann_left":
        alphas = torch.linspace(0, 1 - 1 / n, n, dtype=torch.float64)
    elif method == "riemann_middle":
        alphas = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n, dtype=torch.float64)
    else:
        alphas = torch.linspace(1 / n, 1, n, dtype=torch.float64)
    return alphas.tolist(), weights


AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def _check_autocast(autocast) -> None:
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``device``'s type at ``dtype``, or a no-op context when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def target_gradients(model: Callable, x: torch.Tensor, target: torch.Tensor,
                     autocast: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂ Σ_i f_{t_i}(x_i) / ∂x, f_t(x))`` for one chunk (the gradient of row i is ∂f_{t_i}/∂x_i).

    ``autocast`` (a dtype): the forward runs under ``torch.autocast``; the gradient has ``x``'s dtype.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        with _autocast(x.device, autocast):
            scores = select(run_model(model, x), target)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad, scores.detach()


def _batched_gradients(model, x, target, chunk):
    grads = [target_gradients(model, x[e0:e1], target[e0:e1])[0]
             for e0, e1, _, _ in ChunkGrid(x.shape[0], 1, chunk)]
    return torch.cat(grads)


def prepare(model, inputs, target, max_batch=None, memory_budget=None):
    """Checks; the resolved targets, and the inputs detached (attributions never carry the caller's
    autograd graph)."""
    check_inputs(inputs)
    return resolve_target(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget), \
        inputs.detach()


@model_entry(gradients=True)
def saliency(model: Callable, inputs: torch.Tensor, target: Target = None, *, abs: bool = True,
             max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    """Saliency (Simonyan et al. 2014): ``|∂f_t/∂x|`` (``abs=False``: the signed gradient).

    Example::

        >>> a = fastattr.saliency(model, x, target=3)   # shape of x
    """
    check_flag(abs, "abs")
    t, inputs = prepare(model, inputs, target, max_batch, memory_budget)
    with frozen_parameters(model):
        g = _batched_gradients(model, inputs, t, gradient_chunk(model, inputs, inputs.shape[0], max_batch,
                                                                memory_budget))
    return g.abs() if abs else g


@model_entry(gradients=True)
def input_x_gradient(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                     max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    """Input × Gradient (Shrikumar et al. 2016): ``x ⊙ ∂f_t/∂x``."""
    grad = saliency(model, inputs, target, abs=False, max_batch=max_batch, memory_budget=memory_budget)
    return inputs.detach() * grad


def path_integral(grad_fn: Callable[[torch.Tensor, int, int], torch.Tensor], x: torch.Tensor,
                  base: torch.Tensor, alphas: list[float], weights: list[float], chunk: int,
                  multiply: bool) -> torch.Tensor:
    """The chunked IG loop shared by :func:`integrated_gradients` and Layer IG (SPEC §2, fused path
    accumulation): ``Σ_s w_s g(x' + α_s (x − x'))`` per example, times ``x − x'`` when ``multiply``.

    Chunks of :class:`~fastattr.core.ChunkGrid` (blocks of examples × whole steps, at most ``chunk``
    rows) are written by :func:`~fastattr.ops.path_interpolate` (step-major).
    ``grad_fn(points, e0, e1)`` returns the gradient at those points for examples ``e0:e1``, and
    :func:`~fastattr.ops.path_accumulate` adds ``Σ w_s g_s`` to a float32 sum (float64 for float64
    ``x``), fusing the multiply by ``x − x'`` into the last chunk. ``base`` is ``[B, ...]`` or
    ``[1, ...]``. Returns ``[B, ...]`` in the accumulation dtype.
    """
    batch, n = x.shape[0], len(alphas)
    acc_dtype = accum_dtype(x.dtype)
    alphas_t = torch.tensor(alphas, dtype=torch.float64, device=x.device)
    weights_t = torch.tensor(weights, dtype=acc_dtype, device=x.device)
    acc = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
    for e0, e1, s0, s1 in ChunkGrid(batch, n, chunk):
        xs, bs = x[e0:e1], base if base.shape[0] == 1 else base[e0:e1]
        diff = xs.to(acc_dtype) - bs.to(acc_dtype) if multiply and s1 == n else None
        grad = grad_fn(path_interpolate(xs, bs, alphas_t[s0:s1]), e0, e1)
        acc[e0:e1] = path_accumulate(acc[e0:e1], grad.view((s1 - s0,) + tuple(xs.shape)), weights_t[s0:s1], diff)
    return acc


@model_entry(gradients=True)
def integrated_gradients(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                         baselines: Union[None, float, torch.Tensor] = None, n_steps: int = 50,
                         method: str = "gausslegendre", multiply_by_inputs: bool = True,
                         return_convergence_delta: bool = False, autocast: Optional[torch.dtype] = None,
                         max_batch: Optional[int] = None, memory_budget: Optional[int] = None):
    """Integrated Gradients (Sundararajan et al. 2017).

    ``IG(x) = (x − x') ⊙ Σ_s w_s ∇f_t(x' + α_s (x − x'))`` with the quadrature ``method``
    (:data:`QUADRATURE`, Gauss–Legendre by default; Captum's nodes and weights). The path runs in
    chunks of whole steps (:func:`path_integral`): :func:`~fastattr.ops.path_interpolate` writes a
    chunk's inputs into one model batch, :func:`~fastattr.ops.path_accumulate` adds ``Σ w_s g_s`` to
    a float32 (float64 for float64 inputs) sum and fuses the multiply by ``(x − x')`` into the last
    chunk, so no more than one chunk of interpolated inputs or gradients is ever alive.
    ``multiply_by_inputs=False`` returns the weighted gradient sum.

    Args:
        baselines: None (zeros), a number, or a tensor broadcastable to ``inputs`` (one per example
            ``[B, ...]`` or one for all ``[...]``).
        return_convergence_delta: also return ``Σ IG − (f_t(x) − f_t(x'))`` per example.
        autocast: None, or ``torch.bfloat16`` / ``torch.float16``: every forward on the path runs
            under ``torch.autocast`` for the inputs' device type (mixed precision for float32
            models; float64 is never autocast). Gradients still reach the float32 accumulator and
            the result has the inputs' dtype; the convergence delta's ``f_t(x) − f_t(x')`` is
            computed without autocast.
        max_batch, memory_budget: model inputs per forward, or bytes for one chunk. Default: a
            quarter of free memory; on CUDA, divided by twice the activation bytes one input
            saves for backward (measured in a probe forward of two inputs).

    Example::

        >>> attr, delta = fastattr.integrated_gradients(model, x, target=y, n_steps=64,
        ...                                             return_convergence_delta=True)
    """
    check_flag(return_convergence_delta, "return_convergence_delta")
    check_flag(multiply_by_inputs, "multiply_by_inputs")
    t, inputs = prepare(model, inputs, target, max_batch, memory_budget)
    _check_autocast(autocast)
    alphas, weights = quadrature(method, n_steps)
    base = path_baselines(inputs, baselines)
    batch = inputs.shape[0]
    chunk = gradient_chunk(model, inputs, len(alphas) * batch, max_batch, memory_budget, autocast)

    def grad_fn(points: torch.Tensor, e0: int, e1: int) -> torch.Tensor:
        return target_gradients(model, points, t[e0:e1].repeat(points.shape[0] // (e1 - e0)), autocast)[0]

    with frozen_parameters(model):
        attr = path_integral(grad_fn, inputs, base, alphas, weights, chunk, multiply_by_inputs)
    attr = attr.to(inputs.dtype)
    if not return_convergence_delta:
        return attr
    with torch.no_grad():  # the baselines' forward first, as Captum's (a model with dropout draws in that order)
        start = select(run_model(model, base.expand_as(inputs)), t)
        gap = select(run_model(model, inputs), t) - start
    delta = attr.reshape(batch, -1).sum(1) - gap
    return attr, delta


VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _reduce(total: torch.Tensor, total_sq: torch.Tensor, n: int, variant: str) -> torch.Tensor:
    """mean (smoothgrad), mean of squares (smoothgrad_sq) or variance (vargrad) from running sums."""
    mean = total / n
    if variant == "smoothgrad":
        return mean
    if variant == "smoothgrad_sq":
        return total_sq / n
    return total_sq / n - mean * mean


def _noise_sigma(inputs: torch.Tensor, stdev: Optional[float], stdev_spread: float) -> torch.Tensor:
    if stdev is not None:
        stdev = check_number(stdev, "stdev")
        return torch.full((inputs.shape[0],), stdev, dtype=inputs.dtype, device=inputs.device)
    flat = inputs.reshape(inputs.shape[0], -1)
    return check_number(stdev_spread, "stdev_spread") * (flat.amax(1) - flat.amin(1))


@model_entry(gradients=True)
def smoothgrad(model: Callable, inputs: torch.Tensor, target: Target = None, *, n_samples: int = 50,
               stdev: Optional[float] = None, stdev_spread: float = 0.15, variant: str = "smoothgrad",
               abs: bool = False, generator=None, max_batch: Optional[int] = None,
               memory_budget: Optional[int] = None) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017) and relatives over N noisy copies ``x + ε_j``, ``ε_j ~ N(0, σ²)``.

    With ``g_j = ∇f_t(x + ε_j)`` (``|∇f_t(x + ε_j)|`` when ``abs=True``, i.e. SmoothGrad of absolute
    saliency, Captum's ``NoiseTunnel(Saliency)`` default): ``variant="smoothgrad"``: ``mean_j g_j``;
    ``"smoothgrad_sq"``: ``mean_j g_j²``; ``"vargrad"`` (Adebayo et al. 2018):
    ``mean_j g_j² − (mean_j g_j)²``.
    σ is ``stdev`` when given, else ``stdev_spread · (max x − min x)`` per example. Noise is drawn on
    the CPU from ``generator`` (a torch.Generator or an int seed; default seed 0), so results match
    on every device; or one seed or generator per input (a list), each input's noise drawn as it would be
    alone (then its map does not depend on the inputs beside it, but for the last bit of a batched
    gradient). :func:`smoothgrad_variants` gives several variants from the same draws.
    """
    _check_variant(variant)
    return smoothgrad_variants(model, inputs, target, variants=(variant,), n_samples=n_samples, stdev=stdev,
                               stdev_spread=stdev_spread, abs=abs, generator=generator, max_batch=max_batch,
                               memory_budget=memory_budget)[variant]


@model_entry(gradients=True)
def smoothgrad_variants(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                        variants: Sequence[str] = VARIANTS, n_samples: int = 50, stdev: Optional[float] = None,
                        stdev_spread: float = 0.15, abs: bool = False, generator=None,
                        max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> dict:
    """``{variant: map}`` for each of ``variants`` (:data:`VARIANTS`) from one set of ``n_samples``
    gradients: each map equals :func:`smoothgrad` with that ``variant`` and the same other arguments,
    for the cost of one."""
    check_flag(abs, "abs")
    if isinstance(variants, str) or not isinstance(variants, Sequence) or not variants:
        raise ValueError(f"variants must be a non-empty sequence of {VARIANTS}, got {variants!r}")
    for v in variants:
        _check_variant(v)
    n_samples = check_count(n_samples, "n_samples")
    t, inputs = prepare(model, inputs, target, max_batch, memory_budget)
    batch = inputs.shape[0]
    sample = example_draws(generator, batch)
    sigma = _noise_sigma(inputs, stdev, stdev_spread).view((-1,) + (1,) * (inputs.dim() - 1))
    chunk = gradient_chunk(model, inputs, n_samples * batch, max_batch, memory_budget)
    acc_dtype = accum_dtype(inputs.dtype)
    total = torch.zeros(inputs.shape, dtype=acc_dtype, device=inputs.device)
    total_sq = torch.zeros_like(total)
    with frozen_parameters(model):
        for e0, e1, j0, j1 in ChunkGrid(batch, n_samples, chunk):
            k = j1 - j0
            if e0 == 0:  # one full-batch draw per sample: the noise stream does not depend on the chunk size
                noise = torch.stack([sample(torch.randn, inputs.shape, dtype=inputs.dtype)
                                     for _ in range(k)]).to(inputs.device)
            noisy = (inputs[e0:e1] + sigma[e0:e1] * noise[:, e0:e1]).reshape((-1,) + tuple(inputs.shape[1:]))
            g, _ = target_gradients(model, noisy, t[e0:e1].repeat(k))
            g = g.reshape((k, e1 - e0) + tuple(inputs.shape[1:])).to(acc_dtype)
            total[e0:e1] += (g.abs() if abs else g).sum(0)
            total_sq[e0:e1] += (g * g).sum(0)
    return {v: _reduce(total, total_sq, n_samples, v).to(inputs.dtype) for v in variants}


def shap_draws(gen: torch.Generator, n_samples: int, n_refs: int, inputs: torch.Tensor, stdev: float):
    """fastattr's GradientSHAP stream, one sample at a time: a reference index per example, α ~ U(0, 1)
    per example, and (``stdev > 0``) Gaussian noise like ``inputs``; returns ``[N, B]``, ``[N, B]``,
    ``[N, B, ...]``."""
    batch = inputs.shape[0]
    index, alpha, noise = [], [], []
    for _ in range(n_samples):
        index.append(torch.randint(n_refs, (batch,), generator=gen))
        alpha.append(torch.rand(batch, generator=gen, dtype=torch.float64))
        if stdev > 0:
            noise.append(torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype) * stdev)
    return torch.stack(index), torch.stack(alpha), torch.stack(noise) if noise else None


def shap_from_draws(model: Callable, inputs: torch.Tensor, t: torch.Tensor, refs: torch.Tensor,
                    index: torch.Tensor, alpha: torch.Tensor, noise: Optional[torch.Tensor], *,
                    multiply_by_inputs: bool, noisy_difference: bool, return_convergence_delta: bool,
                    max_batch: Optional[int], memory_budget: Optional[int]):
    """GradientSHAP from given draws: ``index``/``alpha`` ``[N, B]``, ``noise`` ``[N, B, ...]`` or None."""
    n_samples, batch = index.shape
    shape = tuple(inputs.shape[1:])
    chunk = gradient_chunk(model, inputs, n_samples * batch, max_batch, memory_budget)
    acc_dtype = accum_dtype(inputs.dtype)
    total = torch.zeros(inputs.shape, dtype=acc_dtype, device=inputs.device)
    deltas = torch.zeros((n_samples, batch), dtype=inputs.dtype, device=inputs.device)
    coupled = batch_coupled(model)
    with frozen_parameters(model):
        for e0, e1, j0, j1 in ChunkGrid(batch, n_samples, chunk):
            rows = (j1 - j0) * (e1 - e0)
            # Rows are sample-major: (sample j0, examples e0:e1), (sample j0 + 1, ...), ...
            x = inputs[e0:e1].repeat((j1 - j0,) + (1,) * len(shape))
            b = refs[index[j0:j1, e0:e1].reshape(-1).to(refs.device)]
            noisy = x if noise is None else x + noise[j0:j1, e0:e1].reshape((rows,) + shape).to(x.device)
            a = alpha[j0:j1, e0:e1].reshape((rows,) + (1,) * len(shape)).to(x.device, x.dtype)
            tt = t[e0:e1].repeat(j1 - j0)
            # a model with dropout sees Captum's rows, example-major, and draws their masks in that order
            order = torch.arange(rows, device=x.device).view(j1 - j0, e1 - e0).T.reshape(-1) if coupled else None
            back = None if order is None else torch.argsort(order)

            def rows_of(fn, z: torch.Tensor) -> torch.Tensor:
                return fn(z, tt) if order is None else fn(z[order], tt[order])[back]

            def scores(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
                return select(run_model(model, z), u)

            g = rows_of(lambda z, u: target_gradients(model, z, u)[0], b + a * (noisy - b))
            end = noisy if noisy_difference else x
            part = g.to(acc_dtype) * (end - b).to(acc_dtype) if multiply_by_inputs else g.to(acc_dtype)
            total[e0:e1] += part.view((j1 - j0, e1 - e0) + shape).sum(0)
            if return_convergence_delta:
                with torch.no_grad():  # the baselines' forward first, as Captum's
                    start = rows_of(scores, b)
                    gap = rows_of(scores, end) - start
                deltas[j0:j1, e0:e1] = (part.reshape(rows, -1).sum(1) - gap).view(j1 - j0, e1 - e0)
    attr = (total / n_samples).to(inputs.dtype)
    return (attr, deltas.T.contiguous()) if return_convergence_delta else attr


@model_entry(gradients=True)
def gradient_shap(model: Callable, inputs: torch.Tensor, target: Target = None, *, baselines: torch.Tensor,
                  n_samples: int = 5, stdev: float = 0.0, generator=None, multiply_by_inputs: bool = True,
                  noisy_difference: bool = False, return_convergence_delta: bool = False,
                  max_batch: Optional[int] = None, memory_budget: Optional[int] = None):
    """GradientSHAP (Lundberg & Lee 2017; SPEC §2).

    For j = 1..N and every example: a baseline ``b_j`` drawn uniformly from ``baselines``
    (``[M, ...]``), ``α_j ~ U(0, 1)`` and noise ``ε_j ~ N(0, stdev²)``;
    ``attr = mean_j (x − b_j) ⊙ ∇f_t(b_j + α_j (x + ε_j − b_j))``.
    ``noisy_difference=True`` multiplies by ``x + ε_j − b_j`` instead (as Captum's ``GradientShap``
    and SHAP's ``GradientExplainer`` do; the same when ``stdev=0``); ``multiply_by_inputs=False``
    returns ``mean_j ∇f_t(...)``. All draws come from ``generator`` (torch.Generator or int seed;
    default seed 0) on the CPU, one sample at a time, so the result does not depend on the chunk
    size or the device.

    Args:
        return_convergence_delta: also return ``[B, N]`` deltas ``Σ attr_j − (f_t(e_j) − f_t(b_j))``
            per example and sample, ``attr_j`` the sample's term and ``e_j`` its end point
            (``x``, or ``x + ε_j`` with ``noisy_difference``).

    Example::

        >>> attr = fastattr.attribution.gradient_shap(model, x, target=y, baselines=refs, n_samples=20)
    """
    n_samples = check_count(n_samples, "n_samples")
    if isinstance(stdev, bool) or not isinstance(stdev, (int, float)) or stdev < 0:
        raise ValueError(f"stdev must be a number >= 0, got {stdev!r}")
    t, inputs = prepare(model, inputs, target, max_batch, memory_budget)
    refs = reference_inputs(inputs, baselines)
    gen = make_generator(generator)
    index, alpha, noise = shap_draws(gen, n_samples, refs.shape[0], inputs, float(stdev))
    return shap_from_draws(model, inputs, t, refs, index, alpha, noise,
                           multiply_by_inputs=multiply_by_inputs, noisy_difference=noisy_difference,
                           return_convergence_delta=return_convergence_delta, max_batch=max_batch,
                           memory_budget=memory_budget)


@model_entry(gradients=True)
def expected_gradients(model: Callable, inputs: torch.Tensor, target: Target = None, *, references: torch.Tensor,
                       n_samples: int = 50, generator=None, max_batch: Optional[int] = None,
                       memory_budget: Optional[int] = None) -> torch.Tensor:
    """Expected Gradients (Erion et al. 2021): GradientSHAP with baselines drawn from a reference
    data set ``references`` ``[M, ...]`` and no input noise:
    ``attr = mean_j (x − r_j) ⊙ ∇f_t(r_j + α_j (x − r_j))``, ``r_j`` uniform over the references,
    ``α_j ~ U(0, 1)``."""
    if isinstance(inputs, torch.Tensor):
        reference_inputs(inputs, references, "references")
    return gradient_shap(model, inputs, target, baselines=references, n_samples=n_samples, stdev=0.0,
                         generator=generator, max_batch=max_batch, memory_budget=memory_budget)


@model_entry
def noise_tunnel(method: Callable, model: Callable, inputs: torch.Tensor, target: Target = None, *,
                 n_samples: int = 10, stdev: Optional[float] = None, stdev_spread: float = 0.15,
                 variant: str = "smoothgrad", generator=None, **method_kwargs) -> torch.Tensor:
    """Noise tunnel around any attribution method (Smilkov et al. 2017; Adebayo et al. 2018).

    ``e_j = method(model, x + ε_j, t, **method_kwargs)``, ``ε_j ~ N(0, σ²)`` (σ as in :func:`smoothgrad`);
    returns ``mean_j e_j`` (``"smoothgrad"``), ``mean_j e_j²`` (``"smoothgrad_sq"``) or their variance
    (``"vargrad"``). ``integrated_gradients`` inside gives SmoothGrad-IG ("SIG" in the SEA-NN paper).
    The target is resolved once on the clean inputs, so every noisy copy explains the same class.
    """
    _check_variant(variant)
    n_samples = check_count(n_samples, "n_samples")
    if not callable(method):
        raise TypeError(f"method must be an attribution function, got {type(method).__name__}")
    t, inputs = prepare(model, inputs, target, method_kwargs.get("max_batch"), method_kwargs.get("memory_budget"))
    gen = make_generator(generator)
    sigma = _noise_sigma(inputs, stdev, stdev_spread).view((-1,) + (1,) * (inputs.dim() - 1))
    total = total_sq = None
    for _ in range(n_samples):
        noise = torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype).to(inputs.device)
        e = method(model, inputs + sigma * noise, t, **method_kwargs)
        e = e.to(accum_dtype(e.dtype))
        total = e.clone() if total is None else total + e
        total_sq = e * e if total_sq is None else total_sq + e * e
    return _reduce(total, total_sq, n_samples, variant).to(inputs.dtype)
