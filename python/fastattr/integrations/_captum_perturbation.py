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
  perturbation per pass does not make a call slow. Values do not depend on it, except for a model
  whose forward couples its rows (:func:`fastattr.core.batch_coupled`: BatchNorm with batch statistics,
  dropout in training mode): that model runs Captum's forwards, exactly ``perturbations_per_eval``
  perturbations each, in Captum's order (windows with the first dimension's position varying fastest,
  feature ids input by input), and gives Captum's values — as slowly as Captum.
- Precision. Attributions come back in the inputs' dtype (Captum's ``Occlusion`` always returns
  float32, also for float64 models); for integer inputs (token ids, with a whole-number baseline
  such as the padding id), in the scores' floating dtype.
- Stricter checks. Float ``feature_mask`` values, NaN / Inf in the inputs or the baselines, and a
  ``feature_mask`` or ``baselines`` tuple without one entry per input tensor are errors (Captum
  casts, propagates or ignores them). Where Captum asserts, the error is a
  ``CaptumAssertionError`` (a ``ValueError`` and an ``AssertionError``).
- ``show_progress=True`` shows a progress bar on stderr (tqdm's when installed) counting the
  perturbations run.
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
  ``target=None`` on a model with several outputs per example, or one returning one output for the
  whole batch (a scalar, a Python number, ``[1]``, ``[1, C]``; inputs may then have different batch
  sizes): Captum's per-output attributions ``[n_outputs, ...]`` (``Occlusion``'s averaged over the
  windows covering each element), ``perturbations_per_eval`` features or windows per forward as Captum
  runs them. ``FeatureAblation`` takes bool and integer inputs (attributions in the model output's dtype
  when that is an integer one) and ``attribute_future`` for a ``forward_func`` returning
  ``torch.futures.Future`` (computed at once, returned as a completed Future).
- Several input tensors (a tuple) share one device; they are packed into one tensor of their common
  floating dtype and unpacked (integer and bool parts cast back) before every call of
  ``forward_func``.

A tensor in ``additional_forward_args`` (also inside a tuple, list or dict) whose first dimension is
the batch size is taken to hold one row per example and is repeated along with the inputs; any other
value, a shared tensor included, is passed to every call as it is, as Captum does at its default of
one perturbation per pass.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import math
from typing import Any, Callable, Iterator, Optional

import torch

from ..core import batch_coupled, check_count, check_flag, chunk_size, restore_rng, rng_kept, rng_state
from ..attribution.perturbation import Windows, broadcast_mask, like_inputs, occlude
from ..attribution.perturbation import feature_ablation as _feature_ablation
from ..attribution.perturbation import occlusion as _occlusion
from ..attribution.surrogate import kernel_shap as _kernel_shap
from ..attribution.surrogate import lime as _lime
from ._captum_common import (CaptumAssertionError, _as_args, _Attribution, _bind, _check_batch, _counted, _each, _Pack,
                             _progress, _single_of, _tensors, _tiled)

__all__ = ["FeatureAblation", "KernelShap", "Lime", "Occlusion"]


def _count(value, name: str) -> int:
    try:
        return check_count(value, name)
    except ValueError as error:
        raise CaptumAssertionError(str(error)) from None


def _max_batch(x: torch.Tensor, perturbations_per_eval: int, forward_func: Callable) -> int:
    """Model inputs per forward: at least ``perturbations_per_eval`` perturbations of every example, exactly
    that many for a model that couples the rows of a forward (:func:`~fastattr.core.batch_coupled`), whose
    values then depend on which perturbations share one: Captum's forwards."""
    if batch_coupled(forward_func):
        return perturbations_per_eval * x.shape[0]
    total = x.shape[0] * max(1, x[0].numel())
    return max(perturbations_per_eval * x.shape[0], chunk_size(x, total, None, None))


def _as_output(out, name: str = "forward_func") -> torch.Tensor:
    """The model output as a tensor (Python ints and floats as int64 / float64 scalars, as Captum)."""
    if isinstance(out, torch.futures.Future):
        raise CaptumAssertionError(f"{name} returned a torch.futures.Future; call attribute_future instead of "
                                   "attribute")
    if isinstance(out, bool) or not isinstance(out, (torch.Tensor, int, float)):
        raise CaptumAssertionError(f"{name} must return a tensor, an int or a float, got {type(out).__name__}")
    if isinstance(out, torch.Tensor):
        return out
    return torch.tensor(out, dtype=torch.int64 if isinstance(out, int) else torch.float64)


def _probe(forward_func: Callable, xs, additional_forward_args) -> torch.Tensor:
    """One forward of the unperturbed inputs, as Captum's first evaluation."""
    args = _as_args(additional_forward_args) or ()
    with torch.no_grad():
        return _as_output(forward_func(*xs, *args))


def _one_per_example(out: torch.Tensor, batch: int, forward_func: Callable, xs, additional_forward_args) -> bool:
    """Whether the model gives one number per example (for one example: checked on two copies of it, a
    forward that takes no dropout draws)."""
    if not (out.dim() >= 1 and out.shape[0] == batch and out.numel() == batch):
        return False
    if batch > 1:
        return True
    args = _tiled(_as_args(additional_forward_args) or (), 2, 1)
    with rng_kept(forward_func, xs[0].device):
        return _probe(forward_func, tuple(torch.cat([x, x]) for x in xs), args).numel() == 2


def _first_eval(forward_func: Callable, xs, additional_forward_args, target) -> tuple[torch.Tensor, bool]:
    """Captum's first evaluation of the unperturbed inputs and whether, without a target, the output asks for
    Captum's per-output attributions (an output for the whole batch, or several per example). Only there is it
    Captum's first forward; otherwise the regular path runs its own, so a model with dropout gets the global
    RNG back as it was (:func:`~fastattr.core.rng_state`)."""
    state = rng_state(forward_func, xs[0].device)
    initial = _probe(forward_func, xs, additional_forward_args)
    per_output = target is None and not _one_per_example(initial, xs[0].shape[0], forward_func, xs,
                                                         additional_forward_args)
    if not per_output:
        restore_rng(state)
    return initial, per_output


def _default_masks(xs) -> tuple:
    """Captum's default feature masks: every element its own feature, numbered across the inputs."""
    masks, start = [], 0
    for x in xs:
        size = math.prod(x.shape[1:])
        masks.append(torch.arange(start, start + size, device=x.device).reshape((1,) + tuple(x.shape[1:])))
        start += size
    return tuple(masks)


def _per_output(forward_func: Callable, xs, additional_forward_args, initial: torch.Tensor, baselines,
                perturbations: Iterator[tuple], count: int, perturbations_per_eval: int, bar,
                average: bool = False) -> tuple:
    """Captum's attributions for a model whose output is not one number per example (an output for the
    whole batch, or several per example without a target): each of the ``n`` output elements gets its
    own row, ``[n, *x.shape[1:]]`` per input, holding ``Σ_p (f(x) − f(x̃_p)) · m_p`` over the ``count``
    perturbations ``p``, each a tuple of one mask ``m_p`` ``[*x.shape[1:]]`` per input (``x̃_p``: ``x`` set to
    the baseline where the mask holds, in every example at once); with ``average``, divided by how many
    perturbations cover each element; ``perturbations_per_eval`` perturbations per forward, as Captum runs
    them (more than one only for an output per example: a forward may close over tensors of the batch)."""
    batch = xs[0].shape[0]
    if perturbations_per_eval > 1 and not (initial.dim() >= 1 and initial.shape[0] == batch):
        raise CaptumAssertionError(
            f"perturbations_per_eval = {perturbations_per_eval} needs a forward_func whose output grows with the "
            f"batch; it returned shape {tuple(initial.shape)} for a batch of {batch}: use perturbations_per_eval=1")
    args, perturbations = _as_args(additional_forward_args) or (), iter(perturbations)
    bases = tuple(torch.as_tensor(0 if b is None else b, device=x.device).to(x.dtype) for x, b in zip(xs, baselines))
    flat = initial.reshape(-1)
    n = flat.numel()
    attrs = [torch.zeros((n,) + tuple(x.shape[1:]), dtype=initial.dtype, device=x.device) for x in xs]
    covers = [torch.zeros(tuple(x.shape[1:]), dtype=initial.dtype, device=x.device) for x in xs]
    if bar is not None:
        bar.total = count + 1
        bar.update(1)
    with torch.no_grad():
        while group := list(itertools.islice(perturbations, perturbations_per_eval)):
            k = len(group)
            ablated = tuple(torch.cat([torch.where(masks[i], b, x) for masks in group])
                            for i, (x, b) in enumerate(zip(xs, bases)))
            out = _as_output(forward_func(*ablated, *(_tiled(args, k, batch) if k > 1 else args))).reshape(-1)
            if out.numel() != k * n:
                raise CaptumAssertionError(f"forward_func returned {out.numel()} values for {k} ablated batches but "
                                           f"{n} for the original one")
            diffs = (flat - out.view(k, n)).to(initial.dtype)
            for diff, masks in zip(diffs, group):
                for attr, cover, m in zip(attrs, covers, masks):
                    if m.any():
                        attr += diff.reshape((n,) + (1,) * m.dim()) * m.to(initial.dtype)
                        if average:
                            cover += m.to(initial.dtype)
            if bar is not None:
                bar.update(k)
    return tuple(attr / cover.clamp(min=1) for attr, cover in zip(attrs, covers)) if average else tuple(attrs)


def _per_output_ablation(forward_func: Callable, xs, additional_forward_args, initial: torch.Tensor, baselines,
                         feature_mask, perturbations_per_eval: int, bar) -> tuple:
    """:func:`_per_output` over the features of ``feature_mask`` (Captum's default: every element its own)."""
    masks = _default_masks(xs) if feature_mask is None else tuple(
        broadcast_mask(x, m, f"feature_mask[{i}]") if isinstance(m, torch.Tensor) and x.dim() > 1 else
        torch.as_tensor(m, device=x.device).reshape((1,) + tuple(x.shape[1:]))
        for i, (x, m) in enumerate(zip(xs, feature_mask)))
    for i, m in enumerate(masks):
        if m.shape[0] != 1 and not (m == m[:1]).all():
            raise CaptumAssertionError(f"feature_mask[{i}] differs between examples, which needs an output per "
                                       "example; give one mask for all examples")
    masks = tuple(m[0] for m in masks)
    ids = _captum_ids(masks)
    return _per_output(forward_func, xs, additional_forward_args, initial, baselines,
                       (tuple(m == g for m in masks) for g in ids), len(ids), perturbations_per_eval, bar)


def _per_output_occlusion(forward_func: Callable, xs, additional_forward_args, initial: torch.Tensor, baselines,
                          windows: list, perturbations_per_eval: int, bar) -> tuple:
    """:func:`_per_output` over every input's sliding windows (:class:`~fastattr.attribution.perturbation.Windows`,
    in Captum's order, the first input's first); each element gets the mean over the windows that cover it."""
    def perturbations():
        for i, w in enumerate(windows):
            for j in range(w.count):
                yield tuple(w.masks(j, j + 1).reshape(w.shape) if k == i else
                            torch.zeros(x.shape[1:], dtype=torch.bool, device=x.device) for k, x in enumerate(xs))
    return _per_output(forward_func, xs, additional_forward_args, initial, baselines, perturbations(),
                       sum(w.count for w in windows), perturbations_per_eval, bar, average=True)


def _progress_bar(show_progress: bool, method: _Attribution):
    return _progress(f"{method.get_name()} attribution") if check_flag(show_progress, "show_progress") else None


class FeatureAblation(_Attribution):
    """Feature ablation, as ``captum.attr.FeatureAblation`` (see :func:`fastattr.feature_ablation`):
    every group of ``feature_mask`` (every element when None; ids shared across input tensors) is set to
    the baseline in turn, and each of its elements gets ``f_t(x) − f_t(x̃)``. A model whose output is not
    one number per example (one for the whole batch, or several per example with ``target=None``) gets
    Captum's per-output attributions ``[n_outputs, *x.shape[1:]]``."""

    _multiply_by_inputs = True

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args: Any = None,
                  feature_mask=None, perturbations_per_eval: int = 1, show_progress: bool = False,
                  enable_cross_tensor_attribution: bool = True):
        """Returns attributions shaped like ``inputs`` (a tuple for a tuple)."""
        perturbations_per_eval = _count(perturbations_per_eval, "perturbations_per_eval")
        check_flag(enable_cross_tensor_attribution, "enable_cross_tensor_attribution")
        xs, is_tuple = _tensors(inputs)
        if target is not None:
            _check_batch(xs)
        bar = _progress_bar(show_progress, self)
        try:
            # Without a target, Captum's output may be batch-level or per output; for integer inputs, the
            # attributions take the output's dtype: one forward tells.
            initial, per_output = _first_eval(self.forward_func, xs, additional_forward_args, target) \
                if target is None or not all(x.is_floating_point() for x in xs) else (None, False)
            if per_output:
                attrs = _per_output_ablation(self.forward_func, xs, additional_forward_args, initial,
                                             _each(baselines, len(xs), "baselines"),
                                             None if feature_mask is None else _each(feature_mask, len(xs),
                                                                                     "feature_mask"),
                                             perturbations_per_eval, bar)
                return attrs if is_tuple else attrs[0]
            float_parts = [i for i, (x, b) in enumerate(zip(xs, _each(baselines, len(xs), "baselines")))
                           if not x.is_floating_point() and x.dtype != torch.bool
                           and (isinstance(b, float) or isinstance(b, torch.Tensor) and b.is_floating_point())]
            pack = _Pack(self.forward_func, inputs, pack_bool=True, float_parts=float_parts)
            x = pack.x
            mask = _single_of(feature_mask, "feature_mask") if pack.packed is None else \
                _packed_mask(pack, feature_mask)
            per = _max_batch(x, perturbations_per_eval, self.forward_func)
            model, t, max_batch = _bind(pack.model, x, target, additional_forward_args, per, x.shape[0] * x[0].numel(),
                                        strict=False)
            base = pack.baselines(baselines)
            attr = _feature_ablation(_counted(model, bar, x.shape[0], _feature_count(x, mask)), x, t,
                                     baselines=0.0 if base is None else base, max_batch=max_batch,
                                     feature_mask=mask)
            out = pack.out(attr)
            if initial is None or initial.is_floating_point():
                return out
            return tuple(a.to(initial.dtype) for a in out) if is_tuple else out.to(initial.dtype)
        finally:
            if bar is not None:
                bar.close()

    def attribute_future(self, inputs, baselines=None, target=None, additional_forward_args: Any = None,
                         feature_mask=None, perturbations_per_eval: int = 1, show_progress: bool = False,
                         enable_cross_tensor_attribution: bool = True) -> torch.futures.Future:
        """``attribute`` for a ``forward_func`` returning ``torch.futures.Future``: each result is waited
        for, and the attributions come back as a completed Future."""
        forward = self.forward_func

        def waited(*args):
            out = forward(*args)
            if not isinstance(out, torch.futures.Future):
                raise CaptumAssertionError("attribute_future needs a forward_func returning torch.futures.Future, "
                                           f"got {type(out).__name__}: call attribute")
            return out.wait()
        method = copy.copy(self)
        method.forward_func = waited
        result = torch.futures.Future()
        result.set_result(method.attribute(inputs, baselines, target, additional_forward_args, feature_mask,
                                           perturbations_per_eval, show_progress, enable_cross_tensor_attribution))
        return result


def _feature_count(x: torch.Tensor, mask) -> int:
    if mask is None:
        return max(1, x[0].numel())
    return int(torch.unique(mask).numel()) if isinstance(mask, torch.Tensor) else 1


def _window_args(xs: tuple[torch.Tensor, ...], sliding_window_shapes, strides) -> tuple[tuple, tuple]:
    """Captum's per-input windows and strides: ``(window_i, stride_i)`` for every input tensor, checked
    against the inputs (``CaptumAssertionError`` where Captum asserts)."""
    if not isinstance(sliding_window_shapes, tuple):
        raise TypeError("sliding_window_shapes must be a tuple of ints (a tuple of such tuples for several "
                        f"inputs), got {sliding_window_shapes!r}")
    if len(xs) == 1:
        if sliding_window_shapes and isinstance(sliding_window_shapes[0], tuple):
            if len(sliding_window_shapes) != 1:
                raise CaptumAssertionError("sliding_window_shapes must hold one window for the one input tensor, "
                                           f"got {sliding_window_shapes!r}")
            sliding_window_shapes = sliding_window_shapes[0]
        if isinstance(strides, tuple) and len(strides) == 1:
            strides = strides[0]
        windows, strides = (sliding_window_shapes,), (1 if strides is None else strides,)
    else:
        windows = _per_input(sliding_window_shapes, len(xs), "sliding_window_shapes")
        if strides is None or isinstance(strides, int):
            strides = (1 if strides is None else strides,) * len(xs)
        strides = _per_input(strides, len(xs), "strides")
    single = len(xs) == 1
    for i, (x, w, s) in enumerate(zip(xs, windows, strides)):
        try:
            Windows(tuple(x.shape[1:]), w, s, "cpu", name="sliding_window_shapes" + ("" if single else f"[{i}]"),
                    strides_name="strides" + ("" if single else f"[{i}]"))
        except ValueError as error:
            raise CaptumAssertionError(str(error)) from None
    return windows, strides


def _per_input(value, n: int, name: str) -> tuple:
    if not isinstance(value, tuple) or len(value) != n:
        got = f"a tuple of {len(value)}" if isinstance(value, tuple) else type(value).__name__
        raise CaptumAssertionError(f"{name} must be a tuple with one entry per input tensor ({n}), got {got}")
    return value


class Occlusion(FeatureAblation):
    """Occlusion, as ``captum.attr.Occlusion`` (see :func:`fastattr.occlusion`): a window slides over
    each input with the given strides, and each element gets the mean of ``f_t(x) − f_t(x̃)`` over
    the windows that cover it."""

    def attribute(self, inputs, sliding_window_shapes, strides=None, baselines=None, target=None,
                  additional_forward_args: Any = None, perturbations_per_eval: int = 1,
                  show_progress: bool = False):
        """Returns attributions shaped like ``inputs`` (a tuple for a tuple)."""
        perturbations_per_eval = _count(perturbations_per_eval, "perturbations_per_eval")
        pack = _Pack(self.forward_func, inputs)
        xs = pack.xs
        windows, strides = _window_args(xs, sliding_window_shapes, strides)
        bar = _progress_bar(show_progress, self)
        try:
            if target is None:  # Captum's per-output attributions unless the model gives one number per example
                initial, per_output = _first_eval(self.forward_func, xs, additional_forward_args, target)
                if per_output:
                    attrs = _per_output_occlusion(
                        self.forward_func, xs, additional_forward_args, initial, _each(baselines, len(xs), "baselines"),
                        [Windows(tuple(x.shape[1:]), w, s, x.device) for x, w, s in zip(xs, windows, strides)],
                        perturbations_per_eval, bar)
                    return attrs if pack.is_tuple else attrs[0]
            x = pack.x
            per = _max_batch(x, perturbations_per_eval, self.forward_func)
            model, t, max_batch = _bind(pack.model, x, target, additional_forward_args, per, x.shape[0] * x[0].numel(),
                                        strict=False)
            if pack.packed is None:
                count = math.prod(Windows(tuple(x.shape[1:]), windows[0], strides[0], "cpu").positions)
                attr = _occlusion(_counted(model, bar, x.shape[0], count), x, t, sliding_window_shapes=windows[0],
                                  strides=strides[0], baselines=_single_base(baselines), max_batch=max_batch)
                return pack.out(attr)
            offsets = [sum(pack.packed.sizes[:i]) for i in range(len(xs))]

            def parts(device):
                return [Windows(tuple(x.shape[1:]), w, s, device, offset=o, name=f"sliding_window_shapes[{i}]",
                                strides_name=f"strides[{i}]")
                        for i, (x, w, s, o) in enumerate(zip(xs, windows, strides, offsets))]
            count = sum(math.prod(w.positions) for w in parts("cpu"))
            attr = occlude(_counted(model, bar, x.shape[0], count), x, t, parts, pack.baselines(baselines),
                           "logit", max_batch, None)
            return pack.out(like_inputs(attr, x))
        finally:
            if bar is not None:
                bar.close()

    def attribute_future(self, *args, **kwargs):
        """Not offered by Occlusion (as in Captum)."""
        raise NotImplementedError("Occlusion.attribute_future is not implemented; call attribute")


def _single_base(baselines):
    base = _single_of(baselines)
    return 0.0 if base is None else base


def _packed_mask(pack: _Pack, feature_mask) -> Optional[torch.Tensor]:
    """Per-input feature masks as one ``[1 or B, Σ D_i]`` mask of the packed inputs (ids shared across
    the inputs, as in Captum)."""
    if feature_mask is None:
        return None
    masks = [broadcast_mask(x, m, f"feature_mask[{i}]")
             for i, (x, m) in enumerate(zip(pack.xs, pack.per_input(feature_mask, "feature_mask")))]
    rows = max(m.shape[0] for m in masks)
    mask = torch.cat([m.expand((rows,) + tuple(m.shape[1:])).reshape(rows, -1) for m in masks], 1)
    # renumbered in Captum's order, so that a forward of consecutive groups holds Captum's
    ids, order = torch.unique(mask), _captum_ids(masks)
    rank = torch.empty_like(ids)
    rank[torch.searchsorted(ids, torch.tensor(order, dtype=ids.dtype, device=ids.device))] = \
        torch.arange(len(order), dtype=ids.dtype, device=ids.device)
    return rank[torch.searchsorted(ids, mask)]


def _captum_ids(masks) -> list:
    """The feature ids of per-input masks in the order Captum ablates them: each input's in increasing
    order, the first input's first, an id shared with an earlier input where it first appears."""
    return list(dict.fromkeys(v for m in masks for v in torch.unique(m).tolist()))


def _global_generator() -> torch.Generator:
    """A generator seeded from the global torch RNG, so ``torch.manual_seed`` governs the draws."""
    return torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,))))


class _Surrogate(_Attribution):
    """``attribute`` for the coalition methods: Captum's arguments turned into one call of ``method``."""

    def _run(self, method: Callable, inputs, baselines, target, additional_forward_args, feature_mask,
             copies: int, perturbations_per_eval: int, return_input_shape: bool, **options):
        perturbations_per_eval = _count(perturbations_per_eval, "perturbations_per_eval")
        return_input_shape = check_flag(return_input_shape, "return_input_shape")
        pack = _Pack(self.forward_func, inputs)
        x = pack.x
        if pack.packed is None:
            base, mask = _single_base(baselines), _single_of(feature_mask, "feature_mask")
        else:
            base, mask = pack.baselines(baselines), _packed_mask(pack, feature_mask)
        per = _max_batch(x, perturbations_per_eval, self.forward_func)
        model, t, max_batch = _bind(pack.model, x, target, additional_forward_args, per, x.shape[0] * copies,
                                    strict=False)
        attr = method(model, x, t, feature_mask=mask, baselines=0.0 if base is None else base, max_batch=max_batch,
                      return_input_shape=return_input_shape, generator=_global_generator(), **options)
        return pack.out(attr) if return_input_shape else attr


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
