"""Rasterise COCO-format segmentations (polygons, uncompressed RLE, compressed RLE) with pycocotools."""

from __future__ import annotations

from typing import Any

import numpy as np

from textseg.errors import DatasetError


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Return the boolean HxW mask of a COCO ``segmentation`` field.

    Args:
        segmentation: A list of polygons (each a flat ``[x0, y0, x1, y1, ...]`` list), an uncompressed RLE dict
            (``counts`` is a list of ints) or a compressed RLE dict (``counts`` is a str or bytes).
        height: Image height; polygons are rasterised at this size.
        width: Image width.

    Raises:
        DatasetError: the field is none of the three forms, or an RLE's size is not (height, width).
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rles = mask_utils.frPyObjects(polygons, height, width)
        return mask_utils.decode(rles).any(axis=2)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(s) for s in segmentation["size"]]
        if size != [height, width]:
            raise DatasetError(f"RLE size {size} does not match the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return mask_utils.decode(rle).astype(bool)
    raise DatasetError(f"unsupported segmentation of type {type(segmentation).__name__}: expected polygons or RLE")
