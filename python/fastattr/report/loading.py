"""Loading and checking what ``fastattr report`` is given: the model (``package.module:factory`` or the
embedded digits CNN), the data (a tensor file, ``.npy``, a folder of images, or the digits test
split), labels, the device and the output folder. Every mistake is a :class:`ReportError` naming the
option."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import torch


class ReportError(Exception):
    """A problem with what the user asked for (model path, data, names, output folder)."""


def load_model(spec: Optional[str]) -> torch.nn.Module:
    """``None`` → the embedded digits CNN; ``"module:callable"`` → ``callable()`` from that module."""
    if spec is None:
        from ..zoo import load_digits_cnn

        return load_digits_cnn()
    if ":" not in spec:
        raise ReportError(f"--model must look like 'package.module:factory', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ReportError(f"cannot import model module {module_name!r}: {e}") from e
    factory = getattr(module, attr, None)
    if factory is None:
        raise ReportError(f"module {module_name!r} has no attribute {attr!r}")
    try:
        model = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    except Exception as e:
        raise ReportError(f"{spec}() failed ({type(e).__name__}: {e}); --model names a function that takes no "
                          "arguments and returns the model") from e
    if not callable(model):
        raise ReportError(f"{spec} did not give a callable model")
    return model


def _load_images(folder: Path) -> torch.Tensor:
    import matplotlib.image as mpimg

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ReportError(f"no .png/.jpg images in {folder}")
    arrays = [torch.as_tensor(mpimg.imread(p)).float() for p in files]
    if len({a.shape for a in arrays}) != 1:
        raise ReportError(f"images in {folder} have different sizes")
    x = torch.stack(arrays)
    if x.max() > 1.5:
        x = x / 255.0
    return x.unsqueeze(1) if x.dim() == 3 else x[..., :3].permute(0, 3, 1, 2).contiguous()


def load_data(spec: Optional[str], n: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``None`` → the digits test split; a ``.pt`` / ``.npy`` file (a tensor, ``(x, y)`` or
    ``{"x": ..., "y": ...}``); or a folder of images. Returns the first ``n`` inputs and labels."""
    if spec is None:
        from ..zoo import load_digits

        return load_digits("test", n)
    path = Path(spec)
    if not path.exists():
        raise ReportError(f"--data {spec}: no such file or folder")
    y = None
    if path.is_dir():
        x = _load_images(path)
    elif path.suffix.lower() == ".npy":
        import numpy as np

        try:
            x = torch.from_numpy(np.load(path))
        except Exception as e:
            raise ReportError(f"cannot read --data {spec}: {e}") from e
    elif path.suffix.lower() in (".pt", ".pth"):
        try:
            obj = torch.load(path, weights_only=True)
        except Exception as e:
            raise ReportError(f"cannot read --data {spec} (a tensor file saved with torch.save): "
                              f"{str(e).splitlines()[0]}") from e
        x = y = None
        if isinstance(obj, dict):
            x, y = obj.get("x"), obj.get("y")
        elif isinstance(obj, (tuple, list)) and obj:
            x, y = obj[0], obj[1] if len(obj) > 1 else None
        else:
            x = obj
        if not isinstance(x, torch.Tensor):
            raise ReportError(f"--data {spec}: expected a tensor, (x, y) or {{'x': ..., 'y': ...}}")
        if y is not None and not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
    else:
        raise ReportError(f"--data must be a .pt or .npy file or a folder of images, got {spec}")
    return x[:n], (y[:n] if isinstance(y, torch.Tensor) else None)


def check_data(x: torch.Tensor, model) -> torch.Tensor:
    """Inputs as the model's floating dtype (integer images and float64 / float16 arrays cast), checked
    non-empty and finite."""
    if x.dim() < 2 or x.shape[0] == 0:
        raise ReportError(f"--data holds no inputs [N, ...] (shape {tuple(x.shape)})")
    params = [p for p in model.parameters() if p.is_floating_point()] if isinstance(model, torch.nn.Module) else []
    x = x.to(params[0].dtype if params else torch.float32)
    if not torch.isfinite(x).all():
        raise ReportError("--data contains NaN or Inf")
    return x


def check_labels(labels: torch.Tensor, n: int, n_classes: int) -> torch.Tensor:
    """Labels as ``[n]`` class indices (a ``[n, 1]`` column squeezed), checked against the model."""
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1 or labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ReportError(f"--target label needs one integer class index per input, got labels of shape "
                          f"{tuple(labels.shape)} and dtype {labels.dtype}")
    if labels.shape[0] < n:
        raise ReportError(f"--target label: {labels.shape[0]} labels for {n} inputs")
    labels = labels[:n].long()
    if ((labels < 0) | (labels >= n_classes)).any():
        raise ReportError(f"--target label: labels must be in 0..{n_classes - 1} for a model with {n_classes} "
                          f"outputs, got {sorted(set(labels.tolist()))[:8]}")
    return labels


def check_fits(model, x: torch.Tensor) -> int:
    """The model's output count, from a forward of two inputs checked to give ``[batch, classes]``."""
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as e:
        raise ReportError(f"data of shape {tuple(x.shape)} does not fit the model: {e}") from e
    if not isinstance(out, torch.Tensor) or out.dim() not in (1, 2) or out.shape[0] != min(2, x.shape[0]):
        raise ReportError(f"the model must return [batch, classes] outputs, got {getattr(out, 'shape', type(out))}")
    return 1 if out.dim() == 1 else out.shape[1]


def writable_folder(out: str | Path) -> Path:
    """``out`` created if needed and checked writable (before any long computation), or a ReportError."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ReportError(f"cannot write to output folder {path}: {e.strerror or e}") from e
    return path


def usable_device(spec: str) -> torch.device:
    """``--device``: cpu or cuda[:N], checked usable here, or a ReportError."""
    try:
        dev = torch.device(spec)
        if dev.type not in ("cpu", "cuda"):
            raise ReportError(f"--device must be cpu or cuda (cuda:N), got {spec!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ReportError("--device cuda requested but no CUDA device is available")
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise ReportError(f"--device {spec!r} is not a usable device: {str(e).splitlines()[0]}") from e
    return dev
