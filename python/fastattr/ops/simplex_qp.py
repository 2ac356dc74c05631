"""The ``fastattr::simplex_qp`` custom op (SPEC §5.1): the batched convex QP behind AGG
(Mehrpooya et al., "Optimized aggregation of attributions", §4),

    ``ω* = argmin_{ω ≥ 0, Σω = 1} ωᵀGω + cᵀω``  per example, ``G [B, k, k]`` PSD, ``k ≤ 64``.

Backends: the reference (accelerated projected gradient to a KKT residual of 1e-10), C++ (an exact
active-set method, float64 inside, OpenMP over examples) and Triton (accelerated projected gradient
in float64 to the same residual, a few examples per program). The op has no backward.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..numerics import compute_dtype
from ..reference.simplex_qp import MAX_ITER, TOL, simplex_qp as reference_simplex_qp
from ._utils import check_backend, check_tensor, eager_without_compiler, resolve, run_cpp, run_op, triton_kernels

MAX_K = 64


def _check(G: torch.Tensor, c: Optional[torch.Tensor]) -> None:
    """Shapes and dtypes, run inside the custom op and its fake (a direct call is checked too)."""
    check_tensor(G, "G", floating=True)
    if G.dim() != 3 or G.shape[1] != G.shape[2]:
        raise ValueError(f"G must be a batch of square matrices [B, k, k], got shape {tuple(G.shape)}")
    if not 1 <= G.shape[-1] <= MAX_K:
        raise ValueError(f"G must have 1 <= k <= {MAX_K} (k = the number of weights), got k = {G.shape[-1]}")
    if c is not None:
        check_tensor(c, "c", floating=True)
        if tuple(c.shape) != (G.shape[0], G.shape[1]) or c.device != G.device:
            raise ValueError(f"c must be [B, k] = {(G.shape[0], G.shape[1])} on G's device ({G.device}), got "
                             f"{tuple(c.shape)} on {c.device}")


def _check_finite(G: torch.Tensor, c: Optional[torch.Tensor]) -> None:
    for name, t in (("G", G), ("c", c)):
        if t is not None and t.numel() and not bool(torch.isfinite(t.abs().amax())):  # amax propagates NaN
            raise ValueError(f"{name} must be finite (no NaN or inf)")


@torch.library.custom_op("fastattr::simplex_qp", mutates_args=())
def _simplex_qp_op(G: torch.Tensor, c: Optional[torch.Tensor], backend: Optional[str]) -> torch.Tensor:
    _check(G, c)
    _check_finite(G, c)
    B, k = G.shape[0], G.shape[-1]
    if B == 0:
        return G.new_empty((0, k))
    name = resolve(G, backend)
    if name == "reference":
        return reference_simplex_qp(G, c).contiguous()
    dtype = compute_dtype(G.dtype)
    Gc = G.to(dtype).contiguous()
    cc = None if c is None else c.to(dtype).contiguous()
    if name == "triton":
        out, failed = triton_kernels("simplex_qp").simplex_qp(Gc, cc, TOL, MAX_ITER)
    else:
        out = torch.empty((B, k), dtype=dtype, device=G.device)
        failed = run_cpp("simplex_qp", Gc.data_ptr(), 0 if cc is None else cc.data_ptr(), out.data_ptr(), B, k,
                         dtype=dtype)
    if failed:
        warnings.warn(f"simplex_qp ({name}): {failed} of {B} examples hit the iteration cap before the KKT "
                      "conditions held", RuntimeWarning, stacklevel=2)
    return out.to(G.dtype)


@_simplex_qp_op.register_fake
def _(G, c, backend):
    _check(G, c)
    return G.new_empty((G.shape[0], G.shape[-1]))


def _setup(ctx, inputs, output):
    pass


def _no_backward(ctx, grad):
    raise RuntimeError("fastattr.ops.simplex_qp has no backward (ω* is a piecewise-smooth function of G and c); "
                       "detach G and c, e.g. simplex_qp(G.detach())")


_simplex_qp_op.register_autograd(_no_backward, setup_context=_setup)
eager_without_compiler(_simplex_qp_op)


def simplex_qp(G: torch.Tensor, c: Optional[torch.Tensor] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    """Per example, the weights ``ω* = argmin_{ω ≥ 0, Σ ω = 1} ωᵀGω + cᵀω`` (the AGG aggregation
    weights of Mehrpooya et al., "Optimized aggregation of attributions", §4: ``G = E[ΓᵀΓ]``).

    Args:
        G: ``[B, k, k]`` symmetric positive semi-definite, ``1 ≤ k ≤ 64`` (only the symmetric part
            ``(G + Gᵀ)/2`` matters; PSD is not checked). float32/float64 (fp16/bf16 via float32);
            every backend computes in float64.
        c: optional linear term ``[B, k]``.
        backend: ``"auto" | "reference" | "cpp" | "triton"``; None uses :func:`fastattr.get_backend`.

    Returns ``ω`` ``[B, k]`` in ``G``'s dtype, on the simplex. The reference and Triton stop at a KKT
    residual ``‖ω − proj_Δ(ω − ∇f(ω)/L)‖_∞ ≤ 1e-10`` (``∇f = 2Gω + c``, ``L = 2λ_max(G)``); the
    C++ active-set method is exact. Where the optimum is not unique (rank-deficient ``G``,
    duplicated methods) the backends agree on the objective, not necessarily on ``ω``.
    **Convention:** ``G = 0`` gives the uniform weights over ``argmin c`` (all ``k`` without ``c``).
    ``G`` and ``c`` must be finite. Not differentiable (backward raises).

    Example::

        >>> G = Gamma.mT @ Gamma / Gamma.shape[1]          # Gamma [B, m, k]
        >>> w = fastattr.ops.simplex_qp(G)                 # [B, k], w >= 0, w.sum(-1) == 1
    """
    check_tensor(G, "G", floating=True)
    if c is not None:
        check_tensor(c, "c", floating=True)
    _check(G, c)
    if backend is not None:
        check_backend(backend)
    return run_op(_simplex_qp_op, G, c, backend, reference=False)
