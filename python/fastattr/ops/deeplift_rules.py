"""DeepLift's rescale multipliers (Shrikumar et al. 2017; SPEC §10) in one pass each, from C++ kernels: the
rule of an elementwise nonlinearity, ``grad · Δy / Δx``, and of max pooling (:mod:`fastattr.attribution.deeplift`,
whose torch expressions are the reference). Each replaces a chain of 7–12 elementwise torch ops over a layer's
input (a fifth of DeepLift's time on the digits CNN) with the same IEEE operations in the same order, so the
multipliers are torch's bit for bit. The functions return None where the kernel does not run (not plain eager
CPU float32 / float64 tensors, the reference backend, an index outside its plane), and the caller computes the
rule with torch. Rows ``r`` of the inputs pair with baseline row ``r mod`` (baseline rows).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _backend
from ._utils import eager_cpu, run_cpp

__all__ = ["maxpool_multipliers", "rescale_multipliers"]


def _runs(*tensors: torch.Tensor) -> bool:
    x = tensors[0]
    return (eager_cpu(*tensors, gradients=True) and x.dtype in (torch.float32, torch.float64)
            and all(t.dtype == x.dtype for t in tensors)
            and _backend.get_backend() in ("auto", "cpp") and _backend.cpp_available())


def _paired(x: torch.Tensor, xb: torch.Tensor) -> bool:
    """Whether baseline rows ``xb`` pair with the rows of ``x`` (one row, or a divisor of its rows)."""
    return x.dim() > 0 and xb.dim() == x.dim() and xb.shape[1:] == x.shape[1:] and xb.shape[0] > 0 \
        and x.shape[0] % xb.shape[0] == 0


def rescale_multipliers(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor,
                        yb: torch.Tensor, eps: float, relu: bool = False) -> Optional[tuple[torch.Tensor, int]]:
    """``(grad · (y − y') / (x − x'), the count of |x − x'| < eps)``, or None where the kernel does not run; with
    ``relu`` (the module is an ``nn.ReLU``) those elements get the ReLU's own gradient (``0`` where ``x ≤ 0``,
    else ``grad``: torch's ``threshold_backward``) and the count is 0."""
    if not (_runs(grad, x, y, xb, yb) and grad.shape == x.shape == y.shape and _paired(x, xb)
            and yb.shape == xb.shape):
        return None
    g, xc, yc, xbc, ybc = (t.contiguous() for t in (grad, x, y, xb, yb))
    out = torch.empty(x.shape, dtype=x.dtype)
    small = run_cpp("deeplift_rescale", g.data_ptr(), xc.data_ptr(), yc.data_ptr(), xbc.data_ptr(), ybc.data_ptr(),
                    out.data_ptr(), x.shape[0], x[0].numel(), xb.shape[0], float(eps), bool(relu), dtype=x.dtype)
    return out, small


def maxpool_multipliers(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                        index: torch.Tensor, index_b: torch.Tensor, axes: int, eps: float) -> Optional[torch.Tensor]:
    """DeepLift's max-pool multipliers of every element of ``x`` (``axes`` pooled trailing axes; ``index`` and
    ``index_b`` the flat argmax of each window of ``x`` and of ``x'``): ``grad · (max(y, y') − y')`` at the
    input's argmax plus ``grad · (y − max(y, y'))`` at the baseline's, over ``Δx``; the pool's own gradient where
    ``|Δx| < eps``. None where the kernel does not run."""
    if not (_runs(grad, x, y, xb, yb) and index.dtype == index_b.dtype == torch.int64
            and grad.shape == y.shape == index.shape and _paired(x, xb) and _paired(y, yb)
            and yb.shape == index_b.shape and yb.shape[0] == xb.shape[0] and x.dim() > axes
            and y.shape[:-axes] == x.shape[:-axes]):
        return None
    g, yc, ybc, xc, xbc = (t.contiguous() for t in (grad, y, yb, x, xb))
    ic, ibc = index.contiguous(), index_b.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype)
    planes = math.prod(x.shape[:-axes])
    if planes == 0:
        return None
    status = run_cpp("deeplift_maxpool", g.data_ptr(), yc.data_ptr(), ybc.data_ptr(), ic.data_ptr(), ibc.data_ptr(),
                     xc.data_ptr(), xbc.data_ptr(), out.data_ptr(), planes, planes // x.shape[0], xb.shape[0],
                     math.prod(y.shape[-axes:]), math.prod(x.shape[-axes:]), float(eps), dtype=x.dtype)
    return None if status < 0 else out
