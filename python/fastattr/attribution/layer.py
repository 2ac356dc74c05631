"""Layer attributions: Layer Integrated Gradients, and the critical-pathway methods of Khakzar et al.
(CVPR 2021; thesis ch. 5): NeuronMCT, NeuronIntGrad, pathway selection and Pathway Gradient.

A *neuron* is one element of a hooked module's output (by default: every ``nn.ReLU`` module; a
functional ``F.relu`` cannot be hooked). Per-neuron results are dicts keyed by module name; when a
module runs k > 1 times in one forward (a ReLU shared inside a ResNet block), its later calls are
keyed ``"name#1"``, ``"name#2"``, ... Every hook is removed and parameters' ``requires_grad``
restored on every exit path; inputs are never modified.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..core import (ChunkGrid, Target, batch_coupled, check_flag, check_inputs, chunk_size, frozen_parameters,
                    model_entry, path_baselines, resolve_target, run_model, select)
from ..numerics import accum_dtype
from ..ops.path_ops import path_accumulate
from .gradient import path_integral, quadrature, target_gradients

Layer = Union[str, nn.Module]
PATHWAY_METHODS = ("mct", "intgrad")


def _resolve_layer(model: Callable, layer: Layer) -> tuple[str, nn.Module]:
    """``(name, module)`` for a module or a dotted module name of ``model``."""
    if isinstance(layer, nn.Module):
        if not isinstance(model, nn.Module):
            return type(layer).__name__, layer
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
    if isinstance(layer, str):
        if not isinstance(model, nn.Module):
            raise TypeError("a layer given by name needs the model to be an nn.Module; pass the module itself")
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"layer {layer!r} not found in the model; its modules are {names}") from None
    raise TypeError(f"layer must be an nn.Module or a module name, got {type(layer).__name__}")


def _neuron_modules(model: Callable, layers) -> dict[str, nn.Module]:
    """The hooked modules: ``layers`` (names or modules), or every ``nn.ReLU`` of the model."""
    if layers is None:
        if not isinstance(model, nn.Module):
            raise TypeError("layers=None (every nn.ReLU) needs the model to be an nn.Module; pass layers=[...]")
        found = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
        if not found:
            raise ValueError("the model has no nn.ReLU module (functional F.relu cannot be hooked); pass layers=[...]")
        return found
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    modules = dict(_resolve_layer(model, layer) for layer in layers)
    if not modules:
        raise ValueError("layers is empty")
    return modules


def _module_name(key: str) -> str:
    """The module name of a neuron key (``"name#k"`` → ``"name"``)."""
    name, sep, call = key.rpartition("#")
    return name if sep and call.isdigit() else key


class _Hooks:
    """Forward hooks on named modules for the duration of a ``with`` block: ``fn(key, output)`` sees
    every call's output and may return a replacement (None keeps it); with ``inputs=True``,
    forward pre-hooks do the same with each call's (single tensor) input. With ``tuples=True``,
    ``fn(key, parts)`` sees the output (or the positional inputs) as a tuple of tensors and returns
    a tuple of replacements, put back in the module's own structure. Run the model through
    ``hooks(model, x)`` so call counts restart at every forward."""

    def __init__(self, modules: dict[str, nn.Module], fn: Callable, inputs: bool = False, tuples: bool = False):
        self.modules, self.fn, self.calls, self.handles, self.inputs = modules, fn, {}, [], inputs
        self.tuples = tuples

    def __enter__(self) -> "_Hooks":
        try:
            for name, module in self.modules.items():
                if self.inputs:
                    self.handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
                else:
                    self.handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _key(self, name: str) -> str:
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        return name if call == 0 else f"{name}#{call}"

    def _hook(self, name: str) -> Callable:
        def hook(module, args, output):
            key = self._key(name)
            if self.tuples:
                new = self.fn(key, _tensor_parts(key, output, "returns"))
                return None if new is None else (tuple(new) if isinstance(output, tuple) else new[0])
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {key!r} returns {type(output).__name__}; layer and neuron attributions "
                                "need a module whose output is one tensor")
            return self.fn(key, output)
        return hook

    def _pre_hook(self, name: str) -> Callable:
        def hook(module, args):
            key = self._key(name)
            if self.tuples:
                new = self.fn(key, _tensor_parts(key, args, "takes"))
                return None if new is None else tuple(new)
            if len(args) != 1 or not isinstance(args[0], torch.Tensor):
                raise TypeError(f"layer {key!r} takes {len(args)} positional inputs; attributing to a "
                                "layer's input needs a module called with one tensor")
            out = self.fn(key, args[0])
            return None if out is None else (out,)
        return hook

    def __call__(self, model: Callable, x: torch.Tensor) -> torch.Tensor:
        self.calls.clear()
        return run_model(model, x)


def _tensor_parts(key: str, value, verb: str) -> tuple:
    """A layer's output (``verb="returns"``) or positional inputs (``"takes"``) as a tuple of tensors."""
    parts = (value,) if isinstance(value, torch.Tensor) else value
    if not isinstance(parts, tuple) or not parts or not all(isinstance(p, torch.Tensor) for p in parts):
        what = type(value).__name__ if not isinstance(value, tuple) else \
            f"({', '.join(type(p).__name__ for p in value)})"
        raise TypeError(f"layer {key!r} {verb} {what}; layer attributions need a tensor or a tuple of tensors "
                        + ("as its output" if verb == "returns" else "as its positional inputs"))
    return parts


def _chunk_target(target: Target, batch: int, e0: int, e1: int) -> Target:
    """The part of ``target`` that belongs to examples ``e0:e1`` (validated by resolve_target)."""
    if isinstance(target, (list, tuple)):
        target = torch.tensor(list(target))
    if not isinstance(target, torch.Tensor) or target.numel() == 1:
        return target
    flat = target.reshape(-1)
    if flat.numel() != batch:
        raise ValueError(f"target has {flat.numel()} entries but inputs has batch size {batch}")
    return flat[e0:e1]


def _repeat(x: torch.Tensor, times: int) -> torch.Tensor:
    return x.repeat((times,) + (1,) * (x.dim() - 1))


def _bytes_per_example(t: torch.Tensor) -> int:
    return max(1, t[0].numel() * t.element_size())


def _layers(model: Callable, layer) -> tuple[dict[str, nn.Module], bool]:
    """The modules of ``layer`` (one, or a list / tuple of them) keyed by unique names, and whether
    several were asked for."""
    several = isinstance(layer, (list, tuple))
    items = list(layer) if several else [layer]
    if not items:
        raise ValueError("layer is an empty list; pass a module, its name, or a list of them")
    modules: dict[str, nn.Module] = {}
    for item in items:
        name, module = _resolve_layer(model, item)
        if any(m is module for m in modules.values()):
            raise ValueError(f"layer lists the module {name!r} twice")
        key, k = name, 1
        while key in modules:  # same-named modules of a plain-function model
            key, k = f"{name}[{k}]", k + 1
        modules[key] = module
    return modules, several


GRAD_KWARGS = ("retain_graph", "create_graph", "allow_unused", "materialize_grads")


def autograd_options(grad_kwargs: Optional[dict]) -> dict:
    """``torch.autograd.grad`` keywords for a layer method's ``grad_kwargs`` (None: none); unused
    tensors are allowed unless ``allow_unused`` says otherwise (the caller names them)."""
    if grad_kwargs is None:
        return {"allow_unused": True}
    if not isinstance(grad_kwargs, dict):
        raise TypeError(f"grad_kwargs must be a dict of torch.autograd.grad keywords, got {type(grad_kwargs).__name__}")
    unknown = sorted(map(str, set(grad_kwargs) - set(GRAD_KWARGS)))
    if unknown:
        raise ValueError(f"grad_kwargs has {unknown}; it takes torch.autograd.grad's keywords {GRAD_KWARGS}")
    return {"allow_unused": True, **grad_kwargs}


def layer_grads(score: torch.Tensor, tensors, options: dict) -> tuple:
    """``torch.autograd.grad(score, tensors, **options)``, also when ``score`` depends on none of them
    (then None per tensor, or zeros with ``materialize_grads``)."""
    if score.requires_grad:
        return torch.autograd.grad(score, tensors, **options)
    if options.get("materialize_grads"):
        return tuple(torch.zeros_like(t) for t in tensors)
    return (None,) * len(tensors)


def _capture(model: Callable, x: torch.Tensor, modules: dict[str, nn.Module],
             layer_input: bool = False) -> tuple[torch.Tensor, dict[str, tuple]]:
    """``(f(x), {name: h(x)})`` in one forward without gradients, ``h`` a layer's output (its positional
    inputs when ``layer_input``) as a tuple of tensors; every layer must run exactly once."""
    seen: dict[str, tuple] = {}

    def record(key, parts):
        seen[key] = tuple(p.detach().clone() for p in parts)

    with torch.no_grad(), _Hooks(modules, record, inputs=layer_input, tuples=True) as hooks:
        logits = hooks(model, x)
    what = "input" if layer_input else "output"
    for name in modules:
        runs = hooks.calls.get(name, 0)
        if runs != 1:
            raise ValueError(f"layer {name!r} ran {runs} times in one forward; layer_integrated_gradients "
                             "needs a layer that runs exactly once")
        for i, h in enumerate(seen[name]):
            label = what if len(seen[name]) == 1 else f"{what} {i}"
            if h.dim() < 1 or h.shape[0] != x.shape[0]:
                raise ValueError(f"layer {name!r} {label} has shape {tuple(h.shape)}; its first axis must be "
                                 f"the batch axis ({x.shape[0]} examples)")
            if not h.is_floating_point():
                raise TypeError(f"layer {name!r} {label} has dtype {h.dtype}; it must be floating")
    return logits, seen


class _Parts:
    """The layer tensors ``[B, ...]`` of a path: one as it is, several packed as ``[B, Σ D_i]`` in their
    common dtype, so one path loop serves every layer; ``split`` and ``pack`` convert both ways."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.shapes = [tuple(h.shape[1:]) for h in tensors]
        self.dtypes = [h.dtype for h in tensors]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.dtype = self.dtypes[0]
        for d in self.dtypes[1:]:
            self.dtype = torch.promote_types(self.dtype, d)
        self.single = len(tensors) == 1

    def pack(self, tensors) -> torch.Tensor:
        if self.single:
            return tensors[0]
        return torch.cat([h.reshape(h.shape[0], -1).to(self.dtype) for h in tensors], 1)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        if self.single:
            return [flat.to(self.dtypes[0])]
        rows = flat.shape[0]
        return [p.reshape((rows,) + s).to(d) for p, s, d in zip(flat.split(self.sizes, 1), self.shapes, self.dtypes)]


@model_entry(gradients=True)
def layer_integrated_gradients(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                               layer: Union[Layer, Sequence[Layer]],
                               baselines: Union[None, float, torch.Tensor] = None, n_steps: int = 50,
                               method: str = "gausslegendre", multiply_by_inputs: bool = True,
                               return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                               grad_kwargs: Optional[dict] = None, max_batch: Optional[int] = None,
                               memory_budget: Optional[int] = None):
    """Layer Integrated Gradients (Sundararajan et al. 2017; Captum's ``LayerIntegratedGradients``).

    IG with respect to the output ``h = layer(·)`` of a module, the rest of the network fixed:
    ``LIG(x) = (h(x) − h(x')) ⊙ Σ_s w_s ∂f_t/∂h |_{h = h(x') + α_s (h(x) − h(x'))}``.
    A forward hook replaces the layer's output by the interpolated value for a chunk of steps at a
    time; the chunked loop is :func:`~fastattr.attribution.gradient.path_integral`, the same as
    :func:`integrated_gradients` (:func:`~fastattr.ops.path_interpolate`, then
    :func:`~fastattr.ops.path_accumulate` with the multiply by ``h(x) − h(x')`` fused into the last
    chunk). Quadrature as in :func:`integrated_gradients`. Several layers (or a layer with several
    tensors) share one path: every ``h`` moves with the same α at once, as in Captum, so the
    convergence delta ``Σ LIG − (f_t(x) − f_t(x'))`` per example sums over all of them.

    Args:
        layer: a submodule or its dotted name, or a list of them; each must run once per forward and
            return a floating tensor or a tuple of them with the batch axis first (e.g. an
            ``nn.Embedding``, a ``batch_first`` model).
        baselines: *inputs* to the model (e.g. pad-token ids): None (zeros of the input's dtype, so
            token id 0 for integer inputs), a number, or a tensor broadcastable to ``inputs``.
        inputs: ``[B, ...]`` floating inputs or integer token ids.
        attribute_to_layer_input: ``h`` is the layer's positional inputs (a forward pre-hook replaces
            them; they must be floating tensors) instead of its output.
        grad_kwargs: extra ``torch.autograd.grad`` keywords (:data:`GRAD_KWARGS`), e.g.
            ``{"materialize_grads": True}`` to give a layer the target does not use zeros (without
            it, such a layer raises).
    Returns:
        a tensor shaped like ``h`` ``[B, ...]`` (a tuple for a layer with several tensors; a list,
        one entry per layer, for a list of layers), and the delta ``[B]`` if asked.

    Example::

        >>> attr = fastattr.layer_integrated_gradients(model, ids, target=1, layer="embedding",
        ...                                            baselines=torch.full_like(ids, pad_id))  # [B, T, E]
    """
    check_inputs(inputs, integer=True)
    check_flag(attribute_to_layer_input, "attribute_to_layer_input")
    modules, several = _layers(model, layer)
    options = autograd_options(grad_kwargs)
    alphas, weights = quadrature(method, n_steps)
    base = path_baselines(inputs, baselines)
    coupled = batch_coupled(model)
    if coupled:  # batch statistics: one baseline row per example, as the inputs' forward has
        base = base.expand_as(inputs)
    batch = inputs.shape[0]
    what = "input" if attribute_to_layer_input else "output"
    with frozen_parameters(model):
        logits_x, h_x = _capture(model, inputs, modules, attribute_to_layer_input)
        t = resolve_target(model, inputs, target, logits_x)
        logits_b, h_b = _capture(model, base, modules, attribute_to_layer_input)
        for name in modules:
            shapes_x, shapes_b = [tuple(h.shape[1:]) for h in h_x[name]], [tuple(h.shape[1:]) for h in h_b[name]]
            if shapes_b != shapes_x:
                got = lambda hs: ", ".join(str(tuple(h.shape)) for h in hs)  # noqa: E731
                raise ValueError(f"layer {name!r} {what} has shape {got(h_b[name])} for the baselines but "
                                 f"{got(h_x[name])} for the inputs")
        counts = [len(h_x[name]) for name in modules]
        parts = _Parts([h for name in modules for h in h_x[name]])
        hx = parts.pack([h for name in modules for h in h_x[name]])
        hb = parts.pack([h for name in modules for h in h_b[name]])
        sizer = hx if _bytes_per_example(hx) > _bytes_per_example(inputs) else inputs
        chunk = chunk_size(sizer, len(alphas) * batch, max_batch, memory_budget)
        path: dict[str, tuple] = {}
        labels = [name for name, k in zip(modules, counts) for _ in range(k)]

        def replace(key, got):
            want = path.get(key)
            if want is None:
                raise ValueError(f"layer {_module_name(key)!r} ran more than once in a forward on the path")
            if [g.shape for g in got] != [w.shape for w in want]:
                raise ValueError(f"layer {key!r} {what} has shape {[tuple(g.shape) for g in got]} on the path, "
                                 f"expected {[tuple(w.shape) for w in want]}")
            return tuple(w.clone() for w in want)

        def grad_fn(points: torch.Tensor, e0: int, e1: int) -> torch.Tensor:
            steps = points.shape[0] // (e1 - e0)
            leaves = [p.detach().requires_grad_(True) for p in parts.split(points)]
            start = 0
            for name, k in zip(modules, counts):
                path[name] = tuple(leaves[start:start + k])
                start += k
            scores = select(hooks(model, _repeat(inputs[e0:e1], steps)), t[e0:e1].repeat(steps))
            grads = layer_grads(scores.sum(), leaves, options)
            path.clear()
            unused = sorted({label for label, g in zip(labels, grads) if g is None})
            if unused:
                cut = " (a layer whose output only feeds another listed layer is cut off)" if several else ""
                raise ValueError(f"the target score does not depend on layer {', '.join(map(repr, unused))}{cut}; "
                                 "pass grad_kwargs={'materialize_grads': True} to attribute zeros to it")
            return parts.pack(grads)

        with _Hooks(modules, replace, inputs=attribute_to_layer_input, tuples=True) as hooks, torch.enable_grad():
            attrs = parts.split(path_integral(grad_fn, hx, hb, alphas, weights, chunk, multiply_by_inputs))
    out, start = [], 0
    for k in counts:
        out.append(attrs[start] if k == 1 else tuple(attrs[start:start + k]))
        start += k
    result = out if several else out[0]
    if not return_convergence_delta:
        return result
    if coupled:  # the first forwards' rows differ from Captum's two at the end: run those
        with torch.no_grad():
            logits_b = run_model(model, base)
            logits_x = run_model(model, inputs)
    if logits_b.shape[0] == 1 and batch > 1:
        logits_b = logits_b.expand((batch,) + tuple(logits_b.shape[1:]))
    gap = select(logits_x, t) - select(logits_b, t)
    total = sum(a.reshape(batch, -1).sum(1).to(parts.dtype) for a in attrs)
    return result, total - gap.to(parts.dtype)


@model_entry(gradients=True)
def neuron_mct(model: Callable, inputs: torch.Tensor, target: Target = None, *, layers=None,
               max_batch: Optional[int] = None, memory_budget: Optional[int] = None) -> dict[str, torch.Tensor]:
    """NeuronMCT, the marginal-contribution Taylor score of every neuron (Khakzar et al. 2021, Sec. 3.3).

    ``c = |a ⊙ ∂f_t/∂a|`` at the output ``a`` of every hooked module (``layers=None``: every
    ``nn.ReLU``), from one forward and one backward pass per chunk of examples. Dead neurons
    (``a = 0``) get ``c = 0``.

    Args:
        inputs: ``[B, ...]`` floating inputs.
        layers: None, or module names / modules whose outputs are the neurons.
    Returns:
        ``{key: c}`` with ``c`` shaped like that activation ``[B, ...]`` (keys: see the module doc).

    Example::

        >>> c = fastattr.attribution.neuron_mct(model, x, target=y)   # {"features.1": [B, 64, 32, 32], ...}
    """
    check_inputs(inputs)
    modules = _neuron_modules(model, layers)
    batch = inputs.shape[0]
    chunk = chunk_size(inputs, batch, max_batch, memory_budget)
    taps: dict[str, torch.Tensor] = {}

    def tap(key, out):
        taps[key] = torch.ones_like(out).requires_grad_(True)
        return out * taps[key]

    blocks: dict[str, list] = {}
    with frozen_parameters(model), _Hooks(modules, tap) as hooks, torch.enable_grad():
        for e0, e1, _, _ in ChunkGrid(batch, 1, chunk):
            taps.clear()
            x = inputs[e0:e1]
            logits = hooks(model, x)
            t = resolve_target(model, x, _chunk_target(target, batch, e0, e1), logits.detach())
            keys = list(taps)
            grads = torch.autograd.grad(select(logits, t).sum(), [taps[k] for k in keys], allow_unused=True)
            for key, g in zip(keys, grads):
                blocks.setdefault(key, []).append(torch.zeros_like(taps[key]) if g is None else g.abs())
            taps.clear()
    return {key: torch.cat(parts).detach() for key, parts in blocks.items()}


@model_entry(gradients=True)
def neuron_integrated_gradients(model: Callable, inputs: torch.Tensor, target: Target = None, *, layers=None,
                                n_steps: int = 50, method: str = "gausslegendre", max_batch: Optional[int] = None,
                                memory_budget: Optional[int] = None) -> dict[str, torch.Tensor]:
    """NeuronIntGrad: layer-wise IG with a zero baseline at every hooked module (Khakzar et al. 2021, Eq. 4).

    ``c = a ⊙ ∫₀¹ ∂f_t(αa)/∂(αa) dα`` per layer, scaling that layer's output ``a`` by α while every
    other layer computes as usual; completeness per layer: ``Σ c = f_t(x) − f_t(a ← 0)`` (up to the
    quadrature error: ``method`` and ``n_steps`` as in :func:`integrated_gradients`). Steps and
    layers batch together: every model row is one (layer, step, example) triple, and a hook scales
    only that row's chosen layer, so one forward/backward serves several layers' paths
    (``max_batch`` / ``memory_budget`` bound the rows per forward). Dead neurons get ``c = 0``.

    Returns:
        ``{key: c}`` with ``c`` shaped like that activation ``[B, ...]`` (keys: see the module doc).

    Example::

        >>> c = fastattr.attribution.neuron_integrated_gradients(model, x, target=y, n_steps=50)
    """
    check_inputs(inputs)
    modules = _neuron_modules(model, layers)
    alphas, weights = quadrature(method, n_steps)
    batch, n = inputs.shape[0], len(alphas)
    shapes: dict[str, tuple] = {}

    def record(key, out):
        shapes[key] = (tuple(out.shape[1:]), out.element_size())

    with frozen_parameters(model), _Hooks(modules, record) as hooks, torch.no_grad():
        probe = max(1, min(batch, chunk_size(inputs, batch, max_batch, memory_budget)))
        logits = torch.cat([hooks(model, inputs[e0:e1]) for e0, e1, _, _ in ChunkGrid(batch, 1, probe)])
    t = resolve_target(model, inputs, target, logits)
    keys = list(shapes)
    act_bytes = sum(math.prod(s) * size for s, size in shapes.values())
    factor = max(24.0, 3.0 * act_bytes / (inputs[0].numel() * inputs.element_size()))
    pairs = [(k, s) for k in range(len(keys)) for s in range(n)]
    chunk = chunk_size(inputs, len(pairs) * batch, max_batch, memory_budget, per_input_factor=factor)
    acc_dtype = accum_dtype(inputs.dtype)
    weights_t = torch.tensor(weights, dtype=acc_dtype, device=inputs.device)
    alphas_t = torch.tensor(alphas, dtype=inputs.dtype, device=inputs.device)
    state: dict = {}

    def scale(key, out):
        rows = state["scales"].get(key)
        if rows is None:
            return None
        s = rows.to(out.dtype).view((-1,) + (1,) * (out.dim() - 1)).expand(out.shape).clone().requires_grad_(True)
        state["taps"][key] = s
        return out * s

    accs = {key: torch.zeros((batch,) + shapes[key][0], dtype=acc_dtype, device=inputs.device) for key in keys}
    with frozen_parameters(model), _Hooks(modules, scale) as hooks, torch.enable_grad():
        for e0, e1, p0, p1 in ChunkGrid(batch, len(pairs), chunk):
            rows = e1 - e0
            part = pairs[p0:p1]
            runs: dict[int, list[int]] = {}
            for k, s in part:
                runs.setdefault(k, []).append(s)
            scales, offset = {}, 0
            for k, steps in runs.items():
                vec = torch.ones(len(part) * rows, dtype=inputs.dtype, device=inputs.device)
                vec[offset * rows:(offset + len(steps)) * rows] = alphas_t[steps].repeat_interleave(rows)
                scales[keys[k]] = vec
                offset += len(steps)
            state.update(scales=scales, taps={})
            out = hooks(model, _repeat(inputs[e0:e1], len(part)))
            missing = [key for key in scales if key not in state["taps"]]
            if missing:
                raise ValueError(f"layers {missing} did not run in the forward pass on the path")
            taps = [state["taps"][keys[k]] for k in runs]
            grads = torch.autograd.grad(select(out, t[e0:e1].repeat(len(part))).sum(), taps, allow_unused=True)
            offset = 0
            for (k, steps), g in zip(runs.items(), grads):
                key = keys[k]
                if g is not None:
                    g = g[offset * rows:(offset + len(steps)) * rows].view((len(steps), rows) + shapes[key][0])
                    accs[key][e0:e1] = path_accumulate(accs[key][e0:e1], g, weights_t[steps])
                offset += len(steps)
            state.clear()
    return {key: acc.to(inputs.dtype) for key, acc in accs.items()}


def select_pathway(contributions: dict[str, torch.Tensor], keep: float = 0.1, *,
                   activations: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """Critical-pathway selection (Khakzar et al. 2021, Sec. 3.3): per example, rank every neuron of
    every layer together by ``c`` and keep those with ``c ≥ c_κ``, the ``⌈keep · N⌉``-th largest
    contribution among the example's ``N`` neurons (ties at ``c_κ`` are all kept).

    Dead neurons are never selected: with ``activations`` (a dict like ``contributions``), those with
    ``a = 0``; without it, those with ``c = 0`` (NeuronMCT and NeuronIntGrad give every dead neuron
    exactly 0, Remark 2). Scores are ranked as given (signed for NeuronIntGrad); pass ``c.abs()``
    to rank by magnitude.

    Args:
        contributions: ``{key: c}`` with ``c`` of shape ``[B, ...]`` (e.g. from :func:`neuron_mct`).
        keep: the fraction of neurons kept, in (0, 1] (0.1 = sparsity 90%).
    Returns:
        ``{key: boolean keep-mask shaped like c}``.

    Example::

        >>> masks = fastattr.attribution.select_pathway(fastattr.attribution.neuron_mct(model, x), keep=0.05)
    """
    if isinstance(keep, bool) or not isinstance(keep, (float, int, np.floating, np.integer)) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    if not isinstance(contributions, dict) or not contributions:
        raise ValueError("contributions must be a non-empty dict {layer: tensor [B, ...]}")
    keys = list(contributions)
    batch = None
    for key in keys:
        c = contributions[key]
        if not isinstance(c, torch.Tensor) or not c.is_floating_point() or c.dim() < 1:
            raise TypeError(f"contributions[{key!r}] must be a floating tensor [B, ...]")
        if batch is None:
            batch = c.shape[0]
        if c.shape[0] != batch:
            raise ValueError(f"contributions[{key!r}] has batch size {c.shape[0]}, expected {batch}")
        if not torch.isfinite(c).all():
            raise ValueError(f"contributions[{key!r}] contains NaN or Inf")
    if activations is not None:
        for key in keys:
            a = activations.get(key) if isinstance(activations, dict) else None
            if not isinstance(a, torch.Tensor) or a.shape != contributions[key].shape:
                raise ValueError(f"activations[{key!r}] must be a tensor of shape {tuple(contributions[key].shape)}")
    flat = torch.cat([contributions[k].reshape(batch, -1).to(torch.float64) for k in keys], 1)
    alive = torch.cat([(activations[k] if activations is not None else contributions[k]).reshape(batch, -1) != 0
                       for k in keys], 1)
    kth = min(flat.shape[1], max(1, math.ceil(keep * flat.shape[1] - 1e-9)))
    threshold = flat.topk(kth, dim=1).values[:, -1:]
    chosen = (flat >= threshold) & alive
    masks, start = {}, 0
    for key in keys:
        size = contributions[key][0].numel()
        masks[key] = chosen[:, start:start + size].reshape(contributions[key].shape)
        start += size
    return masks


class _MaskGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by a keep-mask."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None


@model_entry(gradients=True)
def pathway_gradient(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                     masks: Optional[dict[str, torch.Tensor]] = None, keep: float = 0.1, method: str = "mct",
                     layers=None, n_steps: int = 50, max_batch: Optional[int] = None,
                     memory_budget: Optional[int] = None) -> torch.Tensor:
    """Pathway Gradient (Khakzar et al. 2021, Sec. 4.2): the input gradient of the network in which
    every neuron off the critical pathway is a constant equal to its original value.

    **Convention (SPEC §2: the thesis text, not its code):** the forward pass is unchanged; the
    backward pass multiplies the gradient by the keep-mask at every hooked output, so
    ``PG(x) = ∂f_t/∂x`` through pathway neurons only.

    Args:
        masks: ``{key: bool [B, ...] or [...]}`` keep-masks (as from :func:`select_pathway`); hooked
            outputs without a mask pass their gradient unchanged. None: select them with
            ``method`` (``"mct"``: :func:`neuron_mct`, ``"intgrad"``:
            :func:`neuron_integrated_gradients` with ``n_steps``) and ``keep``.
        layers: the neuron layers when ``masks`` is None (default: every ``nn.ReLU``).
    Returns:
        ``[B, ...]``, shaped like ``inputs``.

    Example::

        >>> a = fastattr.attribution.pathway_gradient(model, x, target=y, keep=0.1, method="intgrad")
    """
    check_inputs(inputs)
    if method not in PATHWAY_METHODS:
        raise ValueError(f"method must be one of {PATHWAY_METHODS}, got {method!r}")
    t = resolve_target(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
    batch = inputs.shape[0]
    if masks is None:
        kw = dict(layers=layers, max_batch=max_batch, memory_budget=memory_budget)
        contributions = (neuron_mct(model, inputs, t, **kw) if method == "mct"
                         else neuron_integrated_gradients(model, inputs, t, n_steps=n_steps, **kw))
        masks = select_pathway(contributions, keep)
    if not isinstance(masks, dict) or not masks:
        raise ValueError("masks must be a non-empty dict {layer: bool tensor}")
    for key, m in masks.items():
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise TypeError(f"masks[{key!r}] must be a bool tensor")
    modules = dict(_resolve_layer(model, name) for name in dict.fromkeys(_module_name(k) for k in masks))
    chunk = chunk_size(inputs, batch, max_batch, memory_budget)
    rows: dict = {}

    def gate(key, out):
        m = masks.get(key)
        if m is None:
            return None
        if m.dim() == out.dim() and m.shape[0] == batch:
            m = m[rows["e0"]:rows["e1"]]
        if m.dim() == out.dim() - 1:
            m = m.unsqueeze(0)
        if m.dim() != out.dim() or m.shape[1:] != out.shape[1:] or m.shape[0] not in (1, out.shape[0]):
            raise ValueError(f"masks[{key!r}] has shape {tuple(masks[key].shape)}; expected "
                             f"[{batch}, {', '.join(map(str, out.shape[1:]))}] or without the batch axis")
        rows["seen"].add(key)
        return _MaskGrad.apply(out, m.to(out.device))

    grads = []
    with frozen_parameters(model), _Hooks(modules, gate) as hooks:
        for e0, e1, _, _ in ChunkGrid(batch, 1, chunk):
            rows.update(e0=e0, e1=e1, seen=set())
            g, _ = target_gradients(lambda x: hooks(model, x), inputs[e0:e1], t[e0:e1])
            unseen = set(masks) - rows["seen"]
            if unseen:
                raise ValueError(f"masks has keys {sorted(unseen)} that match no layer output of the forward pass")
            grads.append(g)
    return torch.cat(grads)
