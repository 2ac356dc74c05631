"""Class activation maps and guided backpropagation: Grad-CAM, Grad-CAM++, Guided Backprop,
Guided Grad-CAM (SPEC §2).

All take ``(model, inputs, target=None, ...)``. The CAM methods read a conv ``layer``'s output
``A`` ``[B, K, h, w]`` through a forward hook and differentiate the target score with respect to
that captured activation only (``torch.autograd.grad``; parameters' ``requires_grad`` is switched
off and restored). The model runs in chunks of at most ``max_batch`` inputs (or what
``memory_budget`` bytes allow), so results do not depend on the chunk size, and every hook or
flag set on the model is removed or restored on every exit path.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..core import (ChunkGrid, Target, check_flag, check_inputs, chunk_size, frozen_parameters, gradient_chunk,
                    model_entry, resolve_target, run_model, select)
from ..numerics import accum_dtype
from .layer import autograd_options, layer_grads

Layer = Union[nn.Module, str]


def _resolve_layer(model: Callable, layer: Layer) -> nn.Module:
    """The module ``layer`` names (a dotted name for ``model.get_submodule``) or is, checked to be in ``model``."""
    if isinstance(layer, str):
        if not isinstance(model, nn.Module):
            raise TypeError(f"layer given by name needs model to be an nn.Module, got {type(model).__name__}")
        try:
            return model.get_submodule(layer)
        except AttributeError as e:
            raise ValueError(f"layer {layer!r} is not a submodule of model ({e})") from None
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be an nn.Module inside model or its dotted name, got {type(layer).__name__}")
    if isinstance(model, nn.Module) and not any(m is layer for m in model.modules()):
        raise ValueError(f"layer {type(layer).__name__} is not a submodule of model")
    return layer


def _chunk_targets(target: Target, batch: int) -> Callable[[int, int], Target]:
    """Slices a per-example target for chunk ``[e0, e1)``; ``resolve_target`` checks each slice."""
    if isinstance(target, (list, tuple)):
        target = torch.tensor(list(target))
    if isinstance(target, torch.Tensor) and not target.is_floating_point() and target.dim() <= 1:
        flat = target.reshape(-1)
        if flat.numel() not in (1, batch):
            raise ValueError(f"target has {flat.numel()} entries but inputs has batch size {batch}")
        if flat.numel() == batch:
            return lambda e0, e1: flat[e0:e1]
    return lambda e0, e1: target


def _layer_gradients(model: Callable, layer: nn.Module, x: torch.Tensor, target: Target,
                     layer_input: bool = False,
                     grad_kwargs: Optional[dict] = None) -> tuple[tuple, tuple, torch.Tensor]:
    """``(A, ∂ Σ_i f_{t_i}/∂A, t)`` for one chunk, ``A`` the output of ``layer`` (its positional inputs,
    through a forward pre-hook, when ``layer_input``) as a tuple of tensors ``[B, K, ...]`` (one for a
    layer with one tensor); ``grad_kwargs`` go to ``torch.autograd.grad``.

    The hook hands the rest of the network clones of detached leaves ``A``, so the backward pass
    stops at the layer and in-place ops after it (``ReLU(inplace=True)``) leave ``A`` intact.
    """
    captured = []
    what = "input" if layer_input else "output"

    def capture(module, value) -> tuple:
        parts = (value,) if isinstance(value, torch.Tensor) else value
        if not isinstance(parts, tuple) or not parts or \
                not all(isinstance(p, torch.Tensor) and p.dim() >= 2 for p in parts):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"CAM methods need a layer whose {what} is a tensor [B, K, ...] (a conv layer's "
                             f"[B, K, h, w]) or a tuple of them; layer {type(module).__name__} has {what} {shape}")
        if captured:
            raise ValueError(f"layer {type(module).__name__} ran more than once in one forward pass; "
                             "pick a layer that is used once")
        leaves = tuple(p.detach().requires_grad_(True) for p in parts)
        captured.append(leaves)
        return tuple(leaf.clone() for leaf in leaves)

    def hook(module, args, output):
        parts = capture(module, output)
        return parts if isinstance(output, tuple) else parts[0]

    if layer_input:
        handle = layer.register_forward_pre_hook(capture)
    else:
        handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = run_model(model, x)
            if not captured:
                raise ValueError(f"layer {type(layer).__name__} did not run in the model's forward pass")
            t = resolve_target(model, x, target, logits=out.detach())
            grads = layer_grads(select(out, t).sum(), captured[0], autograd_options(grad_kwargs))
    finally:
        handle.remove()
    if any(g is None for g in grads):
        raise ValueError(f"the target score does not depend on layer {type(layer).__name__}'s {what}; pass "
                         "grad_kwargs={'materialize_grads': True} for zero maps")
    return tuple(a.detach() for a in captured[0]), grads, t


def _spatial_sum(t: torch.Tensor) -> torch.Tensor:
    """Σ over the axes after the channel axis (keepdim); a ``[B, K]`` tensor is its own sum."""
    return t.sum(dim=tuple(range(2, t.dim())), keepdim=True) if t.dim() > 2 else t


def _cam_weights(acts: torch.Tensor, grads: torch.Tensor, plus_plus: bool) -> torch.Tensor:
    """Channel weights ``[B, K, 1, ...]``: Grad-CAM's mean gradient (for a ``[B, K]`` layer, the
    gradient itself, as Captum) or Grad-CAM++'s weighted positive gradient."""
    if not plus_plus:
        return grads.mean(dim=tuple(range(2, grads.dim())), keepdim=True) if grads.dim() > 2 else grads
    g2 = grads * grads
    denom = 2 * g2 + _spatial_sum(acts) * g2 * grads
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(denom))
    return _spatial_sum(alpha * grads.clamp(min=0))


INTERPOLATE_MODES = ("bilinear", "nearest", "nearest-exact", "bicubic", "area", "linear", "trilinear")
_LINEAR = ("linear", "bilinear", "trilinear")


def _upsample(cam: torch.Tensor, inputs: torch.Tensor, mode: str) -> torch.Tensor:
    """``[B, *s]`` (1 to 3 spatial axes) → ``[B, *S]``, ``S`` the inputs' last ``len(s)`` axes, with
    ``F.interpolate``'s ``mode``; the linear modes (``"linear"``, ``"bilinear"``, ``"trilinear"``) all
    mean linear along every axis (``align_corners=False``)."""
    axes = cam.dim() - 1
    size = tuple(inputs.shape[-axes:])
    if mode in _LINEAR:
        mode = _LINEAR[axes - 1]
    elif mode == "bicubic" and axes != 2:
        raise ValueError(f"interpolate_mode='bicubic' needs a map with 2 spatial axes, got {axes}")
    corners = False if mode in _LINEAR or mode == "bicubic" else None
    return F.interpolate(cam[:, None], size=size, mode=mode, align_corners=corners)[:, 0]


def _check_cam_args(model, inputs, layer, relu_attributions, upsample, interpolate_mode="bilinear",
                    attribute_to_layer_input=False) -> nn.Module:
    check_inputs(inputs)
    check_flag(relu_attributions, "relu_attributions")
    check_flag(upsample, "upsample")
    check_flag(attribute_to_layer_input, "attribute_to_layer_input")
    if interpolate_mode not in INTERPOLATE_MODES:
        raise ValueError(f"interpolate_mode must be one of {INTERPOLATE_MODES}, got {interpolate_mode!r}")
    return _resolve_layer(model, layer)


def _cam_chunk(model, layer, x, target, relu_attributions, upsample, plus_plus, interpolate_mode="bilinear",
               layer_input=False, channel_sum=True, grad_kwargs=None):
    """One chunk's map: ``Σ_k w_k A^k`` ``[B, ...]`` (``channel_sum=False``: the terms ``[B, K, ...]``);
    a tuple of maps, one per tensor, for a layer with several."""
    acts, grads, t = _layer_gradients(model, layer, x, target, layer_input, grad_kwargs)
    maps = []
    for a, g in zip(acts, grads):
        if upsample and not 1 <= a.dim() - 2 <= min(3, x.dim() - 1):
            raise ValueError(f"upsample needs a conv layer whose {'input' if layer_input else 'output'} is "
                             f"[B, K, ...] with 1 to 3 spatial axes, no more than the inputs' "
                             f"{tuple(x.shape[1:])}; layer {type(layer).__name__} gives {tuple(a.shape)}")
        acc = accum_dtype(a.dtype)
        a, g = a.to(acc), g.to(acc)
        cam = _cam_weights(a, g, plus_plus) * a
        if channel_sum:
            cam = cam.sum(1)
        if relu_attributions:
            cam = cam.clamp(min=0)
        if upsample:
            cam = _upsample(cam, x, interpolate_mode)
        maps.append(cam.to(x.dtype))
    return (maps[0] if len(maps) == 1 else tuple(maps)), t


def cam_maps(model, inputs, target, layer, *, relu_attributions, upsample, max_batch, memory_budget, plus_plus,
             interpolate_mode="bilinear", attribute_to_layer_input=False, channel_sum=True, grad_kwargs=None):
    """Grad-CAM / Grad-CAM++ maps ``[B, ...]`` in chunks (``channel_sum=False``: per channel ``[B, K, ...]``;
    a tuple of maps for a layer with several tensors)."""
    module = _check_cam_args(model, inputs, layer, relu_attributions, upsample, interpolate_mode,
                             attribute_to_layer_input)
    batch = inputs.shape[0]
    targets = _chunk_targets(target, batch)
    chunk = chunk_size(inputs, batch, max_batch, memory_budget)
    with frozen_parameters(model):
        maps = [_cam_chunk(model, module, inputs[e0:e1], targets(e0, e1), relu_attributions,
                           upsample, plus_plus, interpolate_mode, attribute_to_layer_input, channel_sum,
                           grad_kwargs)[0]
                for e0, e1, _, _ in ChunkGrid(batch, 1, chunk)]
    if isinstance(maps[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*maps))
    return torch.cat(maps)


@model_entry(gradients=True)
def grad_cam(model: Callable, inputs: torch.Tensor, target: Target = None, *, layer: Layer,
             relu_attributions: bool = True, upsample: bool = True, interpolate_mode: str = "bilinear",
             attribute_to_layer_input: bool = False, max_batch: Optional[int] = None,
             memory_budget: Optional[int] = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(Σ_k α_k A^k)``, ``α_k = mean_{ij} ∂f_t/∂A^k_{ij}``.

    ``A`` ``[B, K, h, w]`` is the output of ``layer`` (an ``nn.Module`` inside ``model`` or its
    dotted name, e.g. ``"features.28"``), or its input with ``attribute_to_layer_input=True``; the
    gradient is taken with respect to ``A`` only. ``relu_attributions=False`` keeps negative
    evidence (Captum's ``LayerGradCam`` default). The map is upsampled to as many of the input's
    last axes as it has spatial axes (1 to 3: ``Conv1d`` to ``Conv3d`` layers) with
    ``F.interpolate``'s ``interpolate_mode`` (the linear modes: ``align_corners=False``).
    With ``upsample=False`` any ``[B, K, ...]`` layer works (the mean runs over the axes after
    ``K``; for ``[B, K]``, ``α = ∂f_t/∂A`` as in Captum). A layer whose output (or positional
    inputs) is a tuple of tensors gets one map per tensor, as a tuple.

    Returns:
        ``[B, H, W]`` for inputs ``[B, C, H, W]`` (``[B, L]`` for ``[B, C, L]``, ``[B, D, H, W]`` for
        ``[B, C, D, H, W]``); ``upsample=False``: the layer-resolution ``[B, h, w]``.

    Example::

        >>> cam = fastattr.grad_cam(model, x, target=y, layer="layer4")   # [B, H, W]
    """
    return cam_maps(model, inputs, target, layer, relu_attributions=relu_attributions, upsample=upsample,
                    max_batch=max_batch, memory_budget=memory_budget, plus_plus=False,
                    interpolate_mode=interpolate_mode, attribute_to_layer_input=attribute_to_layer_input)


@model_entry(gradients=True)
def grad_cam_plus_plus(model: Callable, inputs: torch.Tensor, target: Target = None, *, layer: Layer,
                       relu_attributions: bool = True, upsample: bool = True,
                       interpolate_mode: str = "bilinear", attribute_to_layer_input: bool = False,
                       max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018): ``ReLU(Σ_k w_k A^k)``, ``w_k = Σ_ij α^k_ij ReLU(g^k_ij)``,

    ``α^k_ij = g² / (2 g² + Σ_ab A^k_ab g³)`` (0 where the denominator is 0), ``g = ∂f_t/∂A^k_ij``:
    the paper's closed form for an exponential score, whose higher derivatives are powers of ``g``.
    The paper's common factor ``exp(f_t)`` is dropped (as in the reference implementations), which
    scales each example's map by a positive constant. Arguments, shapes and upsampling as :func:`grad_cam`.

    Example::

        >>> cam = fastattr.grad_cam_plus_plus(model, x, target=y, layer=model.layer4)   # [B, H, W]
    """
    return cam_maps(model, inputs, target, layer, relu_attributions=relu_attributions, upsample=upsample,
                    max_batch=max_batch, memory_budget=memory_budget, plus_plus=True,
                    interpolate_mode=interpolate_mode, attribute_to_layer_input=attribute_to_layer_input)


class _Positive(torch.autograd.Function):
    """The identity, whose backward passes only the positive part of the gradient: ``ReLU(grad)``."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def _guided_output(module, args, output):
    return _Positive.apply(output) if isinstance(output, torch.Tensor) and output.requires_grad else output


@contextlib.contextmanager
def _guided_relus(model: nn.Module) -> Iterator[None]:
    """Every ``nn.ReLU`` in ``model`` passes only positive gradients back (and only where its input
    was positive) while inside: its output runs through :class:`_Positive`, so the ReLU's own backward
    gets ``ReLU(grad_out)``, and ``ReLU(grad_out) ⊙ 1[x > 0] = ReLU(grad_out ⊙ 1[x > 0])`` is the guided
    gradient. In-place ReLUs run out of place. Hooks and flags restored on exit."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    inplace = [m.inplace for m in relus]
    handles = []
    try:
        for m in relus:
            m.inplace = False
            handles.append(m.register_forward_hook(_guided_output))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(relus, inplace):
            m.inplace = flag


def _guided_chunk(model, x, target):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = run_model(model, x)
        t = resolve_target(model, x, target, logits=out.detach())
        (grad,) = torch.autograd.grad(select(out, t).sum(), x)
    return grad, t


@model_entry(gradients=True)
def guided_backprop(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                    max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> torch.Tensor:
    """Guided Backpropagation (Springenberg et al. 2015): ``∂f_t/∂x`` with every ReLU's backward
    replaced by ``grad_in = ReLU(grad_out) ⊙ 1[x_relu > 0]``.

    Implemented with a forward hook on every ``nn.ReLU`` module that passes its output through an
    identity whose backward keeps the positive part of the gradient (removed on exit; in-place ReLUs
    run out of place meanwhile), Captum's values bit for bit. Functional ReLUs (``F.relu`` /
    ``torch.relu`` inside ``forward``) are not seen and keep their plain gradient; in-place ops
    applied to a ReLU module's output are not allowed, as under Captum's backward hooks.

    Returns:
        a tensor shaped like ``inputs``.

    Example::

        >>> g = fastattr.guided_backprop(model, x, target=y)   # shape of x
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"guided_backprop needs model to be an nn.Module (its ReLU modules are hooked), "
                        f"got {type(model).__name__}")
    check_inputs(inputs)
    batch = inputs.shape[0]
    targets = _chunk_targets(target, batch)
    chunk = gradient_chunk(model, inputs, batch, max_batch, memory_budget)
    with frozen_parameters(model), _guided_relus(model):
        grads = [_guided_chunk(model, inputs[e0:e1], targets(e0, e1))[0] for e0, e1, _, _ in ChunkGrid(batch, 1, chunk)]
    return torch.cat(grads)


@model_entry(gradients=True)
def guided_grad_cam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, layer: Layer,
                    relu_attributions: bool = True, interpolate_mode: str = "bilinear",
                    attribute_to_layer_input: bool = False, max_batch: Optional[int] = None,
                    memory_budget: Optional[int] = None) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): ``guided_backprop(x) ⊙ upsample(grad_cam(x))``.

    The ``[B, H, W]`` map is broadcast over the channel axis, as in Captum's ``GuidedGradCam``
    (which upsamples with ``interpolate_mode="nearest"`` by default; here ``"bilinear"``, as
    :func:`grad_cam`). Both factors use the same target, resolved once per chunk.
    ``attribute_to_layer_input`` as in :func:`grad_cam`.

    Returns:
        a tensor shaped like ``inputs`` (``[B, C, L]``, ``[B, C, H, W]`` or ``[B, C, D, H, W]``).

    Example::

        >>> ggc = fastattr.guided_grad_cam(model, x, target=y, layer="layer4")   # shape of x
    """
    module = _check_cam_args(model, inputs, layer, relu_attributions, True, interpolate_mode,
                             attribute_to_layer_input)
    if not isinstance(model, nn.Module):
        raise TypeError(f"guided_grad_cam needs model to be an nn.Module, got {type(model).__name__}")
    batch = inputs.shape[0]
    targets = _chunk_targets(target, batch)
    chunk = chunk_size(inputs, batch, max_batch, memory_budget)
    blocks = []
    with frozen_parameters(model):
        for e0, e1, _, _ in ChunkGrid(batch, 1, chunk):
            x = inputs[e0:e1]
            cam, t = _cam_chunk(model, module, x, targets(e0, e1), relu_attributions, True, False,
                                interpolate_mode, attribute_to_layer_input)
            if isinstance(cam, tuple):
                what = "input" if attribute_to_layer_input else "output"
                raise ValueError(f"guided_grad_cam needs a layer with one {what} tensor; layer "
                                 f"{type(module).__name__} has {len(cam)}")
            with _guided_relus(model):
                grad, _ = _guided_chunk(model, x, t)
            lead = (cam.shape[0],) + (1,) * (x.dim() - cam.dim())  # broadcast over the channels
            blocks.append(grad * cam.view(lead + tuple(cam.shape[1:])))
    return torch.cat(blocks)
