"""Rasterise COCO-format segmentations (polygons, uncompressed RLE, compressed RLE) with pycocotools.

The fields come from a file, so they are checked before pycocotools sees them: its C code reads past the end of
an RLE whose counts do not cover the image (returning garbage) and walks a polygon edge pixel by pixel (a
coordinate of 1e9 or NaN never finishes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from textseg.errors import DatasetError

# How far outside the image a polygon vertex may lie (in image sizes): real annotations stay within a pixel.
POLYGON_MARGIN = 2


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def compressed_rle_counts(counts: str | bytes) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``, checked).

    Raises:
        DatasetError: a character outside the encoding, a run cut short at the end, or a negative run.
    """
    text = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    p, n = 0, len(text)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise DatasetError("compressed RLE counts end in the middle of a run")
            c = ord(text[p]) - 48
            if not 0 <= c < 64 or k > 12:
                raise DatasetError(f"compressed RLE counts hold an invalid character {text[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise DatasetError(f"compressed RLE counts decode to a negative run ({x})")
        runs.append(x)
    return runs


def _check_runs(runs: list[int], height: int, width: int) -> None:
    total = sum(runs)
    if total != height * width:
        raise DatasetError(f"RLE counts cover {total} pixels, not the image's {height}x{width} = {height * width}")


def _check_polygon(polygon: Any, height: int, width: int) -> list[float]:
    if not isinstance(polygon, list):
        raise DatasetError(f"a polygon is of type {type(polygon).__name__}, not a list of coordinates")
    if not all(_is_number(v) and math.isfinite(v) for v in polygon):
        bad = next(v for v in polygon if not (_is_number(v) and math.isfinite(v)))
        raise DatasetError(f"a polygon holds the coordinate {bad!r}, not a finite number")
    if len(polygon) % 2:
        raise DatasetError(f"a polygon holds an odd number ({len(polygon)}) of coordinates")
    xs, ys = polygon[0::2], polygon[1::2]
    reach_x, reach_y = POLYGON_MARGIN * width + 16, POLYGON_MARGIN * height + 16
    if xs and (max(abs(v) for v in xs) > reach_x or max(abs(v) for v in ys) > reach_y):
        raise DatasetError(f"a polygon reaches far outside the {width}x{height} image "
                           f"(x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g})")
    return [float(v) for v in polygon]


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Return the boolean HxW mask of a COCO ``segmentation`` field.

    Args:
        segmentation: A list of polygons (each a flat ``[x0, y0, x1, y1, ...]`` list), an uncompressed RLE dict
            (``counts`` is a list of ints) or a compressed RLE dict (``counts`` is a str or bytes).
        height: Image height; polygons are rasterised at this size.
        width: Image width.

    Raises:
        DatasetError: the field is none of the three forms, an RLE's size is not (height, width) or its counts do
            not cover exactly the image, or a polygon holds a coordinate that is not a finite number near the image.
    """
    from pycocotools import mask as mask_utils

    if height <= 0 or width <= 0:
        raise DatasetError(f"image size {width}x{height} is not positive")
    if isinstance(segmentation, list):
        polygons = [_check_polygon(p, height, width) for p in segmentation]
        polygons = [p for p in polygons if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rles = mask_utils.frPyObjects(polygons, height, width)
        return mask_utils.decode(rles).any(axis=2)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not isinstance(size, list) or len(size) != 2 or not all(_is_int(s) for s in size):
            raise DatasetError(f"RLE size {size!r} is not a [height, width] pair of integers")
        if [int(s) for s in size] != [height, width]:
            raise DatasetError(f"RLE size {size} does not match the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts):
                bad = next(c for c in counts if not (_is_int(c) and c >= 0))
                raise DatasetError(f"RLE counts hold {bad!r}, not a non-negative integer")
            _check_runs([int(c) for c in counts], height, width)
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)
        elif isinstance(counts, (str, bytes)):
            _check_runs(compressed_rle_counts(counts), height, width)
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise DatasetError(f"RLE counts are of type {type(counts).__name__}, not a list or a string")
        return mask_utils.decode(rle).astype(bool)
    raise DatasetError(f"unsupported segmentation of type {type(segmentation).__name__}: expected polygons or RLE")
