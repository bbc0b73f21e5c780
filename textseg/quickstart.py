"""`textseg quickstart`: the whole pipeline on the embedded default, from nothing, on a CPU in under 30 minutes.

1. build the OpenMoji workbench (if it is not there yet);
2. evaluate the untrained model (the "before" row);
3. stage 1: image-caption contrastive pretraining of a small CLIP from scratch;
4. stage 2: region adaptation with the one-way noun-to-region loss on frozen Lab colour + x,y k-means groups (a
   grouping that needs no pretrained weights), regions embedded as configured in ``configs/train/stage2_region.yaml``;
5. evaluate on the workbench's VOC-format val set with the benchmark tools and print the Markdown table; the
   constant background score is chosen on a development set of another seed, never on val.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
_log = logging.getLogger(__name__)


def _shards(data: Path) -> list[str]:
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
        build_workbench(dev, train_scenes=0, val_scenes=scenes, ref_scenes=0, object_centric=0, size=96,
                        seed=seed + 1, workers=2, progress=progress)
    return dev


def evaluate_workbench(model, data: Path, out: Path, *, overlays: int = 12, limit: int | None = None,
                       progress: bool = True, meta: dict[str, Any] | None = None, dev: Path | None = None) -> dict[str, Any]:
    """Score a model on the workbench's VOC-format val set under the ``workbench`` protocol.

    With ``dev`` (a VOC-format set of other scenes), the constant background score is first chosen there.
    """
    from textseg.data import VOCSegmentation
    from textseg.evaluation import (SegmenterSemsegPredictor, calibrate_bg_score, evaluate_semseg, load_protocol,
                                    protocol_for_benchmark)
    from textseg.segmenter import Segmenter

    protocol = protocol_for_benchmark(load_protocol("workbench"), "voc21")
    seg = Segmenter(model.eval(), templates=protocol["templates"], text_cache_dir=False)
    calibration = None
    if dev is not None:
        best, scores = calibrate_bg_score(seg, VOCSegmentation(dev / "voc", split="val"), protocol, progress=progress)
        protocol["bg_score"] = best
        calibration = {"dev": str(dev), "bg_score": best, "dev_mIoU": scores}
    dataset = VOCSegmentation(data / "voc", split="val")
    predictor = SegmenterSemsegPredictor(seg, protocol, has_background=True)
    return evaluate_semseg(predictor, dataset, out, resume=False, overlays=overlays, limit=limit, progress=progress,
                           meta={"config": {"protocol": protocol, "calibration": calibration, **(meta or {})}})


def run_stage(config: str, overrides: list[str], progress: bool) -> dict[str, Any]:
    from textseg.train.config import load_config
    from textseg.train.engine import train

    cfg = load_config(REPO / "configs" / "train" / config, overrides)
    return train(cfg, progress=progress)


def quickstart(out: str | Path = "runs/quickstart", data: str | Path = "workbench/openmoji", *, minutes: float = 30.0,
               stage1_steps: int = 1500, stage2_steps: int = 1000, seed: int = 0, progress: bool = True,
               eval_limit: int | None = None) -> dict[str, Any]:
    """Run the quickstart; returns (and writes to ``out/quickstart.json``) the before/after metrics."""
    from textseg.factory import create_model
    from textseg.train.engine import build_model
    from textseg.train.config import load_config
    from textseg.workbench.build import build_workbench

    start = time.time()
    out, data = Path(out), Path(data)
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "manifest.json").is_file():
        print(f"[1/5] building the OpenMoji workbench in {data} ...")
        build_workbench(data, train_scenes=10000, val_scenes=1000, size=96, seed=seed, workers=2, progress=progress)
    else:
        print(f"[1/5] using the OpenMoji workbench in {data}")
    shards = json.dumps(_shards(data))
    dev = build_dev_set(data, seed, progress=progress)  # background-score calibration, never on val

    print("[2/5] evaluating the untrained model ...")
    torch.manual_seed(seed)
    before_model = build_model(load_config(REPO / "configs" / "train" / "stage1_image_text.yaml"))
    before = evaluate_workbench(before_model, data, out / "eval_before", overlays=0, limit=eval_limit,
                                progress=progress, dev=dev)
    del before_model

    def budget(share: float) -> float:
        left = minutes - (time.time() - start) / 60 - 1.5  # keep time for the final evaluation
        return max(1.0, left * share)

    print(f"[3/5] stage 1: image-caption contrastive pretraining ({stage1_steps} steps) ...")
    run_stage("stage1_image_text.yaml", [f"out={out / 'stage1'}", f"data.train={shards}", f"seed={seed}",
                                         f"train.steps={stage1_steps}", f"train.max_minutes={budget(0.55):.2f}"],
              progress)
    print(f"[4/5] stage 2: region adaptation, one-way noun-to-region loss ({stage2_steps} steps) ...")
    run_stage("stage2_region.yaml", [f"out={out / 'stage2'}", f"init={out / 'stage1' / 'final.pt'}",
                                     f"data.train={shards}", f"seed={seed}", f"train.steps={stage2_steps}",
                                     f"train.max_minutes={budget(1.0):.2f}"], progress)
    print("[5/5] evaluating on the workbench VOC val set ...")
    model = create_model("labxy-small-workbench", checkpoint=out / "stage2" / "final.pt")
    after = evaluate_workbench(model, data, out / "eval", overlays=12, limit=eval_limit, progress=progress, dev=dev)
    summary = {"minutes": round((time.time() - start) / 60, 1), "mIoU_before": before["metrics"]["mIoU"],
               "mIoU_after": after["metrics"]["mIoU"], "checkpoint": str(out / "stage2" / "final.pt"),
               "eval": str(out / "eval" / "results.json")}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2))
    print((out / "eval" / "results.md").read_text())
    print(f"mIoU before training {before['metrics']['mIoU']:.2f} -> after {after['metrics']['mIoU']:.2f} "
          f"({summary['minutes']} min). Overlays: {out / 'eval' / 'overlays'}; results: {out / 'eval' / 'results.json'}")
    return summary


def cmd_quickstart(args: argparse.Namespace) -> int:
    quickstart(args.out, args.data, minutes=args.minutes, stage1_steps=args.stage1_steps,
               stage2_steps=args.stage2_steps, seed=args.seed, progress=not args.no_progress,
               eval_limit=args.eval_limit)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="build the OpenMoji workbench, train a small model from scratch, evaluate")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--data", default="workbench/openmoji", help="workbench folder (built if missing)")
    p.add_argument("--minutes", type=float, default=30.0, help="time budget; training stops early to keep it")
    p.add_argument("--stage1-steps", type=int, default=1500)
    p.add_argument("--stage2-steps", type=int, default=1000)
    p.add_argument("--eval-limit", type=int, help="evaluate only the first N val images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_quickstart)
