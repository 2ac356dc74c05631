"""Chores every op shares, written once (as Liger-Kernel keeps them in ``ops/utils.py``): the
backend in force for a tensor, the lazy Triton import, the compute-dtype cast to contiguous rows,
the C++ call with its dtype name and thread count, and the tensor checks an op runs inside its
custom op (so a direct ``torch.ops.fastattr.*`` call is checked too)."""
from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType

import torch

from .. import _backend
from ..numerics import compute_dtype, dtype_name

resolve = _backend.resolve
differentiating_transform = _backend.differentiating_transform
check_backend = _backend.check_backend


def triton_kernels(op: str) -> ModuleType:
    """``fastattr.triton.<op>``, imported on first use (a CPU-only install never imports triton)."""
    return importlib.import_module(f"fastattr.triton.{op}")


def _probe() -> None:
    pass


def _disable_dynamo_code():
    """The code object of the wrapper ``torch._disable_dynamo`` puts around a function, or None
    where this torch has no such helper."""
    try:
        return torch._disable_dynamo(_probe).__code__
    except Exception:
        return None


def eager_without_compiler(op):
    """Lets the eager call of custom op ``op`` run without importing the compiler stack.

    ``torch.library.custom_op`` stores every kernel in ``op._backend_fns`` wrapped by
    ``torch._disable_dynamo``, whose first call runs ``import torch._dynamo`` (sympy and mpmath
    through ``torch.fx.experimental.symbolic_shapes``, ~115 ``torch.distributed`` submodules, pieces of
    ``torch._inductor`` and ``torch.onnx``, and triton through ``torch.utils._triton.has_triton_package``:
    ~870 modules, ~1.7 s and ~140 MB on the first call) only to build ``torch._dynamo.disable(kernel)``. That wrapper matters only while Dynamo can be
    evaluating frames, and Dynamo can do so only once ``torch._dynamo`` has been imported (every
    ``torch.compile`` imports it). So the stored kernel is replaced by one that calls the kernel
    directly while ``torch._dynamo`` is not in ``sys.modules`` and otherwise defers to torch's own
    wrapper, unchanged: under ``torch.compile`` (and after any import of Dynamo) the behaviour is
    exactly torch's. Where this torch stores its kernels otherwise, nothing is changed."""
    code = _disable_dynamo_code()
    fns = getattr(op, "_backend_fns", None)
    if code is None or not isinstance(fns, dict):
        return op
    for device_type, wrapped in list(fns.items()):
        raw = getattr(wrapped, "__wrapped__", None)
        if getattr(wrapped, "__code__", None) is not code or raw is None:
            continue

        def kernel(*args, _raw=raw, _wrapped=wrapped, **kwargs):
            if "torch._dynamo" not in sys.modules:
                return _raw(*args, **kwargs)
            return _wrapped(*args, **kwargs)

        fns[device_type] = functools.wraps(raw)(kernel)
    return op


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager_cpu(*tensors: torch.Tensor | None, gradients: bool = False) -> bool:
    """True when an eager call may run the C++ kernel itself instead of going through the custom op's
    dispatch (7–10 µs a call, about half of what a kernel takes on SOP's small attention matrices): every
    tensor given (None skipped) a non-empty plain CPU tensor or parameter (``nn.Parameter`` keeps torch
    function off) that needs no gradient (with ``gradients``: or whose gradient the caller's own
    ``autograd.Function`` computes), outside ``torch.compile``, ``torch.jit.trace``, forward-mode AD,
    torch function and dispatch modes, and functorch transforms (the legacy ``vmap`` of ``is_grads_batched``
    too), all of which must see the op."""
    # the modes first: under torch.compile, Dynamo cannot trace the functorch query of the tensors below
    if (torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None
            or torch.autograd.forward_ad._current_level >= 0 or torch._C._is_torch_function_mode_enabled()
            or torch._C._len_torch_dispatch_stack() != 0):
        return False
    grad = torch.is_grad_enabled() and not gradients
    return all(x is None or (type(x) in _PLAIN and x.device.type == "cpu" and x.numel() > 0
                             and not (x.requires_grad and grad)
                             and not torch._C._functorch.is_functorch_wrapped_tensor(x)
                             and not torch._C._functorch.is_legacy_batchedtensor(x)) for x in tensors)


def cpp_eager(*tensors, backend: str | None = None) -> bool:
    """Whether an op may call its C++ kernel directly on ``tensors``: ``backend`` (None:
    :func:`fastattr.get_backend`) auto or cpp with the extension built, and every tensor a plain eager CPU
    tensor (:func:`eager_cpu`, its gradient the caller's own) of one dtype, float32 or float64."""
    name = _backend.get_backend() if backend is None else check_backend(backend)
    if name not in ("auto", "cpp") or not _backend.cpp_available() \
            or not all(isinstance(t, torch.Tensor) for t in tensors):
        return False
    dtype = tensors[0].dtype
    return (dtype in (torch.float32, torch.float64) and all(t.dtype == dtype for t in tensors)
            and eager_cpu(*tensors, gradients=True))


def run_op(op, *args, reference: bool = True):
    """``op(*args)`` for a custom op whose last argument is the backend; under
    :func:`differentiating_transform`, the op's own body with the reference backend, called directly: plain
    torch ops, which every transform differentiates (the other backends' kernels are opaque to them). With
    ``reference=False`` (an op whose reference torch cannot differentiate) a ``NotImplementedError`` instead of
    a silent zero tangent."""
    if differentiating_transform(*args):
        if args[-1] is None:  # a bad backend or FASTATTR_BACKEND gets the error of a plain call
            _backend.get_backend()
        else:
            check_backend(args[-1])
        if not reference:
            raise NotImplementedError(f"{op._qualname} cannot be differentiated by torch.func transforms or "
                                      "forward-mode AD: detach its inputs, or use reverse-mode autograd "
                                      "(torch.autograd.grad, .backward()) where the op has a backward")
        body = getattr(op, "_init_fn", None)
        if body is not None:
            return body(*args[:-1], "reference")
    return op(*args)


def rows(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` as contiguous ``[t.shape[0], -1]`` rows, cast to ``dtype`` (default: its compute dtype)."""
    return t.to(compute_dtype(t.dtype) if dtype is None else dtype).reshape(t.shape[0], -1).contiguous()


def in_compute(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` as a contiguous tensor of ``dtype`` (default: its compute dtype), itself when it already is one."""
    dtype = compute_dtype(t.dtype) if dtype is None else dtype
    return t if t.dtype == dtype and t.is_contiguous() else t.to(dtype).contiguous()


def run_cpp(kernel: str, *args, dtype: torch.dtype):
    """Calls ``fastattr._C.<kernel>(*args, dtype name, thread count)`` and returns what it returns: the
    kernels dispatch on the dtype name and run OpenMP over torch's own thread count, so fastattr
    never oversubscribes."""
    return getattr(_backend.cpp_extension(), kernel)(*args, dtype_name(dtype), _backend.num_threads())


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
