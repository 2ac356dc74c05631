"""ACD: hierarchy structure, scores equal direct CD, one CD batch per iteration, a linear model
where CD scores are known exactly, 1-D on an LSTM, plotting, bad input."""
import numpy as np
import pytest
import torch
from torch import nn

from fastattr.cd import agglomerate as agg
from fastattr.cd import contextual_decomposition
from fastattr.zoo import load_digits, load_digits_cnn

from .models import text_lstm


def _check_hierarchy(h, model, x, t, n_growth):
    growth = h.levels[:n_growth]
    for before, after in zip(growth, growth[1:]):
        assert ((before["labels"] > 0) <= (after["labels"] > 0)).all()       # selections only grow
    assert len(h.levels[-1]["scores"]) == 1
    for before, after in zip(h.levels[n_growth - 1:], h.levels[n_growth:]):
        assert len(after["scores"]) == len(before["scores"]) - 1             # one merge per level
    level = h.levels[len(h.levels) // 2]
    for g, score in level["scores"].items():
        mask = torch.from_numpy(h.input_mask(len(h.levels) // 2, g)).to(x.dtype)
        direct = contextual_decomposition(model, x, mask[None, None] if x.dim() == 4 else mask[None],
                                          target=t)[0]
        assert abs(direct.item() - score) <= 1e-4 * max(1.0, abs(score))


def test_agglomerate_2d_on_digits(monkeypatch):
    model = load_digits_cnn()
    x, y = load_digits("test", n=1)
    calls = []
    original = agg.contextual_decomposition

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(agg, "contextual_decomposition", counting)
    h = agg.agglomerate_2d(model, x[0], sweep=2, percentile=80, n_iters=3)
    assert h.unit_scores.shape == (4, 4) and h.target == int(y[0])
    assert 1 <= h.n_growth <= 3
    # singles, then one batch per growth iteration and one per merge: a single CD call each
    assert len(calls) == 1 + len(h.levels)
    _check_hierarchy(h, model, x, int(y[0]), h.n_growth)
    singles = contextual_decomposition(model, x, torch.from_numpy(
        np.kron(np.eye(16).reshape(16, 4, 4), np.ones((2, 2)))).float()[:, None], target=y)[0]
    np.testing.assert_allclose(h.unit_scores.ravel(), singles[0].numpy(), rtol=1e-5, atol=1e-6)
    assert len(h.to_dict()["levels"]) == len(h.levels)


def test_linear_model_scores_are_exact_sums():
    """No bias: CD(S) = Σ_{i∈S} w_i x_i, so unit scores, selections and merges are predictable."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 2, bias=False)).double().eval()
    x = torch.randn(10, dtype=torch.float64)
    h = agg.agglomerate_1d(model, x, target=0, percentile=85, n_iters=2)
    contrib = (model[0].weight[0] * x).detach().numpy()
    np.testing.assert_allclose(h.unit_scores, contrib, rtol=1e-12)
    first = h.levels[0]["labels"] > 0
    assert first[np.argmax(contrib)] and first.sum() == (contrib >= np.percentile(contrib, 85)).sum()
    for g, s in h.levels[-1]["scores"].items():
        np.testing.assert_allclose(s, contrib[h.levels[-1]["labels"] == g].sum(), rtol=1e-10)


def test_agglomerate_1d_on_an_lstm_and_plot():
    model = text_lstm()
    ids = torch.randint(0, 30, (10,), generator=torch.Generator().manual_seed(4))
    h = agg.agglomerate_1d(model, ids, percentile=80, n_iters=3)
    assert h.unit_scores.shape == (10,)
    for lv in h.levels:
        for g in lv["scores"]:
            run = np.nonzero(lv["labels"] == g)[0]
            assert (np.diff(run) == 1).all()                      # 1-D groups are contiguous runs
    _check_hierarchy(h, model, ids[None], h.target, h.n_growth)
    fig = agg.plot_hierarchy(h)
    assert len(fig.axes) == len(h.levels)
    x, _ = load_digits("test", n=1)
    h2 = agg.agglomerate_2d(load_digits_cnn(), x, sweep=4, percentile=50, n_iters=1)
    assert len(agg.plot_hierarchy(h2, x[0], levels=[0]).axes) == 1


def test_bad_input():
    model = load_digits_cnn()
    x, _ = load_digits("test", n=2)
    with pytest.raises(ValueError, match="one example"):
        agg.agglomerate_2d(model, x)
    with pytest.raises(ValueError, match="percentile"):
        agg.agglomerate_2d(model, x[0], percentile=101)
    with pytest.raises(ValueError, match="sweep"):
        agg.agglomerate_2d(model, x[0], sweep=0)
    with pytest.raises(ValueError, match="n_iters"):
        agg.agglomerate_2d(model, x[0], n_iters=0)


def test_input_mask_is_cropped_when_sweep_does_not_divide_the_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(3 * 3 * 3, 4)).double().eval()
    x = torch.rand(1, 7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = agg.agglomerate_2d(model, x, sweep=2, percentile=70, n_iters=3)
    assert h.unit_scores.shape == (4, 4) and h.spatial == (7, 7)
    for level in (0, len(h.levels) - 1):
        for g, score in h.levels[level]["scores"].items():
            mask = h.input_mask(level, g)
            assert mask.shape == (7, 7)
            direct = contextual_decomposition(model, x[None], torch.from_numpy(mask).double()[None, None],
                                              target=h.target)[0]
            assert abs(direct.item() - score) <= 1e-10 * max(1.0, abs(score))
    v = torch.randn(9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lin = nn.Sequential(nn.Linear(9, 2, bias=False)).double().eval()
    h1 = agg.agglomerate_1d(lin, v, target=0, sweep=2, percentile=60, n_iters=2)
    assert h1.input_mask(0, 1).shape == (9,) and h1.to_dict()["spatial"] == [9]


def test_percentile_100_and_numpy_counts():
    """percentile 100 (allowed by acd) selects the best unit(s) only; numpy ints work as counts."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 2, bias=False)).double().eval()
    x = torch.randn(10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = agg.agglomerate_1d(model, x, target=0, percentile=100, n_iters=np.int64(1), sweep=np.int64(1))
    contrib = (model[0].weight[0] * x).detach().numpy()
    assert np.array_equal(np.nonzero(h.levels[0]["labels"])[0], [np.argmax(contrib)])
    with pytest.raises(ValueError, match="percentile"):
        agg.agglomerate_1d(model, x, percentile="99")
    with pytest.raises(ValueError, match="percentile"):
        agg.agglomerate_1d(model, x, percentile=100.5)
