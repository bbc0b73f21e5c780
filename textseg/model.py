"""TextSegModel: a Grouper (features → groups) and a CLIP that embeds every group (groups → region embeddings)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from textseg.config import ModelConfig
from textseg.grouping import Grouper, Groups
from textseg.region import RegionOutput, RegionTokenViT


class TextSegModel(nn.Module):
    """The model built by :func:`textseg.create_model`.

    Attributes:
        grouper: the frozen grouping backbone and its k-means settings (:class:`~textseg.grouping.Grouper`).
        clip: the open_clip model (text tower and logit scale are used from here).
        region: :class:`~textseg.region.RegionTokenViT` over ``clip.visual``.
        tokenizer: the open_clip tokenizer of ``clip``.
        config: the model config this model was built from.
    """

    def __init__(self, grouper: Grouper, clip: nn.Module, tokenizer: Callable, config: ModelConfig):
        super().__init__()
        self.region = RegionTokenViT(clip.visual, masked_blocks=config.region.masked_blocks, mode=config.region.mode,
                                     init=config.region.init)
        if grouper.region_patch_size != self.region.patch_size:
            raise ValueError(f"the grouper makes masks for patch size {grouper.region_patch_size}, "
                             f"the CLIP's is {self.region.patch_size}")
        self.grouper = grouper
        self.clip = clip
        self.tokenizer = tokenizer
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def patch_size(self) -> int:
        """Input sides must be multiples of this (the least common multiple of both towers' patch sizes)."""
        return self.grouper.patch_size

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def group_features(self, images: torch.Tensor) -> torch.Tensor:
        """The grouping backbone's (B, h, w, C) features of a (B, 3, H, W) batch in [0, 1]: pass them as
        ``features`` to several :meth:`group` calls of one batch (other ``num_groups``), so the backbone runs once."""
        return self.grouper.backbone(images)

    def group(self, images: torch.Tensor, *, pixels: bool = True, pixel_size: tuple[int, int] | None = None,
              num_groups: int | None = None, features: torch.Tensor | None = None) -> Groups:
        """Group a (B, 3, H, W) batch in [0, 1]: pixel group maps and CLIP-grid region masks (see :class:`Grouper`;
        ``num_groups`` overrides the configured k for this call, ``features`` are the grouping backbone's output
        when the caller has it)."""
        return self.grouper(images, pixels=pixels, pixel_size=pixel_size, num_groups=num_groups, features=features)

    def forward(self, images: torch.Tensor, region_masks: torch.Tensor) -> RegionOutput:
        """Region embeddings of (B, 3, H, W) images in [0, 1] for (B, K, gh, gw) region masks."""
        return self.region(images, region_masks)
