"""Label maps as palette PNGs and overlays people can look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def voc_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map, (n, 3) uint8: label bits spread over the high bits of R, G and B."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def save_label_png(labels: np.ndarray, path: str | Path) -> None:
    """Write an (H, W) label map (values 0..255) as a palette ("P" mode) PNG with the VOC colours."""
    if labels.min() < 0 or labels.max() > 255:
        raise ValueError("palette PNGs hold labels 0..255")
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(voc_palette().ravel().tolist())
    im.save(path)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55, names: list[str] | None = None,
            ignore_index: int = 255) -> Image.Image:
    """Blend palette colours of a label map over an (H, W, 3) image; background (0) and ignore stay unpainted.

    If ``names`` is given, a legend of the classes present is drawn in the top-left corner.
    """
    pal = voc_palette().astype(np.float32)
    out = image.astype(np.float32).copy()
    paint = (labels > 0) & (labels != ignore_index)
    out[paint] = (1 - alpha) * out[paint] + alpha * pal[labels[paint]]
    im = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    if names:
        draw = ImageDraw.Draw(im)
        y = 2
        for lab in np.unique(labels[paint]):
            if lab < len(names):
                draw.rectangle([2, y, 12, y + 10], fill=tuple(int(v) for v in pal[lab]), outline=(255, 255, 255))
                draw.text((16, y - 1), names[lab], fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
                y += 13
    return im
