"""Feature extractors that grouping runs on: a timm ViT (DINO) or plain Lab colour (needs no weights)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per channel of (B, 3, H, W) images; the statistics move with the module's device."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class TimmViTFeatures(nn.Module):
    """Patch features of a timm ViT at any input size (``dynamic_img_size=True``).

    Args:
        model: a timm VisionTransformer created with ``dynamic_img_size=True``.
        feature: ``"tokens"`` (last block output) or ``"keys"`` (last block's attention keys, often cleaner for
            grouping).
        mean, std: input normalisation of the model.
        upsample: enlarge the images by this integer factor (bilinear) before the ViT: one feature per
            ``patch / upsample`` input pixels (:attr:`patch_size`), a denser grid for small images.
        pos_embed: ``timm`` (timm's resampling of the position embedding) or ``dino`` (DINO's,
            :func:`~textseg.dense.attention.dino_pos_embed`; a ViT with one class token and no other prefix).
    """

    def __init__(self, model: nn.Module, feature: str = "tokens", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 upsample: int = 1, pos_embed: str = "timm"):
        super().__init__()
        if feature not in ("tokens", "keys"):
            raise ValueError(f"feature must be 'tokens' or 'keys', got {feature!r}")
        if pos_embed not in ("timm", "dino"):
            raise ValueError(f"pos_embed must be 'timm' or 'dino', got {pos_embed!r}")
        if pos_embed == "dino" and (getattr(model, "num_prefix_tokens", 1) != 1 or getattr(model, "no_embed_class",
                                                                                             False)):
            raise ValueError("pos_embed 'dino' needs a ViT with one class token that has a position of its own")
        vit_patch = int(model.patch_embed.patch_size[0])
        if upsample < 1 or vit_patch % upsample:
            raise ValueError(f"upsample must be a whole number >= 1 that divides the ViT's patch size {vit_patch}, "
                             f"got {upsample}")
        self.model = model
        self.feature = feature
        self.upsample = int(upsample)
        self.patch_size = vit_patch // self.upsample  # in input pixels
        self.normalize = Normalize(mean, std)
        self.pos_embed = pos_embed

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The ViT's (B, prefix + N, C) output tokens (after its final norm) of normalised (B, 3, H, W) images."""
        if self.pos_embed == "timm":
            return self.model.forward_features(x)
        from textseg.dense.attention import dino_pos_embed

        m = self.model
        t = m.patch_embed.proj(x)
        gh, gw = int(t.shape[-2]), int(t.shape[-1])
        t = m.patch_embed.norm(t.flatten(2).transpose(1, 2))
        t = torch.cat([m.cls_token.expand(t.shape[0], -1, -1), t], 1)
        t = m.pos_drop(t + dino_pos_embed(m.pos_embed[0], gh, gw).to(t.dtype)[None])
        t = m.norm_pre(t)
        for blk in m.blocks:
            t = blk(t)
        return m.norm(t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map (B, 3, H, W) images in [0, 1] to (B, H/p, W/p, C) patch features (p: :attr:`patch_size`)."""
        b, _, h, w = images.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        if self.upsample > 1:
            images = F.interpolate(images, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        x = self.normalize(images)
        prefix = getattr(self.model, "num_prefix_tokens", 1)
        if self.feature == "tokens":
            feats = self.tokens(x)[:, prefix:]
        else:
            store: dict[str, torch.Tensor] = {}
            attn = self.model.blocks[-1].attn
            handle = attn.qkv.register_forward_hook(lambda m, i, o: store.__setitem__("qkv", o))
            try:
                self.tokens(x)
            finally:
                handle.remove()
            dim = store["qkv"].shape[-1] // 3
            feats = store["qkv"][:, prefix:, dim:2 * dim]
        return feats.reshape(b, gh, gw, -1)


class ColorXYFeatures(nn.Module):
    """Mean CIE Lab colour of each patch: a grouping feature that needs no pretrained weights.

    Position is added by the grouping's ``xy_weight``; features are not L2-normalised (set ``normalize=False``).
    """

    def __init__(self, patch_size: int = 8):
        super().__init__()
        self.patch_size = patch_size

    @staticmethod
    def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) sRGB in [0, 1] → Lab scaled to roughly [0, 1] per channel."""
        lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
        m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
                         dtype=rgb.dtype, device=rgb.device)
        xyz = torch.einsum("ij,bjhw->bihw", m, lin)
        xyz = xyz / torch.tensor([0.9505, 1.0, 1.089], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-8) ** (1 / 3), 7.787 * xyz + 16 / 116)
        lab_l = 116 * f[:, 1] - 16
        lab_a = 500 * (f[:, 0] - f[:, 1])
        lab_b = 200 * (f[:, 1] - f[:, 2])
        return torch.stack([lab_l / 100, lab_a / 200, lab_b / 200], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map (B, 3, H, W) images in [0, 1] to (B, H/p, W/p, 3) mean-Lab features."""
        lab = self.rgb_to_lab(images)
        return F.avg_pool2d(lab, self.patch_size).permute(0, 2, 3, 1)
