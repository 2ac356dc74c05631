"""min_total_error (SOP Thm. 1, Lemma 1, Cor. 1; SPEC §8): the paper's values for the monomial, cvxpy
as the oracle of the LP on the digits CNN, the minimiser's own error through deletion_error, zero for
an additive model, and bad input."""
import pytest
import torch
from torch import nn

import fastattr.metrics as M
from fastattr.attribution import integrated_gradients
from fastattr.zoo import load_digits, load_digits_cnn


class Monomial(nn.Module):
    """``f(x) = ∏_i x_i`` as a one-output model on ``[B, d]``."""

    def forward(self, x):
        return x.prod(1, keepdim=True)


MONO = Monomial().eval()


@pytest.mark.parametrize("d,expected", [(2, 1), (3, 2), (4, 5), (5, 9), (6, 19), (7, 34), (8, 69)])
def test_monomial_total_deletion_error_is_the_papers(d, expected):
    """∏ x_i at x = 1, baseline 0: c_S = 1 for every non-empty S; the minima 1, 2, 5, 9, 19, 34, 69."""
    x = torch.ones(1, d, dtype=torch.float64)
    err, alpha = M.min_total_error(MONO, x, kind="deletion", return_attributions=True)
    assert err.item() == pytest.approx(expected, abs=1e-7)
    assert alpha.shape == (1, d)
    # the minimiser reaches that total on the same 2^d − 1 subsets
    own = M.deletion_error(MONO, x, alpha.reshape(1, d), max_exhaustive=d)
    assert own.item() == pytest.approx(expected, abs=1e-7)
    ins = M.min_total_error(MONO, x, kind="insertion")
    assert ins.item() <= 1 + 1e-9  # Lemma 1


def test_grouped_attribution_with_one_group_has_zero_error():
    """Corollary 1: the one group [d] with score f(x) − f(0) explains every deletion and insertion."""
    d = 6
    x = torch.ones(1, d, dtype=torch.float64)
    groups = torch.ones(1, d, dtype=torch.bool)
    c = torch.ones(1, 1, dtype=torch.float64)
    assert M.grouped_deletion_error(MONO, x, c, groups=groups, max_exhaustive=d).item() == 0
    assert M.grouped_insertion_error(MONO, x, c, groups=groups, max_exhaustive=d,
                                     rule="contains").item() == 0
    assert M.min_total_error(MONO, x).item() == pytest.approx(19, abs=1e-7)  # no additive map gets there


def test_matches_cvxpy_on_the_digits_cnn_and_bounds_every_map():
    """The same LP in cvxpy on the 2^6 − 1 segment deletions of two digits; IG's own total error over
    the same subsets is at least the floor."""
    cp = pytest.importorskip("cvxpy")
    model = load_digits_cnn().double()
    x, _ = load_digits("test", 2)
    x = x.double()
    t = model(x).argmax(1)
    segments = (torch.arange(8)[:, None] // 3 * 2 + torch.arange(8)[None] // 4).clamp(max=5)  # 6 bands
    err, alpha = M.min_total_error(model, x, t, segments=segments, return_attributions=True)
    subsets = torch.tensor([[(s >> i) & 1 for i in range(6)] for s in range(1, 64)], dtype=torch.float64)
    with torch.no_grad():
        clean = model(x).gather(1, t[:, None])[:, 0]
        for b in range(2):
            removed = subsets[:, segments.flatten()].reshape(63, 1, 8, 8).bool()
            out = model(torch.where(removed, torch.zeros(()), x[b:b + 1])).gather(1, t[b].repeat(63)[:, None])[:, 0]
            c = (clean[b] - out).numpy()
            a = cp.Variable(6)
            problem = cp.Problem(cp.Minimize(cp.sum(cp.abs(c - subsets.numpy() @ a))))
            problem.solve()
            assert err[b].item() == pytest.approx(problem.value, rel=1e-6, abs=1e-8)
    counts = torch.bincount(segments.flatten(), minlength=6).double()
    spread = (alpha / counts)[:, segments].unsqueeze(1)  # α_i spread over its segment: segment sums are α
    own = M.deletion_error(model, x, spread, t, segments=segments, max_exhaustive=6)
    assert torch.allclose(own, err, rtol=1e-6)
    ig = integrated_gradients(model, x, t)
    assert (M.deletion_error(model, x, ig, t, segments=segments, max_exhaustive=6) >= err - 1e-9).all()
    assert (err > 0).all()  # the CNN is not additive in its segments


def test_additive_model_reaches_zero():
    """f(x) = θᵀx: α_i = θ_i x_i explains every deletion exactly, so the floor is 0."""
    torch.manual_seed(0)
    linear = nn.Linear(7, 1).double().eval()
    x = torch.randn(3, 7, dtype=torch.float64)
    err, alpha = M.min_total_error(linear, x, return_attributions=True)
    assert torch.allclose(err, torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(alpha, linear.weight.detach() * x, atol=1e-9)


def test_bad_input():
    x = torch.rand(1, 21)
    with pytest.raises(ValueError, match="d = 21"):
        M.min_total_error(MONO, x)
    with pytest.raises(ValueError, match="kind must be"):
        M.min_total_error(MONO, x[:, :4], kind="both")
    with pytest.raises(ValueError, match="score must be"):
        M.min_total_error(MONO, x[:, :4], score="logits")
