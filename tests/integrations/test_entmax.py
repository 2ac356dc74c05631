"""fastattr.integrations.entmax is a drop-in for the entmax package's sparsemax API."""
import pytest
import torch
from torch import nn

entmax = pytest.importorskip("entmax")

from fastattr.integrations import entmax as fa_entmax  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,dim", [((7, 50), -1), ((4, 9, 33), 1), ((5, 6, 2, 40), 0), ((3, 1000), -1)])
def test_same_values_and_gradients_as_entmax(shape, dim, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = fa_entmax.sparsemax(xa, dim=dim)
    yb = entmax.sparsemax(xb, dim=dim)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ya, yb, **tol)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)


def test_k_is_accepted_and_validated():
    x = torch.randn(6, 20, dtype=torch.float64)
    torch.testing.assert_close(fa_entmax.sparsemax(x, k=3), entmax.sparsemax(x, k=3))
    with pytest.raises(ValueError, match="k must be"):
        fa_entmax.sparsemax(x, k=0)
    with pytest.raises(ValueError, match="k must be"):
        fa_entmax.Sparsemax(k=-2)


class Attention(nn.Module):
    """A tiny attention block whose normaliser is swappable (how users adopt a drop-in)."""

    def __init__(self, normaliser: nn.Module):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.norm = normaliser

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / 4.0
        return self.norm(scores) @ self.v(x)


def test_module_drop_in_in_a_model():
    x = torch.randn(3, 12, 16, generator=torch.Generator().manual_seed(1))
    ours, theirs = Attention(fa_entmax.Sparsemax(dim=-1)), Attention(entmax.Sparsemax(dim=-1))
    ours.load_state_dict(theirs.state_dict())
    ya, yb = ours(x), theirs(x)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (name, pa), (_, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert "dim=-1" in repr(ours.norm)
