"""``fastattr bench perturb``: the ``perturb_by_rank`` op (SPEC §3.1) writing a chunk of deletion inputs.

The workload is the op's real use in the perturbation engine: ``B`` images ``[B, C, H, W]``, a per-pixel
ranking shared by the channels, and ``K`` steps of ``H·W / K`` pixels, written as one ``[K·B, C, H, W]``
chunk with the top ``n_k = (k + 1)·H·W / K`` pixels set to the per-image minimum (Quantus's "black"
baseline). Rows: every fastattr backend available on the device (Triton on CUDA only, never timed in
the interpreter); plain torch building one bool mask per step (``rank < n_k``), ``torch.where`` and
``torch.cat``; and the peer, Quantus 0.6's ``PixelFlipping.evaluate_batch`` loop, which calls
``batch_baseline_replacement_by_indices`` step by step on numpy arrays over its argsorted indices.

Every row's chunk is checked equal to the reference's before timing. Timing is round-robin
(:func:`fastattr.bench.time_interleaved`); speed-ups are ratios of medians of per-round ratios.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .. import _backend
from ..core import rank_features
from ..ops.perturb_by_rank import perturb_by_rank
from . import Table, machine_info, time_interleaved

REFERENCE = "fastattr[reference]"
QUANTUS = "quantus batch_baseline_replacement_by_indices"
TORCH_MASKS = "torch: per-step bool masks, torch.where, torch.cat"


def check_same(name: str, out: torch.Tensor, expected: torch.Tensor) -> None:
    """Raises ``RuntimeError`` unless ``out`` is exactly ``expected`` (same shape, dtype and values): the op
    only selects values, so every implementation must agree bit for bit."""
    out = out.to(expected.device)
    if out.shape != expected.shape or out.dtype != expected.dtype:
        raise RuntimeError(f"{name}: got {out.dtype} {tuple(out.shape)}, the reference gives "
                           f"{expected.dtype} {tuple(expected.shape)}")
    if not torch.equal(out, expected):
        wrong = (out != expected).sum().item()
        raise RuntimeError(f"{name}: {wrong} of {out.numel()} values differ from the reference")


def _quantus_replace() -> Optional[Callable]:
    try:
        from quantus.functions.perturb_func import batch_baseline_replacement_by_indices
    except ImportError:
        return None
    return batch_baseline_replacement_by_indices


def _quantus_chunk(replace: Callable, x_np: np.ndarray, indices: np.ndarray, per_step: int, steps: int
                   ) -> Callable[[], torch.Tensor]:
    """Quantus's way: the perturbed array of step k is step k − 1's with the next ``per_step`` argsorted
    elements replaced by the "black" baseline, each step written into the chunk."""
    batch = x_np.shape[0]

    def run() -> torch.Tensor:
        out = np.empty((steps,) + x_np.shape, dtype=x_np.dtype)
        current = x_np.reshape(batch, -1)
        for k in range(steps):
            current = replace(arr=current, indices=indices[:, k * per_step:(k + 1) * per_step],
                              perturb_baseline="black")
            out[k] = current.reshape(x_np.shape)
        return torch.from_numpy(out).reshape((-1,) + x_np.shape[1:])

    return run


def _torch_masks(x: torch.Tensor, baseline: torch.Tensor, rank: torch.Tensor, counts: list[int]
                 ) -> Callable[[], torch.Tensor]:
    rank_map = rank.view(x.shape[0], 1, *x.shape[2:])
    return lambda: torch.cat([torch.where(rank_map < n, baseline, x) for n in counts])


def implementations(shape: tuple[int, int, int, int], steps: int, device: torch.device | str
                    ) -> dict[str, Callable[[], torch.Tensor]]:
    """The rows' callables for ``shape`` images and ``steps`` steps, reference first, each checked
    (:func:`check_same`) to write the reference's chunk."""
    device = torch.device(device)
    batch, channels, height, width = shape
    pixels = height * width
    if steps < 1 or pixels % steps:
        raise ValueError(f"steps must be >= 1 and divide H·W = {pixels}, got {steps}")
    per_step = pixels // steps
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen)
    attr = torch.rand(batch, pixels, generator=gen)
    baseline = x.amin(dim=(1, 2, 3), keepdim=True)
    rank, counts = rank_features(attr), torch.arange(1, steps + 1) * per_step
    x_dev, base_dev, rank_dev, counts_dev = (t.to(device) for t in (x, baseline, rank, counts))

    impls: dict[str, Callable[[], torch.Tensor]] = {}
    for name in _backend.available_backends(device):
        if name == "triton" and device.type != "cuda":
            continue  # the interpreter is for tests, not timings
        impls[f"fastattr[{name}]"] = lambda name=name: perturb_by_rank(
            x_dev, base_dev, rank_dev, counts_dev, insert=False, backend=name)
    impls[TORCH_MASKS] = _torch_masks(x_dev, base_dev, rank_dev, counts.tolist())
    replace = _quantus_replace()
    if replace is not None:
        # Quantus's indices: argsort of the attributions broadcast over the channels, highest first.
        a_np = np.broadcast_to(attr.view(batch, 1, pixels).numpy(), (batch, channels, pixels))
        indices = np.argsort(-a_np.reshape(batch, -1), axis=1)
        impls[QUANTUS] = _quantus_chunk(replace, x.numpy(), indices, channels * per_step, steps)

    expected = impls[REFERENCE]()
    for name, fn in impls.items():
        check_same(name, fn(), expected)
    return impls


def run(shape: tuple[int, int, int, int] = (8, 3, 64, 64), steps: int = 64, device: Optional[str] = None,
        repeat: int = 5) -> Table:
    """Times writing the ``[steps·B, C, H, W]`` deletion chunk of ``shape`` images by each implementation."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    impls = implementations(shape, steps, device)
    times, vs_ref = time_interleaved(impls, device, repeat=repeat)

    batch, channels, height, width = shape
    pixels, dims = height * width, "x".join(map(str, shape))
    per_step = pixels // steps
    table = Table(
        name=f"perturb_by_rank: {steps} deletion steps of [{dims}] -> "
             f"[{steps * batch}, {channels}, {height}, {width}] float32 on {device.type}",
        columns=["implementation", "ms", "speed-up vs reference", "speed-up vs quantus"],
        machine=machine_info(device),
        params={"shape": list(shape), "steps": steps, "pixels_per_step": per_step,
                "dtype": "float32", "device": str(device), "repeat": repeat},
    )
    for name, t in times.items():
        vs_quantus = vs_ref[QUANTUS] / vs_ref[name] if QUANTUS in times else "-"
        table.add(name, t * 1e3, 1.0 / vs_ref[name], vs_quantus)
    table.notes.append(f"{repeat} round-robin rounds; times are medians, speed-ups from medians of per-round "
                       f"ratios; torch threads = {torch.get_num_threads()}")
    mib = steps * batch * channels * pixels * 4 / 2**20
    table.notes.append(f"x {list(shape)}, channel-shared rank map [{batch}, {pixels}], {steps} steps of "
                       f"{per_step} pixels, baseline = per-image min; output {mib:.1f} MiB; every row "
                       "checked equal to the reference; rank and baseline computed once, untimed")
    if QUANTUS not in times:
        table.notes.append("quantus not installed: pip install quantus for the peer row")
    else:
        table.notes.append(f"quantus: numpy on the CPU, {steps} cumulative steps of {channels * per_step} "
                           "elements over its argsort of the channel-broadcast attributions (argsort "
                           "untimed); each step recomputes its \"black\" baseline as quantus does")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 5) -> list[Table]:
    """8 images of 3×64×64 with 64 steps; 16 images of 3×224×224 with 16 steps (64 on CUDA)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    big_steps = 64 if torch.device(device).type == "cuda" else 16
    return [run((8, 3, 64, 64), 64, device, repeat), run((16, 3, 224, 224), big_steps, device, repeat)]
