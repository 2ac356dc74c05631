"""The models and data shared by the Captum / Quantus equivalence tests (seeded, float64)."""
import pytest
import torch
from torch import nn

from tests.models import batchnorm_with_statistics


def digits(n: int = 6, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real 8×8 handwritten digits (bundled with scikit-learn), scaled to [0, 1], as ``[n, 1, 8, 8]``."""
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.images[offset:offset + n], dtype=torch.float64)[:, None] / 16
    return x, torch.tensor(data.target[offset:offset + n])


def cnn() -> nn.Module:
    torch.manual_seed(0)
    bn = batchnorm_with_statistics(4, affine=True)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), bn, nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.Softplus(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32, 10)).double().eval()


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Softplus(),
                         nn.Linear(32, 10)).double().eval()


class Residual(nn.Module):
    """``head(x + fc2(relu(fc1(x))))``: a block with a skip connection."""

    def __init__(self, d: int = 16, classes: int = 5):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(d, 32), nn.Linear(32, d), nn.Linear(d, classes)

    def forward(self, x):
        return self.head(torch.tanh(x + self.fc2(torch.relu(self.fc1(x)))))


def residual() -> nn.Module:
    torch.manual_seed(2)
    return Residual().double().eval()


def digits_classifier() -> nn.Module:
    """Multinomial logistic regression trained on 300 digits (L-BFGS, small L2), float32, eval mode:
    a model whose predictions change when pixels are removed."""
    x, y = digits(300)
    x = x.float()
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + 1e-3 * model[1].weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()
