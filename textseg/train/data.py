"""Training data: caption shards in, batches of (images, region masks, captions) and caption nouns out.

* :func:`caption_pipeline`: webdataset shards (``<key>.jpg`` + ``<key>.txt``) → ``(image, caption)`` with seeded
  shard and sample shuffles, a disjoint split by rank and DataLoader worker, and bad samples counted and skipped.
* :class:`BatchStream`: the training batches, epoch after epoch, in an order fixed by the seed and the epoch alone,
  with a position (:meth:`BatchStream.state_dict`) that a checkpoint keeps, so a resumed run reads exactly the
  batches an uninterrupted one would; it also totals the skips counted in the DataLoader workers.

What goes into a batch (the grouping transform, collate, noun batching) is :mod:`textseg.train.samples`.
"""

from __future__ import annotations

import io
import logging
import random
import warnings
from collections import Counter, deque
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch
from PIL import Image
from webdataset.filters import PipelineStage
from webdataset.pipeline import DataPipeline

from textseg.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "caption", "text")


# ----------------------------------------------------------------------------------------------------- pipeline
class SkipCounter:
    """Counts samples skipped by :func:`caption_pipeline`, per reason.

    Reasons: ``decode_error``, ``empty_caption``, ``missing_image``, ``missing_caption``, ``read_error`` (a shard
    that cannot be opened or read). Counts live in the process that runs the pipeline: with DataLoader workers each
    worker counts its own skips (every skip is also logged at WARNING there); the batches of :func:`caption_batches`
    carry them to the main process.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._mark: Counter[str] = Counter()

    def take(self) -> dict[str, int]:
        """The counts added since the previous :meth:`take` (or :meth:`mark`)."""
        delta = self.counts - self._mark
        self._mark = Counter(self.counts)
        return dict(delta)

    def mark(self) -> None:
        """Forget the counts so far for :meth:`take`."""
        self._mark = Counter(self.counts)

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


class ShardShuffle(PipelineStage):
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


class CheckSplit(PipelineStage):
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


class ReadShards(PipelineStage):
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


def decode_sample_image(sample: dict, ext: str, counter: SkipCounter) -> Image.Image | None:
    """The RGB image of a raw tar sample's ``ext`` entry, or None with a ``decode_error`` counted (truncated or
    corrupt bytes)."""
    try:
        with Image.open(io.BytesIO(sample[ext])) as img:
            img.load()
            return img.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, ... for bad bytes
        counter.add("decode_error", sample.get("__key__"), sample.get("__url__"), f"{type(err).__name__}: {err}")
        return None


class _Decode(PipelineStage):
    """Raw tar samples -> (PIL RGB image, caption); bad samples are counted and skipped."""

    def __init__(self, counter: SkipCounter, image_transform: Callable[[Image.Image], Any] | None,
                 with_url: bool = False) -> None:
        self.counter, self.image_transform, self.with_url = counter, image_transform, with_url

    def decode(self, sample: dict) -> tuple | None:
        """One raw sample decoded, or None when it is counted as skipped."""
        key, url = sample.get("__key__"), sample.get("__url__")
        img_ext = next((e for e in IMAGE_EXTS if e in sample), None)
        txt_ext = next((e for e in TEXT_EXTS if e in sample), None)
        if img_ext is None:
            self.counter.add("missing_image", key, url)
            return None
        if txt_ext is None:
            self.counter.add("missing_caption", key, url)
            return None
        try:
            caption = sample[txt_ext].decode("utf-8").strip()
        except UnicodeDecodeError as err:
            self.counter.add("decode_error", key, url, f"caption: {err}")
            return None
        if not caption:
            self.counter.add("empty_caption", key, url)
            return None
        image = decode_sample_image(sample, img_ext, self.counter)
        if image is None:
            return None
        image = self.image_transform(image) if self.image_transform else image
        return (image, caption, url) if self.with_url else (image, caption)

    def run(self, src: Iterable[dict]) -> Iterator[tuple]:
        for sample in src:
            item = self.decode(sample)
            if item is not None:
                yield item


class SampleDecoder(Protocol):
    """What :class:`Batches` decodes raw samples with: its skip counter and ``decode(sample)`` (None: skipped)."""

    counter: SkipCounter

    def decode(self, sample: dict) -> Any | None: ...


class Batches(PipelineStage):
    """Raw samples -> ``{"batch", "worker", "pos", "skipped"}`` items, then one ``{"end": True, ...}`` item.

    ``pos`` is how many raw samples of this reader's epoch stream the batch completes (skipped ones included);
    ``skipped`` the skips counted since the previous item. The first :attr:`skip` raw samples (``skip[worker]``,
    set through :meth:`CaptionPipeline.set_position`) are passed over undecoded: that is how a resumed run gets
    to where its checkpoint left the epoch. An incomplete last batch is dropped.
    """

    def __init__(self, decoder: SampleDecoder, batch_size: int, collate_fn: Callable[[list], Any]) -> None:
        self.decoder, self.batch_size, self.collate_fn = decoder, batch_size, collate_fn
        self.skip: list[int] = []

    def run(self, src: Iterable[dict]) -> Iterator[dict]:
        _, _, worker, _ = _worker_info()
        counter = self.decoder.counter
        skip = self.skip[worker] if worker < len(self.skip) else 0
        pos, pending = 0, []
        if skip == 0:
            counter.mark()
        for sample in src:
            pos += 1
            if pos <= skip:
                if pos == skip:  # the skips seen on the way here were counted before the checkpoint
                    counter.mark()
                continue
            item = self.decoder.decode(sample)
            if item is None:
                continue
            pending.append(item)
            if len(pending) == self.batch_size:
                yield {"batch": self.collate_fn(pending), "worker": worker, "pos": pos, "skipped": counter.take()}
                pending = []
        if pos < skip:
            counter.mark()
        yield {"end": True, "worker": worker, "pos": pos, "skipped": counter.take()}


class SampleShuffle(PipelineStage):
    """Buffered shuffle of the raw (undecoded) samples seeded by (seed, epoch, rank, worker); the epoch counts
    passes unless set. Shuffling before decoding makes the order independent of which samples fail to decode and
    lets a resumed run pass over samples without decoding them."""

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
            if isinstance(stage, (ShardShuffle, SampleShuffle)):
                stage.set_epoch(epoch)

    def set_position(self, epoch: int, skip: Sequence[int] = ()) -> None:
        """Fix the epoch and, for a :func:`caption_batches` pipeline, how many raw samples of the epoch each
        DataLoader worker passes over (``skip[worker]``; none when empty)."""
        self.set_epoch(epoch)
        for stage in self.pipeline:
            if isinstance(stage, Batches):
                stage.skip = [int(n) for n in skip]


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
    batch_size: int | None = None,
    collate_fn: Callable[[list], Any] | None = None,
) -> CaptionPipeline:
    """A webdataset pipeline yielding ``(image, caption)`` from image-caption shards.

    Stages: shard list (brace notation expanded) -> seeded shard shuffle -> ``wds.split_by_node`` ->
    ``wds.split_by_worker`` -> tar reading (webdataset's tar iterator) -> seeded buffered shuffle of the raw
    samples -> decode (PIL RGB; then ``image_transform`` if given) [-> batches, see :func:`caption_batches`].
    webdataset 1.0.2 takes the rank from the ``RANK``/``WORLD_SIZE`` environment variables when both are set,
    else from an initialised ``torch.distributed``; the worker from the DataLoader.

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
        batch_size: batch in the pipeline (:func:`caption_batches`); None yields samples.
        collate_fn: how a list of samples becomes a batch.
    """
    import webdataset as wds

    shard_urls = expand_urls(urls)
    if not shard_urls:
        raise UserError(f"no shards in {urls!r}")
    counter = counter if counter is not None else SkipCounter()

    stages: list[Any] = [wds.SimpleShardList(shard_urls)]
    if shardshuffle:
        stages.append(ShardShuffle(seed))
    stages.append(CheckSplit(len(shard_urls), split_by_node, split_by_worker))
    if split_by_node:
        stages.append(wds.split_by_node)
    if split_by_worker:
        stages.append(wds.split_by_worker)
    stages.append(ReadShards(counter))
    if shuffle_buffer > 0:
        stages.append(SampleShuffle(shuffle_buffer, seed))
    decoder = _Decode(counter, image_transform, with_url)
    stages.append(decoder if batch_size is None else Batches(decoder, batch_size, collate_fn or _as_is))
    pipeline = CaptionPipeline(stages)
    pipeline.counter, pipeline.num_shards = counter, len(shard_urls)
    return pipeline


def _as_is(item: Any) -> Any:
    """The identity: the DataLoader's ``collate_fn`` for :func:`caption_batches` items (batched in the pipeline
    already), and the default batch collation of :func:`caption_pipeline` (a list of samples)."""
    return item


def caption_batches(urls: str | Sequence[str], batch_size: int, collate_fn: Callable[[list], Any], **kw: Any
                    ) -> CaptionPipeline:
    """:func:`caption_pipeline` batched in the pipeline: each DataLoader worker yields ``{"batch": collated,
    "worker", "pos", "skipped"}`` items and one ``{"end": True, ...}`` item last; read them with
    :class:`BatchStream` (a ``DataLoader(pipeline, batch_size=None, collate_fn=BatchStream.collate)``)."""
    return caption_pipeline(urls, batch_size=batch_size, collate_fn=collate_fn, **kw)


class BatchStream:
    """Endless training batches, epoch after epoch, resumable at any batch.

    Each DataLoader worker (or the main process with ``workers=0``) reads a fixed part of the rank's shards in an
    order fixed by (seed, epoch, rank, worker); the stream takes one batch from each worker in turn (skipping the
    workers whose part of the epoch is done), whatever order the DataLoader delivers them in. So the batches are a
    function of the seed, the epoch and the data alone, and :meth:`state_dict` (epoch, the worker whose turn is
    next, the raw samples each worker has used) is all a resumed run needs to continue exactly.

    The skip counts each worker attaches to its batches are totalled here, in :attr:`skipped`, as the batches are
    consumed (and restored by :meth:`load_state_dict`).

    Raises:
        UserError: two epochs in a row yield no batch (every sample is skipped, or too few samples per reader).
    """

    collate = staticmethod(_as_is)

    def __init__(self, loader: torch.utils.data.DataLoader, pipeline: CaptionPipeline, seed: int = 0) -> None:
        self.loader, self.pipeline, self.seed = loader, pipeline, seed
        self.readers = max(1, loader.num_workers)
        self.epoch, self.next, self.pos, self.ended = 0, 0, [0] * self.readers, [False] * self.readers
        self.skipped: Counter[str] = Counter()
        self._iter: Iterator[Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The position after the batches consumed so far, as plain values."""
        return {"epoch": self.epoch, "next": self.next, "pos": list(self.pos), "ended": list(self.ended),
                "readers": self.readers, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; one saved with another number of workers restarts at the next
        epoch (with a warning: the position within an epoch depends on how it was split between workers)."""
        self.skipped = Counter({str(k): int(v) for k, v in dict(state.get("skipped", {})).items()})
        if int(state["readers"]) != self.readers:
            if int(state["readers"]) >= 0:  # < 0: the caller has said why already
                logger.warning("the checkpoint's data position was saved with %s data reader(s) per rank, this run has "
                               "%s (data.workers changed): starting epoch %s afresh instead of continuing epoch %s",
                               state["readers"], self.readers, int(state["epoch"]) + 1, state["epoch"])
            self.epoch = int(state["epoch"]) + 1
            return
        self.epoch, self.next = int(state["epoch"]), int(state["next"])
        self.pos, self.ended = [int(p) for p in state["pos"]], [bool(e) for e in state["ended"]]

    def __iter__(self) -> "BatchStream":
        return self

    def close(self) -> None:
        """Stop the current epoch's DataLoader workers."""
        if self._iter is not None:
            self._iter.close()
            self._iter = None

    def __next__(self) -> Any:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter)

    def _batches(self) -> Iterator[Any]:
        empty_epochs = 0
        while True:
            got = False
            for batch in self._epoch():
                got = True
                yield batch
            self.epoch, self.next, self.pos, self.ended = self.epoch + 1, 0, [0] * self.readers, [False] * self.readers
            empty_epochs = 0 if got else empty_epochs + 1
            if empty_epochs >= 2:
                raise UserError("the training shards yield no usable batch (see the skip warnings above)")

    def _epoch(self) -> Iterator[Any]:
        self.pipeline.set_position(self.epoch, self.pos)
        if self.loader.generator is not None:  # worker seeds from (seed, epoch), not from the global torch RNG
            self.loader.generator.manual_seed(self.seed * 100_003 + self.epoch)
        queues: list[deque] = [deque() for _ in range(self.readers)]
        items = iter(self.loader)
        try:
            while not all(self.ended):
                w = self.next
                if self.ended[w]:
                    self.next = (w + 1) % self.readers
                    continue
                while not queues[w]:
                    item = next(items, None)
                    if item is None:  # a reader ended without its end item: only if the loader broke off
                        raise RuntimeError(f"data reader {w} stopped without finishing its part of the epoch")
                    queues[int(item["worker"])].append(item)
                item = queues[w].popleft()
                self.skipped.update(item["skipped"])
                self.pos[w] = int(item["pos"])
                self.next = (w + 1) % self.readers
                if item.get("end"):
                    self.ended[w] = True
                    continue
                yield item["batch"]
        finally:
            del items  # shuts the epoch's workers down


def worker_init(_: int) -> None:
    """DataLoader workers use one thread each (they run k-means side by side)."""
    torch.set_num_threads(1)
