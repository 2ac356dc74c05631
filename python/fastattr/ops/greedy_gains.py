"""The ``fastattr::greedy_gains`` custom op (SPEC §7; SEA-NN, Manupriya et al., "Improving attribution
methods by learning submodular functions", §3.2 and Algorithm 1): for a batch of deep submodular functions
``f = W_L g(… g(W_2 g(z₁) + b_2) …) + b_L`` (weights ≥ 0, ``g`` = sqrt or log1p) at the first-layer state
``z₁(A) = W_1 1_A + b_1``, the marginal gains of the candidates

    ``f(v | A) = f(z₁(A) + W_1[:, v]) − f(z₁(A))``   (the rank-1 first-layer update; 0 for ``v ∈ A``).

The fast backends propagate the gain as a difference, ``d_l = g(z_l + W_l d_{l−1}) − g(z_l)`` with
``g(z + e) − g(z) = e / (√(z + e) + √z)`` (sqrt) or ``log1p(e / (1 + z))``, so no large ``f`` is subtracted
from another: every term is ≥ 0 and the gain keeps the working precision. Backends: the reference
(float64, forward and subtract), C++ (per DSF and block of four candidates, OpenMP) and Triton (the first
two layers fused; the small rest in torch). Not differentiable (the greedy selection needs no gradient).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..numerics import compute_dtype
from ..reference.greedy_gains import ACTIVATIONS, activation, greedy_gains as reference_gains, lazy
from ._utils import check_tensor, eager_without_compiler, resolve, run_cpp, run_op, triton_kernels


def _check(z1, columns, weights, biases, selected, candidates, activation_name, bounds=None) -> None:
    check_tensor(z1, "z1", floating=True, dim=2)
    check_tensor(columns, "columns", floating=True, dim=3)
    batch, h1 = z1.shape
    if columns.shape[0] != batch or columns.shape[2] != h1:
        raise ValueError(f"columns must be [B, n, h1] = [{batch}, n, {h1}], got {tuple(columns.shape)}")
    n = columns.shape[1]
    if len(weights) < 1 or len(weights) != len(biases):
        raise ValueError(f"weights and biases must be lists of the same length >= 1 (the layers after the first), "
                         f"got {len(weights)} and {len(biases)}")
    width = h1
    for i, (W, b) in enumerate(zip(weights, biases)):
        check_tensor(W, f"weights[{i}]", floating=True, dim=3)
        check_tensor(b, f"biases[{i}]", floating=True, dim=2)
        if W.shape[0] != batch or W.shape[1] != width or b.shape != (batch, W.shape[2]):
            raise ValueError(f"layer {i + 2} must be weights [B, {width}, h] and biases [B, h] with B = {batch}, "
                             f"got {tuple(W.shape)} and {tuple(b.shape)}")
        width = W.shape[2]
    if width != 1:
        raise ValueError(f"the last layer must have one output, got {width}")
    check_tensor(selected, "selected", dtype=torch.bool, dim=2)
    if selected.shape != (batch, n):
        raise ValueError(f"selected must be [B, n] = [{batch}, {n}], got {tuple(selected.shape)}")
    if candidates is not None:
        check_tensor(candidates, "candidates", dtype=torch.int64, dim=2)
        if candidates.shape[0] != batch:
            raise ValueError(f"candidates must be [B, K] with B = {batch}, got {tuple(candidates.shape)}")
        if candidates.numel() and (int(candidates.min()) < 0 or int(candidates.max()) >= n):
            raise ValueError(f"candidates must be indices in [0, {n}), got values in "
                             f"[{int(candidates.min())}, {int(candidates.max())}]")
    if bounds is not None:
        check_tensor(bounds, "bounds", floating=True, dim=2)
        if candidates is None or bounds.shape != candidates.shape:
            raise ValueError(f"bounds must come with candidates, one per candidate [B, K], got {tuple(bounds.shape)}"
                             f"{'' if candidates is None else ' for candidates ' + str(tuple(candidates.shape))}")
    if activation_name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation_name!r}")
    for name, t in (("columns", columns), ("selected", selected), ("candidates", candidates), ("bounds", bounds),
                    *((f"weights[{i}]", w) for i, w in enumerate(weights)),
                    *((f"biases[{i}]", b) for i, b in enumerate(biases))):
        if t is not None and t.device != z1.device:
            raise ValueError(f"{name} must be on z1's device ({z1.device}), got {t.device}")


def hidden_states(z1: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                  kind: str) -> list[torch.Tensor]:
    """The pre-activations ``[z₁, z₂, …, z_{L−1}]`` ``[B, h_l]`` of the hidden layers at the state ``z1``."""
    states = [z1]
    for W, b in zip(weights[:-1], biases[:-1]):
        states.append(torch.baddbmm(b.unsqueeze(1), activation(states[-1], kind).unsqueeze(1), W).squeeze(1))
    return states


def _difference(z: torch.Tensor, e: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "sqrt":
        s = torch.sqrt(z + e) + torch.sqrt(z)
        return torch.where(s > 0, e / torch.where(s > 0, s, 1.0), 0.0)
    return torch.log1p(e / (1 + z))


def _triton_gains(z1, columns, weights, biases, candidates, kind):
    states = hidden_states(z1, weights, biases, kind)
    last = len(weights) == 1
    d = triton_kernels("greedy_gains").first_two_layers(
        z1, columns, candidates, weights[0].contiguous(), states[1] if not last else z1, ACTIVATIONS.index(kind), last)
    for i, W in enumerate(weights[1:], start=1):
        e = torch.matmul(d, W)
        d = e if i == len(weights) - 1 else _difference(states[i + 1].unsqueeze(1), e, kind)
    return d[..., 0]


@torch.library.custom_op("fastattr::greedy_gains", mutates_args=())
def _greedy_gains_op(z1: torch.Tensor, columns: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                     selected: torch.Tensor, candidates: Optional[torch.Tensor], bounds: Optional[torch.Tensor],
                     activation_name: str, backend: Optional[str]) -> torch.Tensor:
    _check(z1, columns, weights, biases, selected, candidates, activation_name, bounds)
    name = resolve(z1, backend)
    dtype = compute_dtype(z1.dtype)
    z, cols = z1.to(dtype).contiguous(), columns.to(dtype).contiguous()
    ws = [w.to(dtype).contiguous() for w in weights]
    bs = [b.to(dtype).contiguous() for b in biases]
    cand = None if candidates is None else candidates.contiguous()
    bnd = None if bounds is None else bounds.to(dtype).contiguous()
    if name == "reference":
        gains = reference_gains(z, cols, ws, bs, selected, cand, activation_name, bnd)
    elif name == "triton":  # every candidate evaluated, then the lazy rule applied to the result
        gains = _triton_gains(z, cols, ws, bs, cand, activation_name)
        picked = selected if cand is None else torch.gather(selected, 1, cand)
        gains = gains.masked_fill(picked, 0.0)
        gains = gains if bnd is None else lazy(gains, bnd)
    else:
        batch, n, h1 = cols.shape
        k = n if cand is None else cand.shape[1]
        gains = torch.empty((batch, k), dtype=dtype)
        if gains.numel():
            layers = torch.tensor([t.data_ptr() for pair in zip(ws, bs) for t in pair], dtype=torch.int64)
            dims = torch.tensor([h1] + [w.shape[2] for w in ws], dtype=torch.int64)
            sel = selected.contiguous()
            run_cpp("greedy_gains", z.data_ptr(), cols.data_ptr(), layers.data_ptr(), dims.data_ptr(), len(ws),
                    sel.data_ptr(), 0 if cand is None else cand.data_ptr(), 0 if bnd is None else bnd.data_ptr(),
                    gains.data_ptr(), batch, n, k,
                    ACTIVATIONS.index(activation_name), dtype=dtype)
    return gains.to(z1.dtype).contiguous()


@_greedy_gains_op.register_fake
def _(z1, columns, weights, biases, selected, candidates, bounds, activation_name, backend):
    _check(z1, columns, weights, biases, selected, candidates, activation_name, bounds)
    k = columns.shape[1] if candidates is None else candidates.shape[1]
    return z1.new_empty((z1.shape[0], k))


eager_without_compiler(_greedy_gains_op)


def greedy_gains(z1: torch.Tensor, columns: torch.Tensor, weights: Sequence[torch.Tensor],
                 biases: Sequence[torch.Tensor], selected: torch.Tensor, candidates: Optional[torch.Tensor] = None, *,
                 bounds: Optional[torch.Tensor] = None, activation: str = "sqrt",
                 backend: Optional[str] = None) -> torch.Tensor:
    """Marginal gains ``f(v | A)`` (module docstring) ``[B, K]`` of a batch of DSFs: first-layer state ``z1``
    ``[B, h1]`` (``W_1 1_A + b_1``), the first layer's columns as rows ``columns`` ``[B, n, h1]``, the later
    layers ``u ↦ u W_l + b_l`` as ``weights`` ``[B, h_{l−1}, h_l]`` and ``biases`` ``[B, h_l]`` (the last with one
    output), the set
    ``A`` as ``selected`` ``[B, n]`` (bool), and the candidates ``[B, K]`` (int64; all ``n`` when None).
    Lazy evaluation with ``bounds`` ``[B, K]`` (upper bounds of the candidates' gains, e.g. their gains at a
    subset of ``A``, each row sorted best first): candidates are taken in chunks of 32 while the chunk's first
    bound is not below the best gain found, the others keep their bounds (below that best gain, so the
    argmax is exact); every backend returns the same values. Kernel-level: weights and states are assumed
    ≥ 0 (a DSF's); NaN propagates.

    Example::

        >>> gains = fastattr.ops.greedy_gains(z1, columns, [W2, W3, W4], [b2, b3, b4], selected)   # [B, n]
    """
    return run_op(_greedy_gains_op, z1, columns, list(weights), list(biases), selected, candidates, bounds,
                  activation, backend, reference=False)
