"""Pictures people look at: the VOC palette, label overlays with a legend, and evaluation panels."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw

from textseg.data.names import IGNORE_INDEX

WHITE = (255, 255, 255)


def voc_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map, (n, 3) uint8: label bits spread over the high bits of R, G and B (distinct
    colours for up to 2**24 labels)."""
    return _voc_palette(n).copy()


@functools.lru_cache(maxsize=4)
def _voc_palette(n: int) -> np.ndarray:
    c = np.arange(n, dtype=np.int64)
    pal = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):
        for ch in range(3):
            pal[:, ch] |= ((c >> (3 * j + ch)) & 1) << (7 - j)
    return pal.astype(np.uint8)


def blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5, where: np.ndarray | None = None) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colours`` as uint8 (truncated), only at ``where`` if given.

    Args:
        image: (H, W, 3) uint8.
        colours: (H, W, 3) or anything broadcasting to it (one colour: shape (3,)).
        alpha: Weight of the colours.
        where: (H, W) bool; pixels outside it keep the image's values.
    """
    colours = np.broadcast_to(np.asarray(colours), image.shape)
    out = np.empty_like(image) if where is None else image.copy()
    step = max(1, (1 << 20) // max(1, image.shape[1]))  # a band of rows at a time: no float copy of a huge image
    for r in range(0, image.shape[0], step):
        rows = slice(r, r + step)
        mixed = (image[rows].astype(np.float32) * (1 - alpha) + colours[rows].astype(np.float32) * alpha
                 ).astype(np.uint8)
        if where is None:
            out[rows] = mixed
        else:
            out[rows][where[rows]] = mixed[where[rows]]
    return out


def overlay(image: np.ndarray, labels: np.ndarray, *, names: list[str] | None = None, alpha: float = 0.55,
            ignore_index: int = IGNORE_INDEX) -> Image.Image:
    """Blend palette colours of a label map over an (H, W, 3) uint8 image.

    Background (0) and ``ignore_index`` stay unpainted (``ignore_index`` is a class like any other when more than
    256 names are given); so do labels outside 0..255 (or outside ``names``, when more are given). If ``names``
    is given, a legend of the painted classes (those with a name) is drawn in the top-left corner. Works a band
    of rows at a time, so memory stays a small multiple of the image's own.
    """
    pal = voc_palette(max(256, len(names or ())))
    if len(pal) > 256:
        ignore_index = -1
    labels = np.asarray(labels)
    image = np.asarray(image)
    im = Image.new("RGB", (image.shape[1], image.shape[0]))  # filled band by band: no full-size array besides it
    present = np.zeros(len(pal), dtype=bool)
    step = max(1, (1 << 20) // max(1, labels.shape[1]))
    for r in range(0, labels.shape[0], step):
        lab = labels[r: r + step].astype(np.int64)
        paint = (lab > 0) & (lab < len(pal)) & (lab != ignore_index)
        present[np.unique(lab[paint])] = True
        im.paste(Image.fromarray(blend(image[r: r + step], pal[np.where(paint, lab, 0)], alpha, where=paint)), (0, r))
    if names:
        draw = ImageDraw.Draw(im)
        y = 2
        for lab in np.flatnonzero(present):
            if lab < len(names) and y < im.height - 10:
                draw.rectangle([2, y, 12, y + 10], fill=tuple(int(v) for v in pal[lab]), outline=WHITE)
                draw.text((16, y - 1), names[lab], fill=WHITE, stroke_width=1, stroke_fill=(0, 0, 0))
                y += 13
    return im


def _label_colours(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """VOC colours of a label map; ``ignore_index`` white, labels outside 0..255 black (as label 0)."""
    pal = voc_palette()
    if 0 <= ignore_index < len(pal):
        pal[ignore_index] = WHITE
    labels = np.asarray(labels)
    colours = pal[np.clip(labels, 0, 255).astype(np.uint8)]
    colours[(labels < 0) | (labels > 255)] = 0
    return colours


def semseg_panel(image: np.ndarray, pred: np.ndarray, gt: np.ndarray, *,
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Image | prediction | ground truth side by side, label colours blended half over the image.

    Label 0 and labels outside 0..255 blend with black, ``ignore_index`` with white.

    Returns:
        (H, 3W, 3) uint8.
    """
    return np.concatenate(
        [image, blend(image, _label_colours(pred, ignore_index)), blend(image, _label_colours(gt, ignore_index))],
        axis=1,
    )


def ris_panel(image: np.ndarray, pred: np.ndarray | None, gt: np.ndarray) -> np.ndarray:
    """Image | predicted mask tinted red | ground-truth mask tinted green (half blends); ``pred`` may be None.

    Returns:
        (H, 3W, 3) uint8.
    """
    red = image if pred is None else blend(image, (255, 0, 0), where=np.asarray(pred).astype(bool))
    green = blend(image, (0, 255, 0), where=np.asarray(gt).astype(bool))
    return np.concatenate([image, red, green], axis=1)


def wrap_text(text: str, width: int, measure) -> list[str]:
    """``text`` broken into lines no wider than ``width`` by ``measure`` (a word longer than that gets a line of its
    own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and measure(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


#: The narrowest overlay: the caption under a small image gets at least this many pixels a line.
CAPTION_MIN_WIDTH = 240


def referring_overlay(image: np.ndarray, mask: np.ndarray | None, sentence: str, *, score: float | None = None,
                      colour: tuple[int, int, int] = (255, 0, 0), alpha: float = 0.5,
                      points: np.ndarray | None = None, labels: np.ndarray | None = None) -> Image.Image:
    """The chosen mask tinted over an (H, W, 3) uint8 image, with the sentence (and score) wrapped in a band under
    it (the canvas at least :data:`CAPTION_MIN_WIDTH` wide, the image top left); no mask (no target) is said in the
    caption. Point prompts ((K, 2) xy with (K,) labels) are drawn as dots: green positive, red negative."""
    where = None if mask is None else np.asarray(mask).astype(bool)
    tinted = image if where is None or not where.any() else blend(image, colour, alpha, where=where)
    im = Image.fromarray(np.ascontiguousarray(tinted))
    if points is not None and len(points):
        draw = ImageDraw.Draw(im)
        r = max(2, round(min(im.size) / 60))
        for (x, y), lab in zip(np.asarray(points, dtype=float), np.asarray(labels if labels is not None else
                                                                             np.ones(len(points)))):
            fill = (0, 230, 0) if lab == 1 else (230, 0, 0)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=WHITE)
    text = sentence if where is not None and where.any() else f"{sentence} (no target)"
    if score is not None and np.isfinite(score):
        text += f"  [{score:.2f}]"
    width = max(im.width, CAPTION_MIN_WIDTH)
    measure = ImageDraw.Draw(im).textlength
    lines = wrap_text(text, width - 8, measure)
    line_height = 14
    canvas = Image.new("RGB", (width, im.height + 6 + line_height * len(lines)), (0, 0, 0))
    canvas.paste(im, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, im.height + 3 + i * line_height), line, fill=WHITE)
    return canvas
