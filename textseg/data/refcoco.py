"""Referring segmentation data in the ``refer`` API format (RefCOCO, RefCOCO+, RefCOCOg and look-alikes).

Layout: ``<root>/<dataset>/refs(<split_by>).p`` (a pickled list of refs with keys ref_id, ann_id, image_id, split,
sentences[{sent, raw, tokens, sent_id}], category_id, file_name) and ``<root>/<dataset>/instances.json`` (COCO
format). Images are read from ``image_root`` by the ``file_name`` of the instances.json image record (the refs'
own ``file_name`` names an annotation crop, not an image file). One sample per sentence.

The refs file is read by a restricted unpickler (:func:`load_refs`): it builds plain data only and refuses every
global (class or function), so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import json
import pickle
import reprlib
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

# Keys every ref and every sentence must have, and those of them that hold integers.
REF_KEYS = ("ref_id", "ann_id", "image_id", "category_id", "split", "sentences")
SENTENCE_KEYS = ("sent", "raw", "sent_id")
_REF_INT_KEYS = ("ref_id", "ann_id", "image_id", "category_id")
_IMAGE_INT_KEYS = ("id", "height", "width")
_ANNOTATION_INT_KEYS = ("id", "image_id")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


def _short(value: Any) -> str:
    """A short one-line repr of a value read from a file (bounded depth: a crafted value may nest deeply)."""
    return " ".join(_REPR.repr(value).split())


class _Refused(Exception):
    """A pickle asked for something a refs file never holds (a global or a persistent id)."""


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds only what pickle makes without globals: lists, dicts, tuples, sets, str, bytes,
    int, float, bool and None. Classes and functions (the only way a pickle runs code) and persistent ids are
    refused. The public refs files (Python 2, protocol 2) and the workbench's (protocol 4) hold no global."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"persistent id {_short(pid)}")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _unpickle(path: Path, data: bytes, encoding: str) -> Any:
    try:
        return _PlainDataUnpickler(io.BytesIO(data), encoding=encoding).load()
    except _Refused as e:
        raise DatasetError(
            f"{path}: refused to load {e}; a refs file holds only lists, dicts, strings and numbers"
        ) from None
    except UnicodeDecodeError:
        raise
    except EOFError:
        raise DatasetError(f"{path} is not a refs pickle: it is empty or truncated") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse untrusted bytes is a malformed file
        raise DatasetError(f"{path} is not a readable refs pickle ({_one_line(e)})") from None


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is one (an integral float or a decimal string counts); otherwise None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _check_record(path: Path, what: str, record: Any, keys: tuple[str, ...], int_keys: tuple[str, ...]) -> None:
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: {what} is of type {type(record).__name__}, not a dict")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DatasetError(f"{path}: {what} has no key {', '.join(map(repr, missing))}")
    for key in int_keys:
        if _as_int(record[key]) is None:
            raise DatasetError(f"{path}: {what} has {key}={_short(record[key])}, not an integer")


def _check_refs(path: Path, refs: Any) -> list[dict[str, Any]]:
    if not isinstance(refs, list):
        raise DatasetError(f"{path}: the top level is of type {type(refs).__name__}, not a list of refs")
    for i, ref in enumerate(refs):
        _check_record(path, f"ref #{i}", ref, REF_KEYS, _REF_INT_KEYS)
        if not isinstance(ref["split"], str):
            raise DatasetError(f"{path}: ref #{i} has a split of type {type(ref['split']).__name__}, not a string")
        sentences = ref["sentences"]
        if not isinstance(sentences, list):
            raise DatasetError(f"{path}: ref #{i} has sentences of type {type(sentences).__name__}, not a list")
        for j, sent in enumerate(sentences):
            _check_record(path, f"ref #{i} sentence #{j}", sent, SENTENCE_KEYS, ("sent_id",))
            for key in ("sent", "raw"):
                if not isinstance(sent[key], str):
                    raise DatasetError(
                        f"{path}: ref #{i} sentence #{j} has a {key} of type {type(sent[key]).__name__}, not a string"
                    )
    return refs


def load_refs(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``refs(<split_by>).p`` file safely and check its structure.

    Python 2 ``str`` values (the public RefCOCO files) are decoded as UTF-8 (which covers their ASCII, as the
    refer API's ``pickle.load`` does), falling back to Latin-1 for bytes that are not UTF-8.

    Raises:
        DatasetError: the file is unreadable, not a pickle, truncated, asks for any global (class or function),
            or is not a list of refs with the keys :data:`REF_KEYS` and sentences with :data:`SENTENCE_KEYS`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        refs = _unpickle(path, data, "utf-8")
    except UnicodeDecodeError:
        try:
            refs = _unpickle(path, data, "latin1")
        except UnicodeDecodeError as e:  # a BINUNICODE string that is not UTF-8: no encoding helps
            raise DatasetError(f"{path} is not a readable refs pickle ({_one_line(e)})") from None
    return _check_refs(path, refs)


def load_instances(path: str | Path) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Read a COCO ``instances.json``; return its images and annotations by id.

    Raises:
        DatasetError: the file is unreadable, not UTF-8 JSON, or lacks the images/annotations lists or the keys
            the refer samples use (image id, file_name, height, width; annotation id, image_id, segmentation).
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            instances = json.load(f)
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise DatasetError(f"{path} is not valid JSON ({_one_line(e)})") from None
    if not isinstance(instances, dict):
        raise DatasetError(f"{path}: the top level is of type {type(instances).__name__}, not a COCO dict")
    for key in ("images", "annotations"):
        if not isinstance(instances.get(key), list):
            raise DatasetError(f"{path} has no {key!r} list")
    images: dict[int, dict[str, Any]] = {}
    for i, im in enumerate(instances["images"]):
        _check_record(path, f"image #{i}", im, ("id", "file_name", "height", "width"), _IMAGE_INT_KEYS)
        if not isinstance(im["file_name"], str):
            raise DatasetError(f"{path}: image #{i} has a file_name of type {type(im['file_name']).__name__}")
        for key in ("height", "width"):
            if _as_int(im[key]) <= 0:  # type: ignore[operator]
                raise DatasetError(f"{path}: image #{i} has {key}={_short(im[key])}, not a positive size")
        images[_as_int(im["id"])] = im  # type: ignore[index]
    annotations: dict[int, dict[str, Any]] = {}
    for i, ann in enumerate(instances["annotations"]):
        _check_record(path, f"annotation #{i}", ann, ("id", "image_id", "segmentation"), _ANNOTATION_INT_KEYS)
        annotations[_as_int(ann["id"])] = ann  # type: ignore[index]
    return images, annotations


class RefDataset:
    """Referring segmentation samples, one per (ref, sentence).

    Args:
        root: Folder holding ``<dataset>/refs(<split_by>).p`` and ``<dataset>/instances.json``.
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or another folder name in the same format.
        split_by: ``unc`` (RefCOCO, RefCOCO+), ``umd`` or ``google`` (RefCOCOg), or another refs file suffix.
        split: A split of the refs file (validated for the standard datasets, see :data:`KNOWN_SPLITS`).
        image_root: Image folder; defaults to ``<root>/images``.
        no_target: Give each sentence's no-target counterpart instead: the sentence paired with another image of
            the split that holds no object of the referred category (the first such image after the sentence's
            own, in file order, cyclically), with an empty ground-truth mask and ``ann_id`` -1.

    Items are ``dict(image=HxWx3 uint8, mask=HxW bool, sentence=str, ref_id, sent_id, image_id, ann_id,
    category_id, no_target)``.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str = "refcoco",
        split_by: str = "unc",
        split: str = "val",
        image_root: str | Path | None = None,
        no_target: bool = False,
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
        self.instances_path = instances_path

        refs = load_refs(refs_path)
        self.images, self.annotations = load_instances(instances_path)

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
        self.no_target = no_target
        self._elsewhere = self._no_target_images(selected) if no_target else {}

    def _no_target_images(self, refs: list[dict[str, Any]]) -> dict[int, int]:
        """ref_id → the image its sentences are paired with for no-target evaluation (see the class docstring)."""
        order = list(dict.fromkeys(int(r["image_id"]) for r in refs))
        categories: dict[int, set[int]] = {i: set() for i in order}
        for ann in self.annotations.values():
            image_id = int(ann["image_id"])
            if image_id in categories and ann.get("category_id") is not None:
                categories[image_id].add(int(ann["category_id"]))
        paired = {}
        for ref in refs:
            start, cat = order.index(int(ref["image_id"])), int(ref["category_id"])
            others = order[start + 1:] + order[:start]
            found = next((i for i in others if cat not in categories[i]), None)
            if found is None:
                raise DatasetError(f"no image of split {self.split!r} lacks category {cat}: no no-target pair for "
                                   f"ref {ref['ref_id']}")
            paired[int(ref["ref_id"])] = found
        return paired

    def __len__(self) -> int:
        return len(self.samples)

    def mask(self, ann_id: int) -> np.ndarray:
        """Boolean mask of an annotation at its image's size (union of its polygons, or its RLE)."""
        ann = self.annotations[int(ann_id)]
        image = self.images.get(int(ann["image_id"]))
        if image is None:
            raise DatasetError(f"{self.instances_path}: annotation {ann_id} names image_id {ann['image_id']}, absent")
        try:
            return decode_segmentation(ann["segmentation"], int(image["height"]), int(image["width"]))
        except DatasetError as e:
            raise DatasetError(f"{self.instances_path}: annotation {ann_id}: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
            raise DatasetError(
                f"{self.instances_path}: annotation {ann_id} has a malformed segmentation ({_one_line(e)})"
            ) from None

    def instances(self, image_id: int) -> list[tuple[int, int, np.ndarray]]:
        """Every annotated instance of an image as (annotation id, category id, (H, W) bool mask), by id."""
        if not hasattr(self, "_by_image"):
            self._by_image: dict[int, list[int]] = {}
            for ann_id, ann in self.annotations.items():
                self._by_image.setdefault(int(ann["image_id"]), []).append(int(ann_id))
        return [(a, int(self.annotations[a].get("category_id", -1)), self.mask(a))
                for a in sorted(self._by_image.get(int(image_id), []))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref, sent = self.samples[index]
        image_id = self._elsewhere.get(int(ref["ref_id"]), int(ref["image_id"]))
        record = self.images[image_id]
        image_path = self.image_root / record["file_name"]
        image = read_image(image_path)
        if (int(record["height"]), int(record["width"])) != image.shape[:2]:  # checked first: it bounds the mask
            raise DatasetError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but {self.instances_path} says "
                f"{int(record['width'])}x{int(record['height'])} (image id {image_id})"
            )
        mask = np.zeros(image.shape[:2], dtype=bool) if self.no_target else self.mask(int(ref["ann_id"]))
        return {
            "image": image,
            "mask": mask,
            "sentence": str(sent["sent"]),
            "ref_id": int(ref["ref_id"]),
            "sent_id": int(sent["sent_id"]),
            "image_id": image_id,
            "ann_id": -1 if self.no_target else int(ref["ann_id"]),
            "category_id": int(ref["category_id"]),
            "no_target": self.no_target,
        }

    def __repr__(self) -> str:
        extra = ", no_target=True" if self.no_target else ""
        return f"RefDataset({self.dataset!r}, split_by={self.split_by!r}, split={self.split!r}{extra}, n={len(self)})"
