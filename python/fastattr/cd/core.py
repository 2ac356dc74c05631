"""Contextual decomposition of a model's logits for K feature masks at once (SPEC §4.1–4.2).

The model is traced once with ``torch.fx``; the walk applies the rule of every module (see
:mod:`fastattr.cd.rules`) and handles the functional ops models use between modules (residual
additions, flatten / view / reshape, functional ReLU / pooling); a final softmax / log-softmax
(function, method or ``nn.Softmax`` / ``nn.LogSoftmax`` module) is skipped, since CD explains the
logits. Masks are folded into the batch axis, so K masks cost one batched pass per layer instead of
K passes. The model is traced and evaluated in eval mode (its modes are restored afterwards).
"""
from __future__ import annotations

import contextlib
import functools
import operator
import warnings
from typing import Callable, Iterator, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .._backend import use_backend
from ..core import (Target, broadcasts_to, check_inputs, chunk_size, eval_modes, model_entry, model_errors,
                    resolve_target)
from . import rules
from .rules import Ctx

__all__ = ["contextual_decomposition", "decompose"]


def accepts_backend(fn: Callable) -> Callable:
    """Keeps the deprecated ``backend=`` keyword of the CD functions working: the call runs under
    ``fastattr.use_backend(backend)`` (how every family picks its backend) with a ``DeprecationWarning``."""
    @functools.wraps(fn)
    def call(*args, backend: Optional[str] = None, **kwargs):
        if backend is None:
            return fn(*args, **kwargs)
        warnings.warn(f"fastattr.cd.{fn.__name__}(backend=...) is deprecated; use "
                      f"`with fastattr.use_backend({backend!r}): ...`", DeprecationWarning, stacklevel=2)
        with use_backend(backend):
            return fn(*args, **kwargs)

    return call


class _Tracer(fx.Tracer):
    """Modules with a CD rule stay single steps (except Sequential, which is walked into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.Sequential):
            return False
        return rules.rule_for(m) is not None or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's graph for CD, traced in eval mode (the forward CD decomposes; the model's modes are
    restored); a clear error when torch.fx cannot trace it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module for contextual decomposition, got {type(model).__name__}")
    try:
        with eval_modes(model):
            graph = _Tracer().trace(model)
    except Exception as err:  # data-dependent control flow, unsupported Python, ...
        raise TypeError(
            f"contextual decomposition could not trace {type(model).__name__} with torch.fx ({err}). "
            "Register a rule for the module that cannot be traced with fastattr.cd.register_rule") from err
    return fx.GraphModule(model, graph)


def _is_relu(node: fx.Node, modules: dict) -> bool:
    """A ReLU the bias split may fuse: not a ReLU module whose rule the user replaced."""
    if node.op == "call_module":
        module = modules[node.target]
        return type(module) is nn.ReLU and rules.rule_for(module) is rules.relu_rule
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu)
    return node.op == "call_method" and node.target == "relu"


# Functions / methods that are linear and act row by row: applied to the whole stack unchanged.
_STRUCTURAL_FUNCS = {operator.getitem, operator.add, operator.iadd, operator.sub, operator.isub, operator.neg,
                     torch.flatten, torch.reshape, torch.cat, torch.squeeze, torch.unsqueeze, torch.transpose,
                     torch.permute, torch.add, torch.sub, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                     F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, getattr}
_STRUCTURAL_METHODS = {"view", "reshape", "flatten", "size", "dim", "permute", "transpose", "contiguous", "squeeze",
                       "unsqueeze", "__getitem__", "add", "sub", "view_as", "reshape_as", "float", "double", "to",
                       "mean", "sum"}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
_FUNCTION_RULES = {F.relu: rules.relu_rule, torch.relu: rules.relu_rule,
                   torch.tanh: rules._shapley_two(torch.tanh), torch.sigmoid: rules._shapley_two(torch.sigmoid),
                   F.sigmoid: rules._shapley_two(torch.sigmoid), F.tanh: rules._shapley_two(torch.tanh)}
_METHOD_RULES = {"relu": rules.relu_rule, "tanh": rules._shapley_two(torch.tanh),
                 "sigmoid": rules._shapley_two(torch.sigmoid)}
_NORMALISERS = {F.log_softmax, F.softmax, torch.log_softmax, torch.softmax, "log_softmax", "softmax"}
_NORMALISER_MODULES = (nn.Softmax, nn.LogSoftmax)
_MAXPOOL_FUNCS = {F.max_pool1d: nn.MaxPool1d, F.max_pool2d: nn.MaxPool2d, F.max_pool3d: nn.MaxPool3d,
                  F.adaptive_max_pool1d: nn.AdaptiveMaxPool1d, F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d,
                  F.adaptive_max_pool3d: nn.AdaptiveMaxPool3d}


_ADDS = (operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub, "add", "sub")


def _check_linear_use(node: fx.Node, decomposed: dict) -> None:
    """Sums of decomposed tensors are linear; adding a constant is an affine map with no split here."""
    if node.target in _ADDS:
        operands = list(node.args[:2])
        if not all(isinstance(a, fx.Node) and decomposed.get(a) for a in operands):
            raise TypeError(f"contextual decomposition cannot split '{node.format_node()}': it adds a constant to "
                            "a decomposed tensor (wrap it in a module and register a rule for it)")
    if node.target is torch.cat and node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) == 0:
        raise TypeError("contextual decomposition cannot concatenate along the batch axis (dim 0)")


def _walk(gm: fx.GraphModule, ctx: Ctx, start: Tensor, output_bias: str,
          embedding: Optional[fx.Node]) -> Tensor:
    """Run the graph on the stacked input ``start`` applying CD rules; return the stacked output."""
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    users = {n: list(n.users) for n in nodes}
    last_linear = None
    if output_bias == "drop":
        linears = [n for n in nodes if n.op == "call_module" and isinstance(modules[n.target], nn.Linear)]
        last_linear = linears[-1] if linears else None
    env: dict = {}
    fused: set = set()
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise TypeError(f"contextual decomposition needs a model with one input, got {len(placeholders)}")
    decomposed: dict = {}  # node -> its value is a stacked decomposition (not a constant / a size)
    last_user = {inp: node for node in nodes for inp in node.all_input_nodes}
    frees: dict = {}  # node -> the inputs whose value is dropped once it has run
    for inp, node in last_user.items():
        frees.setdefault(node, []).append(inp)
    previous = None
    for node in nodes:
        for inp in frees.get(previous, ()):
            env.pop(inp, None)  # a chunk keeps only the live activations, not every layer's
        previous = node
        decomposed[node] = node.op == "placeholder" or (
            node.op != "get_attr" and not (node.op == "call_method" and node.target in ("size", "dim")) and
            any(decomposed.get(n) for n in node.all_input_nodes))
        if node.op == "placeholder" or node is embedding:
            env[node] = start
            continue
        if node.op == "output":
            out = fx.node.map_arg(node.args[0], lambda n: env[n])
            if not isinstance(out, Tensor):
                raise TypeError("contextual decomposition needs a model returning one tensor of logits")
            return out
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node in fused:
            env[node] = args[0]
            continue
        fuse = len(users[node]) == 1 and _is_relu(users[node][0], modules)
        normaliser = (node.op in ("call_function", "call_method") and node.target in _NORMALISERS) or \
            (node.op == "call_module" and type(modules[node.target]) in _NORMALISER_MODULES)
        if normaliser and [u.op for u in users[node]] == ["output"]:
            env[node] = args[0]  # CD explains the logits: a final (log-)softmax is skipped
            continue
        if node.op == "get_attr":
            env[node] = getattr(gm, node.target)
        elif node.op == "call_module":
            module = modules[node.target]
            rule = rules.rule_for(module)
            if rule is None:
                raise rules.unsupported(module, node.target)
            if node is last_linear:
                y = F.linear(args[0], module.weight)
                env[node] = rules.relu_rule(ctx, None, y) if fuse else y
                fused.update(users[node] if fuse else ())
            elif fuse and rule in rules.FUSES_RELU:
                env[node] = (rule(ctx, module, args[0], relu=True))
                fused.add(users[node][0])
            else:
                env[node] = (rule(ctx, module, *args, **kwargs))
        elif node.op == "call_function" and node.target in _FUNCTION_RULES:
            env[node] = (_FUNCTION_RULES[node.target](ctx, None, args[0]))
        elif node.op == "call_method" and node.target in _METHOD_RULES:
            env[node] = (_METHOD_RULES[node.target](ctx, None, args[0]))
        elif node.op == "call_function" and node.target in _MAXPOOL_FUNCS:
            pool = _MAXPOOL_FUNCS[node.target](*args[1:], **kwargs)
            env[node] = (rules.rule_for(pool)(ctx, pool, args[0]))
        elif node.op == "call_function" and node.target in _DROPOUT_FUNCS:
            env[node] = args[0]
        elif (node.op == "call_function" and node.target in _STRUCTURAL_FUNCS) or \
                (node.op == "call_method" and node.target in _STRUCTURAL_METHODS):
            _check_linear_use(node, decomposed)
            fn = getattr(args[0], node.target) if node.op == "call_method" else node.target
            call_args = args[1:] if node.op == "call_method" else args
            env[node] = (fn(*call_args, **kwargs))
        else:
            raise TypeError(f"contextual decomposition has no rule for '{node.format_node()}'; wrap it in a module "
                            "and register a rule with fastattr.cd.register_rule")
    raise AssertionError("graph without output")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """CD is defined for eval-mode layers: a model in training mode is evaluated in eval mode
    (BatchNorm running statistics, no dropout) with a warning, and its flags are restored."""
    if model.training:
        warnings.warn("model is in training mode; contextual decomposition evaluates it in eval mode "
                      "(BatchNorm running statistics, dropout off) and restores the mode afterwards",
                      UserWarning, stacklevel=4)
    with eval_modes(model):
        yield


def _cd_chunks(inputs: Tensor, k: int, mode: str, max_batch: Optional[int],
               memory_budget: Optional[int]) -> "tuple[int, int]":
    """``(examples, masks)`` per pass, so that a pass's rows — ``e + e·k`` in β-only mode (the reference
    rows and β), ``2·e·k`` in pair mode — stay within the row budget of :func:`chunk_size` (at least
    one example and one mask: 2 rows). Whole batches are kept together while the budget allows."""
    batch = inputs.shape[0]
    sizing = inputs if inputs.is_floating_point() else inputs.float()
    limit = chunk_size(sizing, batch * (k + 1 if mode == "beta" else 2 * k), max_batch, memory_budget)
    if mode == "beta":
        examples = batch if limit >= 2 * batch else max(1, limit // 2)
        return examples, max(1, min(k, limit // examples - 1))
    examples = batch if limit >= 2 * batch else max(1, limit // 2)
    return examples, max(1, min(k, limit // (2 * examples)))


def _has_lstm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.LSTM) for m in model.modules())


def _check_masks(inputs: Tensor, masks: Tensor) -> Tensor:
    """``[K, ...]`` (broadcast over the batch) or ``[B, K, *inputs.shape[1:]]`` → ``[B, K, *inputs.shape[1:]]``."""
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a tensor, got {type(masks).__name__}")
    per_example = tuple(inputs.shape[1:])
    batch = inputs.shape[0]
    need = inputs.dim() - 1 if inputs.dim() > 2 else inputs.dim()  # K and the spatial / feature dims
    if masks.dim() < need:
        raise ValueError(f"masks of shape {tuple(masks.shape)} has no mask axis K for inputs "
                         f"{tuple(inputs.shape)}: masks needs at least {need} dims ([K, ...]); for a single "
                         "mask pass masks[None]")
    if masks.dim() == inputs.dim() + 1:
        if masks.shape[0] not in (1, batch):
            raise ValueError(f"masks of shape {tuple(masks.shape)} read as [B, K, ...] but inputs has batch {batch}")
        lead = masks.shape[:2]
        rest = masks.shape[2:]
    elif 1 <= masks.dim() <= inputs.dim():
        lead = (1, masks.shape[0])
        rest = masks.shape[1:]
    else:
        raise ValueError(f"masks must be [K, ...] or [B, K, *inputs.shape[1:]]; got {tuple(masks.shape)} "
                         f"for inputs {tuple(inputs.shape)}")
    if not broadcasts_to(rest, per_example):
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not broadcast to inputs' per-example shape "
                         f"{per_example}")
    if lead[1] == 0:
        raise ValueError("masks is empty (K = 0)")
    m = masks.to(torch.float64) if not masks.is_floating_point() else masks
    if not torch.isfinite(m).all():
        raise ValueError("masks contains NaN or Inf")
    if (m < 0).any() or (m > 1).any():
        raise ValueError("masks must have values in [0, 1] (1 = relevant); fractional values split a feature "
                         "between the relevant and irrelevant parts")
    pad = (1,) * (len(per_example) - len(rest))
    return masks.reshape(tuple(lead) + pad + tuple(rest)).expand((batch, lead[1]) + per_example)


def check_parts(inputs: Tensor, masks: Optional[Tensor], relevant: Optional[Tensor]) -> Optional[Tensor]:
    """Check ``inputs`` and exactly one of ``masks`` / ``relevant``; return the masks as ``[B, K, ...]``."""
    if not isinstance(inputs, Tensor) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError("inputs must be a tensor with a non-empty batch axis")
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        raise ValueError("inputs contains NaN or Inf")
    if (masks is None) == (relevant is None):
        raise ValueError("give exactly one of masks and relevant")
    if masks is not None:
        return _check_masks(inputs, masks)
    if not isinstance(relevant, Tensor):
        raise TypeError(f"relevant must be a tensor, got {type(relevant).__name__}")
    if relevant.dim() != inputs.dim() + 1 or relevant.shape[0] != inputs.shape[0] or \
            tuple(relevant.shape[2:]) != tuple(inputs.shape[1:]):
        raise ValueError(f"relevant must be [B, K, *inputs.shape[1:]], got {tuple(relevant.shape)} for "
                         f"inputs {tuple(inputs.shape)}")
    if relevant.shape[1] == 0:
        raise ValueError("relevant is empty (K = 0)")
    if relevant.is_floating_point() and not torch.isfinite(relevant).all():
        raise ValueError("relevant contains NaN or Inf")
    return None


def _phrase(masks: Optional[Tensor]) -> Optional[Tensor]:
    """``[B·K, T]``: the steps a mask selects (nonzero anywhere at that position of the first
    per-example axis), the LSTM rule's phrase; None without masks or a time axis."""
    if masks is None or masks.dim() < 3:
        return None
    rows, steps = masks.shape[0] * masks.shape[1], masks.shape[2]
    return (masks.reshape(rows, steps, -1) != 0).any(-1)


def _start(ctx: Ctx, inputs: Tensor, masks: Optional[Tensor], relevant: Optional[Tensor],
           embed: Optional[nn.Embedding]) -> Tensor:
    """The stacked input: pair ``[β₀ ; γ₀]``, beta ``[x ; β₀]`` with ``β₀ = M ⊙ x`` (or ``relevant``)."""
    batch, k = inputs.shape[0], (masks if masks is not None else relevant).shape[1]
    x = embed(inputs) if embed is not None else inputs
    xr = x.repeat_interleave(k, 0)
    if relevant is not None:
        beta = relevant.reshape((batch * k,) + tuple(x.shape[1:])).to(x.dtype)
    else:
        m = masks.reshape((batch * k,) + tuple(masks.shape[2:])).to(x.dtype)
        beta = xr * (m[..., None] if embed is not None else m)
    if ctx.mode == "beta":
        return torch.cat([x, beta])
    return torch.cat([beta, xr - beta])


@accepts_backend
@model_entry(quiet=True)
def decompose(model: nn.Module, inputs: Tensor, masks: Optional[Tensor] = None, *,
              relevant: Optional[Tensor] = None, mode: str = "beta", output_bias: str = "auto",
              gm: Optional[fx.GraphModule] = None) -> "tuple[Tensor, Tensor]":
    """One pass of CD with autograd left on (CDEP differentiates it): ``(beta, gamma)`` of
    shape ``[B, K, *out]``. ``masks`` are already ``[B, K, ...]`` (see :func:`contextual_decomposition`).
    The layer rules are the eval-mode ones whatever the model's mode (the graph is traced in eval mode)."""
    check_inputs(inputs, integer=True)
    gm = trace(model) if gm is None else gm
    embed_node, embed = _leading_embedding(gm)
    batch = inputs.shape[0]
    k = (masks if masks is not None else relevant).shape[1]
    if output_bias == "auto":
        output_bias = "drop" if _has_lstm(model) else "split"
    phrase = _phrase(masks)
    if mode == "pair":
        ctx = Ctx("pair", batch * k, 1, phrase)
    else:
        ctx = Ctx("beta", batch, k, phrase)
    with model_errors(inputs):
        out = _walk(gm, ctx, _start(ctx, inputs, masks, relevant, embed), output_bias, embed_node)
    first, second = ctx.parts(out)
    tail = tuple(out.shape[1:])
    if mode == "pair":
        return first.reshape((batch, k) + tail), second.reshape((batch, k) + tail)
    beta = second.reshape((batch, k) + tail)
    return beta, first[:, None] - beta


def _leading_embedding(gm: fx.GraphModule) -> "tuple[Optional[fx.Node], Optional[nn.Embedding]]":
    """An Embedding applied straight to the input: the walk starts after it and masks select tokens."""
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    modules = dict(gm.named_modules())
    for user in placeholder.users:
        if user.op == "call_module" and isinstance(modules[user.target], nn.Embedding):
            if len(placeholder.users) != 1:
                raise TypeError("contextual decomposition needs the token ids to be used only by the embedding")
            return user, modules[user.target]
    return None, None


@accepts_backend
@model_entry
def contextual_decomposition(model: nn.Module, inputs: Tensor, masks: Optional[Tensor] = None,
                             target: Target = None, *, relevant: Optional[Tensor] = None, mode: str = "beta",
                             output_bias: str = "auto", max_batch: Optional[int] = None,
                             memory_budget: Optional[int] = None,
                             progress: bool = False) -> "tuple[Tensor, Tensor]":
    """Contextual decomposition (Murdoch et al. 2018; Singh et al. 2019) of the logits for K masks.

    For a mask M, ``β₀ = M ⊙ x`` and ``γ₀ = (1 − M) ⊙ x`` are pushed through the network with the
    rules of :mod:`fastattr.cd.rules` so that ``β + γ`` equals the ordinary activation at every
    layer; the final β is the contribution of the masked features to each logit.

    Args:
        model: an ``nn.Module`` traceable by ``torch.fx`` whose modules have CD rules (Linear, Conv,
            ReLU, LeakyReLU, Tanh, Sigmoid, max / adaptive max / average pooling, BatchNorm, Dropout,
            Flatten, ResNet blocks, a batch-first LSTM after an Embedding, ...; see :func:`register_rule`).
            A final ``nn.Softmax`` / ``nn.LogSoftmax`` (module or function) is skipped.
        inputs: ``[B, ...]`` floating inputs, or ``[B, T]`` token ids for a model starting with
            an ``nn.Embedding`` (masks then select token positions).
        masks: ``[K, ...]`` broadcast over the batch, or ``[B, K, *inputs.shape[1:]]`` (size-1 dims
            broadcast, e.g. ``[K, 1, H, W]`` or ``[K, H, W]`` for channel-shared image masks; at least
            ``inputs.dim() − 1`` dims, so one ``[H, W]`` mask is passed as ``mask[None]``). Values in
            [0, 1]: binary masks select features; fractional values split a feature between β and γ.
            For an LSTM, the steps in the phrase are those the mask selects (nonzero).
        target: None for all classes (``[B, K, C]``), or an int / ``[B]`` tensor (``[B, K]``). A model
            with a 1-D output ``[B]`` has one output: ``[B, K]`` either way (target 0 or −1).
        relevant: instead of masks, the relevant part ``β₀ [B, K, *inputs.shape[1:]]`` itself
            (γ₀ = x − β₀), e.g. a frequency band for TRIM.
        mode: ``"beta"`` (default, SPEC §4.2: one reference pass, only β propagated, the fused
            ``cd_bias_split`` op) or ``"pair"`` (β and γ both propagated: the reference).
        output_bias: ``"split"`` (the last Linear's bias split like any other), ``"drop"`` (not
            added: ``β + γ = logits − b_out``, Murdoch et al.'s LSTM convention), ``"auto"``
            (drop for models with an LSTM, split otherwise).
        max_batch / memory_budget: rows per pass, the reference rows of β-only mode included (masks
            are chunked, and examples too when one mask for every example does not fit; at least 2
            rows: one example's reference and one mask); results do not change.

    Returns:
        ``(beta, gamma)``, each ``[B, K, C]`` (or ``[B, K]`` with a target or a 1-D output);
        ``beta + gamma`` equals the logits (minus the output bias when dropped).

    Models in training mode are evaluated in eval mode with a warning. Example::

        masks = torch.zeros(4, 1, 8, 8); masks[0, :, :4, :4] = 1; ...
        beta, gamma = fastattr.cd.contextual_decomposition(model, x, masks, target=y)
    """
    if mode not in ("beta", "pair"):
        raise ValueError(f"mode must be 'beta' or 'pair', got {mode!r}")
    if output_bias not in ("auto", "split", "drop"):
        raise ValueError(f"output_bias must be 'auto', 'split' or 'drop', got {output_bias!r}")
    masks = check_parts(inputs, masks, relevant)
    with eval_mode(model), torch.no_grad():
        gm = trace(model)
        if target is not None:
            target = resolve_target(model, inputs, target, max_batch=max_batch, memory_budget=memory_budget)
        parts = masks if masks is not None else relevant
        examples, per = _cd_chunks(inputs, parts.shape[1], mode, max_batch, memory_budget)
        blocks = [(e0, s) for e0 in range(0, inputs.shape[0], examples) for s in range(0, parts.shape[1], per)]
        if progress:
            from tqdm.auto import tqdm

            blocks = tqdm(blocks, desc="contextual decomposition")
        rows: dict[int, tuple[list, list]] = {}
        for e0, s in blocks:
            ex, sl = slice(e0, e0 + examples), slice(s, s + per)
            b, g = decompose(model, inputs[ex], masks[ex, sl] if masks is not None else None,
                             relevant=relevant[ex, sl] if relevant is not None else None, mode=mode,
                             output_bias=output_bias, gm=gm)
            rows.setdefault(e0, ([], []))[0].append(b)
            rows[e0][1].append(g)
        beta = torch.cat([torch.cat(bs, 1) for bs, _ in rows.values()])
        gamma = torch.cat([torch.cat(gs, 1) for _, gs in rows.values()])
    if target is not None and beta.dim() > 2:  # a 1-D output [B] is one output (target 0 or -1)
        idx = target[:, None, None].expand(-1, beta.shape[1], 1)
        return beta.gather(2, idx).squeeze(2), gamma.gather(2, idx).squeeze(2)
    return beta, gamma
