"""Sparseness (Gini) and complexity (entropy) against closed forms, a loop over the definitions, and
Quantus 0.6 (``quantus.Sparseness`` / ``quantus.Complexity``) on saliency maps of real digits."""
import math

import numpy as np
import pytest
import torch

import fastattr
from fastattr.metrics import complexity, sparseness
from fastattr.metrics.complexity import DIRECTIONS, contribution_entropy, gini_index
from tests.integrations.models import cnn, digits
from tests.models import rand


def slow_gini(v):
    """Hurley & Rickard's Gini index of one vector, term by term: 1 − 2 Σ_k (v_(k)/‖v‖₁)(d − k + ½)/d."""
    v, d = sorted(float(t) for t in v), len(v)
    total = sum(v)
    return 1 - 2 * sum(v[k] / total * (d - (k + 1) + 0.5) / d for k in range(d))


def slow_entropy(v):
    total = sum(abs(float(t)) for t in v)
    return -sum(abs(float(t)) / total * math.log(abs(float(t)) / total) for t in v if t != 0)


def test_closed_forms_and_the_loop():
    x = rand(4, 3, 4, 4, seed=1)
    a = torch.zeros(4, 1, 4, 4, dtype=torch.float64)
    a[0, 0, 1, 2] = -3.0  # one feature holds everything
    a[1] = 0.5  # all equal
    a[2:] = rand(2, 1, 4, 4, seed=2)  # signed values: |a| is scored
    g, h = sparseness(None, x, a), complexity(None, x, a)
    assert g.dtype == h.dtype == torch.float64 and g.shape == h.shape == (4,)
    torch.testing.assert_close(g[:2], torch.tensor([1 - 1 / 16, 0.0], dtype=torch.float64))
    torch.testing.assert_close(h[:2], torch.tensor([0.0, math.log(16)], dtype=torch.float64))
    for b in range(2, 4):
        assert g[b] == pytest.approx(slow_gini(a[b].abs().flatten()), rel=1e-12)
        assert h[b] == pytest.approx(slow_entropy(a[b].flatten()), rel=1e-12)


def test_scale_invariance_layouts_and_eps():
    x = rand(3, 3, 6, 6, seed=3)
    a = rand(3, 3, 6, 6, seed=4)
    for fn in (sparseness, complexity):
        torch.testing.assert_close(fn(None, x, 1e-6 * a), fn(None, x, a))
        torch.testing.assert_close(fn("ignored", x, a, torch.tensor([0, 1, 2])), fn(None, x, a))
        # channel-reduced maps, [B, H, W] or [B, 1, H, W], and float32 maps
        r = a[:, :1]
        torch.testing.assert_close(fn(None, x, r[:, 0]), fn(None, x, r))
        torch.testing.assert_close(fn(None, x.float(), r.float()), fn(None, x, r), rtol=1e-5, atol=1e-6)
    d = a[0].numel()
    v = a.abs().flatten(1) + 0.1
    ours = sparseness(None, x, a, eps=0.1)
    assert ours[0] == pytest.approx(slow_gini(v[0]), rel=1e-12)
    k = torch.arange(1, d + 1, dtype=torch.float64)
    torch.testing.assert_close(gini_index(v), ((2 * k - d - 1) * v.sort(1).values).sum(1) / (d * v.sum(1)))
    p = a.abs().flatten(1) / a.abs().flatten(1).sum(1, keepdim=True)
    torch.testing.assert_close(complexity(None, x, a, eps=1e-12), -(p * torch.log(p + 1e-12)).sum(1))
    assert (contribution_entropy(-a.abs().flatten(1), eps=1e-12).isnan()).all()  # Quantus's log of negatives


def test_all_zero_maps_have_no_value():
    x = rand(2, 4, seed=5)
    a = torch.stack([torch.zeros(4, dtype=torch.float64), torch.arange(4.0, dtype=torch.float64)])
    for fn in (sparseness, complexity):
        out = fn(None, x, a)
        assert out[0].isnan() and out[1].isfinite()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["sparseness", "complexity"])
def test_equal_to_quantus_on_digits(monkeypatch, name):
    """Quantus's default preprocessing (normalised by the batch's max |a|, then |·|) does not change the
    scale-invariant values; Quantus's epsilons (1e-7 added to the normalised map before the Gini index,
    1e-12 inside the log) move them by less than 1e-5."""
    quantus = pytest.importorskip("quantus")
    monkeypatch.setenv("PYTEST", "1")
    x, y = digits(12)
    model = cnn()
    a = fastattr.input_x_gradient(model, x, y)  # signed maps
    theirs = getattr(quantus, name.capitalize())(disable_warnings=True)(
        model=None, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy())
    ours = getattr(fastattr.metrics, name)(None, x, a, y)
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-5, atol=1e-7)
    exact = dict(eps=1e-7) if name == "sparseness" else dict(eps=1e-12)
    normalised = a / a.abs().max()
    np.testing.assert_allclose(getattr(fastattr.metrics, name)(model, x, normalised, y, **exact).numpy(),
                               np.asarray(theirs), rtol=1e-12, atol=1e-14)
    assert DIRECTIONS[name] == getattr(quantus, name.capitalize()).score_direction.value.lower()


def test_bad_input_is_named():
    x = rand(2, 3, 4, 4, seed=6)
    a = rand(2, 3, 4, 4, seed=7)
    for fn in (sparseness, complexity):
        with pytest.raises(ValueError, match="attributions of shape"):
            fn(None, x, a[:, :, :3])
        with pytest.raises(ValueError, match="attributions of shape"):
            fn(None, x, a[:1])
        bad = a.clone()
        bad[1, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="attributions contain NaN"):
            fn(None, x, bad)
        with pytest.raises(TypeError, match="attributions must be a torch.Tensor"):
            fn(None, x, a.numpy())
        with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
            fn(None, x.numpy(), a)
        with pytest.raises(ValueError, match="eps"):
            fn(None, x, a, eps=-1e-3)
        with pytest.raises(ValueError, match="eps"):
            fn(None, x, a, eps=float("nan"))
