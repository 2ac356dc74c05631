"""Embedded default model: a small CNN trained on the scikit-learn 8x8 digits.

The model, its data loader and the fixed train/test split are shipped with the package so that
examples, tests and benchmarks have a real trained classifier without any download.

- Data: ``sklearn.datasets.load_digits()`` (1797 grayscale 8x8 images, 10 classes), pixels
  scaled to [0, 1] (pixel / 16), shape ``[N, 1, 8, 8]`` float32.
- Split: ``train_test_split(test_size=0.25, random_state=0, stratify=y)``: 1347 train, 450 test.
- Architecture (``DigitsCNN.net``, one ``nn.Sequential``): Conv2d(1->16, 3, pad 1) - ReLU -
  Conv2d(16->32, 3, pad 1) - ReLU - MaxPool2d(2) - Flatten - Linear(512->64) - ReLU -
  Linear(64->10); 38,282 parameters.
- Weights: ``digits_cnn.pt`` next to this module, produced by ``python -m
  fastattr.zoo.train_digits``. Measured accuracy: train 99.41%, test 99.56% (448/450).
- Sum-of-Parts wrapper of the CNN (:func:`load_digits_sop`): backbone ``net[:8]`` (64 features),
  class head ``net[8]``, 8 groups of 8 of the 16 2×2-pixel patches; weights ``digits_sop.pt`` (the
  fine-tuned backbone included), produced by ``python -m fastattr.zoo.train_digits_sop`` (5 epochs
  frozen at rate 1e-3, 15 fine-tuned at 5e-4; 45 s on 2 CPU threads). Measured accuracy: train 100%,
  test 98.44% (443/450), 1.1 points below the CNN.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DigitsCNN", "load_digits_cnn", "load_digits", "digits_rgb", "WEIGHTS_PATH", "TEST_ACCURACY",
           "load_digits_sop", "digits_sop", "SOP_WEIGHTS_PATH", "SOP_CONFIG", "SOP_TEST_ACCURACY"]

WEIGHTS_PATH = Path(__file__).parent / "digits_cnn.pt"
TEST_ACCURACY = 0.9956
SOP_WEIGHTS_PATH = Path(__file__).parent / "digits_sop.pt"
#: the shipped SOP's settings: 2×2-pixel patches (16), 8 groups of k·16 = 8 patches
SOP_CONFIG = {"patch_size": 2, "n_groups": 8, "k": 0.5, "attn_dim": 32}
SOP_TEST_ACCURACY = 0.9844
_SPLITS = ("train", "test", "all")


class DigitsCNN(nn.Module):
    """CNN for 8x8 digits: input ``[B, 1, 8, 8]`` in [0, 1], output ``[B, 10]`` logits.

    Layers live in the single ``nn.Sequential`` attribute ``net`` (Conv2d, ReLU, MaxPool2d,
    Flatten, Linear only), so layer-wise attribution and contextual decomposition can walk it.
    With the shipped weights the test accuracy is 99.56% on the fixed ``load_digits("test")`` split.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def load_digits_cnn(pretrained: bool = True) -> DigitsCNN:
    """Return a ``DigitsCNN`` in eval mode, with the shipped weights when ``pretrained`` (test acc 99.56%).

    ``pretrained=False`` gives PyTorch's default random initialisation.
    """
    model = DigitsCNN()
    if pretrained:
        state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def load_digits(split: str = "test", n: int | None = None) -> tuple[Tensor, Tensor]:
    """Return ``(x, y)`` from the scikit-learn digits: x ``[N, 1, 8, 8]`` float32 in [0, 1], y ``[N]`` long.

    ``split`` is ``"train"`` (1347), ``"test"`` (450) or ``"all"`` (1797, original order); the
    train/test split is fixed: ``train_test_split(test_size=0.25, random_state=0, stratify=y)``.
    ``n`` keeps the first ``n`` examples. Requires scikit-learn.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError("fastattr.zoo.load_digits requires scikit-learn (pip install scikit-learn)") from e

    data = _sk_load_digits()
    images = data.images.astype(np.float32) / 16.0
    labels = data.target.astype(np.int64)
    if split != "all":
        x_tr, x_te, y_tr, y_te = train_test_split(
            images, labels, test_size=0.25, random_state=0, stratify=labels
        )
        images, labels = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    if n is not None:
        images, labels = images[:n], labels[:n]
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    y = torch.from_numpy(np.ascontiguousarray(labels))
    return x, y


def digits_rgb(x: Tensor, size: int = 32) -> Tensor:
    """Map ``[B, 1, H, W]`` grayscale to ``[B, 3, size, size]`` by channel repeat and bilinear upsampling."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"x must have shape [B, 1, H, W], got {tuple(x.shape)}")
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.repeat(1, 3, 1, 1)


def digits_sop(cnn: DigitsCNN | None = None, generator: int = 0):
    """An untrained :class:`fastattr.SumOfParts` around a ``DigitsCNN`` (default: the shipped one):
    backbone ``net[:8]`` (the 64 features before the last Linear), class head initialised from
    ``net[8]``, settings :data:`SOP_CONFIG`. The backbone is the CNN's own modules (not copied)."""
    from ..models import SumOfParts

    cnn = load_digits_cnn() if cnn is None else cnn
    return SumOfParts(cnn.net[:8], 10, input_shape=(1, 8, 8), head=cnn.net[8], generator=generator, **SOP_CONFIG)


def load_digits_sop(pretrained: bool = True):
    """The shipped Sum-of-Parts wrapper of the digits CNN (SOP, SPEC §6) in eval mode: ``forward(x)``
    gives logits ``[B, 10]``, ``explain(x)`` 8 groups of 2×2-pixel patches and their scores.

    ``pretrained=False``: the untrained wrapper of the shipped CNN (:func:`digits_sop`)."""
    model = digits_sop(load_digits_cnn())
    if pretrained:
        model.load_state_dict(torch.load(SOP_WEIGHTS_PATH, map_location="cpu", weights_only=True))
    return model.eval()
