"""Reading and writing: images, JPEG, palette PNG label maps, COCO RLE masks, webdataset shards.

Every file this package writes goes through :func:`atomic_write_bytes` (or :class:`ShardWriter`, which commits
each shard the same way): the data goes to a temporary file in the target folder and is renamed over the target
only when complete, so an interrupted run never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def image_key(image: np.ndarray) -> bytes:
    """A cache key of an image array's content and shape."""
    return hashlib.sha1(np.ascontiguousarray(image).data).digest() + str(image.shape).encode()


class ImageCache:
    """A small least-recently-used cache of per-image results, keyed by the image's content (:func:`image_key`).

    Args:
        size: the most images kept.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[bytes, Any] = OrderedDict()

    def get(self, image: np.ndarray, compute: Callable[[], Any]) -> Any:
        """The cached result for ``image``, or ``compute()`` stored for it (the oldest entry then dropped)."""
        key = image_key(image)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = compute()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))


def check_writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """Check, before any work and without creating anything, that ``path`` is or can become a folder this
    process can write in (by creating and removing a probe file in its nearest existing folder, which holds for
    root and for file systems whose permission bits say little).

    Args:
        path: the folder.
        what: how the error names it (the CLI passes ``--out``).

    Raises:
        ConfigError: it is an existing file, lies below a file, or cannot be written in.
    """
    from textseg.errors import ConfigError

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} {out} is an existing file, not a folder")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {out} cannot be created: {existing} is a file")
    probe = existing / f".textseg-write-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise ConfigError(f"{what} {out} is not writable ({existing}: {err.strerror or err})") from None
    probe.unlink()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Images


# The most pixels :func:`load_image` decodes from a file by default: 16000 x 16000. Beyond it an image is refused
# before decoding (one line saying how to raise the limit); Pillow's own check stops at 179 MP with a traceback.
MAX_PIXELS = 256_000_000
_PIL_LIMIT = threading.Lock()


def _open_without_pil_limit(path: str | Path | BinaryIO) -> Image.Image:
    """``Image.open`` with Pillow's decompression-bomb check (made in ``open``) switched off for this call only:
    :func:`load_image` applies its own limit from the header."""
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """An (H, W, 3) uint8 array of a PIL image, high bit depths scaled down (not clipped)."""
    if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grey (PNG, TIFF): 65535 is white
        grey = ((np.asarray(im).clip(0, 65535).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":  # float TIFF
        return _array_to_rgb(np.asarray(im))
    if im.mode != "RGB":
        im = im.convert("RGB")
    # Copied a band of rows at a time: np.array(im) would hold a bytes copy of the whole image besides the array.
    w, h = im.size
    out = np.empty((h, w, 3), dtype=np.uint8)
    step = max(1, (1 << 24) // max(1, 3 * w))
    for y in range(0, h, step):
        out[y: y + step] = np.asarray(im.crop((0, y, w, min(h, y + step))))
    return out


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {arr.shape}")
    arr = arr[..., :3] if arr.shape[2] != 1 else np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(arr * (255 if arr.max() <= 1.0 else 1), 0, 255).astype(np.uint8)  # truncated
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise UserError(f"expected an image array of numbers, got dtype {arr.dtype}")


def load_image(image: ImageLike, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Read an image (path, PIL image or array) as an (H, W, 3) uint8 RGB array, upright.

    A file's EXIF orientation is applied (as viewers show the photo). Grey images are repeated to three channels
    and an alpha channel is dropped. High bit depths are scaled, not clipped: 16-bit (files and uint16 arrays)
    by 1/257; float arrays from 0..1 (or clipped to 0..255 when their maximum is above 1); bool arrays to 0/255.

    Args:
        image: a file path, PIL image or array.
        max_pixels: a file with more pixels is refused from its header, before decoding (None: no limit).

    Raises:
        UserError: the file cannot be read as an image or is over ``max_pixels``; the array's shape or type is not
            an image's.
    """
    if isinstance(image, (str, Path)):
        return _decode(image, f"image {image}", max_pixels,
                       "(raise it with --max-pixels, or max_pixels=, if you trust the file)")
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    return _array_to_rgb(np.asarray(image))


def decode_image(data: bytes, name: str = "the upload", max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """:func:`load_image` of an encoded image file's bytes (an upload), decoded in memory.

    Raises:
        UserError: ``name`` is not an image Pillow can read, or is over ``max_pixels`` (from its header).
    """
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: str | Path | BinaryIO, name: str, max_pixels: int | None, hint: str = "") -> np.ndarray:
    try:
        with _open_without_pil_limit(source) as im, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns, over several lines, of corrupt EXIF and the like
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise UserError(f"{name} is {w}x{h} ({w * h / 1e6:.0f} MP), above the limit of "
                                f"{max_pixels / 1e6:.0f} MP" + (f" {hint}" if hint else ""))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return _pil_to_rgb(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read {name}: {err.__class__.__name__}") from None


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
    """Write :func:`encode_png` of ``image`` to ``path`` atomically (streamed, not built in memory); returns the
    path."""
    with atomic_open(path) as f:
        _as_pil(image).save(f, format="PNG", **options)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# Label maps and masks


def label_dtype(num_names: int) -> np.dtype:
    """The label map dtype for ``num_names`` names (background included): uint8 up to 256, else uint16.

    Raises:
        UserError: more than 65536 names.
    """
    if num_names > 65536:
        raise UserError(f"{num_names - 1} classes: a label map holds at most 65535 classes")
    return np.dtype(np.uint8 if num_names <= 256 else np.uint16)


def label_png_bits(num_names: int) -> int:
    """Bits per pixel of the label PNG for ``num_names`` label names (background included): 8 (palette PNG with
    the VOC colours) up to 256 names, else 16 (grey PNG holding the label values); see :func:`label_dtype`."""
    return 8 * label_dtype(num_names).itemsize


def _label_image(labels: np.ndarray, bits: int | None) -> Image.Image:
    """The PIL image of a label map that :func:`encode_label_png` encodes."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map is (H, W), got shape {labels.shape}")
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    bits = bits or (8 if hi <= 255 else 16)
    if bits not in (8, 16) or lo < 0 or hi >= 1 << bits:
        raise ValueError(f"{bits}-bit label PNGs hold labels 0..{(1 << bits) - 1}, got {lo}..{hi}")
    if bits == 16:
        return Image.fromarray(labels.astype(np.uint16, copy=False))
    from textseg.visualize import voc_palette  # not at the top: visualize imports textseg.data, which imports io

    img = Image.fromarray(labels.astype(np.uint8, copy=False))
    img.putpalette(voc_palette().ravel().tolist())  # turns the "L" image into a "P" image
    return img


def encode_label_png(labels: np.ndarray, bits: int | None = None) -> bytes:
    """PNG bytes of an (H, W) label map: 8-bit palette ("P") PNG with the VOC colours, or 16-bit grey PNG.

    Args:
        labels: integer label map.
        bits: 8 or 16; None takes 8 when the labels fit in 0..255, else 16.

    Raises:
        ValueError: the map is not 2-D or holds values the bit depth cannot.
    """
    return _encode(_label_image(labels, bits), "PNG")


def write_label_png(labels: np.ndarray, path: str | Path, bits: int | None = None) -> None:
    """Write :func:`encode_label_png` of ``labels`` to ``path`` atomically (streamed, not built in memory)."""
    save_png(_label_image(labels, bits), path)


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
        if pattern is None:  # a '%' in the folder or prefix is a character, not a format field
            self.pattern = str(Path(folder) / f"{prefix}-").replace("%", "%%") + "%06d.tar"
        else:
            self.pattern = str(pattern)
        try:
            first = self.pattern % 0
        except (TypeError, ValueError) as err:
            raise ValueError(f"shard pattern needs one %d field: {self.pattern!r}") from err
        Path(first).parent.mkdir(parents=True, exist_ok=True)
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
