"""``fastattr bench agg``: the AGG aggregation QP (SPEC §5.1; Mehrpooya et al., "Optimized
aggregation of attributions", §4) ``min_{ω ∈ Δ_k} ωᵀGω`` for a batch of ``G``, fastattr's
``simplex_qp`` against its reference and against what the paper's released code does: one cvxpy
``Problem`` per example, solved with cvxpy's default solver."""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional, Sequence

import torch

from .. import _backend
from ..ops.simplex_qp import simplex_qp
from . import Table, machine_info, time_interleaved


def _gammas(batch: int, k: int, m: int, rank: Optional[int], seed: int) -> torch.Tensor:
    """``Γ [B, m, k]`` shaped like AGG's: k methods that share most of their signal (a common map
    times a per-method gain, plus each method's own noise of its own size). With ``rank``, every
    ``Γ`` has that rank and its last method duplicates the first."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(batch, m, 1, generator=g, dtype=torch.float64)
    gain = 0.5 + 1.5 * torch.rand(batch, 1, k, generator=g, dtype=torch.float64)
    noise = torch.rand(batch, 1, k, generator=g, dtype=torch.float64)
    gamma = common * gain + noise * torch.randn(batch, m, k, generator=g, dtype=torch.float64)
    if rank is not None:
        u = torch.randn(batch, m, rank, generator=g, dtype=torch.float64)
        gamma = u @ torch.linalg.pinv(u) @ gamma
        gamma[..., -1] = gamma[..., 0]
    return gamma


def problems(batch: int = 256, k: int = 7, m: int = 50, rank: Optional[int] = None, seed: int = 0) -> torch.Tensor:
    """``G = ΓᵀΓ / m`` ``[B, k, k]`` float64 (see :func:`_gammas`)."""
    gamma = _gammas(batch, k, m, rank, seed)
    return gamma.mT @ gamma / m


def _cvxpy_loop(G: torch.Tensor):
    """The paper's way: a cvxpy Problem per example (``psd_wrap`` skips cvxpy's eigenvalue check,
    which rounding can fail on rank-deficient ``G``). Returns the weights and objective values."""
    import cvxpy as cp

    weights, values = [], []
    for Gi in G.numpy():
        w = cp.Variable(Gi.shape[0])
        problem = cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(Gi))), [w >= 0, cp.sum(w) == 1])
        problem.solve()
        weights.append(w.value)
        values.append(problem.value)
    return weights, torch.tensor(values, dtype=torch.float64)


def _block(fn: Callable[[], object], block_s: float) -> tuple[Callable[[], None], int]:
    """``fn`` repeated ``n`` times (enough to last about ``block_s`` seconds), and ``n``: a call of a
    few microseconds is timed over a block, so one descheduled thread does not decide its time."""
    fn()
    start = time.perf_counter()
    fn()
    n = max(1, math.ceil(block_s / max(time.perf_counter() - start, 1e-9)))

    def run() -> None:
        for _ in range(n):
            fn()

    return run, n


def _objective(G: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    w = w.double().cpu()
    return torch.einsum("bi,bij,bj->b", w, G, w)


def qp_table(device: Optional[str] = None, repeat: int = 3, batch: int = 256, k: int = 7, m: int = 50,
             block_s: float = 0.2) -> Table:
    """Time per batch of ``B`` QPs for a full-rank ``G`` and for a rank-3 ``G`` with a duplicated
    method: fastattr (cpp on CPU; triton too on a CUDA ``device``), the reference, and the per-example
    cvxpy loop, round-robin (:func:`fastattr.bench.time_interleaved`), each implementation's turn a block of
    calls lasting at least ``block_s`` seconds; the speed-up is the median of the per-round ratios to cvxpy."""
    device = torch.device(device or "cpu")
    try:
        import cvxpy
    except ImportError:
        cvxpy = None
    table = Table(name=f"AGG simplex QP, B = {batch}, k = {k}, G = ΓᵀΓ/m with Γ [m = {m}, k], {device.type}",
                  columns=["G", "implementation", "ms", "speed-up vs cvxpy", "max |Δf| vs cvxpy"],
                  machine=machine_info(device),
                  params={"batch": batch, "k": k, "m": m, "repeat": repeat, "block_s": block_s,
                          "device": str(device),
                          "cvxpy": getattr(cvxpy, "__version__", None)})
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for label, rank in (("full rank", None), ("rank 3 + duplicate", 3)):
        G = problems(batch, k, m, rank)
        Gd = G.to(device)
        impls: dict[str, Callable[[], object]] = {}
        if cvxpy is not None:
            impls["cvxpy loop"] = lambda G=G: _cvxpy_loop(G)
        if _backend.cpp_available():
            impls["fastattr cpp"] = lambda G=G: simplex_qp(G, backend="cpp")
        if device.type == "cuda" and _backend.triton_available():
            impls["fastattr triton"] = lambda: simplex_qp(Gd, backend="triton")
        impls["reference"] = lambda: simplex_qp(Gd, backend="reference")
        blocks = {name: _block(fn, block_s) for name, fn in impls.items()}
        times, ratios = time_interleaved({name: run for name, (run, _) in blocks.items()}, device, repeat=repeat,
                                         warmup=0)
        first = next(iter(blocks))
        times = {name: t / blocks[name][1] for name, t in times.items()}
        ratios = {name: r * blocks[first][1] / blocks[name][1] for name, r in ratios.items()}
        f_peer = _cvxpy_loop(G)[1] if cvxpy is not None else None
        for name, t in times.items():
            if name == "cvxpy loop":
                table.add(label, name, t * 1e3, 1.0, 0.0)
                continue
            backend = {"fastattr cpp": "cpp", "fastattr triton": "triton"}.get(name, "reference")
            w = simplex_qp(G if backend == "cpp" else Gd, backend=backend)
            gap = (_objective(G, w) - f_peer).abs().max().item() if f_peer is not None else "-"
            speed = 1.0 / ratios[name] if cvxpy is not None else "-"
            table.add(label, name, t * 1e3, speed, gap)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table.notes.append(f"{repeat} round-robin rounds of blocks of >= {block_s:g} s; ms per batch: medians, "
                       "speed-ups: medians of per-round ratios; "
                       f"torch threads = {torch.get_num_threads()}; 1-min load average {load_before:.1f} before, "
                       f"{load_after:.1f} after, on {os.cpu_count()} CPUs")
    table.notes.append("cvxpy: one Problem per example (min quad_form(w, psd_wrap(G_i)) s.t. w >= 0, sum w = 1), "
                       "default solver, as the paper's code; fastattr cpp: exact active set; reference: "
                       "accelerated projected gradient to a KKT residual of 1e-10; Δf: objective minus cvxpy's")
    if cvxpy is None:
        table.notes.append("cvxpy not installed: pip install cvxpy for the peer rows")
    return table


def _aggregate_tables(device, repeat, settings: str = "bench") -> list[Table]:
    from .aggregate import aggregate_table

    return [aggregate_table(device=device, repeat=repeat, settings=settings)]


def _pool_tables(device, repeat) -> list[Table]:
    from .aggregate import pool_table

    return [pool_table(device=device, repeat=max(repeat, 9))]


def _conv_tables(device, repeat) -> list[Table]:
    from .aggregate import conv_table

    return [conv_table(device=device, repeat=max(repeat, 9))]


def _reproduction_tables(device, repeat) -> list[Table]:
    from .aggregate import reproduction_table

    return [reproduction_table(device=device)]


#: the tables of ``fastattr bench agg``, by the name ``--tables`` picks them with
TABLES: dict[str, Callable[..., list[Table]]] = {
    "qp": lambda device, repeat: [qp_table(device=device, repeat=repeat)],
    "aggregate": _aggregate_tables,
    "aggregate_released": lambda device, repeat: _aggregate_tables(device, repeat, settings="released"),
    "pool": _pool_tables,
    "conv": _conv_tables,
    "reproduction": _reproduction_tables,
}


def default_tables(device: Optional[str] = None, repeat: int = 3, tables: Optional[Sequence[str]] = None) -> list[Table]:
    """B = 256 problems of k = 7 methods; ``aggregate`` against its floor and the paper's procedure (with this
    bench's explainer settings, and with the released code's: :data:`fastattr.bench.aggregate.SETTINGS`); the max
    pool the explainers' passes run (:func:`fastattr.bench.aggregate.pool_table`) and the input gradient of their
    first convolution (:func:`fastattr.bench.aggregate.conv_table`); the reproduction of the
    paper's Tables 1–2 (:mod:`fastattr.bench.aggregate`) — all of :data:`TABLES`, or those named in
    ``tables``."""
    out = []
    for name in tables or TABLES:
        out += TABLES[name](device, repeat)
    return out
