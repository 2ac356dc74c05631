"""cd_bias_split on every backend against the reference: shapes, K, dtypes, ReLU, the 0/0
convention, non-contiguous input, gradients (gradcheck in float64) and torch.compile."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastattr.ops import cd_bias_split
from fastattr.reference.cd import cd_bias_split as reference

from ..conftest import TOL, rel_err


def _case(n_ref, k, channels, spatial, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn((n_ref * (1 + k), channels, *spatial), generator=g, dtype=torch.float64)
    bias = torch.randn(channels, generator=g, dtype=torch.float64)
    return y.to(dtype).to(device), bias.to(dtype).to(device)


def test_matches_reference(backend_device):
    backend, device = backend_device

    @settings(max_examples=10 if backend == "triton" else 40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(n_ref=st.integers(1, 3), k=st.integers(0, 5), channels=st.integers(1, 6),
           spatial=st.lists(st.integers(1, 6), min_size=0, max_size=2), relu=st.booleans(),
           dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 999))
    def check(n_ref, k, channels, spatial, relu, dtype, seed):
        y, bias = _case(n_ref, k, channels, spatial, dtype, device, seed)
        out = cd_bias_split(y, bias, n_ref, relu, backend=backend)
        ref = reference(y.cpu(), bias.cpu(), n_ref, relu)
        assert out.shape == y.shape and out.dtype == dtype
        assert rel_err(out, ref) <= TOL[dtype]

    check()


def test_formula_by_hand(backend_device):
    """One reference row z, two mask rows u: the bias goes to β in proportion |u| : |z − u|."""
    backend, device = backend_device
    y = torch.tensor([[[3.0, 0.0, -2.0]], [[1.0, 0.0, -2.0]], [[3.0, 0.0, 1.0]]], device=device)
    bias = torch.tensor([2.0], device=device)
    out = cd_bias_split(y, bias, 1, backend=backend)
    expected = torch.tensor([[[5.0, 2.0, 0.0]],                     # z + b
                             [[1.0 + 2 * 1 / 3, 1.0, -2.0 + 2]],    # 1/(1+2) of b; 0/0 → half; all of b
                             [[3.0 + 2, 1.0, 1.0 + 2 * 1 / 4]]], device=device)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(cd_bias_split(y, bias, 1, True, backend=backend), expected.clamp_min(0))


def test_nan_propagates_through_the_fused_relu(backend_device):
    """NaN in → NaN out with relu=True on every backend (as the reference's clamp_min), on reference
    rows and on β rows (a NaN in z reaches its β rows through |z − u|)."""
    backend, device = backend_device
    for dtype in (torch.float32, torch.float64):
        y, bias = _case(1, 2, 3, (4,), dtype, device, 11)
        y[0, 1, 2] = float("nan")
        y[2, 0, 1] = float("nan")
        for relu in (False, True):
            out = cd_bias_split(y, bias, 1, relu, backend=backend)
            expected_nan = reference(y.cpu(), bias.cpu(), 1, relu).isnan()
            assert expected_nan.sum() == 4
            assert torch.equal(out.isnan().cpu(), expected_nan)


def test_split_sums_with_gamma_to_the_activation(backend_device):
    """β' from u and γ' from z − u (the same rule applied to γ) add up to z + b."""
    backend, device = backend_device
    y, bias = _case(2, 3, 4, (5,), torch.float64, device, 3)
    out = cd_bias_split(y, bias, 2, backend=backend)
    z = y[:2].repeat_interleave(3, 0)
    gamma_y = torch.cat([y[:2], z - y[2:]])
    gamma = cd_bias_split(gamma_y, bias, 2, backend=backend)[2:]
    torch.testing.assert_close(out[2:] + gamma, (z + bias[:, None]))


def test_non_contiguous_and_empty(backend_device):
    backend, device = backend_device
    y, bias = _case(2, 2, 3, (4, 5), torch.float32, device, 5)
    yt = y.transpose(2, 3)
    assert not yt.is_contiguous()
    assert rel_err(cd_bias_split(yt, bias, 2, True, backend=backend), reference(yt, bias, 2, True)) <= 1e-6
    empty = torch.empty(2, 3, 0, device=device)
    assert cd_bias_split(empty, bias, 1, backend=backend).shape == (2, 3, 0)


def test_gradients(backend_device):
    backend, device = backend_device
    for relu in (False, True):
        y, bias = _case(2, 2, 3, (4,), torch.float64, device, 7)
        y.requires_grad_()
        bias.requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: cd_bias_split(a, b, 2, relu, backend=backend), (y, bias))


def test_compile(backend_device):
    backend, device = backend_device
    y, bias = _case(1, 4, 3, (6,), torch.float32, device, 9)
    fn = torch.compile(lambda a, b: cd_bias_split(a, b, 1, True, backend=backend) * 2, fullgraph=True)
    torch.testing.assert_close(fn(y, bias), reference(y.cpu(), bias.cpu(), 1, True).to(device) * 2)


def test_bad_input():
    y, bias = _case(2, 1, 3, (4,), torch.float32, "cpu", 0)
    with pytest.raises(ValueError, match="n_ref"):
        cd_bias_split(y[:3], bias, 2)
    with pytest.raises(ValueError, match="bias"):
        cd_bias_split(y, bias[:2], 2)
