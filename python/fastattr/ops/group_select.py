"""The ``fastattr::group_select`` custom op: SOP GroupSelect (You et al., "Sum-of-Parts Models", §3;
SPEC §6) in one call. For each example ``b`` and the features ``z[slot[b, g]]`` of its ``G`` groups:

    ``y[b, g] = W z + bias``          (the partial logits, class head ``W [C, h]``)
    ``s[b, c, g] = Q[c] · z``         (the scores; ``Q = (W_q' W) W_k' / √h`` folds the class queries
                                       and the key projection)
    ``p[b, c] = sparsemax(s[b, c])``  (over the groups)
    ``logits[b, c] = Σ_g p[b, c, g] y[b, g, c]``

``slot`` lets groups share a row of ``z`` (SOP runs the backbone once per distinct masked copy). The
dozen eager calls of the torch formulation (:mod:`fastattr.reference.group_select`: gather, two products,
sparsemax, the weighted sum) become one. Backends: reference, C++ (OpenMP over examples, the sparsemax
kernel's threshold), Triton. Differentiable in ``z``, ``weight``, ``bias`` and ``query``: the backward is the
chain rule through the sparsemax Jacobian, in torch on every backend.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..numerics import compute_dtype
from ..reference.group_select import group_select as reference_select
from ._utils import (check_backend, check_tensor, eager_cpu, eager_without_compiler, in_compute, resolve, run_cpp,
                     run_op, triton_kernels)

__all__ = ["group_select"]


def _check(z, slot, weight, bias, query) -> None:
    check_tensor(z, "z", floating=True, dim=2)
    check_tensor(slot, "slot", dtype=torch.int64, dim=2)
    check_tensor(weight, "weight", floating=True, dim=2)
    check_tensor(query, "query", floating=True, dim=2)
    h = z.shape[1]
    if weight.shape[1] != h or query.shape != weight.shape:
        raise ValueError(f"weight and query must both be [C, h] with h = {h} (z's width), got "
                         f"{tuple(weight.shape)} and {tuple(query.shape)}")
    if bias is not None:
        check_tensor(bias, "bias", floating=True, dim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must be [C] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    for name, t in (("slot", slot), ("weight", weight), ("bias", bias), ("query", query)):
        if t is not None and t.device != z.device:
            raise ValueError(f"{name} must be on z's device ({z.device}), got {t.device}")


def _bad_slots(count: int, n: int) -> ValueError:
    return ValueError(f"slot must index the rows of z (0 … {n - 1}): {count} entries are outside")


def _cast(z, weight, bias, query):
    """The tensors contiguous in ``z``'s compute dtype, as every backend computes."""
    dtype = compute_dtype(z.dtype)
    return [None if t is None else in_compute(t, dtype) for t in (z, weight, bias, query)]


def _cpp(z, slot, weight, bias, query):
    z, weight, bias, query = _cast(z, weight, bias, query)
    slot = slot if slot.is_contiguous() else slot.contiguous()
    (b, g), (c, h) = slot.shape, weight.shape
    p = torch.empty((b, c, g), dtype=z.dtype)
    y = torch.empty((b, g, c), dtype=z.dtype)
    logits = torch.empty((b, c), dtype=z.dtype)
    bad = run_cpp("group_select", z.data_ptr(), slot.data_ptr(), weight.data_ptr(),
                  0 if bias is None else bias.data_ptr(), query.data_ptr(), p.data_ptr(), y.data_ptr(),
                  logits.data_ptr(), b, z.shape[0], g, c, h, dtype=z.dtype)
    if bad:
        raise _bad_slots(bad, z.shape[0])
    return p, y, logits


@torch.library.custom_op("fastattr::group_select", mutates_args=())
def _group_select_op(z: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     query: torch.Tensor, backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(z, slot, weight, bias, query)
    name = resolve(z, backend)
    if slot.numel() == 0 or weight.shape[0] == 0:
        (b, g), c = slot.shape, weight.shape[0]
        return z.new_empty((b, c, g)), z.new_empty((b, g, c)), z.new_zeros((b, c))
    if name == "cpp":
        p, y, logits = _cpp(z, slot, weight, bias, query)
    else:
        bad = int(((slot < 0) | (slot >= z.shape[0])).sum())
        if bad:
            raise _bad_slots(bad, z.shape[0])
        if name == "reference":
            p, y, logits = reference_select(z, slot, weight, bias, query)
        else:
            zc, wc, bc, qc = _cast(z, weight, bias, query)
            p, y, logits = triton_kernels("group_select").group_select(zc, slot.contiguous(), wc, bc, qc)
    return p.to(z.dtype), y.to(z.dtype), logits.to(z.dtype)


@_group_select_op.register_fake
def _(z, slot, weight, bias, query, backend):
    _check(z, slot, weight, bias, query)
    (b, g), c = slot.shape, weight.shape[0]
    return z.new_empty((b, c, g)), z.new_empty((b, g, c)), z.new_empty((b, c))


def _setup(ctx, inputs, output):
    z, slot, weight, bias, query, _ = inputs
    p, y, _ = output
    ctx.dtypes = (z.dtype, weight.dtype, None if bias is None else bias.dtype, query.dtype)
    ctx.save_for_backward(z, slot, weight, query, p, y)


def _backward(ctx, dp, dy, dlogits):
    """The chain rule through ``logits = Σ_g p y``, the sparsemax Jacobian ``(g − mean_S g) 1_S`` and the two
    products, in torch, in the compute dtype of ``z`` as the forward (each gradient in its input's dtype)."""
    z, slot, weight, query, p, y = ctx.saved_tensors
    dtype = compute_dtype(z.dtype)
    z, weight, query, p, y = (t.to(dtype) for t in (z, weight, query, p, y))
    rows = z[slot]                                                                   # [B, G, h]
    dp = torch.zeros_like(p) if dp is None else dp.to(dtype)
    dy = torch.zeros_like(y) if dy is None else dy.to(dtype)
    if dlogits is not None:
        dy = dy + dlogits.to(dtype).unsqueeze(1) * p.transpose(1, 2)
        dp = dp + dlogits.to(dtype).unsqueeze(2) * y.transpose(1, 2)
    support = (p > 0).to(dtype)
    masked = dp * support
    ds = (masked - masked.sum(-1, keepdim=True) / support.sum(-1, keepdim=True).clamp_min(1)) * support
    drows = dy @ weight + torch.einsum("bcg,ch->bgh", ds, query)
    dz = torch.zeros_like(z).index_add_(0, slot.reshape(-1), drows.reshape(-1, z.shape[1]))
    dweight = torch.einsum("bgc,bgh->ch", dy, rows)
    dbias = None if ctx.dtypes[2] is None else dy.sum((0, 1)).to(ctx.dtypes[2])
    dquery = torch.einsum("bcg,bgh->ch", ds, rows)
    return dz.to(ctx.dtypes[0]), None, dweight.to(ctx.dtypes[1]), dbias, dquery.to(ctx.dtypes[3]), None


_group_select_op.register_autograd(_backward, setup_context=_setup)
eager_without_compiler(_group_select_op)


def group_select(z: torch.Tensor, slot: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 query: torch.Tensor, *, backend: Optional[str] = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SOP's GroupSelect (module docstring): ``(p [B, C, G], y [B, G, C], logits [B, C])`` from the features
    ``z [N, h]`` of the distinct copies, ``slot [B, G]`` (int64, the row of ``z`` each group reads), the class
    head ``weight [C, h]`` and ``bias [C]`` (or None), and the folded queries ``query [C, h]``.

    Args:
        backend: ``"auto" | "reference" | "cpp" | "triton"``; None uses :func:`fastattr.get_backend`.

    Kernel-level: a class whose scores hold NaN or +inf gets NaN weights and logit (as :func:`sparsemax`).

    Example::

        >>> p, y, logits = fastattr.ops.group_select(z, slot, head.weight, head.bias, query)
    """
    _check(z, slot, weight, bias, query)
    if backend is not None:
        check_backend(backend)
    if slot.numel() and eager_cpu(z, weight, bias, query) and resolve(z, backend) == "cpp":
        p, y, logits = _cpp(z, slot, weight, bias, query)
        return p.to(z.dtype), y.to(z.dtype), logits.to(z.dtype)
    return run_op(_group_select_op, z, slot, weight, bias, query, backend)
