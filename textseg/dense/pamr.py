"""PAMR (pixel-adaptive mask refinement, Araslanov & Roth 2020) as NACLIP applies it to its logits, vectorised:
neighbours are shifted views of one padded tensor, never an (8 · dilations)-channel convolution output per class."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _shifted(x: torch.Tensor, dilation: int, offsets: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Views of (B, C, H, W) ``x`` moved by ``offset · dilation`` pixels (edges repeated): the value of the
    neighbour at (y + dy·d, x + dx·d) at every pixel."""
    h, w = x.shape[-2:]
    padded = F.pad(x, [dilation] * 4, mode="replicate")
    return [padded[..., dilation + dy * dilation: dilation + dy * dilation + h,
                   dilation + dx * dilation: dilation + dx * dilation + w] for dy, dx in offsets]


def pamr_affinities(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """(B, 8 · len(dilations), H, W) weights of each pixel's neighbours (8 per dilation, at that distance): a
    softmax over the neighbours of −|I − I_n| / (1e-8 + 0.1 σ), averaged over the image's channels, σ the standard
    deviation (unbiased) of the 9 · len(dilations) values around each pixel (centre once per dilation)."""
    near = [n for d in dilations for n in _shifted(image, d, NEIGHBOURS)]
    count = len(near) + len(dilations)
    mean = (sum(near) + len(dilations) * image) / count
    # two passes over the window (its mean, then the squared deviations), without stacking its views
    var = (sum((n - mean).square() for n in near) + len(dilations) * (image - mean).square()) / (count - 1)
    scale = 1.0 / (1e-8 + 0.1 * var.sqrt())  # (B, C, H, W)
    return torch.stack([((image - n).abs() * scale).mean(1).neg() for n in near], 1).softmax(1)


def pamr_radius(steps: int, dilations: Sequence[int]) -> int:
    """How far (in pixels) :func:`pamr` reads: a pixel's result depends on pixels at most this far away."""
    return steps * max(dilations, default=0) if steps > 0 else 0


def pamr(image: torch.Tensor, logits: torch.Tensor, steps: int = 10, dilations: Sequence[int] = (8, 16),
         weights: torch.Tensor | None = None) -> torch.Tensor:
    """Refine (B, Q, H, W) ``logits`` with the (B, 3, H, W) ``image`` they belong to: ``steps`` times, every
    pixel's value becomes the affinity-weighted mean of its neighbours' (:func:`pamr_affinities`).

    Args:
        image: the normalised input image at the logits' size.
        logits: per-class scores.
        steps: refinement iterations (0 returns ``logits``).
        dilations: neighbour distances in pixels.
        weights: ``pamr_affinities(image, dilations)``, when the caller refines several maps of one image.
    """
    if tuple(image.shape[-2:]) != tuple(logits.shape[-2:]):
        raise ValueError(f"image {tuple(image.shape[-2:])} and logits {tuple(logits.shape[-2:])} differ in size")
    if steps <= 0:
        return logits
    if weights is None:
        weights = pamr_affinities(image.to(logits.dtype), dilations)  # (B, P, H, W)
    per_dilation = len(NEIGHBOURS)
    out = logits
    for _ in range(steps):
        acc = torch.zeros_like(out)
        for i, d in enumerate(dilations):
            for j, near in enumerate(_shifted(out, d, NEIGHBOURS)):
                acc.addcmul_(near, weights[:, i * per_dilation + j: i * per_dilation + j + 1])
        out = acc
    return out


__all__ = ["NEIGHBOURS", "pamr", "pamr_affinities", "pamr_radius"]
