"""TRIM (bands partition the spectrum; band scores add up for a bias-free linear model; DCT and
FFT) and the CDEP penalty (values by hand, gradients, a training step that lowers it)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastattr.bench import cdep as colour_bench
from fastattr.cd import band_components, cdep_penalty, contextual_decomposition, frequency_bands, trim

from .models import image_model


@pytest.mark.parametrize("transform", ["fft", "dct"])
def test_bands_partition_and_components_sum_to_the_input(transform):
    bands = frequency_bands(8, 6, 5, transform)
    assert bands.shape == (5, 8, 6)
    assert torch.equal(bands.sum(0), torch.ones(8, 6)) and (bands.sum((1, 2)) > 0).all()
    x = torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    parts = band_components(x, bands, transform)
    torch.testing.assert_close(parts.sum(1), x)
    low = band_components(x, bands[:1], transform)[:, 0]
    if transform == "fft":       # band 0 holds the zero frequency: the per-channel mean survives
        torch.testing.assert_close(low.mean((-2, -1)), x.mean((-2, -1)))


@pytest.mark.parametrize("transform", ["fft", "dct"])
def test_trim_scores_add_up_on_a_linear_model(transform):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4, bias=False)).double().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scores = trim(model, x, transform=transform, n_bands=4)
    assert scores.shape == (2, 4, 4)
    torch.testing.assert_close(scores.sum(1), model(x))
    target = trim(model, x, target=torch.tensor([1, 2]), transform=transform, n_bands=4)
    torch.testing.assert_close(target, scores[torch.arange(2), :, torch.tensor([1, 2])])
    # equals CD with the band components given as relevant parts, on a nonlinear model too
    cnn = image_model("maxpool")
    bands = frequency_bands(8, 8, 3, transform)
    direct = contextual_decomposition(cnn, x, relevant=band_components(x, bands, transform))[0]
    torch.testing.assert_close(trim(cnn, x, bands=bands, transform=transform), direct)


def test_trim_bad_input():
    x = torch.randn(1, 3, 8, 8)
    model = image_model("relu").float()
    with pytest.raises(ValueError, match="transform"):
        trim(model, x, transform="wavelet")
    with pytest.raises(ValueError, match="n_bands"):
        trim(model, x, n_bands=0)
    with pytest.raises(ValueError, match="bands"):
        trim(model, x, bands=torch.ones(2, 4, 4))


def test_cdep_penalty_values_and_gradients():
    model = image_model("batchnorm")
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    masks = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).double()
    beta, gamma = contextual_decomposition(model, x, masks)
    soft = cdep_penalty(model, x, masks, reduction="mean")
    torch.testing.assert_close(soft, torch.sigmoid(beta - gamma).mean())      # softmax([β, γ])[0] = σ(β − γ)
    l1 = cdep_penalty(model, x, masks, form="l1", reduction="mean")
    torch.testing.assert_close(l1, beta.abs().sum(-1).mean())
    expl = torch.ones(4, dtype=torch.float64)
    torch.testing.assert_close(cdep_penalty(model, x, masks, form="l1", explanation=expl, reduction="mean"),
                               (beta - 1).abs().sum(-1).mean())
    soft.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model[0][0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="form"):
        cdep_penalty(model, x, masks, form="l2")
    with pytest.raises(ValueError, match="exactly one"):
        cdep_penalty(model, x)


def test_training_steps_lower_the_penalty():
    """A few Adam steps on CE + λ·penalty of the colour part halve the penalty while the model still
    learns the digits (well above the 10% of chance)."""
    x, y = colour_bench.color_digits("train", invert=False)
    x, y = x[:256], y[:256]
    model = colour_bench.small_cnn(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    relevant = colour_bench.colour_part(x)
    first = cdep_penalty(model, x, relevant=relevant, form="l1").item()
    for _ in range(30):
        loss = F.cross_entropy(model(x), y) + 1.0 * cdep_penalty(model, x, relevant=relevant, form="l1")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert cdep_penalty(model, x, relevant=relevant, form="l1").item() < 0.5 * first
    assert (model(x).argmax(1) == y).float().mean() > 0.25


def test_cdep_reduction_sums_over_blobs_by_default():
    """SPEC §4.5: λ Σ_blobs penalty — each blob's penalty (mean over examples and classes for the
    softmax form, over examples of ‖β − expl‖₁ for l1) summed over the K blobs; "mean" divides by K."""
    model = image_model("maxpool")
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    masks = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).double()
    beta, gamma = contextual_decomposition(model, x, masks)
    soft = torch.sigmoid(beta - gamma).mean((0, 2))
    torch.testing.assert_close(cdep_penalty(model, x, masks), soft.sum())
    torch.testing.assert_close(cdep_penalty(model, x, masks, reduction="mean"), soft.mean())
    l1 = beta.abs().sum(2).mean(0)
    torch.testing.assert_close(cdep_penalty(model, x, masks, form="l1", reduction="sum"), l1.sum())
    torch.testing.assert_close(cdep_penalty(model, x, masks, form="l1", reduction="mean"), l1.mean())
    with pytest.raises(ValueError, match="reduction"):
        cdep_penalty(model, x, masks, reduction="max")


def test_cdep_bad_input():
    model = image_model("relu")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    relevant = x[:, None] * 0.5
    with pytest.raises(ValueError, match="relevant"):
        cdep_penalty(model, x, relevant=relevant[:1])                          # wrong batch
    with pytest.raises(ValueError, match="relevant"):
        cdep_penalty(model, x, relevant=relevant[:, :0])                       # K = 0
    with pytest.raises(ValueError, match="masks"):
        cdep_penalty(model, x, torch.ones(0, 1, 8, 8))
    bad = relevant.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="relevant"):
        cdep_penalty(model, x, relevant=bad)
    nan_x = x.clone()
    nan_x[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="inputs"):
        cdep_penalty(model, nan_x, relevant=relevant)
    with pytest.raises(ValueError, match="explanation"):
        cdep_penalty(model, x, relevant=relevant, form="l1", explanation=torch.ones(3))
    good = cdep_penalty(model, x, relevant=relevant, form="l1", explanation=torch.ones(2, 1, 4))
    assert torch.isfinite(good)


def test_cdep_on_a_model_in_training_mode_with_a_training_only_output():
    """decompose traces the eval-mode forward: a model returning (logits, aux) in training works, its
    BatchNorm / dropout use the eval rules, and its mode is left as it was."""

    class AuxNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Flatten())
            self.head, self.aux = nn.Linear(4 * 8 * 8, 3), nn.Linear(4 * 8 * 8, 3)

        def forward(self, v):
            h = self.body(v)
            return (self.head(h), self.aux(h)) if self.training else self.head(h)

    torch.manual_seed(0)
    model = AuxNet().double()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    masks = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    expected = cdep_penalty(model.eval(), x, masks).item()
    model.train()
    penalty = cdep_penalty(model, x, masks)
    assert model.training and model.body[1].training
    assert abs(penalty.item() - expected) < 1e-12
    penalty.backward()
    assert model.body[0].weight.grad.abs().sum() > 0


def test_bench_trains_with_the_mean_reduction(monkeypatch):
    calls = []

    def recording(*args, **kwargs):
        calls.append(kwargs.get("reduction"))
        return cdep_penalty(*args, **kwargs)

    monkeypatch.setattr(colour_bench, "cdep_penalty", recording)
    monkeypatch.setattr(colour_bench, "color_digits", lambda split, invert: (
        torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 10))
    colour_bench.train(0, 1.0, epochs=1, batch_size=16)
    assert calls == ["mean", "mean"]
