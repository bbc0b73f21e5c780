"""The training loop: AdamW + warmup/cosine, gradient accumulation, DDP under torchrun with the contrastive
losses over the global batch, atomic checkpoints with exact resume, a JSONL metrics log and a progress bar.
On CUDA: bf16 autocast, TF32, fused AdamW, grouping on the device, and ``torch.compile`` on request.

Run on one process with ``textseg train CONFIG`` or on many with
``torchrun --nproc_per_node=N tools/train.py CONFIG`` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from textseg import artifacts as ckpt
from textseg.config import to_dict
from textseg.errors import ConfigError, UserError
from textseg.io import atomic_write_text
from textseg.losses import image_text_loss, noun_calibration_loss, noun_region_loss
from textseg.model import TextSegModel
from textseg.text import encode_text_trimmed, trim_tokens
from textseg.train import schedule
from textseg.train import distributed
from textseg.train.config import DataConfig, LossConfig, OptimConfig, TrainConfig, TrainLoopConfig
from textseg.train.data import BatchStream, caption_batches, worker_init
from textseg.train.samples import NounBatcher, TrainTransform, collate, random_hflip
from textseg.train.distributed import ContrastiveFeatures, gather_features, noun_keys

_log = logging.getLogger(__name__)
MAX_LOGIT_SCALE = 100.0


class TrainStep(nn.Module):
    """Everything with trainable weights in one ``forward``, as DDP needs: regions, image and text embeddings."""

    def __init__(self, model: TextSegModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, masks: torch.Tensor, caption_tokens: torch.Tensor,
                noun_tokens: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = self.model(images, masks)
        clip = self.model.clip
        # the tokens come trimmed from the host (text.trim_tokens): no length read-back on the device
        text = encode_text_trimmed(clip, caption_tokens, trimmed=True)
        res = {"regions": F.normalize(out.regions, dim=-1), "image": F.normalize(out.image, dim=-1),
               "valid": out.valid, "text": F.normalize(text, dim=-1), "scale": clip.logit_scale.exp()}
        if noun_tokens is not None and len(noun_tokens):
            res["nouns"] = F.normalize(encode_text_trimmed(clip, noun_tokens, trimmed=True), dim=-1)
        return res


def trim_metrics(path: Path, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (the step a run starts or resumes at), so that the log
    of a resumed run has each step once: a run killed after its last checkpoint logged steps it will log again,
    and may have left half a line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def build_model(cfg: TrainConfig) -> TextSegModel:
    """The model a run starts from: the model config with ``model_overrides``, seeded by ``seed``; its weights
    from ``init`` when given, else the initial temperature ``train.init_temperature``."""
    from textseg.factory import create_model, get_model_config

    torch.manual_seed(cfg.seed)
    model = create_model(get_model_config(cfg.model, cfg.model_overrides), pretrained=cfg.pretrained)
    backbone = model.config.backbone
    if not cfg.pretrained and not cfg.init and backbone.type == "timm":  # the grouper is frozen: it stays random
        _log.warning("model %s: the grouping backbone %s has random weights (pretrained: false) and is not "
                     "trained, so the groups come from a random ViT; pretrained=true loads %s", model.config.name,
                     backbone.name, backbone.weights or "its timm weights")
    if cfg.init:
        state, saved = ckpt.load_model_weights(cfg.init)
        if saved is not None:
            ckpt.check_same_architecture(saved, to_dict(model.config), cfg.init)
        load_weights(model, state, cfg.init)
    else:
        with torch.no_grad():
            model.clip.logit_scale.fill_(math.log(1.0 / cfg.train.init_temperature))
    return model


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(state)``, a mismatch being a one-line :class:`UserError` naming ``source``."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"the weights in {source} do not fit model {getattr(model, 'name', '')!r}: "
                        f"{ckpt.mismatch_detail(err)}") from None


def select_trainable(model: TextSegModel, t: TrainLoopConfig) -> list[nn.Parameter]:
    """Freeze the grouper and whatever ``train.trainable`` leaves out; return the trained parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    clip = model.clip
    if t.trainable == "all":
        for p in clip.visual.parameters():
            p.requires_grad_(True)
    else:
        blocks = clip.visual.transformer.resblocks
        for m in [*blocks[len(blocks) - t.trainable_blocks:], clip.visual.ln_post]:
            for p in m.parameters():
                p.requires_grad_(True)
        if isinstance(clip.visual.proj, nn.Parameter):
            clip.visual.proj.requires_grad_(True)
    if t.train_text:
        for name, p in clip.named_parameters():
            if not name.startswith("visual.") and not name.startswith("logit_"):
                p.requires_grad_(True)
    clip.logit_scale.requires_grad_(t.learn_temperature)
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(model: nn.Module, o: OptimConfig, steps: int,
                    fused: bool | None = None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on gains, biases, embeddings and the temperature) with linear warmup + cosine
    (:func:`~textseg.train.schedule.build_optimizer`, :func:`~textseg.train.schedule.lr_scheduler`).

    ``fused``: torch's fused AdamW kernel; by default when every trained parameter is on CUDA.
    """
    opt = schedule.build_optimizer(model.named_parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=o.betas,
                                   no_decay=no_decay_clip, fused=fused)
    return opt, schedule.lr_scheduler(opt, steps, warmup=o.warmup, end=o.min_lr_ratio)


def no_decay_clip(name: str, p: nn.Parameter) -> bool:
    """The trainer's parameters without weight decay: gains, biases, embeddings and the temperature."""
    return p.ndim < 2 or "embedding" in name or "logit_scale" in name


def _add(logs: dict[str, float], key: str, value: float) -> None:
    logs[key] = logs.get(key, 0.0) + value


def group_on(d: DataConfig, device: torch.device) -> str:
    """``data.group_on`` resolved: ``auto`` is ``device`` on CUDA, ``workers`` elsewhere."""
    if d.group_on == "auto":
        return "device" if device.type == "cuda" else "workers"
    return d.group_on


class ImageTransform:
    """PIL image → (3, S, S) tensor in [0, 1] and nothing else: with ``data.group_on=device`` the training step
    groups the whole batch on the device (:class:`~textseg.train.samples.TrainTransform` groups in the workers)."""

    def __init__(self, image_size: int, patch_size: int) -> None:
        if image_size % patch_size:
            raise ConfigError(f"data.image_size {image_size} is not a multiple of the model's patch size {patch_size}")
        self.size = image_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)


def collate_images(batch: list[tuple]) -> dict[str, Any]:
    """:func:`~textseg.train.samples.collate` for :class:`ImageTransform` samples: no region masks."""
    return {"images": torch.stack([b[0] for b in batch]), "captions": [b[1] for b in batch],
            "urls": [b[2] for b in batch] if len(batch[0]) > 2 else []}


def enable_cuda_speedups(tf32: bool) -> None:
    """TensorFloat-32 for float32 matmuls (cuBLAS) and convolutions (cuDNN) when ``tf32``; process-wide."""
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train a model as the config says; returns this rank's run summary (also in ``out/summary_rank<r>.json``).

    Writes ``out/config.json``, ``out/metrics.jsonl`` (rank 0), step checkpoints in ``out/checkpoints`` (the
    newest ``train.keep_last``) and ``out/final.pt``. With ``resume`` it continues from the newest checkpoint in
    ``out/checkpoints``: model, optimizer, scheduler, step, every rank's RNG states and data position (epoch and
    the samples each DataLoader worker has used) continue exactly where the checkpoint left them, so the final
    weights equal an uninterrupted run's.

    Raises:
        ConfigError: no training shards; UserError: an unusable checkpoint or no usable sample in the shards.
    """
    if not cfg.data.train:
        raise ConfigError("data.train is empty: give shard URLs, e.g. data.train='dir/shard-{000000..000009}.tar'")
    d, t, lw = cfg.data, cfg.train, cfg.loss
    dist_info = distributed.setup()
    rank, world, device = dist_info.rank, dist_info.world, dist_info.device
    out = Path(cfg.out)
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as err:  # out (or a parent) is a file, or not writable
        raise UserError(f"cannot use out={out} as the run folder: {err.strerror or err}") from None
    if device.type == "cuda":
        enable_cuda_speedups(t.tf32)
    model = build_model(cfg)
    grouping = group_on(d, device)
    # "workers": the data workers group on the CPU with a copy of the frozen grouper, the model goes to the device;
    # "device": the workers only resize, the step groups each batch with the model's own grouper.
    if grouping == "workers":
        transform: Any = TrainTransform(copy.deepcopy(model.grouper).cpu(), d.image_size)
    else:
        transform = ImageTransform(d.image_size, model.patch_size)
    params = select_trainable(model, t)
    model.to(device).train()
    model.grouper.eval()
    opt, sched = build_optimizer(model, cfg.optim, t.steps)
    step = 0
    resume = ckpt.latest_resume_state(out, to_dict(model.config)) if cfg.resume else None
    data_state = None
    if resume is not None:
        if resume.step > t.steps:
            raise UserError(f"{resume.path} is at step {resume.step}, beyond train.steps={t.steps}: raise "
                            "train.steps, or use another out folder (or resume=false) to start afresh")
        load_weights(model, resume.model, resume.path)
        try:
            opt.load_state_dict(resume.optimizer)
            sched.load_state_dict(resume.scheduler)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise UserError(f"cannot resume from {resume.path}: its optimizer state does not fit this run's "
                            f"trained parameters (train.trainable or train.train_text changed?): "
                            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        step = resume.step
        try:
            ckpt.set_rng_state(resume.rng_for(rank))
        except (ValueError, TypeError, RuntimeError, KeyError, AttributeError) as err:
            raise UserError(f"cannot resume from {resume.path}: malformed RNG state ({type(err).__name__})") from None
        data_state = resume.data_for(rank, world)
        if rank == 0:
            _log.info("resumed from %s at step %d", resume.path, step)
    else:
        torch.manual_seed(cfg.seed + 1000 * rank)
    net: nn.Module = TrainStep(model)
    ddp = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True) if world > 1 else None
    net = ddp if ddp is not None else net
    if t.compile:  # DDP first, then compile: dynamo's DDP optimizer splits the graph at DDP's gradient buckets
        net = torch.compile(net)
    if rank == 0:
        atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2))
        trim_metrics(out / "metrics.jsonl", step)

    pipeline = caption_batches(d.train, d.batch_size, collate if grouping == "workers" else collate_images,
                               shuffle_buffer=d.shuffle_buffer, seed=cfg.seed, image_transform=transform,
                               with_url=True)
    # batch_size=None: the pipeline batches (and tags each batch with its worker and position) itself; the
    # generator keeps the workers' seeds off the global torch RNG, whose state the checkpoints carry
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=d.workers,
                                         collate_fn=BatchStream.collate, worker_init_fn=worker_init,
                                         persistent_workers=False, pin_memory=device.type == "cuda",
                                         generator=torch.Generator())
    batches = BatchStream(loader, pipeline, seed=cfg.seed)
    if data_state is not None:
        batches.load_state_dict(data_state)
    elif resume is not None:
        _log.warning("%s holds no data position (an older checkpoint): this run reads the data from the start of "
                     "an epoch, so it does not continue the interrupted run exactly", resume.path)
        batches.epoch = step
    nouns_of = NounBatcher(d.noun_template, lw.max_nouns, lw.keep_background_nouns, lw.noun_parser)
    accum = cfg.optim.grad_accum
    amp = autocast_on(t, device)
    shards_read: set[str] = set()
    start, last_log, seen = time.time(), time.time(), 0
    bar = tqdm(total=t.steps, initial=step, desc="train", unit="step", disable=not progress or rank != 0)
    stopped_early = False
    while step < t.steps:
        logs: dict[str, float] = {}
        for micro in range(accum):
            batch = next(batches)
            shards_read.update(batch["urls"])
            inputs = step_inputs(model, batch["captions"], nouns_of, lw, device)
            images = batch["images"].to(device, non_blocking=True)
            masks = batch["masks"].to(device, non_blocking=True) if grouping == "workers" else None
            images, masks = random_hflip(images, masks, d.hflip, cfg.seed, step * accum + micro)
            if masks is None:
                masks = device_region_masks(model, images)
            sync = micro == accum - 1 or world == 1
            ctx = ddp.no_sync() if not sync and ddp is not None else nullcontext()
            with ctx:
                loss, terms = forward_loss(net, images, masks, inputs, lw, amp)
            for key, value in terms.items():
                _add(logs, key, value / accum)
            (loss / accum).backward()
            seen += len(batch["captions"]) * world
        optimizer_step(params, opt, sched, cfg.optim.clip_grad, model.clip.logit_scale)
        step += 1
        bar.update(1)
        log_now = step % t.log_every == 0 or step == t.steps or step == 1
        skipped = distributed.sum_counts(batches.skipped) if log_now else {}  # a collective: every rank calls it
        if rank == 0 and log_now:
            now = time.time()
            rec = {"step": step, **{k: round(v, 5) for k, v in logs.items()}, "lr": sched.get_last_lr()[0],
                   "scale": round(float(model.clip.logit_scale.detach().exp()), 3),
                   "samples_per_s": round(seen / max(1e-9, now - last_log), 1), "elapsed_s": round(now - start, 1),
                   "skipped": skipped}
            seen, last_log = 0, now
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{logs['loss']:.3f}", sps=rec["samples_per_s"])
        over_time = distributed.any_rank(t.max_minutes is not None and time.time() - start > 60 * t.max_minutes,
                                         device)
        if step % t.ckpt_every == 0 or step == t.steps or over_time:
            _save_step(out, model, opt, sched, step, cfg, rank, t.keep_last, batches.state_dict())
        if over_time:
            stopped_early = True
            break
    bar.close()
    batches.close()
    summary = {"rank": rank, "world_size": world, "steps": step, "stopped_early": stopped_early, "group_on": grouping,
               "weights_sha1": ckpt.weights_checksum(model), "shards_read": sorted(shards_read),
               "skipped": distributed.sum_counts(batches.skipped), "skipped_this_rank": dict(batches.skipped),
               "minutes": round((time.time() - start) / 60, 2)}
    atomic_write_text(out / f"summary_rank{rank}.json", json.dumps(summary, indent=2))
    if rank == 0:
        ckpt.save_checkpoint(out / "final.pt", model.state_dict(), step=step, model_config=to_dict(model.config))
    distributed.teardown()
    return summary


def autocast_on(t: TrainLoopConfig, device: torch.device) -> bool:
    """Whether the step runs under bf16 autocast: on CUDA when ``train.amp`` is ``auto`` or true."""
    return device.type == "cuda" and t.amp in ("auto", True)


def device_region_masks(model: TextSegModel, images: torch.Tensor) -> torch.Tensor:
    """The region masks of a batch grouped on its device (``data.group_on=device``): the frozen grouping, in
    float32 outside autocast as in the data workers."""
    return model.group(images, pixels=False).region_masks


def forward_loss(net: nn.Module, images: torch.Tensor, masks: torch.Tensor, inputs: StepInputs, lw: LossConfig,
                 amp: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's forward and loss: ``net`` (a :class:`TrainStep`, or its DDP or compiled wrapper) on the
    images, their region masks and the text of ``inputs``, then :func:`step_loss`; under CUDA bf16 autocast when
    ``amp``."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        res = net(images, masks, inputs.caption_tokens, inputs.noun_tokens)
        return step_loss(res, inputs, lw)


def optimizer_step(params: Sequence[nn.Parameter], opt: torch.optim.Optimizer, sched: Any, clip_grad: float,
                   logit_scale: torch.Tensor) -> None:
    """The update that ends a training step, after its backward passes: the gradient norm of ``params`` clipped to
    ``clip_grad`` (0: not clipped), the optimizer and scheduler steps, the gradients freed, and the learned
    temperature ``logit_scale`` capped at log(:data:`MAX_LOGIT_SCALE`)."""
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))


@dataclass
class StepInputs:
    """A micro-batch's text side: trimmed caption and noun-prompt tokens (on the device) and the noun pairs."""

    caption_tokens: torch.Tensor
    noun_tokens: torch.Tensor | None
    prompts: list[str]
    noun_ids: torch.Tensor
    noun_image: torch.Tensor


def step_inputs(model: TextSegModel, captions: Sequence[str], nouns_of: NounBatcher, lw: LossConfig,
                device: torch.device) -> StepInputs:
    """Tokenise a micro-batch's captions and, when a noun term is on, its nouns (trimmed on the host)."""
    prompts, noun_ids, noun_image, _ = nouns_of(captions)
    caption_tokens = trim_tokens(model.tokenizer(list(captions))).to(device)
    noun_tokens = trim_tokens(model.tokenizer(prompts)).to(device) if prompts and lw.uses_nouns else None
    return StepInputs(caption_tokens, noun_tokens, prompts, noun_ids, noun_image)


def step_loss(res: dict[str, torch.Tensor], inputs: StepInputs, lw: LossConfig
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured loss of one micro-batch from :class:`TrainStep`'s outputs (features gathered over ranks),
    and its terms as floats for the log (``loss``, ``loss_image_text``, ``loss_noun_region``, ``noun_acc``,
    ``loss_noun_calibration``)."""
    scale = res["scale"].clamp(max=MAX_LOGIT_SCALE)
    feats = _global_features(res, lw.image_text > 0, lw.uses_nouns, inputs.prompts, inputs.noun_ids,
                             inputs.noun_image)
    loss = torch.zeros((), device=res["scale"].device)
    logs: dict[str, float] = {}
    if lw.image_text > 0:
        it = image_text_loss(feats.image, feats.text, scale)
        loss = loss + lw.image_text * it
        logs["loss_image_text"] = float(it.detach())
    if lw.noun_region > 0:
        if len(feats.nouns):
            nr, stats = noun_region_loss(feats.nouns, feats.noun_image, feats.regions, feats.valid, scale,
                                         mode=lw.mode, positives=feats.positives() if lw.same_noun_positives else None,
                                         region_temperature=lw.region_temperature)
            logs["noun_acc"] = stats["acc"]
        else:  # no noun in the global batch: a zero that still reaches every parameter DDP expects
            nr = res["regions"].sum() * 0
        loss = loss + lw.noun_region * nr
        logs["loss_noun_region"] = float(nr.detach())
    if lw.noun_calibration > 0:
        cal = noun_calibration_loss(feats.nouns, feats.noun_image, feats.regions, feats.valid, scale,
                                    feats.noun_keys)
        loss = loss + lw.noun_calibration * cal
        logs["loss_noun_calibration"] = float(cal.detach())
    logs["loss"] = float(loss.detach())
    return loss, logs


def _global_features(res: dict[str, torch.Tensor], image_text: bool, nouns: bool, prompts: list[str],
                     noun_ids: torch.Tensor, noun_image: torch.Tensor) -> ContrastiveFeatures:
    """The step's float32 features for the losses, gathered over all ranks (:func:`gather_features`)."""
    local = ContrastiveFeatures()
    if image_text:
        local.image, local.text = res["image"].float(), res["text"].float()
    if nouns:
        device = res["regions"].device
        local.regions, local.valid = res["regions"].float(), res["valid"]
        # a rank without nouns still takes part in the gather, with (0, D) nouns
        pairs = res["nouns"].float()[noun_ids.to(device)] if "nouns" in res else res["text"].float()[:0]
        local.nouns, local.noun_image = pairs, noun_image.to(device)
        local.noun_keys = noun_keys([prompts[i] for i in noun_ids.tolist()], device)
    return gather_features(local)


def _save_step(out: Path, model: TextSegModel, opt: torch.optim.Optimizer, sched: Any, step: int, cfg: TrainConfig,
               rank: int, keep_last: int, data_state: dict[str, Any]) -> None:
    # Every rank's RNG state and data position are kept, so that each rank continues exactly after a resume.
    states = distributed.gather_rng_states()
    positions = distributed.gather_objects(data_state)
    if rank == 0:
        ckpt.save_checkpoint(ckpt.step_checkpoint_path(out, step), model.state_dict(), step=step,
                             model_config=to_dict(model.config), optimizer=opt.state_dict(),
                             scheduler=sched.state_dict(), rng=states, data=positions, config=to_dict(cfg))
        ckpt.prune_step_checkpoints(out, keep_last)
    distributed.barrier()
