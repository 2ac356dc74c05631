"""fastattr.metrics.road: against a direct loop over levels and examples, chunk independence,
channel-reduced maps on RGB inputs (where Quantus 0.6's ROAD raises), MoRF below LeRF for an exact
attribution of a trained model, bad arguments."""
import numpy as np
import pytest
import torch
from torch import nn

from fastattr.metrics.road import road
from fastattr.ops import noisy_linear_impute
from tests.integrations.models import cnn, digits, digits_classifier
from tests.models import small_cnn


def _direct(model, x, a, t, percentages, order, score, noise, seed):
    """One imputation and one forward per (level, example), the same draws."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape
    flat = a.reshape(b, -1).double()
    out = torch.empty(b, len(percentages), dtype=torch.float64)
    for j, p in enumerate(percentages):
        eps = noise * torch.randn(x.shape, generator=g, dtype=x.dtype)
        k = int(flat.shape[1] * p / 100)
        for i in range(b):
            order_i = torch.sort(flat[i], descending=order == "morf", stable=True).indices[:k]
            removed = torch.zeros(flat.shape[1], dtype=torch.bool)
            removed[order_i] = True
            removed = removed.reshape((1, h, w) if flat.shape[1] == h * w else (1, c, h, w))
            xi = noisy_linear_impute(x[i:i + 1], removed, noise=eps[i:i + 1], backend="reference")
            logits = model(xi)
            out[i, j] = float(logits.argmax(1) == t[i]) if score == "accuracy" else \
                torch.softmax(logits, 1)[0, t[i]].item()
    return out


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("score", ["accuracy", "probability"])
def test_matches_direct_loop(order, score):
    x, y = digits(5)
    model = cnn()
    a = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    values, curves, levels = road(model, x, a, y, percentages=[10, 35, 70, 95], order=order, score=score,
                                  generator=3, curves=True)
    expected = _direct(model, x, a, y, [10, 35, 70, 95], order, score, 0.01, 3)
    torch.testing.assert_close(curves, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(values, expected.mean(1))
    assert levels.tolist() == [10.0, 35.0, 70.0, 95.0]
    chunked = road(model, x, a, y, percentages=[10, 35, 70, 95], order=order, score=score, generator=3,
                   max_batch=3)
    torch.testing.assert_close(chunked, values, rtol=1e-6, atol=1e-7)


def test_rgb_input_with_channel_reduced_map():
    """A [B, H, W] map removes pixels in every channel; per-element maps remove each channel's own."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    model = small_cnn()
    t = model(x).argmax(1)
    pixel_map = torch.rand(3, 8, 8, generator=g, dtype=torch.float64)
    values, curves, _ = road(model, x, pixel_map, t, percentages=[20, 60], score="probability", curves=True,
                             generator=1)
    expected = _direct(model, x, pixel_map, t, [20, 60], "morf", "probability", 0.01, 1)
    torch.testing.assert_close(curves, expected, rtol=1e-6, atol=1e-7)
    element_map = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    _, per_element, _ = road(model, x, element_map, t, percentages=[20, 60], score="probability", curves=True,
                             generator=1)
    expected = _direct(model, x, element_map, t, [20, 60], "morf", "probability", 0.01, 1)
    torch.testing.assert_close(per_element, expected, rtol=1e-6, atol=1e-7)


def test_quantus_raises_on_rgb_with_channel_reduced_map(monkeypatch):
    """The issue this metric fixes: Quantus 0.6 ranks the map broadcast to C·H·W elements but indexes
    an H·W mask with those ranks."""
    quantus = pytest.importorskip("quantus")
    monkeypatch.setenv("PYTEST", "1")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g).numpy()
    model = small_cnn(dtype=torch.float32)
    a = torch.rand(2, 1, 8, 8, generator=g).numpy()
    with pytest.raises(IndexError):
        quantus.ROAD(percentages=[50], disable_warnings=True)(model=model, x_batch=x, y_batch=np.array([0, 1]),
                                                              a_batch=a, device="cpu")
    assert road(model, torch.from_numpy(x), torch.from_numpy(a), torch.tensor([0, 1]), percentages=[50]).shape == (2,)


def test_morf_below_lerf_for_an_exact_attribution():
    """Logistic regression trained on the digits; a = w_t ⊙ x is each pixel's exact contribution to
    the logit, so removing the most relevant pixels first must hurt more than the least relevant."""
    x, y = digits(40)
    model = digits_classifier()
    xs, ys = x.float(), y
    assert (model(xs).argmax(1) == ys).float().mean() > 0.9
    a = model[1].weight.detach()[ys].reshape(40, 1, 8, 8) * xs
    morf = road(model, xs, a, ys, order="morf", score="probability")
    lerf = road(model, xs, a, ys, order="lerf", score="probability")
    assert morf.mean() < lerf.mean() - 0.2
    assert (morf < lerf).float().mean() > 0.9


def test_bad_arguments():
    x, y = digits(2)
    model = cnn()
    a = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="percentages must be numbers in \\(0, 100\\)"):
        road(model, x, a, y, percentages=[0, 50])
    with pytest.raises(ValueError, match="percentages must be numbers in \\(0, 100\\)"):
        road(model, x, a, y, percentages=[100])
    with pytest.raises(ValueError, match="percentages must be a non-empty list"):
        road(model, x, a, y, percentages=[])
    with pytest.raises(ValueError, match="order must be"):
        road(model, x, a, y, order="random")
    with pytest.raises(ValueError, match="score must be"):
        road(model, x, a, y, score="auc")
    with pytest.raises(ValueError, match="attributions of shape"):
        road(model, x, a[:, :, :4], y)
    with pytest.raises(ValueError, match="inputs must be images"):
        road(nn.Sequential(nn.Flatten(), nn.Linear(8, 2)).double().eval(), x[:, 0, 0], x[:, 0, 0], y)
    with pytest.raises(ValueError, match="noise must be"):
        road(model, x, a, y, noise=-0.1)


def test_in_evaluate_equals_road_alone():
    from fastattr import evaluate
    from fastattr.metrics import BETTER

    x, y = digits(6, offset=20)
    model = digits_classifier()
    x = x.float()
    maps = {"a": model[1].weight.detach()[y].reshape(6, 1, 8, 8) * x,
            "b": torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))}
    ev = evaluate(model, x, y, attributions=maps, metrics=["road_morf", "road_lerf"], generator=4,
                  metric_kwargs={"road_morf": {"percentages": [20, 60]}})
    for name, a in maps.items():
        torch.testing.assert_close(ev["road_morf"][name], road(model, x, a, y, percentages=[20, 60], generator=4))
        torch.testing.assert_close(ev["road_lerf"][name], road(model, x, a, y, order="lerf", generator=4))
    assert ev.curves["road_lerf"]["a"].shape == (6, 9)
    torch.testing.assert_close(ev.fractions["road_morf"], torch.tensor([0.2, 0.6]))
    assert BETTER["road_morf"] == "lower" and BETTER["road_lerf"] == "higher"
