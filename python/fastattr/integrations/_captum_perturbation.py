"""Drop-in replacements for Captum's perturbation attributions ``Occlusion``, ``FeatureAblation``,
``KernelShap`` and ``Lime``.

Change ``from captum.attr import Occlusion`` to ``from fastattr.integrations.captum import Occlusion``
(likewise the others): the same constructors, ``attribute`` arguments and return types (a tensor in
gives a tensor out, a tuple of tensors in gives a tuple out) and the same values, computed by
:func:`fastattr.occlusion`, :func:`fastattr.feature_ablation`, :func:`fastattr.kernel_shap` and
:func:`fastattr.lime`, which build the masks of many perturbations at once and run them through the
model together (and fit every example's surrogate in one batched solve).

What differs from Captum:

- Batching. ``perturbations_per_eval`` is the least number of perturbations per forward pass, not
  the most: fastattr packs as many perturbed copies into one pass as its memory-sized chunk allows
  (at most a quarter of free memory; on CPU a cache-sized working set), so Captum's default of one
  perturbation per pass does not make a call slow. Values do not depend on it.
- Precision. Attributions come back in the inputs' dtype (Captum's ``Occlusion`` always returns
  float32, also for float64 models); for integer inputs (token ids, with a whole-number baseline
  such as the padding id), in the scores' floating dtype.
- Stricter checks. Float ``feature_mask`` values, NaN / Inf in the inputs or the baselines, and a
  ``feature_mask`` or ``baselines`` tuple without one entry per input tensor are errors (Captum
  casts, propagates or ignores them).
- ``show_progress`` is accepted and shows nothing.
- ``KernelShap`` and ``Lime`` draw their coalitions from a generator seeded by the global torch RNG
  (so ``torch.manual_seed`` makes a call reproducible), in their own order: the values agree with
  Captum's in distribution, and equal them when given the same coalitions. ``KernelShap`` imposes
  ``Σφ = f(x) − f(x')`` exactly (Captum weights the all-in and all-out coalitions by 10⁶ instead);
  both count ``n_samples`` as Captum does (KernelShap's includes those two). ``Lime`` takes Captum's
  ``SkLearnLasso`` / ``SkLearnRidge`` / ``SkLearnLinearRegression`` surrogates and
  ``get_exp_kernel_similarity_function`` kernels (any ``distance_mode`` and ``kernel_width``); other
  surrogates, similarity and perturbation functions raise ``NotImplementedError``. Feature masks
  must hold the ids ``0..M-1`` without gaps.
- Targets select one scalar per example (as in :mod:`fastattr.integrations.captum`): an int, a list of
  ints or a 1-D tensor, or a tuple / list of tuples indexing every non-batch dimension of the output;
  ``target=None`` on a model with several outputs per example explains the arg-max class. The model
  must return one row per input (Captum also allows one scalar for the whole batch).
- Several input tensors (a tuple) must share one dtype and device; they are packed into one tensor
  and unpacked before every call of ``forward_func``.

A tensor in ``additional_forward_args`` (also inside a tuple, list or dict) whose first dimension is
the batch size is taken to hold one row per example and is repeated along with the inputs; any other
value, a shared tensor included, is passed to every call as it is, as Captum does at its default of
one perturbation per pass.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..core import check_count, check_flag, chunk_size
from ..attribution.perturbation import Windows, broadcast_mask, like_inputs, occlude, resolve_baselines
from ..attribution.perturbation import feature_ablation as _feature_ablation
from ..attribution.perturbation import occlusion as _occlusion
from ..attribution.surrogate import kernel_shap as _kernel_shap
from ..attribution.surrogate import lime as _lime
from ._captum_common import _Attribution, _bind, _output, _single_of

__all__ = ["FeatureAblation", "KernelShap", "Lime", "Occlusion"]


def _inputs(inputs) -> tuple[tuple[torch.Tensor, ...], bool]:
    """The input tensors, and whether they came as a tuple."""
    if isinstance(inputs, torch.Tensor):
        inputs, is_tuple = (inputs,), False
    elif not isinstance(inputs, tuple):
        raise TypeError(f"inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}")
    else:
        is_tuple = True
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError("inputs must be a tensor or a non-empty tuple of tensors")
    first = inputs[0]
    if first.dim() < 1 or first.shape[0] == 0:
        raise ValueError(f"inputs must have a non-empty batch axis, got shape {tuple(first.shape)}")
    for i, x in enumerate(inputs[1:], 1):
        if x.dim() < 1 or x.shape[0] != first.shape[0]:
            raise ValueError(f"inputs[{i}] has shape {tuple(x.shape)}; every input needs the batch size "
                             f"{first.shape[0]} of inputs[0]")
        if x.dtype != first.dtype or x.device != first.device:
            raise TypeError(f"inputs[{i}] is {x.dtype} on {x.device} but inputs[0] is {first.dtype} on "
                            f"{first.device}; fastattr needs one dtype and device for all input tensors")
    return inputs, is_tuple


class _Packed(nn.Module):
    """``forward_func(x_1, …, x_n, *args)`` for inputs packed as one ``[N, Σ D_i]`` tensor."""

    def __init__(self, forward_func: Callable, shapes: list[tuple]):
        super().__init__()
        self.forward_func = forward_func
        self.shapes = shapes
        self.sizes = [torch.Size(s).numel() for s in shapes]
        self.training = bool(getattr(forward_func, "training", False))

    def forward(self, z: torch.Tensor, *args) -> Any:
        parts = z.split(self.sizes, 1)
        return self.forward_func(*(p.reshape((z.shape[0],) + s) for p, s in zip(parts, self.shapes)), *args)

    def unpack(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(p.reshape((flat.shape[0],) + s) for p, s in zip(flat.split(self.sizes, 1), self.shapes))


def _pack(xs: tuple[torch.Tensor, ...], forward_func: Callable) -> tuple[torch.Tensor, _Packed]:
    model = _Packed(forward_func, [tuple(x.shape[1:]) for x in xs])
    return torch.cat([x.reshape(x.shape[0], -1) for x in xs], 1), model


def _per_input(value, n: int, name: str) -> tuple:
    if not isinstance(value, tuple) or len(value) != n:
        got = f"a tuple of {len(value)}" if isinstance(value, tuple) else type(value).__name__
        raise ValueError(f"{name} must be a tuple with one entry per input tensor ({n}), got {got}")
    return value


def _packed_baselines(xs: tuple[torch.Tensor, ...], baselines) -> torch.Tensor:
    if baselines is None:
        baselines = (0.0,) * len(xs)
    baselines = _per_input(baselines, len(xs), "baselines")
    return torch.cat([resolve_baselines(x, b).reshape(x.shape[0], -1) for x, b in zip(xs, baselines)], 1)


def _single_base(baselines):
    base = _single_of(baselines)
    return 0.0 if base is None else base


def _max_batch(x: torch.Tensor, perturbations_per_eval: int) -> int:
    total = x.shape[0] * max(1, x[0].numel())
    return max(perturbations_per_eval * x.shape[0], chunk_size(x, total, None, None))


class FeatureAblation(_Attribution):
    """Feature ablation, as ``captum.attr.FeatureAblation`` (see :func:`fastattr.feature_ablation`):
    every group of ``feature_mask`` (every element when None) is set to the baseline in turn, and each
    of its elements gets ``f_t(x) − f_t(x̃)``."""

    _multiply_by_inputs = True

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args: Any = None,
                  feature_mask=None, perturbations_per_eval: int = 1, show_progress: bool = False):
        """Returns attributions shaped like ``inputs`` (a tuple for a tuple)."""
        perturbations_per_eval = check_count(perturbations_per_eval, "perturbations_per_eval")
        xs, is_tuple = _inputs(inputs)
        if len(xs) == 1:
            x = xs[0]
            model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args,
                                        _max_batch(x, perturbations_per_eval), x.shape[0] * x[0].numel())
            attr = _feature_ablation(model, x, t, baselines=_single_base(baselines), max_batch=max_batch,
                                     feature_mask=_single_of(feature_mask, "feature_mask"))
            return _output(attr, is_tuple)
        z, packed = _pack(xs, self.forward_func)
        mask = _packed_mask(xs, feature_mask)
        model, t, max_batch = _bind(packed, z, target, additional_forward_args,
                                    _max_batch(z, perturbations_per_eval), z.shape[0] * z.shape[1])
        attr = _feature_ablation(model, z, t, baselines=_packed_baselines(xs, baselines), feature_mask=mask,
                                 max_batch=max_batch)
        return packed.unpack(attr)


def _window_args(xs: tuple[torch.Tensor, ...], sliding_window_shapes, strides) -> tuple[tuple, tuple]:
    """Captum's per-input windows and strides: ``(window_i, stride_i)`` for every input tensor."""
    if not isinstance(sliding_window_shapes, tuple):
        raise TypeError("sliding_window_shapes must be a tuple of ints (a tuple of such tuples for several "
                        f"inputs), got {sliding_window_shapes!r}")
    if len(xs) == 1:
        if sliding_window_shapes and isinstance(sliding_window_shapes[0], tuple):
            if len(sliding_window_shapes) != 1:
                raise ValueError("sliding_window_shapes must hold one window for the one input tensor, got "
                                 f"{sliding_window_shapes!r}")
            sliding_window_shapes = sliding_window_shapes[0]
        if isinstance(strides, tuple) and len(strides) == 1:
            strides = strides[0]
        return (sliding_window_shapes,), (1 if strides is None else strides,)
    windows = _per_input(sliding_window_shapes, len(xs), "sliding_window_shapes")
    if strides is None or isinstance(strides, int):
        strides = (1 if strides is None else strides,) * len(xs)
    return windows, _per_input(strides, len(xs), "strides")


class Occlusion(FeatureAblation):
    """Occlusion, as ``captum.attr.Occlusion`` (see :func:`fastattr.occlusion`): a window slides over
    each input with the given strides, and each element gets the mean of ``f_t(x) − f_t(x̃)`` over
    the windows that cover it."""

    def attribute(self, inputs, sliding_window_shapes, strides=None, baselines=None, target=None,
                  additional_forward_args: Any = None, perturbations_per_eval: int = 1,
                  show_progress: bool = False):
        """Returns attributions shaped like ``inputs`` (a tuple for a tuple)."""
        perturbations_per_eval = check_count(perturbations_per_eval, "perturbations_per_eval")
        xs, is_tuple = _inputs(inputs)
        windows, strides = _window_args(xs, sliding_window_shapes, strides)
        if len(xs) == 1:
            x = xs[0]
            model, t, max_batch = _bind(self.forward_func, x, target, additional_forward_args,
                                        _max_batch(x, perturbations_per_eval), x.shape[0] * x[0].numel())
            attr = _occlusion(model, x, t, sliding_window_shapes=windows[0], strides=strides[0],
                              baselines=_single_base(baselines), max_batch=max_batch)
            return _output(attr, is_tuple)
        z, packed = _pack(xs, self.forward_func)
        offsets = [sum(packed.sizes[:i]) for i in range(len(xs))]

        def parts(device):
            return [Windows(tuple(x.shape[1:]), w, s, device, offset=o, name=f"sliding_window_shapes[{i}]",
                             strides_name=f"strides[{i}]")
                    for i, (x, w, s, o) in enumerate(zip(xs, windows, strides, offsets))]

        model, t, max_batch = _bind(packed, z, target, additional_forward_args,
                                    _max_batch(z, perturbations_per_eval), z.shape[0] * z.shape[1])
        attr = occlude(model, z, t, parts, _packed_baselines(xs, baselines), "logit", max_batch, None)
        return packed.unpack(like_inputs(attr, z))


def _packed_mask(xs: tuple[torch.Tensor, ...], feature_mask) -> Optional[torch.Tensor]:
    """Per-input feature masks as one ``[1 or B, Σ D_i]`` mask of the packed inputs (ids shared across
    the inputs, as in Captum)."""
    if feature_mask is None:
        return None
    masks = [broadcast_mask(x, m, f"feature_mask[{i}]")
             for i, (x, m) in enumerate(zip(xs, _per_input(feature_mask, len(xs), "feature_mask")))]
    rows = max(m.shape[0] for m in masks)
    return torch.cat([m.expand((rows,) + tuple(m.shape[1:])).reshape(rows, -1) for m in masks], 1)


def _global_generator() -> torch.Generator:
    """A generator seeded from the global torch RNG, so ``torch.manual_seed`` governs the draws."""
    return torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,))))


class _Surrogate(_Attribution):
    """``attribute`` for the coalition methods: Captum's arguments turned into one call of ``method``."""

    def _run(self, method: Callable, inputs, baselines, target, additional_forward_args, feature_mask,
             copies: int, perturbations_per_eval: int, return_input_shape: bool, **options):
        perturbations_per_eval = check_count(perturbations_per_eval, "perturbations_per_eval")
        return_input_shape = check_flag(return_input_shape, "return_input_shape")
        xs, is_tuple = _inputs(inputs)
        if len(xs) == 1:
            x, base, mask, packed = xs[0], _single_base(baselines), _single_of(feature_mask, "feature_mask"), None
            forward = self.forward_func
        else:
            x, packed = _pack(xs, self.forward_func)
            base, mask, forward = _packed_baselines(xs, baselines), _packed_mask(xs, feature_mask), packed
        model, t, max_batch = _bind(forward, x, target, additional_forward_args,
                                    _max_batch(x, perturbations_per_eval), x.shape[0] * copies)
        attr = method(model, x, t, feature_mask=mask, baselines=base, max_batch=max_batch,
                      return_input_shape=return_input_shape, generator=_global_generator(), **options)
        if not return_input_shape:
            return attr
        return _output(attr, is_tuple) if packed is None else packed.unpack(attr)


class KernelShap(_Surrogate):
    """KernelSHAP, as ``captum.attr.KernelShap`` (see :func:`fastattr.kernel_shap`): Shapley values of
    the features of ``feature_mask`` (every element when None) from ``n_samples`` coalitions, the
    all-in and all-out ones among them, drawn from the Shapley kernel."""

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args: Any = None,
                  feature_mask=None, n_samples: int = 25, perturbations_per_eval: int = 1,
                  return_input_shape: bool = True, show_progress: bool = False):
        """Returns attributions shaped like ``inputs`` (a tuple for a tuple), or ``[B, M]`` with
        ``return_input_shape=False``."""
        n_samples = check_count(n_samples, "n_samples", minimum=3)
        return self._run(_kernel_shap, inputs, baselines, target, additional_forward_args, feature_mask,
                         n_samples, perturbations_per_eval, return_input_shape, n_samples=n_samples - 2,
                         paired=False, underdetermined="least_norm")


def _surrogate_of(model) -> tuple[str, float]:
    """fastattr's ``(surrogate, alpha)`` for a Captum interpretable model."""
    if model is None:
        return "lasso", 0.01
    kinds = {"SkLearnLasso": "lasso", "SkLearnRidge": "ridge", "SkLearnLinearRegression": "ols"}
    kind = kinds.get(type(model).__name__)
    kwargs = dict(getattr(model, "construct_kwargs", {}) or {})
    alpha = kwargs.pop("alpha", 1.0 if kind != "ols" else 0.0)
    if kind is None or kwargs.pop("fit_intercept", True) is not True or kwargs:
        raise NotImplementedError(f"interpretable_model {model!r} is not supported by fastattr's Lime (Captum's "
                                  "SkLearnLasso, SkLearnRidge and SkLearnLinearRegression with alpha are); use "
                                  "captum.attr.Lime for it")
    return kind, float(alpha)


def _kernel_of(similarity_func) -> tuple[str, float]:
    """``(distance, kernel_width)`` of Captum's ``get_exp_kernel_similarity_function`` kernels."""
    if similarity_func is None:
        return "cosine", 1.0
    names = inspect.getclosurevars(similarity_func).nonlocals if callable(similarity_func) else {}
    if getattr(similarity_func, "__name__", "") != "default_exp_kernel" or "kernel_width" not in names:
        raise NotImplementedError("fastattr's Lime takes the kernels of captum's get_exp_kernel_similarity_function "
                                  "only; use captum.attr.Lime for another similarity_func")
    return names.get("distance_mode", "cosine"), float(names["kernel_width"])


class Lime(_Surrogate):
    """LIME, as ``captum.attr.Lime`` (see :func:`fastattr.lime`): the coefficients of a weighted linear
    surrogate fitted on ``n_samples`` Bernoulli(0.5) coalitions of the features of ``feature_mask``
    per example (Captum's defaults: ``SkLearnLasso(alpha=0.01)``, a cosine kernel of width 1)."""

    def __init__(self, forward_func: Callable, interpretable_model=None, similarity_func: Optional[Callable] = None,
                 perturb_func: Optional[Callable] = None):
        super().__init__(forward_func)
        if perturb_func is not None:
            raise NotImplementedError("fastattr's Lime draws Bernoulli(0.5) coalitions (Captum's default "
                                      "perturb_func); use captum.attr.Lime for another perturb_func")
        self.interpretable_model = interpretable_model
        self.surrogate, self.alpha = _surrogate_of(interpretable_model)
        self.distance, self.kernel_width = _kernel_of(similarity_func)

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args: Any = None,
                  feature_mask=None, n_samples: int = 25, perturbations_per_eval: int = 1,
                  return_input_shape: bool = True, show_progress: bool = False):
        """Returns attributions shaped like ``inputs`` (a tuple for a tuple), or ``[B, M]`` with
        ``return_input_shape=False``."""
        n_samples = check_count(n_samples, "n_samples", minimum=2)
        return self._run(_lime, inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
                         perturbations_per_eval, return_input_shape, n_samples=n_samples,
                         kernel_width=self.kernel_width, distance=self.distance, surrogate=self.surrogate,
                         alpha=self.alpha)
