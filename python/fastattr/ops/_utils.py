"""Chores every op shares, written once (as Liger-Kernel keeps them in ``ops/utils.py``): the
backend in force for a tensor, the lazy Triton import, the compute-dtype cast to contiguous rows,
the C++ call with its dtype name and thread count, and the tensor checks an op runs inside its
custom op (so a direct ``torch.ops.fastattr.*`` call is checked too)."""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .. import _backend
from ..numerics import compute_dtype, dtype_name

resolve = _backend.resolve
check_backend = _backend.check_backend


def triton_kernels(op: str) -> ModuleType:
    """``fastattr.triton.<op>``, imported on first use (a CPU-only install never imports triton)."""
    return importlib.import_module(f"fastattr.triton.{op}")


def rows(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` as contiguous ``[t.shape[0], -1]`` rows, cast to ``dtype`` (default: its compute dtype)."""
    return t.to(compute_dtype(t.dtype) if dtype is None else dtype).reshape(t.shape[0], -1).contiguous()


def run_cpp(kernel: str, *args, dtype: torch.dtype) -> None:
    """Calls ``fastattr._C.<kernel>(*args, dtype name, thread count)``: the kernels dispatch on the
    dtype name and run OpenMP over torch's own thread count, so fastattr never oversubscribes."""
    getattr(_backend.cpp_extension(), kernel)(*args, dtype_name(dtype), _backend.num_threads())


def check_tensor(t, name: str, *, floating: bool = False, dtype: torch.dtype | None = None,
                 dim: int | None = None) -> None:
    """A ``TypeError`` / ``ValueError`` naming ``name`` unless ``t`` is a tensor (floating, of ``dtype``,
    with ``dim`` dimensions, as asked)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got dtype {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype_name(dtype)}, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
