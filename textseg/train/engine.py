"""The training loop: AdamW + warmup/cosine, gradient accumulation, AMP on GPU, DDP under torchrun, atomic
checkpoints with exact resume, a JSONL metrics log and a progress bar.

Run on one process with ``textseg train CONFIG`` or on many with
``torchrun --nproc_per_node=N tools/train.py CONFIG`` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from textseg.errors import ConfigError, UserError
from textseg.losses import image_text_loss, noun_region_loss
from textseg.model import TextSegModel, groups_to_patch_masks, stack_region_masks
from textseg.train.config import deep_update

_log = logging.getLogger(__name__)
MAX_LOGIT_SCALE = 100.0


# ----------------------------------------------------------------------------------------------------- data
class TrainTransform:
    """PIL image → (image tensor in [0, 1], region masks on the CLIP grid); grouping is frozen and runs here, in
    the data workers, so it overlaps with the training step."""

    def __init__(self, model: TextSegModel, image_size: int):
        self.model = model
        self.size = image_size
        p = model.region.patch_size
        if image_size % model.patch_size:
            raise ConfigError(f"data.image_size {image_size} is not a multiple of the model's patch size {model.patch_size}")
        self.grid = (image_size // p, image_size // p)

    @torch.no_grad()
    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), resample=3)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
        return x, groups_to_patch_masks(self.model.group(x[None])[0], self.grid)


def collate(batch: list[tuple]) -> dict[str, Any]:
    """Stack images, pad region masks to the batch's largest K, keep captions (and shard URLs) as lists."""
    images = torch.stack([b[0][0] for b in batch])
    masks = stack_region_masks([b[0][1] for b in batch])
    return {"images": images, "masks": masks, "captions": [b[1] for b in batch],
            "urls": [b[2] for b in batch] if len(batch[0]) > 2 else []}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------- model
class TrainStep(nn.Module):
    """Everything with trainable weights in one ``forward``, as DDP needs: regions, image and text embeddings."""

    def __init__(self, model: TextSegModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, masks: torch.Tensor, caption_tokens: torch.Tensor,
                noun_tokens: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = self.model(images, masks)
        clip = self.model.clip
        res = {"regions": F.normalize(out.regions, dim=-1), "image": F.normalize(out.image, dim=-1),
               "valid": out.valid, "text": F.normalize(clip.encode_text(caption_tokens), dim=-1),
               "scale": clip.logit_scale.exp()}
        if noun_tokens is not None and len(noun_tokens):
            res["nouns"] = F.normalize(clip.encode_text(noun_tokens), dim=-1)
        return res


def select_trainable(model: TextSegModel, cfg: dict[str, Any]) -> list[nn.Parameter]:
    """Freeze the grouping backbone and whatever ``train.trainable`` leaves out; return the trained parameters."""
    t = cfg["train"]
    for p in model.parameters():
        p.requires_grad_(False)
    clip = model.clip
    if t["trainable"] == "all":
        for p in clip.visual.parameters():
            p.requires_grad_(True)
    else:
        blocks = clip.visual.transformer.resblocks
        n = int(t["trainable_blocks"])
        for m in [*blocks[len(blocks) - n:], clip.visual.ln_post]:
            for p in m.parameters():
                p.requires_grad_(True)
        if isinstance(clip.visual.proj, nn.Parameter):
            clip.visual.proj.requires_grad_(True)
    if t["train_text"]:
        for name, p in clip.named_parameters():
            if not name.startswith("visual.") and not name.startswith("logit_"):
                p.requires_grad_(True)
    clip.logit_scale.requires_grad_(bool(t["learn_temperature"]))
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on gains, biases, embeddings and the temperature) with linear warmup + cosine."""
    o = cfg["optim"]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if plain else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=o["lr"], betas=tuple(o["betas"]))
    steps, warmup, floor = cfg["train"]["steps"], o["warmup"], o["min_lr_ratio"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ----------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step-*.pt"))


def weights_checksum(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------- nouns
class NounBatcher:
    """Caption nouns → unique prompts to encode, (noun, image) pairs and the shared-noun positives matrix."""

    def __init__(self, cfg: dict[str, Any]):
        from textseg.nouns import STOP_NOUNS, NounExtractor

        stop = STOP_NOUNS
        if cfg["loss"]["keep_background_nouns"]:
            stop = STOP_NOUNS - {"background", "backdrop", "texture", "pattern", "gradient"}
        self.extractor = NounExtractor(backend="auto", stop_nouns=stop)
        self.max_nouns = int(cfg["loss"]["max_nouns"])
        self.template = cfg["data"]["noun_template"]

    def __call__(self, captions: list[str]) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        per_image = [self.extractor.extract_nouns(c, max_nouns=self.max_nouns) for c in captions]
        vocab = list(dict.fromkeys(n for nouns in per_image for n in nouns))
        index = {n: i for i, n in enumerate(vocab)}
        pairs = [(index[n], i) for i, nouns in enumerate(per_image) for n in nouns]
        noun_ids = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        noun_image = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        has = torch.zeros(len(vocab), len(captions), dtype=torch.bool)
        for i, nouns in enumerate(per_image):
            for n in nouns:
                has[index[n], i] = True
        positives = has[noun_ids] if len(pairs) else torch.zeros(0, len(captions), dtype=torch.bool)
        return [self.template.format(n) for n in vocab], noun_ids, noun_image, positives


# ----------------------------------------------------------------------------------------------------- loop
def _dist_setup() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _batches(loader: torch.utils.data.DataLoader, pipeline: Any, epoch: int) -> Iterator[dict[str, Any]]:
    """Endless batches; each pass over this rank's shards is one epoch, reshuffled."""
    empty_passes = 0
    while True:
        pipeline.set_epoch(epoch)
        got = False
        for batch in loader:
            got = True
            yield batch
        epoch += 1
        empty_passes = 0 if got else empty_passes + 1
        if empty_passes >= 2:
            raise UserError("the training shards yield no usable sample (see the skip warnings above)")


def build_model(cfg: dict[str, Any]) -> TextSegModel:
    """The model of a training config: model config + overrides, weights from ``init`` if given."""
    from textseg.factory import create_model, get_model_config, load_checkpoint

    model_cfg = deep_update(get_model_config(cfg["model"]), cfg.get("model_overrides") or {})
    model_cfg.setdefault("name", Path(str(cfg["model"])).stem)
    model = create_model(model_cfg, pretrained=bool(cfg["pretrained"]))
    if cfg.get("init"):
        state, _ = load_checkpoint(cfg["init"], model_cfg)
        model.load_state_dict(state)
    else:
        with torch.no_grad():
            model.clip.logit_scale.fill_(math.log(1.0 / cfg["train"]["init_temperature"]))
    return model


def train(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Train a model as the config says; returns the run summary (also written to ``out/summary.json``).

    Resumes from the newest checkpoint in ``out/checkpoints`` when ``resume`` is true: model, optimizer,
    scheduler, step and RNG states continue exactly where the checkpoint left them.
    """
    from textseg.shards import caption_pipeline

    if not cfg["data"]["train"]:
        raise ConfigError("data.train is empty: give shard URLs, e.g. data.train='dir/shard-{000000..000009}.tar'")
    rank, world, device = _dist_setup()
    out = Path(cfg["out"])
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg)
    params = select_trainable(model, cfg)
    model.to(device).train()
    model.backbone.eval()
    opt, sched = build_optimizer(model, cfg)
    step = 0
    found = checkpoints(out) if cfg["resume"] else []
    if found:
        ck = torch.load(found[-1], map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step = int(ck["step"])
        set_rng_state(ck["rng"][rank] if isinstance(ck["rng"], list) and rank < len(ck["rng"]) else ck["rng"][0])
        if rank == 0:
            _log.info("resumed from %s at step %d", found[-1], step)
    else:
        torch.manual_seed(cfg["seed"] + 1000 * rank)
    net: nn.Module = TrainStep(model)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(cfg, indent=2))

    d = cfg["data"]
    transform = TrainTransform(model, int(d["image_size"]))
    pipeline = caption_pipeline(d["train"], shuffle_buffer=int(d["shuffle_buffer"]), seed=int(cfg["seed"]),
                                image_transform=transform, with_url=True)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=int(d["batch_size"]), num_workers=int(d["workers"]),
                                         collate_fn=collate, worker_init_fn=_worker_init,
                                         persistent_workers=False, drop_last=True)
    batches = _batches(loader, pipeline, epoch=step)  # a fresh shuffle after a resume
    nouns_of = NounBatcher(cfg)
    tokenizer = model.tokenizer
    lw = cfg["loss"]
    t = cfg["train"]
    accum = int(cfg["optim"]["grad_accum"])
    amp = device.type == "cuda" and t["amp"] in ("auto", True)
    log_path = out / "metrics.jsonl"
    shards_read: set[str] = set()
    crash_at = int(os.environ.get("TEXTSEG_DEBUG_EXIT_AFTER_STEP", "0"))  # tests: simulate a kill -9
    start, last_log, seen = time.time(), time.time(), 0
    bar = tqdm(total=t["steps"], initial=step, desc="train", unit="step", disable=not progress or rank != 0)
    stopped_early = False
    while step < t["steps"]:
        logs: dict[str, float] = {}
        for micro in range(accum):
            batch = next(batches)
            shards_read.update(batch["urls"])
            prompts, noun_ids, noun_image, positives = nouns_of(batch["captions"])
            caption_tokens = tokenizer(batch["captions"]).to(device)
            noun_tokens = tokenizer(prompts).to(device) if prompts and lw["noun_region"] > 0 else None
            sync = micro == accum - 1 or world == 1
            ctx = net.no_sync() if not sync and isinstance(net, nn.parallel.DistributedDataParallel) else nullcontext()
            with ctx, torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                res = net(batch["images"].to(device), batch["masks"].to(device), caption_tokens, noun_tokens)
                scale = res["scale"].clamp(max=MAX_LOGIT_SCALE)
                loss = torch.zeros((), device=device)
                if lw["image_text"] > 0:
                    it = image_text_loss(res["image"].float(), res["text"].float(), scale)
                    loss = loss + lw["image_text"] * it
                    logs["loss_image_text"] = logs.get("loss_image_text", 0.0) + float(it.detach()) / accum
                if lw["noun_region"] > 0:
                    if "nouns" in res:
                        nr, stats = noun_region_loss(
                            res["nouns"].float()[noun_ids.to(device)], noun_image.to(device), res["regions"].float(),
                            res["valid"], scale, mode=lw["mode"],
                            positives=positives.to(device) if lw["same_noun_positives"] else None)
                        logs["noun_acc"] = logs.get("noun_acc", 0.0) + stats["acc"] / accum
                    else:  # no noun in this batch: a zero that still reaches every parameter DDP expects
                        nr = res["regions"].sum() * 0
                    loss = loss + lw["noun_region"] * nr
                    logs["loss_noun_region"] = logs.get("loss_noun_region", 0.0) + float(nr.detach()) / accum
            (loss / accum).backward()
            logs["loss"] = logs.get("loss", 0.0) + float(loss.detach()) / accum
            seen += len(batch["captions"]) * world
        if cfg["optim"]["clip_grad"]:
            torch.nn.utils.clip_grad_norm_(params, cfg["optim"]["clip_grad"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.clip.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
        step += 1
        bar.update(1)
        if rank == 0 and (step % t["log_every"] == 0 or step == t["steps"] or step == 1):
            now = time.time()
            rec = {"step": step, **{k: round(v, 5) for k, v in logs.items()}, "lr": sched.get_last_lr()[0],
                   "scale": round(float(model.clip.logit_scale.detach().exp()), 3),
                   "samples_per_s": round(seen / max(1e-9, now - last_log), 1), "elapsed_s": round(now - start, 1),
                   "skipped": pipeline.counter.as_dict()}
            seen, last_log = 0, now
            with open(log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{logs['loss']:.3f}", sps=rec["samples_per_s"])
        over_time = t["max_minutes"] is not None and (time.time() - start) > 60 * float(t["max_minutes"])
        if world > 1:
            flag = torch.tensor([float(over_time)], device=device)
            dist.all_reduce(flag)
            over_time = bool(flag.item() > 0)
        if step % t["ckpt_every"] == 0 or step == t["steps"] or over_time:
            _checkpoint(out, model, opt, sched, step, cfg, rank, world, int(t["keep_last"]))
        if crash_at and step == crash_at:
            os._exit(17)
        if over_time:
            stopped_early = True
            break
    bar.close()
    summary = {"rank": rank, "world_size": world, "steps": step, "stopped_early": stopped_early,
               "weights_sha1": weights_checksum(model), "shards_read": sorted(shards_read),
               "skipped": pipeline.counter.as_dict(), "minutes": round((time.time() - start) / 60, 2)}
    (out / f"summary_rank{rank}.json").write_text(json.dumps(summary, indent=2))
    if rank == 0:
        save_checkpoint(out / "final.pt", {"model": model.state_dict(), "model_config": model.config, "step": step})
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _checkpoint(out: Path, model, opt, sched, step, cfg, rank, world, keep_last) -> None:
    # Every rank's RNG state is kept, so that each rank's randomness continues exactly after a resume.
    states = [None] * world
    if world > 1:
        dist.all_gather_object(states, rng_state())
    else:
        states = [rng_state()]
    if rank == 0:
        save_checkpoint(out / "checkpoints" / f"step-{step:07d}.pt",
                        {"model": model.state_dict(), "model_config": model.config, "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "step": step, "rng": states, "config": cfg})
        for old in checkpoints(out)[:-keep_last]:
            old.unlink()
    if world > 1:
        dist.barrier()
