"""Seeded scene generator: textured backgrounds with clutter, OpenMoji objects, exact occlusion-aware masks.

Scene ``index`` of stream ``stream`` depends only on ``(seed, stream, index)``, so scenes can be made in any
order, in any process, and come out identical byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from textseg.workbench.glyphs import VOC_GLYPHS, GlyphCache, distractor_codepoints, glyph_name

STREAMS: dict[str, int] = {
    "train": 0, "val": 1, "ref": 2, "object": 3, "preview": 4,
    "segmenter": 5,  # scenes with masks for the promptable-segmenter stand-in (its own training set)
    "ref_train": 6,  # referring scenes whose image-sentence pairs train the point generator (no masks written)
}
BACKGROUNDS: tuple[str, ...] = ("gradient", "striped", "checkered", "noisy")
# Glyph font size as a fraction of the scene side; the ink is roughly as large as the font size.
SIZE_FRACTIONS: tuple[float, ...] = (0.26, 0.32, 0.38, 0.45, 0.53, 0.62)
MASK_THRESHOLD = 128


@dataclass
class SceneObject:
    """One glyph layer placed on the canvas (objects are stored bottom to top)."""

    codepoint: int
    class_id: int  # VOC class id 1..20, or -1 for an unlabelled distractor
    name: str  # lower-case Unicode name
    font_size: int
    flipped: bool
    angle: int
    x0: int  # canvas position of the transformed glyph's top-left corner (may be negative)
    y0: int
    alpha: np.ndarray  # (H, W) uint8: this layer's alpha on the full canvas
    visible: np.ndarray = field(default=None)  # (H, W) bool: alpha >= 128 minus upper layers' alpha >= 128

    @property
    def full_area(self) -> int:
        return int((self.alpha >= MASK_THRESHOLD).sum())

    @property
    def visible_area(self) -> int:
        return int(self.visible.sum())

    def visible_fraction(self) -> float:
        full = self.full_area
        return self.visible_area / full if full else 0.0

    def centroid(self) -> tuple[float, float]:
        """(x, y) centroid of the visible mask."""
        ys, xs = np.nonzero(self.visible)
        return (float(xs.mean()), float(ys.mean())) if xs.size else (float("nan"), float("nan"))


@dataclass
class Scene:
    """A composed RGB image, its objects and its VOC label map (0 background, 1..20 classes)."""

    stream: str
    index: int
    image: np.ndarray  # (H, W, 3) uint8
    objects: list[SceneObject]
    background: str
    label: np.ndarray  # (H, W) uint8

    @property
    def size(self) -> int:
        return self.image.shape[0]

    def class_ids(self) -> list[int]:
        """Sorted VOC class ids present in the label map."""
        return [int(c) for c in np.unique(self.label) if c]

    def instance_map(self) -> np.ndarray:
        """(H, W) uint8 instance map as VOC's ``SegmentationObject``: 0 background, 1..N the labelled objects with
        visible pixels (bottom to top), 255 where the label map has 255."""
        out = np.zeros_like(self.label)
        n = 0
        for obj in self.objects:
            if obj.class_id > 0 and obj.visible.any():
                n += 1
                out[obj.visible] = n
        out[self.label == 255] = 255
        return out


def scene_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator for one scene; depends only on (seed, stream, index)."""
    return np.random.default_rng([int(seed), STREAMS[stream], int(index)])


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def make_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A textured float32 (size, size, 3) background with clutter, and its kind ("striped", ...)."""
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, np.pi)
    proj = xx * np.cos(theta) + yy * np.sin(theta)
    c0, c1 = _colour(rng), _colour(rng)
    if kind == "gradient":
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    elif kind == "striped":
        t = (np.floor(proj * rng.uniform(3, 10)) % 2).astype(np.float32)
    elif kind == "checkered":
        cells = rng.uniform(3, 9)
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
    else:  # smooth blobs from upsampled low-resolution noise
        low = rng.random((int(rng.integers(3, 8)),) * 2).astype(np.float32)
        t = np.asarray(Image.fromarray(low, mode="F").resize((size, size), Image.BILINEAR))
    img = c0 + (c1 - c0) * t[..., None]
    img += rng.normal(0, rng.uniform(2, 10), (size, size, 1)).astype(np.float32)
    # Clutter: shapes and lines that belong to the background.
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, 7))):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 16 + 1, size // 3 + 2, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=fill)
        elif shape == 1:
            draw.rectangle([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=fill)
        else:
            x1, y1 = rng.integers(0, size, 2)
            draw.line([int(x0), int(y0), int(x1), int(y1)], fill=fill, width=int(rng.integers(1, max(2, size // 24))))
    return np.asarray(pil).astype(np.float32), kind


def transform_glyph(glyph: np.ndarray, flipped: bool, angle: int) -> np.ndarray:
    """Mirror (optionally) and rotate by ``angle`` degrees (bilinear, canvas expanded) an RGBA glyph."""
    if flipped:
        glyph = glyph[:, ::-1]
    if angle:
        glyph = np.asarray(Image.fromarray(np.ascontiguousarray(glyph)).rotate(angle, Image.BILINEAR, expand=True))
    return glyph


def _paste(canvas: np.ndarray, glyph: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Alpha-composite ``glyph`` onto ``canvas`` in place at (x0, y0), clipped; returns its full-canvas alpha."""
    size = canvas.shape[0]
    h, w = glyph.shape[:2]
    alpha = np.zeros((size, size), np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)
    if cx0 >= cx1 or cy0 >= cy1:
        return alpha
    part = glyph[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    a = part[..., 3:4].astype(np.float32) / 255.0
    region = canvas[cy0:cy1, cx0:cx1]
    region *= 1.0 - a
    region += part[..., :3].astype(np.float32) * a
    alpha[cy0:cy1, cx0:cx1] = part[..., 3]
    return alpha


def finish_scene(stream: str, index: int, canvas: np.ndarray, objects: list[SceneObject], background: str) -> Scene:
    """Compute visible masks and the label map from the layers, and quantise the image."""
    size = canvas.shape[0]
    label = np.zeros((size, size), np.uint8)
    covered = np.zeros((size, size), bool)
    for obj in reversed(objects):  # top to bottom
        opaque = obj.alpha >= MASK_THRESHOLD
        obj.visible = opaque & ~covered
        covered |= opaque
    for obj in objects:  # bottom to top: upper objects overwrite, distractors write background
        label[obj.alpha >= MASK_THRESHOLD] = max(obj.class_id, 0)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(stream, index, image, objects, background, label)


def make_scene(
    seed: int,
    index: int,
    size: int = 96,
    *,
    stream: str = "train",
    cache: GlyphCache | None = None,
    min_objects: int = 1,
    max_objects: int = 4,
    voc_prob: float = 0.7,
    same_class_prob: float = 0.25,
) -> Scene:
    """Generate one scene: a background, 1..4 objects (at least one VOC object), masks and labels.

    Args:
        seed: Benchmark seed.
        index: Scene index; with ``seed`` and ``stream`` it fixes the scene completely.
        size: Side of the square image in pixels.
        stream: Which set the scene belongs to (keys of :data:`STREAMS`); streams never share scenes.
        cache: Glyph cache to reuse across scenes (one per process).
        min_objects: Fewest objects.
        max_objects: Most objects.
        voc_prob: Probability that an object is a VOC class rather than a distractor.
        same_class_prob: Probability that a VOC object repeats the class of an earlier one.
    """
    cache = cache or GlyphCache()
    rng = scene_rng(seed, stream, index)
    distractors = distractor_codepoints()
    canvas, background = make_background(rng, size)
    n = int(rng.integers(min_objects, max_objects + 1))
    is_voc = rng.random(n) < voc_prob
    if not is_voc.any():
        is_voc[int(rng.integers(n))] = True
    objects: list[SceneObject] = []
    for k in range(n):
        previous = [o.class_id for o in objects if o.class_id > 0]
        if is_voc[k]:
            if previous and rng.random() < same_class_prob:
                class_id = previous[int(rng.integers(len(previous)))]
            else:
                class_id = int(rng.integers(1, 21))
            cp = VOC_GLYPHS[class_id]
        else:
            class_id, cp = -1, distractors[int(rng.integers(len(distractors)))]
        font_size = max(8, round(size * SIZE_FRACTIONS[int(rng.integers(len(SIZE_FRACTIONS)))]))
        flipped = bool(rng.random() < 0.5)
        angle = int(rng.integers(-15, 16)) if rng.random() < 0.6 else 0
        glyph = transform_glyph(cache.get(cp, font_size), flipped, angle)
        h, w = glyph.shape[:2]
        # Up to 20% of a glyph may fall outside the canvas.
        x0 = int(rng.integers(-int(0.2 * w), max(size - int(0.8 * w), -int(0.2 * w)) + 1))
        y0 = int(rng.integers(-int(0.2 * h), max(size - int(0.8 * h), -int(0.2 * h)) + 1))
        alpha = _paste(canvas, glyph, x0, y0)
        objects.append(SceneObject(cp, class_id, glyph_name(cp), font_size, flipped, angle, x0, y0, alpha))
    return finish_scene(stream, index, canvas, objects, background)


def make_object_scene(
    seed: int, index: int, size: int = 96, *, cache: GlyphCache | None = None, voc_prob: float = 0.5
) -> Scene:
    """One glyph (VOC class or distractor) large and near the centre of a textured background."""
    cache = cache or GlyphCache()
    rng = scene_rng(seed, "object", index)
    distractors = distractor_codepoints()
    canvas, background = make_background(rng, size)
    if rng.random() < voc_prob:
        class_id = int(rng.integers(1, 21))
        cp = VOC_GLYPHS[class_id]
    else:
        class_id, cp = -1, distractors[int(rng.integers(len(distractors)))]
    font_size = max(8, round(size * rng.uniform(0.5, 0.75)))
    flipped = bool(rng.random() < 0.5)
    angle = int(rng.integers(-10, 11))
    glyph = transform_glyph(cache.get(cp, font_size), flipped, angle)
    h, w = glyph.shape[:2]
    x0 = (size - w) // 2 + int(rng.integers(-size // 10, size // 10 + 1))
    y0 = (size - h) // 2 + int(rng.integers(-size // 10, size // 10 + 1))
    alpha = _paste(canvas, glyph, x0, y0)
    obj = SceneObject(cp, class_id, glyph_name(cp), font_size, flipped, angle, x0, y0, alpha)
    return finish_scene("object", index, canvas, [obj], background)
