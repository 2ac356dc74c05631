"""``fastattr bench theory``: SOP Theorem 1 reproduced by :func:`fastattr.metrics.min_total_error` —
the least total deletion error of any additive attribution of the monomial ``∏ x_i`` at ``x = 1``
(baseline 0) for d = 2..14, the least insertion error (Lemma 1: ≤ 1), and the fit of
``log(error)`` against d next to the paper's ``e^{0.664 d − 1.159}``."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..metrics import min_total_error
from . import Table, machine_info

PAPER = {2: 1, 3: 2, 4: 5, 5: 9, 6: 19, 7: 34, 8: 69}  # SOP App. A, the values printed


class _Monomial(nn.Module):
    def forward(self, x):
        return x.prod(1, keepdim=True)


def theory_table(max_d: int = 14, device: Optional[str] = None) -> Table:
    device = torch.device(device or "cpu")
    table = Table(name="SOP Thm. 1: least total deletion / insertion error of an additive attribution, ∏ x_i at x = 1",
                  columns=["d", "subsets", "deletion (LP)", "paper", "insertion (LP)", "LP s"],
                  machine=machine_info(device), params={"max_d": max_d})
    ds, errs, model = [], [], _Monomial().eval()
    for d in range(2, max_d + 1):
        x = torch.ones(1, d, dtype=torch.float64, device=device)
        start = time.perf_counter()
        dele = min_total_error(model, x).item()
        seconds = time.perf_counter() - start
        ins = min_total_error(model, x, kind="insertion").item()
        table.add(d, 2 ** d - 1, round(dele, 6), PAPER.get(d, "-"), round(ins, 6), seconds)
        ds.append(d)
        errs.append(dele)
    slope, intercept = np.polyfit(ds, np.log(errs), 1)
    table.notes.append(f"fit over d = 2..{max_d}: log(error) ≈ {slope:.3f} d {intercept:+.3f} "
                       "(paper: 0.664 d − 1.159)")
    return table


def default_tables(device: Optional[str] = None, repeat: int = 1) -> list[Table]:
    return [theory_table(device=device)]
