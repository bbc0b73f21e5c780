"""TextSegModel: a grouping backbone, per-image k-means settings and a CLIP with region tokens."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from textseg.grouping import GroupingConfig, group_feature_map, upsample_groups
from textseg.region import RegionOutput, RegionTokenViT


def groups_to_patch_masks(groups: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Turn a pixel-level (H, W) group map into (K, gh, gw) bool masks on a patch grid.

    A patch belongs to the region that covers at least half of it; a region that covers no patch that much keeps
    the patch where its share is largest, so every group gets at least one patch.
    """
    g = torch.as_tensor(groups, dtype=torch.long)
    k = int(g.max()) + 1
    onehot = F.one_hot(g, k).permute(2, 0, 1)[None].float()
    frac = F.adaptive_avg_pool2d(onehot, grid)[0]  # (K, gh, gw) share of each patch
    masks = frac >= 0.5
    empty = ~masks.flatten(1).any(1)
    if empty.any():
        flat = masks.flatten(1)
        best = frac.flatten(1).argmax(1)
        flat[empty, best[empty]] = True
        masks = flat.view_as(masks)
    return masks


def stack_region_masks(masks: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-image (K_i, gh, gw) masks into (B, K, gh, gw), K = max K_i; padding regions are all False."""
    k = max(m.shape[0] for m in masks)
    out = torch.zeros(len(masks), k, *masks[0].shape[1:], dtype=torch.bool)
    for i, m in enumerate(masks):
        out[i, : m.shape[0]] = m
    return out


class TextSegModel(nn.Module):
    """The model built by :func:`textseg.create_model`.

    Attributes:
        backbone: maps (B, 3, H, W) images in [0, 1] to (B, h, w, C) grouping features.
        grouping: k-means settings.
        clip: the open_clip model (text tower and logit scale are used from here).
        region: :class:`RegionTokenViT` over ``clip.visual``.
        tokenizer: the open_clip tokenizer of ``clip``.
        config: the model config this model was built from.
    """

    def __init__(self, backbone: nn.Module, grouping: GroupingConfig, clip: nn.Module, tokenizer: Callable,
                 masked_blocks: int = 1, config: dict[str, Any] | None = None, name: str = "custom",
                 region_mode: str = "tokens"):
        super().__init__()
        self.backbone = backbone
        self.grouping = grouping
        self.clip = clip
        self.region = RegionTokenViT(clip.visual, masked_blocks=masked_blocks, mode=region_mode)
        self.tokenizer = tokenizer
        self.config = dict(config or {})
        self.name = name

    @property
    def patch_size(self) -> int:
        """Input sides must be multiples of this (the least common multiple of both towers' patch sizes)."""
        return int(np.lcm(self.backbone.patch_size, self.region.patch_size))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    @torch.no_grad()
    def group(self, images: torch.Tensor) -> list[np.ndarray]:
        """Group each image of a (B, 3, H, W) batch in [0, 1]; returns pixel-level (H, W) group maps."""
        feats = self.backbone(images)
        size = tuple(images.shape[-2:])
        return [upsample_groups(group_feature_map(f.cpu(), self.grouping), size) for f in feats]

    def region_masks(self, groups: list[np.ndarray], images: torch.Tensor) -> torch.Tensor:
        """Stack per-image group maps into (B, K, gh, gw) CLIP-grid masks, K = most groups in the batch."""
        grid = (images.shape[-2] // self.region.patch_size, images.shape[-1] // self.region.patch_size)
        return stack_region_masks([groups_to_patch_masks(g, grid) for g in groups]).to(images.device)

    def forward(self, images: torch.Tensor, region_masks: torch.Tensor) -> RegionOutput:
        """Region embeddings of (B, 3, H, W) images in [0, 1] for (B, K, gh, gw) region masks."""
        return self.region(images, region_masks)
