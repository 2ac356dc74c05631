"""Small real models built in the tests (seeded), shared by the test modules; the tests of
``fastattr.models`` (Sum-of-Parts) live beside them in this package."""
import torch
from torch import nn


def linear_model(d: int = 12, classes: int = 3, seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, classes)).to(dtype).eval()


def mlp(d: int = 12, classes: int = 4, seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, classes)).to(dtype).eval()


def small_cnn(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 5)).to(dtype).eval()


def batchnorm_with_statistics(channels: int, affine: bool = False) -> nn.BatchNorm2d:
    """A BatchNorm2d with non-trivial running statistics (mean in ±0.2, variance in [0.5, 2]) and, with
    ``affine=True``, a non-trivial scale and shift; drawn from the global generator."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return bn


def rand(*shape, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
