"""Drop-in replacements for Quantus 0.6 metrics, computed on fastattr's perturbation engine.

Change ``quantus.X`` to ``fastattr.integrations.quantus.X`` for X in ``PixelFlipping``,
``RegionPerturbation``, ``FaithfulnessCorrelation``, ``SensitivityN``, ``Infidelity``,
``AvgSensitivity``, ``MaxSensitivity``, ``RelativeInputStability``, ``RelativeOutputStability``,
``RelativeRepresentationStability``, ``Sparseness``, ``Complexity``, ``RandomLogit``, ``MPRT`` and
``ROAD``: the same
constructor keywords, the same
``metric(model, x_batch, y_batch, a_batch=None, s_batch=None, channel_first=None, explain_func=None,
explain_func_kwargs=None, model_predict_kwargs=None, softmax=..., device=None, batch_size=64)``
(numpy in; Quantus-shaped scores out: one entry per example, ``[aggregate]`` with
``return_aggregate=True``) and Quantus's own definitions, which are not always the papers' (the
paper versions are in :mod:`fastattr.metrics`):

- ``PixelFlipping``: elements ranked by attribution (the map broadcast over channels), the top
  ``k·features_in_step`` set to the baseline, k = 1..⌈d/step⌉; the curve of ``f_y`` (no unperturbed
  point); ``return_auc_per_sample``: its trapezoid area with unit spacing.
- ``RegionPerturbation``: ``patch_size`` patches of the (centrally padded) image ranked by attribution
  sum (``order`` morf / lerf / random); the curve of ``f_y(x) − f_y(x̃_k)`` after removing the first k
  of ``regions_evaluation`` patches.
- ``FaithfulnessCorrelation``: per example, the Pearson correlation over ``nr_runs`` random subsets
  of ``subset_size`` elements between ``Σ_S a`` and ``f_y(x) − f_y(x_S→baseline)``.
- ``SensitivityN``: cumulative deletion of ``features_in_step`` elements per step in attribution
  order, for the first ``⌊n_max_percentage·H·W / features_in_step⌋`` steps; for each step the
  correlation *across the examples* between ``f_y(x) − f_y(x̃_k)`` and the attribution removed at
  that step (one score per step; their mean with the default ``return_aggregate=True``).
- ``Infidelity``: per patch size, patches set to the baseline cumulatively in raster order; the
  mean squared difference between ``f_y(x) − f_y(x̃_k)`` and ``Σ a ⊙ (x − x̃_k)``, averaged over
  patch sizes and ``n_perturb_samples``.
- ``AvgSensitivity`` / ``MaxSensitivity``: ``||e(x) − e(x + ε)|| / ||e(x)||`` (with the default
  ``similarity_func``, ``norm_numerator``, ``norm_denominator``) for ``ε ~ U[−lower_bound,
  lower_bound]`` (``U[lower_bound, upper_bound]`` with an upper bound), mean or max over
  ``nr_samples``; ``explain_func`` runs on many perturbed copies of the batch at once.
- ``MPRT`` / ``ModelParameterRandomisation`` (:func:`fastattr.metrics.model_randomisation`): a deep
  copy of the model has its layers re-initialised one by one as Quantus does (``reset_parameters``
  after ``torch.manual_seed(seed + 1)``), and the similarity of the explanations to the original ones
  is scored per layer; the user's model and the global torch RNG are left as they were.
- ``RelativeInputStability`` / ``RelativeOutputStability`` / ``RelativeRepresentationStability``
  (:func:`fastattr.metrics.relative_stability`): the max over ``nr_samples`` perturbations
  ``x' = x + ε``, ``ε ~ U[lower_bound, upper_bound]`` (``batch_uniform_noise``; defaults 0.02 and
  0.2), of ``‖(e_x − e_x') ⊘ e_x‖₂`` divided by ``‖(x − x') ⊘ x‖₂``, ``‖h(x) − h(x')‖₂`` (logits, or
  probabilities with ``softmax=True``) or ``‖(L_x − L_x') ⊘ L_x‖₂`` (the selected layers' outputs,
  flattened and concatenated), a zero divisor entry or norm replaced by ``eps_min``; NaN for an
  example any of whose perturbations changes the predicted class
  (``return_nan_when_prediction_changes=True``, the default). ``normalise_func`` defaults to Quantus's
  ``normalise_by_average_second_moment_estimate``; ``explain_func`` runs on many perturbed copies of
  the batch at once.
- ``Sparseness`` / ``Complexity`` (defaults ``abs=True``, ``normalise=True``): per example, the Gini
  index of the preprocessed map plus ``1e-7``, and ``−Σ p log(p + 1e-12)`` for ``p = a / Σ|a|``
  (NaN wherever ``abs=False`` leaves a negative entry). The model is never run; ``model=None`` is
  taken, as in Quantus.
- ``RandomLogit``: SSIM (Quantus's: of the maps flattened to vectors) between the map of ``y`` and
  ``explain_func``'s map of an off-target class ``t'``. The draws are Quantus's own: per batch of
  ``batch_size``, ``k = randint(0, num_classes − 1)`` per example after seeding with ``seed`` (every
  batch starts from the same seed), ``t'`` the k-th of the other classes; made with a private
  ``np.random.RandomState``, so the scores equal Quantus's, and numpy's global state (which Quantus
  reseeds) is left alone. ``RandomLogit.off_classes(y_batch, batch_size)`` returns them.

What differs from Quantus:

- Randomness (but RandomLogit's class draws) comes from a seeded ``torch.Generator`` (extra
  ``__call__`` keyword ``generator``, a generator or an int seed, default 0), not ``np.random``: the
  subsets of FaithfulnessCorrelation, the ``"uniform"`` baseline, the ``"random"`` region order and
  the sensitivity and relative stability noise. Same distributions, other draws; a call is
  reproducible. The noise is drawn in Quantus's order (per batch of ``batch_size``, one draw of the
  whole batch per sample), so replacing ``np.random.uniform`` by fastattr's draws
  (:func:`fastattr.metrics.robustness.uniform_noise`), as the tests do, gives Quantus's scores. As
  in Quantus's batched replacement, a ``"uniform"`` baseline is one ``U[uniform_low, uniform_high)``
  value per example and per replacement (step, region, patch or subset), shared by every feature
  that replacement sets.
- ``perturb_baseline="mean"`` is the mean of the clean input; Quantus recomputes it at every step
  from the partly perturbed (and, in RegionPerturbation, edge-padded) array (FaithfulnessCorrelation
  agrees: it perturbs the clean input every time). ``"black"`` / ``"white"`` (the input's min / max),
  numbers and 0-d arrays agree; a ``perturb_baseline`` key in ``perturb_func_kwargs`` wins, as in
  Quantus. Other arrays are broadcast to the input (Quantus takes only arrays shaped like the
  indices of one step).
- Ties in the attribution are broken by feature index (stable sort); Quantus uses numpy's unstable
  quicksort, so the order of equal attributions can differ.
- Inputs are cast to the model's parameter dtype (Quantus always uses float32), and the model runs
  in chunks sized by fastattr (extra keywords ``max_batch`` / ``memory_budget``); ``batch_size`` only
  groups the calls of ``explain_func`` (and the normalisation of their output) as in Quantus.
- SensitivityN correlates over all examples; Quantus keeps only the first ``batch_size`` of them.
- Infidelity works for any image size (padding as RegionPerturbation); Quantus 0.6 fails unless
  every patch size divides the height and the width.
- ``softmax=False`` (or None, as in Quantus) reads the logits; a ``nn.Softmax`` that ends the model,
  also inside a nested ``Sequential``, is skipped (Quantus only replaces a top-level one).
- AvgSensitivity / MaxSensitivity and the relative stability metrics call ``explain_func`` on many
  perturbed copies of the batch at once; an ``explain_func`` whose output for one example depends
  on the rest of its batch (e.g. one normalisation over the batch) gives other values unless
  ``max_batch=len(x_batch)``.
- RelativeRepresentationStability reads the layers in the forward that gives the prediction, with
  ``model_predict_kwargs`` (Quantus runs the model once more without them for the representations),
  and copies each layer's output when the layer returns (Quantus on CPU keeps a view, so an in-place
  op later in the forward changes what it reads); a final ``nn.Softmax`` that ``softmax=False``
  removes is read as its input.
- Custom ``perturb_func`` (other than Quantus's defaults) raise ``NotImplementedError``; models must
  be ``torch.nn.Module`` in eval mode (RandomLogit too, which Quantus runs with a model in training
  mode; Sparseness / Complexity take any model, or None); ``display_progressbar`` and
  ``default_plot_func`` are accepted and ignored.
- Bad arguments raise a ``ValueError`` naming them (a :class:`QuantusAssertionError` where Quantus
  asserts, e.g. on attributions that are all zero, all equal or all negative), from the constructor
  where they can be checked there. Some that Quantus runs with raise here too: flags that are not
  bools, ``SensitivityN`` settings that leave no step (Quantus: ``[nan]``) or a negative
  ``n_max_percentage`` (Quantus slices steps off the end), ``FaithfulnessCorrelation(subset_size=0)``
  (Quantus: NaN), and a negative ``lower_bound`` without ``upper_bound`` (Quantus draws from the
  flipped interval), NaN in ``a_batch`` (Quantus: NaN scores), ``RandomLogit``'s ``num_classes`` above
  the model's outputs (Quantus's default is 1000 whatever the model: it explains classes the model
  does not have) or below a label (Quantus: IndexError).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..core import (RankSchedule, check_count, check_flag, check_number, chunk_size, make_generator, model_guard,
                    perturbed_scores, rank_features, read_scores, run_model)
from ..metrics.complexity import contribution_entropy, gini_index
from ..metrics.randomisation import model_randomisation, random_logit, similarity_function
from ..metrics.road import road_counts, road_scores
from ..metrics.robustness import sensitivity_samples
from ..metrics.stability import hidden_layers, relative_stability
from ..metrics.subsets import pearson, subset_deltas

__all__ = ["AvgSensitivity", "Complexity", "FaithfulnessCorrelation", "Infidelity", "MPRT", "MaxSensitivity",
           "ModelParameterRandomisation", "PixelFlipping", "QuantusAssertionError", "RandomLogit", "RegionPerturbation",
           "ROAD", "RelativeInputStability", "RelativeOutputStability", "RelativeRepresentationStability",
           "SensitivityN", "Sparseness", "normalise_by_max"]

_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # numpy 2.4 removed np.trapz
_BASELINE_FUNCS = ("batch_baseline_replacement_by_indices", "baseline_replacement_by_indices")
_NOISE_FUNCS = ("batch_uniform_noise", "uniform_noise")
_DEFAULT = object()  # softmax not given: the metric's Quantus default
_EXPLAINED = "the output of explain_func"


class QuantusAssertionError(ValueError, AssertionError):
    """Bad input that Quantus rejects with an ``AssertionError``: a ``ValueError`` naming the argument,
    and still that ``AssertionError`` for code that catches it."""


def _check_values(a: np.ndarray, name: str) -> None:
    """Quantus's ``assert_attributions`` on the values (before normalisation): not all zero, not all
    equal, not all negative."""
    if np.all(a == 0):
        raise QuantusAssertionError(f"{name} is all zero: there is no ranking to evaluate (recompute the "
                                    "explanations; Quantus rejects them too)")
    if a.min() == a.max():
        raise QuantusAssertionError(f"{name} has one value ({a.flat[0]}) everywhere: there is no ranking to "
                                    "evaluate (recompute the explanations; Quantus rejects them too)")
    if np.all(a < 0):
        raise QuantusAssertionError(f"{name} is negative everywhere; Quantus rejects such attributions")


def normalise_by_max(a: np.ndarray, normalise_axes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Quantus's default normalisation: ``a / max|a|`` over ``normalise_axes`` (default: every axis, so
    the whole batch shares one scale); an all-zero array is returned as is."""
    if np.all(a == 0.0):
        return a
    axes = tuple(range(a.ndim)) if normalise_axes is None else tuple(normalise_axes)
    return a / np.max(np.abs(a), axis=axes, keepdims=True)


def _channel_first(x: np.ndarray, channel_first: Optional[bool]) -> np.ndarray:
    """Quantus's layout rule: 2-D inputs have no channel axis; otherwise the smaller of the
    candidate axes is the channel axis unless ``channel_first`` says."""
    if x.ndim == 2:
        return x
    if x.ndim not in (3, 4):
        raise ValueError(f"x_batch must be [B, F], [B, C, L] or [B, C, H, W] (or channel-last), "
                         f"got {x.shape}")
    if channel_first is None:
        if x.ndim == 3 and x.shape[-2] != x.shape[-1]:
            channel_first = x.shape[-2] < x.shape[-1]
        elif x.ndim == 4 and x.shape[-1] < min(x.shape[-2], x.shape[-3]):
            channel_first = False
        elif x.ndim == 4 and x.shape[-3] < min(x.shape[-1], x.shape[-2]):
            channel_first = True
        else:
            raise ValueError(f"cannot infer the channel axis of x_batch {x.shape}; pass channel_first")
    return x if channel_first else np.moveaxis(x, -1, 1)


def _expand_channel(a: np.ndarray, x: np.ndarray, name: str = "a_batch") -> np.ndarray:
    """Attributions (the argument ``name``) as ``[B, C or 1, ...]`` for channel-first ``x`` (a missing
    channel axis is added)."""
    if a.shape[:1] != x.shape[:1]:
        raise ValueError(f"{name} has {a.shape[0] if a.ndim else 0} examples but x_batch has {x.shape[0]}")
    if x.ndim > 2 and a.ndim == x.ndim - 1 and a.shape[1:] == x.shape[2:]:
        a = a[:, None]
    reduced = x.ndim > 2 and a.ndim == x.ndim and a.shape[1] == 1 and a.shape[2:] == x.shape[2:]
    if a.shape != x.shape and not reduced:
        raise ValueError(f"{name} of shape {a.shape} must match x_batch {x.shape} or its channel-reduced "
                         f"map {(x.shape[0], 1) + x.shape[2:]}")
    return a


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _predictor(model, softmax: bool, model_predict_kwargs: Optional[dict]):
    """The model as Quantus runs it, and the score to read: a model whose last module is ``nn.Softmax``
    is read as is with ``softmax=True`` and without that module with ``softmax=False``; any other
    model gets a softmax on top with ``softmax=True``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (the fastattr drop-in runs PyTorch models), "
                        f"got {type(model).__name__}")
    if model.training:
        raise ValueError("model is in training mode; call model.eval() first (Quantus requires it too)")
    names = [name for name, _ in model.named_modules()]
    ends_in_softmax = len(names) > 1 and isinstance(model.get_submodule(names[-1]), nn.Softmax)
    net = model
    if ends_in_softmax and not softmax:
        net = copy.deepcopy(model)
        parent, _, leaf = names[-1].rpartition(".")
        setattr(net.get_submodule(parent), leaf, nn.Identity())
    if model_predict_kwargs:
        net = functools.partial(net, **model_predict_kwargs)
    return net, ("probability" if softmax and not ends_in_softmax else "logit")


def _padding(dim: int, patch: int) -> tuple[int, int]:
    rest = dim % patch
    total = 0 if rest == 0 else patch - rest
    return total // 2, total - total // 2


def _patch_ids(shape: Sequence[int], patch: int, device) -> tuple[torch.Tensor, int]:
    """Raster index of the ``patch × patch`` block (of the centrally padded grid) of every pixel."""
    h, w = (1, shape[-1]) if len(shape) == 3 else shape[-2:]
    (top, _), (left, _) = _padding(h, patch), _padding(w, patch)
    n_cols = -(-w // patch)
    rows = (torch.arange(h) + top) // patch
    cols = (torch.arange(w) + left) // patch
    return (rows[:, None] * n_cols + cols[None, :]).reshape(-1).to(device), -(-h // patch) * n_cols


@dataclass
class _Context:
    model: nn.Module
    net: Callable
    reader: str
    output: torch.Tensor
    clean: torch.Tensor
    generator: torch.Generator
    max_batch: Optional[int]
    memory_budget: Optional[int]
    batch_size: int
    a_name: Optional[str] = None  # "a_batch" when the attributions were given

    def curve(self, x, baseline, rank, counts, y) -> torch.Tensor:
        """``f_y`` on x with every feature of rank < ``counts[k]`` set to the baseline: ``[B, K]``."""
        if counts.numel() == 0:
            return torch.empty(x.shape[0], 0, dtype=torch.float64, device=x.device)
        chunk = chunk_size(x, x.shape[0] * counts.numel(), self.max_batch, self.memory_budget,
                           per_input_factor=8.0)
        steps = RankSchedule(rank.contiguous(), counts.to(x.device), keep_top=False)
        return perturbed_scores(self.net, x, baseline.contiguous(), steps, y, reader=self.reader, chunk=chunk).double()


class _Metric:
    """Quantus's ``Metric`` conventions: attribution preprocessing, the call, aggregation."""

    name = "metric"
    _softmax = False

    def _setup(self, *, abs, normalise, normalise_func, normalise_func_kwargs, return_aggregate,
               aggregate_func, disable_warnings, display_progressbar, kwargs, perturb_func=None,
               allowed=_BASELINE_FUNCS, perturb_baseline="black", perturb_func_kwargs=None) -> None:
        if kwargs:
            raise ValueError(f"unexpected keyword arguments for {type(self).__name__}: {sorted(kwargs)}")
        if perturb_func is not None and getattr(perturb_func, "__name__", None) not in allowed:
            raise NotImplementedError(f"{type(self).__name__} runs Quantus's default perturbation "
                                      f"({allowed[0]}) only; use quantus for a custom perturb_func")
        normalise_func = normalise_func or normalise_by_max
        if normalise_func_kwargs:
            normalise_func = functools.partial(normalise_func, **normalise_func_kwargs)
        self.abs, self.normalise = check_flag(abs, "abs"), check_flag(normalise, "normalise")
        self.normalise_func = normalise_func
        self.return_aggregate = check_flag(return_aggregate, "return_aggregate")
        self.aggregate_func = aggregate_func or np.mean
        self.disable_warnings = check_flag(disable_warnings, "disable_warnings")
        self.display_progressbar = check_flag(display_progressbar, "display_progressbar")
        self.perturb_func_kwargs = dict(perturb_func_kwargs or {})
        # as in Quantus's make_perturb_func, a perturb_baseline in perturb_func_kwargs wins
        self.perturb_baseline = self.perturb_func_kwargs.pop("perturb_baseline", perturb_baseline)
        self.evaluation_scores: Any = []
        self.all_evaluation_scores: list = []

    @property
    def get_params(self) -> Dict[str, Any]:
        skip = ("evaluation_scores", "all_evaluation_scores")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def _process(self, a, x: np.ndarray, name: str = "a_batch") -> np.ndarray:
        """Quantus's attribution preprocessing of ``name``: add the channel axis, check the values,
        ``normalise_func``, then ``abs``."""
        a = _expand_channel(np.array(_to_numpy(a), copy=True), x, name)
        _check_values(a, name)
        if self.normalise:
            a = self.normalise_func(a)
        return np.abs(a) if self.abs else a

    def _explain(self, model, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        func, kwargs = self._explain_func
        return self._process(func(model=model, inputs=x, targets=y, **kwargs), x, _EXPLAINED)

    def _attributions(self, model, x_np: np.ndarray, y_np: np.ndarray, a_batch, explain_func, explain_func_kwargs,
                      device, batch_size: int) -> np.ndarray:
        """The preprocessed ``a_batch``, or ``explain_func``'s attributions per batch of ``batch_size``
        (each batch preprocessed on its own, as in Quantus)."""
        kw = dict(explain_func_kwargs or {})
        if device is not None:
            kw.setdefault("device", device)
        self._explain_func = (explain_func, kw)
        if a_batch is not None:
            return self._process(a_batch, x_np)
        if explain_func is None:
            raise QuantusAssertionError(f"{type(self).__name__} needs a_batch or explain_func")
        return np.concatenate([self._explain(model, x_np[i:i + batch_size], y_np[i:i + batch_size])
                               for i in range(0, x_np.shape[0], batch_size)])

    @staticmethod
    def _batch(x_batch, y_batch, channel_first, batch_size, kwargs, integer_labels: bool = True):
        """The call's common arguments checked: ``(x channel-first, y flat, batch_size)``. Without
        ``integer_labels`` (the metrics that never read the model), x must also be a non-empty batch
        of finite values and y only one label per example."""
        if kwargs:
            raise ValueError(f"unexpected keyword arguments: {sorted(kwargs)}")
        batch_size = check_count(batch_size, "batch_size")
        x_np = _channel_first(_to_numpy(x_batch), channel_first)
        y_np = _to_numpy(y_batch).reshape(-1)
        if integer_labels:
            if y_np.shape[0] != x_np.shape[0] or not np.issubdtype(y_np.dtype, np.integer):
                raise ValueError(f"y_batch must hold one integer label per example ({x_np.shape[0]}), got "
                                 f"{y_np.dtype} of shape {y_np.shape}")
            return x_np, y_np, batch_size
        if x_np.shape[0] == 0 or not np.isfinite(x_np).all():
            raise ValueError(f"x_batch must be a non-empty batch of finite values, got shape {x_np.shape}"
                             + ("" if x_np.shape[0] == 0 else " with NaN or Inf"))
        if y_np.shape[0] != x_np.shape[0]:
            raise ValueError(f"y_batch must hold one label per example ({x_np.shape[0]}), got shape {y_np.shape}")
        return x_np, y_np, batch_size

    def __call__(self, model, x_batch, y_batch, a_batch=None, s_batch=None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable] = None,
                 explain_func_kwargs: Optional[dict] = None,
                 model_predict_kwargs: Optional[dict] = None, softmax: Any = _DEFAULT,
                 device: Optional[str] = None, batch_size: int = 64, custom_batch: Any = None, *,
                 generator=0, max_batch: Optional[int] = None, memory_budget: Optional[int] = None, **kwargs):
        """Scores of ``a_batch`` (or of ``explain_func``'s attributions) for ``model`` on ``x_batch``
        with labels ``y_batch``. ``softmax`` defaults to the metric's Quantus default; None reads the
        logits, as in Quantus. ``generator`` (torch.Generator or int seed) drives every random draw;
        ``max_batch`` / ``memory_budget`` bound the inputs per model call."""
        x_np, y_np, batch_size = self._batch(x_batch, y_batch, channel_first, batch_size, kwargs)
        softmax = self._softmax if softmax is _DEFAULT else bool(softmax)
        net, reader = _predictor(model, softmax, model_predict_kwargs)
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        dtype = param.dtype if param is not None else torch.float32
        if device is not None:
            dev = torch.device(device)
        else:
            dev = param.device if param is not None else torch.device("cpu")
        x = torch.as_tensor(np.ascontiguousarray(x_np), dtype=dtype, device=dev).clone()
        if not torch.isfinite(x).all():
            raise ValueError("x_batch contains NaN or Inf")
        with model_guard(model, x, name="x_batch"):  # the model's flags and buffers restored after
            y = torch.as_tensor(y_np, dtype=torch.long, device=dev)
            with torch.no_grad():
                output = run_model(net, x)
            if (y < 0).any() or (y >= output.shape[-1]).any():
                raise ValueError(f"y_batch out of range: the model has {output.shape[-1]} outputs, "
                                 f"got {y_np.tolist()}")
            a_np = self._attributions(model, x_np, y_np, a_batch, explain_func, explain_func_kwargs, device,
                                      batch_size)
            a = torch.as_tensor(np.ascontiguousarray(a_np), dtype=dtype, device=dev)
            if not torch.isfinite(a).all():
                raise ValueError(f"{'a_batch' if a_batch is not None else _EXPLAINED} contains NaN or Inf")
            ctx = _Context(model=model, net=net, reader=reader, output=output,
                           clean=read_scores(output, y, reader).double(), generator=make_generator(generator),
                           max_batch=max_batch, memory_budget=memory_budget, batch_size=int(batch_size),
                           a_name="a_batch" if a_batch is not None else None)
            scores = self._evaluate(ctx, x, y, a)
            self.evaluation_scores = [self.aggregate_func(scores)] if self.return_aggregate else scores
            self.all_evaluation_scores.extend(self.evaluation_scores)
            return self.evaluation_scores

    def _evaluate(self, ctx: _Context, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor):
        raise NotImplementedError

    def _baseline(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``perturb_baseline`` as a tensor shaped like ``x``."""
        value = self.perturb_baseline
        dims = tuple(range(1, x.dim()))
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            return torch.full_like(x, float(value))
        if isinstance(value, str):
            key = value.lower()
            if key in ("black", "white", "mean"):
                stat = {"black": x.amin, "white": x.amax, "mean": x.mean}[key](dims, keepdim=True)
                return stat.expand_as(x)
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            t = torch.as_tensor(_to_numpy(value), dtype=x.dtype, device=x.device)
            try:
                return torch.broadcast_to(t, x.shape)
            except RuntimeError:
                raise ValueError(f"perturb_baseline of shape {tuple(t.shape)} does not broadcast to the "
                                 f"inputs {tuple(x.shape)}") from None
        raise ValueError("perturb_baseline must be 'black', 'white', 'mean', 'uniform', a number or an "
                         f"array, got {value!r}")

    def _uniform(self) -> bool:
        return isinstance(self.perturb_baseline, str) and self.perturb_baseline.lower() == "uniform"

    def _uniform_values(self, x: torch.Tensor, n_calls: int, generator: torch.Generator) -> torch.Tensor:
        """``[B, n_calls]`` draws of ``U[uniform_low, uniform_high)`` (default ``U[0, 1)``)."""
        low = float(self.perturb_func_kwargs.get("uniform_low", 0.0))
        high = float(self.perturb_func_kwargs.get("uniform_high", 1.0))
        u = torch.rand(x.shape[0], n_calls, generator=generator, dtype=x.dtype)
        return (low + (high - low) * u).to(x.device)

    def _replacement(self, x: torch.Tensor, generator: torch.Generator, call: torch.Tensor,
                     n_calls: int) -> torch.Tensor:
        """The baseline of a cumulative perturbation, shaped like ``x``. Quantus's batched replacement
        draws ``"uniform"`` as one value per example and call, shared by the features that call
        replaces; ``call`` ``[B, U]`` gives the call (step, region, patch) that replaces each unit (a
        pixel, shared by the channels, or an element when U counts every element)."""
        if not self._uniform():
            return self._baseline(x, generator)
        values = self._uniform_values(x, n_calls, generator).gather(1, call.clamp_max(n_calls - 1))
        if values.shape[1] == x[0].numel():
            return values.view_as(x)
        return values.view((x.shape[0], 1) + tuple(x.shape[2:])).expand_as(x)

    @staticmethod
    def _check_step(x: torch.Tensor, step: int) -> None:
        spatial = math.prod(x.shape[2:]) if x.dim() > 2 else x.shape[1]
        if spatial % step:
            raise QuantusAssertionError(f"features_in_step ({step}) must divide the input size ({spatial})")

    @staticmethod
    def _ranked(x: torch.Tensor, a: torch.Tensor, step: int) -> tuple[torch.Tensor, int, int]:
        """Features to rank ``[B, d]``, the step in those features, and the channels per feature: a
        channel-reduced map stays per pixel when the step covers whole pixels (same order as
        ranking its broadcast elements), else it is broadcast to every element as Quantus does."""
        channels = x.shape[1] if x.dim() > 2 and a.shape[1] == 1 else 1
        if channels > 1 and step % channels == 0:
            return a[:, 0].reshape(a.shape[0], -1), step // channels, channels
        return a.expand_as(x).reshape(a.shape[0], -1), step, 1


def _steps(n: int, step: int) -> torch.Tensor:
    """Features removed after each of the ⌈n / step⌉ steps."""
    return torch.arange(step, n + step, step).clamp_max(n)


class PixelFlipping(_Metric):
    """Pixel-Flipping (Bach et al. 2015), as ``quantus.PixelFlipping`` (module docstring)."""

    name = "Pixel-Flipping"
    _softmax = True

    def __init__(self, features_in_step: int = 1, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable] = None, normalise_func_kwargs: Optional[dict] = None,
                 perturb_func: Optional[Callable] = None, perturb_baseline: Any = "black",
                 perturb_func_kwargs: Optional[dict] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable] = None, return_auc_per_sample: bool = False,
                 default_plot_func: Optional[Callable] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs, perturb_func=perturb_func,
                    perturb_baseline=perturb_baseline, perturb_func_kwargs=perturb_func_kwargs)
        self.features_in_step = check_count(features_in_step, "features_in_step")
        self.return_auc_per_sample = check_flag(return_auc_per_sample, "return_auc_per_sample")

    @property
    def get_auc_score(self) -> float:
        """Mean trapezoid area (unit spacing) of the curves of the last call."""
        return float(np.mean([_trapezoid(np.asarray(c)) for c in self.evaluation_scores]))

    def _evaluate(self, ctx, x, y, a):
        self._check_step(x, self.features_in_step)
        feats, step, _ = self._ranked(x, a, self.features_in_step)
        rank, counts = rank_features(feats), _steps(feats.shape[1], step)
        base = self._replacement(x, ctx.generator, rank // step, counts.numel())
        curve = ctx.curve(x, base, rank, counts, y)
        if self.return_auc_per_sample:
            return torch.trapezoid(curve, dx=1.0, dim=1).tolist()
        return curve.tolist()


class RegionPerturbation(_Metric):
    """Region perturbation (Samek et al. 2016), as ``quantus.RegionPerturbation`` (module docstring)."""

    name = "Region-Perturbation"
    _softmax = True

    def __init__(self, patch_size: int = 8, order: str = "morf", regions_evaluation: int = 100,
                 abs: bool = False, normalise: bool = True, normalise_func: Optional[Callable] = None,
                 normalise_func_kwargs: Optional[dict] = None, perturb_func: Optional[Callable] = None,
                 perturb_baseline: Any = "black", perturb_func_kwargs: Optional[dict] = None,
                 return_aggregate: bool = False, aggregate_func: Optional[Callable] = None,
                 default_plot_func: Optional[Callable] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs, perturb_func=perturb_func,
                    perturb_baseline=perturb_baseline, perturb_func_kwargs=perturb_func_kwargs)
        if not isinstance(order, str) or order.lower() not in ("morf", "lerf", "random"):
            raise QuantusAssertionError(f"order must be 'morf', 'lerf' or 'random', got {order!r}")
        self.patch_size, self.order = check_count(patch_size, "patch_size"), order.lower()
        self.regions_evaluation = check_count(regions_evaluation, "regions_evaluation")

    get_auc_score = PixelFlipping.get_auc_score

    def _evaluate(self, ctx, x, y, a):
        if x.dim() not in (3, 4):
            raise ValueError(f"RegionPerturbation needs inputs [B, C, H, W] or [B, C, L], "
                             f"got {tuple(x.shape)}")
        batch = x.shape[0]
        ids, n_patches = _patch_ids(x.shape, self.patch_size, x.device)
        sums = torch.zeros(batch, n_patches, dtype=torch.float64, device=x.device)
        sums.index_add_(1, ids, a.expand_as(x).sum(1).reshape(batch, -1).double())
        if self.order == "random":
            perms = [torch.randperm(n_patches, generator=ctx.generator) for _ in range(batch)]
            order = torch.stack(perms).to(x.device)
        else:
            order = torch.sort(sums, dim=1, descending=self.order == "morf", stable=True).indices
        steps = torch.arange(n_patches, device=x.device).expand_as(order)
        position = torch.empty_like(order).scatter_(1, order, steps)
        counts = torch.arange(1, min(self.regions_evaluation, n_patches) + 1)
        base = self._replacement(x, ctx.generator, position[:, ids], n_patches)
        curve = ctx.curve(x, base, position[:, ids], counts, y)
        return list((ctx.clean[:, None] - curve).cpu().numpy())


class FaithfulnessCorrelation(_Metric):
    """Faithfulness correlation (Bhatt et al. 2020), as ``quantus.FaithfulnessCorrelation``; the
    model passes come from :func:`fastattr.metrics.subset_deltas`."""

    name = "Faithfulness Correlation"

    def __init__(self, similarity_func: Optional[Callable] = None, nr_runs: int = 100, subset_size: int = 224,
                 abs: bool = False, normalise: bool = True, normalise_func: Optional[Callable] = None,
                 normalise_func_kwargs: Optional[dict] = None, perturb_func: Optional[Callable] = None,
                 perturb_baseline: Any = "black", perturb_func_kwargs: Optional[dict] = None,
                 return_aggregate: bool = True, aggregate_func: Optional[Callable] = None,
                 default_plot_func: Optional[Callable] = None, disable_warnings: bool = False,
                 display_progressbar: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs, perturb_func=perturb_func,
                    perturb_baseline=perturb_baseline, perturb_func_kwargs=perturb_func_kwargs)
        self.similarity_func = similarity_func
        self.nr_runs = check_count(nr_runs, "nr_runs (a correlation over the runs)", minimum=2)
        self.subset_size = check_count(subset_size, "subset_size")

    def _evaluate(self, ctx, x, y, a):
        spatial = math.prod(x.shape[2:]) if x.dim() > 2 else x.shape[1]
        if self.subset_size >= spatial:
            raise ValueError(f"subset_size ({self.subset_size}) must be smaller than the input size "
                             f"({spatial})")
        feats = a.expand_as(x).reshape(x.shape[0], -1)
        uniform = self._uniform()  # one value per example and run, as Quantus draws it
        fill = self._uniform_values(x, self.nr_runs, ctx.generator) if uniform else None
        base = 0.0 if uniform else self._baseline(x, ctx.generator)
        passes = subset_deltas(ctx.net, x, y, feats.shape[1], subset_size=self.subset_size,
                               n_subsets=self.nr_runs, baseline=base,
                               score=ctx.reader, generator=ctx.generator, max_batch=ctx.max_batch,
                               memory_budget=ctx.memory_budget, fill=fill)
        mass = passes.attribution_mass(feats, weighted=False)
        if self.similarity_func is None:
            return pearson(mass, passes.delta).tolist()
        sim = self.similarity_func(a=_to_numpy(mass), b=_to_numpy(passes.delta), batched=True)
        return list(np.asarray(sim))


class SensitivityN(_Metric):
    """Quantus's Sensitivity-N (module docstring; the paper's random-subset version is
    :func:`fastattr.metrics.sensitivity_n`)."""

    name = "Sensitivity-N"
    _softmax = True

    def __init__(self, similarity_func: Optional[Callable] = None, n_max_percentage: float = 0.8,
                 features_in_step: int = 1, abs: bool = False, normalise: bool = True,
                 normalise_func: Optional[Callable] = None, normalise_func_kwargs: Optional[dict] = None,
                 perturb_func: Optional[Callable] = None, perturb_baseline: Any = "black",
                 perturb_func_kwargs: Optional[dict] = None, return_aggregate: bool = True,
                 aggregate_func: Optional[Callable] = None, default_plot_func: Optional[Callable] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs, perturb_func=perturb_func,
                    perturb_baseline=perturb_baseline, perturb_func_kwargs=perturb_func_kwargs)
        self.similarity_func = similarity_func
        self.n_max_percentage = check_number(n_max_percentage, "n_max_percentage")
        self.features_in_step = check_count(features_in_step, "features_in_step")

    def _evaluate(self, ctx, x, y, a):
        self._check_step(x, self.features_in_step)
        if x.shape[0] < 2:
            raise ValueError(f"SensitivityN correlates across the examples of x_batch: it needs at least 2, "
                             f"got {x.shape[0]}")
        feats, step, channels = self._ranked(x, a, self.features_in_step)
        spatial = math.prod(x.shape[2:]) if x.dim() > 2 else x.shape[1]
        n_steps = int(self.n_max_percentage * spatial // self.features_in_step)
        if n_steps < 1:
            raise ValueError(f"n_max_percentage ({self.n_max_percentage:g}) × the input size ({spatial}) / "
                             f"features_in_step ({self.features_in_step}) leaves no step to score")
        counts = _steps(feats.shape[1], step)[:n_steps]
        rank = rank_features(feats)
        base = self._replacement(x, ctx.generator, rank // step, counts.numel())
        deltas = ctx.clean[:, None] - ctx.curve(x, base, rank, counts, y)
        ordered = torch.sort(feats.double(), dim=1, descending=True, stable=True).values
        cum = torch.cat([ordered.new_zeros(ordered.shape[0], 1), ordered.cumsum(1)], 1)
        before = torch.cat([counts.new_zeros(1), counts[:-1]])
        removed = (cum[:, counts.to(x.device)] - cum[:, before.to(x.device)]) * channels
        if self.similarity_func is None:
            return pearson(deltas.T, removed.T).cpu().numpy()
        return np.asarray(self.similarity_func(a=_to_numpy(deltas.T), b=_to_numpy(removed.T), batched=True))


class Infidelity(_Metric):
    """Quantus's infidelity (Yeh et al. 2019, with Quantus's cumulative patch perturbations; the
    paper's random version is :func:`fastattr.metrics.infidelity`)."""

    name = "Infidelity"

    def __init__(self, loss_func: Union[str, Callable] = "mse",
                 perturb_patch_sizes: Optional[List[int]] = None, n_perturb_samples: int = 10,
                 abs: bool = False, normalise: bool = False,
                 normalise_func: Optional[Callable] = None, normalise_func_kwargs: Optional[dict] = None,
                 perturb_func: Optional[Callable] = None, perturb_baseline: Any = "black",
                 perturb_func_kwargs: Optional[dict] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable] = None, default_plot_func: Optional[Callable] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs, perturb_func=perturb_func,
                    perturb_baseline=perturb_baseline, perturb_func_kwargs=perturb_func_kwargs)
        if isinstance(loss_func, str) and loss_func != "mse":
            raise ValueError(f"loss_func must be 'mse' or a function, got {loss_func!r}")
        self.loss_func = loss_func
        sizes = list(perturb_patch_sizes) if perturb_patch_sizes is not None else [4]
        if not sizes:
            raise ValueError("perturb_patch_sizes must not be empty")
        self.perturb_patch_sizes = [check_count(p, "each of perturb_patch_sizes") for p in sizes]
        self.n_perturb_samples = check_count(n_perturb_samples, "n_perturb_samples")

    def _loss(self, deltas: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
        if self.loss_func == "mse":
            return ((deltas - sums) ** 2).mean(1)
        out = self.loss_func(a=_to_numpy(deltas), b=_to_numpy(sums), batched=True)
        return torch.as_tensor(np.asarray(out), dtype=torch.float64, device=deltas.device)

    def _evaluate(self, ctx, x, y, a):
        if x.dim() != 4:
            raise ValueError(f"Infidelity needs image inputs [B, C, H, W], got {tuple(x.shape)}")
        batch = x.shape[0]
        samples = []
        for _ in range(self.n_perturb_samples):
            if samples and not self._uniform():  # a fixed baseline makes every sample the same
                samples.append(samples[-1])
                continue
            losses = []
            for patch in self.perturb_patch_sizes:
                ids, n_patches = _patch_ids(x.shape, patch, x.device)
                base = self._replacement(x, ctx.generator, ids.expand(batch, -1), n_patches)
                inside = (a.expand_as(x) * (x - base)).sum(1).reshape(batch, -1).double()
                deltas = ctx.clean[:, None] - ctx.curve(x, base, ids.expand(batch, -1),
                                                        torch.arange(1, n_patches + 1), y)
                sums = torch.zeros(batch, n_patches, dtype=torch.float64, device=x.device)
                sums.index_add_(1, ids, inside)
                losses.append(self._loss(deltas, sums.cumsum(1)))
            samples.append(torch.stack(losses, 1).mean(1))
        return list(torch.stack(samples, 1).mean(1).cpu().numpy())


class _Sensitivity(_Metric):
    """Shared by AvgSensitivity / MaxSensitivity (Yeh et al. 2019): Quantus's sensitivity with the
    perturbed explanations batched through :func:`fastattr.metrics.robustness.sensitivity_samples`."""

    _reduce: Callable

    def __init__(self, similarity_func: Optional[Callable] = None, norm_numerator: Optional[Callable] = None,
                 norm_denominator: Optional[Callable] = None, nr_samples: int = 200, abs: bool = False,
                 normalise: bool = False, normalise_func: Optional[Callable] = None,
                 normalise_func_kwargs: Optional[dict] = None, perturb_func: Optional[Callable] = None,
                 lower_bound: float = 0.2, upper_bound: Optional[float] = None,
                 perturb_func_kwargs: Optional[dict] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable] = None, default_plot_func: Optional[Callable] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False,
                 return_nan_when_prediction_changes: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs, perturb_func=perturb_func,
                    allowed=_NOISE_FUNCS, perturb_func_kwargs=perturb_func_kwargs)
        self.similarity_func = similarity_func
        self.norm_numerator, self.norm_denominator = norm_numerator, norm_denominator
        self.nr_samples = check_count(nr_samples, "nr_samples")
        self.lower_bound, self.upper_bound = lower_bound, upper_bound
        self.return_nan_when_prediction_changes = check_flag(return_nan_when_prediction_changes,
                                                             "return_nan_when_prediction_changes")
        self._bounds()

    def _bounds(self) -> tuple[float, float]:
        """The noise interval: ``[−lower_bound, lower_bound]``, or ``[lower_bound, upper_bound]``."""
        low = self.perturb_func_kwargs.get("lower_bound", self.lower_bound)
        high = self.perturb_func_kwargs.get("upper_bound", self.upper_bound)
        if high is None:
            low = check_number(low, "lower_bound (the noise magnitude when upper_bound is None)")
            return -low, low
        low = check_number(low, "lower_bound", minimum=-math.inf)
        high = check_number(high, "upper_bound", minimum=-math.inf)
        if not high > low:
            raise QuantusAssertionError(f"upper_bound ({high:g}) must be larger than lower_bound ({low:g})")
        return low, high

    def _distance(self, ctx: _Context, rows: slice) -> Callable:
        default = (self.similarity_func, self.norm_numerator, self.norm_denominator) == (None, None, None)
        labels = ctx.output[rows].argmax(-1)

        def distance(ex, e, perturbed):
            k, n = e.shape[0], e.shape[1]
            if default:
                num = torch.linalg.vector_norm((ex.unsqueeze(0) - e).reshape(k, n, -1).double(), dim=2)
                vals = num / torch.linalg.vector_norm(ex.reshape(n, -1).double(), dim=1)
            else:
                sim = self.similarity_func or (lambda a, b: a - b)
                num_f = self.norm_numerator or (lambda a: np.linalg.norm(a, axis=-1))
                den_f = self.norm_denominator or (lambda a: np.linalg.norm(a, axis=-1))
                a0 = _to_numpy(ex.reshape(n, -1))
                rows_ = [num_f(a=sim(a=a0, b=_to_numpy(e[j].reshape(n, -1)))) / den_f(a=a0) for j in range(k)]
                vals = torch.as_tensor(np.stack(rows_), dtype=torch.float64, device=ex.device)
            if self.return_nan_when_prediction_changes:
                with torch.no_grad():
                    changed = ctx.net(perturbed).argmax(-1).view(k, n) != labels
                vals = vals.masked_fill(changed, math.nan)
            return vals

        return distance

    def _explainer(self, model, block: int) -> Callable:
        """``explain(model, z, t)`` for ``k`` copies of a block: ``explain_func`` once on all of them,
        then Quantus's preprocessing per copy (its normalisation sees one batch, as in Quantus)."""

        def explain(_, z, t):
            func, kwargs = self._explain_func
            z_np = _to_numpy(z)
            out = _to_numpy(func(model=model, inputs=z_np, targets=_to_numpy(t), **kwargs))
            parts = [self._process(out[i:i + block], z_np[i:i + block], _EXPLAINED)
                     for i in range(0, z.shape[0], block)]
            return torch.as_tensor(np.concatenate(parts), dtype=z.dtype, device=z.device)

        return explain

    def _evaluate(self, ctx, x, y, a):
        if self._explain_func[0] is None:
            raise ValueError(f"{type(self).__name__} needs explain_func to explain the perturbed inputs")
        low, high = self._bounds()
        out = []
        for i in range(0, x.shape[0], ctx.batch_size):
            rows = slice(i, i + ctx.batch_size)
            xb = x[rows]
            chunk = chunk_size(xb, self.nr_samples * xb.shape[0], ctx.max_batch, ctx.memory_budget)
            explain = self._explainer(ctx.model, xb.shape[0])
            samples = sensitivity_samples(ctx.model, xb, explain, y[rows], explained=a[rows], low=low,
                                          high=high, n_samples=self.nr_samples, generator=ctx.generator,
                                          chunk=chunk, distance=self._distance(ctx, rows),
                                          explain_name="explain_func", explained_name=ctx.a_name)
            out.append(self._reduce(samples.cpu().numpy()))
        return list(np.concatenate(out))


class AvgSensitivity(_Sensitivity):
    """Average sensitivity (Yeh et al. 2019), as ``quantus.AvgSensitivity`` (module docstring)."""

    name = "Avg-Sensitivity"

    def _reduce(self, samples: np.ndarray) -> np.ndarray:
        return (np.mean if self.return_nan_when_prediction_changes else np.nanmean)(samples, axis=1)


class MaxSensitivity(_Sensitivity):
    """Max sensitivity (Yeh et al. 2019), as ``quantus.MaxSensitivity`` (module docstring)."""

    name = "Max-Sensitivity"

    def _reduce(self, samples: np.ndarray) -> np.ndarray:
        return (np.max if self.return_nan_when_prediction_changes else np.nanmax)(samples, axis=1)


class _MapMetric(_Metric):
    """Quantus's complexity metrics (Sparseness, Complexity): per-example scores of the preprocessed
    attributions alone. The model is never run (None is taken, as in Quantus); it only reaches
    ``explain_func``, under fastattr's model guard."""

    _score: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, abs: bool = True, normalise: bool = True, normalise_func: Optional[Callable] = None,
                 normalise_func_kwargs: Optional[dict] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable] = None, default_plot_func: Optional[Callable] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs)

    def __call__(self, model, x_batch, y_batch, a_batch=None, s_batch=None,
                 channel_first: Optional[bool] = None, explain_func: Optional[Callable] = None,
                 explain_func_kwargs: Optional[dict] = None, model_predict_kwargs: Optional[dict] = None,
                 softmax: Any = False, device: Optional[str] = None, batch_size: int = 64, custom_batch: Any = None,
                 **kwargs):
        """Scores of ``a_batch`` (or of ``explain_func``'s attributions of ``model`` on ``x_batch`` for
        ``y_batch``), one per example (``[aggregate]`` with ``return_aggregate=True``)."""
        x_np, y_np, batch_size = self._batch(x_batch, y_batch, channel_first, batch_size, kwargs,
                                             integer_labels=False)
        guard = model_guard(model) if model is not None and a_batch is None else contextlib.nullcontext()
        with guard:
            a_np = self._attributions(model, x_np, y_np, a_batch, explain_func, explain_func_kwargs, device,
                                      batch_size)
        a = torch.tensor(a_np, dtype=torch.float64)
        if not torch.isfinite(a).all():
            raise ValueError(f"{'a_batch' if a_batch is not None else _EXPLAINED} contains NaN or Inf")
        scores = self._score(a.reshape(a.shape[0], -1)).tolist()
        self.evaluation_scores = [self.aggregate_func(scores)] if self.return_aggregate else scores
        self.all_evaluation_scores.extend(self.evaluation_scores)
        return self.evaluation_scores


class Sparseness(_MapMetric):
    """Sparseness (Chalasani et al. 2020), as ``quantus.Sparseness``: the Gini index of the preprocessed
    map plus ``1e-7`` (:func:`fastattr.metrics.complexity.gini_index`; higher is better)."""

    name = "Sparseness"

    def _score(self, a: torch.Tensor) -> torch.Tensor:
        return gini_index(a, eps=1e-7)


class Complexity(_MapMetric):
    """Complexity (Bhatt et al. 2020), as ``quantus.Complexity``: the entropy of ``a_i / Σ|a|`` of the
    preprocessed map, ``−Σ p log(p + 1e-12)`` (:func:`fastattr.metrics.complexity.contribution_entropy`;
    lower is better)."""

    name = "Complexity"

    def _score(self, a: torch.Tensor) -> torch.Tensor:
        return contribution_entropy(a, eps=1e-12)


class RandomLogit(_Metric):
    """Random logit (Sixt et al. 2020), as ``quantus.RandomLogit`` on
    :func:`fastattr.metrics.random_logit`: the similarity (default: Quantus's SSIM of the flattened maps,
    computed in torch) between the map of ``y`` and ``explain_func``'s map of an off-target class drawn
    as Quantus draws it (module docstring); lower is better."""

    name = "Random Logit"

    def __init__(self, similarity_func: Optional[Callable] = None, num_classes: int = 1000, seed: Optional[int] = 42,
                 abs: bool = False, normalise: bool = True, normalise_func: Optional[Callable] = None,
                 normalise_func_kwargs: Optional[dict] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable] = None, default_plot_func: Optional[Callable] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs)
        self.similarity_func = similarity_func
        self.num_classes = check_count(num_classes, "num_classes", minimum=2)
        self.seed = check_count(seed, "seed", minimum=0, optional=True)

    def _similarity(self):
        f = self.similarity_func
        if f is None or (getattr(f, "__name__", None) == "ssim" and getattr(f, "__module__", "").startswith("quantus")):
            return "ssim"
        return lambda u, v: torch.tensor(np.asarray(f(_to_numpy(u), _to_numpy(v), batched=True), dtype=np.float64))

    def off_classes(self, y_batch, batch_size: int = 64) -> np.ndarray:
        """Quantus's off-target classes for the labels ``y_batch``: per batch of ``batch_size``, the
        generator reseeded with ``seed``, ``k ~ randint(0, num_classes − 1)`` per example and the k-th of
        the other classes (a private ``RandomState``: numpy's global state is left alone)."""
        y = _to_numpy(y_batch).reshape(-1)
        parts = []
        for i in range(0, len(y), batch_size):
            k = np.random.RandomState(self.seed).randint(0, self.num_classes - 1, len(y[i:i + batch_size]))
            parts.append(k + (k >= y[i:i + batch_size]))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _evaluate(self, ctx, x, y, a):
        if self._explain_func[0] is None:
            raise QuantusAssertionError("RandomLogit needs explain_func to explain the off-target classes")
        outputs = ctx.output.shape[-1] if ctx.output.dim() > 1 else 1
        if self.num_classes > outputs:
            raise ValueError(f"num_classes ({self.num_classes}) is more than the model's {outputs} outputs "
                             "(Quantus's default is 1000: set it to the model's number of classes)")
        if (y >= self.num_classes).any():
            raise ValueError(f"y_batch {y.tolist()} must be below num_classes ({self.num_classes})")
        off = torch.as_tensor(self.off_classes(y.cpu().numpy(), ctx.batch_size), device=y.device)

        def explain(_, z, t):  # one call per Quantus batch, preprocessed as one, as Quantus's explain_batch
            return torch.as_tensor(self._explain(ctx.model, _to_numpy(z), _to_numpy(t)), dtype=z.dtype,
                                   device=z.device)

        return random_logit(ctx.net, x, explain, y, classes=off, attributions=a, similarity=self._similarity(),
                            max_batch=ctx.batch_size).tolist()


def _normalise_by_second_moment(a: np.ndarray, normalise_axes: Optional[Sequence[int]] = None) -> np.ndarray:
    """Quantus's ``normalise_by_average_second_moment_estimate`` (Binder et al. 2022), the relative
    stability metrics' default: ``a / sqrt(mean(a²))`` over ``normalise_axes`` (default: every axis);
    returned as is when all zero or when a second moment is zero."""
    if np.all(a == 0.0):
        return a
    axes = tuple(range(a.ndim)) if normalise_axes is None else tuple(normalise_axes)
    moment = np.sqrt(np.sum(a ** 2, axis=axes, keepdims=True) / np.prod([a.shape[n] for n in axes]))
    return a / moment if np.all(moment != 0) else a


class _RelativeStability(_Metric):
    """Shared by the relative stability drop-ins (Agarwal et al. 2022): Quantus 0.6's
    ``Relative*Stability`` as :func:`fastattr.metrics.relative_stability` of one kind, per batch of
    ``batch_size``, the perturbed explanations batched as in AvgSensitivity."""

    _kind: str
    _bounds = _Sensitivity._bounds
    _explainer = _Sensitivity._explainer

    def __init__(self, nr_samples: int = 200, abs: bool = False, normalise: bool = False,
                 normalise_func: Optional[Callable] = None, normalise_func_kwargs: Optional[dict] = None,
                 perturb_func: Optional[Callable] = None, perturb_func_kwargs: Optional[dict] = None,
                 return_aggregate: bool = False, aggregate_func: Optional[Callable] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False, eps_min: float = 1e-6,
                 default_plot_func: Optional[Callable] = None, return_nan_when_prediction_changes: bool = True,
                 **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func or _normalise_by_second_moment,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs, perturb_func=perturb_func,
                    allowed=("batch_uniform_noise",), perturb_func_kwargs=perturb_func_kwargs)
        self.nr_samples = check_count(nr_samples, "nr_samples")
        self.eps_min = check_number(eps_min, "eps_min")
        if self.eps_min == 0:
            raise ValueError("eps_min must be a positive number (it replaces zero divisors), got 0")
        self.lower_bound, self.upper_bound = 0.02, 0.2  # batch_uniform_noise's default, Quantus's upper_bound
        self.return_nan_when_prediction_changes = check_flag(return_nan_when_prediction_changes,
                                                             "return_nan_when_prediction_changes")
        self._bounds()

    def _layers(self, module: nn.Module) -> Optional[List[nn.Module]]:
        return None

    def _evaluate(self, ctx, x, y, a):
        if self._explain_func[0] is None:
            raise ValueError(f"{type(self).__name__} needs explain_func to explain the perturbed inputs")
        net = ctx.net
        run = net.func if isinstance(net, functools.partial) else net
        if run is not ctx.model:
            run.eval()  # _predictor's copy, whose new nn.Identity is in training mode
        model = (lambda z: torch.softmax(net(z), -1)) if ctx.reader == "probability" else net
        layers = self._layers(run)
        out = []
        for i in range(0, x.shape[0], ctx.batch_size):
            rows = slice(i, i + ctx.batch_size)
            scores = relative_stability(
                model, x[rows], self._explainer(ctx.model, x[rows].shape[0]), y[rows], kinds=(self._kind,),
                layer=layers, n_samples=self.nr_samples, radius=self._bounds(), eps_min=self.eps_min,
                label_preserving="quantus" if self.return_nan_when_prediction_changes else "all",
                attributions=a[rows], generator=ctx.generator, max_batch=ctx.max_batch,
                memory_budget=ctx.memory_budget)
            out.append(scores[self._kind].double().cpu().numpy())
        return list(np.concatenate(out))


class RelativeInputStability(_RelativeStability):
    """Relative input stability (Agarwal et al. 2022), as ``quantus.RelativeInputStability``:
    ``max ‖(e_x − e_x') ⊘ e_x‖ / max(‖(x − x') ⊘ x‖, eps_min)`` (module docstring); lower is better."""

    name = "Relative Input Stability"
    _kind = "input"


class RelativeOutputStability(_RelativeStability):
    """Relative output stability (Agarwal et al. 2022), as ``quantus.RelativeOutputStability``:
    ``max ‖(e_x − e_x') ⊘ e_x‖ / max(‖h(x) − h(x')‖, eps_min)``, ``h`` the logits (the probabilities
    with ``softmax=True``); lower is better."""

    name = "Relative Output Stability"
    _kind = "output"


class RelativeRepresentationStability(_RelativeStability):
    """Relative representation stability (Agarwal et al. 2022), as
    ``quantus.RelativeRepresentationStability``: ``max ‖(e_x − e_x') ⊘ e_x‖ / max(‖(L_x − L_x') ⊘ L_x‖,
    eps_min)``, ``L`` the outputs of the layers ``layer_names`` or ``layer_indices`` (default: every
    module but ``nn.Sequential`` ones and those of the model's class) flattened and concatenated;
    lower is better."""

    name = "Relative Representation Stability"
    _kind = "representation"

    def __init__(self, nr_samples: int = 200, abs: bool = False, normalise: bool = False,
                 normalise_func: Optional[Callable] = None, normalise_func_kwargs: Optional[dict] = None,
                 perturb_func: Optional[Callable] = None, perturb_func_kwargs: Optional[dict] = None,
                 return_aggregate: bool = False, aggregate_func: Optional[Callable] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False, eps_min: float = 1e-6,
                 default_plot_func: Optional[Callable] = None, layer_names: Optional[List[str]] = None,
                 layer_indices: Optional[List[int]] = None, return_nan_when_prediction_changes: bool = True,
                 **kwargs):
        if layer_names is not None and layer_indices is not None:
            raise ValueError("give layer_names or layer_indices, not both (as in Quantus)")
        super().__init__(nr_samples=nr_samples, abs=abs, normalise=normalise, normalise_func=normalise_func,
                         normalise_func_kwargs=normalise_func_kwargs, perturb_func=perturb_func,
                         perturb_func_kwargs=perturb_func_kwargs, return_aggregate=return_aggregate,
                         aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                         display_progressbar=display_progressbar, eps_min=eps_min,
                         return_nan_when_prediction_changes=return_nan_when_prediction_changes, **kwargs)
        self.layer_names, self.layer_indices = layer_names, layer_indices

    def _layers(self, module: nn.Module) -> List[nn.Module]:
        """Quantus's selection: a module of :func:`fastattr.metrics.stability.hidden_layers` is read when
        its name is in ``layer_names`` or its position in that list is in ``layer_indices`` (a negative
        index counts from the end of ``named_modules()``, the unfiltered list), or when neither is given."""
        n_all = len(list(module.named_modules()))
        indices = {i if i >= 0 else n_all + i for i in self.layer_indices or []}
        names = set(self.layer_names or [])
        chosen = [m for i, (n, m) in enumerate(hidden_layers(module))
                  if (not names and not indices) or i in indices or n in names]
        if not chosen:
            raise ValueError(f"layer_names {self.layer_names} / layer_indices {self.layer_indices} select no layer "
                             f"of the model; its layers are {[n for n, _ in hidden_layers(module)]}")
        return chosen



class MPRT(_Metric):
    """Model parameter randomisation test (Adebayo et al. 2018), as ``quantus.MPRT``
    (``quantus/metrics/randomisation/mprt.py``) on :func:`fastattr.metrics.model_randomisation`: a
    deep copy of the model has its layers (modules with ``reset_parameters``) re-initialised one by
    one, each after ``torch.manual_seed(seed + 1)``, ``layer_order="top_down"`` (cascading from the
    output), ``"bottom_up"`` (cascading from the input) or ``"independent"`` (each layer alone, input
    first); the scores are the similarity (default: Quantus's ``correlation_spearman``, computed in
    torch) of the preprocessed ``a_batch`` (or ``explain_func``'s maps) to ``explain_func``'s maps of
    each randomised model, per batch of ``batch_size``. Returns ``{"original": [...], layer: [...],
    ...}`` as Quantus does (``"original"``: ``a_batch`` against the original model's maps), or one
    score per example with ``return_average_correlation`` (the mean over every entry, ``"original"``
    included, as Quantus 0.6 averages) / ``return_last_correlation`` (the last layer's);
    ``skip_layers`` keeps ``"original"`` and the last layer only. Unlike Quantus, the global torch RNG
    state is left as it was; lower is better."""

    name = "Model Parameter Randomisation Test"

    def __init__(self, similarity_func: Optional[Callable] = None, layer_order: str = "top_down", seed: int = 42,
                 return_sample_correlation: Optional[bool] = None, return_average_correlation: bool = False,
                 return_last_correlation: bool = False, skip_layers: bool = False, abs: bool = True,
                 normalise: bool = True, normalise_func: Optional[Callable] = None,
                 normalise_func_kwargs: Optional[dict] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable] = None, default_plot_func: Optional[Callable] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs)
        if return_sample_correlation is not None:  # Quantus's deprecated name
            return_average_correlation = return_sample_correlation
        self.similarity_func = similarity_func
        if layer_order not in ("top_down", "bottom_up", "independent"):
            raise QuantusAssertionError(f"layer_order must be 'top_down', 'bottom_up' or 'independent', "
                                        f"got {layer_order!r}")
        self.layer_order = layer_order
        self.seed = check_count(seed, "seed", minimum=0)
        self.return_average_correlation = check_flag(return_average_correlation, "return_average_correlation")
        self.return_last_correlation = check_flag(return_last_correlation, "return_last_correlation")
        self.skip_layers = check_flag(skip_layers, "skip_layers")
        if self.return_average_correlation and self.return_last_correlation:
            raise ValueError("Both 'return_average_correlation' and 'return_last_correlation' cannot be set to "
                             "'True'. Set both to 'False' or one of the attributes to 'True'.")
        if self.return_average_correlation and self.skip_layers:
            raise ValueError("Both 'return_average_correlation' and 'skip_layers' cannot be set to 'True'.")
        self.evaluation_scores = {}

    def _similarity(self):
        f = self.similarity_func
        if f is None:
            return "spearman"
        if getattr(f, "__module__", "").startswith("quantus") and getattr(f, "__name__", None) in (
                "correlation_spearman", "ssim"):
            return "spearman" if f.__name__ == "correlation_spearman" else "ssim"
        return lambda u, v: torch.tensor(np.asarray(f(_to_numpy(u), _to_numpy(v), batched=True), dtype=np.float64))

    def __call__(self, model, x_batch, y_batch, a_batch=None, *args, **kwargs):
        """As ``_Metric.__call__``; the scores are a dict (or a list with ``return_average_correlation``
        / ``return_last_correlation``), appended whole to ``all_evaluation_scores`` as in Quantus."""
        if self.return_aggregate and not (self.return_average_correlation or self.return_last_correlation):
            raise QuantusAssertionError("Set 'return_average_correlation' or 'return_last_correlation' to True "
                                        "in order to compute the aggregate evaluation results.")
        aggregate, n = self.return_aggregate, len(self.all_evaluation_scores)
        self.return_aggregate = False
        try:
            scores = super().__call__(model, x_batch, y_batch, a_batch, *args, **kwargs)
        finally:
            self.return_aggregate = aggregate
            del self.all_evaluation_scores[n:]
        if aggregate:
            scores = [self.aggregate_func(scores)]
        self.evaluation_scores = scores
        self.all_evaluation_scores.append(scores)
        return scores

    def _evaluate(self, ctx, x, y, a):
        if self._explain_func[0] is None:
            raise QuantusAssertionError("MPRT needs explain_func to explain the randomised models")

        def explain(net, z, t):  # one call per Quantus batch, preprocessed as one, as Quantus's explain_batch
            return torch.as_tensor(self._explain(net, _to_numpy(z), _to_numpy(t)), dtype=z.dtype, device=z.device)

        sim = self._similarity()
        mode = "independent" if self.layer_order == "independent" else "cascading"
        order = "top_down" if self.layer_order == "top_down" else "bottom_up"
        b, step = x.shape[0], ctx.batch_size
        # "original": a_batch against the original model's maps, explained first as in Quantus
        e0 = torch.cat([explain(ctx.model, x[i:i + step], y[i:i + step]) for i in range(0, b, step)])
        if e0.shape != a.shape:
            raise ValueError(f"{ctx.a_name or _EXPLAINED} has {tuple(a.shape[1:])} per example but explain_func "
                             f"returns {tuple(e0.shape[1:])}")
        first = similarity_function(sim, ("spearman", "ssim"))(a.reshape(b, -1).double(),
                                                                     e0.reshape(b, -1).double())
        layers = model_randomisation(ctx.model, x, explain, y, mode=mode, similarity=sim, layer_order=order,
                                     generator=self.seed + 1, attributions=a, max_batch=step)
        scores = {"original": torch.as_tensor(first, dtype=torch.float64).reshape(b).tolist()}
        names = list(layers)[-1:] if self.skip_layers else list(layers)
        scores.update({k: layers[k].tolist() for k in names})
        if self.return_average_correlation:
            return np.mean(np.array([scores[k] for k in scores], dtype=np.float64), axis=0).tolist()
        if self.return_last_correlation:
            return [float(c) for c in list(scores.values())[-1]]
        return scores


class ModelParameterRandomisation(MPRT):
    """Quantus 0.6's former name of :class:`MPRT` (which prints a deprecation note; this one does not)."""


class ROAD(_Metric):
    """ROAD (Rong et al. 2022), as ``quantus.ROAD`` (``quantus/metrics/faithfulness/road.py``) on
    :func:`fastattr.metrics.road_scores` and the ``noisy_linear_impute`` op: for each percentage ``p``
    (default 1, 3, …, 99) the ``int(a_size · p / 100)`` elements of the preprocessed map ranked first
    by ``np.argsort(-a)`` (``a_size``: the map's own size per example) are replaced by noisy linear
    imputation (``noise`` σ, Quantus's 0.01: one ``randn(C, k)`` draw per percentage and example, in
    that order, from ``generator``), and the score is whether the model still predicts ``y``.
    Returns ``{p: accuracy over the examples}``. ``return_aggregate`` does not apply (Quantus logs an
    error and returns the dict too). Unlike Quantus 0.6:

    - a channel-reduced map on a multi-channel input ranks pixels and removes them in every channel
      (Quantus ranks the broadcast elements and raises an IndexError on the ``H·W`` mask);
    - every example counts: Quantus's ``custom_postprocess`` keeps the first batch of ``batch_size``
      only.

    Lower is better (MoRF)."""

    name = "ROAD"
    _softmax = True

    def __init__(self, percentages: Optional[List[float]] = None, noise: float = 0.01, abs: bool = False,
                 normalise: bool = True, normalise_func: Optional[Callable] = None,
                 normalise_func_kwargs: Optional[dict] = None, perturb_func: Optional[Callable] = None,
                 perturb_func_kwargs: Optional[dict] = None, return_aggregate: bool = False,
                 aggregate_func: Optional[Callable] = None, default_plot_func: Optional[Callable] = None,
                 disable_warnings: bool = False, display_progressbar: bool = False, **kwargs):
        self._setup(abs=abs, normalise=normalise, normalise_func=normalise_func,
                    normalise_func_kwargs=normalise_func_kwargs, return_aggregate=return_aggregate,
                    aggregate_func=aggregate_func, disable_warnings=disable_warnings,
                    display_progressbar=display_progressbar, kwargs=kwargs, perturb_func=perturb_func,
                    allowed=("noisy_linear_imputation",), perturb_func_kwargs=perturb_func_kwargs)
        self.percentages = list(range(1, 100, 2)) if percentages is None else list(percentages)
        road_counts(self.percentages, 100)  # the range check
        self.noise = check_number(self.perturb_func_kwargs.get("noise", noise), "noise")
        self.evaluation_scores = {}

    def __call__(self, model, x_batch, y_batch, a_batch=None, *args, **kwargs):
        """As ``_Metric.__call__``; the scores are ``{percentage: accuracy}``."""
        aggregate, self.return_aggregate = self.return_aggregate, False
        try:
            return super().__call__(model, x_batch, y_batch, a_batch, *args, **kwargs)
        finally:
            self.return_aggregate = aggregate

    def _evaluate(self, ctx, x, y, a):
        if x.dim() != 4:
            raise ValueError(f"ROAD needs images x_batch [B, C, H, W], got {tuple(x.shape)}")
        batch, channels = x.shape[:2]
        per_pixel = a.shape[1] == 1 and channels > 1
        flat = (a[:, 0] if per_pixel else a.expand_as(x)).reshape(batch, -1)
        order = torch.from_numpy(np.argsort(-_to_numpy(flat), axis=1)).to(x.device)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=x.device)
                                                .expand_as(order))
        counts = [int(a[0].numel() * p / 100) for p in self.percentages]
        rank = rank.reshape((batch,) + (tuple(x.shape[2:]) if per_pixel else tuple(x.shape[1:])))

        def level_noise(level: int) -> torch.Tensor:
            k = counts[level]
            eps = torch.zeros((batch, channels if per_pixel else 1, flat.shape[1]), dtype=x.dtype)
            for i in range(batch):
                draw = torch.randn((channels, k) if per_pixel else (1, k), generator=ctx.generator,
                                   dtype=torch.float64)
                eps[i, :, order[i, :k].cpu()] = (self.noise * draw).to(x.dtype)
            return eps.reshape(x.shape)

        chunk = chunk_size(x, batch * len(counts), ctx.max_batch, ctx.memory_budget)
        acc = road_scores(ctx.net, x, rank, counts, level_noise,
                          lambda logits, t: (logits.argmax(-1) == t).double(), y, chunk=chunk)
        return {p: float(v) for p, v in zip(self.percentages, acc.mean(0).tolist())}
