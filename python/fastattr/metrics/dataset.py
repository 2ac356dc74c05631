"""``fastattr.evaluate_dataset``: methods × metrics over a dataset of any size in constant memory.

The examples are cut into fixed global batches (batch ``b`` = examples ``[b·s, (b+1)·s)``, ``s`` the batch
size); each batch is read, attributed by every method, scored by :func:`fastattr.evaluate` with the
generator ``seed · 1 000 003 + b``, and written as one JSON line per example before the next batch is read.
A batch's rows therefore depend only on the batch, which makes the three guarantees:

- **constant memory:** one batch (and its rows) at a time; the summary is read back from the file;
- **resume:** ``resume=True`` keeps the complete batches already in the file (a batch cut short by a kill
  is dropped) and runs the others;
- **torchrun:** rank ``r`` of ``w`` reads and runs the batches ``b ≡ r (mod w)`` only, writes its rows to
  ``<out>.rank<r>``, and rank 0 merges the parts in example order into ``out``: the same rows as one process
  (a gloo / nccl process group is started for the run when none is).

A row: ``{"index": i, "target": t, "prediction": p, "label": y or null, "values": {metric: {method: v}}}``
(Sensitivity-N: one value per n), with ``"curves": {metric: {method: [...]}}`` when ``curves=True``.
"""
from __future__ import annotations

import heapq
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from ..core import check_count, check_flag, check_inputs, check_model, model_entry, model_errors, run_model
from .evaluate import EXPLAIN_METRICS, FAITHFULNESS_METRICS, evaluate

__all__ = ["DatasetEvaluation", "dataset_batches", "evaluate_dataset", "read_rows", "shard_of"]


@dataclass
class DatasetEvaluation:
    """What :func:`evaluate_dataset` wrote: ``path`` (JSON lines, one row per example, in example order), ``n``
    rows, ``summary[metric][method]`` (the mean over examples, NaN-skipping; Sensitivity-N over n too) and,
    with ``curves=True``, the mean ``curves[metric][method]``."""

    path: Path
    n: int
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


class _Items(torch.utils.data.Dataset):
    """A tensor ``x`` (and labels ``y``) as a dataset of ``(x_i, y_i)`` items."""

    def __init__(self, x: torch.Tensor, y: Optional[torch.Tensor]):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        return (self.x[i], self.y[i]) if self.y is not None else self.x[i]


def shard_of(world: Optional[int] = None, rank: Optional[int] = None) -> tuple[int, int]:
    """``(rank, world)`` of this process: ``torch.distributed`` when initialised, else ``RANK`` / ``WORLD_SIZE``
    (``torchrun`` sets them), else ``(0, 1)``; given values win."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        found = dist.get_rank(), dist.get_world_size()
    else:
        found = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return (found[0] if rank is None else rank), (found[1] if world is None else world)


def dataset_batches(n: int, batch_size: int, rank: int = 0, world: int = 1,
                    done: frozenset = frozenset()) -> list[int]:
    """The global batch indices rank ``rank`` of ``world`` runs: ``b ≡ rank (mod world)``, ``b`` over the
    ``⌈n / batch_size⌉`` batches, less those in ``done``."""
    return [b for b in range(rank, -(-n // batch_size), world) if b not in done]


def read_rows(path: Union[str, Path]) -> Iterator[dict]:
    """The rows of a JSON-lines file, one dict per line (a last line cut short by a kill is skipped)."""
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _complete(path: Path, n: int, batch_size: int) -> frozenset:
    """Rewrites ``path`` keeping the rows of complete batches only; returns those batches."""
    if not path.exists():
        return frozenset()
    rows: dict[int, list[str]] = {}
    for row in read_rows(path):
        index = row.get("index")
        if isinstance(index, int) and 0 <= index < n:
            rows.setdefault(index // batch_size, []).append(json.dumps(row))
    done = {b for b, lines in rows.items() if len(lines) == min(batch_size, n - b * batch_size)}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for b in sorted(done):
            f.write("".join(line + "\n" for line in rows[b]))
    tmp.replace(path)
    return frozenset(done)


def _split(item) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _explainers(methods, method_kwargs: dict) -> dict[str, Callable]:
    from ..attribution.shared import method_function

    if isinstance(methods, (list, tuple)):
        methods = {m: m for m in methods}
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"methods must be a non-empty dict {{name: method name or fn(model, x, target)}} or a list of "
                         f"method names, got {methods!r}")
    return {name: method_function(name, m, method_kwargs.get(name, {})) for name, m in methods.items()}


def _loader(data, batch_size: int, num_workers: int):
    """``(dataset, batch size, workers, collate)`` from a Dataset, a DataLoader (its batch size and workers; a
    sequential sampler) or a tensor / ``(x, y)`` pair."""
    if isinstance(data, torch.utils.data.DataLoader):
        if not isinstance(data.sampler, torch.utils.data.SequentialSampler) or data.batch_size is None:
            raise ValueError("data: a DataLoader needs shuffle=False and a batch_size (rows are keyed by the "
                             "dataset index, and batches must be the same on every run)")
        return data.dataset, data.batch_size, data.num_workers, data.collate_fn
    if isinstance(data, torch.Tensor):
        data = _Items(data, None)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data):
        if data[0].shape[0] != data[1].shape[0]:
            raise ValueError(f"data: (x, y) with {data[0].shape[0]} inputs and {data[1].shape[0]} labels; give one "
                             "label (the target with target='label') per input")
        data = _Items(*data)
    if not isinstance(data, torch.utils.data.Dataset) or not hasattr(data, "__len__"):
        raise TypeError("data must be a map-style torch.utils.data.Dataset (with __len__), a DataLoader, a tensor or "
                        f"an (x, y) pair of tensors, got {type(data).__name__}")
    return data, batch_size, num_workers, None


def _row(i: int, t, p, y, ev, b: int, curves: bool) -> dict:
    row = {"index": i, "target": int(t[b]), "prediction": int(p[b]), "label": None if y is None else int(y[b]),
           "values": {metric: {name: (v[b].tolist() if v.dim() > 1 else float(v[b])) for name, v in by.items()}
                      for metric, by in ev.values.items()}}
    if curves:
        row["curves"] = {metric: {name: c[b].tolist() for name, c in by.items()} for metric, by in ev.curves.items()}
    return row


def _merge(out: Path, world: int) -> None:
    """The ranks' parts (each in example order) merged into ``out`` in example order, the parts removed."""
    parts = [Path(f"{out}.rank{r}") for r in range(world)]
    files = [open(p) for p in parts if p.exists()]
    try:
        keyed = [((json.loads(line)["index"], line) for line in f if line.strip()) for f in files]
        with open(out, "w") as f:
            for _, line in heapq.merge(*keyed):
                f.write(line if line.endswith("\n") else line + "\n")
    finally:
        for f in files:
            f.close()
    for p in parts:
        p.unlink(missing_ok=True)


def _summarise(path: Path) -> DatasetEvaluation:
    """Means per metric and method (NaN-skipping), read row by row."""
    sums: dict = {}
    curve_sums: dict = {}
    n = 0
    for row in read_rows(path):
        n += 1
        for metric, by in row["values"].items():
            for name, v in by.items():
                for value in (v if isinstance(v, list) else [v]):
                    if value is not None and not math.isnan(value):
                        s = sums.setdefault(metric, {}).setdefault(name, [0.0, 0])
                        s[0] += value
                        s[1] += 1
                    else:
                        sums.setdefault(metric, {}).setdefault(name, [0.0, 0])
        for metric, by in row.get("curves", {}).items():
            for name, c in by.items():
                s = curve_sums.setdefault(metric, {}).setdefault(name, [torch.zeros(len(c), dtype=torch.float64), 0])
                s[0] += torch.tensor(c, dtype=torch.float64)
                s[1] += 1
    summary = {m: {k: (s / c if c else math.nan) for k, (s, c) in by.items()} for m, by in sums.items()}
    curves = {m: {k: (s / c).tolist() for k, (s, c) in by.items()} for m, by in curve_sums.items()}
    return DatasetEvaluation(path=path, n=n, summary=summary, curves=curves)


@model_entry(inputs_name="data")
def evaluate_dataset(model: Callable, data, methods, metrics: Sequence[str] = FAITHFULNESS_METRICS, *,
                     out: Union[str, Path], target: Union[None, int, str] = None, batch_size: int = 32,
                     resume: bool = False, generator: int = 0, curves: bool = False, num_workers: int = 0,
                     method_kwargs: Optional[dict[str, dict]] = None, device: Union[None, str, torch.device] = None,
                     progress: bool = False, **evaluate_kwargs) -> Optional[DatasetEvaluation]:
    """Attributes and scores every example of ``data`` in constant memory (module docstring), one JSON line
    per example in ``out``.

    Args:
        data: a map-style ``Dataset`` (items ``x`` or ``(x, y, ...)``), a ``DataLoader`` without shuffling (its
            batch size and workers are used), a tensor ``[N, ...]`` or an ``(x, y)`` pair.
        methods: ``{name: method}`` (a name in ``fastattr.attribution.METHODS``, with ``method_kwargs[name]``,
            or a function ``fn(model, x, target)`` returning one map per input) or a list of method names; the
            metrics that explain again use the same functions.
        metrics: names of :data:`fastattr.metrics.EVALUATE_METRICS` (default: the faithfulness metrics).
        target: None / ``"pred"`` (the predicted class), ``"label"`` (the items' ``y``) or a class index.
        batch_size: examples per batch (the batches fix the rows: keep it for ``resume``).
        resume: keep the complete batches already in ``out`` and run the rest (False: start a new file).
        generator: int seed; batch ``b`` uses ``generator · 1 000 003 + b``.
        curves: also write each example's curves (deletion / insertion scores, …) and average them.
        device: where batches run (default: the model's parameters' device, else the CPU).
        evaluate_kwargs: passed to :func:`fastattr.evaluate` (``patch_size``, ``step``, ``n_subsets``, …).

    Returns a :class:`DatasetEvaluation` (summary read back from ``out``); under ``torchrun`` only rank 0
    (others get None), after merging every rank's rows.

    Example::

        >>> res = fastattr.evaluate_dataset(model, val_set, ["saliency", "integrated_gradients"],
        ...                                 ["deletion", "insertion"], out="rows.jsonl", batch_size=64)
        >>> res.summary["deletion"]
    """
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise ValueError(f"generator must be an int seed (one per batch is derived from it), got {generator!r}")
    check_flag(resume, "resume")
    check_flag(curves, "curves")
    check_count(batch_size, "batch_size")
    if target not in (None, "pred", "label") and (isinstance(target, bool) or not isinstance(target, int)):
        raise ValueError(f"target must be None, 'pred', 'label' or a class index, got {target!r}")
    metrics = list(metrics)
    fns = _explainers(methods, method_kwargs or {})
    dataset, batch_size, num_workers, collate = _loader(data, batch_size, num_workers)
    n = len(dataset)
    if n == 0:
        raise ValueError("data holds no inputs")
    if device is None:
        first = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        device = first.device if first is not None else torch.device("cpu")
    if isinstance(dataset, _Items):  # a tensor: checked whole before any batch
        check_inputs(dataset.x, "data")
        check_model(model, dataset.x, name="data")
    out = Path(out)
    if not out.parent.exists():
        raise ValueError(f"out: the folder {out.parent} does not exist")
    rank, world = shard_of()
    started_group = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():  # a torchrun launch: a group for the barrier before rank 0 merges
            dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
            started_group = True
    part = Path(f"{out}.rank{rank}") if world > 1 else out
    if resume and world > 1 and rank == 0 and out.exists() and not part.exists():
        out.replace(part)  # a merged earlier run: rank 0 sorts it out below
    done = _complete(part, n, batch_size) if resume else frozenset()
    if world > 1 and resume:  # every rank keeps only its own batches of an earlier merged file
        done = frozenset(b for b in done if b % world == rank)
    if not resume:
        part.write_text("")
    batches = dataset_batches(n, batch_size, rank, world, done)
    if batches and isinstance(dataset, _Items):  # the model tried on one input, the error naming the data's shape
        with torch.no_grad(), model_errors(dataset.x):
            model(dataset.x[:1].to(device))
    indices = [i for b in batches for i in range(b * batch_size, min(n, (b + 1) * batch_size))]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         num_workers=num_workers, **({"collate_fn": collate} if collate else {}))
    explain = fns if set(metrics) & set(EXPLAIN_METRICS) else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc="evaluate_dataset")
    with open(part, "a") as f:
        for b, item in zip(batches, loader):
            x, y = _split(item)
            x = x.to(device)
            check_inputs(x, "data")
            check_model(model, x, name="data")
            with torch.no_grad():
                p = run_model(model, x).reshape(x.shape[0], -1).argmax(-1)
            if target in (None, "pred"):
                t = p
            elif target == "label":
                if y is None:
                    raise ValueError("target='label' needs items (x, y) with labels")
                t = torch.as_tensor(y).to(device)
            else:
                t = torch.full_like(p, target)
            maps = {name: fn(model, x, t).detach() for name, fn in fns.items()}
            ev = evaluate(model, x, t, attributions=maps, metrics=metrics, explain=explain,
                          generator=generator * 1_000_003 + b, **evaluate_kwargs)
            start = b * batch_size
            f.write("".join(json.dumps(_row(start + k, t, p, y, ev, k, curves)) + "\n" for k in range(x.shape[0])))
            f.flush()
            if bar is not None:
                bar.update(x.shape[0])
    if bar is not None:
        bar.close()
    if world > 1:
        dist.barrier()
        if rank == 0:
            _merge(out, world)
        if started_group:
            dist.barrier()
            dist.destroy_process_group()
        if rank != 0:
            return None
    return _summarise(out)
