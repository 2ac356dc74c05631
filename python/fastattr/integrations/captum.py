"""Drop-in replacements for Captum's gradient attributions.

Change ``from captum.attr import X`` to ``from fastattr.integrations.captum import X`` for X in
``Saliency``, ``InputXGradient``, ``IntegratedGradients``, ``NoiseTunnel``, ``GradientShap``,
``DeepLift``, ``LayerIntegratedGradients``, ``LayerGradCam``, ``GuidedBackprop`` and
``GuidedGradCam``: the same constructors, ``attribute`` arguments and return types (a tensor in
gives a tensor out, a tuple in gives a tuple out; layer methods return one tensor shaped like the
layer; ``(attributions, delta)`` with ``return_convergence_delta=True``) and the same values
(Integrated Gradients uses Captum's quadrature nodes and weights), computed by fastattr's chunked
paths.

What differs from Captum:

- Noise. ``NoiseTunnel`` draws its noise (and ``draw_baseline_from_distrib``'s baselines) from
  fastattr's own seeded generator, not from the global torch RNG, so a call is reproducible (seed 0
  by default) and agrees with Captum in distribution, not draw for draw. Pass ``generator=`` (a
  ``torch.Generator`` or an int seed) as an extra keyword to ``NoiseTunnel.attribute`` to choose
  the stream. ``GradientShap.attribute`` takes the same extra keyword, and also
  ``generator="global"``: draw from the global NumPy and torch RNGs in Captum's order (baseline
  indices, noise, then the α's), so that after the same ``np.random.seed`` / ``torch.manual_seed``
  the result equals Captum's draw for draw.
- One input tensor. ``inputs`` is a tensor or a tuple of one tensor; models that take several
  input tensors (a tuple of two or more) raise ``NotImplementedError``.
- One layer with one tensor. Layer methods take one ``nn.Module`` whose output (or, with
  ``attribute_to_layer_input=True``, whose single input) is one tensor with the batch axis first;
  lists of layers, ``device_ids`` (DataParallel) and ``grad_kwargs`` raise ``NotImplementedError``.
- Targets select one scalar per example: an int, a list of ints or a 1-D tensor (2-D outputs), or
  a tuple / list of tuples indexing every non-batch dimension of the output. ``target=None`` on a
  model with several outputs per example explains the arg-max class (Captum requires one output).
- ``internal_batch_size`` bounds the inputs per forward pass, as in Captum (fastattr's
  ``max_batch``); when it is None, fastattr sizes the chunks from free memory. The other methods
  (Captum runs them in one batch) are chunked from free memory as well.
- ``GuidedGradCam`` raises when the Grad-CAM map cannot be interpolated to the input (Captum warns
  and returns an empty tensor).
- Only wrappers from this module can go inside ``NoiseTunnel``.
- ``DeepLift`` overrides each nonlinearity module's own backward, where Captum replaces the gradient
  of the tensor the module reads. It agrees with Captum to rounding where every nonlinearity reads a
  tensor nothing else reads, and otherwise keeps summation to delta where Captum loses it: a
  nonlinearity reading another's output (``ReLU`` then ``MaxPool2d``: Captum's first rule sees the
  plain gradient of the second), reading a tensor a skip connection also reads (Captum drops the
  skip path's gradient), and overlapping pooling windows sharing a maximum (Captum's unpooling keeps
  one window's term). A module called twice in one forward works (Captum raises). Where
  ``|Δx| < eps`` at a ``MaxPool``, Captum falls back to the first example's gradient for every
  example, and ``nn.Softmax`` subtracts a mean over the whole batch; fastattr gives each example what
  Captum gives it alone (the multipliers differ from Captum's batched ones only there).
- ``IntegratedGradients(forward_func, multiply_by_inputs=True, *, autocast=None)``: the extra
  keyword-only ``autocast`` (``torch.bfloat16`` / ``torch.float16``) runs the path's forward passes
  in mixed precision (see :func:`fastattr.integrated_gradients`).

A tensor in ``additional_forward_args`` (also inside a tuple, list or dict) whose first dimension is
the batch size is taken to hold one row per example and is repeated along with the inputs; any other
value, a shared tensor included, is passed to every call as it is (Captum repeats every tensor when
it batches several perturbations, and none when it runs one at a time).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import check_count, check_flag, make_generator, path_baselines, reference_inputs, resolve_target
from ..attribution.cam import cam_maps
from ..attribution.cam import guided_backprop as _guided_backprop
from ..attribution.cam import guided_grad_cam as _guided_grad_cam
from ..attribution.deeplift import deeplift as _deeplift
from ..attribution.gradient import VARIANTS, prepare, shap_draws, shap_from_draws
from ..attribution.gradient import input_x_gradient as _input_x_gradient
from ..attribution.gradient import integrated_gradients as _integrated_gradients
from ..attribution.gradient import saliency as _saliency
from ..attribution.gradient import smoothgrad as _smoothgrad
from ..attribution.layer import layer_integrated_gradients as _layer_integrated_gradients
from ..numerics import accum_dtype
from ._captum_common import (_as_args, _Attribution, _bind, _has_batch_tensor, _output, _single_of, _single_input,
                             _tiled, _unsupported)
from ._captum_perturbation import FeatureAblation, KernelShap, Lime, Occlusion

__all__ = ["DeepLift", "FeatureAblation", "GradientShap", "GuidedBackprop", "GuidedGradCam", "InputXGradient",
           "IntegratedGradients", "KernelShap", "LayerGradCam", "LayerIntegratedGradients", "Lime", "NoiseTunnel",
           "Occlusion", "Saliency"]


class Saliency(_Attribution):
    """Saliency, as ``captum.attr.Saliency``: the input gradient of the target (absolute value by default)."""

    def attribute(self, inputs, target=None, abs: bool = True, additional_forward_args: Any = None):
        x, is_tuple = _single_input(inputs)
        model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args, None, x.shape[0])
        return _output(_saliency(model, x, t, abs=abs, max_batch=max_batch), is_tuple)


class InputXGradient(_Attribution):
    """Input × Gradient, as ``captum.attr.InputXGradient``."""

    _multiply_by_inputs = True

    def attribute(self, inputs, target=None, additional_forward_args: Any = None):
        x, is_tuple = _single_input(inputs)
        model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args, None, x.shape[0])
        return _output(_input_x_gradient(model, x, t, max_batch=max_batch), is_tuple)


class IntegratedGradients(_Attribution):
    """Integrated Gradients, as ``captum.attr.IntegratedGradients`` (see
    :func:`fastattr.integrated_gradients`); ``multiply_by_inputs=False`` gives the weighted gradient sum.

    Extra keyword-only constructor argument (not in Captum): ``autocast`` (None, ``torch.bfloat16``
    or ``torch.float16``) runs the path's forward passes under ``torch.autocast``; gradients are still
    accumulated in float32 and the attributions have the inputs' dtype."""

    _has_delta = True

    def __init__(self, forward_func: Callable, multiply_by_inputs: bool = True, *,
                 autocast: Optional[torch.dtype] = None):
        super().__init__(forward_func, multiply_by_inputs)
        self.autocast = autocast

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False):
        """Returns attributions shaped like ``inputs``, and with ``return_convergence_delta=True``
        also the per-example delta ``Σ attr − (f_t(x) − f_t(x'))``."""
        x, is_tuple = _single_input(inputs)
        baselines = _single_of(baselines)
        model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args,
                                    check_count(internal_batch_size, "internal_batch_size", optional=True),
                                    n_steps * x.shape[0])
        out = _integrated_gradients(model, x, t, baselines=baselines, n_steps=n_steps, method=method,
                                    multiply_by_inputs=self._multiply_by_inputs,
                                    return_convergence_delta=return_convergence_delta, autocast=self.autocast,
                                    max_batch=max_batch)
        if return_convergence_delta:
            return _output(out[0], is_tuple), out[1]
        return _output(out, is_tuple)


def _repeat_target(target, k: int):
    """Captum's target expansion for ``k`` noisy copies of each example (example-major)."""
    if isinstance(target, list):
        return [t for t in target for _ in range(k)]
    if isinstance(target, torch.Tensor) and target.numel() > 1:
        return target.repeat_interleave(k, dim=0)
    return target


def _repeat_args(additional_forward_args, k: int, batch: int):
    args = _as_args(additional_forward_args)
    return None if args is None else _tiled(args, k, batch, interleave=True)


class NoiseTunnel(_Attribution):
    """SmoothGrad / SmoothGrad² / VarGrad around a method of this module, as ``captum.attr.NoiseTunnel``.

    ``nt_type="smoothgrad"`` averages the method over ``nt_samples`` copies ``x + ε``,
    ``ε ~ N(0, stdevs²)``; ``"smoothgrad_sq"`` averages the squares; ``"vargrad"`` returns the
    variance. Saliency (with or without ``abs``) runs on :func:`fastattr.smoothgrad`; other methods
    (IntegratedGradients: SmoothGrad-IG) run on ``nt_samples_batch_size`` noisy copies of the batch
    at a time. Layer methods give layer-shaped results, as in Captum.
    """

    def __init__(self, attribution_method: _Attribution):
        if not isinstance(attribution_method, _Attribution) or isinstance(attribution_method, NoiseTunnel):
            raise TypeError("NoiseTunnel wraps an attribution method from fastattr.integrations.captum "
                            f"(other than NoiseTunnel), got {type(attribution_method).__name__}")
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method
        self.is_delta_supported = attribution_method.has_convergence_delta()

    def has_convergence_delta(self) -> bool:
        return self.is_delta_supported

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def attribute(self, inputs, nt_type: str = "smoothgrad", nt_samples: int = 5,
                  nt_samples_batch_size: Optional[int] = None, stdevs: Union[float, Tuple[float, ...]] = 1.0,
                  draw_baseline_from_distrib: bool = False, **kwargs):
        """Returns attributions shaped like ``inputs``; with ``return_convergence_delta=True`` (methods
        that have one) also the deltas of all ``batch × nt_samples`` noisy copies, in Captum's order.

        Extra keyword: ``generator`` (torch.Generator or int seed; default seed 0) for the noise.
        """
        generator = make_generator(kwargs.pop("generator", None))
        if nt_type not in VARIANTS:
            raise ValueError(f"nt_type must be one of {VARIANTS}, got {nt_type!r}")
        nt_samples = check_count(nt_samples, "nt_samples")
        nt_samples_batch_size = check_count(nt_samples_batch_size, "nt_samples_batch_size", optional=True)
        x, is_tuple = _single_input(inputs)
        stdev = self._stdev(stdevs)
        k = nt_samples if nt_samples_batch_size is None else min(nt_samples, nt_samples_batch_size)
        method = self.attribution_method
        if isinstance(method, Saliency) and set(kwargs) <= {"target", "abs", "additional_forward_args"}:
            model, t, max_batch = _bind(method.forward_func, x, kwargs.get("target"),
                                        kwargs.get("additional_forward_args"), k * x.shape[0],
                                        nt_samples * x.shape[0])
            attr = _smoothgrad(model, x, t, n_samples=nt_samples, stdev=stdev, variant=nt_type,
                               abs=kwargs.get("abs", True), generator=generator, max_batch=max_batch)
            return _output(attr, is_tuple)
        return self._noise_loop(x, is_tuple, nt_type, nt_samples, k, stdev, draw_baseline_from_distrib,
                                generator, kwargs)

    @staticmethod
    def _stdev(stdevs) -> float:
        if isinstance(stdevs, tuple):
            if len(stdevs) != 1:
                raise ValueError(f"one input tensor takes one stdev, got a tuple of {len(stdevs)}")
            stdevs = stdevs[0]
        if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float)) or stdevs < 0:
            raise ValueError(f"stdevs must be a number >= 0, got {stdevs!r}")
        return float(stdevs)

    def _noise_loop(self, x, is_tuple, nt_type, nt_samples, k, stdev, draw_baseline_from_distrib, generator,
                    kwargs):
        x = x.detach()
        batch, shape = x.shape[0], tuple(x.shape[1:])
        want_delta = self.is_delta_supported and bool(kwargs.get("return_convergence_delta", False))
        baselines = _single_of(kwargs.get("baselines"))
        sigma = torch.tensor(stdev, dtype=x.dtype, device=x.device)
        method = self.attribution_method
        total = total_sq = None
        deltas = []
        if kwargs.get("target") is None:
            # Explain the class of the clean input in every noisy copy, as fastattr.smoothgrad does.
            model, _, _ = _bind(self.forward_func, x, None, kwargs.get("additional_forward_args"), None, batch)
            kwargs = dict(kwargs, target=resolve_target(model, x, None))
        for j0 in range(0, nt_samples, k):
            kk = min(k, nt_samples - j0)
            # One full-batch draw per sample, in order: the same noise as fastattr.smoothgrad.
            noise = torch.stack([torch.randn(x.shape, generator=generator, dtype=x.dtype) for _ in range(kk)], 1)
            noisy = x.repeat_interleave(kk, dim=0) + sigma * noise.to(x.device).reshape((batch * kk,) + shape)
            part = dict(kwargs)
            if "target" in part:
                part["target"] = _repeat_target(part["target"], kk)
            if "additional_forward_args" in part:
                part["additional_forward_args"] = _repeat_args(part["additional_forward_args"], kk, batch)
            if isinstance(method, GradientShap):
                part.setdefault("generator", generator)  # one stream: the noise, then each call's draws
            if isinstance(baselines, torch.Tensor):
                if draw_baseline_from_distrib:
                    rows = torch.randint(baselines.shape[0], (batch * kk,), generator=generator)
                    part["baselines"] = baselines[rows.to(baselines.device)]
                elif baselines.shape[0] == batch and batch > 1:
                    part["baselines"] = baselines.repeat_interleave(kk, dim=0)
            out = method.attribute((noisy,) if is_tuple else noisy, **part)
            if want_delta:
                out, delta = out
                deltas.append(delta)
            out_tuple = isinstance(out, tuple)
            out = out[0] if out_tuple else out
            acc_dtype = accum_dtype(out.dtype)
            e = out.reshape((batch, kk) + tuple(out.shape[1:])).to(acc_dtype)
            total = e.sum(1) if total is None else total + e.sum(1)
            total_sq = (e * e).sum(1) if total_sq is None else total_sq + (e * e).sum(1)
        mean, mean_sq = total / nt_samples, total_sq / nt_samples
        attr = {"smoothgrad": mean, "smoothgrad_sq": mean_sq, "vargrad": mean_sq - mean * mean}[nt_type]
        attr = _output(attr.to(out.dtype), out_tuple)
        return (attr, torch.cat(deltas)) if want_delta else attr


class GradientShap(_Attribution):
    """GradientSHAP, as ``captum.attr.GradientShap`` (see :func:`fastattr.attribution.gradient_shap`).

    For each example and each of ``n_samples`` draws: a baseline ``b`` uniform from ``baselines``
    ``[M, ...]``, noise ``ε ~ N(0, stdevs²)`` and ``α ~ U(0, 1)``; the attribution is the mean of
    ``(x + ε − b) ⊙ ∇f_t(b + α (x + ε − b))`` (the bare gradient with ``multiply_by_inputs=False``).
    The deltas (``return_convergence_delta=True``) are ``Σ attr_j − (f_t(x + ε_j) − f_t(b_j))`` for
    every example and draw, example-major (``[B · n_samples]``), as Captum orders them.
    """

    _has_delta = True

    def __init__(self, forward_func: Callable, multiply_by_inputs: bool = True):
        super().__init__(forward_func, multiply_by_inputs)

    def attribute(self, inputs, baselines, n_samples: int = 5, stdevs: Union[float, Tuple[float, ...]] = 0.0,
                  target=None, additional_forward_args: Any = None, return_convergence_delta: bool = False, *,
                  generator=None):
        """Returns attributions shaped like ``inputs`` (and the deltas if asked).

        Extra keyword: ``generator`` — a ``torch.Generator`` or int seed (default seed 0) for
        fastattr's stream, or ``"global"`` for Captum's draws from the global NumPy / torch RNGs.
        """
        x, is_tuple = _single_input(inputs)
        if callable(baselines) and not isinstance(baselines, torch.Tensor):
            takes_inputs = len(inspect.signature(baselines).parameters) > 0
            baselines = baselines(inputs) if takes_inputs else baselines()
        baselines = _single_of(baselines)
        stdev = NoiseTunnel._stdev(stdevs)
        n_samples = check_count(n_samples, "n_samples")
        check_flag(return_convergence_delta, "return_convergence_delta")
        batch = x.shape[0]
        model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args, None,
                                    n_samples * batch)
        t, x = prepare(model, x, t)
        refs = reference_inputs(x, baselines)
        if isinstance(generator, str):
            if generator != "global":
                raise ValueError(f"generator must be a torch.Generator, an int seed or 'global', "
                                 f"got {generator!r}")
            index, alpha, noise = self._global_draws(x, n_samples, refs.shape[0], stdev)
        else:
            index, alpha, noise = shap_draws(make_generator(generator), n_samples, refs.shape[0], x, stdev)
        out = shap_from_draws(model, x, t, refs, index, alpha, noise,
                              multiply_by_inputs=self._multiply_by_inputs, noisy_difference=True,
                              return_convergence_delta=return_convergence_delta, max_batch=max_batch,
                              memory_budget=None)
        if return_convergence_delta:
            return _output(out[0], is_tuple), out[1].reshape(-1)
        return _output(out, is_tuple)

    @staticmethod
    def _global_draws(x: torch.Tensor, n_samples: int, n_refs: int, stdev: float):
        """Captum's draws, in Captum's order and calls: ``np.random.choice`` baseline indices, then
        ``torch.normal`` noise (drawn even when ``stdev = 0``), then ``np.random.uniform`` α's; each
        example-major ``[B · N]``, returned as ``[N, B]`` / ``[N, B, ...]``."""
        batch, shape = x.shape[0], tuple(x.shape[1:])
        index = torch.as_tensor(np.random.choice(n_refs, n_samples * batch), dtype=torch.long)
        noise = torch.normal(0.0, torch.full((batch * n_samples,) + shape, stdev, device=x.device))
        alpha = torch.tensor(np.random.uniform(0.0, 1.0, batch * n_samples), dtype=x.dtype)
        noise = noise.view((batch, n_samples) + shape).transpose(0, 1) if stdev > 0 else None
        return index.view(batch, n_samples).T, alpha.view(batch, n_samples).T, noise


class _LayerAttribution(_Attribution):
    """What Captum's ``LayerAttribution`` offers: ``layer``, ``device_ids`` and ``interpolate``."""

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids=None,
                 multiply_by_inputs: Optional[bool] = None):
        super().__init__(forward_func, multiply_by_inputs)
        if isinstance(layer, (list, tuple)):
            raise NotImplementedError("fastattr.integrations.captum attributes to one layer; got a list of "
                                      f"{len(layer)} (call once per layer, or use captum.attr)")
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
        _unsupported(device_ids=device_ids)
        if isinstance(forward_func, nn.DataParallel):
            raise NotImplementedError("DataParallel models are not supported; pass the wrapped module")
        self.layer = layer
        self.device_ids = device_ids

    @staticmethod
    def interpolate(layer_attribution: torch.Tensor, interpolate_dims, interpolate_mode: str = "nearest"):
        """``F.interpolate(layer_attribution, interpolate_dims, mode=interpolate_mode)``, as Captum's."""
        return F.interpolate(layer_attribution, interpolate_dims, mode=interpolate_mode)


class LayerIntegratedGradients(_LayerAttribution):
    """Layer Integrated Gradients, as ``captum.attr.LayerIntegratedGradients`` (see
    :func:`fastattr.attribution.layer_integrated_gradients`): IG with respect to ``layer``'s output
    (or input), e.g. an ``nn.Embedding`` for token ids. Returns a tensor shaped like that tensor."""

    _has_delta = True

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids=None,
                 multiply_by_inputs: bool = True):
        super().__init__(forward_func, layer, device_ids, multiply_by_inputs)

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                  grad_kwargs: Optional[dict] = None):
        """Returns the layer attributions ``[B, ...]``, and with ``return_convergence_delta=True`` also
        the per-example delta ``Σ attr − (f_t(x) − f_t(x'))``."""
        _unsupported(grad_kwargs=grad_kwargs)
        x, _ = _single_input(inputs)
        baselines = _single_of(baselines)
        model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args,
                                    check_count(internal_batch_size, "internal_batch_size", optional=True),
                                    n_steps * x.shape[0])
        # One baseline row per example, so extra forward arguments tile the same way on every pass.
        base = path_baselines(x, baselines).expand_as(x)
        return _layer_integrated_gradients(model, x, t, layer=self.layer, baselines=base, n_steps=n_steps,
                                           method=method, multiply_by_inputs=self._multiply_by_inputs,
                                           return_convergence_delta=return_convergence_delta,
                                           attribute_to_layer_input=attribute_to_layer_input,
                                           max_batch=max_batch)


class LayerGradCam(_LayerAttribution):
    """Grad-CAM at a layer, as ``captum.attr.LayerGradCam`` (see :func:`fastattr.grad_cam`): the
    layer-resolution map ``Σ_k α_k A^k`` as ``[B, 1, ...]`` (``attr_dim_summation=False``: the
    terms ``α_k A^k`` ``[B, K, ...]``), not upsampled; ``relu_attributions=False`` by default."""

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids=None):
        super().__init__(forward_func, layer, device_ids)

    def attribute(self, inputs, target=None, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False, relu_attributions: bool = False,
                  attr_dim_summation: bool = True, grad_kwargs: Optional[dict] = None):
        _unsupported(grad_kwargs=grad_kwargs)
        check_flag(attr_dim_summation, "attr_dim_summation")
        x, _ = _single_input(inputs)
        model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args, None, x.shape[0])
        cam = cam_maps(model, x, t, self.layer, relu_attributions=relu_attributions, upsample=False,
                       max_batch=max_batch, memory_budget=None, plus_plus=False,
                       attribute_to_layer_input=attribute_to_layer_input, channel_sum=attr_dim_summation)
        return cam.unsqueeze(1) if attr_dim_summation else cam


def _module_model(model, name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} needs model to be an nn.Module (its nonlinearity modules are hooked), "
                        f"got {type(model).__name__}")
    return model


class GuidedBackprop(_Attribution):
    """Guided Backpropagation, as ``captum.attr.GuidedBackprop`` (see :func:`fastattr.guided_backprop`):
    the input gradient with every ``nn.ReLU`` module passing back only positive gradients."""

    def __init__(self, model: nn.Module):
        super().__init__(_module_model(model, "GuidedBackprop"))
        self.model = model

    def attribute(self, inputs, target=None, additional_forward_args: Any = None):
        x, is_tuple = _single_input(inputs)
        model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args, None, x.shape[0])
        return _output(_guided_backprop(model, x, t, max_batch=max_batch), is_tuple)


class GuidedGradCam(_Attribution):
    """Guided Grad-CAM, as ``captum.attr.GuidedGradCam`` (see :func:`fastattr.guided_grad_cam`):
    guided backprop times the ReLU'd Grad-CAM map of ``layer``, upsampled to the input with
    ``interpolate_mode`` (``"nearest"`` by default, as in Captum)."""

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids=None):
        super().__init__(_module_model(model, "GuidedGradCam"))
        self.grad_cam = LayerGradCam(model, layer, device_ids)
        self.guided_backprop = GuidedBackprop(model)

    def attribute(self, inputs, target=None, additional_forward_args: Any = None,
                  interpolate_mode: str = "nearest", attribute_to_layer_input: bool = False):
        x, is_tuple = _single_input(inputs)
        model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args, None, x.shape[0])
        out = _guided_grad_cam(model, x, t, layer=self.grad_cam.layer, relu_attributions=True,
                               interpolate_mode=interpolate_mode,
                               attribute_to_layer_input=attribute_to_layer_input, max_batch=max_batch)
        return _output(out, is_tuple)


def _custom_attributions(func: Callable, multipliers: torch.Tensor, x: torch.Tensor, base: torch.Tensor):
    """Captum's ``custom_attribution_func`` on one input: ``func(m)``, ``func(m, x)`` or ``func(m, x, x')``
    with tuples of one tensor, by the number of its parameters; its one attribution tensor."""
    if not callable(func):
        raise TypeError(f"custom_attribution_func must be callable, got {type(func).__name__}")
    arguments = ((multipliers,), (x,), (base,))
    count = len(inspect.signature(func).parameters)
    if not 1 <= count <= 3:
        raise ValueError(f"custom_attribution_func must take 1 to 3 arguments (multipliers, inputs, baselines), "
                         f"got {count}")
    out = func(*arguments[:count])
    out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
    if not isinstance(out, torch.Tensor):
        raise TypeError("custom_attribution_func must return a tuple of one tensor for one input tensor, "
                        f"got {type(out).__name__}")
    return out


class DeepLift(_Attribution):
    """DeepLift (rescale rule), as ``captum.attr.DeepLift`` (see :func:`fastattr.attribution.deeplift`):
    ``(x − x') ⊙ m``, ``m`` the gradient with every ``nn.ReLU``, ``nn.ELU``, ``nn.LeakyReLU``,
    ``nn.Sigmoid``, ``nn.Tanh``, ``nn.Softplus``, ``nn.MaxPool1d/2d/3d`` and ``nn.Softmax`` module's
    derivative replaced by ``Δy/Δx`` between input and baseline (``multiply_by_inputs=False``: ``m``).
    Functional nonlinearities keep their plain gradient, as in Captum. Each chunk of examples runs with
    its baselines as one batch, forward and backward once; see the module notes for where the values
    differ from Captum's."""

    _has_delta = True

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True, eps: float = 1e-10):
        super().__init__(_module_model(model, "DeepLift"), multiply_by_inputs)
        self.model = model
        self.eps = eps

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args: Any = None,
                  return_convergence_delta: bool = False, custom_attribution_func: Optional[Callable] = None):
        """Returns attributions shaped like ``inputs``, and with ``return_convergence_delta=True`` also the
        per-example delta ``Σ attr − (f_t(x) − f_t(x'))``. ``custom_attribution_func`` (Captum's: called
        with the multipliers, and the inputs and baselines if it takes them, as tuples) replaces the
        product with ``x − x'``."""
        x, is_tuple = _single_input(inputs)
        baselines = _single_of(baselines)
        check_flag(return_convergence_delta, "return_convergence_delta")
        batch = x.shape[0]
        model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args, None, 2 * batch)
        if _has_batch_tensor(_as_args(additional_forward_args), batch):
            max_batch = max(max_batch, 2 * batch)  # the whole batch and its baselines in one forward
        multiply = self._multiply_by_inputs and custom_attribution_func is None
        out = _deeplift(model, x, t, baselines=baselines, multiply_by_inputs=multiply,
                        return_convergence_delta=return_convergence_delta and custom_attribution_func is None,
                        eps=self.eps, max_batch=max_batch)
        if custom_attribution_func is None:
            return (_output(out[0], is_tuple), out[1]) if return_convergence_delta else _output(out, is_tuple)
        base = path_baselines(x, baselines).expand_as(x)
        attr = _custom_attributions(custom_attribution_func, out, x.detach(), base)
        if not return_convergence_delta:
            return _output(attr, is_tuple)
        return _output(attr, is_tuple), self.compute_convergence_delta(attr, base, x, target, additional_forward_args)
