"""The Triton kernels that cut rows into blocks of 1024 entries (:mod:`fastattr.triton._grid`: every
(row, block) program on grid axis 0, each finding its row and block) on rows of several blocks, the last
one partial, against the reference: the other tests of these ops draw rows shorter than one block."""
import pytest
import torch

from fastattr import _backend
from fastattr.core import rank_features
from fastattr.ops import bottleneck, distinct_copies, first_equal_group, path_interpolate, perturb_by_rank, stencil_solve

from ..conftest import TOL, rel_err

pytestmark = pytest.mark.skipif(not (_backend.triton_available() and (_backend.triton_interpret()
                                                                       or torch.cuda.is_available())),
                                reason="needs Triton (a CUDA device, or TRITON_INTERPRET=1 on CPU)")

LONG = 2 * 1024 + 300  # entries per row: two full blocks and a partial one


@pytest.fixture
def device():
    return "cpu" if _backend.triton_interpret() else "cuda"


def _draw(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("shared", [True, False])
def test_path_interpolate(device, shared):
    x, base, alphas = _draw(3, LONG), _draw(1 if shared else 3, LONG, seed=1), torch.rand(4, dtype=torch.float64)
    out = path_interpolate(x.to(device), base.to(device), alphas.to(device), backend="triton")
    assert torch.equal(out.cpu(), path_interpolate(x, base, alphas, backend="reference"))


@pytest.mark.parametrize("insert", [True, False])
def test_perturb_by_rank(device, insert):
    x, base = _draw(2, 3, LONG), _draw(2, 3, LONG, seed=1)
    rank, counts = rank_features(_draw(2, LONG, seed=2)), torch.tensor([5, 1500, LONG])
    out = perturb_by_rank(x.to(device), base.to(device), rank.to(device), counts.to(device), insert=insert,
                          backend="triton")
    assert torch.equal(out.cpu(), perturb_by_rank(x, base, rank, counts, insert=insert, backend="reference"))


def test_distinct_copies(device):
    x, masks = _draw(3, 2, LONG), torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(1)) < 0.5
    masks[:, 3] = masks[:, 1]                                               # a repeated group
    first, unit_patch = first_equal_group(masks), torch.arange(LONG) * 6 // LONG
    copies, slot = distinct_copies(x.to(device), masks.to(device), first.to(device), unit_patch.to(device),
                                   backend="triton")
    expected = distinct_copies(x, masks, first, unit_patch, backend="reference")
    assert torch.equal(copies.cpu(), expected[0]) and torch.equal(slot.cpu(), expected[1])


def test_bottleneck_and_its_backward(device):
    R, alpha, eps = _draw(2, 1, 40, 60), _draw(2, 1, 40, 60, seed=1), _draw(2, 3, 1, 40, 60, seed=2)
    mu, sigma = 0.5 * _draw(1, 40, 60, seed=3), torch.rand(1, 40, 60, dtype=torch.float64) + 0.3

    def run(backend, where):
        r, a = R.to(where).requires_grad_(True), alpha.to(where).requires_grad_(True)
        Z, cap = bottleneck(r, a, mu.to(where), sigma.to(where), eps.to(where), backend=backend)
        grads = torch.autograd.grad((Z * Z).sum() + cap.sum(), (r, a))
        return [t.detach().cpu() for t in (Z, cap, *grads)]

    for got, expected in zip(run("triton", device), run("reference", "cpu")):
        assert rel_err(got, expected) <= TOL[torch.float64]


def test_stencil_solve(device):
    rhs = _draw(2, 2, 40, 60)
    removed = torch.zeros(2, 40, 60, dtype=torch.bool)
    removed[:, 5:35, 10:50] = True                                          # 1200 unknown pixels a plane
    out = stencil_solve(rhs.to(device), removed.to(device), tol=1e-12, max_iter=5000, backend="triton")
    expected = stencil_solve(rhs, removed, tol=1e-12, max_iter=5000, backend="reference")
    assert rel_err(out, expected) <= TOL[torch.float64]
