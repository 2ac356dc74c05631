"""fastattr.ops.group_masks (SPEC §6; SOP GroupGen's selection) on every backend: agreement with the reference
(stable torch sorts of the sparsemax peaks, the row maxima and the logits), the ranking rules written out by
hand, ties, the extremes of G and K, layouts, dtypes, torch.compile, errors."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattr
from fastattr.ops import first_equal_group, group_masks
from fastattr.reference import group_masks as reference_masks


def _logits(b, r, n, dtype, device, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, r, n, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


def _same(got, expected):
    for a, e in zip(got, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert torch.equal(a.cpu(), e.cpu())


def test_matches_reference(backend_device):
    """float64 logits (no two peaks within rounding of each other) of many shapes, on every backend."""
    backend, device = backend_device

    @settings(max_examples=5 if backend == "triton" and device == "cpu" else 30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(b=st.integers(1, 4), r=st.integers(1, 40), n=st.integers(1, 70), data=st.data(),
           scale=st.sampled_from([0.2, 1.0, 5.0]), seed=st.integers(0, 999))
    def check(b, r, n, data, scale, seed):
        g, k = data.draw(st.integers(1, r)), data.draw(st.integers(1, n))
        z = _logits(b, r, n, torch.float64, device, seed, scale)
        masks, rows, first = group_masks(z, g, k, backend=backend)
        _same((masks, rows, first), reference_masks(z.cpu(), g, k))
        assert masks.device == z.device and (masks.sum(-1) == k).all()

    check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_in_low_precision(backend_device, dtype):
    """float32 (and fp16 / bf16, ranked in float32) on fixed seeds: the same groups as the reference."""
    backend, device = backend_device
    for seed, (b, r, n, g, k) in enumerate([(3, 16, 16, 8, 4), (2, 32, 16, 16, 3), (2, 7, 100, 7, 20),
                                            (1, 49, 49, 32, 10), (4, 5, 64, 2, 64), (2, 5, 65, 5, 1)]):
        z = _logits(b, r, n, dtype, device, seed)
        _same(group_masks(z, g, k, backend=backend), reference_masks(z.cpu(), g, k))


def test_the_ranking_rules_written_out(backend_device):
    """Rows by the largest sparsemax probability, then by the row max, then by index; a kept row's mask is
    its K largest logits, ties to the lower index; first is the first group with the same mask."""
    backend, device = backend_device
    z = torch.tensor([[[0.0, 0.5, 0.2, 0.1],     # peak 0.55 (sparsemax 0.05, 0.55, 0.25, 0.15)
                       [3.0, 0.0, 0.0, 0.0],     # one-hot, peak 1, max 3
                       [0.0, 0.0, 0.0, 0.0],     # uniform, peak 0.25
                       [0.0, 0.0, 0.0, 2.0],     # one-hot, peak 1, max 2
                       [3.0, 0.0, 0.0, 0.0],     # a copy of row 1: the same peak and max, ranked after it
                       [1.0, 1.0, 0.5, 0.5]]],   # peak 0.5
                     dtype=torch.float64, device=device)
    peaks = fastattr.sparsemax(z.cpu(), -1).amax(-1)[0]
    assert peaks.tolist() == pytest.approx([0.55, 1.0, 0.25, 1.0, 1.0, 0.5])
    masks, rows, first = group_masks(z, 6, 2, backend=backend)
    assert rows.tolist() == [[1, 4, 3, 0, 5, 2]]
    assert masks.int().tolist() == [[[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0],
                                     [1, 1, 0, 0]]]
    assert first.tolist() == [[0, 0, 2, 3, 0, 0]]
    masks, rows, first = group_masks(z, 2, 4, backend=backend)  # K = n: every entry
    assert rows.tolist() == [[1, 4]] and masks.all() and first.tolist() == [[0, 0]]


def test_first_equal_group_on_its_own():
    toy = torch.tensor([[[1, 0], [0, 1], [1, 0], [1, 1]], [[1, 1], [1, 1], [0, 0], [0, 0]]], dtype=torch.bool)
    assert first_equal_group(toy).tolist() == [[0, 1, 0, 3], [0, 0, 2, 2]]


def test_layouts_empty_batch_and_gradients(backend_device):
    backend, device = backend_device
    z = _logits(6, 12, 10, torch.float64, device, 5)
    expected = reference_masks(z.cpu(), 4, 3)
    wide = torch.zeros(6, 12, 20, dtype=torch.float64, device=device)
    wide[..., ::2] = z
    _same(group_masks(wide[..., ::2], 4, 3, backend=backend), expected)            # strided
    _same(group_masks(z.transpose(1, 2).contiguous().transpose(1, 2), 4, 3, backend=backend), expected)
    leaf = z.clone().requires_grad_(True)
    out = group_masks(leaf, 4, 3, backend=backend)                                   # not differentiated
    _same(out, expected)
    assert not any(t.requires_grad for t in out)
    empty = group_masks(z[:0], 4, 3, backend=backend)
    assert [tuple(t.shape) for t in empty] == [(0, 4, 10), (0, 4), (0, 4)]


def test_torch_compile_fullgraph(backend_device):
    backend, device = backend_device
    z = _logits(3, 16, 16, torch.float32, device, 7)

    def f(t):
        masks, rows, first = group_masks(t, 8, 4, backend=backend)
        return masks.float().sum(), rows, first

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(z), f(z)):
        assert torch.equal(a, b)


def test_errors_name_the_argument(backend_device):
    backend, device = backend_device
    z = _logits(2, 6, 5, torch.float32, device, 1)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = z.clone()
        broken[1, 3, 2] = bad
        with pytest.raises(ValueError, match="logits must be finite: 1 candidate row"):
            group_masks(broken, 2, 2, backend=backend)
    with pytest.raises(ValueError, match="logits must be 3-D"):
        group_masks(z[0], 2, 2, backend=backend)
    with pytest.raises(TypeError, match="logits must be a floating point tensor"):
        group_masks(z.long(), 2, 2, backend=backend)
    for kw, word in (({"n_groups": 0}, "n_groups"), ({"n_groups": 7}, "n_groups"), ({"n_groups": 2.0}, "n_groups"),
                     ({"kept": 0}, "kept"), ({"kept": 6}, "kept"), ({"kept": True}, "kept")):
        args = {"n_groups": 2, "kept": 2, **kw}
        with pytest.raises(ValueError, match=word):
            group_masks(z, args["n_groups"], args["kept"], backend=backend)
    with pytest.raises(ValueError, match="n_groups"):
        torch.ops.fastattr.group_masks(z, 9, 2, backend)  # the custom op checks too
    for shape in ((2, 0, 5), (2, 3, 0)):
        with pytest.raises(ValueError, match="at least one candidate row of at least one entry"):
            group_masks(torch.zeros(shape, device=device), 1, 1, backend=backend)


def test_the_custom_op_contract(backend_device):
    """torch.library.opcheck: the fake kernel's shapes, dtypes and strides, schema and dispatch."""
    backend, device = backend_device
    z = _logits(3, 10, 7, torch.float32, device, 8)
    torch.library.opcheck(torch.ops.fastattr.group_masks.default, (z, 4, 3, backend),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
