"""Contextual masking: region tokens that recognise every group of an image in one CLIP forward pass.

In the last ``masked_blocks`` blocks of a CLIP ViT, one extra query token per region is appended. Region token k
starts as a copy of the CLS token and attends only to itself and the patches of region k, while the CLS and patch
tokens keep their ordinary full attention (and never see the region tokens). Each region is thus recognised in the
context of the whole image (the patch tokens it reads have seen everything in the earlier blocks), and K regions
cost one forward pass. Training (region adaptation) and inference use this same module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from textseg.backbones import Normalize
from textseg.errors import ConfigError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class RegionOutput:
    """Outputs of :class:`RegionTokenViT`.

    Attributes:
        regions: (B, K, E) projected region embeddings (not normalised).
        image: (B, E) projected CLS embedding, the ordinary CLIP image embedding.
        valid: (B, K) bool, regions that cover at least one patch.
    """

    regions: torch.Tensor
    image: torch.Tensor
    valid: torch.Tensor


def region_attention_mask(region_masks: torch.Tensor, num_heads: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive attention mask for the sequence [CLS, N patches, K region tokens].

    Args:
        region_masks: (B, K, N) bool, patch n belongs to region k.
        num_heads: attention heads (the mask is repeated per head, as nn.MultiheadAttention wants).

    Returns:
        (B * num_heads, L, L) float mask with 0 where attention is allowed and -inf elsewhere, L = 1 + N + K.
    """
    b, k, n = region_masks.shape
    length = 1 + n + k
    allow = torch.zeros(b, length, length, dtype=torch.bool, device=region_masks.device)
    allow[:, : 1 + n, : 1 + n] = True  # CLS and patches: full attention among themselves
    allow[:, 1 + n:, 1: 1 + n] = region_masks  # region k reads the patches of region k
    eye = torch.arange(1 + n, length, device=region_masks.device)
    allow[:, eye, eye] = True  # ... and itself
    mask = torch.zeros(b, length, length, dtype=dtype, device=region_masks.device)
    mask.masked_fill_(~allow, float("-inf"))
    return mask.repeat_interleave(num_heads, dim=0)


def positional_embedding(visual: nn.Module, gh: int, gw: int) -> torch.Tensor:
    """An open_clip ViT's positional embedding for a gh × gw patch grid (bicubic interpolation of the trained
    grid; the CLS position unchanged)."""
    pos = visual.positional_embedding
    g0h, g0w = visual.grid_size
    if (gh, gw) == (g0h, g0w):
        return pos
    grid = pos[1:].reshape(1, g0h, g0w, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid[0].permute(1, 2, 0).reshape(gh * gw, -1)], 0)


def embed_patches(visual: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, 3, H, W) normalised images → an open_clip ViT's (B, 1 + N, D) tokens after ln_pre (CLS first,
    positional embedding interpolated to the grid), and the patch grid (gh, gw)."""
    x = visual.conv1(x.to(visual.conv1.weight.dtype))
    gh, gw = (int(s) for s in x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + positional_embedding(visual, gh, gw).to(x.dtype)
    return visual.ln_pre(x), (gh, gw)


class RegionTokenViT(nn.Module):
    """Wraps an open_clip ``VisionTransformer`` to output one embedding per region (see module docstring).

    Args:
        visual: ``open_clip`` model's ``.visual`` (a VisionTransformer with token pooling).
        masked_blocks: how many of the last blocks carry region tokens (>= 1).
        mean, std: input normalisation of the CLIP.
        mode: ``"tokens"`` (contextual masking, above) or ``"pool"``: no region tokens, a region's embedding is
            the mean of its projected output patch tokens (the ablation without contextual masking).
        init: what a region token starts as at the first masked block: ``"cls"``, a copy of the CLS token, or
            ``"mean"``, the mean of its region's patch tokens (so that it carries no image-level content in).
    """

    def __init__(self, visual: nn.Module, masked_blocks: int = 1, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                 mode: str = "tokens", init: str = "cls"):
        super().__init__()
        if not hasattr(visual, "transformer") or not hasattr(visual, "class_embedding"):
            raise ConfigError("region tokens need an open_clip VisionTransformer (a ViT CLIP, not a ResNet/timm tower)")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ConfigError("region tokens need a CLIP ViT with CLS-token pooling (pool_type 'tok', no attn_pool)")
        depth = len(visual.transformer.resblocks)
        if not 1 <= masked_blocks <= depth:
            raise ConfigError(f"masked_blocks must be in 1..{depth}, got {masked_blocks}")
        if mode not in ("tokens", "pool"):
            raise ConfigError(f"region mode must be 'tokens' or 'pool', got {mode!r}")
        if init not in ("cls", "mean"):
            raise ConfigError(f"region token init must be 'cls' or 'mean', got {init!r}")
        self.visual = visual
        self.masked_blocks = masked_blocks
        self.mode = mode
        self.init = init
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.num_heads = visual.transformer.resblocks[0].attn.num_heads
        self.normalize = Normalize(mean, std)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) images in [0, 1] → (B, 1 + N, D) tokens after ln_pre, and the patch grid (gh, gw)."""
        return embed_patches(self.visual, self.normalize(images))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post + projection, applied token-wise (identical to open_clip's pooling for the CLS token)."""
        x = self.visual.ln_post(tokens)
        return x @ self.visual.proj if self.visual.proj is not None else x

    def forward(self, images: torch.Tensor, region_masks: torch.Tensor) -> RegionOutput:
        """Embed every region of every image in one pass.

        Args:
            images: (B, 3, H, W) in [0, 1]; H and W multiples of the patch size.
            region_masks: (B, K, gh, gw) bool (or {0, 1}) masks on the CLIP patch grid.
        """
        x, masks = self.masked_block_input(images, region_masks)
        if self.mode == "pool":
            for blk in self.split_blocks()[1]:
                x = blk(x)
            tokens = self.project(x)
            weights = masks.to(tokens.dtype)
            regions = weights @ tokens[:, 1:] / weights.sum(-1, keepdim=True).clamp_min(1)
            return RegionOutput(regions=regions, image=tokens[:, 0], valid=masks.any(-1))
        return self.forward_masked_blocks(x, masks)

    def masked_block_input(self, images: torch.Tensor, region_masks: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, 1 + N, D) tokens entering the first masked block and the (B, K, N) bool region masks, from
        (B, 3, H, W) images in [0, 1] and (B, K, gh, gw) masks on the CLIP patch grid (checked)."""
        x, (gh, gw) = self.embed(images)
        if region_masks.shape[2:] != (gh, gw):
            raise ValueError(f"region masks are {tuple(region_masks.shape[2:])}, the CLIP patch grid is {(gh, gw)}")
        for blk in self.split_blocks()[0]:
            x = blk(x)
        return x, region_masks.flatten(2).bool()

    def split_blocks(self) -> tuple[nn.ModuleList, nn.ModuleList]:
        """The CLIP's blocks before the masked ones, and the last ``masked_blocks`` blocks."""
        blocks = self.visual.transformer.resblocks
        first = len(blocks) - self.masked_blocks
        return blocks[:first], blocks[first:]

    def forward_masked_blocks(self, x: torch.Tensor, masks: torch.Tensor) -> RegionOutput:
        """Run the last ``masked_blocks`` blocks with region tokens and project.

        Args:
            x: (B, 1 + N, D) tokens at the input of the first masked block.
            masks: (B, K, N) bool region masks over the N patches.
        """
        n = masks.shape[2]
        attn_mask = region_attention_mask(masks, self.num_heads, x.dtype)
        x = torch.cat([x, self.start_tokens(x, masks)], 1)
        for blk in self.split_blocks()[1]:
            x = blk(x, attn_mask=attn_mask)
        return RegionOutput(regions=self.project(x[:, 1 + n:]), image=self.project(x[:, 0]), valid=masks.any(-1))

    def start_tokens(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, K, D) region tokens entering the first masked block (``init``), from its (B, 1 + N, D) input."""
        if self.init == "mean":
            weights = masks.to(x.dtype)
            return weights @ x[:, 1:] / weights.sum(-1, keepdim=True).clamp_min(1)
        return x[:, :1].expand(masks.shape[0], masks.shape[1], x.shape[-1])

    def self_attention_mass(self, images: torch.Tensor, region_masks: torch.Tensor) -> torch.Tensor:
        """(B, K) attention each region token puts on itself (the rest goes to its region's patches), averaged over
        the heads and the masked blocks: near 1, a token ignores its region. Region-token mode only."""
        if self.mode != "tokens":
            raise ValueError("attention mass is defined for region tokens (mode 'tokens'), not for pooling")
        x, masks = self.masked_block_input(images, region_masks)
        b, k, n = masks.shape
        attn_mask = region_attention_mask(masks, self.num_heads, x.dtype)
        x = torch.cat([x, self.start_tokens(x, masks)], 1)
        own = torch.arange(1 + n, 1 + n + k, device=x.device)
        mass = torch.zeros(b, k, device=x.device)
        for blk in self.split_blocks()[1]:
            h = blk.ln_1(x)
            _, weights = blk.attn(h, h, h, attn_mask=attn_mask, need_weights=True, average_attn_weights=True)
            mass += weights[:, own, own].float()
            x = blk(x, attn_mask=attn_mask)
        return mass / self.masked_blocks

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """(B, gh, gw, E) projected output patch tokens of (B, 3, H, W) images in [0, 1] (H, W multiples of the
        patch size): per-patch embeddings in the joint image-text space, the ones ``mode="pool"`` averages."""
        x, (gh, gw) = self.embed(images)
        for blk in self.visual.transformer.resblocks:
            x = blk(x)
        return self.project(x[:, 1:]).reshape(x.shape[0], gh, gw, -1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Ordinary CLIP image embedding (B, E) at any input size."""
        x, _ = self.embed(images)
        for blk in self.visual.transformer.resblocks:
            x = blk(x)
        return self.project(x[:, 0])
