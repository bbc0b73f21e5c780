"""COCO-Object: COCO's 80 thing classes + background as a semantic segmentation benchmark.

:func:`convert_coco_object` turns a COCO ``instances_<split>2017.json`` into one label PNG per image
(``<file stem>_instanceTrainIds.png``, grey-scale uint8), read back by :class:`textseg.data.semseg.COCOObject`.

Painting rule (overlaps are common in COCO, so the order matters and is fixed here):

1. Every pixel starts as 0 (background).
2. Non-crowd instances are painted in order of decreasing mask pixel count (ties keep the JSON order), each writing
   its class label 1..80 (position of its category in the JSON's ``categories`` list, plus one). Smaller instances
   are therefore painted last and stay visible where they lie on larger ones (a cup on a table).
3. Crowd regions (``iscrowd=1``) are then set to 255 (ignore) on the pixels no non-crowd instance covers: a crowd
   region marks "many objects, not delineated", so its pixels are not scored, but a delineated instance inside it
   keeps its label.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from textseg.data.coco_masks import decode_segmentation
from textseg.data.names import IGNORE_INDEX
from textseg.errors import DatasetError
from textseg.io import save_png

LABEL_SUFFIX = "_instanceTrainIds.png"


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Load a COCO instances JSON, checking the keys the converters need."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"COCO annotation file {'is a folder' if path.is_dir() else 'not found'}: {path}")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    except RecursionError:
        raise DatasetError(f"{path}: invalid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise DatasetError(f"COCO annotation file is not a JSON object: {path}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"COCO annotation file has no {key!r} list: {path}")
        if not isinstance(data[key], list) or not all(isinstance(e, dict) for e in data[key]):
            raise DatasetError(f"COCO annotation file: {key!r} must be a list of objects: {path}")
    return data


def coco_object_label(
    image: dict[str, Any], annotations: list[dict[str, Any]], category_to_label: dict[int, int]
) -> np.ndarray:
    """Rasterise one image's annotations into a COCO-Object label map (see the module docstring for the rule)."""
    height, width = int(image["height"]), int(image["width"])
    label = np.zeros((height, width), dtype=np.uint8)
    objects: list[tuple[int, int, np.ndarray, int]] = []
    crowd = np.zeros((height, width), dtype=bool)
    for order, ann in enumerate(annotations):
        try:
            mask = decode_segmentation(ann["segmentation"], height, width)
        except (DatasetError, KeyError) as err:
            raise DatasetError(f"annotation {ann.get('id', order)!r} of image {image.get('id')!r}: "
                               f"{err if isinstance(err, DatasetError) else 'no segmentation'}") from None
        if ann.get("iscrowd", 0):
            crowd |= mask
            continue
        if ann["category_id"] not in category_to_label:
            raise DatasetError(f"annotation {ann.get('id')} has unknown category_id {ann['category_id']}")
        objects.append((-int(mask.sum()), order, mask, category_to_label[ann["category_id"]]))
    objects.sort(key=lambda o: (o[0], o[1]))
    covered = np.zeros((height, width), dtype=bool)
    for _, _, mask, value in objects:
        label[mask] = value
        covered |= mask
    label[crowd & ~covered] = IGNORE_INDEX
    return label


def convert_coco_object(instances_json: str | Path, out_dir: str | Path) -> list[Path]:
    """Write one COCO-Object label PNG per image of a COCO instances file.

    Args:
        instances_json: ``annotations/instances_<split>2017.json``.
        out_dir: Output folder (conventionally ``<coco>/annotations/<split>2017``); created if missing.

    Returns:
        The written PNG paths, in the JSON's image order.
    """
    data = load_coco_json(instances_json)
    try:
        category_to_label = {int(c["id"]): i + 1 for i, c in enumerate(data["categories"])}
        by_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in data["images"]}
        image_ids = [int(ann["image_id"]) for ann in data["annotations"]]
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{instances_json}: a category, image or annotation lacks a numeric id ({err!r})") from None
    if len(category_to_label) > 254:
        raise DatasetError(f"too many categories for a uint8 label map: {len(category_to_label)}")
    for ann, image_id in zip(data["annotations"], image_ids):
        if image_id not in by_image:
            raise DatasetError(f"annotation {ann.get('id')} refers to unknown image_id {ann['image_id']}")
        by_image[image_id].append(ann)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"output folder is an existing file: {out}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for image in data["images"]:
        try:
            label = coco_object_label(image, by_image[int(image["id"])], category_to_label)
            path = out / f"{Path(str(image['file_name'])).stem}{LABEL_SUFFIX}"
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(
                f"{instances_json}: image {image.get('id')} or one of its annotations is malformed ({err!r})"
            ) from None
        except DatasetError as err:
            raise DatasetError(f"{instances_json}: {err}") from None
        save_png(label, path)
        written.append(path)
    return written
