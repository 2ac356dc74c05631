"""Reference DeepLift multipliers (rescale rule, Shrikumar et al. 2017; SPEC §10), in torch expressions.

Row ``r`` of the inputs pairs with baseline row ``r mod R`` (``R`` baseline rows: one, or tiled).

- elementwise: ``grad · (y − y') / (x − x')``, and the mask ``|x − x'| < eps`` where the module's own
  gradient belongs instead (for a ReLU put here: ``0`` where ``x ≤ 0``, else ``grad``, torch's
  ``threshold_backward``);
- max pool over the last ``axes`` axes, ``index`` / ``index_b`` each window's flat argmax in ``x`` / ``x'``: with
  ``m = max(y, y')``, ``grad · (m − y')`` added at the input's argmax, then ``grad · (y − m)`` at the baseline's
  (``scatter_add_``), over ``Δx``; where ``|Δx| < eps`` the pool's own gradient (``grad`` summed at the input's
  argmax).
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def baseline_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """The baseline's ``t`` for ``rows`` rows of the inputs: as it is, broadcast from one row, or tiled."""
    if t.shape[0] == rows:
        return t
    if t.shape[0] == 1:
        return t.expand((rows,) + tuple(t.shape[1:]))
    return t.repeat((rows // t.shape[0],) + (1,) * (t.dim() - 1))


def rescale_multipliers(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                        eps: float, relu: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    dx = x - baseline_rows(xb, x.shape[0])
    out = grad * (y - baseline_rows(yb, y.shape[0])) / dx
    small = dx.abs() < eps
    if not bool(small.any()):
        return out, None
    if relu:
        return torch.where(small, grad.masked_fill(x <= 0, 0), out), None
    return out, small


def maxpool_multipliers(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                        index: torch.Tensor, index_b: torch.Tensor, axes: int, eps: float) -> torch.Tensor:
    rows = x.shape[0]
    lead = tuple(y.shape[:y.dim() - axes])
    yb = baseline_rows(yb, rows)
    top = torch.max(y, yb)
    index = index.reshape(lead + (-1,))
    index_b = baseline_rows(index_b, rows).reshape(lead + (-1,))
    pooled = grad.new_zeros(lead + (math.prod(x.shape[x.dim() - axes:]),))
    pooled.scatter_add_(-1, index, (grad * (top - yb)).reshape(lead + (-1,)))
    pooled.scatter_add_(-1, index_b, (grad * (y - top)).reshape(lead + (-1,)))
    dx = x - baseline_rows(xb, rows)
    out = pooled.reshape(x.shape) / dx
    small = dx.abs() < eps
    if not bool(small.any()):
        return out
    local = grad.new_zeros(pooled.shape).scatter_add_(-1, index, grad.reshape(lead + (-1,))).reshape(x.shape)
    return torch.where(small, local, out)
