"""The ``fastattr::perturb_by_rank`` custom op (SPEC §3.1): ranked insertion / deletion inputs.

``out[k·B + b] = x_b`` on the features ranked in the top ``n_k`` and ``x'_b`` elsewhere
(``insert=True``), or the reverse (deletion), written for a whole chunk of steps in one pass from
``(x, x', rank map, counts)`` with no mask tensors. A feature is one element of the rank map: a map
of ``prod(x.shape[2:])`` features is shared by all channels; a map of ``x[0].numel()`` features
is per element.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference.perturb_by_rank import perturb_by_rank as reference_perturb_by_rank
from ._utils import check_tensor, eager_without_compiler, resolve, rows, run_cpp, run_op, triton_kernels


def _check(x: torch.Tensor, baseline: torch.Tensor, rank: torch.Tensor, counts: torch.Tensor) -> None:
    """The op's argument checks, run inside the custom op: the C++ kernel reads ``rank`` and
    ``counts`` as int64 through raw pointers, so a direct ``torch.ops.fastattr.perturb_by_rank``
    call is checked too."""
    check_tensor(x, "x", floating=True)
    if x.dim() < 2:
        raise ValueError(f"x must be [B, ...] with at least 2 dims, got shape {tuple(x.shape)}")
    check_tensor(baseline, "baseline")
    if baseline.shape != x.shape or baseline.dtype != x.dtype:
        raise ValueError(f"baseline must match x ({x.dtype} {tuple(x.shape)}), got {baseline.dtype} "
                         f"{tuple(baseline.shape)}")
    check_tensor(rank, "rank")
    per_element, per_pixel = x[0].numel(), x[0, 0].numel()
    if rank.dtype != torch.int64 or rank.dim() != 2 or rank.shape[0] != x.shape[0] \
            or rank.shape[1] not in (per_element, per_pixel):
        raise ValueError(f"rank must be an int64 [B, F] tensor with B = {x.shape[0]} and F = {per_pixel} "
                         f"(channel-shared) or {per_element} (per element), got {rank.dtype} {tuple(rank.shape)}")
    check_tensor(counts, "counts")
    if counts.dtype != torch.int64 or counts.dim() != 1:
        raise ValueError(f"counts must be a 1-D int64 tensor, got {counts.dtype} {tuple(counts.shape)}")
    if rank.device != x.device or counts.device != x.device or baseline.device != x.device:
        raise ValueError(f"x, baseline, rank and counts must be on one device, got {x.device}, "
                         f"{baseline.device}, {rank.device}, {counts.device}")


def _layout(x: torch.Tensor, rank: torch.Tensor) -> tuple[int, int, int]:
    batch, features = x.shape[0], rank.shape[1]
    return batch, x[0].numel() // max(features, 1), features


@torch.library.custom_op("fastattr::perturb_by_rank", mutates_args=())
def _perturb_by_rank_op(x: torch.Tensor, baseline: torch.Tensor, rank: torch.Tensor, counts: torch.Tensor,
                        insert: bool, backend: Optional[str]) -> torch.Tensor:
    _check(x, baseline, rank, counts)
    batch, channels, features = _layout(x, rank)
    out_shape = (counts.shape[0] * batch,) + tuple(x.shape[1:])
    name = resolve(x, backend)
    x3 = x.reshape(batch, channels, features)
    b3 = baseline.reshape(batch, channels, features)
    if name == "reference":
        return reference_perturb_by_rank(x3, b3, rank, counts, insert).reshape(out_shape).contiguous()
    r, c = rank.contiguous(), counts.contiguous()
    if name == "triton":
        return triton_kernels("perturb_by_rank").perturb_by_rank(x3.contiguous(), b3.contiguous(), r, c,
                                                                 insert).reshape(out_shape)
    xc, bc = rows(x3).view(batch, channels, features), rows(b3).view(batch, channels, features)
    out = torch.empty((counts.shape[0] * batch, channels, features), dtype=xc.dtype, device=x.device)
    if out.numel():
        run_cpp("perturb_by_rank", xc.data_ptr(), bc.data_ptr(), r.data_ptr(), c.data_ptr(), out.data_ptr(),
                counts.shape[0], batch, channels, features, insert, dtype=xc.dtype)
    return out.to(x.dtype).reshape(out_shape)


@_perturb_by_rank_op.register_fake
def _(x, baseline, rank, counts, insert, backend):
    _check(x, baseline, rank, counts)
    return x.new_empty((counts.shape[0] * x.shape[0],) + tuple(x.shape[1:]))


def _setup(ctx, inputs, output):
    x, baseline, rank, counts, ctx.insert, _ = inputs
    ctx.shape = x.shape
    ctx.save_for_backward(rank, counts)


def _vjp(ctx, grad):
    # Only the backward materialises the masks: grad_x = Σ_k g_k ⊙ m_k, grad_x' = Σ_k g_k ⊙ (1 − m_k).
    rank, counts = ctx.saved_tensors
    batch, channels, features = ctx.shape[0], grad[0].numel() // rank.shape[1], rank.shape[1]
    g = grad.reshape(counts.shape[0], batch, channels, features)
    top = rank.unsqueeze(0).unsqueeze(2) < counts.view(-1, 1, 1, 1)
    keep = top if ctx.insert else ~top
    grad_x = torch.where(keep, g, torch.zeros_like(g)).sum(0).reshape(ctx.shape)
    grad_base = torch.where(keep, torch.zeros_like(g), g).sum(0).reshape(ctx.shape)
    return grad_x, grad_base, None, None, None, None


_perturb_by_rank_op.register_autograd(_vjp, setup_context=_setup)
eager_without_compiler(_perturb_by_rank_op)


def perturb_by_rank(x: torch.Tensor, baseline: torch.Tensor, rank: torch.Tensor, counts: torch.Tensor, *,
                    insert: bool, backend: Optional[str] = None) -> torch.Tensor:
    """Ranked perturbations for a chunk of steps, step-major: ``[K·B, ...]``.

    Args:
        x: ``[B, ...]`` inputs; baseline: same shape (or broadcastable to it).
        rank: ``[B, F]`` int64, the position of each feature in the ranking (0 = most important);
            ``F = prod(x.shape[2:])`` (channel-shared features) or ``x[0].numel()`` (per element).
        counts: ``[K]`` int64 numbers of top features to insert (``insert=True``) or delete.
    Example::

        >>> rank = fastattr.core.rank_features(attr.flatten(1))
        >>> chunk = perturb_by_rank(x, torch.zeros_like(x), rank, torch.tensor([0, 8, 16]), insert=False)
    """
    check_tensor(x, "x", floating=True)
    check_tensor(baseline, "baseline")
    try:
        baseline = torch.broadcast_to(baseline.to(x.dtype), x.shape)
    except RuntimeError:
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to x {tuple(x.shape)}") from None
    check_tensor(counts, "counts")
    return run_op(_perturb_by_rank_op, x, baseline, rank, counts.to(x.device), bool(insert), backend)
