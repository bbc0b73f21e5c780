"""Image-caption webdataset shards from a folder of images and a captions file.

Shard layout: one sample per (image, caption) pair, ``<key>.jpg`` (JPEG bytes) + ``<key>.txt`` (UTF-8 caption).

Captions files accepted by :func:`read_caption_file` (UTF-8, with or without a BOM; LF or CRLF line endings):

* CSV with a header row (its first non-blank line; names are matched case- and space-insensitively): image column
  ``file`` or ``image``, caption column ``caption`` or ``text``. ONE ROW PER LINE: a quoted field may hold commas
  and quotes but not a line break. A row whose quote is not closed on its own line is skipped as "unterminated
  quote" and reading goes on at the next line, so a stray quote costs its own row only and never swallows the rows
  after it (a caption spanning lines, valid CSV as it may be, is therefore skipped line by line, each line counted).
* JSONL: one object per line with ``"file"`` or ``"image"`` and ``"caption"`` or ``"text"``.
* JSON: a COCO-captions file (``images`` with ``id``/``file_name`` + ``annotations`` with ``image_id``/``caption``)
  gives ONE sample per image with the FIRST caption of that image in file order (deterministic, no sampling);
  a JSON list of objects is read like JSONL.

Rows: each non-blank line after the CSV header, each non-blank JSONL line, each element of a JSON list and each
COCO ``images`` entry is one row, and every row is either written as one sample or skipped with its line (or index)
and reason, in the report and in ``skipped.jsonl``: rows in = samples written + rows skipped, always. Rows skipped:

* unparsable rows: an unterminated quote or a wrong number of CSV fields, an invalid JSON line, a record that is
  not an object or lacks the file or caption field;
* captions that are not strings, empty or blank, or hold a control character (NUL, ESC, DEL, ...) or an invalid
  one (a lone surrogate); tabs and line breaks inside a caption become spaces, and captions are stripped;
* image names that are not strings, empty, hold a control character, or lead outside the images folder (``../``,
  an absolute path elsewhere; checked on the path's text, so symlinks placed inside the folder are followed);
  names are stripped of surrounding spaces;
* the same image with the same caption again ("duplicate row"; the same image with OTHER captions gives one sample
  per caption), a duplicate key, a missing, empty or undecodable image.

Whole-file problems are one-line :class:`~textseg.errors.DatasetError` s naming the file (and line): not found, a
folder, not UTF-8 (the first bad line), no usable header, invalid JSON, not a COCO object nor a list, no rows.
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
from typing import Any, Iterable, Sequence, Union

from textseg.errors import DatasetError, UserError
from textseg.io import ShardWriter, atomic_write_text, check_writable_folder, image_file_to_jpeg

logger = logging.getLogger(__name__)

SHARD_PATTERN = "shard-%06d.tar"
SKIPPED_FILE = "skipped.jsonl"
_FILE_COLUMNS = ("file", "image")
_CAPTION_COLUMNS = ("caption", "text")
_SHARD_NAME = re.compile(r"shard-\d+\.tar")
# tabs and line breaks inside a caption become spaces; any other control or surrogate character rejects it
_SPACES = str.maketrans({c: " " for c in "\t\n\r\v\f\x85\u2028\u2029"})
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_ABSENT = object()


@dataclass
class CaptionRow:
    """One row of a captions file: an image path and its caption, or why the row cannot be used.

    Attributes:
        path: Image path (absolute, inside the images folder), or the raw name when the row is unusable.
        caption: The caption as read (any JSON type); checked by :func:`write_shards`.
        key: Sample key, or None for the row's position.
        line: 1-based line in the captions file (CSV, JSONL); None for JSON.
        reason: Why the row is skipped ("category: detail"), or None.
    """

    path: str
    caption: Any
    key: str | None = None
    line: int | None = None
    reason: str | None = None


@dataclass
class SkippedItem:
    """An input row that was not written, with the reason."""

    index: int
    path: str
    reason: str
    key: str | None = None
    line: int | None = None


@dataclass
class ShardReport:
    """What :func:`write_shards` did: ``rows == written + len(skipped)``."""

    written: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)
    skipped_path: str | None = None
    rows: int = 0

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        """Number of skipped items per reason category (the text before the first ':')."""
        return dict(Counter(item.reason.split(":", 1)[0] for item in self.skipped))

    def skipped_lines(self, category: str) -> list[int]:
        """Lines of the captions file skipped for a reason category (rows without a line are left out)."""
        return [s.line for s in self.skipped if s.line is not None and s.reason.split(":", 1)[0] == category]

    def summary(self) -> str:
        """One line: rows read, samples written, shards, rows skipped and where they are listed."""
        where = f" (see {self.skipped_path})" if self.skipped_path else ""
        return (
            f"read {self.rows} rows: wrote {self.written} samples in {len(self.shards)} shards, "
            f"skipped {len(self.skipped)}{where}"
        )


Sample = Union[CaptionRow, tuple]


def _sanitize_key(key: str) -> str:
    # webdataset splits keys from extensions at the first '.' of the base name; '/' would make sub-folders.
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _clean_caption(caption: Any) -> tuple[str | None, str | None]:
    """The caption to write (spaces normalised, stripped), or None and the reason it is rejected."""
    if not isinstance(caption, str):
        return None, f"bad caption: not a string ({_json_type(caption)})"
    text = caption.translate(_SPACES).strip()
    if not text:
        return None, "empty caption"
    bad = _BAD_CHARS.search(text)
    if bad:
        kind = "invalid" if 0xD800 <= ord(bad.group()) <= 0xDFFF else "control"
        return None, f"bad caption: {kind} character U+{ord(bad.group()):04X}"
    return text, None


def _read_image(path: str) -> tuple[bytes | None, str | None]:
    """The JPEG bytes of an image file, or None and the reason it is skipped."""
    try:
        p = Path(path)
        if not p.exists():
            return None, "missing file"
        if not p.is_file():
            return None, "not a file"
        if p.stat().st_size == 0:
            return None, "bad image: empty file"
    except (OSError, ValueError) as err:
        return None, f"bad file name: {err}"
    try:
        return image_file_to_jpeg(p), None
    except Exception as err:  # PIL raises many types for bad files
        return None, " ".join(f"bad image: {type(err).__name__}: {err}".split())


def _as_row(item: Sample) -> CaptionRow:
    if isinstance(item, CaptionRow):
        return item
    return CaptionRow(os.fspath(item[0]), item[1], item[2] if len(item) > 2 else None)


def write_shards(
    samples: Iterable[Sample],
    out_pattern: str = f"shards/{SHARD_PATTERN}",
    max_count: int = 1000,
    max_size: float = 1e9,
) -> ShardReport:
    """Validate image-caption rows and write them as deterministic webdataset shards.

    Every row is written or skipped: rows already marked unusable by the reader, bad captions (see the module
    docstring), duplicate keys or rows, missing or undecodable images are skipped AND reported in the returned
    :class:`ShardReport` and in ``skipped.jsonl`` next to the shards (always written, empty when nothing was
    skipped). JPEG files are stored byte for byte; other images are re-encoded (see
    :func:`textseg.io.image_file_to_jpeg`).

    Args:
        samples: :class:`CaptionRow` s, or ``(image_path, caption)`` / ``(image_path, caption, key)`` tuples. Without
            a key (or key None) the key is the row's position in ``samples`` (``%09d``), so keys stay stable when
            other rows are skipped.
        out_pattern: Shard file pattern with one ``%d``-style field; its folder is created.
        max_count: Most samples per shard.
        max_size: Most bytes per shard (approximate, as in ``webdataset.ShardWriter``).

    Returns:
        The report.
    """
    report = ShardReport()
    seen_keys: set[str] = set()
    seen_rows: dict[tuple[str, str], str] = {}
    with ShardWriter(out_pattern, maxcount=max_count, maxsize=max_size) as writer:
        for index, item in enumerate(samples):
            report.rows += 1
            row = _as_row(item)
            key = _sanitize_key(str(row.key)) if row.key is not None else f"{index:09d}"
            caption, reason, jpeg = None, row.reason, None
            if reason is None and not key:
                reason = "bad key: empty"
            if reason is None and key in seen_keys:
                reason = f"duplicate key: {key}"
            if reason is None:
                caption, reason = _clean_caption(row.caption)
            if reason is None and (row.path, caption) in seen_rows:
                reason = f"duplicate row: same image and caption as {seen_rows[row.path, caption]}"
            if reason is None:
                jpeg, reason = _read_image(row.path)
            if reason is not None:
                report.skipped.append(SkippedItem(index, row.path, reason, key, row.line))
                where = f"line {row.line}" if row.line is not None else f"row {index}"
                logger.warning("skipping %s (%s): %s", where, row.path, reason)
                continue
            seen_keys.add(key)
            seen_rows[row.path, caption] = f"line {row.line}" if row.line is not None else f"row {index}"
            writer.write(key, {"jpg": jpeg, "txt": caption})
    report.written, report.shards = writer.count, list(writer.shards)
    report.skipped_path = str(Path(out_pattern % 0).parent / SKIPPED_FILE)
    lines = [
        json.dumps({"index": s.index, "line": s.line, "path": s.path, "key": s.key, "reason": s.reason})
        for s in report.skipped
    ]
    atomic_write_text(report.skipped_path, "".join(line + "\n" for line in lines))
    return report


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that is a file, cannot be written, or holds shards (unless ``overwrite``)."""
    check_writable_folder(out)
    if out.is_dir() and not overwrite:
        try:
            old = sorted(p.name for p in out.iterdir() if _SHARD_NAME.fullmatch(p.name) or p.name == SKIPPED_FILE)
        except OSError as err:
            raise UserError(f"cannot read output folder {out}: {err.strerror or err}") from None
        if old:
            raise UserError(
                f"{out} already holds shards ({', '.join(old[:3])}{', ...' if len(old) > 3 else ''}); "
                "pass --overwrite to replace them, or choose another folder"
            )


def make_shards(
    images_dir: str | os.PathLike,
    captions_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_count: int = 1000,
    max_size_mb: float = 1000.0,
    overwrite: bool = False,
) -> ShardReport:
    """Write ``out_dir/shard-NNNNNN.tar`` (and ``skipped.jsonl``) from an images folder and a captions file.

    Args:
        images_dir: Folder the captions file's image paths lie in (relative paths start from it).
        captions_file: CSV, JSONL or COCO captions JSON (see :func:`read_caption_file`).
        out_dir: Output folder (created).
        max_count: Most samples per shard.
        max_size_mb: Most megabytes (1e6 bytes) per shard.
        overwrite: Replace the shards of an earlier run in ``out_dir`` (and delete those this run does not rewrite).

    Raises:
        UserError: the images folder is missing, a limit is not positive, ``out_dir`` is a file, holds shards
            (without ``overwrite``) or cannot be written.
        DatasetError: the captions file is missing, malformed or has no rows, or every row was skipped (after
            ``skipped.jsonl`` is written).
    """
    images, out = Path(images_dir), Path(out_dir)
    if not images.is_dir():
        raise UserError(f"images folder {'is a file' if images.exists() else 'not found'}: {images}")
    if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
        raise UserError(f"--max-count must be a positive integer, got {max_count}")
    if not (isinstance(max_size_mb, (int, float)) and max_size_mb > 0):  # also refuses NaN
        raise UserError(f"--max-size-mb must be positive, got {max_size_mb}")
    _check_out_dir(out, overwrite)
    rows = read_caption_file(captions_file, images)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:  # first: an interrupted run must not leave old shards mixed with new ones
            for stale in out.iterdir():
                if _SHARD_NAME.fullmatch(stale.name) or stale.name == SKIPPED_FILE:
                    stale.unlink()
        pattern = str(out).replace("%", "%%") + "/" + SHARD_PATTERN  # a '%' in the folder name is a character
        report = write_shards(rows, pattern, max_count=max_count, max_size=max_size_mb * 1e6)
    except OSError as err:
        raise UserError(f"cannot write shards to {out}: {err.strerror or err}") from err
    if report.written == 0:
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(report.skipped_by_reason.items()))
        raise DatasetError(
            f"no samples written: all {report.rows} rows of {captions_file} were skipped ({counts}; "
            f"see {report.skipped_path})"
        )
    return report


# --------------------------------------------------------------------------------------------------------------
# Captions files


def _pick(record: dict[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in record:
            return record[name]
    return _ABSENT


def _image_path(name: Any, root: str) -> tuple[str, str | None]:
    """The absolute image path for a name from a captions file, or the raw name and the reason it is refused."""
    if not isinstance(name, str):
        return "", f"bad file name: not a string ({_json_type(name)})"
    name = name.strip()
    if not name:
        return name, "bad file name: empty"
    if _BAD_CHARS.search(name):
        return name.encode("unicode_escape").decode("ascii"), "bad file name: control character"
    path = os.path.normpath(os.path.join(root, name))  # an absolute name replaces root
    if os.path.commonpath([root, path]) != root:
        return name, f"outside images folder: {name}"
    return path, None


def _record_row(record: Any, root: str, line: int | None, key: str | None = None) -> CaptionRow:
    """A row from a JSON(L) record: an object with a file and a caption field."""
    if not isinstance(record, dict):
        return CaptionRow("", None, key, line, f"bad record: expected an object, got {_json_type(record)}")
    name, caption = _pick(record, _FILE_COLUMNS), _pick(record, _CAPTION_COLUMNS)
    if name is _ABSENT or caption is _ABSENT:
        missing = "'file' or 'image'" if name is _ABSENT else "'caption' or 'text'"
        return CaptionRow(name if isinstance(name, str) else "", None, key, line, f"missing field: {missing}")
    path, reason = _image_path(name, root)
    return CaptionRow(path, caption, key, line, reason)


def _lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of the non-blank lines (LF or CRLF)."""
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if line.strip():
            out.append((lineno, line))
    return out


def _read_csv(cpath: Path, text: str, root: str) -> list[CaptionRow]:
    lines = _lines(text)
    if not lines:
        raise DatasetError(f"no caption rows in {cpath}: the file is empty")
    head_no, head = lines[0]
    try:
        cols = [c.strip().lower() for c in next(csv.reader([head], strict=True))]
    except csv.Error as err:
        raise DatasetError(f"{cpath}:{head_no}: unreadable CSV header ({err})") from None
    file_col = next((c for c in _FILE_COLUMNS if c in cols), None)
    cap_col = next((c for c in _CAPTION_COLUMNS if c in cols), None)
    if file_col is None or cap_col is None:
        missing = "'file' or 'image'" if file_col is None else "'caption' or 'text'"
        raise DatasetError(
            f"{cpath}:{head_no}: missing column {missing} in the header (found {cols}); the first line must name "
            "the columns: file|image and caption|text"
        )
    for col in (file_col, cap_col):
        if cols.count(col) > 1:
            raise DatasetError(f"{cpath}:{head_no}: column {col!r} appears {cols.count(col)} times in the header")
    fi, ci = cols.index(file_col), cols.index(cap_col)
    if len(lines) == 1:
        raise DatasetError(f"no caption rows in {cpath}: only a header")
    rows = []
    for lineno, line in lines[1:]:
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as err:
            try:  # for the file name in the skip record
                loose = next(csv.reader([line]), [])
            except csv.Error:  # a field over the csv module's size limit, a bare carriage return
                loose = line.split(",")
            name = loose[fi] if len(loose) > fi else ""
            reason = "unterminated quote" if "end of data" in str(err) else f"bad row: {err}"
            rows.append(CaptionRow(name, None, None, lineno, reason))
            continue
        if len(fields) != len(cols):
            name = fields[fi] if len(fields) > fi else ""
            reason = f"bad row: {len(fields)} fields, the header has {len(cols)} (a caption with commas needs quotes)"
            rows.append(CaptionRow(name, None, None, lineno, reason))
            continue
        path, reason = _image_path(fields[fi], root)
        rows.append(CaptionRow(path, fields[ci], None, lineno, reason))
    return rows


def _read_jsonl(cpath: Path, text: str, root: str) -> list[CaptionRow]:
    rows = []
    for lineno, line in _lines(text):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            msg = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            rows.append(CaptionRow("", None, None, lineno, f"invalid JSON: {msg}"))
            continue
        rows.append(_record_row(record, root, lineno))
    if not rows:
        raise DatasetError(f"no caption rows in {cpath}: the file is empty")
    return rows


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _read_json(cpath: Path, text: str, root: str) -> list[CaptionRow]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{cpath}:{err.lineno}: invalid JSON ({err.msg})") from None
    except RecursionError:
        raise DatasetError(f"{cpath}: invalid JSON (nested too deeply)") from None
    if isinstance(data, list):
        if not data:
            raise DatasetError(f"no caption rows in {cpath}: the list is empty")
        return [_record_row(record, root, None) for record in data]
    if not (isinstance(data, dict) and "images" in data and "annotations" in data):
        found = f"an object with keys {sorted(data)[:5]}" if isinstance(data, dict) else f"a {_json_type(data)}"
        raise DatasetError(
            f"{cpath}: expected a COCO captions object ('images' and 'annotations') or a list of records, "
            f"found {found}"
        )
    for name in ("images", "annotations"):
        if not isinstance(data[name], list):
            raise DatasetError(f"{cpath}: {name!r} must be a list, got a {_json_type(data[name])}")
    first: dict[Any, Any] = {}
    for i, ann in enumerate(data["annotations"]):
        if not (isinstance(ann, dict) and "image_id" in ann and "caption" in ann and _is_id(ann["image_id"])):
            raise DatasetError(f"{cpath}: annotations[{i}] is not an object with an 'image_id' and a 'caption'")
        first.setdefault(ann["image_id"], ann["caption"])
    if not data["images"]:
        raise DatasetError(f"no caption rows in {cpath}: 'images' is empty")
    rows = []
    for img in data["images"]:
        if not isinstance(img, dict):
            rows.append(CaptionRow("", None, None, None, f"bad record: expected an object, got {_json_type(img)}"))
            continue
        if "id" not in img or "file_name" not in img or not _is_id(img["id"]):
            what = "'file_name'" if "file_name" not in img else "'id' (a number or string)"
            rows.append(CaptionRow("", None, None, None, f"missing field: {what}"))
            continue
        key = f"coco{img['id']}"
        path, reason = _image_path(img["file_name"], root)
        if reason is None and img["id"] not in first:
            reason = f"no caption: no annotation has image_id {img['id']}"
        rows.append(CaptionRow(path, first.get(img["id"]), key, None, reason))
    return rows


def _read_text(cpath: Path) -> str:
    """The file as text (UTF-8, an optional BOM dropped); a DatasetError naming the first line that is not UTF-8."""
    try:
        data = cpath.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read captions file {cpath}: {err.strerror or err}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        hint = ", it looks like UTF-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise DatasetError(
            f"{cpath}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}{hint}); save the file as UTF-8"
        ) from None


def read_caption_file(captions_file: str | os.PathLike, images_dir: str | os.PathLike) -> list[CaptionRow]:
    """Read the rows of a CSV, JSONL or (COCO) JSON captions file (see the module docstring).

    Unusable rows are returned with their reason (they are counted as skipped by :func:`write_shards`). Paths are
    absolute; keys are None (positional) except for COCO, where the key is ``coco<image_id>``.

    Raises:
        DatasetError: the file is missing, a folder, not UTF-8, malformed as a whole, or has no rows; the message
            names the file (and line).
    """
    cpath, root = Path(captions_file), os.path.abspath(images_dir)
    if cpath.is_dir():
        raise DatasetError(f"captions file is a folder: {cpath}")
    if not cpath.is_file():
        raise DatasetError(f"captions file not found: {cpath}")
    readers = {".csv": _read_csv, ".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json}
    suffix = cpath.suffix.lower()
    if suffix not in readers:
        raise DatasetError(f"{cpath}: unsupported captions file type {suffix!r}; use .csv, .jsonl or .json")
    return readers[suffix](cpath, _read_text(cpath), root)
