"""Training the ``workbench-promptable-segmenter`` (:mod:`textseg.ris.standin`) on workbench masks with random point
prompts, as SAM is trained, with step checkpoints and exact resume; and its held-out one-point evaluation.

Sample ``i`` of step ``s`` is scene ``s * batch_size + i`` (:class:`~textseg.train.promptable_data.SegmenterScenes`),
so the data position of a run is its step: a run resumed from a step checkpoint, even after SIGKILL, ends with the
weights of the uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from textseg import artifacts as ckpt
from textseg.config import to_dict
from textseg.errors import UserError
from textseg.ris.promptable import PromptableCore, mask_centre_point, resolve_device
from textseg.ris.standin import WORKBENCH_SEGMENTER, build_workbench_segmenter, save_workbench_segmenter
from textseg.train.promptable_config import RESUMABLE_CHANGES, PromptableTrainConfig
from textseg.train.promptable_data import SegmenterScenes, collate_scenes, min_object_area
from textseg.train.promptable_loss import segmenter_loss
from textseg.train.schedule import build_optimizer, lr_scheduler

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

_log = logging.getLogger(__name__)

EVAL_START = 10_000_000  # held-out scene indices of the "segmenter" stream: far above any training index
RECENT = 50  # training steps averaged in the summary's "final"


def no_decay_of(model: torch.nn.Module) -> Callable[[str, torch.nn.Parameter], bool]:
    """The parameters of ``model`` kept free of weight decay: those of fewer than 2 dimensions (biases, norms) and
    the weights of its ``nn.Embedding`` modules."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return lambda name, p: p.ndim < 2 or id(p) in embeddings


def config_change(saved: Any, now: dict[str, Any]) -> str | None:
    """The first field (other than :data:`RESUMABLE_CHANGES`) in which a checkpoint's config differs from this
    run's, as ``"name old -> new"``; None when they agree."""
    if not isinstance(saved, dict):
        return "config missing"
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if key in RESUMABLE_CHANGES or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            sub = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            return f"{key}.{sub} {a.get(sub)!r} -> {b.get(sub)!r}"
        return f"{key} {a!r} -> {b!r}"
    return None


def latest_checkpoint(out: Path, cfg: PromptableTrainConfig) -> tuple[ckpt.ResumeState, list[dict[str, float]]] | None:
    """The newest usable step checkpoint of ``out`` and the recent training statistics it holds, or None.

    Raises:
        UserError: checkpoints exist but none is usable, or the newest was saved by a run with another config.
    """
    resume = ckpt.latest_resume_state(out)
    if resume is None:
        return None
    change = config_change(resume.config, to_dict(cfg))
    if change:
        raise UserError(f"{resume.path} was saved by a run with another config ({change}): use another out folder, "
                        "or resume=false to start afresh")
    recent = ckpt.read_checkpoint(resume.path).get("recent")
    if not (isinstance(recent, list) and all(isinstance(r, dict) for r in recent)):
        raise UserError(f"{resume.path} is not a usable step checkpoint (malformed 'recent' entry)")
    return resume, recent


def train_workbench_segmenter(cfg: PromptableTrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the stand-in for SAM as ``cfg`` says.

    Up to ``cfg.prompts`` objects of each scene (any with at least :func:`min_object_area` visible pixels,
    distractors included) each get a one-point prompt for the multimask outputs and a prompt of 1-3 positives and
    0-2 negatives for the single output (:func:`~textseg.train.promptable_loss.segmenter_loss`). AdamW, linear
    warm-up, cosine decay to lr / 20, gradients clipped at norm 1. The run depends only on ``seed`` (weights,
    prompts) and ``workbench_seed`` (scenes), not on ``workers``.

    Writes ``out/final.pt`` (:func:`~textseg.ris.standin.save_workbench_segmenter`, the summary in its meta),
    ``out/metrics.jsonl`` (one record per step), ``out/summary.json`` and step checkpoints
    ``out/checkpoints/step-*.pt`` (every ``ckpt_every`` steps and at the last, the newest ``keep_last`` kept). With
    ``resume`` a run continues exactly from the newest; without, the old step checkpoints are deleted.

    Returns:
        The summary: ``name``, ``steps``, ``seconds`` (of this run), ``final`` (the training losses and IoUs over
        the last steps), ``held_out_one_point`` (:func:`evaluate_workbench_segmenter`), ``settings``, ``weights``.

    Raises:
        UserError: the out folder cannot be written, or its checkpoints cannot be resumed from.
    """
    from tqdm import tqdm

    from textseg.io import atomic_write_text, check_writable_folder
    from textseg.train.loop import trim_metrics

    out = check_writable_folder(cfg.out, "out folder")
    dev = resolve_device(cfg.device)
    steps, batch_size, warmup = cfg.steps, cfg.batch_size, cfg.warmup_steps

    torch.manual_seed(cfg.seed)
    model = build_workbench_segmenter(cfg.model).to(dev).train()
    core = PromptableCore(model)
    # fused=False: the unfused AdamW of this loop's first runs, so that CUDA runs keep their numbers too
    opt = build_optimizer(model.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                          no_decay=no_decay_of(model), fused=False)
    sched = lr_scheduler(opt, steps, warmup=warmup, end=0.05)
    found = latest_checkpoint(out, cfg) if cfg.resume else None
    start_step, recent = 0, []
    if found is not None:
        resume, recent = found
        ckpt.load_state_strict(model, resume.model, f"cannot resume from {resume.path}: its model")
        try:
            opt.load_state_dict(resume.optimizer)
            sched.load_state_dict(resume.scheduler)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise UserError(f"cannot resume from {resume.path}: {ckpt.mismatch_detail(err)}") from None
        start_step = resume.step
        _log.info("resumed from %s at step %d", resume.path, start_step)
    elif not cfg.resume:
        for old in ckpt.step_checkpoints(out):  # a new run: old checkpoints would be taken for its newest
            old.unlink()
    data = SegmenterScenes(steps * batch_size, prompts=cfg.prompts, seed=cfg.seed,
                           workbench_seed=cfg.workbench_seed, image_size=cfg.image_size)
    rest = torch.utils.data.Subset(data, range(start_step * batch_size, steps * batch_size))
    loader = torch.utils.data.DataLoader(rest, batch_size=batch_size, shuffle=False, num_workers=cfg.workers,
                                         collate_fn=collate_scenes, prefetch_factor=4 if cfg.workers else None)

    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    trim_metrics(metrics, start_step)  # a new run starts a new log; a resumed one drops the steps it redoes
    start = time.perf_counter()
    batches = iter(loader)  # draws the loader's base seed from torch's generator, as the uninterrupted run did
    if found is not None:
        ckpt.set_rng_state(found[0].rng_for(0))
    with tqdm(total=steps, initial=start_step, desc="train-promptable", unit="step", disable=not progress,
              dynamic_ncols=True) as bar, open(metrics, "a", encoding="utf-8") as log:
        for step, batch in enumerate(batches, start=start_step):
            if len(batch["masks"]) == 0:  # no object big enough in the whole batch: nothing to learn from
                stats = {}
            else:
                loss, stats = segmenter_loss(core, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
                opt.step()
                recent = (recent + [stats])[-RECENT:]
            sched.step()
            record = {"step": step + 1, **{k: round(v, 5) for k, v in stats.items()},
                      "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - start, 2)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(1)
            if stats:
                bar.set_postfix(loss=f"{stats['loss']:.3f}", iou=f"{stats['one_point_iou']:.2f}")
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == steps:
                ckpt.save_checkpoint(ckpt.step_checkpoint_path(out, step + 1), model.state_dict(), step=step + 1,
                                     model_config=to_dict(cfg.model), optimizer=opt.state_dict(),
                                     scheduler=sched.state_dict(), rng=[ckpt.rng_state()], config=to_dict(cfg),
                                     recent=recent)
                ckpt.prune_step_checkpoints(out, cfg.keep_last)
    seconds = time.perf_counter() - start
    model.eval()
    held_out = (evaluate_workbench_segmenter(model, scenes=cfg.eval_scenes, workbench_seed=cfg.workbench_seed,
                                             image_size=cfg.image_size, progress=progress) if cfg.eval_scenes else {})
    final = {k: round(float(np.mean([s[k] for s in recent])), 5) for k in ("one_point_iou", "points_iou", "loss")} \
        if recent else {}
    summary = {"name": WORKBENCH_SEGMENTER, "steps": steps, "seconds": round(seconds, 1), "final": final,
               "held_out_one_point": held_out,
               "settings": {"steps": steps, "batch_size": batch_size, "prompts": cfg.prompts, "lr": cfg.lr,
                            "seed": cfg.seed, "workbench_seed": cfg.workbench_seed, "image_size": cfg.image_size,
                            "weight_decay": cfg.weight_decay, "warmup": warmup, "workers": cfg.workers,
                            "device": str(dev)}}
    weights = save_workbench_segmenter(model, out / "final.pt", cfg.model, {"summary": summary})
    summary["weights"] = str(weights)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


@torch.no_grad()
def evaluate_workbench_segmenter(model: Sam, *, scenes: int = 200, workbench_seed: int = 0, image_size: int = 96,
                                 start: int = EVAL_START, batch_size: int = 32, progress: bool = False,
                                 ) -> dict[str, Any]:
    """One-point mIoU on held-out workbench scenes (stream "segmenter", indices from ``start``): each object with
    at least :func:`min_object_area` visible pixels is prompted with one positive point at its
    :func:`~textseg.ris.promptable.mask_centre_point`; the mask is the multimask output with the highest predicted
    IoU.

    Returns:
        ``objects``; ``mIoU`` (percent, every object counting once); ``iou_ge_0.5`` (percent of objects with IoU
        >= 0.5); ``mIoU_best_output`` (percent, the best of the outputs: how good the IoU prediction's choice
        could be); ``scenes`` and ``start``.
    """
    from tqdm import tqdm

    from textseg.workbench.glyphs import GlyphCache
    from textseg.workbench.scenes import make_scene

    core = PromptableCore(model)
    glyphs = GlyphCache()
    area = min_object_area(image_size)
    chosen: list[float] = []
    best: list[float] = []
    for lo in tqdm(range(0, scenes, batch_size), desc="eval-segmenter", unit="batch", disable=not progress):
        batch = [make_scene(workbench_seed, start + i, image_size, stream="segmenter", cache=glyphs)
                 for i in range(lo, min(scenes, lo + batch_size))]
        objects = [(b, o.visible) for b, s in enumerate(batch) for o in s.objects if o.visible_area >= area]
        if not objects:
            continue
        encoded = core.encode(np.stack([s.image for s in batch]))
        coords = torch.tensor([mask_centre_point(m) for _, m in objects], dtype=torch.float32)[:, None]
        low_res, iou_pred = core.decode_flat(encoded, torch.tensor([b for b, _ in objects]), coords,
                                             torch.ones(len(objects), 1, dtype=torch.int), multimask=True)
        pred = core.upscale(encoded, low_res) > model.mask_threshold
        target = torch.from_numpy(np.stack([m for _, m in objects])).to(pred.device)[:, None]
        iou = (pred & target).flatten(2).sum(-1).float() / (pred | target).flatten(2).sum(-1).clamp(min=1).float()
        chosen += iou.gather(1, iou_pred.argmax(1, keepdim=True))[:, 0].tolist()
        best += iou.max(1).values.tolist()

    def pct(values: list[Any]) -> float:
        return round(100 * float(np.mean(values)), 2) if values else float("nan")

    return {"objects": len(chosen), "mIoU": pct(chosen), "iou_ge_0.5": pct([v >= 0.5 for v in chosen]),
            "mIoU_best_output": pct(best), "scenes": scenes, "start": start}


__all__ = ["EVAL_START", "config_change", "evaluate_workbench_segmenter", "latest_checkpoint", "no_decay_of",
           "train_workbench_segmenter"]
