"""``resolve_target``: given targets checked against the model's outputs (negatives counting from the end),
None as the argmax of every input, bad targets named."""
import pytest
import torch

from fastattr.core import resolve_target
from tests.integrations.models import cnn, digits


def test_given_targets_are_checked_and_none_is_the_argmax():
    x, _ = digits(6, offset=10)
    model = cnn()
    assert resolve_target(model, x, torch.tensor([1, -1, 2, 3, -10, 9])).tolist() == [1, 9, 2, 3, 0, 9]
    assert resolve_target(model, x, [4, 5, 6, 7, 8, 9]).tolist() == [4, 5, 6, 7, 8, 9]
    assert resolve_target(model, x, -2).tolist() == [8] * 6
    assert torch.equal(resolve_target(model, x, None), model(x).argmax(1))
    with pytest.raises(ValueError, match="target out of range: the model has 10 outputs"):
        resolve_target(model, x, 10)
    with pytest.raises(ValueError, match="target has 2 entries but inputs has batch size 6"):
        resolve_target(model, x, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="target must be None, an int, or a 1-D integer tensor"):
        resolve_target(model, x, torch.tensor([1.0] * 6))
