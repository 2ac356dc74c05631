"""A direct ``torch.ops.fastattr.*`` call is checked like the Python wrapper: the checks live inside
the custom ops, so a kernel never reads a buffer of the wrong dtype or shape through a raw pointer."""
import pytest
import torch

import fastattr  # noqa: F401  (registers the ops)


def test_perturb_by_rank_checks_rank_and_counts(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 3, 4, 4, device=device)
    rank = torch.randperm(16).repeat(2, 1).to(device)
    counts = torch.tensor([0, 4, 16], device=device)
    op = torch.ops.fastattr.perturb_by_rank
    good = op(x, torch.zeros_like(x), rank, counts, False, backend)
    assert good.shape == (6, 3, 4, 4)
    with pytest.raises(ValueError, match="rank must be an int64"):
        op(x, torch.zeros_like(x), rank.int(), counts, False, backend)
    with pytest.raises(ValueError, match="rank must be an int64"):
        op(x, torch.zeros_like(x), rank[:, :5], counts, False, backend)
    with pytest.raises(ValueError, match="counts must be a 1-D int64"):
        op(x, torch.zeros_like(x), rank, counts.int(), False, backend)
    with pytest.raises(ValueError, match="baseline must match x"):
        op(x, torch.zeros(2, 3, 4, 4, dtype=torch.float64), rank, counts, False, backend)
    with pytest.raises(TypeError, match="x must be a floating"):
        op(x.long(), torch.zeros_like(x).long(), rank, counts, False, backend)


def test_path_ops_cd_and_sparsemax_direct_calls_are_checked():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="grads must have shape"):
        torch.ops.fastattr.path_accumulate(x, torch.randn(2, 4, 3), torch.rand(2), None, None)
    with pytest.raises(ValueError, match="weights must have shape"):
        torch.ops.fastattr.path_accumulate(x, torch.randn(2, 3, 4), torch.rand(3), None, None)
    with pytest.raises(ValueError, match="baseline must have shape"):
        torch.ops.fastattr.path_interpolate(x, torch.randn(3, 4).double(), torch.rand(2), None)
    with pytest.raises(ValueError, match="bias must be"):
        torch.ops.fastattr.cd_bias_split(torch.randn(4, 3, 2), torch.randn(5), 2, False, None)
    with pytest.raises(TypeError, match="x must be a floating"):
        torch.ops.fastattr.sparsemax(torch.arange(6).reshape(2, 3), -1, None)
    with pytest.raises(IndexError, match="out of range"):
        torch.ops.fastattr.sparsemax(torch.randn(2, 3), 2, None)
    with pytest.raises(ValueError, match="grad must have the shape"):
        torch.ops.fastattr.sparsemax_backward(torch.rand(2, 3), torch.rand(3, 2), -1, None)
