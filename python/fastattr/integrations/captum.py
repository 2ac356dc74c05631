"""Drop-in replacements for Captum's gradient attributions.

Change ``from captum.attr import X`` to ``from fastattr.integrations.captum import X`` for X in
``Saliency``, ``InputXGradient``, ``IntegratedGradients``, ``NoiseTunnel``, ``GradientShap``,
``DeepLift``, ``LayerIntegratedGradients``, ``LayerGradCam``, ``GuidedBackprop`` and
``GuidedGradCam``: the same constructors, ``attribute`` arguments and return types (a tensor in
gives a tensor out, a tuple in gives a tuple out; layer methods return a tensor shaped like the
layer's tensor, a tuple for a layer with several, a list for a list of layers; ``(attributions,
delta)`` with ``return_convergence_delta=True``) and the same values
(Integrated Gradients uses Captum's quadrature nodes and weights), computed by fastattr's chunked
paths.

What differs from Captum:

- Noise. ``NoiseTunnel`` draws its noise (and ``draw_baseline_from_distrib``'s baselines) from
  fastattr's own seeded generator, not from the global torch RNG, so a call is reproducible (seed 0
  by default) and agrees with Captum in distribution, not draw for draw. Pass ``generator=`` (a
  ``torch.Generator`` or an int seed) as an extra keyword to ``NoiseTunnel.attribute`` to choose
  the stream. ``GradientShap.attribute`` takes the same extra keyword. Both also take
  ``generator="global"``: draw from the global NumPy and torch RNGs in Captum's calls and order
  (GradientShap: baseline indices, noise, then the α's; NoiseTunnel: ``torch.normal`` per partition
  and input, ``draw_baseline_from_distrib``'s rows once for the full partitions and once for the rest,
  an inner GradientShap's own draws), so that after the same ``np.random.seed`` / ``torch.manual_seed``
  the result equals Captum's draw for draw.
- Several input tensors. ``inputs`` may be a tuple of tensors (each with its own baselines, and
  ``stdevs`` in ``NoiseTunnel`` / ``GradientShap``), returned as a tuple in the same order: they are
  packed into one ``[N, Σ D_i]`` tensor of their common floating dtype (integer and bool inputs are
  cast back before each call), and the model is called once per chunk with all of them.
  ``GuidedGradCam`` gives an input its Grad-CAM map cannot be upsampled to an empty tensor, with a
  warning, as Captum does.
- Layers. A layer's output (or, with ``attribute_to_layer_input=True``, its positional inputs) must
  be a tensor or a tuple of tensors with the batch axis first; ``LayerIntegratedGradients`` also
  takes a list of layers, as Captum does (``LayerGradCam``, as in Captum, one layer). ``grad_kwargs``
  go to ``torch.autograd.grad`` (``retain_graph``, ``create_graph``, ``allow_unused``,
  ``materialize_grads``); ``device_ids`` (DataParallel) raise.
- Targets select one scalar per example: an int, a list of ints or a 1-D tensor (2-D outputs), or
  a tuple / list of tuples indexing every non-batch dimension of the output; ``target=None`` needs
  a model with one output per example, as in Captum.
- Errors. Where Captum asserts (targets that do not fit the output, a missing target, windows and
  strides that do not fit the inputs, mismatched shapes), the drop-ins raise
  :class:`CaptumAssertionError`, a ``ValueError`` that is also an ``AssertionError``.
  ``attribute_future`` raises ``NotImplementedError`` except on ``FeatureAblation``, as in Captum.
- ``internal_batch_size`` bounds the inputs per forward pass, as in Captum (fastattr's
  ``max_batch``); when it is None, fastattr sizes the chunks from free memory. The other methods
  (Captum runs them in one batch) are chunked from free memory as well. A model whose forward couples
  its rows (:func:`fastattr.core.batch_coupled`: BatchNorm with batch statistics, dropout in training
  mode) runs Captum's forwards instead, all inputs in one where Captum does, so its values are Captum's;
  DeepLift then runs inputs and baselines in one forward and its delta from two more, as Captum does.
- ``GuidedGradCam`` raises when the Grad-CAM map cannot be interpolated to the input (Captum warns
  and returns an empty tensor).
- ``NoiseTunnel`` wraps any object with Captum's interface (``forward_func`` and ``attribute``), a
  ``captum.attr`` method included.
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
import warnings
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import batch_coupled, check_count, check_flag, make_generator, path_baselines, reference_inputs
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
from ._captum_common import (CaptumAssertionError, _as_args, _Attribution, _bind, _has_batch_tensor, _output, _Pack,
                             _tensors, _tiled, _unsupported)
from ._captum_perturbation import FeatureAblation, KernelShap, Lime, Occlusion

__all__ = ["CaptumAssertionError", "DeepLift", "FeatureAblation", "GradientShap", "GuidedBackprop", "GuidedGradCam", "InputXGradient",
           "IntegratedGradients", "KernelShap", "LayerGradCam", "LayerIntegratedGradients", "Lime", "NoiseTunnel",
           "Occlusion", "Saliency"]


class Saliency(_Attribution):
    """Saliency, as ``captum.attr.Saliency``: the input gradient of the target (absolute value by default)."""

    def attribute(self, inputs, target=None, abs: bool = True, additional_forward_args: Any = None):
        pack = _Pack(self.forward_func, inputs)
        model, t, max_batch = _bind(pack.model, pack.x, target, additional_forward_args, None, pack.x.shape[0])
        return pack.out(_saliency(model, pack.x, t, abs=abs, max_batch=max_batch))


class InputXGradient(_Attribution):
    """Input × Gradient, as ``captum.attr.InputXGradient``."""

    _multiply_by_inputs = True

    def attribute(self, inputs, target=None, additional_forward_args: Any = None):
        pack = _Pack(self.forward_func, inputs)
        model, t, max_batch = _bind(pack.model, pack.x, target, additional_forward_args, None, pack.x.shape[0])
        return pack.out(_input_x_gradient(model, pack.x, t, max_batch=max_batch))


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
        pack = _Pack(self.forward_func, inputs)
        x = pack.x
        model, t, max_batch = _bind(pack.model, x, target, additional_forward_args,
                                    check_count(internal_batch_size, "internal_batch_size", optional=True),
                                    n_steps * x.shape[0])
        out = _integrated_gradients(model, x, t, baselines=pack.baselines(baselines), n_steps=n_steps,
                                    method=method, multiply_by_inputs=self._multiply_by_inputs,
                                    return_convergence_delta=return_convergence_delta, autocast=self.autocast,
                                    max_batch=max_batch)
        if return_convergence_delta:
            return pack.out(out[0]), out[1]
        return pack.out(out)


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


def _stdevs(stdevs, n: int) -> tuple:
    """``stdevs`` (a number, or a tuple of one per input) as a tuple of ``n`` numbers ``>= 0``."""
    values = stdevs if isinstance(stdevs, tuple) else (stdevs,) * n
    if len(values) != n:
        raise CaptumAssertionError(f"stdevs must be a number or a tuple of one per input tensor ({n}), got a "
                                   f"tuple of {len(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"stdevs must be a number >= 0 (or a tuple of them), got {stdevs!r}")
    return tuple(float(v) for v in values)


def _expand_baselines(baselines, batch: int, k: int, draw: bool, generator: Optional[torch.Generator]):
    """Baselines for ``k`` noisy copies of each example (example-major): rows drawn from the given ones
    with ``draw`` (from ``generator``, the same rows for every input; without one, Captum's
    ``np.random.choice`` per input), per-example rows repeated, others as they are."""
    rows = None

    def one(b):
        nonlocal rows
        if not isinstance(b, torch.Tensor) or b.dim() == 0:
            return b
        if draw and generator is None:
            return b[np.random.choice(b.shape[0], batch * k).tolist()]
        if draw:
            if rows is None:
                rows = torch.randint(b.shape[0], (batch * k,), generator=generator)
            return b[rows.to(b.device) % b.shape[0]]
        if b.shape[0] == batch and batch > 1:
            return b.repeat_interleave(k, dim=0)
        return b
    return tuple(one(b) for b in baselines) if isinstance(baselines, tuple) else one(baselines)


class NoiseTunnel(_Attribution):
    """SmoothGrad / SmoothGrad² / VarGrad around an attribution method, as ``captum.attr.NoiseTunnel``.

    ``nt_type="smoothgrad"`` averages the method over ``nt_samples`` copies ``x + ε``,
    ``ε ~ N(0, stdevs²)`` (one ``stdevs`` per input tensor, or one for all); ``"smoothgrad_sq"``
    averages the squares; ``"vargrad"`` returns the variance. ``attribution_method`` is any object with
    Captum's interface (``forward_func``, ``attribute``; a drop-in of this module or a ``captum.attr``
    method). Saliency on one input runs on :func:`fastattr.smoothgrad`; other methods run on
    ``nt_samples_batch_size`` noisy copies of the batch at a time. Layer methods give layer-shaped
    results, as in Captum.
    """

    def __init__(self, attribution_method):
        if isinstance(attribution_method, NoiseTunnel) or not callable(getattr(attribution_method, "attribute", None)) \
                or not hasattr(attribution_method, "forward_func"):
            raise TypeError("NoiseTunnel wraps an attribution method with Captum's interface (forward_func and "
                            f"attribute), other than NoiseTunnel, got {type(attribution_method).__name__}")
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method
        has_delta = getattr(attribution_method, "has_convergence_delta", None)
        self.is_delta_supported = bool(has_delta()) if callable(has_delta) else False

    def has_convergence_delta(self) -> bool:
        return self.is_delta_supported

    @property
    def multiplies_by_inputs(self) -> bool:
        return bool(getattr(self.attribution_method, "multiplies_by_inputs", False))

    def attribute(self, inputs, nt_type: str = "smoothgrad", nt_samples: int = 5,
                  nt_samples_batch_size: Optional[int] = None, stdevs: Union[float, Tuple[float, ...]] = 1.0,
                  draw_baseline_from_distrib: bool = False, **kwargs):
        """Returns attributions shaped like ``inputs`` (a tuple for a tuple); with
        ``return_convergence_delta=True`` (methods that have one) also the deltas of all
        ``batch × nt_samples`` noisy copies, in Captum's order.

        Extra keyword: ``generator`` (torch.Generator or int seed; default seed 0) for the noise, or
        ``"global"`` for Captum's draws: ``torch.normal`` noise from the global torch RNG and
        ``draw_baseline_from_distrib``'s rows from ``np.random``, in Captum's calls and order.
        """
        generator = kwargs.pop("generator", None)
        if isinstance(generator, str) and generator != "global":
            raise ValueError(f"generator must be a torch.Generator, an int seed or 'global', got {generator!r}")
        generator = None if isinstance(generator, str) else make_generator(generator)
        if nt_type not in VARIANTS:
            raise CaptumAssertionError(f"nt_type must be one of {VARIANTS}, got {nt_type!r}")
        nt_samples = check_count(nt_samples, "nt_samples")
        nt_samples_batch_size = check_count(nt_samples_batch_size, "nt_samples_batch_size", optional=True)
        xs, is_tuple = _tensors(inputs)
        n = len(xs)
        values = _stdevs(stdevs, n)
        k = nt_samples if nt_samples_batch_size is None else min(nt_samples, nt_samples_batch_size)
        method = self.attribution_method
        if isinstance(method, Saliency) and n == 1 and set(kwargs) <= {"target", "abs", "additional_forward_args"} \
                and generator is not None:
            x = xs[0]
            model, t, max_batch = _bind(method.forward_func, x, kwargs.get("target"),
                                        kwargs.get("additional_forward_args"), k * x.shape[0],
                                        nt_samples * x.shape[0])
            attr = _smoothgrad(model, x, t, n_samples=nt_samples, stdev=float(values[0]), variant=nt_type,
                               abs=kwargs.get("abs", True), generator=generator, max_batch=max_batch)
            return _output(attr, is_tuple)
        return self._noise_loop(xs, is_tuple, nt_type, nt_samples, k, values, draw_baseline_from_distrib,
                                generator, kwargs)

    def _noise_loop(self, xs, is_tuple, nt_type, nt_samples, k, stdevs, draw_baseline_from_distrib, generator,
                    kwargs):
        xs = tuple(x.detach() for x in xs)
        batch = xs[0].shape[0]
        want_delta = self.is_delta_supported and bool(kwargs.get("return_convergence_delta", False))
        baselines = kwargs.get("baselines")
        method = self.attribution_method
        total = total_sq = dtypes = None
        out_tuple = is_tuple
        deltas = []
        drawn = {}  # Captum draws the baselines once for its full partitions, once for the rest
        for j0 in range(0, nt_samples, k):
            kk = min(k, nt_samples - j0)
            if generator is None:  # Captum's: one torch.normal per input of the partition
                noisy = tuple(x.repeat_interleave(kk, dim=0) + torch.normal(
                    0, torch.tensor(sd, device=x.device).repeat((batch * kk,) + tuple(x.shape[1:])))
                    for x, sd in zip(xs, stdevs))
            else:
                # One full-batch draw per sample and input, in order: the same noise as fastattr.smoothgrad.
                draws = [[torch.randn(x.shape, generator=generator, dtype=x.dtype if x.is_floating_point()
                                      else torch.get_default_dtype()) for x in xs] for _ in range(kk)]
                noisy = tuple(x.repeat_interleave(kk, dim=0)
                              + float(sd) * torch.stack([d[i] for d in draws], 1).to(x.device).reshape(
                                  (batch * kk,) + tuple(x.shape[1:]))
                              for i, (x, sd) in enumerate(zip(xs, stdevs)))
            part = dict(kwargs)
            if "target" in part:
                part["target"] = _repeat_target(part["target"], kk)
            if "additional_forward_args" in part:
                part["additional_forward_args"] = _repeat_args(part["additional_forward_args"], kk, batch)
            if isinstance(method, GradientShap):
                # one stream: the noise, then each call's draws ("global" for Captum's)
                part.setdefault("generator", "global" if generator is None else generator)
            if baselines is not None:
                if generator is not None or kk not in drawn:
                    drawn[kk] = _expand_baselines(baselines, batch, kk, draw_baseline_from_distrib, generator)
                part["baselines"] = drawn[kk]
            if part.get("feature_mask") is not None:
                part["feature_mask"] = _expand_baselines(part["feature_mask"], batch, kk, False, generator)
            out = method.attribute(noisy if is_tuple else noisy[0], **part)
            if want_delta:
                out, delta = out
                deltas.append(delta)
            out_tuple = isinstance(out, tuple)
            outs = out if out_tuple else (out,)
            dtypes = [o.dtype for o in outs]
            es = [o.reshape((batch, kk) + tuple(o.shape[1:])).to(accum_dtype(o.dtype)) for o in outs]
            sums, sq = [e.sum(1) for e in es], [(e * e).sum(1) for e in es]
            total = sums if total is None else [a + b for a, b in zip(total, sums)]
            total_sq = sq if total_sq is None else [a + b for a, b in zip(total_sq, sq)]
        attrs = []
        for mean_sum, sq_sum, dtype in zip(total, total_sq, dtypes):
            mean, mean_sq = mean_sum / nt_samples, sq_sum / nt_samples
            attr = {"smoothgrad": mean, "smoothgrad_sq": mean_sq, "vargrad": mean_sq - mean * mean}[nt_type]
            attrs.append(attr.to(dtype))
        attr = tuple(attrs) if out_tuple else attrs[0]
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
        pack = _Pack(self.forward_func, inputs)
        if callable(baselines) and not isinstance(baselines, torch.Tensor):
            takes_inputs = len(inspect.signature(baselines).parameters) > 0
            baselines = baselines(inputs) if takes_inputs else baselines()
            if not isinstance(baselines, (torch.Tensor, tuple)):
                raise CaptumAssertionError("baselines must be tensors or a function returning them, got a "
                                           f"function returning {type(baselines).__name__}")
        baselines = pack.distribution(baselines)
        stdevs = _stdevs(stdevs, len(pack.xs))
        stdev = stdevs[0]
        n_samples = check_count(n_samples, "n_samples")
        check_flag(return_convergence_delta, "return_convergence_delta")
        x = pack.x
        batch = x.shape[0]
        model, t, max_batch = _bind(pack.model, x, target, additional_forward_args, None, n_samples * batch)
        t, x = prepare(model, x, t, max_batch)
        if isinstance(generator, str) and generator != "global":
            raise ValueError(f"generator must be a torch.Generator, an int seed or 'global', got {generator!r}")
        if pack.packed is not None:
            refs, index, alpha, noise = _several_draws(pack, x, baselines, n_samples, stdevs, generator)
        elif isinstance(generator, str):
            refs = reference_inputs(x, baselines)
            index, alpha, noise = self._global_draws(x, n_samples, refs.shape[0], stdev)
        else:
            refs = reference_inputs(x, baselines)
            index, alpha, noise = shap_draws(make_generator(generator), n_samples, refs.shape[0], x, stdev)
        out = shap_from_draws(model, x, t, refs, index, alpha, noise,
                              multiply_by_inputs=self._multiply_by_inputs, noisy_difference=True,
                              return_convergence_delta=return_convergence_delta, max_batch=max_batch,
                              memory_budget=None)
        if return_convergence_delta:
            return pack.out(out[0]), out[1].reshape(-1)
        return pack.out(out)

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


def _several_draws(pack: _Pack, x: torch.Tensor, refs: list, n_samples: int, stdevs, generator):
    """GradientSHAP's draws for several inputs, as Captum makes them: a reference row drawn for each input
    on its own, Gaussian noise per input, one α per example and sample. ``generator="global"`` draws from
    the global RNGs in Captum's order (NumPy: each input's rows, then the α's; torch: each input's noise);
    otherwise from fastattr's stream. Returns the chosen references ``[B · N, Σ D_i]`` (example-major),
    the index into them ``[N, B]``, α ``[N, B]`` and the noise ``[N, B, Σ D_i]`` or None."""
    batch, n = x.shape[0], len(refs)
    sds = stdevs if isinstance(stdevs, tuple) else (stdevs,) * n
    shapes = [(batch * n_samples,) + tuple(v.shape[1:]) for v in pack.xs]
    if generator == "global":
        rows = [torch.as_tensor(np.random.choice(r.shape[0], n_samples * batch), dtype=torch.long) for r in refs]
        noise = [torch.normal(0.0, torch.full(s, float(sd), device=x.device)) for s, sd in zip(shapes, sds)]
        alpha = torch.tensor(np.random.uniform(0.0, 1.0, batch * n_samples), dtype=torch.float64)
    else:
        gen = make_generator(generator)
        rows = [torch.randint(r.shape[0], (batch * n_samples,), generator=gen) for r in refs]
        alpha = torch.rand(batch * n_samples, generator=gen, dtype=torch.float64)
        noise = [torch.randn(s, generator=gen, dtype=x.dtype).to(x.device) * float(sd) for s, sd in zip(shapes, sds)]
    chosen = torch.cat([r[i.to(r.device)] for r, i in zip(refs, rows)], 1)
    index = torch.arange(batch * n_samples, device=x.device).view(batch, n_samples).T
    if all(float(sd) == 0 for sd in sds):
        noisy = None
    else:
        flat = torch.cat([e.to(x.dtype).reshape(e.shape[0], -1) for e in noise], 1)
        noisy = flat.view(batch, n_samples, -1).transpose(0, 1)
    return chosen, index, alpha.view(batch, n_samples).T.to(x.device), noisy


class _LayerAttribution(_Attribution):
    """What Captum's ``LayerAttribution`` offers: ``layer``, ``device_ids`` and ``interpolate``."""

    _several_layers = False

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids=None,
                 multiply_by_inputs: Optional[bool] = None):
        super().__init__(forward_func, multiply_by_inputs)
        if isinstance(layer, list) and self._several_layers:
            if not layer or not all(isinstance(m, nn.Module) for m in layer):
                raise TypeError("layer must be an nn.Module or a non-empty list of them")
        elif isinstance(layer, (list, tuple)):
            raise NotImplementedError(f"{type(self).__name__} attributes to one layer; got a "
                                      f"{type(layer).__name__} of {len(layer)} (call once per layer)")
        elif not isinstance(layer, nn.Module):
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
    (or input), e.g. an ``nn.Embedding`` for token ids. Returns a tensor shaped like that tensor (a
    tuple for a layer with several; a list, one entry per layer, when ``layer`` is a list)."""

    _has_delta = True
    _several_layers = True

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids=None,
                 multiply_by_inputs: bool = True):
        super().__init__(forward_func, layer, device_ids, multiply_by_inputs)

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                  grad_kwargs: Optional[dict] = None):
        """Returns the layer attributions ``[B, ...]``, and with ``return_convergence_delta=True`` also
        the per-example delta ``Σ attr − (f_t(x) − f_t(x'))``; ``grad_kwargs`` go to
        ``torch.autograd.grad``."""
        pack = _Pack(self.forward_func, inputs)
        x = pack.x
        model, t, max_batch = _bind(pack.model, x, target, additional_forward_args,
                                    check_count(internal_batch_size, "internal_batch_size", optional=True),
                                    n_steps * x.shape[0])
        # One baseline row per example, so extra forward arguments tile the same way on every pass.
        base = path_baselines(x, pack.baselines(baselines)).expand_as(x)
        return _layer_integrated_gradients(model, x, t, layer=self.layer, baselines=base, n_steps=n_steps,
                                           method=method, multiply_by_inputs=self._multiply_by_inputs,
                                           return_convergence_delta=return_convergence_delta,
                                           attribute_to_layer_input=attribute_to_layer_input,
                                           grad_kwargs=grad_kwargs, max_batch=max_batch)


class LayerGradCam(_LayerAttribution):
    """Grad-CAM at a layer, as ``captum.attr.LayerGradCam`` (see :func:`fastattr.grad_cam`): the
    layer-resolution map ``Σ_k α_k A^k`` as ``[B, 1, ...]`` (``attr_dim_summation=False``: the
    terms ``α_k A^k`` ``[B, K, ...]``), not upsampled; ``relu_attributions=False`` by default."""

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids=None):
        super().__init__(forward_func, layer, device_ids)

    def attribute(self, inputs, target=None, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False, relu_attributions: bool = False,
                  attr_dim_summation: bool = True, grad_kwargs: Optional[dict] = None):
        check_flag(attr_dim_summation, "attr_dim_summation")
        pack = _Pack(self.forward_func, inputs)
        x = pack.x
        model, t, max_batch = _bind(pack.model, x, target, additional_forward_args, None, x.shape[0])
        cam = cam_maps(model, x, t, self.layer, relu_attributions=relu_attributions, upsample=False,
                       max_batch=max_batch, memory_budget=None, plus_plus=False,
                       attribute_to_layer_input=attribute_to_layer_input, channel_sum=attr_dim_summation,
                       grad_kwargs=grad_kwargs)
        if attr_dim_summation:
            cam = tuple(c.unsqueeze(1) for c in cam) if isinstance(cam, tuple) else cam.unsqueeze(1)
        return cam


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
        pack = _Pack(self.forward_func, inputs)
        model, t, max_batch = _bind(pack.model, pack.x, target, additional_forward_args, None, pack.x.shape[0])
        return pack.out(_guided_backprop(model, pack.x, t, max_batch=max_batch))


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
        pack = _Pack(self.forward_func, inputs)
        x = pack.x
        if pack.packed is not None:
            return self._several(inputs, target, additional_forward_args, interpolate_mode, attribute_to_layer_input)
        model, t, max_batch = _bind(pack.model, x, target, additional_forward_args, None, x.shape[0])
        out = _guided_grad_cam(model, x, t, layer=self.grad_cam.layer, relu_attributions=True,
                               interpolate_mode=interpolate_mode,
                               attribute_to_layer_input=attribute_to_layer_input, max_batch=max_batch)
        return pack.out(out)

    def _several(self, inputs, target, additional_forward_args, interpolate_mode, attribute_to_layer_input):
        """Several input tensors: guided backprop of each times the ReLU'd Grad-CAM map upsampled to it;
        an input the map cannot be upsampled to (another number of dimensions) gets an empty tensor and a
        warning, as in Captum."""
        # Captum's order of forwards (Grad-CAM's, then guided backprop's): the same dropout draws
        cam = self.grad_cam.attribute(inputs, target, additional_forward_args,
                                      attribute_to_layer_input=attribute_to_layer_input, relu_attributions=True)
        guided = self.guided_backprop.attribute(inputs, target, additional_forward_args)
        out = []
        for i, g in enumerate(guided):
            try:
                if g.dim() != cam.dim():
                    raise ValueError(f"the map has {cam.dim()} dimensions and the input {g.dim()}")
                up = F.interpolate(cam, size=tuple(g.shape[2:]), mode=interpolate_mode)
            except (ValueError, NotImplementedError, RuntimeError) as error:
                warnings.warn(f"GuidedGradCam: the layer map {tuple(cam.shape)} cannot be upsampled to inputs[{i}] "
                              f"{tuple(g.shape)} with interpolate_mode={interpolate_mode!r} ({error}); its "
                              "attributions are an empty tensor", UserWarning, stacklevel=3)
                out.append(torch.empty(0, dtype=g.dtype, device=g.device))
                continue
            out.append(g * up.to(g.dtype))
        return tuple(out)


def _custom_attributions(func: Callable, multipliers, xs, bases):
    """Captum's ``custom_attribution_func``: ``func(m)``, ``func(m, x)`` or ``func(m, x, x')`` with tuples of
    one tensor per input, by the number of its parameters; its attributions as a tuple."""
    if not callable(func):
        raise TypeError(f"custom_attribution_func must be callable, got {type(func).__name__}")
    arguments = (multipliers, xs, bases)
    count = len(inspect.signature(func).parameters)
    if not 1 <= count <= 3:
        raise ValueError(f"custom_attribution_func must take 1 to 3 arguments (multipliers, inputs, baselines), "
                         f"got {count}")
    out = func(*arguments[:count])
    out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if len(out) != len(xs) or not all(isinstance(o, torch.Tensor) for o in out):
        raise TypeError(f"custom_attribution_func must return a tuple of {len(xs)} tensor(s), one per input")
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
        pack = _Pack(self.forward_func, inputs)
        x = pack.x
        baselines = pack.baselines(baselines)
        check_flag(return_convergence_delta, "return_convergence_delta")
        batch = x.shape[0]
        model, t, max_batch = _bind(pack.model, x, target, additional_forward_args, None, 2 * batch)
        if _has_batch_tensor(_as_args(additional_forward_args), batch):
            max_batch = max(max_batch, 2 * batch)  # the whole batch and its baselines in one forward
            # whole batches for the tiled arguments: one baseline row per example, not one shared row
            baselines = path_baselines(x, baselines).expand_as(x)
        multiply = self._multiply_by_inputs and custom_attribution_func is None
        # a model that couples a forward's rows (training mode) gets Captum's delta: separate forwards
        own_delta = return_convergence_delta and custom_attribution_func is None and not batch_coupled(model)
        out = _deeplift(model, x, t, baselines=baselines, multiply_by_inputs=multiply,
                        return_convergence_delta=own_delta, eps=self.eps, max_batch=max_batch)
        if own_delta:
            return pack.out(out[0]), out[1]
        base = pack.out(path_baselines(x, baselines).expand_as(x))
        if custom_attribution_func is None:
            attr = pack.out(out)
        else:
            bases = base if isinstance(base, tuple) else (base,)
            multipliers = pack.out(out)
            attr = _custom_attributions(custom_attribution_func,
                                        multipliers if isinstance(multipliers, tuple) else (multipliers,),
                                        tuple(v.detach() for v in pack.xs), bases)
            attr = attr if pack.is_tuple else attr[0]
        if not return_convergence_delta:
            return attr
        return attr, self.compute_convergence_delta(attr, base, inputs, target, additional_forward_args)
