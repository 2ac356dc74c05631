"""Information Bottleneck Attribution (Schulz et al. 2020, "Restricting the Flow: Information
Bottlenecks for Attribution", ICLR; thesis ch. 6 §3; SPEC §9): the layer statistics the bottleneck's
noise is drawn from, and the per-sample bottleneck optimised for a batch of inputs at once, with the
thesis's variants (ch. 8 §2): Inverse IBA, the regression losses and multi-layer IBA (InputIBA:
:mod:`~fastattr.attribution.input_iba`).

``iba_statistics`` reads a layer's activation ``R`` over a data set and returns its per-element mean
``μ``, standard deviation ``σ`` (``max(σ, min_std)``) and the elements active (non-zero) in more than
``active_threshold`` of the samples. Batches are merged with Chan et al.'s pairwise update in float64
(``n = n_a + n_b``, ``δ = m_b − m_a``, ``m = m_a + δ n_b / n``, ``M₂ = M₂ᵃ + M₂ᵇ + δ² n_a n_b / n``),
so the result does not depend on how the data is batched; the public IBA code runs Welford's update
one sample at a time. The model runs without gradients and stops at the layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..core import (Target, check_count, check_flag, check_inputs, check_number, check_output, frozen_parameters,
                    make_generator, model_entry, resolve_clean, resolve_layers, resolve_target, run_model)
from ..ops import bottleneck

__all__ = ["IBAStatistics", "iba", "iba_statistics", "multi_layer_iba"]

#: the losses of ``iba(loss=...)``: cross-entropy and the regression losses of the thesis (ch. 8 §2.2)
_LOSSES = ("ce", "mse", "rm", "dv")


@dataclass
class IBAStatistics:
    """Per-element statistics of a layer's activation ``[*layer shape]``: ``mean``, ``std`` (at least
    ``min_std``), ``active`` (bool: non-zero in more than the threshold's share of samples) and ``count``,
    the number of samples read."""

    mean: torch.Tensor
    std: torch.Tensor
    active: torch.Tensor
    count: int


class _Stop(Exception):
    """Raised by the hook once the layer's output is read: the rest of the model never runs."""


def _batches(data, max_batch: Optional[int]) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        check_inputs(data, "data", integer=True)
        step = data.shape[0] if max_batch is None else max_batch
        for start in range(0, data.shape[0], step):
            yield data[start:start + step]
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"data must be a tensor [N, ...] or an iterable of batches, got {type(data).__name__}")
    for batch in data:
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"data must yield tensors or (inputs, ...) tuples, got {type(batch).__name__}")
        check_inputs(batch, "data", integer=True)
        yield batch


@model_entry(inputs_name="data")
def iba_statistics(model: Callable, layer: Union[str, nn.Module], data, *, min_std: float = 0.01,
                   active_threshold: float = 0.01, n_samples: Optional[int] = None,
                   max_batch: Optional[int] = None) -> IBAStatistics:
    """Mean, standard deviation and active elements of ``layer``'s output over ``data`` (Schulz et al.
    2020, §3.1: the prior ``Q(Z) = N(μ, σ²)`` of the bottleneck), vectorised over each batch.

    Args:
        model: the model; ``layer`` a module it calls or a dotted name in it (``"net.2"``), whose
            output is one tensor ``[N, ...]``.
        data: a tensor ``[N, ...]`` (run in chunks of ``max_batch``) or an iterable of batches (tensors
            or tuples whose first item is the inputs, e.g. a ``DataLoader``).
        min_std: ``σ`` is clamped below at this value (IBA's 0.01).
        active_threshold: an element is active when non-zero in more than this share of samples.
        n_samples: stop after this many samples (None: all of ``data``).

    Returns an :class:`IBAStatistics`. Example::

        >>> stats = fastattr.iba_statistics(model, "net.2", load_digits("train", 1000)[0])
        >>> stats.mean.shape, stats.std.min() >= 0.01
    """
    min_std = check_number(min_std, "min_std")
    if min_std < 0:
        raise ValueError(f"min_std must be >= 0, got {min_std!r}")
    active_threshold = check_number(active_threshold, "active_threshold")
    if not 0 <= active_threshold < 1:
        raise ValueError(f"active_threshold must be in [0, 1), got {active_threshold!r}")
    if n_samples is not None:
        n_samples = check_count(n_samples, "n_samples")
    if max_batch is not None:
        max_batch = check_count(max_batch, "max_batch")
    module = one_layer(model, layer)
    count, mean, m2, nonzero, dtype = 0, None, None, None, torch.float32
    for x in _batches(data, max_batch):
        if n_samples is not None and count >= n_samples:
            break
        if n_samples is not None:
            x = x[:n_samples - count]
        if x.shape[0] == 0:
            continue
        out = layer_output(model, module, x, name="data")
        dtype = out.dtype if out.is_floating_point() else torch.float32
        r = out.double()
        n_b, m_b = r.shape[0], r.mean(0)
        m2_b = ((r - m_b) ** 2).sum(0)
        nz_b = (r != 0).sum(0)
        if mean is None:
            count, mean, m2, nonzero = n_b, m_b, m2_b, nz_b
            continue
        if m_b.shape != mean.shape:
            raise ValueError(f"layer gave {tuple(r.shape[1:])} per sample after {tuple(mean.shape)}: "
                             "the inputs of data must all have one shape")
        total = count + n_b
        delta = m_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
        nonzero, count = nonzero + nz_b, total
    if mean is None:
        raise ValueError("data gave no samples")
    if count < 2:
        raise ValueError("iba_statistics needs at least 2 samples for a standard deviation")
    std = (m2 / (count - 1)).sqrt().clamp(min=min_std)
    return IBAStatistics(mean.to(dtype), std.to(dtype), nonzero.double() / count > active_threshold, count)


def one_layer(model, layer) -> nn.Module:
    """The one module ``layer`` names (a module or a dotted name in the model)."""
    if isinstance(layer, (list, tuple)) or layer is None:
        raise TypeError(f"layer must be one module or module name, got {layer!r}")
    (module,) = resolve_layers(model, layer)
    return module


def layer_output(model, module: nn.Module, x: torch.Tensor, *, name: str = "inputs",
                  dims: Optional[int] = None, grad: bool = False) -> torch.Tensor:
    """The output of ``module`` on ``x`` (the model stopped there; detached, without gradients unless
    ``grad``): one tensor ``[N, ...]`` with ``x``'s batch axis first (of rank ``dims`` when given), else
    a ``ValueError``."""
    read: list = []

    def hook(mod, args, out):
        read.append(out)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad() if grad else torch.no_grad():
            try:
                run_model(model, x)
            except _Stop:
                pass
    finally:
        handle.remove()
    if not read:
        raise ValueError("layer did not run in the model's forward: pass a module the model calls")
    out = read[0]
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0] \
            or (dims is not None and out.dim() != dims):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        want = "[N, C, H, W]" if dims == 4 else "[N, ...]"
        raise ValueError(f"layer {type(module).__name__} returned {got} for {name} of shape {tuple(x.shape)}; IBA "
                         f"needs a layer whose output is one tensor {want} with the batch axis of {name} first")
    return out if grad else out.detach()


def _tail(model, module: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The model from ``module``'s output on, as a function of that output (a ``torch.fx`` graph of the
    nodes after the layer), so that the layers before the bottleneck never re-run; None where the model
    does not trace, calls the layer more than once, or uses a value from before the layer after it (a
    skip connection across it): then the whole model runs with the layer's output replaced."""
    if not isinstance(model, nn.Module):
        return None
    name = next((n for n, m in model.named_modules() if m is module), None)
    if not name:
        return None
    class _LayerLeaf(torch.fx.Tracer):  # the layer stays one call, whatever it holds
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return m is module or super().is_leaf_module(m, qualname)

    try:
        tracer = _LayerLeaf()
        traced = torch.fx.GraphModule(model, tracer.trace(model))
    except Exception:  # noqa: BLE001 — any tracing failure means: run the whole model
        return None
    nodes = list(traced.graph.nodes)
    at = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == name]
    if len(at) != 1:
        return None
    layer_node, before = nodes[at[0]], set(nodes[:at[0] + 1])
    after = nodes[at[0] + 1:]
    if any(a in before and a is not layer_node for n in after for a in n.all_input_nodes):
        return None
    graph = torch.fx.Graph()
    env = {layer_node: graph.placeholder("z")}
    for n in after:
        env[n] = graph.node_copy(n, lambda a: env[a])
    return _fold_batch_norms(torch.fx.GraphModule(traced, graph))


def _fold_batch_norms(tail: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``tail`` with each eval-mode ``BatchNorm2d`` that reads a ``Conv2d`` (and nothing else reads the
    conv) folded into a constant copy of the conv: ``W' = W γ/√(v + ε)``, ``b' = (b − m) γ/√(v + ε) + β``
    per output channel, computed once, without gradients (the tail runs inside the optimisation with the
    parameters frozen, so they stay fixed). The model's own modules are not touched."""
    modules = dict(tail.named_modules())
    folded = 0
    for node in list(tail.graph.nodes):
        norm = modules.get(node.target) if node.op == "call_module" else None
        if type(norm) is not nn.BatchNorm2d or norm.training or norm.running_mean is None or len(node.args) != 1:
            continue
        source = node.args[0]
        called = isinstance(source, torch.fx.Node) and source.op == "call_module"
        conv = modules.get(source.target) if called else None
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str) \
                or len(source.users) != 1:
            continue
        with torch.no_grad():
            scale = torch.rsqrt(norm.running_var + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight
            shift = -norm.running_mean * scale + (norm.bias if norm.bias is not None else 0)
            weight = conv.weight * scale.view(-1, 1, 1, 1)
            bias = shift if conv.bias is None else conv.bias * scale + shift
        names = (f"_folded_{folded}_weight", f"_folded_{folded}_bias")
        tail.register_buffer(names[0], weight.detach().to(conv.weight.dtype))
        tail.register_buffer(names[1], bias.detach().to(conv.weight.dtype))
        folded += 1
        with tail.graph.inserting_before(source):
            w_node, b_node = tail.graph.get_attr(names[0]), tail.graph.get_attr(names[1])
        with tail.graph.inserting_after(source):
            fused = tail.graph.call_function(F.conv2d, (source.args[0], w_node, b_node, conv.stride, conv.padding,
                                                        conv.dilation, conv.groups))
        node.replace_all_uses_with(fused)
        tail.graph.erase_node(node)
        tail.graph.erase_node(source)
    if folded:
        tail.recompile()
    return tail


def smoothed(alpha: torch.Tensor, smooth_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(λ, 1 − λ)`` = ``(G ∗ sigmoid(α), G ∗ sigmoid(−α))`` for mask logits ``α`` ``[B, C, H, W]``, by the
    fused op (``R = 1``, ``μ = 0``, ``σ = 1``, ``ε = 0`` make ``Z = λ``), differentiable in ``α``."""
    ones, zeros = torch.ones_like(alpha[0]), torch.zeros_like(alpha[0])
    eps = torch.zeros_like(alpha)[:, None]
    R = torch.ones_like(alpha)
    lam = bottleneck(R, alpha, zeros, ones, eps, smooth_sigma=smooth_sigma)[0][:, 0]
    rest = bottleneck(R, -alpha, zeros, ones, eps, smooth_sigma=smooth_sigma)[0][:, 0]
    return lam, rest


def _check_loss(loss, inverse, label) -> None:
    if not isinstance(loss, str) or loss not in _LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, _LOSSES))}, got {loss!r}")
    check_flag(inverse, "inverse")
    if label is not None and loss != "mse":
        raise ValueError(f"label is the regression label y of loss='mse'; loss={loss!r} takes no label")


def _labels(label, batch: int, like: torch.Tensor) -> torch.Tensor:
    """``loss='mse'``'s label ``y`` as ``[B]`` in ``like``'s dtype and device."""
    if label is None:
        raise ValueError("loss='mse' needs label= the regression label y of each input (a number or a [B] tensor)")
    if isinstance(label, bool) or not isinstance(label, (int, float, torch.Tensor)):
        raise TypeError(f"label must be a number or a [B] tensor, got {type(label).__name__}")
    y = torch.as_tensor(label).detach().to(dtype=like.dtype, device=like.device).reshape(-1)
    if y.numel() == 1:
        y = y.expand(batch)
    if y.numel() != batch:
        raise ValueError(f"label has {y.numel()} entries but inputs has batch size {batch}")
    if not torch.isfinite(y).all():
        raise ValueError("label holds NaN or Inf")
    return y


def _task_loss(loss: str, logits: torch.Tensor, t_rows: torch.Tensor, y_rows: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-row loss: ``L_CE``, or on the score ``Φ = f_t``: MSE ``(Φ − y)²``, RM ``−Φ²``, DV ``(Φ − Φ(x))²``."""
    if loss == "ce":
        return F.cross_entropy(logits, t_rows, reduction="none")
    score = logits.gather(1, t_rows[:, None])[:, 0]
    return -score ** 2 if loss == "rm" else (score - y_rows) ** 2


def optimise(model, module: nn.Module, inputs: torch.Tensor, target: Target, statistics: IBAStatistics,
              gen: torch.Generator, *, beta: float, steps: int, lr: float, n_noise: int, smooth_sigma: float,
              init_alpha: float, inverse: bool = False, loss: str = "ce", label=None, name: str = "statistics"):
    """The per-sample bottleneck at ``module`` for every example at once (see :func:`iba`): ``(capacity
    [B, C, h, w] in nats, zero on inactive elements, the optimised α, R, the targets)``."""
    R = layer_output(model, module, inputs, dims=4)
    tail = _tail(model, module)
    if tail is None:
        t, clean = resolve_clean(model, inputs, target)
    else:  # the targets from the tail on R: the layers before the bottleneck run once
        with torch.no_grad():
            clean = check_output(tail(R), inputs.shape[0], any_rank=True)
        t = resolve_target(model, inputs, target, logits=clean)
    if statistics.mean.shape != R.shape[1:]:
        raise ValueError(f"{name} are for a layer output {tuple(statistics.mean.shape)} but layer gives "
                         f"{tuple(R.shape[1:])} per input")
    batch = R.shape[0]
    y_rows = None
    if loss != "ce":
        scores = clean.flatten(1) if clean.dim() > 1 else clean[:, None]
        if scores.shape[1] > 1 and target is None:
            raise ValueError(f"loss={loss!r} is a regression loss on one score per input, but the model has "
                             f"{scores.shape[1]} outputs and no target was given: pass target= the output to "
                             "explain, or use loss='ce'")
        y = _labels(label, batch, R) if loss == "mse" else scores.gather(1, t[:, None])[:, 0].detach()
        y_rows = y.repeat_interleave(n_noise)
    mu, sigma = statistics.mean.to(R), statistics.std.to(R)
    active = statistics.active.to(device=R.device, dtype=R.dtype)
    alpha = torch.full_like(R, init_alpha, requires_grad=True)
    optimiser = torch.optim.Adam([alpha], lr=lr)
    t_rows = t.repeat_interleave(n_noise)
    feed: list[torch.Tensor] = []
    if tail is None:  # the whole model on the noisy rows, the layer's output replaced by Z
        x_rows = inputs.detach().repeat_interleave(n_noise, 0)
        handle = module.register_forward_hook(lambda mod, args, out: feed[0])
        tail = lambda z: run_model(model, x_rows)  # noqa: E731
    else:
        handle = None
    try:
        with frozen_parameters(model):  # no parameter gradient is computed or accumulated
            for _ in range(steps):
                eps = torch.randn((batch, n_noise) + tuple(R.shape[1:]), generator=gen, dtype=R.dtype).to(R.device)
                with torch.enable_grad():
                    Z, capacity = bottleneck(R, alpha, mu, sigma, eps, smooth_sigma=smooth_sigma)
                    if inverse:  # Z_inv = λε + (1 − λ)R = R + ε − Z, with ε the noise σε + μ
                        Z = R[:, None] + (sigma * eps + mu) - Z
                    feed[:] = [(Z * active).reshape((batch * n_noise,) + tuple(R.shape[1:]))]
                    logits = tail(feed[0]).reshape(batch * n_noise, -1)
                    task = _task_loss(loss, logits, t_rows, y_rows).reshape(batch, n_noise).mean(1)
                    info = (capacity * active).flatten(1).mean(1)
                    objective = beta * info - task if inverse else task + beta * info
                    (alpha.grad,) = torch.autograd.grad(objective.sum(), alpha)
                optimiser.step()
    finally:
        if handle is not None:
            handle.remove()
    with torch.no_grad():
        eps = torch.zeros((batch, 1) + tuple(R.shape[1:]), dtype=R.dtype, device=R.device)
        capacity = bottleneck(R, alpha.detach(), mu, sigma, eps, smooth_sigma=smooth_sigma)[1] * active
    return capacity, alpha.detach(), R, t


def heat_map(capacity: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The capacity summed over channels, in bits, bilinearly upsampled to the input ``[B, H, W]``."""
    bits = capacity.sum(1, keepdim=True) / math.log(2)
    spatial = tuple(inputs.shape[2:])
    return F.interpolate(bits, size=spatial, mode="bilinear" if len(spatial) == 2 else "linear",
                         align_corners=False)[:, 0]


def check_iba(inputs, beta, steps, lr, n_noise, smooth_sigma, init_alpha, loss, inverse, label) -> tuple:
    """The IBA family's common arguments checked (errors naming them) and returned as numbers:
    ``(beta, steps, lr, n_noise, smooth_sigma, init_alpha)``."""
    check_inputs(inputs)
    beta = check_number(beta, "beta")
    steps = check_count(steps, "steps")
    lr = check_number(lr, "lr")
    n_noise = check_count(n_noise, "n_noise")
    smooth_sigma = check_number(smooth_sigma, "smooth_sigma")
    init_alpha = check_number(init_alpha, "init_alpha", minimum=-math.inf)
    _check_loss(loss, inverse, label)
    if inputs.dim() < 3:
        raise ValueError(f"iba upsamples the capacity to the input's spatial size: inputs must be [B, C, H, W] or "
                         f"[B, C, L], got shape {tuple(inputs.shape)}")
    return beta, steps, lr, n_noise, smooth_sigma, init_alpha


def check_statistics(statistics, name: str = "statistics") -> None:
    """A ``TypeError`` naming ``name`` unless ``statistics`` come from :func:`iba_statistics`."""
    if not isinstance(statistics, IBAStatistics):
        raise TypeError(f"{name} must be the IBAStatistics of iba_statistics(), got {type(statistics).__name__}")


@model_entry
def iba(model: Callable, inputs: torch.Tensor, target: Target = None, *, layer: Union[str, nn.Module],
        statistics: IBAStatistics, beta: float = 10.0, steps: int = 10, lr: float = 1.0, n_noise: int = 10,
        smooth_sigma: float = 1.0, init_alpha: float = 5.0, inverse: bool = False, loss: str = "ce",
        label=None, generator=None,
        return_capacity: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Information Bottleneck Attribution, per-sample bottleneck (Schulz et al. 2020; SPEC §9):

        ``min_α  L(f(Z), t) + β · mean(capacity)``,  ``Z = λR + (1 − λ)(σε + μ)``,  ``λ = G ∗ sigmoid(α)``,

    by Adam (``lr``, ``steps``) on ``α`` (initialised to ``init_alpha``), ``n_noise`` draws of ``ε`` per
    step; ``R`` is the ``layer`` output, ``μ``, ``σ`` and the active elements from ``statistics``
    (:func:`iba_statistics`); capacity and ``Z`` are zero on inactive elements, as in the IBA code.

    - ``inverse=True``: Inverse IBA (thesis ch. 8 §2.1, Eq. 4), a deletion game: the loss reads the
      complement ``Z_inv = λ(σε + μ) + (1 − λ)R`` and is maximised, ``min_α β · mean(capacity) −
      L(f(Z_inv), t)``, so λ → 1 on *every* element whose removal destroys the prediction.
    - ``loss`` (thesis ch. 8 §2.2): ``"ce"`` the cross-entropy of class ``t``; the regression losses read
      the score ``Φ = f_t`` (a 1-output model's output; a multi-output model needs ``target``):
      ``"mse"`` ``(Φ(Z) − y)²`` with ``y = label``; ``"dv"`` ``(Φ(Z) − Φ(x))²``; ``"rm"`` (regression
      maximisation, "favours regions with high scores") ``−Φ(Z)²`` — **convention:** the thesis writes
      ``L_RM = Φ(Z)²``, which minimised would favour low scores, so fastattr maximises it.

    Every example and every draw optimise together (``B·n_noise`` rows per step, each example's loss its
    own, so the result equals one image at a time); each step runs only the layers after the bottleneck
    on those rows (a ``torch.fx`` trace of the model from the layer on), or, where the model does not
    trace or a value from before the layer is used after it, the whole model with the layer's output
    replaced by ``Z``; no parameter gets a gradient. Returns the capacity summed over channels in bits,
    bilinearly upsampled to the input ``[B, H, W]`` (and with ``return_capacity`` also the layer-resolution
    capacity ``[B, C, h, w]`` in nats).

    Example::

        >>> stats = fastattr.iba_statistics(model, "net.2", x_train)
        >>> heat = fastattr.iba(model, x, y, layer="net.2", statistics=stats)       # [B, H, W] bits
        >>> inv = fastattr.iba(model, x, y, layer="net.2", statistics=stats, inverse=True)
    """
    beta, steps, lr, n_noise, smooth_sigma, init_alpha = check_iba(inputs, beta, steps, lr, n_noise, smooth_sigma,
                                                                    init_alpha, loss, inverse, label)
    module = one_layer(model, layer)
    check_statistics(statistics)
    capacity = optimise(model, module, inputs, target, statistics, make_generator(generator), beta=beta, steps=steps,
                         lr=lr, n_noise=n_noise, smooth_sigma=smooth_sigma, init_alpha=init_alpha, inverse=inverse,
                         loss=loss, label=label)[0]
    heat = heat_map(capacity, inputs)
    return (heat, capacity) if return_capacity else heat


@model_entry
def multi_layer_iba(model: Callable, inputs: torch.Tensor, target: Target = None, *,
                    layers: Sequence[Union[str, nn.Module]], statistics: Sequence[IBAStatistics],
                    quantile: float = 0.5, beta: float = 10.0, steps: int = 10, lr: float = 1.0, n_noise: int = 10,
                    smooth_sigma: float = 1.0, init_alpha: float = 5.0, inverse: bool = False, loss: str = "ce",
                    label=None, generator=None,
                    return_maps: bool = False) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Multi-layer IBA (thesis ch. 8 §2.3, Eq. 5; SPEC §9): ``T(IBA_l₁) ∩ … ∩ T(IBA_lL)``, the
    intersection of each layer's binarised :func:`iba` map. **Convention** (the thesis leaves ``T``
    open): ``T`` keeps the pixels at or above the map's ``quantile`` (per example; 0.5: the top half).

    ``layers`` and ``statistics`` are sequences of the same length (the statistics of each layer, from
    :func:`iba_statistics`); every other argument is :func:`iba`'s, the same for every layer, and the
    layers draw their noise from one ``generator`` in order. Returns a ``{0, 1}`` map ``[B, H, W]``
    (with ``return_maps`` also the layers' maps in bits ``[L, B, H, W]``).

    Example::

        >>> stats = [fastattr.iba_statistics(model, l, x_train) for l in ("net.0", "net.2")]
        >>> keep = fastattr.multi_layer_iba(model, x, y, layers=["net.0", "net.2"], statistics=stats)
    """
    beta, steps, lr, n_noise, smooth_sigma, init_alpha = check_iba(inputs, beta, steps, lr, n_noise, smooth_sigma,
                                                                    init_alpha, loss, inverse, label)
    quantile = check_number(quantile, "quantile")
    if not quantile < 1:
        raise ValueError(f"quantile must be in [0, 1), got {quantile!r}")
    if isinstance(layers, (str, nn.Module)) or not isinstance(layers, (list, tuple)) or not layers:
        raise TypeError(f"layers must be a non-empty list of modules or module names, got {layers!r}")
    if not isinstance(statistics, (list, tuple)) or len(statistics) != len(layers):
        raise ValueError(f"statistics must be a list of one IBAStatistics per layer ({len(layers)}), got "
                         f"{type(statistics).__name__}" + (f" of {len(statistics)}" if isinstance(
                             statistics, (list, tuple)) else ""))
    modules = []
    for i, (layer, stats) in enumerate(zip(layers, statistics)):
        try:
            modules.append(one_layer(model, layer))
        except (ValueError, TypeError) as e:
            raise type(e)(f"layers[{i}]: {e}") from e
        check_statistics(stats, f"statistics[{i}]")
    gen = make_generator(generator)
    maps = torch.stack([heat_map(optimise(model, module, inputs, target, stats, gen, beta=beta, steps=steps, lr=lr,
                                        n_noise=n_noise, smooth_sigma=smooth_sigma, init_alpha=init_alpha,
                                        inverse=inverse, loss=loss, label=label, name=f"statistics[{i}]")[0], inputs)
                        for i, (module, stats) in enumerate(zip(modules, statistics))])
    flat = maps.flatten(2)
    if flat.shape[1] * flat.shape[2] == 0:
        keep = torch.ones_like(maps[0])
    else:
        keep = (flat >= torch.quantile(flat, quantile, dim=2, keepdim=True)).all(0).reshape(maps.shape[1:])
    keep = keep.to(maps.dtype)
    return (keep, maps) if return_maps else keep
