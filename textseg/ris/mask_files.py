"""Mask proposals given by the user: COCO RLE/polygon JSON, a PNG label map, or a folder of PNG masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from textseg.errors import DatasetError, UserError
from textseg.ris.proposals import DEDUP_IOU, Proposals, make_proposals

_MASK_IMAGE_SUFFIXES = (".png",)


def _json_masks(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    from textseg.data.coco_masks import decode_segmentation

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"mask file {path} is not valid JSON: {err}") from None
    if isinstance(data, dict):
        key = next((k for k in ("masks", "annotations") if k in data), None)
        if key is None and {"counts", "size"} <= set(data):
            data = [data]  # a single RLE
        elif key is None:
            raise DatasetError(f"mask file {path} is a JSON object without 'masks' or 'annotations' (keys: "
                               f"{', '.join(sorted(map(str, data))[:8])})")
        else:
            data = data[key]
    if not isinstance(data, list):
        raise DatasetError(f"mask file {path} holds a JSON {type(data).__name__}, not a list of masks")
    h, w = size
    masks = np.zeros((len(data), h, w), dtype=bool)
    for i, item in enumerate(data):
        if isinstance(item, dict) and "segmentation" in item:
            item = item["segmentation"]
        if not isinstance(item, (dict, list)):
            raise DatasetError(f"mask file {path}: mask {i} is a {type(item).__name__}, not an RLE or polygons")
        try:
            masks[i] = decode_segmentation(item, h, w)
        except DatasetError as err:
            raise DatasetError(f"mask file {path}: mask {i}: {err}") from None
    return masks, list(range(len(data)))


def _read_mask_image(path: Path) -> np.ndarray:
    """The (H, W) integer values of a mask/label PNG (grey, palette indices, 16-bit or 1-bit)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot read mask image {path}: {err.__class__.__name__}") from None
    if arr.ndim == 3:
        same = (arr[..., :3] == arr[..., :1]).all()
        if mode not in ("RGB", "RGBA") or not same:
            raise DatasetError(f"mask image {path} is a {mode} colour image, not a mask or label map (save it as "
                               "grey or palette PNG with one value per mask)")
        arr = arr[..., 0]
    return arr.astype(np.int64)


def _check_size(path: Path, arr: np.ndarray, size: tuple[int, int]) -> None:
    if arr.shape != tuple(size):
        raise DatasetError(f"mask image {path} is {arr.shape[1]}x{arr.shape[0]}, the image is {size[1]}x{size[0]}")


def load_mask_proposals(path: str | Path, image_size: tuple[int, int], *,
                        dedup_iou: float | None = DEDUP_IOU) -> Proposals:
    """Masks given by the user, as proposals at ``image_size``.

    Accepted:

    - a ``.json`` file: a list of COCO RLEs (compressed or not), ``{"masks": [...]}``, a COCO annotation list
      (items with ``segmentation``: RLE or polygons) or ``{"annotations": [...]}``; in list order;
    - a ``.png`` label map (grey, palette or 16-bit): each non-zero value is one mask, by increasing value;
    - a folder of binary ``.png`` masks (0 outside, any one non-zero value inside), by sorted file name.

    Empty masks are dropped; each record keeps where the mask came from (``path`` and ``index`` in the list,
    ``value`` in the label map, or ``path`` of the file in the folder).

    Args:
        path: the file or folder.
        image_size: (H, W) of the image the masks are for.
        dedup_iou: drop a mask whose IoU with an earlier one is at least this (None: keep all).

    Raises:
        UserError: the path does not exist or is of an unknown kind.
        DatasetError: a file is unreadable, of another size than the image, not a mask, or no mask is left (a file
            with zero masks is an error: there would be nothing to refer to).
    """
    path = Path(path)
    size = (int(image_size[0]), int(image_size[1]))
    if not path.exists():
        raise UserError(f"mask file {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _MASK_IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"mask folder {path} holds no .png masks")
        masks = np.zeros((len(files), *size), dtype=bool)
        for i, f in enumerate(files):
            arr = _read_mask_image(f)
            _check_size(f, arr, size)
            values = np.unique(arr)
            if len(values) > 2 or (len(values) == 2 and values[0] != 0):
                raise DatasetError(f"mask image {f} holds the values {values[:6].tolist()}, not a binary mask "
                                   "(0 outside, one non-zero value inside)")
            masks[i] = arr != 0
        records = [{"source": "file", "path": str(f)} for f in files]
    elif path.suffix.lower() == ".json":
        masks, indices = _json_masks(path, size)
        records = [{"source": "file", "path": str(path), "index": i} for i in indices]
    elif path.suffix.lower() in _MASK_IMAGE_SUFFIXES:
        arr = _read_mask_image(path)
        _check_size(path, arr, size)
        values = np.unique(arr)
        values = values[values != 0]
        masks = arr[None] == values[:, None, None]
        records = [{"source": "file", "path": str(path), "value": int(v)} for v in values]
    else:
        raise UserError(f"mask file {path}: unsupported kind (expected a .json of COCO RLEs/polygons, a .png label "
                        "map or a folder of .png masks)")
    out = make_proposals(masks, records, dedup_iou)
    if len(out) == 0:
        raise DatasetError(f"mask file {path} holds no mask (every mask is empty)" if len(masks)
                           else f"mask file {path} holds no mask")
    return out


__all__ = ["load_mask_proposals"]
