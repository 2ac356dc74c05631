"""Targets and score readers: which output each example is explained for, and the one number (or
row) read off the model output (SPEC §3.1)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .chunks import chunk_size, forward_chunks
from .contract import Target, batch_coupled, rng_kept, run_model

READERS = ("probability", "logit", "log_probability", "regression")  # one score per input; plus "logits"


def resolve_target(model: Callable, inputs: torch.Tensor, target: Target,
                   logits: Optional[torch.Tensor] = None, *, max_batch: Optional[int] = None,
                   memory_budget: Optional[int] = None) -> torch.Tensor:
    """Per-example target indices ``[B]`` in ``0..C-1``: an int, a ``[B]`` tensor, or None (the argmax of
    f(x)); negative indices count from the end, as in Python (``-1``: the last output). Without
    ``logits``, a forward of ``inputs`` (chunked under ``max_batch`` / ``memory_budget``) gives the argmax,
    or, for a given target, a forward of the first two inputs (the first ``max_batch`` when given: a model
    may need whole batches) checks its range (every row of an output has the same classes)."""
    batch = inputs.shape[0]
    if logits is None and target is None:
        logits = forward_chunks(model, inputs, max_batch, memory_budget)
    elif logits is None:
        probe = inputs[:2 if max_batch is None else chunk_size(inputs, batch, max_batch, memory_budget)]
        if probe.shape[0] == 1 and batch_coupled(model):  # batch statistics need two rows
            probe = torch.cat([probe, probe])
        with torch.no_grad(), rng_kept(model, inputs.device):  # a model with dropout: no draws taken
            logits = run_model(model, probe, named=inputs)
    if logits.dim() == 1:
        logits = logits[:, None]
    n_classes = logits.shape[-1]
    if target is None:
        return logits.argmax(-1)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        t = torch.full((batch,), int(target), dtype=torch.long, device=inputs.device)
    elif isinstance(target, torch.Tensor) and not target.is_floating_point() and target.dim() <= 1:
        t = target.to(device=inputs.device, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"target has {t.numel()} entries but inputs has batch size {batch}")
    elif isinstance(target, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in target):
        return resolve_target(model, inputs, torch.tensor(list(target)), logits)
    else:
        raise TypeError("target must be None, an int, or a 1-D integer tensor with one entry per example")
    if (t < -n_classes).any() or (t >= n_classes).any():
        raise ValueError(f"target out of range: the model has {n_classes} outputs, got {t.tolist()}")
    return t % n_classes


def select(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``f_t``: the target column of each row of the model output (a 1-D output is returned as is)."""
    if output.dim() == 1:
        return output
    return output.gather(1, target[:, None]).squeeze(1)


def check_scalar_reader(score: str) -> str:
    """A reader that gives one number per input (every reader but ``"logits"``)."""
    if score not in READERS:
        raise ValueError(f"score must be one of {READERS}, got {score!r}")
    return score


def read_scores(output: torch.Tensor, target: torch.Tensor, reader: str) -> torch.Tensor:
    """The score read off the model output (SPEC §3.1): ``"logit"`` ``f_t``, ``"probability"``
    ``softmax(f)_t``, ``"log_probability"`` ``log_softmax(f)_t``, ``"regression"`` the raw output
    (of a ``[N]`` or ``[N, k]`` model, column t), ``"logits"`` the whole output ``[N, C]``. A model
    with one output (``[N]`` or ``[N, 1]``) is read as is by every reader but ``"logits"``: a softmax
    over one class would be 1 whatever the input (end such a model in a sigmoid for a probability)."""
    if reader not in READERS and reader != "logits":
        raise ValueError(f"score must be one of {READERS + ('logits',)}, got {reader!r}")
    if reader == "logits":
        return output.reshape(output.shape[0], -1)
    if reader in ("logit", "regression") or output.dim() == 1 or output.shape[-1] == 1:
        return select(output, target)
    if reader == "probability":
        return select(output.softmax(-1), target)
    return select(output.log_softmax(-1), target)


def resolve_clean(model: Callable, inputs: torch.Tensor, target, *, max_batch: Optional[int] = None,
                  memory_budget: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets [B], f(x))``: one chunked forward on ``inputs`` resolves the targets, and its output
    is kept for the metric's passes that need ``f(x)``."""
    clean = forward_chunks(model, inputs, max_batch, memory_budget)
    return resolve_target(model, inputs, target, logits=clean), clean


