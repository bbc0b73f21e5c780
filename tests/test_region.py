import torch

from textseg.grouping import groups_to_region_masks
from textseg.region import region_attention_mask


def tokens_before_masked_blocks(region, images):
    x, grid = region.embed(images)
    blocks = region.visual.transformer.resblocks
    for blk in blocks[: len(blocks) - region.masked_blocks]:
        x = blk(x)
    return x, grid


def split_in_two(region, at):
    """Tokens entering the masked blocks for one random 64 x 64 image, and two regions: patches [0, at) and the rest."""
    x, (gh, gw) = tokens_before_masked_blocks(region, torch.rand(1, 3, 64, 64))
    masks = torch.zeros(1, 2, gh * gw, dtype=torch.bool)
    masks[0, 0, :at] = True
    masks[0, 1, at:] = True
    return x, masks


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
    x, masks = split_in_two(region, 5)
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


@torch.no_grad()
def test_mean_init_region_token_carries_no_cls_content(tiny_model):
    region = tiny_model.region
    x, masks = split_in_two(region, 3)
    altered = x.clone()
    altered[:, 0] += 3.0 * torch.randn_like(altered[:, 0])  # the CLS token at the masked block's input
    try:
        region.init = "mean"
        ref, out = region.forward_masked_blocks(x, masks), region.forward_masked_blocks(altered, masks)
        torch.testing.assert_close(out.regions, ref.regions, atol=1e-6, rtol=0)  # no path from CLS to a region
        # a one-patch region's token starts as that patch token: it equals the patch's own output in the block
        one = torch.zeros(1, 1, masks.shape[-1], dtype=torch.bool)
        one[0, 0, 7] = True
        single = region.forward_masked_blocks(x, one)
        blk = region.visual.transformer.resblocks[-1]
        alone = blk(x[:, 8:9])  # patch 7 (token 8) attending only to itself
        torch.testing.assert_close(single.regions[:, 0], region.project(alone[:, 0]), atol=1e-5, rtol=0)
        region.init = "cls"
        cls_ref, cls_out = region.forward_masked_blocks(x, masks), region.forward_masked_blocks(altered, masks)
        assert (cls_out.regions - cls_ref.regions).abs().max() > 1e-3  # a copy of CLS carries it in
    finally:
        region.init = "cls"


def test_region_init_is_checked():
    import pytest

    from textseg.config import RegionConfig
    from textseg.errors import ConfigError

    assert RegionConfig().init == "cls"
    with pytest.raises(ConfigError, match="region.init"):
        RegionConfig(init="zeros")


@torch.no_grad()
def test_self_attention_mass_of_region_tokens(tiny_model):
    import pytest

    region = tiny_model.region
    images = torch.rand(2, 3, 64, 64)
    gh = gw = 64 // region.patch_size
    masks = torch.zeros(2, 2, gh, gw, dtype=torch.bool)
    masks[:, 0, :2] = True
    masks[:, 1, 2:] = True
    mass = region.self_attention_mass(images, masks)
    assert mass.shape == (2, 2) and ((mass > 0) & (mass < 1)).all()
    # recomputed by hand: softmax of the first masked block's scaled dot products over the token's allowed keys
    x, _ = tokens_before_masked_blocks(region, images)
    blk = region.visual.transformer.resblocks[-1]
    flat = masks.flatten(2)
    seq = torch.cat([x, x[:, :1].expand(2, 2, x.shape[-1])], 1)
    h = blk.ln_1(seq)
    d, heads = h.shape[-1], region.num_heads
    q, k, _ = torch.nn.functional.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, -1)
    q, k = (t.reshape(2, -1, heads, d // heads).transpose(1, 2) for t in (q, k))
    n, length = flat.shape[-1], seq.shape[1]
    bias = region_attention_mask(flat, heads).view(2, heads, length, length)
    logits = (q @ k.transpose(-1, -2)) / (d // heads) ** 0.5 + bias
    w = logits.softmax(-1).mean(1)
    want = torch.stack([w[:, 1 + n + j, 1 + n + j] for j in range(2)], 1)
    torch.testing.assert_close(mass, want, atol=1e-5, rtol=0)
    region.mode = "pool"
    try:
        with pytest.raises(ValueError, match="region tokens"):
            region.self_attention_mass(images, masks)
    finally:
        region.mode = "tokens"
