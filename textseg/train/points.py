"""Training the point generator (``textseg train-points``) from image-text pairs alone: the loop, its step
checkpoints and exact resume. The objective is :mod:`textseg.train.points_loss`, the settings
:mod:`textseg.train.points_config`, the data :mod:`textseg.train.points_data`.

Curriculum: ``stages`` run in order, each with its own data (the workbench: object-centric images first, then
referring scenes); ``curriculum: false`` trains on the union of all stages' data for the same total steps.

Every ``ckpt_every`` steps a step checkpoint ``out/checkpoints/step-*.pt`` (the newest ``keep_last`` kept) holds the
generator, the optimizer, the RNG states, the data position (the stage and the batches it has used) and the config.
A run started again in the same out folder (``resume``, the default) continues from the newest one exactly, so a
run killed at any moment and restarted ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from textseg.artifacts import (load_state_strict, prune_step_checkpoints, read_artifact, rng_state, set_rng_state,
                               step_checkpoint_path, step_checkpoints, write_artifact)
from textseg.errors import UserError
from textseg.io import atomic_write_text
from textseg.ris.points import PointGenerator, save_point_generator
from textseg.train.loop import trim_metrics
from textseg.train.points_config import RUN_CONTROL, PointTrainConfig
from textseg.train.points_data import pair_batches, resolve_shards
from textseg.train.points_loss import train_step
from textseg.train.schedule import build_optimizer, warmup_cosine

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "textseg-point-generator-step"


@dataclass
class PointResumeState:
    """What a point-training step checkpoint holds to continue a run exactly.

    Attributes:
        path: the checkpoint.
        step: steps done.
        generator, optimizer: state dicts.
        rng: the process's RNG states (:func:`textseg.artifacts.rng_state`).
        sampling: the state of the training's own ``torch.Generator`` (candidates and point draws).
        position: the data position, ``{"stage": index, "batches": batches of that stage used}``.
        last: the loss parts of the last step done.
    """

    path: Path
    step: int
    generator: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    sampling: torch.Tensor
    position: dict[str, int]
    last: dict[str, float]


def data_position(stage_steps: list[int], step: int) -> dict[str, int]:
    """The data position after ``step`` steps of stages of ``stage_steps``: the stage the next step is in (the last
    one when all are done) and how many of its batches are used."""
    first = 0
    for i, steps in enumerate(stage_steps):
        if step < first + steps or i == len(stage_steps) - 1:
            return {"stage": i, "batches": step - first}
        first += steps
    return {"stage": 0, "batches": step}


def save_step_checkpoint(out: Path, step: int, generator: PointGenerator, opt: torch.optim.Optimizer,
                         sampling: torch.Generator, position: Mapping[str, int], cfg: PointTrainConfig,
                         last: Mapping[str, float]) -> Path:
    """Write ``out/checkpoints/step-<step>.pt`` (see the module docstring) and keep the newest ``cfg.keep_last``."""
    path = write_artifact(step_checkpoint_path(out, step), {
        "kind": CHECKPOINT_KIND, "version": 1, "step": int(step), "generator": generator.state_dict(),
        "generator_config": dict(generator.config), "optimizer": opt.state_dict(), "rng": rng_state(),
        "sampling_rng": sampling.get_state(), "data": dict(position), "config": asdict(cfg), "last": dict(last)})
    prune_step_checkpoints(out, cfg.keep_last)
    return path


def read_step_checkpoint(path: Path) -> tuple[PointResumeState, dict[str, Any]]:
    """The resume state of a step checkpoint and the config it was saved with.

    Raises:
        UserError: the file is unreadable, of another kind, or lacks an entry or holds it malformed.
    """
    data = read_artifact(path, "point training checkpoint", kind=CHECKPOINT_KIND)
    pos, last = data.get("data"), data.get("last")
    ok = (isinstance(data.get("step"), int) and data["step"] >= 0 and isinstance(data.get("generator"), Mapping)
          and isinstance(data.get("optimizer"), Mapping) and isinstance(data.get("rng"), Mapping)
          and isinstance(data.get("sampling_rng"), torch.Tensor) and isinstance(data.get("config"), Mapping)
          and isinstance(pos, Mapping) and all(isinstance(pos.get(k), int) for k in ("stage", "batches"))
          and isinstance(last, Mapping))
    if not ok:
        raise UserError(f"{path} is not a usable point training checkpoint (a missing or malformed entry)")
    state = PointResumeState(path=path, step=data["step"], generator=dict(data["generator"]),
                             optimizer=dict(data["optimizer"]), rng=dict(data["rng"]), sampling=data["sampling_rng"],
                             position={"stage": pos["stage"], "batches": pos["batches"]},
                             last={str(k): float(v) for k, v in last.items()})
    return state, dict(data["config"])


def check_same_settings(saved: Mapping[str, Any], cfg: PointTrainConfig, source: Path) -> None:
    """Raise a one-line UserError when a checkpoint was saved with other training settings than ``cfg`` (the
    checkpointing settings aside): a resumed run must continue the very run it saved."""
    now = asdict(cfg)
    for key in sorted(set(saved) | set(now)):
        if key not in RUN_CONTROL and saved.get(key) != now.get(key):
            raise UserError(f"{source} was saved by a run with {key} {saved.get(key)!r}, but this run has {key} "
                            f"{now.get(key)!r}: use another out folder, or resume=false")


def latest_resume_state(out: Path, cfg: PointTrainConfig) -> PointResumeState | None:
    """The newest usable step checkpoint of the run in ``out`` (None when there is none); an unusable newer one
    is skipped with a warning.

    Raises:
        UserError: checkpoints exist but none is usable, or the newest usable one has other settings.
    """
    failed: list[tuple[Path, UserError]] = []
    for path in reversed(step_checkpoints(out)):
        try:
            state, saved = read_step_checkpoint(path)
        except UserError as err:
            failed.append((path, err))
            continue
        check_same_settings(saved, cfg, path)
        for bad, err in failed:
            logger.warning("cannot resume from %s (%s); resuming from the previous checkpoint %s instead", bad, err,
                           path.name)
        return state
    if failed:
        raise UserError(f"no usable checkpoint to resume from in {out / 'checkpoints'}: {failed[0][1]} "
                        f"({len(failed)} checkpoint(s) tried); delete them to start afresh, or set resume=false")
    return None


def restore(state: PointResumeState, generator: PointGenerator, opt: torch.optim.Optimizer,
            sampling: torch.Generator, stage_steps: list[int]) -> None:
    """Load a step checkpoint's generator, optimizer and RNG states; its data position must fit its step."""
    where = f"cannot resume from {state.path}"
    if state.step > sum(stage_steps) or state.position != data_position(stage_steps, state.step):
        raise UserError(f"{where}: its data position {state.position} does not fit its step {state.step}")
    load_state_strict(generator, state.generator, f"{where}: its generator does not fit this run's")
    try:
        opt.load_state_dict(state.optimizer)
        set_rng_state(state.rng)
        sampling.set_state(state.sampling)
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as err:
        raise UserError(f"{where}: malformed optimizer or RNG state ({type(err).__name__})") from None


def train_point_generator(model: Any, core: Any, cfg: PointTrainConfig, out: str | Path, *,
                          data_root: str | Path | None = None, progress: bool = True,
                          meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a :class:`~textseg.ris.points.PointGenerator` (module docstring) and write ``out/final.pt``,
    ``out/metrics.jsonl``, ``out/config.json`` and step checkpoints; with ``cfg.resume`` continue from the newest
    step checkpoint in ``out``.

    Args:
        model: the frozen textseg model (its CLIP gives dense and text features).
        core: the frozen promptable segmenter's tensor core.
        cfg: the settings (:func:`~textseg.train.points_config.load_point_config`).
        out: output folder.
        data_root: folder that relative shard patterns are taken from.
        progress: show a tqdm bar.
        meta: saved with the generator (e.g. the model and segmenter checkpoints used).

    Returns:
        A summary: steps per stage, seconds, final loss parts.

    Raises:
        UserError: a missing shard, no readable sample, or an unusable checkpoint to resume from.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(data_root) if data_root is not None else None
    stages = [(s.name, s.steps, resolve_shards(s.data, root)) for s in cfg.stages]
    if not cfg.curriculum:
        stages = [("mixed", cfg.total_steps, [u for _, _, urls in stages for u in urls])]
    stage_steps = [steps for _, steps, _ in stages]
    device = next(model.parameters()).device
    model.eval().requires_grad_(False)
    torch.manual_seed(cfg.seed)
    embed_dim = int(model.clip.text_projection.shape[1]) if getattr(model.clip, "text_projection", None) is not None \
        else int(model.clip.visual.output_dim)
    generator = PointGenerator(embed_dim, cfg.width, cfg.depth, cfg.heads).to(device)
    # Every parameter is decayed; not fused, so that the update's arithmetic is the same on every device.
    opt = build_optimizer(generator.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, no_decay=None,
                          fused=False)
    rng = torch.Generator().manual_seed(cfg.seed)
    resume = latest_resume_state(out, cfg) if cfg.resume else None
    step, last = 0, {}
    if resume is not None:
        restore(resume, generator, opt, rng, stage_steps)
        step, last = resume.step, dict(resume.last)
        logger.info("resumed from %s at step %d", resume.path, step)
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    metrics_path = out / "metrics.jsonl"
    if resume is None:
        metrics_path.unlink(missing_ok=True)
    else:
        trim_metrics(metrics_path, step)
    start, summary = time.perf_counter(), {"stages": []}
    bar = tqdm(total=cfg.total_steps, initial=step, desc="point generator", unit="step", disable=not progress)
    first = 0
    with metrics_path.open("a", encoding="utf-8") as metrics:
        for si, (name, steps, urls) in enumerate(stages):
            done = min(steps, max(0, step - first))
            batches = pair_batches(urls, cfg.batch_size, cfg.image_size, cfg.seed * 1000 + si, skip=done)
            for _ in range(done, steps):
                images, sentences = next(batches)
                for group in opt.param_groups:
                    group["lr"] = warmup_cosine(step, cfg.total_steps, start=cfg.lr, end=0.0,
                                                warmup=cfg.warmup_steps)
                loss, last = train_step(generator, model, core, images, sentences, cfg, rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(generator.parameters(), 1.0)
                opt.step()
                step += 1
                metrics.write(json.dumps({"step": step, "stage": name, **{k: round(v, 5) for k, v in last.items()}})
                              + "\n")
                metrics.flush()
                if step % cfg.ckpt_every == 0:
                    save_step_checkpoint(out, step, generator, opt, rng, data_position(stage_steps, step), cfg,
                                         last)
                bar.update(1)
                bar.set_postfix(stage=name, loss=f"{last['loss']:.3f}")
            summary["stages"].append({"name": name, "steps": steps, "shards": len(urls)})
            first += steps
    bar.close()
    summary.update(steps=step, seconds=round(time.perf_counter() - start, 1), final=last,
                   curriculum=cfg.curriculum)
    save_point_generator(generator.cpu(), out / "final.pt", {**(meta or {}), "config": asdict(cfg),
                                                              "summary": summary})
    return summary


__all__ = ["CHECKPOINT_KIND", "PointResumeState", "check_same_settings", "data_position", "latest_resume_state",
           "read_step_checkpoint", "restore", "save_step_checkpoint", "train_point_generator"]
