"""Pointing game, IoU and EHR on hand-made maps, the thesis's App. F examples, a numpy reference and
bad input."""
import numpy as np
import pytest
import torch

import fastattr.metrics as M
from tests.models import rand

X = rand(2, 3, 16, 16, seed=71)  # inputs only give the shapes: localisation never runs a model
BOX = torch.tensor([4, 4, 12, 12])  # x0, y0, x1, y1: rows and columns 4..11, 25 % of the image


def _inside():
    m = torch.zeros(16, 16, dtype=torch.bool)
    m[4:12, 4:12] = True
    return m


def _slow_ehr(amap, region):
    a = np.clip(amap, 0, None)
    a = a / a.max()
    a[a < 0.1] = 0
    levels = np.linspace(0, 1, 11)
    ratios = []
    for q in np.quantile(a[a > 0], levels):
        above = a >= min(q, 0.99 * a.max())
        ratios.append((a * region * above).sum() / above.sum())
    return np.trapezoid(ratios, levels)


def test_ehr_on_the_synthetic_examples_of_app_f():
    inside = _inside().double()
    a = inside.expand(2, -1, -1)  # (a): 1 inside, 0 outside
    b = (inside + 0.25 * (1 - inside)).expand(2, -1, -1)  # (b): also 0.25 outside
    c = (0.25 * inside).expand(2, -1, -1)  # (c): 0.25 inside, 0 outside
    torch.testing.assert_close(M.ehr(None, X, a, boxes=BOX), torch.ones(2, dtype=torch.float64))
    eb = M.ehr(None, X, b, boxes=BOX)
    assert (eb < 0.6).all()
    assert eb[0].item() == pytest.approx(_slow_ehr(b[0].numpy().copy(), inside.numpy()))
    torch.testing.assert_close(M.ehr(None, X, c, boxes=BOX, normalize=None),
                               torch.full((2,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(M.ehr(None, X, c, boxes=BOX), torch.ones(2, dtype=torch.float64))
    assert M.ehr(None, X, torch.zeros(2, 16, 16, dtype=torch.float64), boxes=BOX).tolist() == [0.0, 0.0]


def test_ehr_matches_numpy_on_random_maps():
    amap = rand(2, 3, 16, 16, seed=72)  # per element: summed over channels
    region = _inside()
    value, ratios, levels = M.ehr(None, X, amap, masks=region, curves=True)
    assert ratios.shape == (2, 11) and levels.tolist() == pytest.approx(np.linspace(0, 1, 11).tolist())
    for b in range(2):
        assert value[b].item() == pytest.approx(_slow_ehr(amap[b].sum(0).numpy(), region.numpy()), rel=1e-10)
    torch.testing.assert_close(M.ehr(None, X, amap, boxes=BOX), value)


def test_pointing_game():
    amap = torch.zeros(2, 16, 16, dtype=torch.float64)
    amap[0, 5, 6] = 1.0  # inside the box
    amap[1, 2, 8] = 1.0  # two rows above it
    assert M.pointing_game(None, X, amap, boxes=BOX).tolist() == [1.0, 0.0]
    assert M.pointing_game(None, X, amap, boxes=BOX, tolerance=2).tolist() == [1.0, 1.0]
    assert M.pointing_game(None, X, amap, boxes=BOX, tolerance=1.9).tolist() == [1.0, 0.0]
    assert M.pointing_game(None, X, amap, masks=_inside()).tolist() == [1.0, 0.0]
    ties = torch.ones(2, 16, 16, dtype=torch.float64)  # all equal: the first pixel (0, 0) is the peak
    assert M.pointing_game(None, X, ties, boxes=BOX).tolist() == [0.0, 0.0]
    assert M.pointing_game(None, X, ties, boxes=[0, 0, 1, 1]).tolist() == [1.0, 1.0]


def test_iou():
    inside = _inside().double()
    exact = inside.expand(2, -1, -1)
    torch.testing.assert_close(M.iou(None, X, exact, boxes=BOX), torch.ones(2, dtype=torch.float64))
    half = inside.clone()
    half[4:8, 4:12] = 0.3  # the top half of the box weaker: thresholded away at 0.5, kept at 0.25
    assert M.iou(None, X, half.expand(2, -1, -1), boxes=BOX).tolist() == pytest.approx([0.5, 0.5])
    low = M.iou(None, X, half.expand(2, -1, -1), boxes=BOX, threshold=0.25)
    assert low.tolist() == pytest.approx([1.0, 1.0])
    signed = inside + 0.4 * (1 - inside)
    signed[0, 0] = -2.0  # one strongly negative pixel: "max" clamps it, "minmax" lifts the outside to 0.8
    assert M.iou(None, X, signed.expand(2, -1, -1), boxes=BOX).tolist() == pytest.approx([1.0, 1.0])
    lifted = M.iou(None, X, signed.expand(2, -1, -1), boxes=BOX, normalize="minmax")
    assert lifted.tolist() == pytest.approx([64 / 255, 64 / 255])
    amap = rand(2, 16, 16, seed=73)
    got = M.iou(None, X, amap, masks=_inside(), top_fraction=0.25)
    for b in range(2):
        order = sorted(range(256), key=lambda i: (-amap[b].reshape(-1)[i].item(), i))[:64]
        chosen = torch.zeros(256, dtype=torch.bool)
        chosen[order] = True
        region = _inside().reshape(-1)
        assert got[b].item() == pytest.approx((chosen & region).sum().item() / (chosen | region).sum().item())


def test_bad_input():
    amap = rand(2, 16, 16, seed=74)
    with pytest.raises(ValueError, match="exactly one of boxes and masks"):
        M.iou(None, X, amap)
    with pytest.raises(ValueError, match="exactly one of boxes and masks"):
        M.iou(None, X, amap, boxes=BOX, masks=_inside())
    with pytest.raises(ValueError, match="boxes must satisfy"):
        M.pointing_game(None, X, amap, boxes=[4, 4, 20, 12])
    with pytest.raises(ValueError, match="boxes must satisfy"):
        M.pointing_game(None, X, amap, boxes=[4, 4, 4, 12])
    with pytest.raises(ValueError, match="boxes must be integer"):
        M.ehr(None, X, amap, boxes=[[1.5, 0, 3, 3], [0, 0, 3, 3]])
    with pytest.raises(ValueError, match="masks of shape"):
        M.ehr(None, X, amap, masks=torch.ones(15, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="region is empty"):
        M.ehr(None, X, amap, masks=torch.zeros(16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="binary"):
        M.iou(None, X, amap, masks=torch.full((16, 16), 0.5))
    with pytest.raises(ValueError, match="attributions of shape"):
        M.iou(None, X, rand(2, 16, 15), boxes=BOX)
    with pytest.raises(ValueError, match="NaN"):
        M.ehr(None, X, torch.full((2, 16, 16), float("nan")), boxes=BOX)
    with pytest.raises(ValueError, match="top_fraction"):
        M.iou(None, X, amap, boxes=BOX, top_fraction=0.0)
    with pytest.raises(ValueError, match="threshold"):
        M.iou(None, X, amap, boxes=BOX, threshold=2.0)
    with pytest.raises(ValueError, match="normalize"):
        M.ehr(None, X, amap, boxes=BOX, normalize="zscore")
    with pytest.raises(ValueError, match="normalize=None needs"):
        M.ehr(None, X, amap, boxes=BOX, normalize=None)
    with pytest.raises(ValueError, match="tolerance"):
        M.pointing_game(None, X, amap, boxes=BOX, tolerance=-1)
