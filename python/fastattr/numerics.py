"""fastattr's dtype rules (DESIGN "Numerics"), written once for every layer from the references up.

- :func:`compute_dtype`: what a kernel computes in: float32 for fp16 / bf16 data, the dtype itself
  otherwise (float32 and float64 natively).
- :func:`accum_dtype`: what sums over steps, samples or features accumulate in: float64 for float64
  data, float32 for everything else (half precision, float32, integer token ids).
- :func:`dtype_name`: the name the C++ kernels dispatch on (``"float32"``, ``"float64"``, ...).
"""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for fp16 / bf16, the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")
