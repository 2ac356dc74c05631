"""cd_blocks: tiles partition the image, the map spreads each tile's CD score evenly and sums to
the tiles' total, equals CD of the tile masks, and rejects non-image input."""
import pytest
import torch

from fastattr.cd import block_masks, cd_blocks, contextual_decomposition

from .models import image_model


def test_block_masks_partition():
    masks = block_masks(7, 5, 3)
    assert masks.shape == (6, 1, 7, 5)
    assert torch.equal(masks.sum(0), torch.ones(1, 7, 5))
    with pytest.raises(ValueError, match="block"):
        block_masks(4, 4, 0)


def test_cd_blocks_map():
    model = image_model("maxpool")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([1, 3])
    amap = cd_blocks(model, x, t, block=4)
    assert amap.shape == x.shape
    beta = contextual_decomposition(model, x, block_masks(8, 8, 4).double(), target=t)[0]
    torch.testing.assert_close(amap.sum((1, 2, 3)), beta.sum(1))
    torch.testing.assert_close(amap[:, :, :4, :4].sum((1, 2, 3)), beta[:, 0])
    assert torch.equal(amap[:, 0], amap[:, 2])                           # shared across channels
    assert torch.unique(amap[0, 0, 4:, 4:]).numel() == 1                 # constant inside a tile
    with pytest.raises(ValueError, match="images"):
        cd_blocks(model, x[:, :, :, 0], t)
