"""The ``fastattr::group_gen`` custom op: SOP's GroupGen (You et al., "Sum-of-Parts Models", §3 and App. B;
SPEC §6) in one call. From patch vectors ``X [B, P, D]``:

    ``e = X W_pᵀ + b_p + pos``                    (patch embeddings ``[B, P, d]``)
    ``A_j = W_{q,j}ᵀ W_{k,j} / √d``               (head ``j``'s ``[d, d]`` blocks of ``W_q``, ``W_k [h·d, d]``)
    ``logits[b, j·P + p, q] = (e_p A_j) · e_q``   (``(W_q e)(W_k e)ᵀ / √d`` per head, ``[B, h·P, P]``)

and the groups :func:`~fastattr.ops.group_masks` takes from those logits (``masks``, ``rows``, ``first``).
The dozen eager calls of the torch formulation (:mod:`fastattr.reference.group_gen`: the projection, the
position, the folded bilinear form, two products, the selection) become one. Backends: reference, C++
(OpenMP over examples; the selection is group_masks' kernel), Triton (the logits; the selection is
group_masks' Triton kernels). Differentiable in the logits (the other outputs are masks and indices): the
backward is the chain rule through the two products and the projection, in torch on every backend.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..numerics import compute_dtype
from ..reference.group_gen import bilinear_forms, group_logits as reference_logits, patch_embeddings
from ._utils import (check_backend, check_tensor, eager_cpu, eager_without_compiler, in_compute, resolve, run_cpp,
                     run_op, triton_kernels)
from .group_masks import group_masks

__all__ = ["group_gen"]


def _check(patches, proj_weight, proj_bias, position, query_weight, key_weight, n_groups, kept) -> None:
    check_tensor(patches, "patches", floating=True, dim=3)
    for name, t in (("proj_weight", proj_weight), ("position", position), ("query_weight", query_weight),
                    ("key_weight", key_weight)):
        check_tensor(t, name, floating=True, dim=2)
    b, n, width = patches.shape
    d = proj_weight.shape[0]
    if n == 0 or d == 0:
        raise ValueError(f"patches must hold at least one patch and proj_weight one output, got shapes "
                         f"{tuple(patches.shape)} and {tuple(proj_weight.shape)}")
    if proj_weight.shape[1] != width:
        raise ValueError(f"proj_weight must be [d, D] with D = {width} (the patches' width), got "
                         f"{tuple(proj_weight.shape)}")
    if proj_bias is not None:
        check_tensor(proj_bias, "proj_bias", floating=True, dim=1)
        if proj_bias.shape[0] != d:
            raise ValueError(f"proj_bias must be [d] = [{d}], got {tuple(proj_bias.shape)}")
    if tuple(position.shape) != (n, d):
        raise ValueError(f"position must be [P, d] = [{n}, {d}], got {tuple(position.shape)}")
    if query_weight.shape != key_weight.shape or query_weight.shape[1] != d or query_weight.shape[0] % d \
            or query_weight.shape[0] == 0:
        raise ValueError(f"query_weight and key_weight must both be [h·d, d] with d = {d}, got "
                         f"{tuple(query_weight.shape)} and {tuple(key_weight.shape)}")
    rows = query_weight.shape[0] // d * n
    for name, value, most, what in (("n_groups", n_groups, rows, "candidate rows, heads × patches"),
                                    ("kept", kept, n, "patches")):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise ValueError(f"{name} must be an int in [1, {most}] (the {what}), got {value!r}")
    for name, t in (("proj_weight", proj_weight), ("proj_bias", proj_bias), ("position", position),
                    ("query_weight", query_weight), ("key_weight", key_weight)):
        if t is not None and t.device != patches.device:
            raise ValueError(f"{name} must be on the patches' device ({patches.device}), got {t.device}")


def _not_finite(count: int) -> ValueError:
    return ValueError(f"the GroupGen logits must be finite: {count} candidate row(s) hold NaN or ±inf "
                      "(non-finite patches or weights)")


def _cast(*tensors):
    """The tensors (None kept) contiguous in the patches' (the first's) compute dtype, as every backend computes."""
    dtype = compute_dtype(tensors[0].dtype)
    return [None if t is None else in_compute(t, dtype) for t in tensors]


def _cpp(patches, proj_weight, proj_bias, position, query_weight, key_weight, n_groups, kept):
    x, wp, bp, pos, wq, wk = _cast(patches, proj_weight, proj_bias, position, query_weight, key_weight)
    dtype = x.dtype
    (b, n, width), d = x.shape, wp.shape[0]
    h = wq.shape[0] // d
    logits = torch.empty((b, h * n, n), dtype=dtype)
    masks = torch.empty((b, n_groups, n), dtype=torch.bool)
    rows = torch.empty((b, n_groups), dtype=torch.int64)
    first = torch.empty((b, n_groups), dtype=torch.int64)
    bad = run_cpp("group_gen", x.data_ptr(), wp.data_ptr(), 0 if bp is None else bp.data_ptr(), pos.data_ptr(),
                  wq.data_ptr(), wk.data_ptr(), logits.data_ptr(), masks.data_ptr(), rows.data_ptr(),
                  first.data_ptr(), b, n, width, d, h, n_groups, kept, dtype=dtype)
    if bad:
        raise _not_finite(bad)
    return logits.to(patches.dtype), masks, rows, first


def _empty(patches, proj_weight, query_weight, n_groups):
    b, n = patches.shape[:2]
    h = query_weight.shape[0] // proj_weight.shape[0]
    return (patches.new_empty((b, h * n, n)), torch.empty((b, n_groups, n), dtype=torch.bool, device=patches.device),
            torch.empty((b, n_groups), dtype=torch.int64, device=patches.device),
            torch.empty((b, n_groups), dtype=torch.int64, device=patches.device))


@torch.library.custom_op("fastattr::group_gen", mutates_args=())
def _group_gen_op(patches: torch.Tensor, proj_weight: torch.Tensor, proj_bias: Optional[torch.Tensor],
                  position: torch.Tensor, query_weight: torch.Tensor, key_weight: torch.Tensor, n_groups: int,
                  kept: int, backend: Optional[str]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(patches, proj_weight, proj_bias, position, query_weight, key_weight, n_groups, kept)
    if patches.shape[0] == 0:
        return _empty(patches, proj_weight, query_weight, n_groups)
    name = resolve(patches, backend)
    if name == "cpp":
        return _cpp(patches, proj_weight, proj_bias, position, query_weight, key_weight, n_groups, kept)
    if name == "reference":   # the selection through group_masks' op, which checks the logits are finite
        logits = reference_logits(patches, proj_weight, proj_bias, position, query_weight, key_weight)
        return (logits.to(patches.dtype), *group_masks(logits.detach(), n_groups, kept, backend="reference"))
    x, wp, bp, pos, wq, wk = _cast(patches, proj_weight, proj_bias, position, query_weight, key_weight)
    logits = triton_kernels("group_gen").group_logits(x, wp, bp, pos, bilinear_forms(wq, wk, wp.shape[0]))
    masks, rows, first = group_masks(logits, n_groups, kept, backend="triton")
    return logits.to(patches.dtype), masks, rows, first


@_group_gen_op.register_fake
def _(patches, proj_weight, proj_bias, position, query_weight, key_weight, n_groups, kept, backend):
    _check(patches, proj_weight, proj_bias, position, query_weight, key_weight, n_groups, kept)
    return _empty(patches, proj_weight, query_weight, n_groups)


def _setup(ctx, inputs, output):
    patches, proj_weight, proj_bias, position, query_weight, key_weight = inputs[:6]
    ctx.has_bias = proj_bias is not None
    ctx.dtypes = [None if t is None else t.dtype for t in inputs[:6]]
    ctx.save_for_backward(patches, proj_weight, position, query_weight, key_weight,
                          proj_bias if proj_bias is not None else patches.new_empty(0))


def _backward(ctx, dlogits, dmasks, drows, dfirst):
    """With ``g_j = ∂/∂logits`` of head ``j``: ``∂e = Σ_j g_j e A_jᵀ + g_jᵀ e A_j``, ``∂A_j = Σ_b eᵀ g_j e``,
    ``∂W_{q,j} = W_{k,j} ∂A_jᵀ / √d``, ``∂W_{k,j} = W_{q,j} ∂A_j / √d``, then the projection's chain rule; in
    torch, in the compute dtype of ``patches`` (each gradient in its input's dtype), only those asked for."""
    patches, wp, pos, wq, wk, bp = ctx.saved_tensors
    need = ctx.needs_input_grad
    dtype = compute_dtype(patches.dtype)
    x, wp, pos, wq, wk = (t.to(dtype) for t in (patches, wp, pos, wq, wk))
    (b, n, _), d = x.shape, wp.shape[0]
    h = wq.shape[0] // d
    e = patch_embeddings(x, wp, bp.to(dtype) if ctx.has_bias else None, pos)
    qh, kh = wq.view(h, d, d), wk.view(h, d, d)
    g = dlogits.to(dtype).view(b, h, n, n)
    ge = torch.einsum("bjpq,bqd->bjpd", g, e)                                                  # g_j e
    grads = [None] * 6
    if any(need[:4]):
        A = bilinear_forms(wq, wk, d)                                                          # [h, d, d]
        gte = torch.einsum("bjpq,bpd->bjqd", g, e)                                             # g_jᵀ e
        de = torch.einsum("bjpl,jkl->bpk", ge, A) + torch.einsum("bjqk,jkl->bql", gte, A)
        grads[:4] = [de @ wp if need[0] else None, torch.einsum("bpk,bpi->ki", de, x) if need[1] else None,
                     de.sum((0, 1)) if need[2] and ctx.has_bias else None, de.sum(0) if need[3] else None]
    if need[4] or need[5]:
        dA = torch.einsum("bpk,bjpl->jkl", e, ge)
        grads[4] = (torch.bmm(kh, dA.transpose(1, 2)) / math.sqrt(d)).reshape(h * d, d) if need[4] else None
        grads[5] = (torch.bmm(qh, dA) / math.sqrt(d)).reshape(h * d, d) if need[5] else None
    return (*(None if g is None else g.to(t) for g, t in zip(grads, ctx.dtypes)), None, None, None)


_group_gen_op.register_autograd(_backward, setup_context=_setup)
eager_without_compiler(_group_gen_op)


def group_gen(patches: torch.Tensor, proj_weight: torch.Tensor, proj_bias: Optional[torch.Tensor],
              position: torch.Tensor, query_weight: torch.Tensor, key_weight: torch.Tensor, n_groups: int,
              kept: int, *, backend: Optional[str] = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SOP's GroupGen (module docstring): ``(logits [B, h·P, P], masks [B, G, P] bool, rows [B, G] int64,
    first [B, G] int64)`` from ``patches [B, P, D]``, the projection ``proj_weight [d, D]`` and ``proj_bias
    [d]`` (or None), ``position [P, d]`` and the heads' ``query_weight`` / ``key_weight [h·d, d]``; ``masks``,
    ``rows`` and ``first`` are :func:`~fastattr.ops.group_masks` of the logits with ``n_groups`` and ``kept``,
    ranked in the compute dtype (float32 for float16 / bfloat16 inputs, whose logits are returned rounded to
    their dtype).

    Args:
        backend: ``"auto" | "reference" | "cpp" | "triton"``; None uses :func:`fastattr.get_backend`.

    Example::

        >>> logits, masks, rows, first = fastattr.ops.group_gen(patches, proj.weight, proj.bias, position,
        ...                                                     wq.weight, wk.weight, n_groups=8, kept=4)
    """
    _check(patches, proj_weight, proj_bias, position, query_weight, key_weight, n_groups, kept)
    if backend is not None:
        check_backend(backend)
    args = (patches, proj_weight, proj_bias, position, query_weight, key_weight)
    if eager_cpu(*args) and resolve(patches, backend) == "cpp":
        return _cpp(*args, n_groups, kept)
    return run_op(_group_gen_op, *args, n_groups, kept, backend)
