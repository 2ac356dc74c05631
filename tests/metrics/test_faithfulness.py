"""Deletion / insertion on hand-computed cases, tie order, channel-shared features,
chunk-size independence and bad input."""
import pytest
import torch
from torch import nn

import fastattr.metrics as M
from fastattr.metrics.perturb import make_baseline, rank_features
from tests.models import rand, small_cnn


class Weighted(nn.Module):
    """f(x) = [Σ w_i x_i, 0]: logit 0 is a weighted sum, so the curves have closed forms."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64), requires_grad=False)
        self.eval()

    def forward(self, x):
        s = (x.reshape(x.shape[0], -1) * self.w).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_deletion_and_insertion_by_hand():
    model = Weighted([1.0, 2.0, 3.0, 4.0])
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    attr = torch.tensor([[0.1, 0.4, 0.2, 0.3]], dtype=torch.float64)  # order: 1, 3, 2, 0
    auc, curve, frac = M.deletion(model, x, attr, 0, score="logit", step=1, curves=True)
    # removing features 1 (w=2), 3 (w=4), 2 (w=3), 0 (w=1) one at a time from a total of 10
    torch.testing.assert_close(curve[0].double(), torch.tensor([10.0, 8.0, 4.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(frac, torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    expected = 0.25 * ((10 + 8) / 2 + (8 + 4) / 2 + (4 + 1) / 2 + (1 + 0) / 2)
    assert auc.item() == pytest.approx(expected)
    ins_auc, ins_curve, _ = M.insertion(model, x, attr, 0, score="logit", step=2, curves=True)
    torch.testing.assert_close(ins_curve[0].double(), torch.tensor([0.0, 6.0, 10.0], dtype=torch.float64))
    assert ins_auc.item() == pytest.approx(0.5 * (3 + 8))


def test_probability_reader_and_fraction_steps():
    model = Weighted([1.0, -1.0, 0.5, 2.0])
    x = torch.tensor([[0.5, 1.0, -1.0, 0.25]], dtype=torch.float64)
    attr = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    _, curve, frac = M.deletion(model, x, attr, 0, step=0.5, curves=True)
    logits = [0.5 - 1.0 - 0.5 + 0.5, -0.5 + 0.5, 0.0]  # 0, then features 0-1, then all removed
    probs = torch.sigmoid(torch.tensor(logits, dtype=torch.float64))  # softmax([s, 0])[0]
    torch.testing.assert_close(curve[0].double(), probs, rtol=1e-6, atol=1e-7)
    assert frac.tolist() == [0.0, 0.5, 1.0]


def test_ties_are_broken_by_feature_index():
    scores = torch.tensor([[1.0, 3.0, 1.0, 3.0, 0.0]])
    assert rank_features(scores).tolist() == [[2, 0, 3, 1, 4]]
    model = Weighted([1.0, 10.0, 100.0])
    x = torch.ones(1, 3, dtype=torch.float64)
    _, curve, _ = M.deletion(model, x, torch.zeros(1, 3, dtype=torch.float64), 0, score="logit", step=1, curves=True)
    torch.testing.assert_close(curve[0].double(), torch.tensor([111.0, 110.0, 100.0, 0.0], dtype=torch.float64))


def test_channel_reduced_map_removes_all_channels_of_a_pixel():
    model = small_cnn()
    x = rand(2, 3, 8, 8, seed=1)
    attr = rand(2, 8, 8, seed=2)
    _, curve, _ = M.deletion(model, x, attr, 1, step=64, curves=True)
    with torch.no_grad():
        full = model(x).softmax(1)[:, 1]
        empty = model(torch.zeros_like(x)).softmax(1)[:, 1]
    torch.testing.assert_close(curve[:, 0], full.float())
    torch.testing.assert_close(curve[:, -1], empty.float())
    per_element = M.deletion(model, x, rand(2, 3, 8, 8, seed=3), 1)
    assert per_element.shape == (2,)


def test_result_does_not_depend_on_chunk_size():
    model = small_cnn()
    x = rand(3, 3, 8, 8, seed=4)
    attr = rand(3, 8, 8, seed=5)
    for metric in (M.deletion, M.insertion):
        ref = metric(model, x, attr, max_batch=1, baseline="blur")
        for mb in (5, 64, 10_000):
            torch.testing.assert_close(metric(model, x, attr, max_batch=mb, baseline="blur"), ref)


def test_baselines():
    x = rand(2, 3, 8, 8, seed=6)
    torch.testing.assert_close(make_baseline(x, 0.5), torch.full_like(x, 0.5))
    mean = make_baseline(x, "mean")
    torch.testing.assert_close(mean[:, :, 0, 0], x.mean((2, 3)))
    blur = make_baseline(x, "blur")
    assert blur.shape == x.shape and blur.std() < x.std()
    torch.testing.assert_close(make_baseline(torch.ones(1, 1, 6, 6), "blur"), torch.ones(1, 1, 6, 6))
    with pytest.raises(ValueError, match="baseline"):
        make_baseline(x, "noise")


def test_inputs_and_attributions_are_not_modified():
    model = small_cnn()
    x, attr = rand(2, 3, 8, 8, seed=7), rand(2, 8, 8, seed=8)
    xc, ac = x.clone(), attr.clone()
    M.insertion(model, x, attr)
    assert torch.equal(x, xc) and torch.equal(attr, ac)


def test_bad_input_errors():
    model = small_cnn()
    x = rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="attributions of shape"):
        M.deletion(model, x, rand(2, 7, 8))
    with pytest.raises(ValueError, match="NaN"):
        M.deletion(model, x, torch.full((2, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="larger than the number of features"):
        M.deletion(model, x, rand(2, 8, 8), step=65)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        M.insertion(model, x, rand(2, 8, 8), step=1.5)
    with pytest.raises(ValueError, match="score must be one of"):
        M.insertion(model, x, rand(2, 8, 8), score="margin")
    with pytest.raises(ValueError, match="target out of range"):
        M.deletion(model, x, rand(2, 8, 8), target=9)
