"""``resolve_target``: a given target checked on a forward of two inputs (the whole batch for a model
bound to its batch), None as the argmax of every input, bad targets named."""
import pytest
import torch

from fastattr.core import resolve_target
from tests.integrations.models import cnn, digits


class Counting(torch.nn.Module):
    def __init__(self, model, batch=None):
        super().__init__()
        self.model, self.batch, self.rows = model, batch, 0

    def forward(self, x):
        if self.batch is not None and x.shape[0] != self.batch:
            raise RuntimeError(f"this model runs batches of {self.batch}, got {x.shape[0]}")
        self.rows += x.shape[0]
        return self.model(x)


def test_a_given_target_is_checked_on_two_inputs():
    x, _ = digits(6, offset=10)
    model = Counting(cnn()).eval()
    t = resolve_target(model, x, torch.tensor([1, -1, 2, 3, -10, 9]))
    assert model.rows == 2 and t.tolist() == [1, 9, 2, 3, 0, 9]
    with pytest.raises(ValueError, match="target out of range: the model has 10 outputs"):
        resolve_target(model, x, 10)
    model.rows = 0
    assert torch.equal(resolve_target(model, x, None), cnn()(x).argmax(1)) and model.rows == 6


def test_a_model_bound_to_its_batch_runs_it_whole():
    x, _ = digits(5, offset=20)
    model = Counting(cnn(), batch=5).eval()
    assert resolve_target(model, x, 4).tolist() == [4] * 5 and model.rows == 5
    with pytest.raises(ValueError, match=r"could not run inputs of shape \(4, 1, 8, 8\)"):
        resolve_target(model, x[:4], 4)
