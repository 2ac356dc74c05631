"""Gradient attributions: saliency, input × gradient, Integrated Gradients, SmoothGrad family.

All take ``(model, inputs, target=None, ...)`` and return a tensor shaped like ``inputs``. Only
input gradients are computed (parameters' ``requires_grad`` is switched off and restored), and
the model is run in chunks of at most ``max_batch`` inputs (or what ``memory_budget`` bytes
allow), so results do not depend on the chunk size.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch

from ..ops.path_ops import path_accumulate, path_interpolate
from ._common import Target, check_inputs, check_model, chunk_size, frozen_parameters, resolve_target, select

QUADRATURE = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """Nodes α_s in [0, 1] and weights w_s of the IG path integral (Captum's conventions, SPEC §2).

    riemann_left/right/middle: w = 1/n at α = linspace(0, 1−1/n) / linspace(1/n, 1) /
    linspace(1/(2n), 1−1/(2n)); riemann_trapezoid: α = linspace(0, 1, n), w = 1/n with the end
    weights halved; gausslegendre: α = (ξ+1)/2, w = ω/2 for the n-point Gauss–Legendre rule.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
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


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def target_gradients(model: Callable, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∂ Σ_i f_{t_i}(x_i) / ∂x, f_t(x))`` for one chunk (the gradient of row i is ∂f_{t_i}/∂x_i)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        scores = select(model(x), target)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad, scores.detach()


def _batched_gradients(model, x, target, chunk):
    grads = [target_gradients(model, x[i:i + chunk], target[i:i + chunk])[0] for i in range(0, x.shape[0], chunk)]
    return torch.cat(grads)


def _prepare(model, inputs, target):
    check_model(model)
    check_inputs(inputs)
    return resolve_target(model, inputs, target)


def saliency(model: Callable, inputs: torch.Tensor, target: Target = None, *, abs: bool = True,
             max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    """Saliency (Simonyan et al. 2014): ``|∂f_t/∂x|`` (``abs=False``: the signed gradient).

    Example::

        >>> a = fastattr.saliency(model, x, target=3)   # shape of x
    """
    t = _prepare(model, inputs, target)
    with frozen_parameters(model):
        g = _batched_gradients(model, inputs, t, chunk_size(inputs, inputs.shape[0], max_batch, memory_budget))
    return g.abs() if abs else g


def input_x_gradient(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                     max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    """Input × Gradient (Shrikumar et al. 2016): ``x ⊙ ∂f_t/∂x``."""
    return inputs * saliency(model, inputs, target, abs=False, max_batch=max_batch, memory_budget=memory_budget)


def _baselines(inputs: torch.Tensor, baselines) -> torch.Tensor:
    """Baselines as ``[B, ...]`` (one per example) or ``[1, ...]`` (one shared by all)."""
    if baselines is None:
        return torch.zeros((1,) + tuple(inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device)
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return torch.full((1,) + tuple(inputs.shape[1:]), float(baselines), dtype=inputs.dtype, device=inputs.device)
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(f"baselines must be None, a number or a tensor, got {type(baselines).__name__}")
    b = baselines.to(device=inputs.device, dtype=inputs.dtype)
    if b.dim() < inputs.dim():
        b = b.reshape((1,) * (inputs.dim() - b.dim()) + tuple(b.shape))
    try:
        shape = torch.broadcast_shapes(b.shape, inputs.shape)
    except RuntimeError:
        shape = None
    if shape != inputs.shape:
        raise ValueError(f"baselines of shape {tuple(baselines.shape)} do not broadcast to inputs of shape "
                         f"{tuple(inputs.shape)} (give one per example, one for all, or a scalar)")
    b = b.expand((b.shape[0],) + tuple(inputs.shape[1:])).contiguous()
    if not torch.isfinite(b).all():
        raise ValueError("baselines contain NaN or Inf")
    return b


def integrated_gradients(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                         baselines: Union[None, float, torch.Tensor] = None, n_steps: int = 50,
                         method: str = "gausslegendre", multiply_by_inputs: bool = True,
                         return_convergence_delta: bool = False, max_batch: Optional[int] = None,
                         memory_budget: Optional[int] = None):
    """Integrated Gradients (Sundararajan et al. 2017).

    ``IG(x) = (x − x') ⊙ Σ_s w_s ∇f_t(x' + α_s (x − x'))`` with the quadrature ``method``
    (:data:`QUADRATURE`, Gauss–Legendre by default; Captum's nodes and weights). The path runs in
    chunks of whole steps: :func:`~fastattr.ops.path_interpolate` writes a chunk's inputs into one
    model batch, :func:`~fastattr.ops.path_accumulate` adds ``Σ w_s g_s`` to a float32 (float64
    for float64 inputs) sum and fuses the multiply by ``(x − x')`` into the last chunk, so no more
    than one chunk of interpolated inputs or gradients is ever alive.
    ``multiply_by_inputs=False`` returns the weighted gradient sum.

    Args:
        baselines: None (zeros), a number, or a tensor broadcastable to ``inputs`` (one per example
            ``[B, ...]`` or one for all ``[...]``).
        return_convergence_delta: also return ``Σ IG − (f_t(x) − f_t(x'))`` per example.

    Example::

        >>> attr, delta = fastattr.integrated_gradients(model, x, target=y, n_steps=64,
        ...                                             return_convergence_delta=True)
    """
    t = _prepare(model, inputs, target)
    alphas, weights = quadrature(method, n_steps)
    base = _baselines(inputs, baselines)
    batch, n = inputs.shape[0], len(alphas)
    chunk = chunk_size(inputs, n * batch, max_batch, memory_budget)
    acc_dtype = _accum_dtype(inputs.dtype)
    alphas_t = torch.tensor(alphas, dtype=torch.float64, device=inputs.device)
    weights_t = torch.tensor(weights, dtype=acc_dtype, device=inputs.device)
    blocks = []
    with frozen_parameters(model):
        for e0 in range(0, batch, chunk):
            e1 = min(batch, e0 + chunk)
            x, b = inputs[e0:e1], base if base.shape[0] == 1 else base[e0:e1]
            diff = x.to(acc_dtype) - b.to(acc_dtype)
            steps = max(1, chunk // (e1 - e0))
            acc = torch.zeros(x.shape, dtype=acc_dtype, device=inputs.device)
            for s0 in range(0, n, steps):
                s1 = min(n, s0 + steps)
                path = path_interpolate(x, b, alphas_t[s0:s1])
                grad, _ = target_gradients(model, path, t[e0:e1].repeat(s1 - s0))
                last = s1 == n and multiply_by_inputs
                acc = path_accumulate(acc, grad.view((s1 - s0,) + tuple(x.shape)), weights_t[s0:s1],
                                      diff if last else None)
            blocks.append(acc)
    attr = torch.cat(blocks).to(inputs.dtype)
    if not return_convergence_delta:
        return attr
    with torch.no_grad():
        gap = select(model(inputs), t) - select(model(base.expand_as(inputs)), t)
    delta = attr.reshape(batch, -1).sum(1) - gap
    return attr, delta


VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _check_count(n_samples, name: str = "n_samples") -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n_samples!r}")


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
        if stdev < 0:
            raise ValueError(f"stdev must be >= 0, got {stdev}")
        return torch.full((inputs.shape[0],), float(stdev), dtype=inputs.dtype, device=inputs.device)
    flat = inputs.reshape(inputs.shape[0], -1)
    return stdev_spread * (flat.amax(1) - flat.amin(1))


def _generator(generator) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None or (isinstance(generator, int) and not isinstance(generator, bool)):
        return torch.Generator().manual_seed(0 if generator is None else generator)
    raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")


def smoothgrad(model: Callable, inputs: torch.Tensor, target: Target = None, *, n_samples: int = 50,
               stdev: Optional[float] = None, stdev_spread: float = 0.15, variant: str = "smoothgrad",
               generator=None, max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017) and relatives over N noisy copies ``x + ε_j``, ``ε_j ~ N(0, σ²)``.

    ``variant="smoothgrad"``: ``mean_j ∇f_t(x + ε_j)``; ``"smoothgrad_sq"``: mean of squared gradients;
    ``"vargrad"`` (Adebayo et al. 2018): their variance. σ is ``stdev`` when given, else
    ``stdev_spread · (max x − min x)`` per example. Noise is drawn on the CPU from ``generator``
    (a torch.Generator or an int seed; default seed 0), so results match on every device.
    """
    _check_variant(variant)
    _check_count(n_samples)
    t = _prepare(model, inputs, target)
    gen = _generator(generator)
    sigma = _noise_sigma(inputs, stdev, stdev_spread).view((-1,) + (1,) * (inputs.dim() - 1))
    batch = inputs.shape[0]
    chunk = chunk_size(inputs, n_samples * batch, max_batch, memory_budget)
    acc_dtype = _accum_dtype(inputs.dtype)
    total = torch.zeros(inputs.shape, dtype=acc_dtype, device=inputs.device)
    total_sq = torch.zeros_like(total)
    block = min(batch, chunk)
    per = max(1, chunk // block)
    with frozen_parameters(model):
        for j0 in range(0, n_samples, per):
            k = min(per, n_samples - j0)
            # One full-batch draw per sample: the noise stream does not depend on the chunk size.
            noise = [torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype).to(inputs.device)
                     for _ in range(k)]
            for e0 in range(0, batch, block):
                e1 = min(batch, e0 + block)
                x, s = inputs[e0:e1], sigma[e0:e1]
                noisy = torch.cat([x + s * nz[e0:e1] for nz in noise])
                g, _ = target_gradients(model, noisy, t[e0:e1].repeat(k))
                g = g.reshape((k, e1 - e0) + tuple(inputs.shape[1:])).to(acc_dtype)
                total[e0:e1] += g.sum(0)
                total_sq[e0:e1] += (g * g).sum(0)
    return _reduce(total, total_sq, n_samples, variant).to(inputs.dtype)


def gradient_shap(model: Callable, inputs: torch.Tensor, target: Target = None, *, baselines: torch.Tensor,
                  n_samples: int = 5, stdev: float = 0.0, generator=None, max_batch: Optional[int] = None,
                  memory_budget: Optional[int] = None) -> torch.Tensor:
    """GradientSHAP (Lundberg & Lee 2017; SPEC §2).

    For j = 1..N and every example: a baseline ``b_j`` drawn uniformly from ``baselines``
    (``[M, ...]``), ``α_j ~ U(0, 1)`` and noise ``ε_j ~ N(0, stdev²)``;
    ``attr = mean_j (x − b_j) ⊙ ∇f_t(b_j + α_j (x + ε_j − b_j))``.
    All draws come from ``generator`` (torch.Generator or int seed; default seed 0) on the CPU,
    one sample at a time, so the result does not depend on the chunk size or the device.
    """
    _check_count(n_samples)
    if stdev < 0:
        raise ValueError(f"stdev must be >= 0, got {stdev}")
    t = _prepare(model, inputs, target)
    if not isinstance(baselines, torch.Tensor) or baselines.dim() != inputs.dim() \
            or baselines.shape[1:] != inputs.shape[1:] or baselines.shape[0] < 1:
        raise ValueError(f"baselines must be a tensor [M, {', '.join(map(str, inputs.shape[1:]))}] of reference "
                         f"inputs, got {getattr(baselines, 'shape', type(baselines).__name__)}")
    refs = baselines.to(device=inputs.device, dtype=inputs.dtype)
    if not torch.isfinite(refs).all():
        raise ValueError("baselines contain NaN or Inf")
    gen = _generator(generator)
    batch = inputs.shape[0]
    draws = []
    for _ in range(n_samples):
        index = torch.randint(refs.shape[0], (batch,), generator=gen)
        alpha = torch.rand(batch, generator=gen, dtype=torch.float64)
        noise = torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype) * stdev if stdev > 0 else None
        draws.append((index.to(inputs.device), alpha.to(inputs.device, inputs.dtype), noise))
    chunk = chunk_size(inputs, n_samples * batch, max_batch, memory_budget)
    block = min(batch, chunk)
    per = max(1, chunk // block)
    acc_dtype = _accum_dtype(inputs.dtype)
    total = torch.zeros(inputs.shape, dtype=acc_dtype, device=inputs.device)
    shape1 = (-1,) + (1,) * (inputs.dim() - 1)
    with frozen_parameters(model):
        for j0 in range(0, n_samples, per):
            part = draws[j0:j0 + per]
            for e0 in range(0, batch, block):
                e1 = min(batch, e0 + block)
                x = inputs[e0:e1]
                bases = [refs[idx[e0:e1]] for idx, _, _ in part]
                noisy = [x if nz is None else x + nz[e0:e1].to(x.device) for _, _, nz in part]
                points = torch.cat([b + a[e0:e1].view(shape1) * (xn - b)
                                    for b, (_, a, _), xn in zip(bases, part, noisy)])
                g, _ = target_gradients(model, points, t[e0:e1].repeat(len(part)))
                g = g.reshape((len(part), e1 - e0) + tuple(inputs.shape[1:])).to(acc_dtype)
                diffs = torch.stack([(x - b).to(acc_dtype) for b in bases])
                total[e0:e1] += (g * diffs).sum(0)
    return (total / n_samples).to(inputs.dtype)


def expected_gradients(model: Callable, inputs: torch.Tensor, target: Target = None, *, references: torch.Tensor,
                       n_samples: int = 50, generator=None, max_batch: Optional[int] = None,
                       memory_budget: Optional[int] = None) -> torch.Tensor:
    """Expected Gradients (Erion et al. 2021): GradientSHAP with baselines drawn from a reference
    data set ``references`` ``[M, ...]`` and no input noise:
    ``attr = mean_j (x − r_j) ⊙ ∇f_t(r_j + α_j (x − r_j))``, ``r_j`` uniform over the references, ``α_j ~ U(0, 1)``."""
    return gradient_shap(model, inputs, target, baselines=references, n_samples=n_samples, stdev=0.0,
                         generator=generator, max_batch=max_batch, memory_budget=memory_budget)


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
    _check_count(n_samples)
    if not callable(method):
        raise TypeError(f"method must be an attribution function, got {type(method).__name__}")
    t = _prepare(model, inputs, target)
    gen = _generator(generator)
    sigma = _noise_sigma(inputs, stdev, stdev_spread).view((-1,) + (1,) * (inputs.dim() - 1))
    total = total_sq = None
    for _ in range(n_samples):
        noise = torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype).to(inputs.device)
        e = method(model, inputs + sigma * noise, t, **method_kwargs)
        e = e.to(_accum_dtype(e.dtype))
        total = e.clone() if total is None else total + e
        total_sq = e * e if total_sq is None else total_sq + e * e
    return _reduce(total, total_sq, n_samples, variant).to(inputs.dtype)
