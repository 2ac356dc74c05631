"""pytest-benchmark suite for sparsemax: each fastattr backend and entmax, fwd and fwd+bwd.

Run: ``pytest benchmarks --benchmark-only --benchmark-group-by=param:shape,param:mode``.
"""
import pytest
import torch

import fastattr

pytest.importorskip("pytest_benchmark")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(4096, 1024), (256, 32768)] if DEVICE == "cpu" else [(16384, 4096), (64, 1_048_576)]


def _impls():
    impls = {f"fastattr-{b}": (lambda t, b=b: fastattr.sparsemax(t, backend=b))
             for b in fastattr.available_backends(DEVICE)}
    try:
        import entmax

        impls["entmax"] = lambda t: entmax.sparsemax(t, dim=-1)
    except ImportError:
        pass
    return impls


IMPLS = _impls()


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_sparsemax(benchmark, impl, mode, shape):
    fn = IMPLS[impl]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(DEVICE)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(x)
            _sync()
    else:
        xr = x.clone().requires_grad_()
        g = torch.randn(shape, generator=gen).to(DEVICE)

        def run():
            torch.autograd.grad(fn(xr), xr, g)
            _sync()
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
