"""Image-caption webdataset shards from a folder of images and a captions file.

Shard layout: one sample per (image, caption) pair, ``<key>.jpg`` (JPEG bytes) + ``<key>.txt`` (UTF-8 caption).

The captions file is read by :func:`~textseg.data.caption_files.read_caption_file` (its formats are described
there). Rows: each non-blank line after the CSV header, each non-blank JSONL line, each element of a JSON list and each
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

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

from textseg.errors import DatasetError, UserError
from textseg.data.caption_files import BAD_CHARS, CaptionRow, json_type, read_caption_file
from textseg.io import ShardWriter, atomic_write_text, check_writable_folder, image_file_to_jpeg

logger = logging.getLogger(__name__)

SHARD_PATTERN = "shard-%06d.tar"
SKIPPED_FILE = "skipped.jsonl"
_SHARD_NAME = re.compile(r"shard-\d+\.tar")
# tabs and line breaks inside a caption become spaces; any other control or surrogate character rejects it
_SPACES = str.maketrans({c: " " for c in "\t\n\r\v\f\x85\u2028\u2029"})


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


def _clean_caption(caption: Any) -> tuple[str | None, str | None]:
    """The caption to write (spaces normalised, stripped), or None and the reason it is rejected."""
    if not isinstance(caption, str):
        return None, f"bad caption: not a string ({json_type(caption)})"
    text = caption.translate(_SPACES).strip()
    if not text:
        return None, "empty caption"
    bad = BAD_CHARS.search(text)
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
