"""Image-caption webdataset shards: writing them from a folder + captions file, and reading them for training.

Shard layout: one sample per (image, caption) pair, ``<key>.jpg`` (JPEG bytes) + ``<key>.txt`` (UTF-8 caption).

Captions files accepted by :func:`read_caption_file` (paths are relative to the images folder, or absolute):

* CSV with a header row: image column ``file`` or ``image``, caption column ``caption`` or ``text``.
* JSONL: one object per line with ``"file"`` or ``"image"`` and ``"caption"`` or ``"text"``.
* JSON: a COCO-captions file (``images`` with ``id``/``file_name`` + ``annotations`` with ``image_id``/``caption``)
  gives ONE sample per image with the FIRST caption of that image in file order (deterministic, no sampling);
  a JSON list of objects is read like JSONL.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import random
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from PIL import Image
from webdataset.filters import PipelineStage
from webdataset.pipeline import DataPipeline

from textseg.errors import DatasetError, UserError

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "caption", "text")
_FILE_COLUMNS = ("file", "image")
_CAPTION_COLUMNS = ("caption", "text")

# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


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
        where = f" (see {self.skipped_path})" if self.skipped_path else ""
        return f"wrote {self.written} samples in {len(self.shards)} shards, skipped {len(self.skipped)}{where}"


def _sanitize_key(key: str) -> str:
    # webdataset splits keys from extensions at the first '.' of the base name; '/' would make sub-folders.
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def _encode_image(path: Path) -> bytes:
    """JPEG bytes of a valid image: the original bytes for a JPEG, else RGB re-encoded at quality 95.

    Transparent images are composited over white (converting RGBA straight to RGB exposes whatever colour the
    transparent pixels hold, often black).
    """
    data = path.read_bytes()
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
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_shards(
    samples: Iterable[tuple[str | os.PathLike, str] | tuple[str | os.PathLike, str, str | None]],
    out_pattern: str = "shards/shard-%06d.tar",
    max_count: int = 1000,
    max_size: float = 1e9,
) -> ShardReport:
    """Validate image-caption pairs and write them as webdataset shards.

    Every bad item (missing or undecodable image, empty caption, duplicate key) is skipped AND reported in the
    returned :class:`ShardReport` and in ``skipped.jsonl`` next to the shards (always written, empty when nothing
    was skipped).

    Args:
        samples: ``(image_path, caption)`` or ``(image_path, caption, key)``. Without a key (or key None) the key
            is the item's position in ``samples`` (``%09d``), so keys stay stable when other items are skipped.
        out_pattern: shard file pattern with one ``%d``-style field; its folder is created.
        max_count: maximum samples per shard.
        max_size: maximum bytes per shard (approximate, as in ``webdataset.ShardWriter``).

    Returns:
        The report.
    """
    import webdataset as wds

    out_dir = Path(out_pattern).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ShardReport()
    seen: set[str] = set()
    writer = wds.ShardWriter(out_pattern, maxcount=max_count, maxsize=max_size, verbose=0)
    try:
        for index, item in enumerate(samples):
            path, caption = Path(item[0]), item[1]
            given = item[2] if len(item) > 2 else None
            key = _sanitize_key(str(given)) if given is not None else f"{index:09d}"

            def skip(reason: str) -> None:
                report.skipped.append(SkippedItem(index, str(path), reason, key))
                logger.warning("skipping %s: %s", path, reason)

            if key in seen:
                skip(f"duplicate key: {key}")
                continue
            if not isinstance(caption, str) or not caption.strip():
                skip("empty caption")
                continue
            if not path.is_file():
                skip("missing file")
                continue
            try:
                jpeg = _encode_image(path)
            except Exception as err:  # PIL raises many types for bad files
                skip(f"bad image: {type(err).__name__}: {err}")
                continue
            seen.add(key)
            writer.write({"__key__": key, "jpg": jpeg, "txt": caption.strip()})
            if writer.fname not in report.shards:
                report.shards.append(writer.fname)
            report.written += 1
    finally:
        writer.close()
    report.skipped_path = str(out_dir / "skipped.jsonl")
    with open(report.skipped_path, "w", encoding="utf-8") as f:
        for s in report.skipped:
            f.write(json.dumps({"index": s.index, "path": s.path, "key": s.key, "reason": s.reason}) + "\n")
    return report


# --------------------------------------------------------------------------------------------------------------
# Captions files
# --------------------------------------------------------------------------------------------------------------


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
    return str(file), "" if caption is None else str(caption)


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

    def full(p: str) -> str:
        return str(Path(p) if Path(p).is_absolute() else root / p)

    suffix = cpath.suffix.lower()
    if suffix == ".csv":
        with open(cpath, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            file_col = next((c for c in _FILE_COLUMNS if c in cols), None)
            cap_col = next((c for c in _CAPTION_COLUMNS if c in cols), None)
            if file_col is None or cap_col is None:
                missing = "'file' or 'image'" if file_col is None else "'caption' or 'text'"
                raise DatasetError(
                    f"{cpath}: missing column {missing} in the header (found {cols}); "
                    "accepted: file|image and caption|text"
                )
            return [(full(row[file_col] or ""), row[cap_col] or "", None) for row in reader]
    if suffix in (".jsonl", ".ndjson"):
        out: list[tuple[str, str, str | None]] = []
        with open(cpath, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{cpath}:{lineno}: invalid JSON ({err.msg})") from err
                file, caption = _record_pair(record, f"{cpath}:{lineno}")
                out.append((full(file), caption, None))
        return out
    if suffix == ".json":
        try:
            data = json.loads(cpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{cpath}: invalid JSON ({err.msg})") from err
        if isinstance(data, list):
            return [(full(f), c, None) for f, c in (_record_pair(r, f"{cpath}[{i}]") for i, r in enumerate(data))]
        if isinstance(data, dict) and "images" in data and "annotations" in data:
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
                out.append((full(img["file_name"]), first.get(img["id"], ""), f"coco{img['id']}"))
            return out
        raise DatasetError(f"{cpath}: expected a COCO captions object (images + annotations) or a list of records")
    raise DatasetError(f"{cpath}: unsupported captions file type {suffix!r}; use .csv, .jsonl or .json")


def main(argv: Sequence[str] | None = None) -> int:
    """``make_shards IMAGES_DIR CAPTIONS_FILE OUT_DIR [--max-count N] [--max-size-mb M]``."""
    parser = argparse.ArgumentParser(prog="make_shards", description="Write image-caption webdataset shards.")
    parser.add_argument("images_dir")
    parser.add_argument("captions_file", help="CSV (file|image, caption|text), JSONL, or COCO captions JSON")
    parser.add_argument("out_dir")
    parser.add_argument("--max-count", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--max-size-mb", type=float, default=1000.0, help="MB per shard (default 1000)")
    args = parser.parse_args(argv)
    if not Path(args.images_dir).is_dir():
        raise UserError(f"images folder not found: {args.images_dir}")
    if args.max_count < 1 or args.max_size_mb <= 0:
        raise UserError("--max-count and --max-size-mb must be positive")
    samples = read_caption_file(args.captions_file, args.images_dir)
    report = write_shards(
        samples,
        os.path.join(args.out_dir, "shard-%06d.tar"),
        max_count=args.max_count,
        max_size=args.max_size_mb * 1e6,
    )
    for reason, n in sorted(report.skipped_by_reason.items()):
        print(f"  skipped {n}: {reason}")
    print(report.summary())
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    """:func:`main` with logging set up and :class:`UserError` printed as one line (exit status 2)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(argv)
    except UserError as err:
        print(f"make_shards: error: {err}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


class SkipCounter:
    """Counts samples skipped by :func:`caption_pipeline`, per reason.

    Reasons: ``decode_error``, ``empty_caption``, ``missing_image``, ``missing_caption``, ``read_error`` (a shard
    that cannot be opened or read). Counts live in the process that runs the pipeline: with DataLoader workers each
    worker counts its own skips (every skip is also logged at WARNING there).
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, key: str | None = None, url: str | None = None, detail: str = "") -> None:
        self.counts[reason] += 1
        logger.warning("skipping sample %s in %s: %s%s", key, url, reason, f" ({detail})" if detail else "")

    def __getitem__(self, reason: str) -> int:
        return self.counts[reason]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def __repr__(self) -> str:
        return f"SkipCounter({dict(self.counts)})"


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand brace notation (``"dir/shard-{000000..000009}.tar"``) in a string or each string of a list."""
    from webdataset.shardlists import expand_urls as _expand

    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        out.extend(_expand(item))
    return out


def _worker_info() -> tuple[int, int, int, int]:
    from webdataset.utils import pytorch_worker_info

    return pytorch_worker_info()


class _ShardShuffle(PipelineStage):
    """Full shuffle of the shard list with ``Random(seed, epoch)``; identical on every rank, so the later
    split by node stays disjoint. The epoch advances on each pass unless set with :meth:`set_epoch`."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = -1
        self._fixed = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._fixed = epoch, True

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        if not self._fixed:
            self.epoch += 1
        items = list(src)
        random.Random(f"{self.seed}/{self.epoch}").shuffle(items)
        return iter(items)


class _CheckSplit(PipelineStage):
    """Warns when some (rank, worker) reader would get no shard at all."""

    def __init__(self, num_shards: int, split_by_node: bool, split_by_worker: bool) -> None:
        self.num_shards, self.by_node, self.by_worker = num_shards, split_by_node, split_by_worker

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        rank, world, worker, workers = _worker_info()
        readers = (world if self.by_node else 1) * (workers if self.by_worker else 1)
        if self.num_shards < readers and worker == 0:
            msg = (
                f"only {self.num_shards} shard(s) for {readers} readers ({world} rank(s) x {workers} worker(s)): "
                "some readers get no data, so ranks see different numbers of batches (DDP can hang); "
                "write more, smaller shards (make_shards --max-count) or use fewer workers"
            )
            logger.warning(msg)
            warnings.warn(msg, stacklevel=2)
        return iter(src)


class _ReadShards(PipelineStage):
    """Shard URLs -> raw samples (dicts of bytes with ``__key__`` and ``__url__``).

    Like ``wds.tarfile_to_samples`` but closes each shard's stream when done with it (webdataset's opener leaves
    that to the garbage collector, hence its "unclosed file" ResourceWarning).
    """

    def __init__(self, counter: SkipCounter) -> None:
        self.counter = counter

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        from webdataset.gopen import gopen
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for shard in src:
            url = shard["url"]

            def handler(exn: Exception, url: str = url) -> bool:
                self.counter.add("read_error", None, url, f"{type(exn).__name__}: {exn.args[0] if exn.args else ''}")
                return True

            try:
                stream = gopen(url)
            except Exception as err:  # missing file, failing pipe:, ...
                handler(err)
                continue
            try:
                files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
                yield from group_by_keys(files, handler=handler)
            finally:
                stream.close()


class _Decode(PipelineStage):
    """Raw tar samples -> (PIL RGB image, caption); bad samples are counted and skipped."""

    def __init__(self, counter: SkipCounter, image_transform: Callable[[Image.Image], Any] | None,
                 with_url: bool = False) -> None:
        self.counter, self.image_transform, self.with_url = counter, image_transform, with_url

    def run(self, src: Iterable[dict]) -> Iterator[tuple[Any, str]]:
        for sample in src:
            key, url = sample.get("__key__"), sample.get("__url__")
            img_ext = next((e for e in IMAGE_EXTS if e in sample), None)
            txt_ext = next((e for e in TEXT_EXTS if e in sample), None)
            if img_ext is None:
                self.counter.add("missing_image", key, url)
                continue
            if txt_ext is None:
                self.counter.add("missing_caption", key, url)
                continue
            try:
                caption = sample[txt_ext].decode("utf-8").strip()
            except UnicodeDecodeError as err:
                self.counter.add("decode_error", key, url, f"caption: {err}")
                continue
            if not caption:
                self.counter.add("empty_caption", key, url)
                continue
            try:
                with Image.open(io.BytesIO(sample[img_ext])) as img:
                    img.load()
                    image = img.convert("RGB")
            except Exception as err:  # truncated / corrupt image bytes: PIL raises OSError, SyntaxError, ...
                self.counter.add("decode_error", key, url, f"{type(err).__name__}: {err}")
                continue
            image = self.image_transform(image) if self.image_transform else image
            yield (image, caption, url) if self.with_url else (image, caption)


class _SampleShuffle(PipelineStage):
    """Buffered sample shuffle seeded by (seed, epoch, rank, worker); the epoch counts passes unless set."""

    def __init__(self, bufsize: int, seed: int) -> None:
        self.bufsize, self.seed = bufsize, seed
        self.epoch: int | None = None
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def run(self, src: Iterable[Any]) -> Iterator[Any]:
        import webdataset as wds

        rank, _, worker, _ = _worker_info()
        epoch = self.epoch
        if epoch is None:
            epoch, self._passes = self._passes, self._passes + 1
        rng = random.Random(f"{self.seed}/{epoch}/{rank}/{worker}")
        return wds.shuffle(self.bufsize, initial=min(100, self.bufsize), rng=rng)(iter(src))


class CaptionPipeline(DataPipeline):
    """A ``webdataset.DataPipeline`` of ``(image, caption)`` with :attr:`counter`, :attr:`num_shards` and
    :meth:`set_epoch`."""

    counter: SkipCounter
    num_shards: int

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch of the shard and sample shuffles. Call it on every rank before each epoch: DataLoader
        workers are re-created from the main-process copy each epoch and would otherwise replay epoch 0."""
        for stage in self.pipeline:
            if isinstance(stage, (_ShardShuffle, _SampleShuffle)):
                stage.set_epoch(epoch)


def caption_pipeline(
    urls: str | Sequence[str],
    *,
    shuffle_buffer: int = 1000,
    shardshuffle: bool = True,
    seed: int = 0,
    split_by_node: bool = True,
    split_by_worker: bool = True,
    image_transform: Callable[[Image.Image], Any] | None = None,
    counter: SkipCounter | None = None,
    with_url: bool = False,
) -> CaptionPipeline:
    """A webdataset pipeline yielding ``(image, caption)`` from image-caption shards.

    Stages: shard list (brace notation expanded) -> seeded shard shuffle -> ``wds.split_by_node`` ->
    ``wds.split_by_worker`` -> tar reading (webdataset's tar iterator) -> decode (PIL RGB; then ``image_transform``
    if given) -> seeded buffered sample shuffle. webdataset 1.0.2 takes the rank from the ``RANK``/``WORLD_SIZE`` environment
    variables when both are set, else from an initialised ``torch.distributed``; the worker from the DataLoader.

    Corrupt images, empty or missing captions, and unreadable shards are skipped, counted in ``counter`` (also
    available as ``pipeline.counter``) and logged at WARNING with the sample key and shard URL.

    Args:
        urls: shard paths/URLs, brace notation allowed.
        shuffle_buffer: sample shuffle buffer size; 0 disables sample shuffling.
        shardshuffle: shuffle the shard order (seeded by ``seed`` and the epoch).
        seed: seed of both shuffles.
        split_by_node: give each distributed rank a disjoint subset of the shards.
        split_by_worker: give each DataLoader worker a disjoint subset of the rank's shards.
        image_transform: applied to the PIL image (e.g. a torchvision transform returning a tensor).
        counter: where skips are counted; a new one by default.
        with_url: yield ``(image, caption, shard_url)`` (to record which shards a rank read).
    """
    import webdataset as wds

    shard_urls = expand_urls(urls)
    if not shard_urls:
        raise UserError(f"no shards in {urls!r}")
    counter = counter if counter is not None else SkipCounter()

    stages: list[Any] = [wds.SimpleShardList(shard_urls)]
    if shardshuffle:
        stages.append(_ShardShuffle(seed))
    stages.append(_CheckSplit(len(shard_urls), split_by_node, split_by_worker))
    if split_by_node:
        stages.append(wds.split_by_node)
    if split_by_worker:
        stages.append(wds.split_by_worker)
    stages += [_ReadShards(counter), _Decode(counter, image_transform, with_url)]
    if shuffle_buffer > 0:
        stages.append(_SampleShuffle(shuffle_buffer, seed))
    pipeline = CaptionPipeline(stages)
    pipeline.counter, pipeline.num_shards = counter, len(shard_urls)
    return pipeline
