"""Deterministic writers of a VOC-format segmentation set and a refer-format RIS set.

The tar shards are written by :class:`textseg.io.ShardWriter`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from textseg.data.names import get_class_names
from textseg.io import atomic_write_bytes, atomic_write_text, mask_to_rle
from textseg.workbench.scene_captions import tokenize


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` box of a non-empty boolean mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


class VOCWriter:
    """Writes ``<root>/VOC2012/{JPEGImages,SegmentationClass,SegmentationObject,ImageSets/Segmentation/<split>.txt}``
    (SegmentationObject: instance maps, when given)."""

    def __init__(self, root: str | Path, split: str = "val") -> None:
        self.voc = Path(root) / "VOC2012"
        self.split = split
        for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
            (self.voc / sub).mkdir(parents=True, exist_ok=True)
        self.ids: list[str] = []

    def add(self, image_id: str, jpeg: bytes, label_png: bytes, instance_png: bytes | None = None) -> None:
        """Write one sample: its JPEG, class map PNG and (if given) instance map PNG (VOC's SegmentationObject)."""
        atomic_write_bytes(self.voc / "JPEGImages" / f"{image_id}.jpg", jpeg)
        atomic_write_bytes(self.voc / "SegmentationClass" / f"{image_id}.png", label_png)
        if instance_png is not None:
            atomic_write_bytes(self.voc / "SegmentationObject" / f"{image_id}.png", instance_png)
        self.ids.append(image_id)

    def close(self) -> None:
        text = "".join(f"{i}\n" for i in self.ids)
        atomic_write_text(self.voc / "ImageSets" / "Segmentation" / f"{self.split}.txt", text)


class RefWriter:
    """Writes a refer-API dataset: ``<root>/<dataset>/refs(<split_by>).p``, ``instances.json`` and
    ``<root>/images/<file_name>``."""

    def __init__(self, root: str | Path, dataset: str = "openmoji_ref", split_by: str = "unc") -> None:
        self.root = Path(root)
        self.data_dir = self.root / dataset
        self.image_dir = self.root / "images"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.split_by = split_by
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.refs: list[dict] = []
        self._next_sent = 0

    def add_image(self, image_id: int, file_name: str, jpeg: bytes, height: int, width: int) -> None:
        atomic_write_bytes(self.image_dir / file_name, jpeg)
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})

    def add_annotation(self, image_id: int, category_id: int, mask: np.ndarray) -> int:
        """Add an exact instance mask; returns its annotation id."""
        ann_id = len(self.annotations) + 1
        self.annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": mask_to_rle(mask),
                "area": int(mask.sum()),
                "bbox": mask_bbox(mask),
                "iscrowd": 0,
            }
        )
        return ann_id

    def add_ref(self, ann_id: int, image_id: int, category_id: int, split: str, sentences: list[str], file_name: str) -> None:
        sents = []
        for s in sentences:
            sents.append({"tokens": tokenize(s), "raw": s, "sent_id": self._next_sent, "sent": " ".join(tokenize(s))})
            self._next_sent += 1
        self.refs.append(
            {
                "sent_ids": [s["sent_id"] for s in sents],
                "file_name": file_name,
                "ann_id": ann_id,
                "ref_id": len(self.refs),
                "image_id": image_id,
                "split": split,
                "sentences": sents,
                "category_id": category_id,
            }
        )

    def close(self) -> None:
        instances = {
            "info": {"description": "textseg OpenMoji referring segmentation workbench"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [
                {"id": i, "name": n, "supercategory": "voc"} for i, n in enumerate(get_class_names("voc21")) if i
            ],
        }
        atomic_write_text(self.data_dir / "instances.json", json.dumps(instances, separators=(",", ":")))
        # A JSON round trip first makes pickle's memo independent of which string objects happen to be shared, so
        # the bytes depend only on the values (the same for any number of workers).
        refs = pickle.dumps(json.loads(json.dumps(self.refs)), protocol=4)
        atomic_write_bytes(self.data_dir / f"refs({self.split_by}).p", refs)
