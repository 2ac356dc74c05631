"""Insertion / deletion error of additive and grouped attributions (SOP Def. 1, 2, 4, 5) against slow
loops over subsets, the zero-error cases of the paper, and bad input."""
import itertools

import pytest
import torch
from torch import nn

import fastattr.metrics as M
from fastattr.metrics.sop import choose_subsets
from tests.metrics import slow
from tests.models import linear_model, mlp, rand, small_cnn


class Polynomial(nn.Module):
    """Logits [Σ_j Π_{i∈T_j} x_i, 0] for monomials T_j (the Boolean polynomials of SOP Sec. 2)."""

    def __init__(self, terms):
        super().__init__()
        self.terms = terms
        self.eval()

    def forward(self, x):
        s = sum(x[:, list(t)].prod(1) for t in self.terms)
        return torch.stack([s, torch.zeros_like(s)], 1)


def _slow_errors(model, x, t, attr_mass, subsets, insert, baseline=0.0):
    """Σ_S |Δ(S) − mass(S)| with Δ from one model call per subset (units = elements of flat inputs)."""
    total = 0.0
    base = torch.full_like(x, baseline)
    for s in subsets:
        m = torch.zeros(x.numel(), dtype=torch.bool)
        m[list(s)] = True
        if insert:
            inserted = slow.score(model, slow.perturb(x, base, ~m), t, "logit")
            delta = inserted - slow.score(model, base, t, "logit")
        else:
            delta = slow.score(model, x, t, "logit") - slow.score(model, slow.perturb(x, base, m), t, "logit")
        total += abs(delta - attr_mass(set(s)))
    return total


def _nonempty(d):
    return [s for k in range(1, d + 1) for s in itertools.combinations(range(d), k)]


def test_exact_attribution_of_a_linear_model_has_zero_error():
    model = linear_model(d=8, classes=3)
    x = rand(2, 8, seed=51)
    exact = model[1].weight[1].detach() * x  # a_i = θ_i x_i (the bias cancels in both errors)
    for fn in (M.deletion_error, M.insertion_error):
        zero = torch.zeros(2, dtype=torch.float64)
        torch.testing.assert_close(fn(model, x, exact, 1), zero, atol=1e-10, rtol=0)
        assert (fn(model, x, rand(2, 8, seed=52), 1) > 1.0).all()


def test_errors_match_a_slow_loop_over_all_subsets():
    model = mlp(d=6, classes=4)
    x, attr = rand(2, 6, seed=53), rand(2, 6, seed=54)
    for fn, insert in ((M.deletion_error, False), (M.insertion_error, True)):
        got = fn(model, x, attr, 2)
        mean = fn(model, x, attr, 2, reduction="mean")
        for b in range(2):
            mass = lambda s, b=b: sum(attr[b, i].item() for i in s)  # noqa: E731
            expected = _slow_errors(model, x[b], 2, mass, _nonempty(6), insert)
            assert got[b].item() == pytest.approx(expected, rel=1e-9)
            assert mean[b].item() == pytest.approx(expected / 63, rel=1e-9)


def test_sampled_and_explicit_subsets():
    model = mlp(d=12, classes=4)
    x, attr = rand(2, 12, seed=55), rand(2, 12, seed=56)
    got = M.deletion_error(model, x, attr, 1, max_exhaustive=4, n_subsets=15, p=0.3, generator=9)
    s = choose_subsets(2, 12, max_exhaustive=4, n_subsets=15, p=0.3, generator=9)
    assert s.shape == (2, 15, 12) and s.any(-1).all()
    for b in range(2):
        subsets = [tuple(r.nonzero().flatten().tolist()) for r in s[b]]
        expected = _slow_errors(model, x[b], 1, lambda q: sum(attr[b, i].item() for i in q), subsets, False)
        assert got[b].item() == pytest.approx(expected, rel=1e-9)
    torch.testing.assert_close(M.deletion_error(model, x, attr, 1, subsets=s), got)
    shared = s[0]  # [K, d]: the same subsets for every example
    torch.testing.assert_close(M.insertion_error(model, x, attr, 1, subsets=shared),
                               M.insertion_error(model, x, attr, 1, subsets=shared.expand(2, -1, -1)))


def test_patch_features():
    model = small_cnn()
    x, attr = rand(1, 3, 8, 8, seed=57), rand(1, 8, 8, seed=58)
    got = M.deletion_error(model, x, attr, 0, patch_size=4)  # 4 patches: 15 subsets
    ids = torch.arange(64).view(8, 8)
    ids = (ids // 8 // 4) * 2 + (ids % 8) // 4
    scores = slow.segment_scores(attr[0], ids, 4)
    total = 0.0
    for s in _nonempty(4):
        xt = slow.perturb(x[0], torch.zeros_like(x[0]), slow.units_of(ids, s))
        delta = slow.score(model, x[0], 0, "logit") - slow.score(model, xt, 0, "logit")
        total += abs(delta - scores[list(s)].sum().item())
    assert got.item() == pytest.approx(total, rel=1e-9)


def test_grouped_errors_reach_zero_where_sop_corollary_1_says():
    ones = torch.ones(1, 5, dtype=torch.float64)
    monomial = Polynomial([range(5)])
    whole = torch.ones(1, 5, dtype=torch.bool)
    c = torch.tensor([[1.0]], dtype=torch.float64)
    torch.testing.assert_close(M.grouped_deletion_error(monomial, ones, c, 0, groups=whole),
                               torch.zeros(1, dtype=torch.float64))
    # no additive attribution does this well (Theorem 1); the uniform one misses every proper subset
    assert M.deletion_error(monomial, ones, torch.full((1, 5), 0.2, dtype=torch.float64), 0).item() > 5
    # "contains": the single group only counts when S is everything, so the other 30 subsets miss by 1
    contains = M.grouped_deletion_error(monomial, ones, c, 0, groups=whole, rule="contains")
    assert contains.item() == pytest.approx(30)
    binomial = Polynomial([(0, 1, 2), (2, 3, 4)])  # S1 = {0, 1}, S2 = {2}, S3 = {3, 4}
    groups = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    c2 = torch.ones(1, 2, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    got = M.grouped_insertion_error(binomial, ones, c2, 0, groups=groups, rule="contains")
    torch.testing.assert_close(got, zero)
    assert M.grouped_insertion_error(binomial, ones, c2, 0, groups=groups).item() > 1


def test_singleton_groups_with_contains_give_the_additive_errors():
    model = mlp(d=6, classes=4)
    x, attr = rand(2, 6, seed=59), rand(2, 6, seed=60)
    singletons = torch.arange(6)
    for grouped, plain in ((M.grouped_deletion_error, M.deletion_error),
                           (M.grouped_insertion_error, M.insertion_error)):
        torch.testing.assert_close(grouped(model, x, attr, 3, groups=singletons, rule="contains"),
                                   plain(model, x, attr, 3))


def test_grouped_errors_match_a_slow_loop():
    model = mlp(d=6, classes=4)
    x = rand(2, 6, seed=61)
    g = torch.Generator().manual_seed(3)
    groups = torch.rand(2, 4, 6, generator=g) < 0.5
    groups[:, :, 0] = True
    c = rand(2, 4, seed=62)
    for rule in ("subset", "contains"):
        for fn, insert in ((M.grouped_deletion_error, False), (M.grouped_insertion_error, True)):
            got = fn(model, x, c, 1, groups=groups, rule=rule)
            for b in range(2):
                sets = [set(groups[b, i].nonzero().flatten().tolist()) for i in range(4)]

                def mass(s, b=b, sets=sets):
                    counted = [i for i, gi in enumerate(sets) if (s <= gi if rule == "subset" else gi <= s)]
                    return sum(c[b, i].item() for i in counted)

                expected = _slow_errors(model, x[b], 1, mass, _nonempty(6), insert)
                assert got[b].item() == pytest.approx(expected, rel=1e-9), (rule, insert)


def test_bad_input():
    model = mlp(d=6, classes=4)
    x, attr = rand(2, 6, seed=63), rand(2, 6, seed=64)
    groups = torch.ones(3, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="rule must be one of"):
        M.grouped_deletion_error(model, x, attr, groups=groups, rule="overlap")
    with pytest.raises(ValueError, match="reduction must be one of"):
        M.deletion_error(model, x, attr, reduction="max")
    with pytest.raises(ValueError, match=r"subsets must have shape \[2, K, 6\]"):
        M.deletion_error(model, x, attr, subsets=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="subsets must be a bool tensor"):
        M.insertion_error(model, x, attr, subsets=torch.ones(4, 6))
    with pytest.raises(ValueError, match="NaN"):
        M.deletion_error(model, x, torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match="attributions of shape"):
        M.insertion_error(model, x, rand(2, 5))
    with pytest.raises(ValueError, match="groups of shape"):
        M.grouped_insertion_error(model, x, attr, groups=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="p must be a probability"):
        M.deletion_error(model, x, attr, max_exhaustive=2, p=0.0)
    with pytest.raises(ValueError, match="n_subsets must be an int >= 1"):
        M.deletion_error(model, x, attr, max_exhaustive=2, n_subsets=0)


def test_sop_errors_draw_a_random_baseline_first_then_the_subsets_from_one_generator():
    """One generator: the uniform baseline first, then the sampled subsets; evaluate() starts from its
    own copy of the same state, so a torch.Generator gives the standalone values too."""
    import fastattr
    from fastattr.core import make_baseline

    model = small_cnn()
    x, a = rand(2, 3, 8, 8, seed=101), rand(2, 8, 8, seed=102)
    kw = dict(patch_size=2, n_subsets=9, max_exhaustive=3)  # 16 patches: sampled subsets
    gen = torch.Generator().manual_seed(5)
    noise = make_baseline(x, "uniform", generator=gen)
    replayed = M.deletion_error(model, x, a, 1, baseline=noise, generator=gen, **kw)
    seeded = M.deletion_error(model, x, a, 1, baseline="uniform", generator=5, **kw)
    torch.testing.assert_close(seeded, replayed)
    ev = fastattr.evaluate(model, x, 1, attributions={"a": a}, metrics=["deletion_error"], baseline="uniform",
                           generator=torch.Generator().manual_seed(5), **kw)
    torch.testing.assert_close(ev["deletion_error"]["a"], replayed)


def test_deletion_error_reads_f_x_off_the_clean_forward():
    """The clean forward that checks the targets gives f(x): deletion runs only the 2^d − 1 subsets;
    insertion adds one reference input per example, the baseline."""
    from fastattr.core import CountingModel

    x, a = rand(2, 3, 8, 8, seed=51), rand(2, 8, 8, seed=52)
    for fn, extra in ((M.deletion_error, 0), (M.insertion_error, 1)):
        counted = CountingModel(small_cnn())
        value = fn(counted, x, a, 1, patch_size=4)
        assert counted.inputs == 2 + 2 * (15 + extra) and value.isfinite().all()
        torch.testing.assert_close(value, fn(small_cnn(), x, a, 1, patch_size=4, max_batch=5))


def test_rescaled_errors_are_the_best_nonnegative_scale_and_scale_free():
    """``rescale=True``: ``min_{c ≥ 0} Σ_S |Δf_S − c·A_S|`` (checked against a fine grid of c), the
    same for the map times 0.01 or times 100, and never above the unscaled error or the zero map's."""
    from fastattr.metrics.sop import additive_errors

    gen = torch.Generator().manual_seed(0)
    change = torch.randn(4, 60, generator=gen, dtype=torch.float64)
    mass = torch.randn(4, 60, generator=gen, dtype=torch.float64) * 2
    mass[3] = -mass[3].abs() * change[3].sign()  # anti-correlated: the best c >= 0 is 0
    best = additive_errors(change, mass, rescale=True).sum(1)
    grid = torch.linspace(0, 5, 50001, dtype=torch.float64)
    brute = (change[:, None] - grid[None, :, None] * mass[:, None]).abs().sum(2).min(1).values
    torch.testing.assert_close(best, brute, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(best[3], change[3].abs().sum())
    assert (best <= additive_errors(change, mass).sum(1) + 1e-12).all()
    model, x = linear_model(), rand(3, 12)
    a = rand(3, 12, seed=4)
    small = M.deletion_error(model, x, a * 0.01, 1, rescale=True, n_subsets=30, max_exhaustive=0)
    large = M.deletion_error(model, x, a * 100.0, 1, rescale=True, n_subsets=30, max_exhaustive=0)
    torch.testing.assert_close(small, large)
    with pytest.raises(TypeError, match="rescale"):
        M.insertion_error(model, x, a, 1, rescale="yes")
