"""The run: image shards in, ``pretrain_grouping`` (steps, metrics, step checkpoints, exact resume) out."""

from __future__ import annotations

import glob
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from textseg import artifacts as ckpt
from textseg.config import to_dict
from textseg.errors import DatasetError, UserError
from textseg.io import atomic_write_text, check_writable_folder
from textseg.train.data import (IMAGE_EXTS, Batches, BatchStream, CaptionPipeline, CheckSplit, ReadShards,
                                SampleShuffle, ShardShuffle, SkipCounter, decode_sample_image, expand_urls,
                                worker_init)
from textseg.train.selfsup.config import SelfSupConfig, SelfSupData
from textseg.train.selfsup.trainer import SelfSupTrainer

_log = logging.getLogger(__name__)


def resolve_shards(data: str | Path, patterns: Sequence[str]) -> list[str]:
    """The shard files of ``patterns`` (glob or brace notation, relative to ``data`` unless absolute), sorted
    per pattern.

    Raises:
        DatasetError: ``data`` is not a folder, or no pattern matches a file.
    """
    root = Path(data)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist: build the workbench with "
                           f"`textseg workbench build --out {root}`, or pass --data FOLDER")
    found: list[str] = []
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(root / pattern)
        hits = []
        for item in expand_urls(full):
            hits.extend(sorted(glob.glob(item)) if glob.has_magic(item) else [item] if Path(item).is_file() else [])
        if not hits:
            _log.warning("no shard matches %s", full)
        found.extend(hits)
    if not found:
        raise DatasetError(f"no image shards in {root} (looked for {', '.join(patterns)}): build the workbench "
                           f"with `textseg workbench build --out {root}`, or set data.shards")
    return found


class _ImageDecoder:
    """Raw tar samples → (H, W, 3) uint8 arrays of side ``size``; samples without a readable image are counted
    (``missing_image``, ``decode_error``) and skipped. Captions and masks are not read."""

    def __init__(self, counter: SkipCounter, size: int) -> None:
        self.counter, self.size = counter, size

    def decode(self, sample: dict) -> np.ndarray | None:
        key, url = sample.get("__key__"), sample.get("__url__")
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            self.counter.add("missing_image", key, url)
            return None
        image = decode_sample_image(sample, ext, self.counter)
        if image is None:
            return None
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)


def _stack_images(items: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).contiguous()


def image_batches(shards: Sequence[str], data: SelfSupData, seed: int = 0, pin_memory: bool = False) -> BatchStream:
    """Endless (B, 3, S, S) uint8 batches of the shards' images, epoch after epoch, with a resumable position.

    The stages of :func:`textseg.train.data.caption_pipeline` (seeded shard and sample shuffles, a split by
    DataLoader worker, skipped samples counted) with an image-only decoder; one process, no split by rank.
    """
    import webdataset as wds

    counter = SkipCounter()
    stages: list[Any] = [wds.SimpleShardList(list(shards)), ShardShuffle(seed),
                         CheckSplit(len(shards), False, True), wds.split_by_worker, ReadShards(counter)]
    if data.shuffle_buffer > 0:
        stages.append(SampleShuffle(data.shuffle_buffer, seed))
    stages.append(Batches(_ImageDecoder(counter, data.image_size), data.batch_size, _stack_images))
    pipeline = CaptionPipeline(stages)
    pipeline.counter, pipeline.num_shards = counter, len(shards)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=data.workers,
                                         collate_fn=BatchStream.collate, worker_init_fn=worker_init,
                                         pin_memory=pin_memory, generator=torch.Generator())
    return BatchStream(loader, pipeline, seed=seed)


# ---------------------------------------------------------------------------------------------------- run
# Fields that may change between a run and its resumption (they do not change what is computed).
_RESUMABLE_CHANGES = {("train", "steps"), ("train", "ckpt_every"), ("train", "keep_last"), ("data", "workers")}


def _config_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    for section in sorted(set(saved) | set(now)):
        a, b = saved.get(section), now.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if (section, key) not in _RESUMABLE_CHANGES and a.get(key) != b.get(key):
                    return f"{section}.{key} {a.get(key)!r} -> {b.get(key)!r}"
        elif a != b:
            return f"{section} {a!r} -> {b!r}"
    return None


def _latest_step_checkpoint(out: Path, cfg: SelfSupConfig) -> dict[str, Any] | None:
    for path in reversed(ckpt.step_checkpoints(out)):
        try:
            data = ckpt.read_backbone_weights(path)
        except UserError as err:
            _log.warning("cannot resume from %s (%s); trying an older checkpoint", path, err)
            continue
        if data is None or "trainer" not in data:
            continue
        change = _config_change(dict(data.get("config") or {}), to_dict(cfg))
        if change:
            raise UserError(f"{path} was saved by a run with another config ({change}): use another --out, or "
                            "delete its checkpoints")
        data["path"] = path
        return data
    return None


def pretrain_grouping(cfg: SelfSupConfig, data: str | Path, out: str | Path, device: str | torch.device = "cpu",
                      progress: bool = True) -> dict[str, Any]:
    """Train the grouping backbone by DINO self-distillation on the images of the shards in ``data``.

    Writes ``out/config.json``, ``out/metrics.jsonl`` (one record per step), step checkpoints in
    ``out/checkpoints`` (the newest ``train.keep_last``, the last step's included; with ``resume`` a run continues
    exactly from the newest, so running a finished run again only rewrites ``final.pt``) and ``out/final.pt``: the
    teacher backbone, loadable with ``create_model(..., backbone_pretrained=...)`` or as a model config's
    ``backbone.weights``. Every file is written atomically.

    Returns:
        A summary: steps, seconds, steps per second of this run, samples skipped, the final file.

    Raises:
        DatasetError: no shards; ConfigError: a crop side that is not a multiple of the patch size;
        UserError: an unusable checkpoint, a loss that is not finite, or no readable image in the shards.
    """
    out = check_writable_folder(out, "--out")
    shards = resolve_shards(data, cfg.data.shards)
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    trainer = SelfSupTrainer(cfg, device)
    batches = image_batches(shards, cfg.data, seed=cfg.seed, pin_memory=device.type == "cuda")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    resume = _latest_step_checkpoint(out, cfg) if cfg.resume else None
    if resume is not None:
        if int(resume["step"]) > cfg.train.steps:
            raise UserError(f"{resume['path']} is at step {resume['step']}, beyond train.steps={cfg.train.steps}: "
                            "use another --out")
        try:
            trainer.load_state_dict(resume["trainer"])
            batches.load_state_dict(resume["data"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise UserError(f"cannot resume from {resume['path']}: {ckpt.mismatch_detail(err)}") from None
        _log.info("resumed from %s at step %d", resume["path"], trainer.step)
    from textseg.train.loop import trim_metrics

    trim_metrics(out / "metrics.jsonl", trainer.step)
    atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2))
    arch = {"name": cfg.backbone.name, "kwargs": dict(cfg.backbone.kwargs)}
    start_step, start = trainer.step, time.perf_counter()
    bar = tqdm(total=cfg.train.steps, initial=trainer.step, desc="pretrain-grouping", unit="step",
               disable=not progress)
    try:
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as log:
            while trainer.step < cfg.train.steps:
                t0 = time.perf_counter()
                images = next(batches)
                rec = trainer.train_step(images)
                rec = {"step": trainer.step, **{k: round(v, 6) for k, v in rec.items()},
                       "seconds": round(time.perf_counter() - t0, 4), "skipped": sum(batches.skipped.values())}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", H=f"{rec['teacher_entropy']:.2f}", refresh=False)
                if trainer.step % cfg.train.ckpt_every == 0 or trainer.step == cfg.train.steps:
                    ckpt.save_backbone_weights(ckpt.step_checkpoint_path(out, trainer.step),
                                               trainer.model.teacher_backbone_state(), **arch, step=trainer.step,
                                               config=to_dict(cfg), trainer=trainer.state_dict(),
                                               data=batches.state_dict())
                    ckpt.prune_step_checkpoints(out, cfg.train.keep_last)
    finally:
        bar.close()
        batches.close()
    seconds = time.perf_counter() - start
    final = ckpt.save_backbone_weights(out / "final.pt", trainer.model.teacher_backbone_state(), **arch,
                                       step=trainer.step, config=to_dict(cfg))
    ran = trainer.step - start_step
    summary = {"steps": trainer.step, "steps_this_run": ran, "seconds": round(seconds, 1),
               "steps_per_second": round(ran / seconds, 3) if seconds > 0 and ran else None,
               "skipped": dict(batches.skipped), "final": str(final), "device": str(device)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


__all__ = ["image_batches", "pretrain_grouping", "resolve_shards"]
