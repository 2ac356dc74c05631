"""fastattr.integrations.quantus.ROAD gives Quantus 0.6's ROAD on real digits and the digits CNN
(float32, as Quantus runs it; saliency maps), with Quantus's ``np.random.randn`` replaced by
fastattr's draws (same shapes, same order); it also runs where Quantus raises."""
import numpy as np
import pytest
import torch

import fastattr
from fastattr.integrations import quantus as fq
from tests.integrations.models import digits, digits_classifier
from tests.models import small_cnn

quantus = pytest.importorskip("quantus")


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("PYTEST", "1")


def replay(monkeypatch, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    monkeypatch.setattr(np.random, "randn", lambda *shape: torch.randn(shape, generator=gen,
                                                                       dtype=torch.float64).numpy())


def data(n: int = 12):
    x, _ = digits(n, offset=400)  # held out: the classifier trained on the first 300
    model = digits_classifier()
    x = x.float()
    y = model(x).argmax(1)
    a = fastattr.saliency(model, x, y)
    return model, x.numpy(), y.numpy(), a.numpy()


@pytest.mark.parametrize("kw", [dict(percentages=[5, 20, 40, 60, 80, 95]), {},
                                dict(percentages=[10, 50, 90], noise=0.2, abs=True),
                                dict(percentages=[30, 70], normalise=False, perturb_func_kwargs={"noise": 0.05})])
def test_equal_to_quantus_on_replayed_noise(monkeypatch, kw):
    model, x, y, a = data()
    replay(monkeypatch, 0)
    theirs = quantus.ROAD(disable_warnings=True, **kw)(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    ours = fq.ROAD(**kw)(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu", generator=0)
    assert list(ours) == list(theirs)
    np.testing.assert_allclose(list(ours.values()), list(theirs.values()), rtol=0, atol=1e-12)
    assert min(ours.values()) < max(ours.values())  # a curve that moves, not a constant
    chunked = fq.ROAD(**kw)(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu", generator=0, max_batch=5)
    assert chunked == ours


def test_explain_func_and_rgb_channel_reduced_map():
    model, x, y, _ = data(4)
    explain = lambda model, inputs, targets, **kw: fastattr.saliency(  # noqa: E731
        model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()
    scores = fq.ROAD(percentages=[25, 75])(model=model, x_batch=x, y_batch=y, explain_func=explain, device="cpu")
    assert set(scores) == {25, 75} and all(0 <= v <= 1 for v in scores.values())
    rgb = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)).numpy()
    net = small_cnn(dtype=torch.float32)
    a = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    with pytest.raises(IndexError):
        quantus.ROAD(percentages=[50], disable_warnings=True)(model=net, x_batch=rgb, y_batch=np.array([0, 1, 2]),
                                                              a_batch=a, device="cpu")
    out = fq.ROAD(percentages=[50])(model=net, x_batch=rgb, y_batch=np.array([0, 1, 2]), a_batch=a, device="cpu")
    assert set(out) == {50}


def test_bad_arguments():
    with pytest.raises(ValueError, match="percentages"):
        fq.ROAD(percentages=[0, 50])
    with pytest.raises(ValueError, match="noise"):
        fq.ROAD(noise=-1.0)
    with pytest.raises(NotImplementedError, match="noisy_linear_imputation"):
        fq.ROAD(perturb_func=lambda arr, indices: arr)
    model, x, y, a = data(2)
    with pytest.raises(ValueError, match="ROAD needs images"):
        fq.ROAD()(model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval(), x_batch=x[:, 0, 0],
                  y_batch=np.array([0, 1]), a_batch=x[:, 0, 0])
