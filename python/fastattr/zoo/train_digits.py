"""Train the embedded ``DigitsCNN`` on the fixed digits train split and save its state_dict.

Usage: ``python -m fastattr.zoo.train_digits --out python/fastattr/zoo/digits_cnn.pt``

Seeded and deterministic on CPU: Adam (lr 3e-3, weight decay 1e-4), batch 64, cosine LR schedule,
light augmentation (random shifts of up to 1 pixel); prints train/test accuracy and time.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastattr.zoo import DigitsCNN, load_digits


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel in each direction, zero-filled."""
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (x.shape[0],), generator=gen)
    dx = torch.randint(0, 3, (x.shape[0],), generator=gen)
    rows = (dy[:, None] + torch.arange(8))[:, None, :, None].expand(-1, 1, 8, 10)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(8))[:, None, None, :].expand(-1, 1, 8, 8)
    return out.gather(3, cols)


def train(epochs: int = 40, seed: int = 0, batch_size: int = 64, lr: float = 3e-3) -> DigitsCNN:
    """Train a ``DigitsCNN`` from a fixed seed on ``load_digits("train")``."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)
    x, y = load_digits("train")
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(random_shift(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "digits_cnn.pt")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(min(2, torch.get_num_threads()))
    t0 = time.perf_counter()
    model = train(epochs=args.epochs, seed=args.seed)
    elapsed = time.perf_counter() - t0
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params}  train acc {accuracy(model, x_tr, y_tr):.4f}  "
          f"test acc {accuracy(model, x_te, y_te):.4f}  time {elapsed:.1f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
