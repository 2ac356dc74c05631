"""perturb_by_rank on every backend against the reference: shapes, channel-shared and
per-element features, insertion and deletion, dtypes, gradients, torch.compile."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastattr.core import rank_features
from fastattr.ops import perturb_by_rank
from fastattr.reference.perturb_by_rank import perturb_by_rank as reference


def _case(batch, channels, spatial, per_element, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, channels, *spatial), generator=g, dtype=torch.float64).to(dtype).to(device)
    base = torch.randn((batch, channels, *spatial), generator=g, dtype=torch.float64).to(dtype).to(device)
    n_feat = x[0].numel() if per_element else x[0, 0].numel()
    rank = rank_features(torch.randn(batch, n_feat, generator=g)).to(device)
    return x, base, rank, n_feat


def test_matches_reference(backend_device):
    backend, device = backend_device

    @settings(max_examples=10 if (backend, device) == ("triton", "cpu") else 40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(batch=st.integers(1, 4), channels=st.integers(1, 3), spatial=st.lists(st.integers(1, 7), min_size=1, max_size=2),
           per_element=st.booleans(), insert=st.booleans(), n_steps=st.integers(1, 5),
           dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 999))
    def check(batch, channels, spatial, per_element, insert, n_steps, dtype, seed):
        x, base, rank, n_feat = _case(batch, channels, spatial, per_element, dtype, device, seed)
        counts = torch.randint(0, n_feat + 1, (n_steps,), generator=torch.Generator().manual_seed(seed)).to(device)
        out = perturb_by_rank(x, base, rank, counts, insert=insert, backend=backend)
        ref = reference(x.reshape(batch, -1, n_feat), base.reshape(batch, -1, n_feat), rank, counts, insert)
        assert out.shape == (n_steps * batch, channels, *spatial) and out.dtype == dtype
        assert torch.equal(out.reshape(ref.shape), ref)  # a pure selection: bit-exact

    check()


def test_insertion_and_deletion_by_hand(backend_device):
    backend, device = backend_device
    x = torch.arange(1.0, 9.0, device=device).reshape(1, 2, 2, 2)       # channels share 4 pixels
    base = torch.zeros_like(x)
    rank = torch.tensor([[2, 0, 3, 1]], device=device)                   # pixel 1 first, then 3, 0, 2
    counts = torch.tensor([0, 1, 2, 4], device=device)
    ins = perturb_by_rank(x, base, rank, counts, insert=True, backend=backend)
    dele = perturb_by_rank(x, base, rank, counts, insert=False, backend=backend)
    torch.testing.assert_close(ins[0], torch.zeros(2, 2, 2, device=device))
    torch.testing.assert_close(ins[1], torch.tensor([[[0.0, 2.0], [0.0, 0.0]], [[0.0, 6.0], [0.0, 0.0]]], device=device))
    torch.testing.assert_close(ins[2], torch.tensor([[[0.0, 2.0], [0.0, 4.0]], [[0.0, 6.0], [0.0, 8.0]]], device=device))
    torch.testing.assert_close(ins[3], x[0])
    torch.testing.assert_close(dele + ins, x.expand(4, -1, -1, -1))


def test_gradients_and_compile(backend_device):
    backend, device = backend_device
    x, base, rank, n_feat = _case(2, 3, (3, 3), False, torch.float64, device, 1)
    counts = torch.tensor([0, 4, 9], device=device)
    xr, br = x.clone().requires_grad_(), base.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: perturb_by_rank(a, b, rank, counts, insert=True, backend=backend), (xr, br))
    f = lambda a: perturb_by_rank(a, base, rank, counts, insert=False, backend=backend).sum(0)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))


def test_inputs_not_modified_and_non_contiguous(backend_device):
    backend, device = backend_device
    x, base, rank, n_feat = _case(3, 2, (4, 5), True, torch.float32, device, 2)
    xt, bt = x.transpose(2, 3), base.transpose(2, 3)
    saved = xt.clone()
    counts = torch.tensor([3, 17], device=device)
    out = perturb_by_rank(xt, bt, rank, counts, insert=True, backend=backend)
    ref = reference(xt.reshape(3, 1, -1), bt.reshape(3, 1, -1), rank, counts, True)
    assert torch.equal(out.reshape(ref.shape), ref) and torch.equal(xt, saved)


def test_bad_arguments():
    x = torch.rand(2, 3, 4, 4)
    rank = rank_features(torch.randn(2, 16))
    with pytest.raises(ValueError, match="rank must be an int64"):
        perturb_by_rank(x, x, rank[:, :10], torch.tensor([1]), insert=True)
    with pytest.raises(ValueError, match="rank must be an int64"):
        perturb_by_rank(x, x, rank.int(), torch.tensor([1]), insert=True)
    with pytest.raises(ValueError, match="counts must be"):
        perturb_by_rank(x, x, rank, torch.tensor([1.0]), insert=True)
    with pytest.raises(ValueError, match="baseline of shape"):
        perturb_by_rank(x, torch.rand(3, 3, 4, 4), rank, torch.tensor([1]), insert=True)
    with pytest.raises(TypeError, match="floating"):
        perturb_by_rank(x.long(), x, rank, torch.tensor([1]), insert=True)
