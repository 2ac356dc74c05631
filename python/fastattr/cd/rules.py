"""Contextual-decomposition propagation rules per layer type (SPEC §4.1; Murdoch et al. 2018,
Singh et al. 2019 "Hierarchical interpretations", rules not in the text as in the ``acd`` package).

Every decomposed tensor travels as one *stacked* tensor whose batch axis holds two blocks of rows:

- ``"pair"`` mode (the reference): ``[β ; γ]``, N rows each, both propagated by the rules below;
- ``"beta"`` mode (the fast path, SPEC §4.2): ``[a ; β]`` — the B ordinary activations, then
  ``B·K`` relevant parts (row ``B + b·K + k``); ``γ = a − β`` is never propagated.

Linear maps (pooling by averaging, flatten, dropout in eval, bias-free linear layers, residual
sums) act on the stack as a whole. A rule gets ``(ctx, module, stack)`` and returns the next stack;
users add rules for their own modules with :func:`register_rule` in the plain pair form
``rule(module, beta, gamma) -> (beta, gamma)``.

Bias split: ``β' = u_β + b (|u_β|+ε)/(|u_β|+|u_γ|+2ε)``, ε = 1e-20, so 0/0 splits the bias 50/50
(acd's linear rule; acd's BatchNorm rule gives all of the shift to γ in that case instead); computed
in float32 for float16 / bfloat16 tensors (where ε would underflow), in both modes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..numerics import compute_dtype
from ..ops import cd_bias_split
from ..reference.cd import EPS

__all__ = ["register_rule", "registered_rules", "PairRule"]

PairRule = Callable[[nn.Module, Tensor, Tensor], "tuple[Tensor, Tensor]"]


@dataclass
class Ctx:
    """Where the two blocks of the stack are: ``n_ref`` rows first, ``k`` rows per first-block row after."""

    mode: str             # "pair" | "beta"
    n_ref: int            # pair: N (rows of β); beta: B (rows of a)
    k: int                # pair: 1; beta: masks per example
    phrase: Optional[Tensor] = None  # [rows of β, T] bool: the steps the masks select (the LSTM rule)

    @property
    def rows(self) -> int:
        return self.n_ref * (1 + self.k)

    def parts(self, x: Tensor) -> "tuple[Tensor, Tensor]":
        """pair: (β, γ); beta: (a, β)."""
        if x.shape[0] != self.rows:
            raise ValueError(f"contextual decomposition expects the batch on dim 0 with {self.rows} stacked rows, "
                             f"got a tensor of shape {tuple(x.shape)}")
        return x[: self.n_ref], x[self.n_ref:]

    def expand_ref(self, a: Tensor) -> Tensor:
        """beta mode: the reference rows repeated to line up with the β rows."""
        return a.repeat_interleave(self.k, 0)


def split_bias(ctx: Ctx, y: Tensor, bias: Optional[Tensor], relu: bool = False) -> Tensor:
    """The linear rule on a stack of pre-bias outputs ``y`` (bias per channel, dim 1)."""
    if bias is None:
        return relu_rule(ctx, None, y) if relu else y
    if ctx.mode == "beta":
        return cd_bias_split(y, bias, ctx.n_ref, relu)
    compute = compute_dtype(y.dtype)
    ub, ug = ctx.parts(y.to(compute))
    b = bias.to(compute).reshape((1, -1) + (1,) * (y.dim() - 2))
    pb, pg = ub.abs() + EPS, ug.abs() + EPS
    beta, gamma = (ub + b * pb / (pb + pg)).to(y.dtype), (ug + b * pg / (pb + pg)).to(y.dtype)
    if relu:
        return relu_rule(ctx, None, torch.cat([beta, gamma]))
    return torch.cat([beta, gamma])


def _linear(ctx: Ctx, module: nn.Linear, x: Tensor, relu: bool = False) -> Tensor:
    return split_bias(ctx, F.linear(x, module.weight), module.bias, relu)


def _conv(ctx: Ctx, module: nn.modules.conv._ConvNd, x: Tensor, relu: bool = False) -> Tensor:
    return split_bias(ctx, module._conv_forward(x, module.weight, None), module.bias, relu)


def _batchnorm(ctx: Ctx, module: nn.modules.batchnorm._BatchNorm, x: Tensor, relu: bool = False) -> Tensor:
    """Eval-mode BN as the affine map ``s·x + t``: scale both parts, split the shift ``t`` like a bias."""
    if module.running_mean is None or module.running_var is None:
        raise ValueError(f"{type(module).__name__} without running statistics has no eval-mode CD rule")
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    y = x * scale.reshape((1, -1) + (1,) * (x.dim() - 2))
    return split_bias(ctx, y, shift, relu)


def _pointwise_monotone(fn: Callable[[Tensor], Tensor]):
    """ReLU-like rule: ``β' = f(β)``, ``γ' = f(β+γ) − f(β)``; in beta mode ``f`` of the whole stack."""
    def rule(ctx: Ctx, module, x: Tensor) -> Tensor:
        if ctx.mode == "beta":
            return fn(x)
        beta, gamma = ctx.parts(x)
        fb = fn(beta)
        return torch.cat([fb, fn(beta + gamma) - fb])
    return rule


relu_rule = _pointwise_monotone(F.relu)


def _leaky(ctx: Ctx, module: nn.LeakyReLU, x: Tensor) -> Tensor:
    return _pointwise_monotone(lambda t: F.leaky_relu(t, module.negative_slope))(ctx, module, x)


def _shapley_two(fn: Callable[[Tensor], Tensor]):
    """Tanh / sigmoid: ``β' = ½[σ(β) − σ(0) + σ(β+γ) − σ(γ)]``, ``γ' = σ(β+γ) − β'``."""
    def rule(ctx: Ctx, module, x: Tensor) -> Tensor:
        first, second = ctx.parts(x)
        if ctx.mode == "beta":
            a, beta = first, second
            full = ctx.expand_ref(a)
            beta_out = 0.5 * (fn(beta) - fn(torch.zeros_like(beta)) + fn(full) - fn(full - beta))
            return torch.cat([fn(a), beta_out])
        beta, gamma = first, second
        full = fn(beta + gamma)
        beta_out = 0.5 * (fn(beta) - fn(torch.zeros_like(beta)) + full - fn(gamma))
        return torch.cat([beta_out, full - beta_out])
    return rule


def _gather_pool(x: Tensor, idx: Tensor) -> Tensor:
    """Values of ``x [R, C, *in]`` at flat per-channel indices ``idx [R, C, *out]``."""
    flat = x.flatten(2).gather(2, idx.flatten(2))
    return flat.reshape(idx.shape)


def _maxpool(ctx: Ctx, module: nn.Module, x: Tensor) -> Tensor:
    """Max-pool (fixed or adaptive windows): the argmax positions of the pool of ``β + γ`` (= a);
    gather both parts there."""
    if isinstance(module, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        pool = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[x.dim() - 2]
        kw = dict(output_size=module.output_size, return_indices=True)
    else:
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[x.dim() - 2]
        kw = dict(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                  dilation=module.dilation, ceil_mode=module.ceil_mode, return_indices=True)
    first, second = ctx.parts(x)
    if ctx.mode == "beta":
        a_out, idx = pool(first, **kw)
        return torch.cat([a_out, _gather_pool(second, ctx.expand_ref(idx))])
    _, idx = pool(first + second, **kw)
    return torch.cat([_gather_pool(first, idx), _gather_pool(second, idx)])


def _independent(ctx: Ctx, module: nn.Module, x: Tensor) -> Tensor:
    """Linear maps without bias (average pooling, flatten, eval dropout, identity): the whole stack."""
    return module(x)


def _dropout(ctx: Ctx, module: nn.Module, x: Tensor) -> Tensor:
    return x


def _block(ctx: Ctx, module: nn.Module, x: Tensor) -> Tensor:
    """torchvision-style BasicBlock / Bottleneck: each conv-BN(-ReLU) branch by the rules, the
    shortcut (downsample conv + BN) likewise, β's and γ's added, then the ReLU rule."""
    out = x
    convs = [(module.conv1, module.bn1), (module.conv2, module.bn2)]
    if hasattr(module, "conv3"):
        convs.append((module.conv3, module.bn3))
    for i, (conv, bn) in enumerate(convs):
        out = _batchnorm(ctx, bn, _conv(ctx, conv, out), relu=i < len(convs) - 1)
    identity = x if module.downsample is None else propagate_module(ctx, module.downsample, x)
    return relu_rule(ctx, None, out + identity)


def _sequential(ctx: Ctx, module: nn.Sequential, x: Tensor) -> Tensor:
    for child in module:
        x = propagate_module(ctx, child, x)
    return x


def _three(fn, a: Tensor, b: Tensor, c: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
    """Three-way split of ``σ(a + b + c)`` (bias c first):
    ``contrib(a) = ½[σ(a+c) − σ(c) + σ(a+b+c) − σ(b+c)]``, likewise for b; c gets ``σ(c)``."""
    full, fc = fn(a + b + c), fn(c)
    ca = 0.5 * (fn(a + c) - fc + full - fn(b + c))
    cb = 0.5 * (fn(b + c) - fc + full - fn(a + c))
    return ca, cb, fc.expand_as(ca)


def lstm_pair(module: nn.LSTM, beta: Tensor, gamma: Tensor,
              phrase: Optional[Tensor] = None) -> "tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]":
    """CD through a one-layer unidirectional LSTM (Murdoch et al. 2018, as acd's ``cd_text``).

    ``beta, gamma [N, T, E]`` (batch first). Gate pre-activations split into the part from
    ``(β_h, β_x)``, from ``(γ_h, γ_x)``, and the bias; σ / tanh gates by the three-way rule; the
    product of the two bias parts of ``i·g`` goes to β at the steps in the phrase, to γ elsewhere;
    the output gate is not decomposed; ``h = o·tanh(c)`` by the two-term rule. ``phrase [N, T]``
    (bool): the steps in the phrase (acd: ``start <= t <= stop``); without it (relevant parts given
    instead of masks) a step is in the phrase where ``|β_x|₁ > |γ_x|₁``.
    Returns ``(out_β, out_γ, h_β, h_γ, c_β, c_γ)`` with ``out [N, T, H]`` and ``h, c [N, H]``.
    """
    w_ii, w_if, w_ig, w_io = module.weight_ih_l0.chunk(4, 0)
    w_hi, w_hf, w_hg, w_ho = module.weight_hh_l0.chunk(4, 0)
    bias = torch.zeros(4 * module.hidden_size, dtype=beta.dtype, device=beta.device)
    if module.bias:
        bias = module.bias_ih_l0 + module.bias_hh_l0
    b_i, b_f, b_g, b_o = bias.chunk(4)
    n, steps = beta.shape[0], beta.shape[1]
    hidden = module.hidden_size
    zeros = beta.new_zeros(n, hidden)
    h_b, h_g, c_b, c_g = zeros, zeros, zeros, zeros
    outs_b, outs_g = [], []
    for t in range(steps):
        xb, xg = beta[:, t], gamma[:, t]
        in_phrase = (phrase[:, t] if phrase is not None else xb.abs().sum(1) > xg.abs().sum(1))[:, None]
        rel = [F.linear(h_b, wh) + F.linear(xb, wx) for wh, wx in ((w_hi, w_ii), (w_hf, w_if), (w_hg, w_ig))]
        irr = [F.linear(h_g, wh) + F.linear(xg, wx) for wh, wx in ((w_hi, w_ii), (w_hf, w_if), (w_hg, w_ig))]
        ri, ii, bi = _three(torch.sigmoid, rel[0], irr[0], b_i)
        rg, ig, bg = _three(torch.tanh, rel[2], irr[2], b_g)
        new_b = ri * (rg + bg) + bi * rg + torch.where(in_phrase, bi * bg, 0)
        new_g = ii * (rg + ig + bg) + (ri + bi) * ig + torch.where(in_phrase, 0, bi * bg)
        if t > 0:
            rf, if_, bf = _three(torch.sigmoid, rel[1], irr[1], b_f)
            new_b = new_b + (rf + bf) * c_b
            new_g = new_g + (rf + if_ + bf) * c_g + if_ * c_b
        c_b, c_g = new_b, new_g
        o = torch.sigmoid(F.linear(xb + xg, w_io) + F.linear(h_b + h_g, w_ho) + b_o)
        tb, tg, tc = torch.tanh(c_b), torch.tanh(c_g), torch.tanh(c_b + c_g)
        h_b, h_g = o * 0.5 * (tb + tc - tg), o * 0.5 * (tg + tc - tb)
        outs_b.append(h_b)
        outs_g.append(h_g)
    return torch.stack(outs_b, 1), torch.stack(outs_g, 1), h_b, h_g, c_b, c_g


def _lstm(ctx: Ctx, module: nn.LSTM, x: Tensor):
    if module.num_layers != 1 or module.bidirectional or not module.batch_first or module.proj_size:
        raise ValueError("contextual decomposition supports one-layer, unidirectional, batch_first LSTMs "
                         f"without projections; got {module!r}. For acd-style sequence-first models use "
                         "fastattr.integrations.acd.cd_text")
    first, second = ctx.parts(x)
    phrase = ctx.phrase
    if phrase is not None and tuple(phrase.shape) != tuple(second.shape[:2]):
        phrase = None  # the masks' first per-example axis is not this LSTM's time axis
    if ctx.mode == "beta":
        a_out, (a_h, a_c) = module(first)
        beta = second
        gamma = ctx.expand_ref(first) - beta
        ob, _, hb, _, cb, _ = lstm_pair(module, beta, gamma, phrase)
        return torch.cat([a_out, ob]), (torch.cat([a_h, hb[None]], 1), torch.cat([a_c, cb[None]], 1))
    ob, og, hb, hg, cb, cg = lstm_pair(module, first, second, phrase)
    return torch.cat([ob, og]), (torch.cat([hb, hg])[None], torch.cat([cb, cg])[None])


def _pair_adapter(rule: PairRule):
    """A user's pair rule run in either mode (beta mode materialises γ = a − β for it)."""
    def run(ctx: Ctx, module: nn.Module, x: Tensor) -> Tensor:
        first, second = ctx.parts(x)
        if ctx.mode == "pair":
            beta, gamma = rule(module, first, second)
            return torch.cat([beta, gamma])
        beta, _ = rule(module, second, ctx.expand_ref(first) - second)
        return torch.cat([module(first), beta])
    return run


_RULES: Dict[type, Callable] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm, nn.BatchNorm3d: _batchnorm,
    nn.ReLU: relu_rule, nn.LeakyReLU: _leaky,
    nn.Tanh: _shapley_two(torch.tanh), nn.Sigmoid: _shapley_two(torch.sigmoid),
    nn.MaxPool1d: _maxpool, nn.MaxPool2d: _maxpool, nn.MaxPool3d: _maxpool,
    nn.AdaptiveMaxPool1d: _maxpool, nn.AdaptiveMaxPool2d: _maxpool, nn.AdaptiveMaxPool3d: _maxpool,
    nn.AvgPool1d: _independent, nn.AvgPool2d: _independent, nn.AvgPool3d: _independent,
    nn.AdaptiveAvgPool1d: _independent, nn.AdaptiveAvgPool2d: _independent, nn.AdaptiveAvgPool3d: _independent,
    nn.Flatten: _independent, nn.Unflatten: _independent, nn.Identity: _independent,
    nn.Dropout: _dropout, nn.Dropout1d: _dropout, nn.Dropout2d: _dropout, nn.Dropout3d: _dropout,
    nn.AlphaDropout: _dropout,
    nn.LSTM: _lstm,
    nn.Sequential: _sequential,
}
# Rules that accept relu=True (a following ReLU fused into the bias split).
FUSES_RELU = (_linear, _conv, _batchnorm)

def register_rule(module_type: type, rule: PairRule) -> None:
    """Teach CD a module type: ``rule(module, beta, gamma) -> (beta', gamma')``, both ``[N, ...]``,
    keeping ``beta' + gamma' == module(beta + gamma)``. The module is then treated as one step
    (not traced into). Example: ``register_rule(nn.GELU, lambda m, b, g: (m(b), m(b + g) - m(b)))``."""
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if not callable(rule):
        raise TypeError(f"rule must be callable, got {type(rule).__name__}")
    _RULES[module_type] = _pair_adapter(rule)


def registered_rules() -> Dict[type, Callable]:
    """Module types with a CD rule (a copy)."""
    return dict(_RULES)


_BLOCK_PARTS = {"conv1": nn.Conv2d, "bn1": nn.BatchNorm2d, "conv2": nn.Conv2d, "bn2": nn.BatchNorm2d}
_BLOCK_CHILDREN = {**_BLOCK_PARTS, "conv3": nn.Conv2d, "bn3": nn.BatchNorm2d, "relu": nn.ReLU, "downsample": nn.Module}


def _is_resnet_block(module: nn.Module) -> bool:
    """A torchvision-style BasicBlock / Bottleneck, recognised by structure (any class: torchvision's,
    the zoo's, a user's copy): children exactly conv1/bn1/conv2/bn2, optionally conv3/bn3, a ReLU and a
    ``downsample`` attribute (None or a module), with the class named ``BasicBlock`` or ``Bottleneck``
    (so a module with the same children but another forward is not taken for one)."""
    if type(module).__name__ not in ("BasicBlock", "Bottleneck") or not hasattr(module, "downsample"):
        return False
    children = dict(module.named_children())
    return all(isinstance(children.get(name), kind) for name, kind in _BLOCK_PARTS.items()) \
        and all(isinstance(child, _BLOCK_CHILDREN.get(name, ())) for name, child in children.items()) \
        and (("conv3" in children) == ("bn3" in children))


def rule_for(module: nn.Module) -> Optional[Callable]:
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return _block if _is_resnet_block(module) else None


def propagate_module(ctx: Ctx, module: nn.Module, x: Tensor, relu: bool = False):
    """Apply the rule registered for ``module`` (``relu=True``: fuse a following ReLU)."""
    rule = rule_for(module)
    if rule is None:
        raise unsupported(module)
    if relu:
        return rule(ctx, module, x, relu=True)
    return rule(ctx, module, x)


def unsupported(module: nn.Module, where: str = "") -> TypeError:
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    at = f" (at '{where}')" if where else ""
    return TypeError(
        f"contextual decomposition has no rule for {name}{at}. Register one with "
        f"fastattr.cd.register_rule({type(module).__name__}, rule), where rule(module, beta, gamma) "
        "returns (beta', gamma') with beta' + gamma' == module(beta + gamma)")
