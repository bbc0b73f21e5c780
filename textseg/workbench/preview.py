"""A picture of the workbench: generated scenes with their VOC masks overlaid and their captions."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from textseg.io import save_png
from textseg.visualize import overlay
from textseg.workbench.build import text_rng
from textseg.workbench.scene_captions import scene_caption
from textseg.workbench.glyphs import GlyphCache
from textseg.workbench.scenes import make_scene


def preview_grid(
    out_path: str | Path, *, n: int = 12, cols: int = 4, size: int = 128, seed: int = 0, alpha: float = 0.55
) -> Path:
    """Save a grid of ``n`` scenes: each image beside its palette-coloured label overlay, caption underneath.

    Returns:
        The path written (PNG).
    """
    cache = GlyphCache()
    font = ImageFont.load_default()
    text_h = 30
    cell_w, cell_h = 2 * size + 6, size + text_h + 6
    rows = (n + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        scene = make_scene(seed, i, size, stream="preview", cache=cache)
        x, y = (i % cols) * cell_w + 3, (i // cols) * cell_h + 3
        grid.paste(Image.fromarray(scene.image), (x, y))
        grid.paste(overlay(scene.image, scene.label, alpha=alpha), (x + size, y))
        caption = scene_caption(scene, text_rng(seed, "preview", i))
        lines = textwrap.wrap(caption, width=2 * size // 6)[:2]
        draw.multiline_text((x, y + size + 2), "\n".join(lines), fill="black", font=font, spacing=2)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # An adaptive 256-colour palette keeps the PNG small enough for a README.
    return save_png(grid.quantize(256, method=Image.Quantize.MEDIANCUT), out, optimize=True)
