"""The ``fastattr::distinct_copies`` custom op: SOP's masked copies of the distinct groups (You et al.,
"Sum-of-Parts Models", §3; SPEC §6), the backbone's inputs, in one call.

For bool group masks ``masks [B, G, P]`` over ``P`` patches and ``first [B, G]`` (:func:`first_equal_group`:
each group's first group of the same input with the same mask), the groups with ``first[b, i] = i`` are
the distinct ones, numbered example-major; distinct group ``(b, i)`` gives the copy

    ``copies[n, c, l] = x[b, c, l] · masks[b, i, unit_patch[l]]``   (``S_i ⊙ x``, the mask as 0/1, a product)

and ``slot[b, i]`` is the copy group ``i`` reads (its first equal group's). ``x`` is ``[B, C, L]``: the
channels ``C`` share each unit ``l``'s patch ``unit_patch[l]``. The half-dozen eager calls of the torch
formulation (:mod:`fastattr.reference.distinct_copies`: the numbering, two index selects and a product)
become one. Backends: reference, C++ (OpenMP over copies), Triton (the copies; the numbering in torch).
Not differentiable: SOP builds the copies this way without gradients only (with gradients every copy runs,
each carrying its group's straight-through mask gradient).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend
from ..reference.distinct_copies import distinct_copies as reference_copies, distinct_slots as reference_slots
from ._utils import (check_backend, check_tensor, eager_cpu, eager_without_compiler, in_compute, resolve, run_cpp,
                     triton_kernels)

__all__ = ["distinct_copies"]


def _check(x, masks, first, unit_patch) -> None:
    check_tensor(x, "x", floating=True, dim=3)
    check_tensor(masks, "masks", dtype=torch.bool, dim=3)
    check_tensor(first, "first", dtype=torch.int64, dim=2)
    check_tensor(unit_patch, "unit_patch", dtype=torch.int64, dim=1)
    b, g = masks.shape[:2]
    if x.shape[0] != b or tuple(first.shape) != (b, g):
        raise ValueError(f"x [B, C, L], masks [B, G, P] and first [B, G] must agree on B and G, got "
                         f"{tuple(x.shape)}, {tuple(masks.shape)} and {tuple(first.shape)}")
    if unit_patch.shape[0] != x.shape[2]:
        raise ValueError(f"unit_patch must give the patch of each of x's {x.shape[2]} units, got "
                         f"{unit_patch.shape[0]} entries")
    for name, t in (("masks", masks), ("first", first), ("unit_patch", unit_patch)):
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device ({x.device}), got {t.device}")


def _bad_first(count: int) -> ValueError:
    return ValueError(f"first must give each group a distinct group (first[b, j] = j) at or before it, as "
                      f"first_equal_group does: {count} entries do not")


def _bad_patches(count: int, p: int) -> ValueError:
    return ValueError(f"unit_patch must hold patches of masks (0 … {p - 1}): {count} entries are outside")


def _cpp(x, masks, first, unit_patch):
    b, g = first.shape
    first = first.contiguous()
    slot = torch.empty((b, g), dtype=torch.int64)
    rows = torch.empty(b * g, dtype=torch.int64)
    n = _backend.cpp_extension().distinct_slots(first.data_ptr(), slot.data_ptr(), rows.data_ptr(), b, g)
    if n < 0:
        raise _bad_first(-n)
    xc = in_compute(x)
    m, up = masks.contiguous(), unit_patch.contiguous()
    out = torch.empty((n,) + tuple(xc.shape[1:]), dtype=xc.dtype)
    bad = run_cpp("distinct_copies", xc.data_ptr(), m.data_ptr(), rows.data_ptr(), up.data_ptr(), out.data_ptr(), n,
                  g, xc.shape[1], xc.shape[2], m.shape[2], dtype=xc.dtype)
    if bad:
        raise _bad_patches(bad, m.shape[2])
    return out.to(x.dtype), slot


def _check_values(masks, first, unit_patch) -> None:
    """The checks the C++ kernels make, for the other backends."""
    g = first.shape[1]
    own = torch.arange(g, device=first.device)
    inside = (first >= 0) & (first <= own)
    pointed = first.clamp(0, g - 1)
    bad = int((~inside | (first.gather(1, pointed) != pointed)).sum())
    if bad:
        raise _bad_first(bad)
    bad = int(((unit_patch < 0) | (unit_patch >= masks.shape[2])).sum())
    if bad:
        raise _bad_patches(bad, masks.shape[2])


@torch.library.custom_op("fastattr::distinct_copies", mutates_args=())
def _distinct_copies_op(x: torch.Tensor, masks: torch.Tensor, first: torch.Tensor, unit_patch: torch.Tensor,
                        backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, masks, first, unit_patch)
    name = resolve(x, backend)
    if first.numel() == 0:
        return x.new_empty((0,) + tuple(x.shape[1:])), first.new_empty(first.shape)
    if name == "cpp":
        return _cpp(x, masks, first, unit_patch)
    _check_values(masks, first, unit_patch)
    if name == "reference":
        return reference_copies(x, masks, first, unit_patch)
    b, g = first.shape
    slot, rows = reference_slots(first)
    copies = triton_kernels("distinct_copies").distinct_copies(
        in_compute(x), masks.reshape(b * g, -1).contiguous(), rows, unit_patch.contiguous(), g)
    return copies.to(x.dtype), slot


@_distinct_copies_op.register_fake
def _(x, masks, first, unit_patch, backend):
    _check(x, masks, first, unit_patch)
    n = torch.library.get_ctx().new_dynamic_size()
    return x.new_empty((n,) + tuple(x.shape[1:])), first.new_empty(first.shape)


eager_without_compiler(_distinct_copies_op)


def distinct_copies(x: torch.Tensor, masks: torch.Tensor, first: torch.Tensor, unit_patch: torch.Tensor, *,
                    backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SOP's masked copies of the distinct groups (module docstring): ``(copies [N, C, L], slot [B, G])`` from
    ``x [B, C, L]`` (floating), bool ``masks [B, G, P]``, ``first [B, G]`` (int64, :func:`first_equal_group`
    of the masks) and ``unit_patch [L]`` (int64, each unit's patch). ``N`` is the number of distinct groups.

    Args:
        backend: ``"auto" | "reference" | "cpp" | "triton"``; None uses :func:`fastattr.get_backend`.

    Not differentiable (``x`` with gradients gives copies without). Example::

        >>> masks, rows, first = fastattr.ops.group_masks(logits, n_groups=8, kept=4)   # [B, 8, 16]
        >>> copies, slot = fastattr.ops.distinct_copies(x.view(b, 1, 64), masks, first, unit_patch)
    """
    _check(x, masks, first, unit_patch)
    if backend is not None:
        check_backend(backend)
    if x.requires_grad:
        x = x.detach()
    if first.numel() and eager_cpu(x, masks, first, unit_patch) and resolve(x, backend) == "cpp":
        return _cpp(x, masks, first, unit_patch)
    return _distinct_copies_op(x, masks, first, unit_patch, backend)
