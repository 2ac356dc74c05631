"""fastattr.integrations.acd against the acd package: cd on CNNs with max-pool (Sequential and
functional-forward models, with BatchNorm), a transform as the relevant part, and cd_text on a
sequence-first LSTM classifier."""
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastattr.integrations import acd as fa_acd

acd = pytest.importorskip("acd")


def _cnn(batchnorm: bool):
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10)]
    model = nn.Sequential(*layers).eval()
    if batchnorm:
        model[4].running_mean.normal_()
        model[4].running_var.uniform_(0.5, 2.0)
    return model


class MnistNet(nn.Module):
    """acd's model_type='mnist' layout (the PyTorch MNIST example): conv → max-pool → ReLU twice,
    dropout, view(-1, 320), two linears, log-softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.relu(self.fc1(x.view(-1, 320)))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


def _rel(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("batchnorm", [False, True])
def test_cd_matches_acd_on_a_cnn(batchnorm):
    model = _cnn(batchnorm)
    im = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for seed in range(3):
        mask = (np.random.default_rng(seed).random((16, 16)) > 0.6).astype(np.float32)
        rel, irrel = acd.cd(im, model, mask=mask, device="cpu")
        ours_rel, ours_irrel = fa_acd.cd(im, model, mask=mask, device="cpu")
        assert isinstance(ours_rel, torch.Tensor) and ours_rel.shape == rel.shape == (2, 10)
        assert _rel(ours_rel, rel.detach()) < 1e-5
        assert _rel(ours_irrel, irrel.detach()) < 1e-5


def test_cd_matches_acd_mnist_model_type_and_transform():
    torch.manual_seed(0)
    model = MnistNet().eval()
    im = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    mask = np.zeros((28, 28), dtype=np.float32)
    mask[5:15, 8:20] = 1
    rel, irrel = acd.cd(im, model, mask=mask, model_type="mnist", device="cpu")
    ours_rel, ours_irrel = fa_acd.cd(im, model, mask=mask, model_type="mnist", device="cpu")
    assert _rel(ours_rel, rel.detach()) < 1e-5 and _rel(ours_irrel, irrel.detach()) < 1e-5

    def low_pass(x):
        spectrum = torch.fft.fft2(x)
        spectrum[..., 4:-4, :] = 0
        spectrum[..., :, 4:-4] = 0
        return torch.fft.ifft2(spectrum).real

    rel, irrel = acd.cd(im, model, transform=low_pass, model_type="mnist", device="cpu")
    ours_rel, ours_irrel = fa_acd.cd(im, model, transform=low_pass, model_type="mnist", device="cpu")
    assert _rel(ours_rel, rel.detach()) < 1e-5 and _rel(ours_irrel, irrel.detach()) < 1e-5


class SeqFirstLSTM(nn.Module):
    """acd's text model layout: embed → sequence-first LSTM → hidden_to_label on the last state."""

    def __init__(self, vocab=40, emb=10, hidden=8, classes=3):
        super().__init__()
        self.hidden_dim = hidden
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden)
        self.hidden_to_label = nn.Linear(hidden, classes)

    def forward(self, batch):
        _, (h, _) = self.lstm(self.embed(batch.text))
        return self.hidden_to_label(h[-1])


def test_cd_text_matches_acd():
    torch.manual_seed(0)
    model = SeqFirstLSTM().double().eval()
    text = torch.randint(0, 40, (9, 1), generator=torch.Generator().manual_seed(3))
    batch = types.SimpleNamespace(text=text)
    logits = model(batch).detach()[0]
    for start, stop in [(0, 0), (2, 5), (3, 8), (0, 8)]:
        scores, irrel = acd.cd_text(batch, model, start, stop, return_irrel_scores=True)
        ours, ours_irrel = fa_acd.cd_text(batch, model, start, stop, return_irrel_scores=True)
        assert isinstance(ours, np.ndarray) and ours.shape == (3,)
        np.testing.assert_allclose(ours, np.asarray(scores, dtype=np.float64), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(ours_irrel, np.asarray(irrel, dtype=np.float64), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(ours + ours_irrel, (logits - model.hidden_to_label.bias).detach().numpy(),
                                   rtol=1e-10, atol=1e-12)


def test_cd_scores_carry_autograd_like_acds():
    """A CDEP-style penalty on the drop-in's scores backpropagates to the same parameter gradients
    as on acd's."""
    model = _cnn(True)
    im = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    mask = np.zeros((16, 16), np.float32)
    mask[:8] = 1
    grads = []
    for fn in (acd.cd, fa_acd.cd):
        rel, irrel = fn(im, model, mask=mask, device="cpu")
        model.zero_grad()
        torch.softmax(torch.stack([rel, irrel], -1), -1)[..., 0].mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert grads[1][0].abs().sum() > 0
    for theirs, ours in zip(*grads):
        assert _rel(ours, theirs) < 1e-4


def test_cd_matches_acd_with_adaptive_max_pooling():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d((5, 3)),
                          nn.Flatten(), nn.Linear(6 * 5 * 3, 4)).eval()
    im = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    mask = (np.random.default_rng(1).random((12, 12)) > 0.5).astype(np.float32)
    rel, irrel = acd.cd(im, model, mask=mask, device="cpu")
    ours_rel, ours_irrel = fa_acd.cd(im, model, mask=mask, device="cpu")
    assert _rel(ours_rel, rel.detach()) < 1e-5 and _rel(ours_irrel, irrel.detach()) < 1e-5


def test_cd_text_phrase_with_padding_tokens_matches_acd():
    """A zero-embedding (padding) token inside start..stop is in the phrase, as in acd."""
    torch.manual_seed(0)
    model = SeqFirstLSTM().double().eval()
    with torch.no_grad():
        model.embed.weight[0] = 0.0
    batch = types.SimpleNamespace(text=torch.tensor([[5], [0], [7], [0], [9], [3]]))
    for start, stop in [(1, 1), (0, 3), (3, 3), (1, 3)]:
        scores, irrel = acd.cd_text(batch, model, start, stop, return_irrel_scores=True)
        ours, ours_irrel = fa_acd.cd_text(batch, model, start, stop, return_irrel_scores=True)
        assert np.abs(ours).max() > 1e-5
        np.testing.assert_allclose(ours, np.asarray(scores, dtype=np.float64), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(ours_irrel, np.asarray(irrel, dtype=np.float64), rtol=1e-6, atol=1e-12)


def test_bad_input():
    model = _cnn(False)
    im = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="mask or transform"):
        fa_acd.cd(im, model, device="cpu")
    with pytest.raises(ValueError, match="model_type"):
        fa_acd.cd(im, model, mask=np.ones((16, 16)), model_type="vgg", device="cpu")
    with pytest.raises(ValueError, match="start"):
        fa_acd.cd_text(types.SimpleNamespace(text=torch.zeros(4, 1, dtype=torch.long)), SeqFirstLSTM(), 2, 6)


def test_mask_must_be_binary():
    """acd documents masks of 0 / 1 but takes anything (relevant = mask * x, irrelevant = (1 - mask) * x):
    3 * mask runs there with relevant = 3x, irrelevant = -2x. The drop-in refuses such masks."""
    model = _cnn(False)
    im = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 2:9] = 1
    rel, irrel = acd.cd(im, model, mask=3 * mask, device="cpu")
    assert torch.isfinite(rel).all() and torch.isfinite(irrel).all()
    for bad in (3 * mask, mask - 0.5, np.where(mask > 0, np.nan, 0.0)):
        with pytest.raises(ValueError, match="mask must be binary"):
            fa_acd.cd(im, model, mask=bad, device="cpu")
    with pytest.raises(ValueError, match="mask of shape"):
        fa_acd.cd(im, model, mask=mask[:8], device="cpu")
    rel, irrel = fa_acd.cd(im, model, mask=mask, device="cpu")
    for same in (mask.astype(bool), torch.as_tensor(mask), np.broadcast_to(mask, im.shape).astype(np.int64)):
        again = fa_acd.cd(im, model, mask=same, device="cpu")
        torch.testing.assert_close(again[0], rel, rtol=0, atol=0)
        torch.testing.assert_close(again[1], irrel, rtol=0, atol=0)
