import torch

from textseg.grouping import groups_to_region_masks
from textseg.region import region_attention_mask


def tokens_before_masked_blocks(region, images):
    x, grid = region.embed(images)
    blocks = region.visual.transformer.resblocks
    for blk in blocks[: len(blocks) - region.masked_blocks]:
        x = blk(x)
    return x, grid


def test_attention_mask_pattern():
    masks = torch.tensor([[[True, False, True], [False, True, False]]])  # 1 image, 2 regions, 3 patches
    m = region_attention_mask(masks, num_heads=2)
    assert m.shape == (2, 6, 6)
    allow = (m[0] == 0).int().tolist()
    assert allow[0] == [1, 1, 1, 1, 0, 0]  # CLS: CLS + patches, never region tokens
    assert allow[2] == [1, 1, 1, 1, 0, 0]  # a patch: same
    assert allow[4] == [0, 1, 0, 1, 1, 0]  # region 0: its patches 0, 2 and itself
    assert allow[5] == [0, 0, 1, 0, 0, 1]  # region 1: patch 1 and itself
    assert torch.equal(m[0], m[1])


@torch.no_grad()
def test_full_mask_region_token_equals_cls(tiny_model):
    region = tiny_model.region
    images = torch.rand(2, 3, 64, 80)
    grid = (4, 5)
    full = torch.ones(2, 1, *grid, dtype=torch.bool)
    for masked_blocks in (1, 2):
        region.masked_blocks = masked_blocks
        out = region(images, full)
        # the ordinary CLIP CLS embedding of the same blocks, computed without any region token
        plain = region.encode_image(images)
        torch.testing.assert_close(out.regions[:, 0], plain, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.image, plain, atol=1e-5, rtol=0)
    region.masked_blocks = 1


@torch.no_grad()
def test_region_output_ignores_patches_outside_its_region(tiny_model):
    region = tiny_model.region
    images = torch.rand(1, 3, 64, 64)
    x, (gh, gw) = tokens_before_masked_blocks(region, images)
    masks = torch.zeros(1, 2, gh * gw, dtype=torch.bool)
    masks[0, 0, :5] = True
    masks[0, 1, 5:] = True
    ref = region.forward_masked_blocks(x, masks)
    altered = x.clone()
    altered[:, 1 + 5:] += 3.0 * torch.randn_like(altered[:, 1 + 5:])  # patches outside region 0
    out = region.forward_masked_blocks(altered, masks)
    torch.testing.assert_close(out.regions[:, 0], ref.regions[:, 0], atol=1e-6, rtol=0)
    assert (out.regions[:, 1] - ref.regions[:, 1]).abs().max() > 1e-3  # region 1 does see them
    assert (out.image - ref.image).abs().max() > 1e-3


@torch.no_grad()
def test_regions_are_batched_in_one_pass_with_padding(tiny_model):
    images = torch.rand(2, 3, 64, 64)
    groups = torch.stack([torch.zeros(4, 4, dtype=torch.long), (torch.arange(4)[None].repeat(4, 1) >= 2).long()])
    masks = groups_to_region_masks(groups, (4, 4))
    assert masks.shape == (2, 2, 4, 4)
    out = tiny_model(images, masks)
    assert out.regions.shape == (2, 2, tiny_model.clip.visual.output_dim)
    assert out.valid.tolist() == [[True, False], [True, True]]
    assert masks[1, 0, :, :2].all() and not masks[1, 0, :, 2:].any()
