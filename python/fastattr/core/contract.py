"""The model contract and argument checks every family shares: inputs, flags, counts, the model and
what it returns, the seed, and guards that leave the model exactly as it was found (DESIGN "API
conventions": bad input gets an error naming the argument; nothing a user passes in is modified)."""
from __future__ import annotations

import contextlib
import contextvars
import dis
import functools
import inspect
import math
import warnings
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn

from .layer_kernels import fast_layers

Target = Union[None, int, torch.Tensor]


def check_inputs(inputs: torch.Tensor, name: str = "inputs", integer: bool = False) -> None:
    """Gradient methods need a finite floating tensor with a batch axis; ``integer=True`` also takes
    integer tensors (token ids, for the perturbation methods)."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    ids = integer and is_integer(inputs)
    if not ids and not inputs.is_floating_point():
        raise TypeError(
            f"{name} has dtype {inputs.dtype}; this method needs floating inputs. For integer token "
            "ids, attribute to the embedding layer (a layer method such as layer_integrated_gradients) "
            "or use occlusion / feature_ablation, which take integer inputs")
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch axis, got shape {tuple(inputs.shape)}")
    if not ids and not torch.isfinite(inputs).all():
        raise ValueError(f"{name} contains NaN or Inf")


def check_flag(value, name: str) -> bool:
    """A bool argument (numpy bools too), or a ``TypeError`` naming it."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_count(value, name: str, *, minimum: int = 1, optional: bool = False) -> Optional[int]:
    """A count argument: an int >= ``minimum`` (numpy ints too; None when ``optional``), as an int, or a
    ``ValueError`` naming it."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def broadcasts_to(shape, target) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target``."""
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


def is_integer(t: torch.Tensor) -> bool:
    """An integer tensor (not bool, floating or complex)."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_model(model: nn.Module, inputs: Optional[torch.Tensor] = None, *, gradients: bool = False,
                name: str = "inputs") -> None:
    """The model contract before any forward: a callable; floating ``inputs`` of the dtype of the
    model's floating parameters (integer token ids pass); with ``gradients``, not inside
    ``torch.inference_mode()`` (no gradient can be taken there)."""
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function), got {type(model).__name__}")
    if gradients and torch.is_inference_mode_enabled():
        raise RuntimeError("this method takes input gradients, which torch.inference_mode() forbids; "
                           "call it outside the inference_mode block (no_grad is fine)")
    if isinstance(model, nn.Module) and isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        if dtype is not None and dtype != inputs.dtype:
            raise TypeError(f"{name} have dtype {inputs.dtype} but the model's parameters are {dtype}; "
                            f"cast one to the other ({name}.to({dtype}) or model.to({inputs.dtype}))")


MODEL_MODES = ("eval", "as_given")
_mode: contextvars.ContextVar[str] = contextvars.ContextVar("fastattr_model_mode", default="eval")
_guarded: contextvars.ContextVar[frozenset] = contextvars.ContextVar("fastattr_model_guarded", default=frozenset())


def get_model_mode() -> str:
    """The train-mode rule in force: ``"eval"`` (the default) or ``"as_given"`` (see :func:`model_guard`)."""
    return _mode.get()


@contextlib.contextmanager
def use_model_mode(mode: str) -> Iterator[str]:
    """Context manager choosing how a model in training mode is run: ``"eval"`` (default: in eval mode,
    with a warning) or ``"as_given"`` (in its own mode: batch statistics, active dropout). Either way
    the model's flags and buffers are restored after each call. The choice holds in the current
    thread (and its ``contextvars`` context). ``with fastattr.use_model_mode("as_given"): ...``"""
    if mode not in MODEL_MODES:
        raise ValueError(f"mode must be one of {MODEL_MODES}, got {mode!r}")
    token = _mode.set(mode)
    try:
        yield mode
    finally:
        _mode.reset(token)


def modules_of(model) -> list[nn.Module]:
    """The ``nn.Module`` objects a model runs: the model itself, or what a callable wraps — a
    ``functools.partial``'s function and arguments, the modules a function or lambda closes over
    (``lambda x: net(x)[0]``) or loads as globals (``def f(x): return net(x)`` at a module's top level;
    attribute names are not globals), a bound method's object, and the attributes of a callable object
    or of a bound method's object that is not a module (``self.model`` of a wrapper), up to three levels
    deep. What cannot be read is skipped."""
    found: dict[int, nn.Module] = {}

    def visit(obj, depth: int) -> None:
        try:
            if isinstance(obj, nn.Module):
                found.setdefault(id(obj), obj)
            elif depth <= 0 or isinstance(obj, type):
                return
            elif isinstance(obj, functools.partial):
                for o in (obj.func, *obj.args, *obj.keywords.values()):
                    visit(o, depth - 1)
            elif inspect.ismethod(obj):
                visit(obj.__self__, depth - 1)
                if not isinstance(obj.__self__, nn.Module):
                    attributes(obj.__self__, depth - 1)
                    visit(obj.__func__, depth - 1)
            elif inspect.isfunction(obj):
                for cell in obj.__closure__ or ():
                    try:
                        visit(cell.cell_contents, depth - 1)
                    except ValueError:  # an empty cell
                        pass
                for name in _loaded_globals(obj.__code__):
                    visit(obj.__globals__.get(name), depth - 1)
            elif callable(obj):
                attributes(obj, depth)
        except Exception:  # noqa: BLE001 - an object that cannot be read (a dead weak proxy, ...) runs no module
            return

    def attributes(obj, depth: int) -> None:
        values = obj.__dict__ if isinstance(obj.__dict__, dict) else {}
        for value in list(values.values()):
            visit(value, depth - 1)

    visit(model, 3)
    return list(found.values())


@functools.lru_cache(maxsize=4096)
def _loaded_globals(code) -> tuple[str, ...]:
    """The global names a code object (and the functions and lambdas defined in it) loads."""
    names = [i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"]
    for const in code.co_consts:
        if inspect.iscode(const):
            names.extend(_loaded_globals(const))
    return tuple(dict.fromkeys(names))


def batch_coupled(model) -> bool:
    """Whether the model, in its current mode, couples the examples that share a forward: a BatchNorm that
    normalises with the batch's statistics (in training mode, or without running statistics), or dropout in
    training mode (a dropout module, or a module's own dropout probability, as ``nn.MultiheadAttention``'s
    or an RNN's). Its outputs then depend on which inputs run together, so a method that must give another
    library's numbers (the Captum drop-ins) forms that library's forwards exactly. A model merely left in
    training mode, without such modules, is not coupled; nor is one whose forward calls ``F.dropout`` or
    ``F.batch_norm`` itself (no module says so)."""
    def coupled(m: nn.Module) -> bool:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return m.training or not m.track_running_stats
        if not m.training:
            return False
        # a plain attribute (nn.MultiheadAttention's, an RNN's: between its layers, so only with two or more)
        p = m.p if isinstance(m, nn.modules.dropout._DropoutNd) else m.__dict__.get("dropout")
        if isinstance(m, nn.RNNBase) and m.num_layers < 2:
            return False
        return isinstance(p, (int, float)) and not isinstance(p, bool) and p > 0

    return any(coupled(m) for root in modules_of(model) for m in root.modules())


def rng_state(model, device: torch.device) -> Optional[tuple]:
    """The global RNG's state (the CPU's, and ``device``'s for CUDA) for a model whose forward draws from it
    (:func:`batch_coupled`: dropout), to put back with :func:`restore_rng` after a forward fastattr adds for its
    own checks (a target's range, an output's shape), so that it takes no draws from the ones that follow;
    None for any other model."""
    if not batch_coupled(model):
        return None
    device = torch.device(device)
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None), device


def restore_rng(state: Optional[tuple]) -> None:
    """Puts back a state from :func:`rng_state` (nothing for None)."""
    if state is not None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], state[2])


@contextlib.contextmanager
def rng_kept(model, device: torch.device) -> Iterator[None]:
    """The global RNG as it was on entry once the block ends, for a model that draws from it (:func:`rng_state`)."""
    state = rng_state(model, device)
    try:
        yield
    finally:
        restore_rng(state)


def _snapshot_buffers(modules: list[nn.Module]) -> list:
    """``(module, name, buffer, copy)`` of every materialised buffer (lazy ones are skipped)."""
    return [(m, name, b, b.detach().clone()) for root in modules for m in root.modules()
            for name, b in m._buffers.items() if b is not None and not nn.parameter.is_lazy(b)]


def _restore_buffers(saved: list) -> None:
    """Puts every buffer back: the same tensor object in its module, holding the same values (compared
    value by value: BatchNorm's kernels update running statistics without bumping the version
    counter)."""
    for module, name, buf, copy in saved:
        module._buffers[name] = buf
        if buf.shape != copy.shape or not torch.equal(buf, copy):
            with torch.inference_mode(buf.is_inference()), torch.no_grad():
                buf.copy_(copy)


@contextlib.contextmanager
def model_guard(model: Callable, inputs=None, *, gradients: bool = False, quiet: bool = False,
                name: str = "inputs") -> Iterator[None]:
    """The model contract around one public call: :func:`check_model`, a non-empty batch, and the one
    train-mode rule, applied to the model's modules (:func:`modules_of`: the model, or the modules a
    function or lambda wraps). A module with any submodule in training mode runs in eval mode
    (BatchNorm running statistics, no dropout) with a warning (none with ``quiet``), or as given under
    ``use_model_mode("as_given")``. Whatever the call does inside, every submodule's ``training`` flag
    and every buffer (BatchNorm ``running_mean`` / ``running_var`` / ``num_batches_tracked``, ...) are
    the same after it as before, even when it raises. A module already guarded by an enclosing call (a
    method inside a metric) is guarded once, by the outermost."""
    check_model(model, inputs, gradients=gradients, name=name)
    if isinstance(inputs, torch.Tensor) and (inputs.dim() == 0 or inputs.shape[0] == 0):
        raise ValueError(f"{name} must have a non-empty batch axis, got shape {tuple(inputs.shape)}")
    outer = _guarded.get()
    modules = [m for m in modules_of(model) if id(m) not in outer]
    if not modules:
        yield
        return
    flags = [(m, m.training) for root in modules for m in root.modules()]
    saved = _snapshot_buffers(modules)
    token = _guarded.set(outer | {id(m) for m in modules})
    try:
        if any(flag for _, flag in flags) and get_model_mode() == "eval":
            if not quiet:
                warnings.warn("model is in training mode; fastattr runs it in eval mode (BatchNorm running "
                              "statistics, no dropout) and restores its mode and buffers afterwards. Call "
                              "model.eval() to silence this, or run under fastattr.use_model_mode('as_given') "
                              "to use the model in its own mode", UserWarning, stacklevel=4)
            for m in modules:
                m.eval()
        with fast_layers(modules, inputs):
            yield
    finally:
        _guarded.reset(token)
        for m, flag in flags:
            m.training = flag
        _restore_buffers(saved)


def model_entry(fn: Optional[Callable] = None, *, gradients: bool = False, quiet: bool = False,
                inputs_name: str = "inputs", model_name: str = "model"):
    """Decorator making a public ``fn(model, inputs, ...)`` a guarded entry point: each call runs inside
    :func:`model_guard` (``gradients``: the method takes input gradients; ``inputs_name`` /
    ``model_name``: the arguments holding the inputs and the model, ``"self"`` for a model's own
    method). The wrapped function carries ``model_contract`` (the options), which the entry-point
    sweep test looks for."""
    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def entry(*args, **kwargs):
            try:
                arguments = signature.bind(*args, **kwargs).arguments
            except TypeError:
                return fn(*args, **kwargs)
            with model_guard(arguments.get(model_name), arguments.get(inputs_name), gradients=gradients, quiet=quiet,
                             name=inputs_name):
                return fn(*args, **kwargs)

        entry.model_contract = {"gradients": gradients, "quiet": quiet}
        return entry
    return wrap if fn is None else wrap(fn)


@contextlib.contextmanager
def eval_modes(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block; every submodule's training flag is restored after, even
    when an exception is raised."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def frozen_parameters(model: Callable) -> Iterator[None]:
    """Turns off ``requires_grad`` on the model's parameters, so no parameter gradient is ever
    computed, and restores every flag on exit, even when an exception is raised."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def check_output(out, n: int, *, any_rank: bool = False):
    """The model's output for ``n`` inputs, checked to hold one score (``[N]``) or one row of scores
    (``[N, outputs]``) per input (``any_rank``: any ``[N, ...]``). A model that returns no tensor (a
    tuple, a dict, a Hugging Face output) is to be wrapped: ``lambda x: model(x)[0]``."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model returned a {type(out).__name__}; fastattr needs one tensor [N] or [N, outputs]: "
                        "wrap the model to pick it, e.g. lambda x: model(x)[0] or lambda x: model(x).logits")
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n \
            or (not any_rank and out.dim() > 2):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return [N] or [N, outputs] for N inputs; got {shape} for N = {n}")
    return out


class ModelCallError(ValueError, RuntimeError):
    """The model could not run the inputs it was given: a ``ValueError`` naming them, and still the
    ``RuntimeError`` the model raised for code that catches that."""


def _raised_by_fastattr(error: BaseException) -> bool:
    """Whether ``error`` was raised by fastattr's own code (its innermost frame is in the package, not
    in the zoo's models, which are model code like any user's)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    path = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return path.startswith(_PACKAGE) and not path.startswith(_PACKAGE + "zoo")


_PACKAGE = __file__.rsplit("core", 1)[0]
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")


@contextlib.contextmanager
def model_errors(x: torch.Tensor) -> Iterator[None]:
    """Model code run on ``x`` in the block: an error from inside the model or torch (a wrong rank, a
    shape the first layer does not take: a ``RuntimeError``, or the ``ValueError`` some layers raise)
    becomes a :class:`ModelCallError` naming the inputs' shape, chained to it. Out-of-memory errors (CPU
    and CUDA) and fastattr's own errors pass as they are."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError) as e:
        if isinstance(e, ModelCallError) or _raised_by_fastattr(e) or any(k in str(e) for k in _OUT_OF_MEMORY):
            raise
        raise ModelCallError(f"the model could not run inputs of shape {tuple(x.shape)} ({str(e).splitlines()[0]}); "
                             "inputs must be a batch [N, ...] of what the model takes") from e


def run_model(model: Callable, x: torch.Tensor, *, any_rank: bool = True,
              named: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``model(x)`` under the contract: errors from inside the model as :func:`model_errors` says (naming the
    shape of ``named``, default ``x``: the caller's inputs when ``x`` is a probe or their baselines), the
    output checked by :func:`check_output`."""
    with model_errors(x if named is None else named):
        out = model(x)
    return check_output(out, x.shape[0], any_rank=any_rank)


def check_number(value, name: str, *, minimum: float = 0.0) -> float:
    """A finite real number ``>= minimum`` (numpy numbers too), as a float, or a ``ValueError`` naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def make_generator(seed) -> torch.Generator:
    """``seed`` as a CPU ``torch.Generator``: a generator as is, an int seed, or None (seed 0). Every
    random draw in fastattr comes from one, on the CPU, so results match on every device."""
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_))):
        return torch.Generator().manual_seed(0 if seed is None else int(seed))
    raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(seed).__name__}")


def example_draws(generator, batch: int, per: str = "input") -> Callable:
    """``draw(sampler, shape, **kw)`` for a batch of ``batch`` examples: ``sampler(shape, generator=g, **kw)``
    (``torch.rand``, ``torch.randn``) from one generator (:func:`make_generator` of ``generator``), or, given
    one seed or generator per example (a list or tuple of ``batch``), each example's ``shape[1:]`` from its
    own, as that example would be drawn alone: then a batch's draws do not depend on the examples beside it."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"generator must be one seed or generator, or one per {per} ({batch}), got "
                             f"{len(generator)}")
        gens = [make_generator(g) for g in generator]
        return lambda sampler, shape, **kw: torch.stack([sampler(shape[1:], generator=g, **kw) for g in gens])
    gen = make_generator(generator)
    return lambda sampler, shape, **kw: sampler(shape, generator=gen, **kw)
