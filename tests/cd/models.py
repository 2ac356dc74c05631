"""Small seeded models for the CD tests: one per supported layer type, plus compositions."""
import torch
import torch.nn.functional as F
from torch import nn

from fastattr.zoo.resnet import BasicBlock, Bottleneck


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
    return model


def image_model(kind: str, seed: int = 0) -> nn.Module:
    """``[B, 3, 8, 8]`` → 4 logits, exercising one layer type (``kind``) between a conv and a linear."""
    torch.manual_seed(seed)
    middle = {
        "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.1), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(),
        "maxpool": nn.MaxPool2d(2), "maxpool_pad": nn.MaxPool2d(3, stride=2, padding=1),
        "avgpool": nn.AvgPool2d(2), "adaptive_avgpool": nn.AdaptiveAvgPool2d(3),
        "batchnorm": nn.BatchNorm2d(6), "dropout": nn.Dropout(0.5), "identity": nn.Identity(),
        "sequential": nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()),
        "basic_block": BasicBlock(6, 6),
        "basic_block_down": BasicBlock(6, 8, stride=2, downsample=nn.Sequential(
            nn.Conv2d(6, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))),
        "bottleneck": Bottleneck(6, 4, downsample=nn.Sequential(nn.Conv2d(6, 16, 1, bias=False),
                                                                 nn.BatchNorm2d(16))),
    }[kind]
    head = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), middle)
    with torch.no_grad():
        width = head(torch.zeros(1, 3, 8, 8)).numel()
    model = nn.Sequential(head, nn.Flatten(), nn.Linear(width, 4)).double()
    return _randomise_bn(model, seed).eval()


def vector_model(kind: str, seed: int = 0) -> nn.Module:
    """``[B, 12]`` → 3 logits through Linear / BatchNorm1d / Conv1d / MaxPool1d."""
    torch.manual_seed(seed)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(),
                              nn.Linear(8, 3))
    else:
        model = nn.Sequential(nn.Unflatten(1, (1, 12)), nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                              nn.AvgPool1d(2), nn.AdaptiveAvgPool1d(2), nn.Flatten(), nn.Linear(8, 3))
    return _randomise_bn(model.double(), seed).eval()


class FunctionalNet(nn.Module):
    """Functional ops between modules: F.relu, F.max_pool2d, a residual sum, view(x.size(0), -1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = h + torch.sigmoid(self.conv2(h))
        h = F.max_pool2d(h, 2)
        return self.fc(h.view(h.size(0), -1))


class TextLSTM(nn.Module):
    """Token ids ``[B, T]`` → Embedding → batch-first LSTM → Linear on the last hidden state."""

    def __init__(self, vocab: int = 30, emb: int = 8, hidden: int = 6, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, ids):
        _, (h, _) = self.lstm(self.embed(ids))
        return self.fc(h[-1])


def text_lstm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TextLSTM().double().eval()


def random_composition(seed: int) -> nn.Module:
    """A random stack of conv / BN / nonlinearity / pooling layers then a linear head."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    layers, channels, size = [], 3, 8
    for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
        out = int(torch.randint(2, 6, (1,), generator=g))
        layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=bool(torch.rand(1, generator=g) > 0.3)))
        channels = out
        if torch.rand(1, generator=g) > 0.5:
            layers.append(nn.BatchNorm2d(channels))
        layers.append(pick([nn.ReLU(), nn.LeakyReLU(0.2), nn.Tanh(), nn.Sigmoid()]))
        if size >= 4 and torch.rand(1, generator=g) > 0.4:
            layers.append(pick([nn.MaxPool2d(2), nn.AvgPool2d(2)]))
            size //= 2
    layers += [nn.Flatten(), nn.Linear(channels * size * size, 5)]
    return _randomise_bn(nn.Sequential(*layers).double(), seed).eval()
