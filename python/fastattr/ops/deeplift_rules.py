"""DeepLift's rescale multipliers (Shrikumar et al. 2017; SPEC §10) of an elementwise nonlinearity and of max
pooling (:mod:`fastattr.reference.deeplift_rules`), one C++ pass each on CPU: in place of a chain of 7–12
elementwise torch ops over a layer's input (a fifth of DeepLift's time on the digits CNN), the same IEEE
operations in the same order (no fused multiply-add), so the multipliers are the reference's bit for bit.
Backends: reference and C++; a CUDA tensor, a tensor the C++ kernel does not take (not a plain eager CPU
float32 / float64 tensor) or an index outside its plane runs the reference. No Triton kernel: on a GPU the
reference's elementwise ops are already one launch each over the whole layer.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..reference import deeplift_rules as reference
from ..reference.deeplift_rules import baseline_rows
from ._utils import cpp_eager, run_cpp

__all__ = ["baseline_rows", "maxpool_multipliers", "rescale_multipliers"]


def _paired(x: torch.Tensor, xb: torch.Tensor) -> bool:
    """Whether baseline rows ``xb`` pair with the rows of ``x`` (one row, or a divisor of its rows)."""
    return x.dim() > 0 and xb.dim() == x.dim() and xb.shape[1:] == x.shape[1:] and xb.shape[0] > 0 \
        and x.shape[0] % xb.shape[0] == 0


def rescale_multipliers(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                        eps: float, relu: bool = False, *, backend: Optional[str] = None
                        ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(grad · (y − y') / (x − x'), mask)``: ``mask`` (None when empty) marks ``|x − x'| < eps``, where the
    module's own gradient belongs; with ``relu`` (an ``nn.ReLU``) those elements already hold the ReLU's own
    gradient (``0`` where ``x ≤ 0``, else ``grad``: torch's ``threshold_backward``) and the mask is None."""
    if not (cpp_eager(grad, x, y, xb, yb, backend=backend) and grad.shape == x.shape == y.shape and _paired(x, xb)
            and yb.shape == xb.shape):
        return reference.rescale_multipliers(grad, x, y, xb, yb, eps, relu)
    g, xc, yc, xbc, ybc = (t.contiguous() for t in (grad, x, y, xb, yb))
    out = torch.empty(x.shape, dtype=x.dtype)
    small = run_cpp("deeplift_rescale", g.data_ptr(), xc.data_ptr(), yc.data_ptr(), xbc.data_ptr(), ybc.data_ptr(),
                    out.data_ptr(), x.shape[0], x[0].numel(), xb.shape[0], float(eps), bool(relu), dtype=x.dtype)
    if not small:
        return out, None
    return out, (x - baseline_rows(xb, x.shape[0])).abs() < eps


def maxpool_multipliers(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                        index: torch.Tensor, index_b: torch.Tensor, axes: int, eps: float, *,
                        backend: Optional[str] = None) -> torch.Tensor:
    """DeepLift's max-pool multipliers of every element of ``x`` (``axes`` pooled trailing axes; ``index`` and
    ``index_b`` the flat argmax of each window of ``x`` and of ``x'``; :mod:`fastattr.reference.deeplift_rules`)."""
    if (cpp_eager(grad, x, y, xb, yb, backend=backend) and index.dtype == index_b.dtype == torch.int64
            and grad.shape == y.shape == index.shape and _paired(x, xb) and _paired(y, yb)
            and yb.shape == index_b.shape and yb.shape[0] == xb.shape[0] and x.dim() > axes
            and y.shape[:-axes] == x.shape[:-axes] and math.prod(x.shape[:-axes]) > 0):
        g, yc, ybc, xc, xbc = (t.contiguous() for t in (grad, y, yb, x, xb))
        ic, ibc = index.contiguous(), index_b.contiguous()
        out = torch.empty(x.shape, dtype=x.dtype)
        planes = math.prod(x.shape[:-axes])
        status = run_cpp("deeplift_maxpool", g.data_ptr(), yc.data_ptr(), ybc.data_ptr(), ic.data_ptr(),
                         ibc.data_ptr(), xc.data_ptr(), xbc.data_ptr(), out.data_ptr(), planes, planes // x.shape[0],
                         xb.shape[0], math.prod(y.shape[-axes:]), math.prod(x.shape[-axes:]), float(eps),
                         dtype=x.dtype)
        if status >= 0:
            return out
    return reference.maxpool_multipliers(grad, x, y, xb, yb, index, index_b, axes, eps)
