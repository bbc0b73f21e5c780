"""`textseg quickstart`: the whole pipeline on the embedded default, from nothing, on a CPU in under 30 minutes.

1. build the OpenMoji workbench (if it is not there yet) and print the schedule's time estimate for this machine;
2. evaluate the untrained model (the "before" row);
3. optionally (``stage1_steps`` > 0; the default is 0) image-caption contrastive pretraining of the small CLIP;
   with ``grouping="learned"``, first the self-supervised grouping backbone (``textseg pretrain-grouping``, DINO on
   the workbench's images, the ``workbench`` self-supervised preset's steps);
4. region training with the one-way noun-to-region loss (a noun scores an image by the soft maximum of its
   similarities over the image's regions, ``loss.region_temperature``) on frozen k-means groups (k = 16) of Lab
   colour + x,y (the default; a grouping that needs no pretrained weights) or of the learned backbone's keys + x,y
   (``learned-small-workbench``), regions embedded as the ``stage2_region`` training preset says; from random
   weights unless step 3 pretrained the CLIP;
5. evaluate on the workbench's VOC-format val set with the benchmark tools and print the Markdown table, with the
   error decomposition (:mod:`textseg.eval.diagnose`: grouping and recognition ceilings, fg/bg confusion); the
   protocol groups each scene four times (k = 16, 24, 32, 48), embeds the regions on 16 shifted CLIP patch grids
   (``grid_shifts``), averages the class probabilities, smooths them and refines them along colour edges (PAMR);
   the constant background score is chosen on a development set of another seed, never on val.

The schedule is a fixed number of steps (:data:`STAGE1_STEPS`, :data:`STAGE2_STEPS`): the same work on any machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

# The default schedule: a fixed number of steps, sized to fit the 30-minute quickstart on 2 idle CPU cores of the
# slower machines this project runs on (README "Results" gives the measured split).
STAGE1_STEPS = 0  # no image-caption pretraining: region training from random weights won on the development scenes
STAGE2_STEPS = 2040
# The final evaluations (calibration, diagnosis, generic-background row; 16 grids, four groupings, smoothing and
# PAMR each): 7.0 min on 2 idle cores (docs/results.md); the untrained model's evaluation before training takes
# about 2.9 more.
EVAL_MINUTES = 7.0
BEFORE_EVAL_MINUTES = 2.9
# grouping="learned": the model it trains, and the grouping backbone's self-distillation (800 steps: 6.0 min on 2
# idle cores of this project's machine)
GROUPING_MODELS = {"labxy": "labxy-small-workbench", "learned": "learned-small-workbench"}
GROUPING_MINUTES = 6.0


def data_workers() -> int:
    """DataLoader workers for the quickstart's training: none on a CPU-only machine (a worker process there takes
    cores from the training step's threads, and with the grouping cache the step does the data work cheaply
    itself: about 1.1 s against 0.7 s per step on 2 cores), up to 8 on a GPU machine."""
    import os

    import torch

    return min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0


def workbench_shards(data: Path) -> list[str]:
    """Brace-notation URLs of a workbench's caption shards and object-centric shards."""
    out = []
    for part in ("train", "objects"):
        n = len(list((data / part).glob("shard-*.tar")))
        if n:
            out.append(str(data / part / f"shard-{{000000..{n - 1:06d}}}.tar"))
    return out


def build_dev_set(data: Path, seed: int, scenes: int = 300, progress: bool = True) -> Path:
    """A VOC-format development set of another seed (never the reported val scenes), for calibration."""
    from textseg.workbench.build import build_workbench

    dev = data / f"dev-seed{seed + 1}"
    if not (dev / "manifest.json").is_file():
        build_workbench(dev, train_scenes=0, val_scenes=scenes, ref_scenes=0, object_centric=0, refer_train_scenes=0, size=96,
                        seed=seed + 1, workers=2, progress=progress)
    return dev


def evaluate_workbench(model, data: Path, out: Path, *, overlays: int = 12, limit: int | None = None,
                       progress: bool = True, meta: dict[str, Any] | None = None, dev: Path | None = None,
                       diagnose: bool = True, protocol: str = "workbench",
                       protocol_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score a model on the workbench's VOC-format val set under a workbench protocol.

    With ``dev`` (a VOC-format set of other scenes), the constant background score is first chosen there. With
    ``diagnose`` (the default), the results hold the error decomposition (:mod:`textseg.eval.diagnose`).
    ``protocol``: ``workbench`` (background classes: the generator's background nouns) or ``workbench-generic``
    (a generic background vocabulary, none of the generator's words but "background"); ``protocol_fields``
    change single fields of it (e.g. ``{"group_vote": True}``).
    """
    from textseg.config import load_protocol, to_dict
    from textseg.data import VOCSegmentation
    from textseg.eval import SegmenterSemsegPredictor, calibrate_bg_score, evaluate_semseg
    from textseg.eval.diagnose import SegmenterDiagnoser
    from textseg.segmenter import Segmenter

    protocol = load_protocol(protocol).for_benchmark("voc21")
    if protocol_fields:
        protocol = protocol.replace(**protocol_fields)
    seg = Segmenter(model.eval(), protocol, text_cache_dir=False)
    calibration = None
    if dev is not None:
        best, scores = calibrate_bg_score(seg, VOCSegmentation(dev / "voc", split="val"), protocol, progress=progress)
        protocol = protocol.replace(bg_score=best)
        calibration = {"dev": str(dev), "bg_score": best, "dev_mIoU": scores}
    dataset = VOCSegmentation(data / "voc", split="val")
    predictor = SegmenterSemsegPredictor(seg, protocol, has_background=True)
    diagnoser = SegmenterDiagnoser(predictor, dataset.ignore_index) if diagnose else None
    return evaluate_semseg(predictor, dataset, out, resume=False, overlays=overlays, limit=limit, progress=progress,
                           meta={"config": {"protocol": to_dict(protocol), "calibration": calibration,
                                                 **(meta or {})}}, diagnoser=diagnoser)


def run_stage(preset: str, settings: dict[str, Any], progress: bool, *, variants: Sequence[str | Path] = (),
              overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train a shipped training preset (``stage1_image_text``, ``stage2_region``).

    The preset is merged with the variant files, then ``settings`` (nested fields), then ``key=value`` overrides.
    """
    from textseg.train import load_train_config, train

    return train(load_train_config(preset, overrides, *variants, settings), progress=progress)


def estimate_minutes(stage1_steps: int, stage2_steps: int, seed: int = 0) -> dict[str, float]:
    """Minutes the two training stages should take on this machine: seconds per step of each stage, timed on a
    synthetic batch (:func:`textseg.bench.training_step_seconds`), times the steps."""
    from textseg.bench import training_step_seconds
    from textseg.train import load_train_config

    s1 = training_step_seconds(load_train_config("stage1_image_text", (), {"seed": seed}), seed=seed) \
        if stage1_steps else 0.0
    s2 = training_step_seconds(load_train_config("stage2_region", (), {"seed": seed}), seed=seed)
    return {"stage1_s_per_step": round(s1, 3), "stage2_s_per_step": round(s2, 3),
            "training_minutes": round((stage1_steps * s1 + stage2_steps * s2) / 60, 1)}


def quickstart(out: str | Path = "runs/quickstart", data: str | Path = "workbench/openmoji", *,
               minutes: float | None = None, stage1_steps: int = STAGE1_STEPS, stage2_steps: int = STAGE2_STEPS,
               seed: int = 0, progress: bool = True, eval_limit: int | None = None,
               grouping: str = "labxy") -> dict[str, Any]:
    """Run the quickstart; returns (and writes to ``out/quickstart.json``) the before/after metrics.

    The schedule is a fixed number of steps (the same work on any machine). ``minutes`` is an opt-in time budget:
    training stops early to keep it, and the summary says how many steps each stage ran. ``grouping``: ``labxy``
    (Lab colour + x,y; the default) or ``learned`` (a grouping backbone trained first by self-distillation on the
    workbench's images, into ``out/grouping``; about 13 more minutes on 2 cores, past the 30-minute budget: README
    "Results").
    """
    from textseg.factory import create_model
    from textseg.io import atomic_write_text
    from textseg.train import build_model, load_train_config
    from textseg.workbench.build import build_workbench

    from textseg.errors import UserError

    if grouping not in GROUPING_MODELS:
        raise UserError(f"grouping must be one of {', '.join(GROUPING_MODELS)}, got {grouping!r}")
    if grouping == "learned" and stage1_steps:
        raise UserError("the learned grouping trains without stage 1 (stage 1 trains the Lab + x,y model): "
                        "give stage 1 no steps")
    start = time.time()
    out, data = Path(out), Path(data)
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "manifest.json").is_file():
        print(f"[1/5] building the OpenMoji workbench in {data} ...")
        build_workbench(data, train_scenes=10000, val_scenes=1000, size=96, seed=seed, workers=2, progress=progress)
    else:
        print(f"[1/5] using the OpenMoji workbench in {data}")
    shards = workbench_shards(data)
    dev = build_dev_set(data, seed, progress=progress)  # background-score calibration, never on val
    estimate = estimate_minutes(stage1_steps, stage2_steps, seed)
    first = (f"stage 1 {stage1_steps} steps (~{estimate['stage1_s_per_step']:.2f} s each here), " if stage1_steps
             else "no stage 1, ")
    print(f"      schedule: {first}stage 2 {stage2_steps} steps (~{estimate['stage2_s_per_step']:.2f} s each here): "
          f"about {estimate['training_minutes']:.0f} min of training on this machine, plus about "
          f"{EVAL_MINUTES + BEFORE_EVAL_MINUTES:.0f} min of evaluation" +
          (f" and about {GROUPING_MINUTES:.0f} min (on 2 CPU cores) of grouping-backbone training"
           if grouping == "learned" else "") +
          (f"; --minutes {minutes:g}: training stops early to keep that budget" if minutes is not None else ""))

    print("[2/5] evaluating the untrained model ...")
    before_model = build_model(load_train_config("stage1_image_text", (), {"seed": seed}))
    before = evaluate_workbench(before_model, data, out / "eval_before", overlays=0, limit=eval_limit,
                                progress=progress, dev=dev, diagnose=False)
    del before_model

    def budget(share: float) -> float | None:
        if minutes is None:
            return None
        left = minutes - (time.time() - start) / 60 - EVAL_MINUTES  # keep time for the final evaluations
        return round(max(1.0, left * share), 2)

    data_settings = {"train": shards, "workers": data_workers()}
    stage2: dict[str, Any] = {"model": GROUPING_MODELS[grouping]}
    grouping_minutes = 0.0
    if grouping == "learned":
        import torch

        from textseg.train.selfsup import load_selfsup_config, pretrain_grouping

        cfg = load_selfsup_config("workbench", [f"seed={seed}"])
        print(f"[3/5] grouping backbone: DINO self-distillation on the workbench's images ({cfg.train.steps} "
              "steps) ...")
        g = pretrain_grouping(cfg, data, out / "grouping", device="cuda" if torch.cuda.is_available() else "cpu",
                              progress=progress)
        grouping_minutes = round(g["seconds"] / 60, 1)
        stage2.update(pretrained=True, model_overrides={"backbone": {"weights": str(g["final"])}})
    if stage1_steps:
        print(f"[3/5] stage 1: image-caption contrastive pretraining ({stage1_steps} steps) ...")
        s1 = run_stage("stage1_image_text", {"out": str(out / "stage1"), "data": data_settings, "seed": seed,
                                             "train": {"steps": stage1_steps, "max_minutes": budget(0.55)}}, progress)
    else:
        print("[3/5] stage 1: none (stage 2 trains the CLIP from random weights)" if grouping == "labxy" else
              "      stage 1: none (stage 2 trains the CLIP from random weights)")
        s1 = {"steps": 0, "minutes": 0.0}
    print(f"[4/5] stage 2: region training, one-way noun-to-region loss on {grouping} groups ({stage2_steps} steps)"
          " ...")
    s2 = run_stage("stage2_region", {**stage2, "out": str(out / "stage2"), "data": data_settings, "seed": seed,
                                     "init": str(out / "stage1" / "final.pt") if stage1_steps else None,
                                     "train": {"steps": stage2_steps, "max_minutes": budget(1.0)}}, progress)
    steps_run = {"stage1": s1["steps"], "stage2": s2["steps"]}
    if minutes is not None:
        print(f"      --minutes {minutes:g}: stage 1 ran {s1['steps']} of {stage1_steps} steps, stage 2 "
              f"{s2['steps']} of {stage2_steps}")
    print("[5/5] evaluating on the workbench VOC val set ...")
    model = create_model(GROUPING_MODELS[grouping], checkpoint=out / "stage2" / "final.pt")
    after = evaluate_workbench(model, data, out / "eval", overlays=12, limit=eval_limit, progress=progress, dev=dev)
    generic = evaluate_workbench(model, data, out / "eval_generic", overlays=0, limit=eval_limit, progress=progress,
                                 dev=dev, diagnose=False, protocol="workbench-generic")
    summary = {"minutes": round((time.time() - start) / 60, 1), "grouping": grouping, "training_minutes": {
                   "grouping": grouping_minutes, "stage1": s1["minutes"], "stage2": s2["minutes"],
                   "estimated": estimate["training_minutes"]},
               "steps": {"stage1": stage1_steps, "stage2": stage2_steps}, "steps_run": steps_run,
               "time_budget_minutes": minutes, "seed": seed, "mIoU_before": before["metrics"]["mIoU"],
               "mIoU_after": after["metrics"]["mIoU"], "mIoU_after_generic_background": generic["metrics"]["mIoU"],
               "checkpoint": str(out / "stage2" / "final.pt"), "eval": str(out / "eval" / "results.json"),
               "diagnosis": after.get("diagnosis")}
    atomic_write_text(out / "quickstart.json", json.dumps(summary, indent=2))
    print((out / "eval" / "results.md").read_text())
    print(f"mIoU before training {before['metrics']['mIoU']:.2f} -> after {after['metrics']['mIoU']:.2f}; with the "
          f"generic background vocabulary (protocol workbench-generic) {generic['metrics']['mIoU']:.2f} "
          f"({summary['minutes']} min; training {s1['minutes'] + s2['minutes']:.1f} min for {s1['steps']} + "
          f"{s2['steps']} steps). Overlays: {out / 'eval' / 'overlays'}; results: {out / 'eval' / 'results.json'}")
    return summary
