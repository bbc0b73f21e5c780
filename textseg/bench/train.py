"""Training speed: :func:`bench_train` (the textseg step against a plain open_clip image-text step) and
:func:`training_step_seconds` (a config's step, for time estimates).

Both run the training loop's own step functions (:mod:`textseg.train.loop`: :func:`step_inputs`,
:func:`device_region_masks`, :func:`forward_loss`, :func:`optimizer_step`) on a synthetic batch.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from textseg.bench.timing import (bf16_autocast, device_peak_mb, device_sync, mean, median, peak_rss_mb,
                                  report_header, reset_device_peak, resolve_amp, resolve_device)

_log = logging.getLogger(__name__)

_WORDS = {"adj": ["red", "small", "striped", "bright", "old", "wooden", "blue", "round"],
          "noun": ["dog", "car", "tree", "house", "cat", "boat", "bicycle", "person", "bird", "chair", "flower",
                   "horse", "bottle", "train", "sheep", "table"],
          "place": ["on a street", "in a park", "on a beach", "in a kitchen", "next to a wall", "under the sky"]}


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions naming two or three objects each (seeded), e.g. "a red dog and a small car in a park"."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        objs = [f"a {rng.choice(_WORDS['adj'])} {rng.choice(_WORDS['noun'])}" for _ in range(rng.randint(2, 3))]
        out.append(f"{', '.join(objs[:-1])} and {objs[-1]} {rng.choice(_WORDS['place'])}")
    return out


class _StepClock:
    """Seconds per section of one training step, synchronised on CUDA only."""

    def __init__(self, sync: Callable[[], None] | None) -> None:
        self.sync = sync
        self.sections: dict[str, float] = {}
        self._mark = 0.0

    def start(self) -> None:
        self.sections = {}
        if self.sync:
            self.sync()
        self._mark = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sync:
            self.sync()
        now = time.perf_counter()
        self.sections[name] = self.sections.get(name, 0.0) + now - self._mark
        self._mark = now


def _update(loss: torch.Tensor, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, sched: Any,
            clip_grad: float, logit_scale: torch.Tensor, clock: _StepClock) -> None:
    """Backward, then the training loop's :func:`~textseg.train.loop.optimizer_step`, each timed."""
    from textseg.train.loop import optimizer_step

    loss.backward()
    clock.lap("backward")
    optimizer_step(params, opt, sched, clip_grad, logit_scale)
    clock.lap("optimizer")


def training_step_seconds(cfg: Any, *, steps: int = 2, warmup: int = 1, seed: int = 0) -> float:
    """Median seconds per optimizer step of a training config on this machine (CUDA when there is one, as training).

    One synthetic batch of the config's size (random images at ``data.image_size``, captions from
    :func:`synthetic_captions`) goes through the training loop's step: grouping on the device, :class:`TrainStep`
    and the config's losses (:func:`~textseg.train.loop.forward_loss`), backward and
    :func:`~textseg.train.loop.optimizer_step`; ``warmup`` untimed steps first. Random weights (``init`` is not
    read), so it can run before the run that makes them.
    """
    from textseg.train.loop import (TrainStep, autocast_on, build_model, build_optimizer, device_region_masks,
                                    forward_loss, select_trainable, step_inputs)
    from textseg.train.samples import NounBatcher

    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    dev = resolve_device(None)
    model = build_model(dataclasses.replace(cfg, init=None))
    params = select_trainable(model, cfg.train)
    model.to(dev).train()
    model.grouper.eval()
    opt, sched = build_optimizer(model, cfg.optim, steps + warmup)
    gen = torch.Generator().manual_seed(seed)
    size = cfg.data.image_size
    images = torch.rand(cfg.data.batch_size, 3, size, size, generator=gen).to(dev)
    captions = synthetic_captions(cfg.data.batch_size, seed)
    nouns_of = NounBatcher(cfg.data.noun_template, cfg.loss.max_nouns, cfg.loss.keep_background_nouns,
                           cfg.loss.noun_parser)
    net = TrainStep(model)
    amp = autocast_on(cfg.train, dev)
    clock = _StepClock(device_sync(dev))
    times = []
    for i in range(warmup + steps):
        clock.start()
        inputs = step_inputs(model, captions, nouns_of, cfg.loss, dev)
        masks = device_region_masks(model, images)
        loss, _ = forward_loss(net, images, masks, inputs, cfg.loss, amp)
        _update(loss, params, opt, sched, cfg.optim.clip_grad, model.clip.logit_scale, clock)
        if i >= warmup:
            times.append(sum(clock.sections.values()))
    return median(times)


def bench_train(model: str = "labxy-small-workbench", *, steps: int = 10, warmup: int = 2,
                batch_size: int | None = None, image_size: int | None = None, device: str | None = None,
                amp: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Training throughput: the textseg step against a plain open_clip image-text step, on one synthetic batch.

    ``textseg``: grouping of the batch on the device (``data.group_on=device``), :class:`TrainStep` (region tokens,
    image and caption embeddings, noun prompts), the image-text + noun-region losses with the weights of the
    ``stage2_region`` preset, backward and the loop's optimizer step (gradient clipping, AdamW, schedule).
    ``open_clip``: ``clip.encode_image`` and ``clip.encode_text`` of the same images and captions, the image-text
    loss, the same backward and optimizer step, the same trained parameters. Random weights and random images;
    captions from :func:`synthetic_captions`.

    Args:
        model: a model config name; its region mode is kept (region tokens for the shipped configs).
        steps, warmup: timed and untimed steps per variant.
        batch_size: samples per step (default 64 on CUDA, 8 elsewhere).
        image_size: square training size (default the CLIP's own input size; at another size the plain step's
            image tower runs through :meth:`RegionTokenViT.encode_image <textseg.region.RegionTokenViT.encode_image>`,
            the same blocks with the position embedding interpolated, as open_clip's own forward cannot).
        amp: ``auto`` (bf16 autocast on CUDA, as ``train.amp``), ``bf16`` or ``none``.

    On CUDA it turns TF32 on for the process (``train.tf32``), as training does. Each step is timed in sections
    (tokens, grouping, forward + loss, backward, optimizer), synchronised between them on CUDA only.
    """
    import textseg
    from textseg.losses import image_text_loss
    from textseg.train.config import load_train_config
    from textseg.train.loop import (MAX_LOGIT_SCALE, TrainStep, build_optimizer, device_region_masks,
                                    enable_cuda_speedups, forward_loss, select_trainable, step_inputs)
    from textseg.train.samples import NounBatcher

    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    dev = resolve_device(device)
    use_amp, amp_note = resolve_amp("bf16" if amp == "auto" and dev.type == "cuda" else
                                    ("none" if amp == "auto" else amp), dev)
    if amp_note:
        _log.warning("%s", amp_note)
    cfg = load_train_config("stage2_region")
    lw = cfg.loss
    if dev.type == "cuda":
        enable_cuda_speedups(cfg.train.tf32)
    torch.manual_seed(seed)
    net_model = textseg.create_model(model, pretrained=False, device=dev)
    params = select_trainable(net_model, cfg.train)
    net_model.train()
    net_model.grouper.eval()
    clip = net_model.clip
    size = image_size or int(np.atleast_1d(clip.visual.image_size)[0])
    size = max(net_model.patch_size, size // net_model.patch_size * net_model.patch_size)
    native = tuple(np.broadcast_to(clip.visual.image_size, 2)) == (size, size)
    batch = batch_size or (64 if dev.type == "cuda" else 8)
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=gen).to(dev)
    captions = synthetic_captions(batch, seed)
    nouns_of = NounBatcher(cfg.data.noun_template, lw.max_nouns, lw.keep_background_nouns, lw.noun_parser)
    net = TrainStep(net_model)
    sync = device_sync(dev)

    def textseg_step(clock: _StepClock, opt: torch.optim.Optimizer, sched: Any) -> None:
        inputs = step_inputs(net_model, captions, nouns_of, lw, dev)
        clock.lap("tokens")
        masks = device_region_masks(net_model, images)
        clock.lap("grouping")
        loss, _ = forward_loss(net, images, masks, inputs, lw, use_amp)
        clock.lap("forward")
        _update(loss, params, opt, sched, cfg.optim.clip_grad, clip.logit_scale, clock)

    def open_clip_step(clock: _StepClock, opt: torch.optim.Optimizer, sched: Any) -> None:
        caption_tokens = net_model.tokenizer(captions).to(dev)
        clock.lap("tokens")
        with bf16_autocast(use_amp):
            image = F.normalize(clip.encode_image(net_model.region.normalize(images)) if native else
                                net_model.region.encode_image(images), dim=-1)
            text = F.normalize(clip.encode_text(caption_tokens), dim=-1)
            loss = image_text_loss(image.float(), text.float(), clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE))
        clock.lap("forward")
        _update(loss, params, opt, sched, cfg.optim.clip_grad, clip.logit_scale, clock)

    variants = {}
    for name, step_fn in (("open_clip", open_clip_step), ("textseg", textseg_step)):
        opt, sched = build_optimizer(net_model, cfg.optim, steps + warmup)
        clock = _StepClock(sync)
        reset_device_peak(dev)
        times, sections = [], []
        for i in range(warmup + steps):
            clock.start()
            step_fn(clock, opt, sched)
            if i >= warmup:
                times.append(sum(clock.sections.values()))
                sections.append(clock.sections)
        med = median(times)
        variants[name] = {"samples_per_s": round(batch / med, 2), "ms_per_step": round(1000 * med, 2),
                          "ms_per_step_all": [round(1000 * t, 2) for t in times],
                          "sections_ms": {k: round(1000 * mean([s.get(k, 0.0) for s in sections]), 2)
                                          for k in ("tokens", "grouping", "forward", "backward", "optimizer")
                                          if k in sections[0]},
                          "peak_device_mb": device_peak_mb(dev)}
        del opt, sched  # free the optimizer state before the next variant's peak
    ts, oc = variants["textseg"], variants["open_clip"]
    grouping_ms = ts["sections_ms"].get("grouping", 0.0)
    return report_header(dev, kind="train", model=model, region_mode=net_model.config.region.mode,
                         dtype="bfloat16 autocast" if use_amp else "float32", amp_requested=amp, amp_note=amp_note,
                         batch_size=batch, image_size=size, steps=steps, warmup=warmup, loss=asdict(lw),
                         trainable=cfg.train.trainable, variants=variants,
                         overhead=round(ts["ms_per_step"] / oc["ms_per_step"] - 1, 4),
                         overhead_without_grouping=round((ts["ms_per_step"] - grouping_ms) / oc["ms_per_step"] - 1,
                                                         4),
                         peak_host_mb=round(peak_rss_mb()))


__all__ = ["bench_train", "synthetic_captions", "training_step_seconds"]
