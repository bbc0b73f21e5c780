"""Readers for semantic segmentation benchmarks in their original (or mmsegmentation-converted) on-disk formats.

Every reader yields ``dict(image=HxWx3 uint8 RGB, label=HxW uint8, id=str)`` with labels in the benchmark's label
space (index i = ``class_names[i]``) and 255 for pixels that are not scored. Label PNGs are read as stored index
values (palette PNGs are NOT converted to RGB). Where the benchmark has instance maps (VOC's
``SegmentationObject``), a sample also holds ``instances``: HxW uint8, 0 background, 1..N instances, 255 void.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from textseg.data import coco_object
from textseg.data.names import BENCHMARKS, IGNORE_INDEX, get_class_names
from textseg.errors import ConfigError, DatasetError


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    return path


def _identity_lut() -> np.ndarray:
    return np.arange(256, dtype=np.uint8)


def _shift_down_lut() -> np.ndarray:
    """0 -> 255 (ignore), k -> k - 1 for 1..254, 255 stays 255."""
    lut = (np.arange(256, dtype=np.int64) - 1).astype(np.uint8)
    lut[0] = IGNORE_INDEX
    lut[255] = IGNORE_INDEX
    return lut


def _open_error(path: Path, what: str, err: BaseException) -> DatasetError:
    detail = " ".join(str(err).split())[:120] or type(err).__name__
    return DatasetError(f"cannot read {what} {path}: {type(err).__name__}: {detail}")


def read_image(path: Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB.

    Raises:
        DatasetError: the file is missing, not an image, truncated or too large for PIL's pixel limit.
    """
    _require(path, "image")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise _open_error(path, "image", err) from None


def read_label(path: Path) -> np.ndarray:
    """Read a label PNG as its stored index values (HxW uint8); palette PNGs keep their indices.

    Raises:
        DatasetError: the file is missing, unreadable, lossy (JPEG), a colour or multi-channel image, or holds
            values that are not integers in 0..255.
    """
    _require(path, "label file")
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                raise DatasetError(f"label file is a JPEG (lossy), expected a PNG of class indices: {path}")
            if img.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
                raise DatasetError(
                    f"label file is a colour ({img.mode}) image, expected palette or grey-scale indices: {path}")
            arr = np.asarray(img)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise _open_error(path, "label file", err) from None
    if arr.ndim != 2:
        raise DatasetError(f"label file is not a single-channel image: {path}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f" and arr.size and not np.all(np.mod(arr, 1) == 0):
            raise DatasetError(f"label file holds non-integer values: {path}")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DatasetError(f"label values outside 0..255 in {path} (found {arr.min()}..{arr.max()})")
        arr = arr.astype(np.uint8)
    return arr.copy()


def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 255]`` as ``"0..2, 5, 255"``."""
    parts: list[list[int]] = []
    for v in sorted(int(v) for v in values):
        if parts and parts[-1][1] == v - 1:
            parts[-1][1] = v
        else:
            parts.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in parts)


class SemsegDataset:
    """A list of (id, image path, label path) with a lookup table from stored values to benchmark labels.

    Attributes:
        class_names: Standard class names, index i = label i.
        ignore_index: Label of pixels that are not scored (255).
        has_background: Whether label 0 is a "background" class that a predictor must produce itself.
        name: Benchmark name (see :data:`textseg.data.names.BENCHMARKS`).
        split: Split name.
        has_instances: Whether the benchmark has instance maps (a sample whose file is missing has none).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        samples: Sequence[tuple[str, Path, Path]],
        benchmark: str,
        lut: np.ndarray,
        has_background: bool,
        split: str,
        instance_dir: Path | None = None,
    ) -> None:
        self.samples = list(samples)
        self.name = benchmark
        self.split = split
        self.class_names: list[str] = get_class_names(benchmark)
        self.has_background = has_background
        self._lut = lut
        self.instance_dir = instance_dir
        self.has_instances = instance_dir is not None

    def __len__(self) -> int:
        return len(self.samples)

    def allowed_values(self) -> str:
        """The stored label values this reader accepts, e.g. ``"0..20 (classes), 255 (ignored)"``."""
        n = len(self.class_names)
        classes = [v for v in range(256) if self._lut[v] < n]
        ignored = [v for v in range(256) if self._lut[v] == self.ignore_index]
        return f"{_ranges(classes)} (classes), {_ranges(ignored)} (ignored)"

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id, image_path, label_path = self.samples[index]
        image = read_image(image_path)
        raw = read_label(label_path)
        if raw.shape != image.shape[:2]:
            raise DatasetError(
                f"label {label_path} is {raw.shape[1]}x{raw.shape[0]} but image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        label = self._lut[raw]
        bad = (label >= len(self.class_names)) & (label != self.ignore_index)
        if bad.any():
            y, x = (int(v) for v in np.argwhere(bad)[0])
            raise DatasetError(
                f"label {label_path} holds the value {int(raw[y, x])} at x={x}, y={y} ({int(bad.sum())} such "
                f"pixels); allowed values for {self.name}: {self.allowed_values()}"
            )
        sample = {"image": image, "label": label, "id": sample_id}
        instance_path = None if self.instance_dir is None else self.instance_dir / f"{sample_id}.png"
        if instance_path is not None and instance_path.is_file():
            instances = read_label(instance_path)
            if instances.shape != raw.shape:
                raise DatasetError(f"instance map {instance_path} is {instances.shape[1]}x{instances.shape[0]} but "
                                   f"label {label_path} is {raw.shape[1]}x{raw.shape[0]}")
            sample["instances"] = instances
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n={len(self)})"


def _read_split_file(path: Path) -> list[str]:
    """The ids of a split list file (first word of each non-blank line).

    Raises:
        DatasetError: the file is missing (naming the splits present), unreadable, not UTF-8, empty, or lists an
            id twice.
    """
    if not path.is_file():
        present = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise DatasetError(
            f"split {path.stem!r} not found: no file {path} (splits present: {', '.join(present) or 'none'})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"split file {path} is not UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise DatasetError(f"cannot read split file {path}: {e.strerror or e}") from None
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        sample_id = line.split()[0]
        if sample_id in seen:
            raise DatasetError(f"split file {path} lists {sample_id!r} twice (lines {seen[sample_id]} and {lineno})")
        seen[sample_id] = lineno
        ids.append(sample_id)
    if not ids:
        raise DatasetError(f"split file is empty: {path}")
    return ids


def _listed_samples(ids: Sequence[str], split_file: Path, images: Path, labels: Path) -> list[tuple[str, Path, Path]]:
    """(id, image, label) of every id of a split list, checking up front that each image and label exists."""
    samples = [(i, images / f"{i}.jpg", labels / f"{i}.png") for i in ids]
    for k, what in ((1, "image"), (2, "label file")):
        missing = [s for s in samples if not s[k].is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(
                f"{what} of {missing[0][0]!r} listed in {split_file} not found: {missing[0][k]}{more}")
    return samples


def _find_year_dir(root: Path, year_dir: str) -> Path:
    """Accept either the VOCdevkit folder or the VOC20xx folder itself."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"dataset root is not a folder: {root}")
    if (root / year_dir).is_dir():
        return root / year_dir
    if root.name == year_dir or (root / "JPEGImages").is_dir():
        return _require(root, "dataset root")
    raise DatasetError(f"{year_dir} folder not found: {root / year_dir} (give the VOCdevkit or {year_dir} folder)")


class VOCSegmentation(SemsegDataset):
    """Pascal VOC 2012 segmentation (``VOCdevkit/VOC2012``).

    Where ``SegmentationObject`` exists, a sample also holds its instance map (``instances``; see the module).

    Args:
        root: The ``VOCdevkit`` folder or the ``VOC2012`` folder itself.
        split: Name of a file in ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``).
        background: True for VOC-21 (0 background, 1..20 objects, as stored); False for VOC-20 (background
            becomes ignore, objects become 0..19).
    """

    def __init__(self, root: str | Path, split: str = "val", background: bool = True) -> None:
        base = _find_year_dir(Path(root), "VOC2012")
        split_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        ids = _read_split_file(split_file)
        images, labels = _require(base / "JPEGImages", "image folder"), _require(
            base / "SegmentationClass", "label folder"
        )
        samples = _listed_samples(ids, split_file, images, labels)
        objects = base / "SegmentationObject" if (base / "SegmentationObject").is_dir() else None
        if background:
            super().__init__(samples, "voc21", _identity_lut(), has_background=True, split=split,
                             instance_dir=objects)
        else:
            super().__init__(samples, "voc20", _shift_down_lut(), has_background=False, split=split,
                             instance_dir=objects)


class PascalContext(SemsegDataset):
    """Pascal Context in mmsegmentation's converted form (``VOCdevkit/VOC2010``).

    Expects ``JPEGImages/<id>.jpg``, ``SegmentationClassContext/<id>.png`` (0 background, 1..59) and
    ``ImageSets/SegmentationContext/<split>.txt``.

    Args:
        root: The ``VOCdevkit`` folder or the ``VOC2010`` folder itself.
        split: ``train`` or ``val``.
        background: True for Context-60 (labels as stored); False for Context-59 (background becomes ignore,
            1..59 become 0..58).
    """

    def __init__(self, root: str | Path, split: str = "val", background: bool = True) -> None:
        base = _find_year_dir(Path(root), "VOC2010")
        split_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        ids = _read_split_file(split_file)
        images = _require(base / "JPEGImages", "image folder")
        labels = _require(base / "SegmentationClassContext", "label folder")
        samples = _listed_samples(ids, split_file, images, labels)
        if background:
            super().__init__(samples, "context60", _identity_lut(), has_background=True, split=split)
        else:
            super().__init__(samples, "context59", _shift_down_lut(), has_background=False, split=split)


def _paired_files(
    image_dir: Path, label_dir: Path, image_suffix: str, label_suffix: str
) -> list[tuple[str, Path, Path]]:
    """Pair every label file in ``label_dir`` (recursively) with its image in ``image_dir``."""
    _require(image_dir, "image folder")
    _require(label_dir, "label folder")
    samples = []
    for label_path in sorted(label_dir.rglob(f"*{label_suffix}")):
        rel = label_path.relative_to(label_dir)
        stem = rel.name[: -len(label_suffix)]
        image_path = image_dir / rel.parent / f"{stem}{image_suffix}"
        if not image_path.is_file():
            raise DatasetError(f"image for label {label_path} not found: {image_path}")
        samples.append((stem, image_path, label_path))
    if not samples:
        raise DatasetError(f"no label files matching *{label_suffix} in {label_dir}")
    return samples


def _split_dir(split: str, names: dict[str, str], what: str) -> str:
    if split not in names:
        raise ConfigError(f"unknown {what} split {split!r}; choose one of: {', '.join(names)}")
    return names[split]


class ADE20K(SemsegDataset):
    """ADE20K-150 (``ADEChallengeData2016``): stored 0 (other) becomes ignore, 1..150 become 0..149.

    Args:
        root: The ``ADEChallengeData2016`` folder or its parent.
        split: ``train`` or ``val``.
    """

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        sub = _split_dir(split, {"train": "training", "val": "validation"}, "ADE20K")
        samples = _paired_files(root / "images" / sub, root / "annotations" / sub, ".jpg", ".png")
        super().__init__(samples, "ade20k", _shift_down_lut(), has_background=False, split=split)


class COCOStuff(SemsegDataset):
    """COCO-Stuff-171 in mmsegmentation's converted form (``*_labelTrainIds.png``: 0..170, 255 ignore).

    Args:
        root: The folder holding ``images/<split>2017`` and ``annotations/<split>2017``.
        split: ``train`` or ``val``.
    """

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        sub = _split_dir(split, {"train": "train2017", "val": "val2017"}, "COCO-Stuff")
        samples = _paired_files(root / "images" / sub, root / "annotations" / sub, ".jpg", "_labelTrainIds.png")
        super().__init__(samples, "coco_stuff171", _identity_lut(), has_background=False, split=split)


class Cityscapes(SemsegDataset):
    """Cityscapes-19 (``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelTrainIds.png``).

    The train-id files are produced by cityscapesScripts' ``createTrainIdLabelImgs`` (255 = ignore).

    Args:
        root: The Cityscapes folder holding ``leftImg8bit`` and ``gtFine``.
        split: ``train``, ``val`` or ``test``.
    """

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        sub = _split_dir(split, {"train": "train", "val": "val", "test": "test"}, "Cityscapes")
        samples = _paired_files(
            root / "leftImg8bit" / sub, root / "gtFine" / sub, "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
        )
        super().__init__(samples, "cityscapes", _identity_lut(), has_background=False, split=split)


class COCOObject(SemsegDataset):
    """COCO-Object (0 background, 1..80 things, 255 crowd) from label PNGs written by
    :func:`textseg.data.coco_object.convert_coco_object`.

    Args:
        root: The COCO folder: images in ``images/<split>2017`` or ``<split>2017``; labels in
            ``annotations/<split>2017/<stem>_instanceTrainIds.png``.
        split: ``train`` or ``val``.
    """

    LABEL_SUFFIX = coco_object.LABEL_SUFFIX

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        sub = _split_dir(split, {"train": "train2017", "val": "val2017"}, "COCO-Object")
        image_dir = root / "images" / sub
        if not image_dir.is_dir() and (root / sub).is_dir():
            image_dir = root / sub
        label_dir = root / "annotations" / sub
        if not label_dir.is_dir():
            raise DatasetError(
                f"COCO-Object label folder not found: {label_dir} (write it with tools/convert_coco_object.py)"
            )
        samples = _paired_files(image_dir, label_dir, ".jpg", self.LABEL_SUFFIX)
        super().__init__(samples, "coco_object", _identity_lut(), has_background=True, split=split)


SEMSEG_DATASETS: tuple[str, ...] = BENCHMARKS  # every benchmark with class names has a reader


def build_semseg_dataset(name: str, root: str | Path, split: str = "val") -> SemsegDataset:
    """Build a benchmark reader by name.

    Args:
        name: One of voc21, voc20, context60, context59, coco_object, ade20k, coco_stuff171, cityscapes.
        root: The dataset folder (see each reader).
        split: Split name.

    Raises:
        ConfigError: unknown name or split.
        DatasetError: a file or folder is missing.
    """
    if name == "voc21":
        return VOCSegmentation(root, split, background=True)
    if name == "voc20":
        return VOCSegmentation(root, split, background=False)
    if name == "context60":
        return PascalContext(root, split, background=True)
    if name == "context59":
        return PascalContext(root, split, background=False)
    if name == "coco_object":
        return COCOObject(root, split)
    if name == "ade20k":
        return ADE20K(root, split)
    if name == "coco_stuff171":
        return COCOStuff(root, split)
    if name == "cityscapes":
        return Cityscapes(root, split)
    raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(SEMSEG_DATASETS)}")
