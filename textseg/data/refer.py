"""Referring segmentation data in the ``refer`` API format (RefCOCO, RefCOCO+, RefCOCOg and look-alikes).

Layout: ``<root>/<dataset>/refs(<split_by>).p`` (a pickled list of refs with keys ref_id, ann_id, image_id, split,
sentences[{sent, raw, tokens, sent_id}], category_id, file_name) and ``<root>/<dataset>/instances.json`` (COCO
format). Images are read from ``image_root`` by the ``file_name`` of the instances.json image record (the refs'
own ``file_name`` names an annotation crop, not an image file). One sample per sentence.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from textseg.data.coco_masks import decode_segmentation
from textseg.data.semseg import read_image
from textseg.errors import ConfigError, DatasetError

# The published splits of the standard datasets; other dataset names accept any split present in their file.
KNOWN_SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco", "google"): ("train", "val", "test"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}


class RefDataset:
    """Referring segmentation samples, one per (ref, sentence).

    Args:
        root: Folder holding ``<dataset>/refs(<split_by>).p`` and ``<dataset>/instances.json``.
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or another folder name in the same format.
        split_by: ``unc`` (RefCOCO, RefCOCO+), ``umd`` or ``google`` (RefCOCOg), or another refs file suffix.
        split: A split of the refs file (validated for the standard datasets, see :data:`KNOWN_SPLITS`).
        image_root: Image folder; defaults to ``<root>/images``.

    Items are ``dict(image=HxWx3 uint8, mask=HxW bool, sentence=str, ref_id, sent_id, image_id, ann_id,
    category_id)``.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str = "refcoco",
        split_by: str = "unc",
        split: str = "val",
        image_root: str | Path | None = None,
    ) -> None:
        root = Path(root)
        data_dir = root / dataset
        refs_path = data_dir / f"refs({split_by}).p"
        instances_path = data_dir / "instances.json"
        for path in (refs_path, instances_path):
            if not path.is_file():
                raise DatasetError(f"refer file not found: {path}")
        known = KNOWN_SPLITS.get((dataset.lower(), split_by))
        if known is not None and split not in known:
            raise ConfigError(f"{dataset} ({split_by}) has no split {split!r}; choose one of: {', '.join(known)}")
        self.image_root = Path(image_root) if image_root is not None else root / "images"
        if not self.image_root.is_dir():
            raise DatasetError(f"image folder not found: {self.image_root}")
        self.dataset, self.split_by, self.split = dataset, split_by, split

        with refs_path.open("rb") as f:
            refs = pickle.load(f)
        with instances_path.open(encoding="utf-8") as f:
            instances = json.load(f)
        self.images: dict[int, dict[str, Any]] = {int(im["id"]): im for im in instances.get("images", [])}
        self.annotations: dict[int, dict[str, Any]] = {int(a["id"]): a for a in instances.get("annotations", [])}

        selected = [r for r in refs if r["split"] == split]
        if not selected:
            present = sorted({str(r["split"]) for r in refs})
            raise DatasetError(f"no refs with split {split!r} in {refs_path} (splits present: {', '.join(present)})")
        # (ref, sentence) pairs in file order; sorted by nothing else so that sample i is stable across runs.
        self.samples: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for ref in selected:
            if int(ref["ann_id"]) not in self.annotations:
                raise DatasetError(f"ref {ref['ref_id']} names ann_id {ref['ann_id']} absent from {instances_path}")
            if int(ref["image_id"]) not in self.images:
                raise DatasetError(f"ref {ref['ref_id']} names image_id {ref['image_id']} absent from {instances_path}")
            for sent in ref["sentences"]:
                self.samples.append((ref, sent))

    def __len__(self) -> int:
        return len(self.samples)

    def mask(self, ann_id: int) -> np.ndarray:
        """Boolean mask of an annotation at its image's size (union of its polygons, or its RLE)."""
        ann = self.annotations[int(ann_id)]
        image = self.images[int(ann["image_id"])]
        return decode_segmentation(ann["segmentation"], int(image["height"]), int(image["width"]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref, sent = self.samples[index]
        record = self.images[int(ref["image_id"])]
        image = read_image(self.image_root / record["file_name"])
        mask = self.mask(int(ref["ann_id"]))
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"image {record['file_name']} is {image.shape[1]}x{image.shape[0]} but instances.json says "
                f"{record['width']}x{record['height']}"
            )
        return {
            "image": image,
            "mask": mask,
            "sentence": str(sent["sent"]),
            "ref_id": int(ref["ref_id"]),
            "sent_id": int(sent["sent_id"]),
            "image_id": int(ref["image_id"]),
            "ann_id": int(ref["ann_id"]),
            "category_id": int(ref["category_id"]),
        }

    def __repr__(self) -> str:
        return f"RefDataset({self.dataset!r}, split_by={self.split_by!r}, split={self.split!r}, n={len(self)})"
