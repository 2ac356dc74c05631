"""Grouped deletion / insertion (SOP App. C.2.2) against a slow loop; singleton groups give deletion;
bad input."""
import pytest
import torch

import fastattr.metrics as M
from tests.metrics import slow
from tests.models import rand, small_cnn


def _case():
    model = small_cnn()
    x = rand(2, 3, 8, 8, seed=41)
    g = torch.Generator().manual_seed(7)
    groups = torch.rand(2, 6, 8, 8, generator=g) < 0.25  # per-example, overlapping
    groups[:, :, 0, 0] = True  # every group non-empty
    c = rand(2, 6, seed=42)
    return model, x, groups, c


def test_grouped_matches_a_slow_loop():
    model, x, groups, c = _case()
    t = torch.tensor([1, 2])
    for fn, insert in ((M.grouped_deletion, False), (M.grouped_insertion, True)):
        auc, curve, fractions = fn(model, x, c, t, groups=groups, curves=True)
        assert curve.shape == fractions.shape == (2, 7)
        for b in range(2):
            top = slow.order(c[b])
            changed = torch.zeros(64, dtype=torch.bool)
            ys, xs = [], []
            for k in range(7):
                if k:
                    changed = changed | groups[b, top[k - 1]].reshape(-1)  # changed pixels stay changed
                xt = slow.perturb(x[b], torch.zeros_like(x[b]), ~changed if insert else changed)
                ys.append(slow.score(model, xt, t[b]))
                xs.append(changed.sum().item() / 64)
            expected = torch.tensor(ys, dtype=torch.float64)
            torch.testing.assert_close(curve[b].double(), expected, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(fractions[b].double(), torch.tensor(xs, dtype=torch.float64))
            assert auc[b].item() == pytest.approx(slow.trapezoid(ys, xs), rel=1e-5)
        assert (fractions[:, -1] < 1).all()  # some pixels lie in no group


def test_map_scores_and_shared_float_masks():
    model, x, groups, _ = _case()
    amap = rand(2, 8, 8, seed=43)
    shared = groups[0].double()  # [G, H, W] 0/1, shared by both examples
    got = M.grouped_deletion(model, x, amap, groups=shared)
    c = torch.einsum("ghw,bhw->bg", shared, amap)
    torch.testing.assert_close(got, M.grouped_deletion(model, x, c, groups=shared.bool()))
    mean = M.grouped_deletion(model, x, amap, groups=shared, segment_score="mean")
    by_mean = M.grouped_deletion(model, x, c / shared.sum((1, 2)), groups=shared.bool())
    torch.testing.assert_close(mean, by_mean)


def test_singleton_groups_equal_deletion_and_insertion():
    model = small_cnn()
    x, attr = rand(2, 3, 8, 8, seed=44), rand(2, 8, 8, seed=45)
    singletons = torch.arange(64).view(8, 8)  # segment ids: one group per pixel
    for grouped, plain in ((M.grouped_deletion, M.deletion), (M.grouped_insertion, M.insertion)):
        g_auc, g_curve, g_frac = grouped(model, x, attr, 3, groups=singletons, curves=True)
        auc, curve, frac = plain(model, x, attr, 3, step=1, curves=True)
        torch.testing.assert_close(g_curve, curve)
        torch.testing.assert_close(g_frac, frac.expand(2, -1))
        torch.testing.assert_close(g_auc, auc)
    # equal scores: groups go in index order, exactly like ties in deletion
    flat = torch.zeros(2, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(M.grouped_deletion(model, x, flat, groups=singletons),
                               M.deletion(model, x, flat, step=1))


def test_per_element_groups():
    model = small_cnn()
    x = rand(1, 3, 8, 8, seed=46)
    groups = torch.zeros(3, 3, 8, 8, dtype=torch.bool)
    for ch in range(3):
        groups[ch, ch] = True  # one group per channel
    c = torch.tensor([[0.2, 0.9, 0.5]])
    _, curve, fractions = M.grouped_deletion(model, x, c, 0, groups=groups, curves=True)
    assert fractions[0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    first = x.clone()
    first[:, 1] = 0  # channel 1 (the top group) removed first
    assert curve[0, 1].item() == pytest.approx(slow.score(model, first[0], 0), rel=1e-6)


def test_bad_input():
    model, x, groups, c = _case()
    with pytest.raises(ValueError, match="groups of shape"):
        M.grouped_deletion(model, x, c, groups=groups[:, :, :4])
    empty = groups.clone()
    empty[0, 3] = False
    with pytest.raises(ValueError, match="group 3 of example 0 is empty"):
        M.grouped_insertion(model, x, c, groups=empty)
    with pytest.raises(ValueError, match="neither group scores"):
        M.grouped_deletion(model, x, rand(2, 5), groups=groups)
    with pytest.raises(ValueError, match="NaN"):
        M.grouped_deletion(model, x, torch.full((2, 6), float("nan")), groups=groups)
    with pytest.raises(ValueError, match="score must be one of"):
        M.grouped_deletion(model, x, c, groups=groups, score="logits")
    with pytest.raises(ValueError, match="groups holds no group"):
        M.grouped_deletion(model, x, torch.zeros(2, 0), groups=torch.zeros(0, 8, 8, dtype=torch.bool))
