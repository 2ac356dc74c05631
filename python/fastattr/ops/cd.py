"""The contextual-decomposition β-only bias split as a custom op (SPEC §4.2; Singh et al. 2019).

``fastattr::cd_bias_split(y, bias, n_ref, relu)``: ``y`` stacks ``n_ref`` reference rows
``z_b = W a_b`` and ``n_ref·K`` mask rows ``u = W β`` (``[n_ref·(1+K), C, *positions]``, pre-bias);
returns the next layer's stacked rows ``[z + b ; u + b (|u|+ε)/(|u|+|z−u|+2ε)]`` (ReLU'd when
``relu``) — the ordinary activation and CD's relevant part in one pass, without propagating γ.
Custom op with a fake kernel and autograd (the VJP is elementwise torch, differentiable again),
dispatched to cpp / triton / reference. Kernel semantics: NaN propagates.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..numerics import compute_dtype
from ..reference import cd as reference_cd
from ._utils import check_tensor, eager_without_compiler, resolve, rows, run_cpp, run_op, triton_kernels


def _check(y: torch.Tensor, bias: torch.Tensor, n_ref: int) -> int:
    check_tensor(y, "y", floating=True)
    check_tensor(bias, "bias", floating=True)
    if y.dim() < 2:
        raise ValueError(f"y must be [rows, channels, ...], got shape {tuple(y.shape)}")
    if n_ref < 1 or y.shape[0] % n_ref or y.shape[0] < n_ref:
        raise ValueError(f"y has {y.shape[0]} rows, not a multiple n_ref·(1+K) of n_ref={n_ref}")
    if bias.dim() != 1 or bias.shape[0] != y.shape[1]:
        raise ValueError(f"bias must be [{y.shape[1]}] (one per channel), got {tuple(bias.shape)}")
    return y.shape[0] // n_ref - 1


@torch.library.custom_op("fastattr::cd_bias_split", mutates_args=())
def _cd_bias_split_op(y: torch.Tensor, bias: torch.Tensor, n_ref: int, relu: bool,
                      backend: Optional[str]) -> torch.Tensor:
    k = _check(y, bias, n_ref)
    name = resolve(y, backend)
    if name == "reference" or k == 0 or y.numel() == 0:
        return reference_cd.cd_bias_split(y, bias, n_ref, relu).contiguous()
    channels = y.shape[1]
    positions = y[0, 0].numel()
    if name == "triton":
        out = triton_kernels("cd").cd_bias_split(rows(y, y.dtype), bias.to(y.dtype).contiguous(), n_ref, k,
                                                 channels, positions, relu)
        return out.reshape(y.shape)
    y2 = rows(y)
    b = bias.to(y2.dtype).contiguous()
    out = torch.empty_like(y2)
    run_cpp("cd_bias_split", y2.data_ptr(), b.data_ptr(), out.data_ptr(), n_ref, k, channels, positions, relu,
            dtype=y2.dtype)
    return out.reshape(y.shape).to(y.dtype)


@_cd_bias_split_op.register_fake
def _(y, bias, n_ref, relu, backend):
    _check(y, bias, n_ref)
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    y, bias, ctx.n_ref, ctx.relu, _ = inputs
    ctx.save_for_backward(y, bias, output)


def _vjp(ctx, grad):
    """``∂β'/∂u = 1 + b (sgn(u) q + sgn(z−u) p)/s²``, ``∂β'/∂z = −b sgn(z−u) p/s²``, ``∂β'/∂b = p/s``
    with ``p = |u|+ε``, ``q = |z−u|+ε``, ``s = p+q``; reference rows: ``∂(z+b)`` = identity."""
    y, bias, out = ctx.saved_tensors
    n_ref = ctx.n_ref
    compute = compute_dtype(y.dtype)
    g = grad.to(compute)
    if ctx.relu:
        g = g * (out > 0)
    b = bias.to(compute).reshape((1, -1) + (1,) * (y.dim() - 2))
    yc = y.to(compute)
    ref, u = yc[:n_ref], yc[n_ref:]
    k = u.shape[0] // n_ref
    z = ref.repeat_interleave(k, 0)
    p, q = u.abs() + reference_cd.EPS, (z - u).abs() + reference_cd.EPS
    s2 = (p + q) ** 2
    g_ref, g_u = g[:n_ref], g[n_ref:]
    grad_u = g_u * (1 + b * (torch.sign(u) * q + torch.sign(z - u) * p) / s2)
    grad_z = (g_u * (-b * torch.sign(z - u) * p / s2)).reshape((n_ref, k) + tuple(u.shape[1:])).sum(1)
    grad_y = torch.cat([g_ref + grad_z, grad_u]).to(y.dtype)
    reduce = [0] + list(range(2, y.dim()))
    grad_b = g_ref.sum(reduce) + (g_u * (p / (p + q))).sum(reduce)
    return grad_y, grad_b.to(bias.dtype), None, None, None


_cd_bias_split_op.register_autograd(_vjp, setup_context=_setup)
eager_without_compiler(_cd_bias_split_op)


def cd_bias_split(y: torch.Tensor, bias: torch.Tensor, n_ref: int, relu: bool = False, *,
                  backend: Optional[str] = None) -> torch.Tensor:
    """CD's linear-layer rule for stacked rows ``[z ; u]`` (see module docstring).

    Args:
        y: ``[n_ref·(1+K), C, *positions]`` pre-bias outputs of a linear / conv / affine-BN layer
           applied to the stacked ``[a ; β]`` (reference activations first, then K rows per reference).
        bias: ``[C]``.
        n_ref: number of reference rows B.
        relu: apply ReLU to the result (fuses a following ReLU layer).
    Returns:
        ``[n_ref·(1+K), C, *positions]``: ``a' = z + b`` rows, then ``β'`` rows.
    """
    return run_op(_cd_bias_split_op, y, bias, int(n_ref), bool(relu), backend)
