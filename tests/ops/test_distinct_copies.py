"""fastattr.ops.distinct_copies (SPEC §6; SOP's masked copies of the distinct groups) on every backend:
agreement with the reference bit for bit, the numbering and the product written out by hand, dtypes, the
custom op contract, errors."""
import pytest
import torch

from fastattr.ops import distinct_copies, first_equal_group
from fastattr.reference import distinct_copies as reference_copies


def _case(b, g, p, c, length, dtype, device, seed, repeats=True):
    gen = torch.Generator().manual_seed(seed)
    masks = torch.rand(b, g, p, generator=gen) < 0.5
    if repeats and g > 2:
        masks[:, g - 1] = masks[:, 0]                         # a repeated group in every input
    unit_patch = torch.randint(0, p, (length,), generator=gen)
    x = torch.randn(b, c, length, generator=gen, dtype=torch.float64).to(dtype)
    return x.to(device), masks.to(device), first_equal_group(masks).to(device), unit_patch.to(device)


def _same(got, expected):
    for a, e in zip(got, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert torch.equal(a.cpu(), e.cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_matches_reference(backend_device, dtype):
    backend, device = backend_device
    for seed, shape in enumerate([(3, 8, 16, 1, 64), (2, 5, 4, 3, 16), (1, 1, 1, 1, 1), (4, 12, 49, 3, 196),
                                  (2, 32, 7, 2, 7)]):
        x, masks, first, unit_patch = _case(*shape, dtype, device, seed)
        got = distinct_copies(x, masks, first, unit_patch, backend=backend)
        _same(got, reference_copies(x.cpu(), masks.cpu(), first.cpu(), unit_patch.cpu()))
        assert got[0].device == x.device and got[0].shape[0] == int((first == torch.arange(shape[1],
                                                                                           device=device)).sum())


def test_the_numbering_and_the_product_written_out(backend_device):
    """Distinct groups numbered example-major, a repeat reading its first group's copy; each copy ``x[b]``
    times its group's 0/1 patch values, a product (−x·0 is −0.0, NaN·0 is NaN, as ``S ⊙ x``)."""
    backend, device = backend_device
    masks = torch.tensor([[[1, 0], [0, 1], [1, 0]], [[1, 1], [1, 1], [0, 0]]], dtype=torch.bool, device=device)
    first = first_equal_group(masks)
    assert first.tolist() == [[0, 1, 0], [0, 0, 2]]
    unit_patch = torch.tensor([0, 0, 1, 1, 0], device=device)
    x = torch.tensor([[[1.0, -2.0, 3.0, float("nan"), 5.0]], [[-1.0, 2.0, -3.0, 4.0, float("inf")]]], device=device)
    copies, slot = distinct_copies(x, masks, first, unit_patch, backend=backend)
    assert slot.tolist() == [[0, 1, 0], [2, 2, 3]]
    expected = torch.stack([x[0, 0] * torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0], device=device),
                            x[0, 0] * torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0], device=device),
                            x[1, 0] * torch.ones(5, device=device), x[1, 0] * torch.zeros(5, device=device)])
    assert torch.equal(copies[:, 0].isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(copies[:, 0], nan=7.0), torch.nan_to_num(expected, nan=7.0))
    assert torch.signbit(copies[1, 0, 1]) and torch.signbit(copies[3, 0, 0])   # −2·0 and −1·0: −0.0


def test_layouts_empty_batch_and_gradients(backend_device):
    backend, device = backend_device
    x, masks, first, unit_patch = _case(3, 6, 5, 2, 20, torch.float64, device, 3)
    expected = reference_copies(x.cpu(), masks.cpu(), first.cpu(), unit_patch.cpu())
    wide = torch.zeros(3, 2, 40, dtype=torch.float64, device=device)
    wide[..., ::2] = x
    _same(distinct_copies(wide[..., ::2], masks, first, unit_patch, backend=backend), expected)   # strided
    _same(distinct_copies(x, masks.transpose(1, 2).contiguous().transpose(1, 2), first.t().contiguous().t(),
                          unit_patch, backend=backend), expected)
    leaf = x.clone().requires_grad_(True)
    out = distinct_copies(leaf, masks, first, unit_patch, backend=backend)
    _same(out, expected)
    assert not any(t.requires_grad for t in out)
    empty = distinct_copies(x[:0], masks[:0], first[:0], unit_patch, backend=backend)
    assert [tuple(t.shape) for t in empty] == [(0, 2, 20), (0, 6)]


def test_vmap_over_the_masks_goes_through_the_op(backend_device):
    """A functorch-wrapped ``masks`` / ``first`` (``x`` plain) is handled by the custom op's fallback on every
    backend, not handed to the C++ kernel by pointer (the same number of copies in every slice)."""
    backend, device = backend_device
    x, masks, first, unit_patch = _case(3, 6, 5, 2, 10, torch.float32, device, 4)
    stacked_masks, stacked_first = masks.expand(4, -1, -1, -1).clone(), first.expand(4, -1, -1).clone()
    copies, slot = torch.func.vmap(lambda m, f: distinct_copies(x, m, f, unit_patch, backend=backend))(
        stacked_masks, stacked_first)
    expected = reference_copies(x.cpu(), masks.cpu(), first.cpu(), unit_patch.cpu())
    for i in range(4):
        _same((copies[i], slot[i]), expected)


def test_errors_name_the_argument(backend_device):
    backend, device = backend_device
    x, masks, first, unit_patch = _case(2, 4, 3, 1, 6, torch.float32, device, 1)
    for bad in ([[0, 2, 0, 0], [0, 1, 2, 3]], [[0, 1, 1, 2], [0, 1, 2, 3]], [[0, 1, 2, -1], [0, 1, 2, 3]]):
        # a later group, a group that is itself a repeat, no group
        with pytest.raises(ValueError, match="first must give each group a distinct group"):
            distinct_copies(x, masks, torch.tensor(bad, device=device), unit_patch, backend=backend)
    for bad in (3, -1):
        broken = unit_patch.clone()
        broken[4] = bad
        with pytest.raises(ValueError, match=r"unit_patch must hold patches of masks \(0 … 2\): 1 entries"):
            distinct_copies(x, masks, first, broken, backend=backend)
    with pytest.raises(ValueError, match="unit_patch must give the patch of each of x's 6 units"):
        distinct_copies(x, masks, first, unit_patch[:5], backend=backend)
    with pytest.raises(ValueError, match="must agree on B and G"):
        distinct_copies(x, masks, first[:, :3], unit_patch, backend=backend)
    with pytest.raises(TypeError, match="x must be a floating point tensor"):
        distinct_copies(x.long(), masks, first, unit_patch, backend=backend)
    with pytest.raises(ValueError, match="masks must be bool, got torch.float32"):
        distinct_copies(x, masks.float(), first, unit_patch, backend=backend)
    with pytest.raises(ValueError, match="first must be 2-D"):
        distinct_copies(x, masks, first[0], unit_patch, backend=backend)
    with pytest.raises(ValueError, match="must agree"):
        torch.ops.fastattr.distinct_copies(x, masks[:1], first, unit_patch, backend)   # the custom op checks too


def test_the_custom_op_contract(backend_device):
    """torch.library.opcheck: the fake kernel (a data-dependent number of copies), schema and dispatch."""
    backend, device = backend_device
    args = _case(3, 6, 5, 2, 10, torch.float32, device, 8)
    torch.library.opcheck(torch.ops.fastattr.distinct_copies.default, (*args, backend),
                          test_utils=("test_schema", "test_faketensor"))
