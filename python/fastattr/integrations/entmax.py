"""Drop-in replacements for the ``entmax`` package's sparsemax API.

Change ``from entmax import sparsemax, Sparsemax`` to
``from fastattr.integrations.entmax import sparsemax, Sparsemax`` and get the same values from the
sort-free kernels. ``k`` (entmax's partial-sort size) is accepted for compatibility; fastattr
never sorts, so it does not change the result or the speed.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops.sparsemax import sparsemax as _sparsemax

__all__ = ["Sparsemax", "sparsemax"]


def _check_k(k: Optional[int]) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be None or a positive int, got {k!r}")


def sparsemax(X: torch.Tensor, dim: int = -1, k: Optional[int] = None) -> torch.Tensor:
    """sparsemax: ``argmin_{p in simplex} ||X - p||^2`` along ``dim`` (Martins & Astudillo 2016).

    Same signature and values as ``entmax.sparsemax``; ``k`` is ignored (no sorting is done).
    """
    _check_k(k)
    return _sparsemax(X, dim)


class Sparsemax(nn.Module):
    """Module form of :func:`sparsemax`, as ``entmax.Sparsemax(dim=-1, k=None)``."""

    def __init__(self, dim: int = -1, k: Optional[int] = None):
        super().__init__()
        _check_k(k)
        self.dim = dim
        self.k = k

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return sparsemax(X, dim=self.dim, k=self.k)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
