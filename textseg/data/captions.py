"""Image-caption webdataset shards from a folder of images and a captions file.

Shard layout: one sample per (image, caption) pair, ``<key>.jpg`` (JPEG bytes) + ``<key>.txt`` (UTF-8 caption).

Captions files accepted by :func:`read_caption_file` (paths are relative to the images folder, or absolute):

* CSV with a header row: image column ``file`` or ``image``, caption column ``caption`` or ``text``.
* JSONL: one object per line with ``"file"`` or ``"image"`` and ``"caption"`` or ``"text"``.
* JSON: a COCO-captions file (``images`` with ``id``/``file_name`` + ``annotations`` with ``image_id``/``caption``)
  gives ONE sample per image with the FIRST caption of that image in file order (deterministic, no sampling);
  a JSON list of objects is read like JSONL.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from textseg.errors import DatasetError, UserError
from textseg.io import ShardWriter, atomic_write_text, image_file_to_jpeg

logger = logging.getLogger(__name__)

SHARD_PATTERN = "shard-%06d.tar"
SKIPPED_FILE = "skipped.jsonl"
_FILE_COLUMNS = ("file", "image")
_CAPTION_COLUMNS = ("caption", "text")


@dataclass
class SkippedItem:
    """An input item that was not written, with the reason."""

    index: int
    path: str
    reason: str
    key: str | None = None


@dataclass
class ShardReport:
    """What :func:`write_shards` did."""

    written: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)
    skipped_path: str | None = None

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        """Number of skipped items per reason category (the text before the first ':')."""
        return dict(Counter(item.reason.split(":", 1)[0] for item in self.skipped))

    def summary(self) -> str:
        """One line: samples written, shards, items skipped and where they are listed."""
        where = f" (see {self.skipped_path})" if self.skipped_path else ""
        return f"wrote {self.written} samples in {len(self.shards)} shards, skipped {len(self.skipped)}{where}"


def _sanitize_key(key: str) -> str:
    # webdataset splits keys from extensions at the first '.' of the base name; '/' would make sub-folders.
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def _check_item(path: Path, caption: Any, key: str, seen: set[str]) -> tuple[bytes | None, str | None]:
    """The JPEG bytes of a valid item, or None and the reason it is skipped."""
    if key in seen:
        return None, f"duplicate key: {key}"
    if not isinstance(caption, str) or not caption.strip():
        return None, "empty caption"
    if not path.is_file():
        return None, "missing file"
    try:
        return image_file_to_jpeg(path), None
    except Exception as err:  # PIL raises many types for bad files
        return None, f"bad image: {type(err).__name__}: {err}"


def write_shards(
    samples: Iterable[tuple[str | os.PathLike, str] | tuple[str | os.PathLike, str, str | None]],
    out_pattern: str = f"shards/{SHARD_PATTERN}",
    max_count: int = 1000,
    max_size: float = 1e9,
) -> ShardReport:
    """Validate image-caption pairs and write them as deterministic webdataset shards.

    Every bad item (missing or undecodable image, empty caption, duplicate key) is skipped AND reported in the
    returned :class:`ShardReport` and in ``skipped.jsonl`` next to the shards (always written, empty when nothing
    was skipped). JPEG files are stored byte for byte; other images are re-encoded (see
    :func:`textseg.io.image_file_to_jpeg`).

    Args:
        samples: ``(image_path, caption)`` or ``(image_path, caption, key)``. Without a key (or key None) the key
            is the item's position in ``samples`` (``%09d``), so keys stay stable when other items are skipped.
        out_pattern: Shard file pattern with one ``%d``-style field; its folder is created.
        max_count: Most samples per shard.
        max_size: Most bytes per shard (approximate, as in ``webdataset.ShardWriter``).

    Returns:
        The report.
    """
    report = ShardReport()
    seen: set[str] = set()
    with ShardWriter(out_pattern, maxcount=max_count, maxsize=max_size) as writer:
        for index, item in enumerate(samples):
            path, caption = Path(item[0]), item[1]
            given = item[2] if len(item) > 2 else None
            key = _sanitize_key(str(given)) if given is not None else f"{index:09d}"
            jpeg, reason = _check_item(path, caption, key, seen)
            if jpeg is None:
                report.skipped.append(SkippedItem(index, str(path), reason, key))
                logger.warning("skipping %s: %s", path, reason)
                continue
            seen.add(key)
            writer.write(key, {"jpg": jpeg, "txt": caption.strip()})
    report.written, report.shards = writer.count, list(writer.shards)
    report.skipped_path = str(Path(out_pattern).parent / SKIPPED_FILE)
    lines = [json.dumps({"index": s.index, "path": s.path, "key": s.key, "reason": s.reason}) for s in report.skipped]
    atomic_write_text(report.skipped_path, "".join(line + "\n" for line in lines))
    return report


def make_shards(
    images_dir: str | os.PathLike,
    captions_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_count: int = 1000,
    max_size_mb: float = 1000.0,
) -> ShardReport:
    """Write ``out_dir/shard-NNNNNN.tar`` (and ``skipped.jsonl``) from an images folder and a captions file.

    Args:
        images_dir: Folder the captions file's relative image paths start from.
        captions_file: CSV, JSONL or COCO captions JSON (see :func:`read_caption_file`).
        out_dir: Output folder (created).
        max_count: Most samples per shard.
        max_size_mb: Most megabytes (1e6 bytes) per shard.

    Raises:
        UserError: the images folder is missing or a limit is not positive.
        DatasetError: the captions file is missing or malformed.
    """
    if not Path(images_dir).is_dir():
        raise UserError(f"images folder not found: {images_dir}")
    if max_count < 1 or max_size_mb <= 0:
        raise UserError(f"max_count and max_size_mb must be positive, got {max_count} and {max_size_mb}")
    samples = read_caption_file(captions_file, images_dir)
    return write_shards(samples, os.path.join(out_dir, SHARD_PATTERN), max_count=max_count, max_size=max_size_mb * 1e6)


# --------------------------------------------------------------------------------------------------------------
# Captions files


def _pick(record: dict[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in record:
            return record[name]
    return None


def _record_pair(record: Any, where: str) -> tuple[str, str]:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object with 'file'/'image' and 'caption'/'text'")
    file, caption = _pick(record, _FILE_COLUMNS), _pick(record, _CAPTION_COLUMNS)
    if file is None or caption is None:
        missing = "'file' or 'image'" if file is None else "'caption' or 'text'"
        raise DatasetError(f"{where}: missing field {missing}")
    return str(file), str(caption)


def _read_csv(cpath: Path) -> list[tuple[str, str]]:
    with open(cpath, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        file_col = next((c for c in _FILE_COLUMNS if c in cols), None)
        cap_col = next((c for c in _CAPTION_COLUMNS if c in cols), None)
        if file_col is None or cap_col is None:
            missing = "'file' or 'image'" if file_col is None else "'caption' or 'text'"
            raise DatasetError(
                f"{cpath}: missing column {missing} in the header (found {cols}); accepted: file|image and caption|text"
            )
        return [(row[file_col] or "", row[cap_col] or "") for row in reader]


def _read_jsonl(cpath: Path) -> list[tuple[str, str]]:
    out = []
    with open(cpath, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{cpath}:{lineno}: invalid JSON ({err.msg})") from err
            out.append(_record_pair(record, f"{cpath}:{lineno}"))
    return out


def _read_json(cpath: Path) -> list[tuple[str, str, str | None]]:
    try:
        data = json.loads(cpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{cpath}: invalid JSON ({err.msg})") from err
    if isinstance(data, list):
        return [(*_record_pair(r, f"{cpath}[{i}]"), None) for i, r in enumerate(data)]
    if not (isinstance(data, dict) and "images" in data and "annotations" in data):
        raise DatasetError(f"{cpath}: expected a COCO captions object (images + annotations) or a list of records")
    first: dict[Any, str] = {}
    for ann in data["annotations"]:
        if "image_id" not in ann or "caption" not in ann:
            raise DatasetError(f"{cpath}: a COCO annotation lacks 'image_id' or 'caption'")
        first.setdefault(ann["image_id"], ann["caption"])
    out = []
    for img in data["images"]:
        if "id" not in img or "file_name" not in img:
            raise DatasetError(f"{cpath}: a COCO image entry lacks 'id' or 'file_name'")
        # images without any caption are reported by write_shards as "empty caption"
        out.append((img["file_name"], first.get(img["id"], ""), f"coco{img['id']}"))
    return out


def read_caption_file(
    captions_file: str | os.PathLike, images_dir: str | os.PathLike
) -> list[tuple[str, str, str | None]]:
    """Read ``(image_path, caption, key)`` triples from a CSV, JSONL or (COCO) JSON captions file.

    Keys are None (positional) except for COCO, where the key is ``coco<image_id>``.

    Raises:
        DatasetError: the file is missing or malformed; the message names the file (and line / column).
    """
    cpath, root = Path(captions_file), Path(images_dir)
    if not cpath.is_file():
        raise DatasetError(f"captions file not found: {cpath}")
    suffix = cpath.suffix.lower()
    if suffix == ".csv":
        items: list[tuple] = [(f, c, None) for f, c in _read_csv(cpath)]
    elif suffix in (".jsonl", ".ndjson"):
        items = [(f, c, None) for f, c in _read_jsonl(cpath)]
    elif suffix == ".json":
        items = _read_json(cpath)
    else:
        raise DatasetError(f"{cpath}: unsupported captions file type {suffix!r}; use .csv, .jsonl or .json")
    return [(str(Path(f) if Path(f).is_absolute() else root / f), c, k) for f, c, k in items]
