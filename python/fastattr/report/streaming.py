"""``fastattr evaluate``: the report's methods and metrics over a whole dataset, streamed through
:func:`fastattr.evaluate_dataset` (one JSON line per example, constant memory, ``--resume``, torchrun)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..attribution import METHODS
from ..metrics import EVALUATE_METRICS, EXPLAIN_METRICS, evaluate_dataset
from ..metrics.dataset import DatasetEvaluation
from .loading import ArrayFile, ImageFolder, ReportError, load_data, load_model, usable_device
from .running import report_defaults

#: what ``fastattr evaluate`` runs without ``--methods`` / ``--metrics``
STREAM_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
STREAM_METRICS = ("deletion", "insertion", "mdrs", "aupc", "sparseness")


def open_data(spec: Optional[str]) -> torch.utils.data.Dataset:
    """``--data`` as a dataset read one input at a time: a folder of images (:class:`ImageFolder`), a ``.npy``
    array (memory-mapped, :class:`ArrayFile`); a ``.pt`` file or the digits test split (None) are read whole."""
    if spec is not None and Path(spec).is_dir():
        return ImageFolder(Path(spec))
    if spec is not None and Path(spec).suffix.lower() == ".npy" and Path(spec).exists():
        try:
            return ArrayFile(Path(spec))
        except Exception as e:
            raise ReportError(f"cannot read --data {spec} (an array saved with numpy.save): {e}") from e
    x, y = load_data(spec, 2 ** 62)
    return torch.utils.data.TensorDataset(x, y) if y is not None else torch.utils.data.TensorDataset(x)


def stream_report(model: Optional[str] = None, data: Optional[str] = None, out: str | Path = "rows.jsonl",
                  methods: Optional[Sequence[str]] = None, metrics: Optional[Sequence[str]] = None,
                  target: Optional[int | str] = None, batch_size: int = 32, resume: bool = False, seed: int = 0,
                  defaults: Optional[dict] = None, device: str = "cpu",
                  progress: bool = True) -> Optional[DatasetEvaluation]:
    """Every input of ``data`` attributed by ``methods`` (names of ``fastattr.attribution.METHODS``, default
    :data:`STREAM_METHODS`) and scored by ``metrics`` (default :data:`STREAM_METRICS`) with the ranked metrics
    over the report's patches and curve step (:func:`report_defaults` of the first input, ``defaults``
    overriding), the rows appended to ``out`` batch by batch (:func:`fastattr.evaluate_dataset`). Returns its
    :class:`DatasetEvaluation` (None on torchrun ranks other than 0)."""
    methods = list(STREAM_METHODS if methods is None else methods)
    metrics = list(STREAM_METRICS if metrics is None else metrics)
    for name in methods:
        if name not in METHODS:
            raise ReportError(f"unknown method {name}; fastattr evaluate runs {', '.join(METHODS)}")
    for name in metrics:
        if name not in EVALUATE_METRICS:
            raise ReportError(f"unknown metric {name}; choose from {', '.join(EVALUATE_METRICS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ReportError(f"--batch-size must be a positive integer, got {batch_size!r}")
    out = Path(out)
    if not out.parent.exists():
        raise ReportError(f"--out {out}: the folder {out.parent} does not exist")
    if resume and not out.exists():
        raise ReportError(f"--resume: {out} does not exist (leave --resume out to start)")
    dataset = open_data(data)
    if len(dataset) == 0:
        raise ReportError(f"--data {data} holds no inputs")
    item = dataset[0]
    first = item[0] if isinstance(item, (tuple, list)) else item
    if target == "label" and not (isinstance(item, (tuple, list)) and len(item) > 1):
        raise ReportError("--target label needs data with labels")
    if not isinstance(first, torch.Tensor) or not first.is_floating_point():
        raise ReportError(f"--data must hold floating-point inputs, got {getattr(first, 'dtype', type(first))}")
    chosen = report_defaults(first.unsqueeze(0), defaults)
    dev = usable_device(device)
    net = load_model(model).to(dev).eval()
    kwargs = {"patch_size": chosen["patch_size"], "step": chosen["curve_step"], "normalize": True}
    if set(metrics) & set(EXPLAIN_METRICS):
        kwargs["metric_kwargs"] = {"relative_stability": {"n_samples": 10}}
    return evaluate_dataset(net, dataset, methods, metrics, out=out, target=target, batch_size=batch_size,
                            resume=resume, generator=seed, device=dev, progress=progress, **kwargs)
