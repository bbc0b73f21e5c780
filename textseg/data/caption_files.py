"""Captions files: the rows of a CSV, JSONL or JSON (COCO captions) file as image paths and captions.

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

Unusable rows are returned with their reason (:attr:`CaptionRow.reason`), never dropped:
:func:`~textseg.data.caption_shards.write_shards` reports them.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from textseg.errors import DatasetError

_FILE_COLUMNS = ("file", "image")
_CAPTION_COLUMNS = ("caption", "text")
_ABSENT = object()
# a control or surrogate character in a caption or file name rejects it
BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


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


def _pick(record: dict[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in record:
            return record[name]
    return _ABSENT


def _image_path(name: Any, root: str) -> tuple[str, str | None]:
    """The absolute image path for a name from a captions file, or the raw name and the reason it is refused."""
    if not isinstance(name, str):
        return "", f"bad file name: not a string ({json_type(name)})"
    name = name.strip()
    if not name:
        return name, "bad file name: empty"
    if BAD_CHARS.search(name):
        return name.encode("unicode_escape").decode("ascii"), "bad file name: control character"
    path = os.path.normpath(os.path.join(root, name))  # an absolute name replaces root
    if os.path.commonpath([root, path]) != root:
        return name, f"outside images folder: {name}"
    return path, None


def _record_row(record: Any, root: str, line: int | None, key: str | None = None) -> CaptionRow:
    """A row from a JSON(L) record: an object with a file and a caption field."""
    if not isinstance(record, dict):
        return CaptionRow("", None, key, line, f"bad record: expected an object, got {json_type(record)}")
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
        found = f"an object with keys {sorted(data)[:5]}" if isinstance(data, dict) else f"a {json_type(data)}"
        raise DatasetError(
            f"{cpath}: expected a COCO captions object ('images' and 'annotations') or a list of records, "
            f"found {found}"
        )
    for name in ("images", "annotations"):
        if not isinstance(data[name], list):
            raise DatasetError(f"{cpath}: {name!r} must be a list, got a {json_type(data[name])}")
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
            rows.append(CaptionRow("", None, None, None, f"bad record: expected an object, got {json_type(img)}"))
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


__all__ = ["BAD_CHARS", "CaptionRow", "json_type", "read_caption_file"]
