"""DeepLift with the rescale rule (Shrikumar et al. 2017; SPEC §10), as Captum's ``DeepLift`` computes it.

The baselines run first, in a forward of their own without gradients (once per call when one baseline
serves every example, as one row; otherwise per chunk), and every nonlinearity module of a type in
:data:`DEEPLIFT_RULES` records its input ``x'`` and output ``y'`` of each call. Then each chunk of ``n``
examples runs one forward and one backward of ``Σ_i f_{t_i}(x_i)``; the same modules, in the same order of calls, pass
their output on through ``_Rescale``, an autograd function that is the identity in the forward and
whose backward replaces the module's local gradient by the multiplier ``Δy/Δx``, where ``Δx = x − x'``
and ``Δy = y − y'`` pair each call with the baseline's. Where ``|Δx| < eps`` the module's own gradient
is kept. Linear layers keep their gradient, so the chain rule carries the multipliers down to the inputs
(Ancona et al. 2018's gradient formulation). This is Captum's computation on ``[x; x']`` in one batch
without its baseline half: there both halves carry the same gradient at every layer (the same targets,
the same multipliers), so only the inputs' half is propagated. Only the module's own backward is
replaced (Captum's tensor hooks replace the whole gradient of the tensor a module reads), so the
rules compose through adjacent nonlinearities, skip connections and modules called twice.

A model whose forward couples its rows (:func:`~fastattr.core.batch_coupled`: BatchNorm with batch statistics,
dropout in training mode) runs as Captum runs it instead: one forward of all inputs and baselines ``[x; x']``,
each rule pairing the two halves (``_RescaleJoint``), and one backward of ``Σ f_t`` over both halves, so the
batch statistics and their gradient are Captum's.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..core import (ChunkGrid, Target, batch_coupled, check_flag, check_inputs, check_number, frozen_parameters,
                    gradient_chunk, model_entry, path_baselines, resolve_target, run_model, select)
from ..core.contract import modules_of
from ..core.layer_kernels import fast_pool_here
from ..ops import max_pool2d
from ..ops.deeplift_rules import baseline_rows, maxpool_multipliers, rescale_multipliers

__all__ = ["DEEPLIFT_RULES", "deeplift"]


def _local_gradient(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The module's own vector–Jacobian product ``grad · ∂module(x)/∂x`` (its forward re-run on a
    detached copy of ``x``, without hooks)."""
    with torch.enable_grad():
        z = x.detach().requires_grad_(True)
        out = module.forward(z)
        out = out[0] if isinstance(out, tuple) else out
        (local,) = torch.autograd.grad(out, z, grad)
    return local


def _rescale(module: nn.Module, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
             grad: torch.Tensor, eps: float, examples: int) -> torch.Tensor:
    """Elementwise nonlinearities: ``grad · Δy / Δx``, the local gradient where ``|Δx| < eps``
    (:func:`~fastattr.ops.deeplift_rules.rescale_multipliers`; a ReLU's own gradient comes with it)."""
    out, small = rescale_multipliers(grad, x, y, xb, yb, eps, relu=type(module) is nn.ReLU)
    return out if small is None else torch.where(small, _local_gradient(module, x, grad), out)


def _softmax(module: nn.Module, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
             grad: torch.Tensor, eps: float, examples: int) -> torch.Tensor:
    """``nn.Softmax``: the rescaled gradient less its mean over each example (its input and baseline rows
    carry the same rescaled gradient, so the mean over both is the mean over the input's)."""
    rows = _rescale(module, x, y, xb, yb, grad, eps, examples).reshape(examples, -1)
    return (rows - rows.mean(1, keepdim=True)).reshape(x.shape)


_POOLS = {nn.MaxPool1d: (1, F.max_pool1d), nn.MaxPool2d: (2, F.max_pool2d), nn.MaxPool3d: (3, F.max_pool3d)}


def _maxpool(module: nn.Module, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
             grad: torch.Tensor, eps: float, examples: int) -> torch.Tensor:
    """Max pooling (its indices from :func:`fastattr.ops.max_pool2d` where :func:`~fastattr.core.fast_pool_here`,
    the same bits): with ``m = max(y, y')`` per window, the term ``grad · (m − y')`` goes to the position
    of the input's maximum and ``grad · (y − m)`` to the position of the baseline's maximum (both sum to
    ``grad · Δy``); their sum, divided by ``Δx``, is the multiplier of every input element (the local
    gradient where ``|Δx| < eps``; :func:`~fastattr.ops.deeplift_rules.maxpool_multipliers`)."""
    axes = _POOLS[type(module)][0]
    return maxpool_multipliers(grad, x, y, xb, yb, _pool_index(module, x), _pool_index(module, xb), axes, eps)


def _pool_index(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The flat argmax of each window of the max-pool ``module`` over ``z``."""
    axes, pool = _POOLS[type(module)]
    args = (module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)
    _, index = max_pool2d(z, *args) if axes == 2 and fast_pool_here(z) else pool(z, *args, return_indices=True)
    return index


def _maxpool_joint(module: nn.Module, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                   grad: torch.Tensor, grad_b: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Max pooling in the forward of ``[x; x']`` (Captum's rule on its joint batch): with ``m = max(y, y')``, the
    inputs' gradient times ``m − y'`` goes to the input's maxima and the baselines' gradient times ``y − m`` to
    the baseline's; their sum over ``Δx`` is the multiplier of both halves (each half's own local gradient where
    ``|Δx| < eps``)."""
    axes = _POOLS[type(module)][0]
    index, index_b = _pool_index(module, x).flatten(-axes), _pool_index(module, xb).flatten(-axes)
    top = torch.maximum(y, yb)

    def spread(values: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros(x.shape[:-axes] + (math.prod(x.shape[-axes:]),))
        return out.scatter_add_(-1, at, values.flatten(-axes))

    dx = x - xb
    small = dx.abs() < eps
    both = ((spread(grad * (top - yb), index) + spread(grad_b * (y - top), index_b)).reshape(x.shape)
            / torch.where(small, torch.ones_like(dx), dx))
    if not bool(small.any()):
        return both, both
    return (torch.where(small, spread(grad, index).reshape(x.shape), both),
            torch.where(small, spread(grad_b, index_b).reshape(x.shape), both))


#: the module types whose gradient DeepLift overrides (exact types, as Captum's), and their rules
DEEPLIFT_RULES: dict[type, Callable] = {
    nn.ReLU: _rescale, nn.ELU: _rescale, nn.LeakyReLU: _rescale, nn.Sigmoid: _rescale, nn.Tanh: _rescale,
    nn.Softplus: _rescale, nn.MaxPool1d: _maxpool, nn.MaxPool2d: _maxpool, nn.MaxPool3d: _maxpool,
    nn.Softmax: _softmax,
}


class _Rescale(torch.autograd.Function):
    """``y = module(x)`` passed on unchanged; the backward is the module's DeepLift rule
    ``rule(module, x, y, x', y', grad, eps, examples)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, module: nn.Module,
                eps: float, examples: int) -> torch.Tensor:
        ctx.save_for_backward(x, y, xb, yb)
        ctx.module, ctx.eps, ctx.examples = module, eps, examples
        return y.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y, xb, yb = ctx.saved_tensors
        rule = DEEPLIFT_RULES[type(ctx.module)]
        return rule(ctx.module, x, y, xb, yb, grad, ctx.eps, ctx.examples), None, None, None, None, None, None


class _RescaleJoint(torch.autograd.Function):
    """``y = module(x)`` for ``x = [x_in; x_base]``, passed on unchanged; the backward applies the module's rule
    to each half's gradient with the same pairing (Captum's: both halves get the multiplier ``Δy/Δx``, each its
    own local gradient where ``|Δx| < eps``; a max pool's multiplier mixes the halves' gradients,
    :func:`_maxpool_joint`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, module: nn.Module, eps: float, examples: int) -> torch.Tensor:
        ctx.save_for_backward(x, y)
        ctx.module, ctx.eps, ctx.examples = module, eps, examples
        return y.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y = ctx.saved_tensors
        n, rule = ctx.examples, DEEPLIFT_RULES[type(ctx.module)]
        if type(ctx.module) in _POOLS:
            inputs, bases = _maxpool_joint(ctx.module, x[:n], y[:n], x[n:], y[n:], grad[:n], grad[n:], ctx.eps)
        else:
            inputs = rule(ctx.module, x[:n], y[:n], x[n:], y[n:], grad[:n], ctx.eps, n)
            bases = rule(ctx.module, x[n:], y[n:], x[:n], y[:n], grad[n:], ctx.eps, n)
        return torch.cat([inputs, bases]), None, None, None, None


class _Rules:
    """The forward hook every nonlinearity module carries during a call. In the baselines' forward
    (``recording``) it keeps each call's ``(module, x', y')``; in the inputs' forward of ``rows`` examples
    it pairs each call with the baseline's call of the same rank (``base_rows`` baseline rows)."""

    def __init__(self, eps: float, modules: int):
        self.eps, self.modules = eps, modules
        self.rows, self.base_rows, self.recording, self.joint = 0, 0, False, False
        self.calls: list = []
        self.position = 0

    def __call__(self, module: nn.Module, args: tuple, output):
        y = output[0] if isinstance(output, tuple) else output
        x = args[0] if args else None
        if self.recording:
            self.calls.append((module, x, y))
            return None
        if self.joint:
            return self._joint(module, x, y, output)
        if self.position >= len(self.calls) or self.calls[self.position][0] is not module:
            raise ValueError(f"DeepLift pairs every call of a nonlinearity module with the baselines' call of the "
                             f"same rank; the inputs' forward called {type(module).__name__} where the baselines' "
                             "did not (a forward whose modules depend on the values it is given)")
        _, xb, yb = self.calls[self.position]
        self.position += 1
        if isinstance(x, torch.Tensor) and not x.requires_grad:
            return None  # not on a path from the inputs (parameters are frozen): nothing to rescale
        if not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in (x, y, xb, yb)) \
                or x.shape[0] % self.rows or y.shape[0] != x.shape[0] \
                or xb.shape[0] * self.rows != x.shape[0] * self.base_rows or yb.shape[0] != xb.shape[0]:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"DeepLift pairs a batch of {self.rows} inputs with their baselines row by row and "
                             f"needs every {type(module).__name__} module to be called with one tensor whose first "
                             f"axis is that batch (or batch-major, {self.rows}·k rows); it got {shape}")
        out = _Rescale.apply(x, y.detach(), xb, yb, module, self.eps, self.rows)
        return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

    def _joint(self, module: nn.Module, x, y, output):
        """A call in the forward of ``[x; x']`` (:func:`_joint_chunk`): the halves of each tensor pair up."""
        if isinstance(x, torch.Tensor) and not x.requires_grad:
            return None
        if not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in (x, y)) \
                or x.shape[0] != 2 * self.rows or y.shape[0] != x.shape[0]:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"DeepLift runs a batch of {self.rows} inputs and their baselines in one forward of "
                             f"{2 * self.rows} rows and needs every {type(module).__name__} module to be called "
                             f"with one tensor whose first axis is those rows; it got {shape}")
        out = _RescaleJoint.apply(x, y.detach(), module, self.eps, self.rows)
        return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out


@contextlib.contextmanager
def _rescale_rules(model: Callable, eps: float) -> Iterator[_Rules]:
    """Every :data:`DEEPLIFT_RULES` module of the model carries the DeepLift hook and runs out of place;
    hooks removed and ``inplace`` flags restored on exit, even when an exception is raised."""
    modules = {id(m): m for root in modules_of(model) for m in root.modules() if type(m) in DEEPLIFT_RULES}
    inplace = [(m, m.inplace) for m in modules.values() if isinstance(getattr(m, "inplace", None), bool)]
    rules, handles = _Rules(eps, len(modules)), []
    try:
        for m, _ in inplace:
            m.inplace = False
        for m in modules.values():
            handles.append(m.register_forward_hook(rules))
        yield rules
    finally:
        for h in handles:
            h.remove()
        for m, flag in inplace:
            m.inplace = flag


def _chunk_targets(target: Target, batch: int) -> Callable[[int, int], Target]:
    """The target of examples ``e0:e1``: a per-example target sliced (its length checked against the
    batch), anything else as given (``resolve_target`` checks it)."""
    if isinstance(target, (list, tuple)) or (isinstance(target, torch.Tensor) and target.dim() == 1):
        count = target.numel() if isinstance(target, torch.Tensor) else len(target)
        if count not in (1, batch):
            raise ValueError(f"target has {count} entries but inputs has batch size {batch}")
        if count == batch:
            return lambda e0, e1: target[e0:e1]
    return lambda e0, e1: target


def _check_eps(eps) -> float:
    eps = check_number(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    return eps


def _baseline_pass(model: Callable, base: torch.Tensor, rules: _Rules, inputs: torch.Tensor) -> torch.Tensor:
    """The baselines' forward without gradients, every nonlinearity's calls recorded: the output (an error
    from the model names the shape of ``inputs``)."""
    rules.calls, rules.recording = [], True
    try:
        with torch.no_grad():
            out = run_model(model, base, named=inputs)
    finally:
        rules.recording = False
    rules.base_rows = base.shape[0]
    return out


def _deeplift_chunk(model: Callable, x: torch.Tensor, base_out: torch.Tensor, target: Target,
                   rules: _Rules) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk under :func:`_rescale_rules`, after :func:`_baseline_pass` (its output ``base_out``):
    ``(multipliers [n, ...], f_t(x) − f_t(x') [n])`` from one forward of ``x`` and one backward."""
    n = x.shape[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        rules.rows, rules.position = n, 0
        out = run_model(model, x)
        t = resolve_target(model, x, target, logits=out.detach())
        scores = select(out, t)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad, scores.detach() - select(baseline_rows(base_out, n), t)


def _joint_chunk(model: Callable, x: torch.Tensor, xb: torch.Tensor, target: Target, named: torch.Tensor,
                 rules: _Rules) -> tuple[torch.Tensor, torch.Tensor]:
    """For a model that couples the rows of a forward (:func:`~fastattr.core.batch_coupled`: batch statistics in
    training mode): Captum's one forward of ``[x; x']`` under :func:`_rescale_rules` and the backward of
    ``Σ f_t`` over both halves (each carries the other's rules, so the batch statistics' gradient is Captum's);
    ``(multipliers [n, ...], f_t(x) − f_t(x') [n])``."""
    n = x.shape[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        rules.rows, rules.joint = n, True
        try:
            out = run_model(model, torch.cat([x, xb.to(x.dtype)]), named=named)
        finally:
            rules.joint = False
        t = resolve_target(model, x, target, logits=out[:n].detach())
        scores, base_scores = select(out[:n], t), select(out[n:], t)
        (grad,) = torch.autograd.grad(scores.sum() + base_scores.sum(), x)
    return grad, (scores - base_scores).detach()


@model_entry(gradients=True)
def deeplift(model: Callable, inputs: torch.Tensor, target: Target = None, *,
             baselines: Union[None, float, torch.Tensor] = None, multiply_by_inputs: bool = True,
             return_convergence_delta: bool = False, eps: float = 1e-10, max_batch: Optional[int] = None,
             memory_budget: Optional[int] = None):
    """DeepLift, rescale rule (Shrikumar et al. 2017), in the gradient form of Ancona et al. 2018.

    ``DL(x) = (x − x') ⊙ m``, ``m`` the multipliers: the chain rule with every nonlinearity's
    derivative replaced by ``Δy/Δx`` between input and baseline (SPEC §10); ``multiply_by_inputs=False``
    returns ``m``. For linear layers and the rescaled nonlinearities (Softmax aside) summation to delta
    holds: ``Σ DL(x) = f_t(x) − f_t(x')``.

    Only ``nn.Module`` nonlinearities of the exact types in :data:`DEEPLIFT_RULES` get a rule, as in
    Captum: ``nn.ReLU``, ``nn.ELU``, ``nn.LeakyReLU``, ``nn.Sigmoid``, ``nn.Tanh``, ``nn.Softplus``
    (``Δy/Δx``), ``nn.MaxPool1d/2d/3d`` (Captum's rule: each window's ``Δy`` goes to the positions of
    the input's and the baseline's maxima, over ``Δx``) and ``nn.Softmax`` (the rescaled gradient less
    its mean). Functional nonlinearities (``F.relu``, ``torch.sigmoid`` or ``x.relu()`` in ``forward``,
    the gates inside ``nn.LSTM``) and other modules keep their plain gradient. Where ``|Δx| < eps`` a
    module keeps its own gradient. Such a module must see the batch on its input's first axis (or
    batch-major, ``[B·k, ...]``); one whose input does not depend on the inputs (a gate on a parameter)
    is left alone. In-place modules run out of place during the call.

    Captum's values, to rounding, wherever Captum's hooks compose correctly; where they do not, fastattr
    keeps the rule and summation to delta: a nonlinearity whose output another one reads directly
    (``ReLU`` then ``MaxPool2d``: Captum's first rule sees the second's plain gradient), one whose input
    a skip connection also reads (Captum drops that path), a module called twice (Captum raises), and
    overlapping pooling windows with a common maximum (Captum keeps one window's term). Per example
    where Captum mixes examples: Softmax's mean is over the example's own input and baseline rows
    (Captum's: the whole batch), and the MaxPool fallback where ``|Δx| < eps`` is the example's own
    gradient (Captum's: the first example's) — what Captum gives each example alone.

    Args:
        baselines: None (zeros), a number, or a tensor broadcastable to ``inputs`` (one per example
            ``[B, ...]`` or one for all ``[...]``), as :func:`~fastattr.integrated_gradients`.
        return_convergence_delta: also return ``Σ attr − (f_t(x) − f_t(x'))`` per example (Captum's
            sign), ``f_t`` read off the same forward pass.
        eps: ``|Δx|`` below which a nonlinearity keeps its own gradient (Captum's ``eps``), > 0.
        max_batch, memory_budget: model inputs per forward (the baselines run in a forward of their own,
            without gradients), or bytes for one chunk. Results do not depend on them: a model that couples
            the rows of a forward (batch statistics) runs all inputs and baselines in one, as Captum does.

    Returns:
        a tensor shaped like ``inputs``; with ``return_convergence_delta`` also the ``[B]`` deltas.

    Example::

        >>> attr, delta = fastattr.deeplift(model, x, target=y, return_convergence_delta=True)
    """
    check_flag(multiply_by_inputs, "multiply_by_inputs")
    check_flag(return_convergence_delta, "return_convergence_delta")
    eps = _check_eps(eps)
    check_inputs(inputs)
    inputs = inputs.detach()
    base = path_baselines(inputs, baselines)
    batch = inputs.shape[0]
    targets = _chunk_targets(target, batch)
    per = gradient_chunk(model, inputs, batch, max_batch, memory_budget)
    with contextlib.ExitStack() as stack:
        for module in modules_of(model):
            stack.enter_context(frozen_parameters(module))
        rules = stack.enter_context(_rescale_rules(model, eps))
        if not rules.modules:
            warnings.warn("deeplift: the model has no nonlinearity module DeepLift can override "
                          f"({', '.join(t.__name__ for t in DEEPLIFT_RULES)}); functional ones (F.relu, "
                          "torch.sigmoid in forward) keep their plain gradient, so the result is (x − x') ⊙ "
                          "∂f_t/∂x", UserWarning, stacklevel=3)
        parts = []
        coupled = batch_coupled(model)
        shared = _baseline_pass(model, base, rules, inputs) if base.shape[0] == 1 and not coupled else None
        for e0, e1, _, _ in ChunkGrid(batch, 1, batch if coupled else per):
            rows = base[e0:e1] if base.shape[0] > 1 else base.expand((e1 - e0,) + tuple(base.shape[1:]))
            if coupled:
                parts.append(_joint_chunk(model, inputs[e0:e1], rows, targets(e0, e1), inputs, rules))
                continue
            base_out = shared if shared is not None else _baseline_pass(model, rows, rules, inputs)
            parts.append(_deeplift_chunk(model, inputs[e0:e1], base_out, targets(e0, e1), rules))
    multipliers = torch.cat([p[0] for p in parts])
    attr = (inputs - base) * multipliers if multiply_by_inputs else multipliers
    if not return_convergence_delta:
        return attr
    gap = torch.cat([p[1] for p in parts])
    return attr, attr.reshape(batch, -1).sum(1).to(gap.dtype) - gap
