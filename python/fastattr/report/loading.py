"""Loading and checking what ``fastattr report`` is given: the model (``package.module:factory`` or the
embedded digits CNN), the data (a tensor file, ``.npy``, a folder of images, or the digits test
split), labels, the device and the output folder. Every mistake is a :class:`ReportError` naming the
option."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch


class ReportError(Exception):
    """A problem with what the user asked for (model path, data, names, output folder)."""


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def _cwd_on_path():
    """The current folder first on ``sys.path`` (as ``python -m`` puts it), for the user's model module;
    removed again afterwards if it was not there before."""
    cwd = os.getcwd()
    present = any(os.path.abspath(p or os.curdir) == cwd for p in sys.path)
    if not present:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    try:
        yield
    finally:
        if not present:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def load_model(spec: Optional[str]) -> torch.nn.Module:
    """``None`` → the embedded digits CNN; ``"module:callable"`` → ``callable()`` from that module, which is
    imported with the current folder on the import path (as ``python -m`` does) besides ``PYTHONPATH``."""
    if spec is None:
        from ..zoo import load_digits_cnn

        return load_digits_cnn()
    if ":" not in spec:
        raise ReportError(f"--model must look like 'package.module:factory', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    if not module_name or not attr:
        raise ReportError(f"--model must look like 'package.module:factory', got {spec!r}")
    with _cwd_on_path():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
                raise ReportError(f"cannot import model module {module_name!r}: {_first_line(e)}; the module must be "
                                  f"importable from the current folder ({os.getcwd()}) or PYTHONPATH") from e
            raise ReportError(f"cannot import model module {module_name!r}: {_first_line(e)} (a module it imports "
                              "is missing)") from e
        except Exception as e:
            raise ReportError(f"cannot import model module {module_name!r}: {type(e).__name__}: "
                              f"{_first_line(e)}") from e
        factory = getattr(module, attr, None)
        if factory is None:
            raise ReportError(f"module {module_name!r} has no attribute {attr!r}")
        try:
            model = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
        except Exception as e:
            raise ReportError(f"{spec}() failed ({type(e).__name__}: {_first_line(e)}); --model names a function "
                              "that takes no arguments and returns the model") from e
    if not callable(model):
        raise ReportError(f"{spec} did not give a callable model")
    return model


def _image(path: Path) -> torch.Tensor:
    """One image file as ``[C, H, W]`` in [0, 1] (RGB of RGBA; grey as one channel)."""
    import matplotlib.image as mpimg

    a = torch.as_tensor(mpimg.imread(path)).float()
    if a.max() > 1.5:
        a = a / 255.0
    return a.unsqueeze(0) if a.dim() == 2 else a[..., :3].permute(2, 0, 1).contiguous()


class ImageFolder(torch.utils.data.Dataset):
    """The ``.png`` / ``.jpg`` files of a folder, sorted by name, read one at a time when indexed (nothing is
    kept): a dataset of any size for :func:`fastattr.evaluate_dataset`."""

    def __init__(self, folder: Path):
        self.files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not self.files:
            raise ReportError(f"no .png/.jpg images in {folder}")
        self.shape = tuple(_image(self.files[0]).shape)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = _image(self.files[i])
        if tuple(x.shape) != self.shape:
            raise ReportError(f"{self.files[i].name} is {tuple(x.shape)}, the folder's first image "
                              f"{self.shape}: images in {self.files[i].parent} have different sizes")
        return x


class ArrayFile(torch.utils.data.Dataset):
    """The rows of a ``.npy`` array read from the file one at a time when indexed (as stored, as the report
    reads the file; no mapping of the file is kept, so memory does not grow with the rows read)."""

    def __init__(self, path: Path):
        import numpy as np

        head = np.load(path, mmap_mode="r")
        self.path, self.n = path, head.shape[0] if head.ndim else 0
        self.dtype, self.row_shape, self.offset = head.dtype, head.shape[1:], head.offset
        self.fortran = head.ndim > 1 and not head.flags.c_contiguous
        del head

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        import numpy as np

        if self.fortran:  # rows are not contiguous on disk
            return torch.from_numpy(np.array(np.load(self.path, mmap_mode="r")[i]))
        count = int(np.prod(self.row_shape, dtype=np.int64))
        with open(self.path, "rb") as f:
            f.seek(self.offset + i * count * self.dtype.itemsize)
            row = np.fromfile(f, dtype=self.dtype, count=count)
        return torch.from_numpy(row.reshape(self.row_shape))


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
    if path.is_dir():  # only the first n files are read
        images = ImageFolder(path)
        x = torch.stack([images[i] for i in range(min(n, len(images)))])
    elif path.suffix.lower() == ".npy":
        import numpy as np

        try:
            x = torch.from_numpy(np.array(np.load(path, mmap_mode="r")[:n]))
        except Exception as e:
            raise ReportError(f"cannot read --data {spec} (an array saved with numpy.save): {_first_line(e)}") from e
    elif path.suffix.lower() in (".pt", ".pth"):
        obj = _load_pt(path, spec)
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
            try:
                y = torch.as_tensor(y)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ReportError(f"--data {spec}: the labels must be a tensor of class indices, got "
                                  f"{type(y).__name__} ({_first_line(e)})") from e
    else:
        raise ReportError(f"--data must be a .pt or .npy file or a folder of images, got {spec}")
    if x.dim() == 0:
        raise ReportError(f"--data holds no inputs [N, ...] (a single number in {spec})")
    if y is not None and (y.dim() == 0 or y.shape[0] != x.shape[0]):  # whatever --target: a sign of mixed-up files
        raise ReportError(f"--data {spec}: {1 if y.dim() == 0 else y.shape[0]} labels for {x.shape[0]} inputs; give "
                          "one label per input (or no labels)")
    return x[:n], (y[:n] if isinstance(y, torch.Tensor) else None)


def load_boxes(spec, x: torch.Tensor) -> torch.Tensor:
    """``--boxes``: a ``.pt`` file (or a tensor) of one integer box ``x0, y0, x1, y1`` per input, ``[N, 4]``
    with at least as many rows as inputs (the first are used), inside the images of ``x [N, C, H, W]``."""
    if isinstance(spec, torch.Tensor):
        b = spec
    else:
        path = Path(spec)
        if not path.exists():
            raise ReportError(f"--boxes {spec}: no such file")
        b = _load_pt(path, str(spec))
        if not isinstance(b, torch.Tensor):
            raise ReportError(f"--boxes {spec}: expected a tensor [N, 4] of boxes, got {type(b).__name__}")
    if x.dim() != 4:
        raise ReportError(f"--boxes needs image inputs [N, C, H, W], got inputs of shape {tuple(x.shape)}")
    if b.dim() != 2 or b.shape[1] != 4 or b.is_floating_point() or b.dtype == torch.bool:
        raise ReportError(f"--boxes must be an integer tensor [N, 4] (x0, y0, x1, y1), got {tuple(b.shape)} {b.dtype}")
    if b.shape[0] < x.shape[0]:
        raise ReportError(f"--boxes has {b.shape[0]} boxes for {x.shape[0]} inputs; give one box per input")
    b = b[:x.shape[0]].long()
    h, w = x.shape[2:]
    bad = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ReportError(f"--boxes row {i} {b[i].tolist()} is not a box x0 < x1 <= {w}, y0 < y1 <= {h} inside the "
                          "images (end exclusive)")
    return b


_SAVE_HINT = "save inputs with torch.save(x, path), torch.save((x, y), path) or torch.save({'x': x, 'y': y}, path)"


def _load_pt(path: Path, spec: str):
    """``torch.load(path, weights_only=True)`` with a one-line ReportError for a file that is not a tensor
    file: empty, another format renamed ``.pt``, damaged, or holding objects other than tensors."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ReportError(f"cannot read --data {spec}: {e.strerror or e}") from e
    if not head:
        raise ReportError(f"cannot read --data {spec}: the file is empty; {_SAVE_HINT}")
    # torch.save writes a zip archive (PK..) or, with the legacy format, a pickle (protocol byte 0x80).
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
        looks = "looks like a text file" if text else f"starts with {head!r}"
        raise ReportError(f"cannot read --data {spec}: not a file written by torch.save (it {looks}); {_SAVE_HINT}")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        import pickle

        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            raise ReportError(f"cannot read --data {spec}: it holds objects other than tensors, lists, tuples and "
                              f"dicts (numpy arrays, classes), which are not loaded for safety; {_SAVE_HINT}") from e
        if isinstance(e, RuntimeError) and "zip archive" in str(e):
            raise ReportError(f"cannot read --data {spec}: the file is damaged or truncated; {_SAVE_HINT}") from e
        reason = _first_line(e)
        raise ReportError(f"cannot read --data {spec} (a tensor file saved with torch.save): {type(e).__name__}: "
                          f"{reason[:160]}{'…' if len(reason) > 160 else ''}") from e


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
        # a probe of its own per process: torchrun's ranks check the same folder at once, and one rank's
        # unlink of a shared probe name made another rank's unlink fail
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
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
