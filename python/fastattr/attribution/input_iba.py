"""InputIBA (thesis ch. 6 §3.2–3.4, App. A, D; Zhang, Khakzar et al. 2021, "Fine-grained neural network
explanation by identifying input features with predictive information"; SPEC §9): an information
bottleneck on the input whose prior comes from IBA at a deep layer.

1. IBA at ``layer`` (:func:`~fastattr.attribution.iba.iba`'s loop): ``λ*`` and the bottleneck
   ``Z* = λ*R + (1 − λ*)ε``, ``ε ~ N(μ_R, σ_R²)``.
2. A small Wasserstein GAN (Arjovsky et al. 2017) fits the input mask ``λ_G`` with learnable noise
   ``ε_G ~ N(μ_G, σ_G²)`` so that ``f(Z_G)``, ``Z_G = λ_G x + (1 − λ_G)ε_G`` (``f``: the model up to
   ``layer``), is distributed like ``Z*`` (Eq. 3).
3. IBA on the input, ``Z_I = Λx + (1 − Λ)ε_I``, ``ε_I ~ N(μ_I, σ_I²)``, with the prior ``P(Z_I)`` of
   Remark 1 and the KL of Proposition 3::

       KL_k = log((1 − λ_G Λ)/(1 − Λ)) + (1 − Λ)²/(2(1 − λ_G Λ)²)
              + (x − μ_I)² (Λ − λ_G Λ)² / (2 (1 − λ_G Λ)² σ_I²) − 1/2,

   ``min_Λ L_CE(f(Z_I), t) + β · mean(KL)``; the attribution is ``Λ*``.

Every stage runs all examples at once: the GAN's generators and critics are per example (their
weights stacked ``[B, ...]``, the critics' convolutions grouped by example), so each example's result
is its own.
"""
from __future__ import annotations

import math
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Target, check_count, check_number, frozen_parameters, make_generator, model_entry, run_model
from ..ops import bottleneck
from .iba import IBAStatistics, check_iba, check_statistics, heat_map, layer_output, one_layer, optimise, smoothed

__all__ = ["input_iba"]

_WIDTH, _HIDDEN = 16, 32  # the critic: 3 convolutions of 16 channels, then 2 linear layers (32 hidden units)
_MEAN_LR, _STD_LR = 0.1, 0.05  # RMSprop rates of the generator's noise mean and std (the public code's)


def _input_kl(x: torch.Tensor, lam: torch.Tensor, rest: torch.Tensor, lam_g: torch.Tensor, mu: torch.Tensor,
              sigma: torch.Tensor) -> torch.Tensor:
    """Proposition 3: ``KL[P(Z_I | x) ‖ P(Z_I)]`` per element, ``P(Z_I | x) = N(Λx + (1 − Λ)μ, (1 − Λ)²σ²)``,
    ``P(Z_I) = N(λ_G Λ x + (1 − λ_G Λ)μ, (1 − λ_G Λ)²σ²)``; ``rest = 1 − Λ`` (accurate as Λ → 1)."""
    keep = rest + lam * (1 - lam_g)  # 1 − λ_G Λ
    return (torch.log(keep / rest) + rest ** 2 / (2 * keep ** 2)
            + ((x - mu) * lam * (1 - lam_g)) ** 2 / (2 * keep ** 2 * sigma ** 2) - 0.5)


def _critic_weights(batch: int, channels: int, gen: torch.Generator, like: torch.Tensor) -> list[torch.Tensor]:
    """One critic per example, PyTorch's default initialisation ``U(±1/√fan_in)`` drawn from ``gen``: three
    3×3 convolutions (strides 1, 2, 2) stacked ``[B·16, in, 3, 3]``, two linear layers ``[B, in, out]``."""
    shapes = [((batch * _WIDTH, channels, 3, 3), channels * 9), ((batch * _WIDTH,), channels * 9),
              ((batch * _WIDTH, _WIDTH, 3, 3), _WIDTH * 9), ((batch * _WIDTH,), _WIDTH * 9),
              ((batch * _WIDTH, _WIDTH, 3, 3), _WIDTH * 9), ((batch * _WIDTH,), _WIDTH * 9),
              ((batch, _WIDTH * 4, _HIDDEN), _WIDTH * 4), ((batch, 1, _HIDDEN), _WIDTH * 4),
              ((batch, _HIDDEN, 1), _HIDDEN), ((batch, 1, 1), _HIDDEN)]
    return [((torch.rand(shape, generator=gen, dtype=like.dtype) * 2 - 1) / math.sqrt(fan)).to(like.device)
            .requires_grad_() for shape, fan in shapes]


def _critic(w: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """The critics' scores ``[B, N]`` of samples ``z`` ``[B, N, C, h, w]`` (critic b reads example b's)."""
    batch, n = z.shape[:2]
    h = z.transpose(0, 1).reshape((n, -1) + tuple(z.shape[3:]))
    for i, stride in enumerate((1, 2, 2)):
        h = F.leaky_relu(F.conv2d(h, w[2 * i], w[2 * i + 1], stride=stride, padding=1, groups=batch), 0.2)
    h = F.adaptive_avg_pool2d(h, 2).reshape(n, batch, _WIDTH * 4).transpose(0, 1)
    h = F.leaky_relu(torch.baddbmm(w[7], h, w[6]), 0.2)
    return torch.baddbmm(w[9], h, w[8])[..., 0]


def _fit_input_mask(model, module: nn.Module, inputs: torch.Tensor, R: torch.Tensor, lam_star: torch.Tensor,
                    statistics: IBAStatistics, init: torch.Tensor, gen: torch.Generator, *, gan_steps: int,
                    critic_iter: int, gan_batch: int, critic_lr: float, mask_lr: float,
                    weight_clip: float) -> torch.Tensor:
    """Stage 2, the WGAN (thesis ch. 6 §3.3, App. D): ``λ_G`` ``[B, C, H, W]`` such that the layer output
    of ``Z_G = λ_G x + (1 − λ_G)(σ_G g + μ_G)`` matches samples of ``Z*``. Each of ``gan_steps`` rounds
    draws ``gan_batch`` real samples and generator noises per example, updates the critics (RMSprop,
    ``critic_lr``, weights clipped to ``±weight_clip``), and every ``critic_iter``-th round the generator
    (RMSprop: the mask logits at ``mask_lr``, μ_G and σ_G at the public code's 0.1 and 0.05) on the same
    noises. The mask logits start at ``init``, μ_G = 0, σ_G = 1 per input channel."""
    batch, channels = inputs.shape[:2]
    mu, sigma = statistics.mean.to(R), statistics.std.to(R)
    active = statistics.active.to(device=R.device, dtype=R.dtype)
    critic = _critic_weights(batch, R.shape[1], gen, R)
    logits = init.clone().requires_grad_()
    mean = torch.zeros((batch, 1, channels, 1, 1), dtype=inputs.dtype, device=inputs.device, requires_grad=True)
    std = torch.ones((batch, 1, channels, 1, 1), dtype=inputs.dtype, device=inputs.device, requires_grad=True)
    opt_d = torch.optim.RMSprop(critic, lr=critic_lr)
    opt_g = torch.optim.RMSprop([{"params": [logits], "lr": mask_lr}, {"params": [mean], "lr": _MEAN_LR},
                                 {"params": [std], "lr": _STD_LR}])
    x = inputs.detach()[:, None]

    def fake(g: torch.Tensor) -> torch.Tensor:
        lam_g = torch.sigmoid(logits)[:, None]
        z = (lam_g * x + (1 - lam_g) * (std * g + mean)).reshape((-1,) + tuple(inputs.shape[1:]))
        out = layer_output(model, module, z, dims=4, grad=True)
        return out.reshape((batch, gan_batch) + tuple(R.shape[1:])) * active

    with torch.enable_grad():
        for i in range(gan_steps):
            eps = torch.randn((batch, gan_batch) + tuple(R.shape[1:]), generator=gen, dtype=R.dtype).to(R.device)
            g = torch.randn((batch, gan_batch) + tuple(inputs.shape[1:]), generator=gen,
                            dtype=inputs.dtype).to(inputs.device)
            real = (lam_star[:, None] * R[:, None] + (1 - lam_star[:, None]) * (sigma * eps + mu)) * active
            loss_d = (_critic(critic, fake(g).detach()).mean(1) - _critic(critic, real).mean(1)).sum()
            grads = torch.autograd.grad(loss_d, critic)
            for p, grad in zip(critic, grads):
                p.grad = grad
            opt_d.step()
            with torch.no_grad():
                for p in critic:
                    p.clamp_(-weight_clip, weight_clip)
            if i % critic_iter == 0:
                loss_g = -_critic(critic, fake(g)).mean(1).sum()
                logits.grad, mean.grad, std.grad = torch.autograd.grad(loss_g, [logits, mean, std])
                opt_g.step()
    return torch.sigmoid(logits.detach())


def _input_bottleneck(model, inputs: torch.Tensor, t: torch.Tensor, lam_g: torch.Tensor, mu: torch.Tensor,
                      sigma: torch.Tensor, gen: torch.Generator, *, beta: float, steps: int, lr: float, n_noise: int,
                      smooth_sigma: float, init_alpha: float) -> torch.Tensor:
    """Stage 3: ``Λ* = G ∗ sigmoid(α*)`` ``[B, C, H, W]``, ``α*`` minimising ``L_CE(f(Z_I), t) + β·mean(KL)``
    (Proposition 3) by Adam, ``n_noise`` draws of ``ε_I`` per step, every example and draw at once."""
    batch = inputs.shape[0]
    x = inputs.detach()
    alpha = torch.full_like(x, init_alpha, requires_grad=True)
    optimiser = torch.optim.Adam([alpha], lr=lr)
    t_rows = t.repeat_interleave(n_noise)
    for _ in range(steps):
        eps = torch.randn((batch, n_noise) + tuple(x.shape[1:]), generator=gen, dtype=x.dtype).to(x.device)
        with torch.enable_grad():
            Z = bottleneck(x, alpha, mu, sigma, eps, smooth_sigma=smooth_sigma)[0]
            lam, rest = smoothed(alpha, smooth_sigma)
            logits = run_model(model, Z.reshape((batch * n_noise,) + tuple(x.shape[1:]))).reshape(batch * n_noise, -1)
            ce = F.cross_entropy(logits, t_rows, reduction="none").reshape(batch, n_noise).mean(1)
            info = _input_kl(x, lam, rest, lam_g, mu, sigma).flatten(1).mean(1)
            (alpha.grad,) = torch.autograd.grad((ce + beta * info).sum(), alpha)
        optimiser.step()
    with torch.no_grad():
        return smoothed(alpha.detach(), smooth_sigma)[0]


def _input_statistic(value, name: str, inputs: torch.Tensor, *, positive: bool) -> torch.Tensor:
    """``input_mean`` / ``input_std``: a number or a tensor broadcastable to ``[C, H, W]``, as ``[C, H, W]``."""
    if isinstance(value, torch.Tensor):
        if not torch.is_floating_point(value) or not torch.isfinite(value).all() or (positive and (value <= 0).any()):
            raise ValueError(f"{name} must be finite floating values{' > 0' if positive else ''}")
        try:
            return value.detach().to(inputs).expand(inputs.shape[1:]).contiguous()
        except RuntimeError as e:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to the input's "
                             f"{tuple(inputs.shape[1:])}") from e
    number = check_number(value, name, minimum=0.0 if positive else -math.inf)
    if positive and number == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return torch.full(inputs.shape[1:], number, dtype=inputs.dtype, device=inputs.device)


@model_entry
def input_iba(model: Callable, inputs: torch.Tensor, target: Target = None, *, layer: Union[str, nn.Module],
              statistics: IBAStatistics, beta: float = 20.0, steps: int = 60, lr: float = 1.0, n_noise: int = 10,
              feature_beta: float = 10.0, feature_steps: int = 10, gan_steps: int = 140, critic_iter: int = 5,
              gan_batch: int = 32, critic_lr: float = 5e-5, mask_lr: float = 0.05, weight_clip: float = 0.01,
              input_mean=0.0, input_std=1.0, smooth_sigma: float = 1.0, init_alpha: float = 5.0, generator=None,
              return_masks: bool = False):
    """InputIBA (thesis ch. 6 §3; module docstring): the input mask ``Λ*`` of an information bottleneck
    on the input whose prior is fitted to IBA at a deep ``layer``.

    1. IBA at ``layer`` with ``statistics`` (:func:`iba_statistics`), ``β = feature_beta``,
       ``feature_steps`` steps (the thesis: β 10, 10 steps): ``λ*``.
    2. The WGAN: per example a generator (the mask logits ``[C, H, W]``, initialised to
       ``logit(0.05 + 0.9·m)`` with ``m`` step 1's map normalised to [0, 1], and ``μ_G``, ``σ_G`` per input
       channel, initialised to 0 and 1) and a critic (3×3 convolutions 16-16-16 with strides 1-2-2,
       LeakyReLU 0.2, a 2×2 average pool, linear 64→32→1; the thesis: 3 convolutions and 2 linear
       layers), RMSprop, critic weights clipped to ``±weight_clip``, ``gan_steps`` critic updates of
       ``gan_batch`` fresh samples of ``Z*`` against ``gan_batch`` generated ones, the generator updated
       every ``critic_iter``-th (the thesis: 20 epochs of 200 samples in batches of 32, 5 critic updates
       per generator update, critic rate 5e-5): ``λ_G``.
    3. IBA on the input with Proposition 3's KL, ``ε_I ~ N(input_mean, input_std²)`` (a number or a tensor
       broadcastable to ``[C, H, W]``; the public code's 0 and 1 for normalised inputs), ``beta``,
       ``steps``, ``lr`` (the thesis: 20, 60, 1), ``n_noise`` draws per step: ``Λ*``.

    Every random draw (the noise of all three stages and the critics' initial weights) comes from
    ``generator`` (a ``torch.Generator`` or an int seed; None: 0), so the same call gives the same map.
    Returns ``Λ*`` averaged over the input channels ``[B, H, W]`` in [0, 1]; with ``return_masks`` also
    ``Λ*`` and ``λ_G`` ``[B, C, H, W]``. ``inputs`` must be images ``[B, C, H, W]``; the loss is the
    cross-entropy of class ``target``; no parameter of ``model`` gets a gradient.

    Example::

        >>> stats = fastattr.iba_statistics(model, "net.2", x_train)
        >>> heat = fastattr.input_iba(model, x, y, layer="net.2", statistics=stats, generator=0)
    """
    beta, steps, lr, n_noise, smooth_sigma, init_alpha = check_iba(inputs, beta, steps, lr, n_noise, smooth_sigma,
                                                                    init_alpha, "ce", False, None)
    feature_beta = check_number(feature_beta, "feature_beta")
    feature_steps = check_count(feature_steps, "feature_steps")
    gan_steps = check_count(gan_steps, "gan_steps")
    critic_iter = check_count(critic_iter, "critic_iter")
    gan_batch = check_count(gan_batch, "gan_batch")
    critic_lr = check_number(critic_lr, "critic_lr")
    mask_lr = check_number(mask_lr, "mask_lr")
    weight_clip = check_number(weight_clip, "weight_clip")
    if inputs.dim() != 4:
        raise ValueError(f"input_iba puts a bottleneck on images: inputs must be [B, C, H, W], got shape "
                         f"{tuple(inputs.shape)}")
    mu_i = _input_statistic(input_mean, "input_mean", inputs, positive=False)
    sigma_i = _input_statistic(input_std, "input_std", inputs, positive=True)
    module = one_layer(model, layer)
    check_statistics(statistics)
    gen = make_generator(generator)
    capacity, alpha, R, t = optimise(model, module, inputs, target, statistics, gen, beta=feature_beta,
                                      steps=feature_steps, lr=lr, n_noise=n_noise, smooth_sigma=smooth_sigma,
                                      init_alpha=init_alpha)
    with torch.no_grad():
        lam_star = smoothed(alpha, smooth_sigma)[0]
        heat = heat_map(capacity, inputs)[:, None]
        top = heat.flatten(1).amax(1).clamp(min=torch.finfo(heat.dtype).tiny)[:, None, None, None]
        init = torch.logit(0.05 + 0.9 * heat / top).expand(inputs.shape).contiguous()
    with frozen_parameters(model):
        lam_g = _fit_input_mask(model, module, inputs, R, lam_star, statistics, init, gen, gan_steps=gan_steps,
                                critic_iter=critic_iter, gan_batch=gan_batch, critic_lr=critic_lr, mask_lr=mask_lr,
                                weight_clip=weight_clip)
        mask = _input_bottleneck(model, inputs, t, lam_g, mu_i, sigma_i, gen, beta=beta, steps=steps, lr=lr,
                                 n_noise=n_noise, smooth_sigma=smooth_sigma, init_alpha=init_alpha)
    heat = mask.mean(1)
    return (heat, mask, lam_g) if return_masks else heat
