"""Reading and writing: images, JPEG, palette PNG label maps, COCO RLE masks, webdataset shards.

Every file this package writes goes through :func:`atomic_write_bytes` (or :class:`ShardWriter`, which commits
each shard the same way): the data goes to a temporary file in the target folder and is renamed over the target
only when complete, so an interrupted run never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from textseg.errors import UserError

ImageLike = Image.Image | np.ndarray | str | Path
JPEG_QUALITY = 95


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes


class _AtomicFile:
    """A temporary file beside ``path`` that becomes ``path`` on :meth:`commit` (or vanishes on :meth:`discard`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        # os.open with O_EXCL creates the file with the usual permissions (0666 less the umask), unlike mkstemp.
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` only when the ``with`` block ends without an error; a crash
    mid-write leaves the old file (or none) and no partial one."""
    out = _AtomicFile(path)
    try:
        yield out.file
    except BaseException:
        out.discard()
        raise
    out.commit()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))


# ---------------------------------------------------------------------------------------------------------------
# Images


def load_image(image: ImageLike) -> np.ndarray:
    """Read an image (path, PIL image or array) as an (H, W, 3) uint8 RGB array.

    Grey images are repeated to three channels, an alpha channel is dropped, and float arrays are scaled from
    0..1 (or clipped to 0..255 when their maximum is above 1).

    Raises:
        UserError: the file cannot be read as an image, or the array is not (H, W), (H, W, 3) or (H, W, 4).
    """
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(f"cannot read image {image}: {err.__class__.__name__}") from None
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))  # a writable copy: torch refuses read-only buffers
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"expected an (H, W, 3) image array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255 if arr.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def encode_jpeg(image: Image.Image | np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes (4:4:4, no metadata) of an RGB image or an (H, W, 3) uint8 array."""
    # 4:4:4 (no chroma subsampling): 2x2 chroma blocks would smear the colour of thin outlines in small images.
    return _encode(_as_pil(image).convert("RGB"), "JPEG", quality=quality, subsampling=0)


def image_file_to_jpeg(path: str | Path) -> bytes:
    """JPEG bytes of an image file: the file's own bytes if it is a JPEG, else the image re-encoded.

    Transparent images are composited over white (dropping the alpha channel would expose whatever colour the
    transparent pixels hold, often black).

    Raises:
        OSError, PIL errors: the file is missing or not a readable image.
    """
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.format == "JPEG":
            return data
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = img.convert("RGB")
    return encode_jpeg(rgb)


def encode_png(image: Image.Image | np.ndarray, **options: Any) -> bytes:
    """PNG bytes of a PIL image or a uint8 array ((H, W) grey or (H, W, 3) RGB); ``options`` go to PIL."""
    return _encode(_as_pil(image), "PNG", **options)


def save_png(image: Image.Image | np.ndarray, path: str | Path, **options: Any) -> Path:
    """Write :func:`encode_png` of ``image`` to ``path`` atomically; returns the path."""
    atomic_write_bytes(path, encode_png(image, **options))
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# Label maps and masks


def encode_label_png(labels: np.ndarray) -> bytes:
    """Palette ("P" mode) PNG bytes of an (H, W) label map with the VOC colours.

    Raises:
        ValueError: the map is not 2-D or holds values outside 0..255.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map is (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"palette PNGs hold labels 0..255, got {labels.min()}..{labels.max()}")
    from textseg.visualize import voc_palette  # not at the top: visualize imports textseg.data, which imports io

    img = Image.fromarray(labels.astype(np.uint8))
    img.putpalette(voc_palette().ravel().tolist())  # turns the "L" image into a "P" image
    return _encode(img, "PNG")


def write_label_png(labels: np.ndarray, path: str | Path) -> None:
    """Write :func:`encode_label_png` of ``labels`` to ``path`` atomically."""
    atomic_write_bytes(path, encode_label_png(labels))


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [h, w], "counts": str}`` of an (H, W) mask (non-zero = inside)."""
    from pycocotools import mask as mask_utils

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(bool).astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def labels_to_rles(labels: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`mask_to_rle` of every label present in a label map except 0 (background), keyed by ``names[label]``.

    Raises:
        ValueError: a label present has no name.
    """
    labels = np.asarray(labels)
    out = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        if not 0 < value < len(names):
            raise ValueError(f"label {value} has no name (names has {len(names)} entries)")
        out[names[int(value)]] = mask_to_rle(labels == value)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Webdataset shards


class ShardWriter:
    """Deterministic webdataset tar shards, written with webdataset's own ``ShardWriter`` / ``TarWriter``.

    Every tar header is fixed (mtime 0, uid/gid 0, no user or group names, mode 0644) and a sample's members are
    written in sorted extension order, so equal samples give equal bytes. A new shard starts when the current
    one holds ``maxcount`` samples or ``maxsize`` payload bytes; no shard is created before the first sample.
    Each shard is committed atomically when it is full or on :meth:`close`.

    Args:
        pattern: Shard path pattern with one ``%d`` field (``"out/shard-%06d.tar"``); or None with ``folder``.
        folder: Folder for ``<prefix>-000000.tar``, ``<prefix>-000001.tar``, ...
        prefix: Shard name prefix with ``folder``.
        maxcount: Most samples per shard.
        maxsize: Most payload bytes per shard (checked before each sample, as webdataset does).

    Attributes:
        shards: Paths of the shards written so far, in order (strings, as the pattern gives them).
        count: Samples written.
    """

    def __init__(
        self,
        pattern: str | Path | None = None,
        *,
        folder: str | Path | None = None,
        prefix: str = "shard",
        maxcount: int = 1000,
        maxsize: float = 3e9,
    ) -> None:
        if (pattern is None) == (folder is None):
            raise ValueError("give exactly one of pattern and folder")
        if maxcount < 1 or maxsize <= 0:
            raise ValueError(f"maxcount and maxsize must be positive, got {maxcount} and {maxsize}")
        self.pattern = str(pattern) if pattern is not None else str(Path(folder) / f"{prefix}-%06d.tar")
        try:
            self.pattern % 0
        except TypeError as err:
            raise ValueError(f"shard pattern needs one %d field: {self.pattern!r}") from err
        Path(self.pattern).parent.mkdir(parents=True, exist_ok=True)
        self.maxcount, self.maxsize = maxcount, maxsize
        self.shards: list[str] = []
        self.count = 0
        self._writer: Any = None
        self._open: _AtomicFile | None = None
        self._failed = False

    def _opener(self, fname: str) -> BinaryIO:
        self._open = _AtomicFile(fname)
        self.shards.append(fname)
        return self._open.file

    def _commit(self, fname: str) -> None:
        # webdataset closes the tar stream but not a file it got from an opener: commit (close + rename) here.
        if self._failed:  # a shard cut short by an error is not committed
            self._open.discard()
            self.shards.remove(fname)
        else:
            self._open.commit()
        self._open = None

    def write(self, key: str, files: Mapping[str, bytes | str]) -> None:
        """Add one sample: ``files`` maps extensions ("jpg", "txt", "json") to bytes (str is written as UTF-8).

        Raises:
            ValueError: the key is empty or holds "." or "/" (webdataset readers would split it there).
        """
        if not key or "." in key or "/" in key:
            raise ValueError(f"a sample key must be non-empty without '.' or '/': {key!r}")
        if self._writer is None:
            import webdataset as wds

            self._writer = wds.ShardWriter(
                self.pattern, maxcount=self.maxcount, maxsize=self.maxsize, post=self._commit, opener=self._opener,
                verbose=0, encoder=False, user="", group="", mode=0o644, mtime=0,
            )  # fmt: skip
        sample = {ext: data.encode("utf-8") if isinstance(data, str) else data for ext, data in files.items()}
        self._writer.write({"__key__": key, **sample})
        self.count += 1

    def close(self) -> None:
        """Finish and commit the current shard (safe to call twice)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self._failed = exc_type is not None
        self.close()
