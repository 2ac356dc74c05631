"""Backend choice for every fastattr op, in one place.

Backends: ``"reference"`` (pure torch, see :mod:`fastattr.reference`), ``"cpp"`` (the compiled
``fastattr._C`` extension, CPU tensors), ``"triton"`` (CUDA tensors; CPU tensors only under
``TRITON_INTERPRET=1``) and ``"auto"``: CUDA tensor -> triton, CPU tensor -> cpp when the
extension is built, else the reference with a one-time warning.

The default comes from the ``FASTATTR_BACKEND`` environment variable (``auto`` when unset);
:func:`use_backend` overrides it for a block of code; every op also takes ``backend=`` per call.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import warnings
from typing import Iterator, Optional

import torch

BACKENDS = ("auto", "reference", "cpp", "triton")

_current: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("fastattr_backend", default=None)
_resolved: contextvars.ContextVar[Optional[set]] = contextvars.ContextVar("fastattr_resolved", default=None)


def check_backend(name: str, argname: str = "backend") -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{argname} must be one of {BACKENDS}, got {name!r}")
    return name.lower()


def get_backend() -> str:
    """The backend in force: the innermost :func:`use_backend`, else ``FASTATTR_BACKEND``, else auto."""
    name = _current.get()
    if name is not None:
        return name
    return check_backend(os.environ.get("FASTATTR_BACKEND", "auto") or "auto", "FASTATTR_BACKEND")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager forcing a backend: ``with fastattr.use_backend("reference"): ...``."""
    token = _current.set(check_backend(name))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


@contextlib.contextmanager
def record_backends() -> Iterator[set]:
    """Context manager collecting the concrete backends (reference / cpp / triton) of every op that runs in
    the block: ``with record_backends() as used: ...``; an empty set after it means no fastattr op ran."""
    used: set = set()
    token = _resolved.set(used)
    try:
        yield used
    finally:
        _resolved.reset(token)


def differentiating_transform(*args) -> bool:
    """True when a tensor among ``args`` carries a tangent of forward-mode AD (``torch.autograd.forward_ad``) or
    is wrapped by ``torch.func`` inside a transform that differentiates (``grad``, ``vjp``, ``jacrev``, ``jvp``,
    ``jacfwd``, ``hessian``). A custom op whose derivative is a ``torch.library`` backward gets there no tangent
    (``torch.func.jvp`` returns zeros, silently) or an error (``torch.func.grad``: "must override the
    setup_context staticmethod"; forward AD: "You must implement the jvp function"), as of torch 2.13;
    the ops then run their reference (:func:`fastattr.ops._utils.run_op`)."""
    if torch.compiler.is_compiling():
        return False
    stack = torch._C._functorch.get_interpreter_stack()
    transform = bool(stack) and any(i.key() in _DIFFERENTIATING for i in stack)
    dual = torch.autograd.forward_ad._current_level >= 0
    if not (transform or dual):  # the common case: no tensor is asked anything
        return False
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    wrapped = [torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors]
    if transform and any(wrapped):
        return True
    # a functorch-wrapped tensor (vmap's) cannot be unpacked: only plain tensors are asked for a tangent
    return dual and any(torch.autograd.forward_ad.unpack_dual(t).tangent is not None
                        for t, w in zip(tensors, wrapped) if not w)


_DIFFERENTIATING = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)


@functools.lru_cache(maxsize=None)
def cpp_extension():
    """The compiled ``fastattr._C`` module, or None when it was not built."""
    try:
        return importlib.import_module("fastattr._C")
    except ImportError:
        return None


def cpp_available() -> bool:
    return cpp_extension() is not None


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when triton imports (it is imported lazily; a CPU-only install never needs it)."""
    try:
        importlib.import_module("triton")
    except Exception:
        return False
    return True


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Concrete backends that can run on tensors of ``device``."""
    dev = torch.device(device)
    out = ["reference"]
    if dev.type == "cpu" and cpp_available():
        out.append("cpp")
    if triton_available() and (dev.type == "cuda" or triton_interpret()):
        out.append("triton")
    return out


_warned_fallback = False


def resolve(x: torch.Tensor, backend: Optional[str] = None) -> str:
    """The concrete backend (reference / cpp / triton) that runs an op on tensor ``x``."""
    name = _resolve(x, backend)
    used = _resolved.get()
    if used is not None:
        used.add(name)
    return name


def _resolve(x: torch.Tensor, backend: Optional[str]) -> str:
    global _warned_fallback
    name = get_backend() if backend is None else check_backend(backend)
    dev = x.device.type
    if name == "auto":
        if dev == "cuda" and triton_available():
            return "triton"
        if dev == "cpu" and cpp_available():
            return "cpp"
        if not _warned_fallback:
            _warned_fallback = True
            why = "triton is not installed" if dev == "cuda" else "the fastattr._C extension is not built"
            warnings.warn(f"fastattr: {why}; using the pure-torch reference backend", RuntimeWarning, stacklevel=4)
        return "reference"
    if name == "cpp":
        if dev != "cpu":
            raise ValueError(f"backend 'cpp' runs on CPU tensors only, got a tensor on {x.device}")
        if not cpp_available():
            raise RuntimeError("backend 'cpp' requested but the fastattr._C extension is not built")
    if name == "triton":
        if not triton_available():
            raise RuntimeError("backend 'triton' requested but triton is not installed")
        if dev != "cuda" and not triton_interpret():
            raise ValueError(
                f"backend 'triton' needs a CUDA tensor (got {x.device}); "
                "set TRITON_INTERPRET=1 to run Triton kernels on CPU tensors"
            )
    return name


def num_threads() -> int:
    """Threads for the cpp kernels: torch's own count, so fastattr never oversubscribes."""
    return max(1, torch.get_num_threads())
