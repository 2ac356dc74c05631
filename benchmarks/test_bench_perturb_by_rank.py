"""pytest-benchmark suite for perturb_by_rank: each fastattr backend, plain torch masks and Quantus's
``batch_baseline_replacement_by_indices`` loop writing a chunk of deletion inputs, the workloads of
``fastattr bench perturb`` (every implementation is checked against the reference first).

Run: ``pytest benchmarks/test_bench_perturb_by_rank.py --benchmark-only --benchmark-group-by=param:case``.
"""
import functools

import pytest
import torch

import fastattr
from fastattr.bench import perturb

pytest.importorskip("pytest_benchmark")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [((8, 3, 64, 64), 64), ((16, 3, 224, 224), 64 if DEVICE == "cuda" else 16)]
IMPLS = [f"fastattr[{b}]" for b in fastattr.available_backends(DEVICE) if b != "triton" or DEVICE == "cuda"]
IMPLS += [perturb.TORCH_MASKS, perturb.QUANTUS]


@functools.lru_cache(maxsize=1)
def _implementations(case):
    return perturb.implementations(*case, DEVICE)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"-{c[1]}steps")
def test_perturb_by_rank(benchmark, case, impl):
    impls = _implementations(case)
    if impl not in impls:
        pytest.skip(f"{impl} not available (quantus not installed)")
    fn = impls[impl]

    def run():
        fn()
        _sync()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
