"""iba_statistics (SPEC §9; Schulz et al. 2020 §3.1): the layer's per-element mean / std / active
elements over a data set, equal to torch's statistics of the stacked activations and to a Welford
loop one sample at a time (the public IBA code's), whatever the batching; the model is left as found."""
import pytest
import torch
from torch import nn

import fastattr
from fastattr.zoo import load_digits, load_digits_cnn


def _digits(n=300):
    model = load_digits_cnn().double().eval()
    x, y = load_digits("train", n)
    return model, x.double(), y


def _welford(rows: torch.Tensor):
    """Welford's update, one sample at a time."""
    mean, m2 = torch.zeros_like(rows[0]), torch.zeros_like(rows[0])
    for k, r in enumerate(rows, start=1):
        delta = r - mean
        mean = mean + delta / k
        m2 = m2 + delta * (r - mean)
    return mean, (m2 / (rows.shape[0] - 1)).sqrt()


def test_equals_the_stacked_activations_and_a_welford_loop():
    model, x, _ = _digits()
    stats = fastattr.iba_statistics(model, "net.3", x, max_batch=37, min_std=0.05)
    with torch.no_grad():
        r = model.net[:4](x)
    assert stats.count == 300 and stats.mean.shape == r.shape[1:] and stats.mean.dtype == torch.float64
    torch.testing.assert_close(stats.mean, r.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(stats.std, r.std(0).clamp(min=0.05), rtol=0, atol=1e-12)
    assert (stats.std == 0.05).any() and (stats.std > 0.05).any()  # the clamp acts on some elements only
    assert torch.equal(stats.active, (r != 0).double().mean(0) > 0.01)
    assert stats.active.any() and not stats.active.all()  # after a ReLU some elements are never active
    mean, std = _welford(r)
    torch.testing.assert_close(stats.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(stats.std, std.clamp(min=0.05), rtol=0, atol=1e-12)


def test_independent_of_batching_and_takes_loaders():
    model, x, y = _digits()
    whole = fastattr.iba_statistics(model, model.net[2], x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    uneven = [x[:1], x[1:120], x[120:121], x[121:]]
    for data, kw in ((loader, {}), (uneven, {}), (x, {"max_batch": 7})):
        other = fastattr.iba_statistics(model, model.net[2], data, **kw)
        assert other.count == 300
        torch.testing.assert_close(other.mean, whole.mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(other.std, whole.std, rtol=0, atol=1e-12)
    first = fastattr.iba_statistics(model, model.net[2], loader, n_samples=120)
    alone = fastattr.iba_statistics(model, model.net[2], x[:120])
    assert first.count == 120
    torch.testing.assert_close(first.mean, alone.mean, rtol=0, atol=1e-12)


def test_model_left_as_found_and_stops_at_the_layer():
    model, x, _ = _digits(40)
    model.train()
    calls = []
    later = model.net[6].register_forward_hook(lambda m, a, o: calls.append(1))
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.warns(UserWarning, match="training mode"):
        fastattr.iba_statistics(model, "net.3", x)
    assert calls == []  # the layers after the bottleneck never ran
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert len(model.net[3]._forward_hooks) == 0 and len(model.net[6]._forward_hooks) == 1
    later.remove()


class _TupleLayer(nn.Module):
    def forward(self, x):
        return x, x


class _UsesTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = _TupleLayer()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.pair(x)[0])


def test_bad_input():
    model, x, _ = _digits(10)
    with pytest.raises(ValueError, match="layer 'net.99' is not a module"):
        fastattr.iba_statistics(model, "net.99", x)
    with pytest.raises(ValueError, match="one tensor"):
        fastattr.iba_statistics(_UsesTuple().eval(), "pair", torch.rand(5, 4))
    with pytest.raises(ValueError, match="min_std"):
        fastattr.iba_statistics(model, "net.3", x, min_std=-1.0)
    with pytest.raises(ValueError, match="active_threshold"):
        fastattr.iba_statistics(model, "net.3", x, active_threshold=1.0)
    with pytest.raises(TypeError, match="data must"):
        fastattr.iba_statistics(model, "net.3", 3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        fastattr.iba_statistics(model, "net.3", x[:1])
    with pytest.raises(ValueError, match="did not run"):
        fastattr.iba_statistics(model, nn.ReLU(), x)
