"""Files shipped with the package: a Pascal VOC 2012 val image (2007_000033, 500 × 366) for examples and
benchmarks, and the demo page (``demo.html``, :mod:`textseg.demo`). The image is a PASCAL VOC original, under the
VOC dataset's own terms."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def voc_sample_image() -> Path:
    """Path of the bundled VOC 2012 sample image (an aeroplane on grass, 500 × 366 RGB JPEG)."""
    return Path(str(importlib.resources.files("textseg") / "assets" / "voc2012_2007_000033.jpg"))


def demo_page() -> str:
    """The HTML of the demo page that ``textseg demo`` serves."""
    return (importlib.resources.files("textseg") / "assets" / "demo.html").read_text(encoding="utf-8")
