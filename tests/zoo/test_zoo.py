"""Tests for the embedded digits model and data helpers in fastattr.zoo."""
import pytest
import torch

pytest.importorskip("sklearn")

from fastattr.zoo import DigitsCNN, TEST_ACCURACY, WEIGHTS_PATH, digits_rgb, load_digits, load_digits_cnn  # noqa: E402


def test_load_pretrained_eval_mode():
    model = load_digits_cnn()
    assert isinstance(model, DigitsCNN)
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert isinstance(model.net, torch.nn.Sequential)
    allowed = (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.Flatten, torch.nn.Linear)
    assert all(isinstance(m, allowed) for m in model.net)
    out = model(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 10) and out.dtype == torch.float32


def test_weights_file_small():
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size < 500_000


@pytest.mark.parametrize("split,size", [("train", 1347), ("test", 450), ("all", 1797)])
def test_load_digits_shapes(split, size):
    x, y = load_digits(split)
    assert x.shape == (size, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (size,) and y.dtype == torch.long
    assert x.min() >= 0 and x.max() <= 1 and x.max() == 1
    assert set(y.tolist()) == set(range(10))


def test_load_digits_n():
    x, y = load_digits("test", n=7)
    xf, yf = load_digits("test")
    assert x.shape == (7, 1, 8, 8) and y.shape == (7,)
    assert torch.equal(x, xf[:7]) and torch.equal(y, yf[:7])


def test_split_deterministic():
    for split in ("train", "test"):
        x1, y1 = load_digits(split)
        x2, y2 = load_digits(split)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_split_disjoint_and_complete():
    xa, _ = load_digits("all")
    xtr, _ = load_digits("train")
    xte, _ = load_digits("test")
    key = lambda x: {tuple(r) for r in x.flatten(1).tolist()}  # noqa: E731
    assert not key(xtr) & key(xte)
    assert key(xtr) | key(xte) == key(xa)
    assert len(xtr) + len(xte) == len(xa)


def test_split_stratified():
    _, ya = load_digits("all")
    _, ytr = load_digits("train")
    _, yte = load_digits("test")
    pa = torch.bincount(ya, minlength=10).double() / len(ya)
    for y in (ytr, yte):
        p = torch.bincount(y, minlength=10).double() / len(y)
        assert (p - pa).abs().max() < 0.01


def test_pretrained_test_accuracy():
    model = load_digits_cnn()
    x, y = load_digits("test")
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).double().mean().item()
    assert acc > 0.95
    assert acc == pytest.approx(TEST_ACCURACY, abs=1e-3)


@pytest.mark.parametrize("split", ["val", "TEST", "", None])
def test_bad_split(split):
    with pytest.raises(ValueError, match="split"):
        load_digits(split)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n(n):
    with pytest.raises(ValueError, match=r"\bn\b"):
        load_digits("test", n=n)


def test_not_pretrained_differs():
    pre = load_digits_cnn().state_dict()
    rnd = load_digits_cnn(pretrained=False)
    assert not rnd.training
    assert pre.keys() == rnd.state_dict().keys()
    assert any(not torch.equal(pre[k], v) for k, v in rnd.state_dict().items())


def test_digits_rgb():
    x, _ = load_digits("test", n=4)
    rgb = digits_rgb(x)
    assert rgb.shape == (4, 3, 32, 32) and rgb.dtype == torch.float32
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    assert digits_rgb(x, size=16).shape == (4, 3, 16, 16)
    with pytest.raises(ValueError):
        digits_rgb(torch.zeros(4, 3, 8, 8))
