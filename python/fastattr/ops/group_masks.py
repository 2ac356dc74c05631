"""The ``fastattr::group_masks`` custom op: SOP GroupGen's group selection (You et al., "Sum-of-Parts
Models", §3 and App. B; SPEC §6).

From patch-attention logits ``z [B, R, n]`` (``R`` candidate rows, one per query patch and head, over
``n`` patches): rank the rows by the peak of their sparsemax ``max_j sparsemax(z_r)_j = −τ_r`` (``τ_r``
relative to the row max), then by ``max_j z_rj``, then by index; keep the first ``G``; binarise each
kept row to its ``K`` largest logits (ties by index); and give each kept group the first kept group with
the same mask (the groups whose masked copies are one input). One pass per example instead of the
dozen sorts, gathers and scatters of the torch formulation (:mod:`fastattr.reference.group_masks`).
Backends: reference, C++ (the sparsemax kernel's threshold, so the peaks have its bits; OpenMP over
examples), Triton (the peaks and ranks by comparison counts). Not differentiable (the outputs are
indices and masks; SOP's straight-through gradient takes the attention weights of ``rows``).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference.group_masks import first_equal_group, group_masks as reference_masks
from ._utils import (check_backend, check_tensor, eager_cpu, eager_without_compiler, in_compute, resolve, run_cpp,
                     triton_kernels)

__all__ = ["first_equal_group", "group_masks"]


def _check(logits: torch.Tensor, n_groups: int, kept: int) -> None:
    check_tensor(logits, "logits", floating=True, dim=3)
    if logits.shape[1] == 0 or logits.shape[2] == 0:
        raise ValueError(f"logits must hold at least one candidate row of at least one entry, got shape "
                         f"{tuple(logits.shape)}")
    for name, value, most, what in (("n_groups", n_groups, logits.shape[1], "candidate rows"),
                                    ("kept", kept, logits.shape[2], "entries per row")):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise ValueError(f"{name} must be an int in [1, {most}] (the logits' {what}), got {value!r}")


def _not_finite(count: int) -> ValueError:
    return ValueError(f"logits must be finite: {count} candidate row(s) hold NaN or ±inf")


def _check_finite(z: torch.Tensor) -> None:
    bad = int((~torch.isfinite(z)).any(-1).sum())
    if bad:
        raise _not_finite(bad)


def _cpp(logits: torch.Tensor, n_groups: int, kept: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z = in_compute(logits)
    b, r, n = z.shape
    masks = torch.empty((b, n_groups, n), dtype=torch.bool)
    rows = torch.empty((b, n_groups), dtype=torch.int64)
    first = torch.empty((b, n_groups), dtype=torch.int64)
    bad = run_cpp("group_masks", z.data_ptr(), masks.data_ptr(), rows.data_ptr(), first.data_ptr(), b, r, n,
                  n_groups, kept, dtype=z.dtype)
    if bad:
        raise _not_finite(bad)
    return masks, rows, first


@torch.library.custom_op("fastattr::group_masks", mutates_args=())
def _group_masks_op(logits: torch.Tensor, n_groups: int, kept: int,
                    backend: Optional[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(logits, n_groups, kept)
    if logits.shape[0] == 0:
        b, _, n = logits.shape
        return (torch.empty((0, n_groups, n), dtype=torch.bool, device=logits.device),
                torch.empty((0, n_groups), dtype=torch.int64, device=logits.device),
                torch.empty((0, n_groups), dtype=torch.int64, device=logits.device))
    name = resolve(logits, backend)
    if name == "cpp":
        return _cpp(logits, n_groups, kept)
    _check_finite(logits)
    if name == "reference":
        return reference_masks(logits, n_groups, kept)
    masks, rows = triton_kernels("group_masks").group_masks(in_compute(logits), n_groups, kept)
    return masks, rows, first_equal_group(masks)


@_group_masks_op.register_fake
def _(logits, n_groups, kept, backend):
    _check(logits, n_groups, kept)
    b, _, n = logits.shape
    return (logits.new_empty((b, n_groups, n), dtype=torch.bool), logits.new_empty((b, n_groups), dtype=torch.int64),
            logits.new_empty((b, n_groups), dtype=torch.int64))


eager_without_compiler(_group_masks_op)


def group_masks(logits: torch.Tensor, n_groups: int, kept: int, *,
                backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SOP's groups from patch-attention logits ``[B, R, n]`` (module docstring): ``(masks [B, G, n] bool,
    rows [B, G] int64, first [B, G] int64)``, the ``G = n_groups`` rows of largest sparsemax peak best first
    (ties: larger max logit, then lower index), each as the mask of its ``kept`` largest logits (ties by
    index), and for each group the first group with the same mask (:func:`first_equal_group`). Ties are
    those of the computed peaks: each backend sums a row's support in its own order, so two rows holding the
    same values in different orders can get peaks one rounding apart (and then rank by them, not by index).

    Args:
        logits: finite floating ``[B, R, n]`` (fp16/bf16 ranked in float32); not differentiated.
        n_groups: ``G`` in ``[1, R]``; kept: ``K`` in ``[1, n]``.
        backend: ``"auto" | "reference" | "cpp" | "triton"``; None uses :func:`fastattr.get_backend`.

    Example::

        >>> masks, rows, first = fastattr.ops.group_masks(torch.randn(2, 16, 16), n_groups=8, kept=4)
    """
    _check(logits, n_groups, kept)
    if backend is not None:
        check_backend(backend)
    if logits.requires_grad:
        logits = logits.detach()
    if eager_cpu(logits) and resolve(logits, backend) == "cpp":
        return _cpp(logits, n_groups, kept)
    return _group_masks_op(logits, n_groups, kept, backend)
