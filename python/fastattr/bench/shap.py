"""``fastattr bench shap``: KernelSHAP and LIME against Captum's ``KernelShap`` / ``Lime`` and the
model-only floor (the same number of forward inputs, at the best batch size), on the zoo's digits
CNN with 2×2-pixel patches as features (M = 16)."""
from __future__ import annotations

import time
import warnings
from typing import Optional

import torch

from ..attribution.surrogate import kernel_shap, lime
from ..core import patch_segments
from ..zoo import load_digits, load_digits_cnn
from . import Table, machine_info, time_interleaved


def _captum():
    try:
        from captum.attr import KernelShap, Lime
    except ImportError:
        return None
    return KernelShap, Lime


def _best_chunk(model, inputs: torch.Tensor) -> int:
    """The batch size (of 64 … all) at which the model runs ``inputs`` fastest, timed once each."""
    best, best_time = inputs.shape[0], float("inf")
    for chunk in sorted({64, 256, 1024, 4096, inputs.shape[0]}):
        if chunk > inputs.shape[0]:
            continue
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, inputs.shape[0], chunk):
                model(inputs[i:i + chunk])
        elapsed = time.perf_counter() - start
        if elapsed < best_time:
            best, best_time = chunk, elapsed
    return best


def run(batch: int = 32, n_samples: int = 512, device: Optional[str] = None, repeat: int = 3,
        per_eval: int = 64) -> Table:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_digits_cnn().to(device)
    x, y = (t.to(device) for t in load_digits("test", batch))
    mask = patch_segments((8, 8), 2).reshape(1, 1, 8, 8).to(device)
    m = int(mask.max()) + 1
    gen = torch.Generator().manual_seed(0)
    keep = (torch.rand(n_samples + 2, m, generator=gen) < 0.5).to(device)
    copies = torch.where(keep[:, mask.reshape(-1)].reshape(-1, 1, 1, 8, 8), x[None], torch.zeros((), device=device))
    copies = copies.reshape(-1, 1, 8, 8)  # B·(n + 2) inputs: what KernelSHAP runs
    chunk = _best_chunk(model, copies)

    def floor():
        with torch.no_grad():
            for i in range(0, copies.shape[0], chunk):
                model(copies[i:i + chunk])

    impls = {"model-only floor": floor,
             "fastattr.kernel_shap": lambda: kernel_shap(model, x, y, feature_mask=mask, n_samples=n_samples),
             "fastattr.lime": lambda: lime(model, x, y, feature_mask=mask, n_samples=n_samples)}
    peers = _captum()
    if peers is not None:
        captum_shap, captum_lime = peers[0](model), peers[1](model)
        impls["captum KernelShap"] = lambda: captum_shap.attribute(x, target=y, feature_mask=mask, n_samples=n_samples,
                                                                   perturbations_per_eval=per_eval)
        impls["captum Lime"] = lambda: captum_lime.attribute(x, target=y, feature_mask=mask, n_samples=n_samples,
                                                             perturbations_per_eval=per_eval)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times, vs_floor = time_interleaved(impls, device, repeat=repeat)
    table = Table(name=f"KernelSHAP and LIME, digits CNN, batch {batch}, M = {m} patches, {n_samples} samples, "
                       f"{device.type}",
                  columns=["implementation", "ms", "time / floor", "speed-up vs captum"],
                  machine=machine_info(device),
                  params={"batch": batch, "features": m, "n_samples": n_samples, "captum_perturbations_per_eval":
                          per_eval, "floor_chunk": chunk, "repeat": repeat, "device": str(device)})
    peer_of = {"fastattr.kernel_shap": "captum KernelShap", "fastattr.lime": "captum Lime"}
    for name, t in times.items():
        peer = peer_of.get(name)
        speed = vs_floor[peer] / vs_floor[name] if peer in times else "-"
        table.add(name, t * 1e3, vs_floor[name], speed)
    table.notes.append(f"{repeat} round-robin rounds; times are medians, ratios medians of per-round ratios; "
                       f"torch threads = {torch.get_num_threads()}")
    table.notes.append(f"floor: the model alone on the {copies.shape[0]} inputs KernelSHAP runs (B·(n + 2)), in "
                       f"chunks of {chunk} (the fastest of 64 … all); fastattr: default chunks, KernelSHAP with "
                       "paired draws; captum: perturbations_per_eval = "
                       f"{per_eval}, one example at a time (as it runs batches), scikit-learn surrogates")
    if peers is None:
        table.notes.append("captum not installed: pip install captum for the peer rows")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 3) -> list[Table]:
    """Batch 32 (256 on CUDA), 16 patches, 512 samples."""
    on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return [run(batch=256 if on_cuda else 32, device=device, repeat=repeat)]
