"""Train the zoo's Sum-of-Parts wrapper of the digits CNN and save its state_dict.

Usage: ``python -m fastattr.zoo.train_digits_sop --out python/fastattr/zoo/digits_sop.pt``

Starts from the shipped ``digits_cnn.pt`` (backbone ``net[:8]``, head ``net[8]``), settings
``SOP_CONFIG``; ``fastattr.train_sop`` on the fixed train split, seeded, on CPU: a frozen-backbone
phase (GroupGen, GroupSelect, head), then fine-tuning of everything at a lower rate; cosine rates.
Prints the backbone's and the SOP's train/test accuracy and the time.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fastattr.models import train_sop
from fastattr.zoo import SOP_WEIGHTS_PATH, digits_sop, load_digits, load_digits_cnn


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return (model(x).argmax(1) == y).float().mean().item()
    finally:
        for m, flag in flags:
            m.training = flag


def train(frozen_epochs: int = 5, finetune_epochs: int = 15, seed: int = 0, lr: float = 1e-3,
          finetune_lr: float = 5e-4, progress: bool = False):
    """The SOP wrapper of the shipped CNN, trained from ``seed`` on ``load_digits("train")``."""
    data = load_digits("train")
    model = digits_sop(load_digits_cnn(), generator=seed)
    losses = train_sop(model, data, epochs=frozen_epochs, lr=lr, finetune=False, generator=seed,
                       progress=progress) if frozen_epochs else []
    if finetune_epochs:
        losses += train_sop(model, data, epochs=finetune_epochs, lr=finetune_lr, finetune=True,
                            generator=seed + 1, progress=progress)
    return model.eval(), losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SOP_WEIGHTS_PATH)
    parser.add_argument("--frozen-epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    model, losses = train(args.frozen_epochs, args.finetune_epochs, args.seed, progress=args.progress)
    elapsed = time.perf_counter() - t0
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    cnn = load_digits_cnn()
    print(f"losses {' '.join(f'{v:.3f}' for v in losses)}")
    print(f"backbone: train acc {accuracy(cnn, x_tr, y_tr):.4f}  test acc {accuracy(cnn, x_te, y_te):.4f}")
    print(f"SOP:      train acc {accuracy(model, x_tr, y_tr):.4f}  test acc {accuracy(model, x_te, y_te):.4f}  "
          f"time {elapsed:.1f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
