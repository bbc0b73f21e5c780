"""DINO's multi-crop augmentation of a batch on its device, and iBOT's random patch masks."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from textseg.train.selfsup.config import CropConfig, IBotConfig

_GRAY = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _bernoulli(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


class MultiCrop:
    """DINO's multi-crop views of a batch, made with batched tensor ops on the images' device.

    Every random parameter (crop box, flip, jitter factors, blur sigma, ...) is drawn per image from a CPU
    ``torch.Generator`` (a few numbers per image, moved to the device in one copy per kind), so a seed gives the same
    views on any device and nothing per image goes back to the host.

    Args:
        crops: the augmentation settings.
    """

    def __init__(self, crops: CropConfig) -> None:
        self.cfg = crops

    @property
    def num_views(self) -> int:
        return 2 + self.cfg.local_number

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """(B, 3, H, W) float images in [0, 1] → ``[global 1, global 2, local 1, ..., local N]``, each
        (B, 3, s, s) in [0, 1]."""
        c = self.cfg
        views = []
        for i in range(self.num_views):
            is_global = i < 2
            size, scale = (c.global_size, c.global_scale) if is_global else (c.local_size, c.local_scale)
            x = self.resized_crop(images, size, scale, generator)
            x = self.color_jitter(x, generator)
            x = self.grayscale(x, generator)
            x = self.blur(x, c.blur_prob[min(i, 2)], generator)
            if i == 1:
                x = self.solarize(x, c.solarize_prob, generator)
            views.append(x)
        return views

    def resized_crop(self, images: torch.Tensor, size: int, scale: Sequence[float], g: torch.Generator
                     ) -> torch.Tensor:
        """Per-image random resized crop (area share in ``scale``, aspect ratio in [3/4, 4/3]) and horizontal
        flip, resampled bilinearly to ``size`` x ``size`` in one ``grid_sample``."""
        b = images.shape[0]
        area = _uniform(g, b, scale[0], scale[1])
        log_ratio = _uniform(g, b, math.log(3 / 4), math.log(4 / 3))
        w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # crop side as a share of the image side
        h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
        flip = torch.where(_bernoulli(g, b, self.cfg.flip_prob), -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def color_jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation and hue jitter with probability ``jitter_prob`` per image (in this
        fixed order; torchvision draws an order per call)."""
        c, b = self.cfg, x.shape[0]
        on = _bernoulli(g, b, c.jitter_prob)
        factors = torch.stack([_uniform(g, b, 1 - c.brightness, 1 + c.brightness),
                               _uniform(g, b, 1 - c.contrast, 1 + c.contrast),
                               _uniform(g, b, 1 - c.saturation, 1 + c.saturation),
                               _uniform(g, b, -c.hue, c.hue)], 1)
        factors = torch.where(on[:, None], factors, torch.tensor([1.0, 1.0, 1.0, 0.0]))
        angle = factors[:, 3] * 2 * math.pi
        cos, sin = angle.cos(), angle.sin()
        rot = torch.zeros(b, 3, 3)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, cos, -sin, sin, cos
        hue = torch.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ  # (B, 3, 3): a hue rotation in RGB
        factors, hue = factors.to(x.device, x.dtype), hue.to(x.device, x.dtype)
        f = factors[:, :3].view(b, 3, 1, 1, 1).unbind(1)
        x = (x * f[0]).clamp(0, 1)
        mean = _gray(x).mean((2, 3), keepdim=True)
        x = ((x - mean) * f[1] + mean).clamp(0, 1)
        gray = _gray(x)
        x = ((x - gray) * f[2] + gray).clamp(0, 1)
        return torch.einsum("bij,bjhw->bihw", hue, x).clamp(0, 1)

    def grayscale(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Grayscale (3 equal channels) with probability ``gray_prob`` per image."""
        on = _bernoulli(g, x.shape[0], self.cfg.gray_prob).to(x.device).view(-1, 1, 1, 1)
        return torch.where(on, _gray(x).expand_as(x), x)

    def blur(self, x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        """Separable Gaussian blur (reflected borders) with a sigma per image drawn from ``blur_sigma``, with
        probability ``p`` (an image not blurred gets a one-tap kernel).

        Each image's 1-D kernel becomes a (S, S) banded matrix with the reflection folded in, so the blur of the whole
        batch is two batched matmuls (grouped convolutions with one group per image are slow on the CPU).
        """
        b, ch, size, _ = x.shape
        lo, hi = self.cfg.blur_sigma
        sigma = torch.where(_bernoulli(g, b, p), _uniform(g, b, lo, hi), torch.tensor(1e-3))
        radius = min(max(1, math.ceil(3 * hi)), size - 1)
        taps = torch.arange(-radius, radius + 1)
        weights = torch.exp(-taps[None].float() ** 2 / (2 * sigma[:, None] ** 2))
        weights = weights / weights.sum(1, keepdim=True)  # (B, 2r+1)
        src = torch.arange(size)[:, None] + taps[None]  # (S, 2r+1) source pixel of each tap, reflected at the borders
        src = torch.where(src < 0, -src, torch.where(src >= size, 2 * (size - 1) - src, src))
        band = torch.zeros(b, size, size).scatter_add_(2, src.expand(b, -1, -1), weights[:, None].expand(-1, size, -1))
        band = band.to(x.device, x.dtype)
        x = torch.einsum("bij,bcjw->bciw", band, x)  # rows
        return torch.einsum("bcij,bwj->bciw", x, band)  # columns

    def solarize(self, x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        """Invert the values >= 0.5 with probability ``p`` per image."""
        on = _bernoulli(g, x.shape[0], p).to(x.device).view(-1, 1, 1, 1)
        return torch.where(on & (x >= 0.5), 1 - x, x)


def random_patch_masks(b: int, grid: tuple[int, int], ibot: IBotConfig, g: torch.Generator) -> torch.Tensor:
    """(b, h, w) bool iBOT masks: with probability ``mask_prob`` an image gets a share of its patches, drawn from
    ``mask_ratio``, masked at random; the others none."""
    n = grid[0] * grid[1]
    ratio = torch.where(_bernoulli(g, b, ibot.mask_prob), _uniform(g, b, *ibot.mask_ratio), torch.tensor(0.0))
    return (torch.rand(b, n, generator=g) < ratio[:, None]).view(b, *grid)



__all__ = ["MultiCrop", "random_patch_masks"]
