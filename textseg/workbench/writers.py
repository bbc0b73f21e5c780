"""Deterministic writers: webdataset tar shards, a VOC-format segmentation set and a refer-format RIS set."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from textseg.visualize import voc_palette
from textseg.workbench.glyphs import VOC_CLASSES

JPEG_QUALITY = 95
_PALETTE = voc_palette().ravel().tolist()


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes (quality 95, 4:4:4, no metadata) of an (H, W, 3) uint8 image."""
    buf = io.BytesIO()
    # 4:4:4 (no chroma subsampling): at 96 px, 2x2 chroma blocks would smear the colour of thin outlines.
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def encode_label_png(label: np.ndarray) -> bytes:
    """Palette ("P" mode) PNG bytes of a VOC label map with the standard VOC colours."""
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [h, w], "counts": str}`` of a boolean mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` box of a non-empty boolean mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


class ShardWriter:
    """Writes webdataset samples to ``<dir>/shard-000000.tar``, ... with at most ``maxcount`` samples each.

    Tar headers are fixed (mtime 0, uid/gid 0, no user names, mode 0644), so equal samples give equal bytes.
    """

    def __init__(self, directory: str | Path, maxcount: int = 1000, prefix: str = "shard") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.maxcount = maxcount
        self.prefix = prefix
        self.shards: list[str] = []
        self.count = 0
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample; ``files`` maps extensions ("jpg", "txt", "json") to bytes, written in sorted order."""
        if self._tar is None or self._in_shard >= self.maxcount:
            self._open_next()
        for ext in sorted(files):
            data = files[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._in_shard += 1
        self.count += 1

    def _open_next(self) -> None:
        self.close()
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tar = tarfile.open(self.directory / name, "w", format=tarfile.USTAR_FORMAT)
        self.shards.append(name)
        self._in_shard = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VOCWriter:
    """Writes ``<root>/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/<split>.txt}``."""

    def __init__(self, root: str | Path, split: str = "val") -> None:
        self.voc = Path(root) / "VOC2012"
        self.split = split
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (self.voc / sub).mkdir(parents=True, exist_ok=True)
        self.ids: list[str] = []

    def add(self, image_id: str, jpeg: bytes, label_png: bytes) -> None:
        (self.voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg)
        (self.voc / "SegmentationClass" / f"{image_id}.png").write_bytes(label_png)
        self.ids.append(image_id)

    def close(self) -> None:
        text = "".join(f"{i}\n" for i in self.ids)
        (self.voc / "ImageSets" / "Segmentation" / f"{self.split}.txt").write_text(text)


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
        (self.image_dir / file_name).write_bytes(jpeg)
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})

    def add_annotation(self, image_id: int, category_id: int, mask: np.ndarray) -> int:
        """Add an exact instance mask; returns its annotation id."""
        ann_id = len(self.annotations) + 1
        self.annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": encode_rle(mask),
                "area": int(mask.sum()),
                "bbox": mask_bbox(mask),
                "iscrowd": 0,
            }
        )
        return ann_id

    def add_ref(self, ann_id: int, image_id: int, category_id: int, split: str, sentences: list[str], file_name: str) -> None:
        from textseg.workbench.captions import tokenize

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
            "categories": [{"id": i, "name": n, "supercategory": "voc"} for i, n in enumerate(VOC_CLASSES) if i],
        }
        (self.data_dir / "instances.json").write_text(json.dumps(instances, separators=(",", ":")))
        with open(self.data_dir / f"refs({self.split_by}).p", "wb") as f:
            # A JSON round trip first makes pickle's memo independent of which string objects happen to be
            # shared, so the bytes depend only on the values (the same for any number of workers).
            pickle.dump(json.loads(json.dumps(self.refs)), f, protocol=4)
