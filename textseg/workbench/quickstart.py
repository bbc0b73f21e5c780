"""`textseg quickstart`: the whole pipeline on the embedded default, from nothing, on a CPU in under 30 minutes.

1. build the OpenMoji workbench (if it is not there yet);
2. evaluate the untrained model (the "before" row);
3. stage 1: image-caption contrastive pretraining of a small CLIP from scratch;
4. stage 2: region adaptation with the one-way noun-to-region loss on frozen Lab colour + x,y k-means groups (a
   grouping that needs no pretrained weights), regions embedded as the ``stage2_region`` training preset says;
5. evaluate on the workbench's VOC-format val set with the benchmark tools and print the Markdown table, with the
   error decomposition (:mod:`textseg.eval.diagnose`: grouping and recognition ceilings, fg/bg confusion); the
   constant background score is chosen on a development set of another seed, never on val.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence



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
        build_workbench(dev, train_scenes=0, val_scenes=scenes, ref_scenes=0, object_centric=0, refer_train_scenes=0, size=96,
                        seed=seed + 1, workers=2, progress=progress)
    return dev


def evaluate_workbench(model, data: Path, out: Path, *, overlays: int = 12, limit: int | None = None,
                       progress: bool = True, meta: dict[str, Any] | None = None, dev: Path | None = None,
                       diagnose: bool = True, protocol: str = "workbench") -> dict[str, Any]:
    """Score a model on the workbench's VOC-format val set under a workbench protocol.

    With ``dev`` (a VOC-format set of other scenes), the constant background score is first chosen there. With
    ``diagnose`` (the default), the results hold the error decomposition (:mod:`textseg.eval.diagnose`).
    ``protocol``: ``workbench`` (background classes: the generator's background nouns) or ``workbench-generic``
    (a generic background vocabulary, none of the generator's words but "background").
    """
    from textseg.config import load_protocol, to_dict
    from textseg.data import VOCSegmentation
    from textseg.eval import SegmenterSemsegPredictor, calibrate_bg_score, evaluate_semseg
    from textseg.eval.diagnose import SegmenterDiagnoser
    from textseg.segmenter import Segmenter

    protocol = load_protocol(protocol).for_benchmark("voc21")
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


def quickstart(out: str | Path = "runs/quickstart", data: str | Path = "workbench/openmoji", *, minutes: float = 30.0,
               stage1_steps: int = 1500, stage2_steps: int = 1000, seed: int = 0, progress: bool = True,
               eval_limit: int | None = None) -> dict[str, Any]:
    """Run the quickstart; returns (and writes to ``out/quickstart.json``) the before/after metrics."""
    from textseg.factory import create_model
    from textseg.io import atomic_write_text
    from textseg.train import build_model, load_train_config
    from textseg.workbench.build import build_workbench

    start = time.time()
    out, data = Path(out), Path(data)
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "manifest.json").is_file():
        print(f"[1/5] building the OpenMoji workbench in {data} ...")
        build_workbench(data, train_scenes=10000, val_scenes=1000, size=96, seed=seed, workers=2, progress=progress)
    else:
        print(f"[1/5] using the OpenMoji workbench in {data}")
    shards = _shards(data)
    dev = build_dev_set(data, seed, progress=progress)  # background-score calibration, never on val

    print("[2/5] evaluating the untrained model ...")
    before_model = build_model(load_train_config("stage1_image_text", (), {"seed": seed}))
    before = evaluate_workbench(before_model, data, out / "eval_before", overlays=0, limit=eval_limit,
                                progress=progress, dev=dev, diagnose=False)
    del before_model

    def budget(share: float) -> float:
        left = minutes - (time.time() - start) / 60 - 2.5  # keep time for the final evaluations (~1.6 min on 2 cores)
        return max(1.0, left * share)

    print(f"[3/5] stage 1: image-caption contrastive pretraining ({stage1_steps} steps) ...")
    run_stage("stage1_image_text", {"out": str(out / "stage1"), "data": {"train": shards}, "seed": seed,
                                    "train": {"steps": stage1_steps, "max_minutes": round(budget(0.55), 2)}}, progress)
    print(f"[4/5] stage 2: region adaptation, one-way noun-to-region loss ({stage2_steps} steps) ...")
    run_stage("stage2_region", {"out": str(out / "stage2"), "init": str(out / "stage1" / "final.pt"),
                                "data": {"train": shards}, "seed": seed,
                                "train": {"steps": stage2_steps, "max_minutes": round(budget(1.0), 2)}}, progress)
    print("[5/5] evaluating on the workbench VOC val set ...")
    model = create_model("labxy-small-workbench", checkpoint=out / "stage2" / "final.pt")
    after = evaluate_workbench(model, data, out / "eval", overlays=12, limit=eval_limit, progress=progress, dev=dev)
    generic = evaluate_workbench(model, data, out / "eval_generic", overlays=0, limit=eval_limit, progress=progress,
                                 dev=dev, diagnose=False, protocol="workbench-generic")
    summary = {"minutes": round((time.time() - start) / 60, 1), "mIoU_before": before["metrics"]["mIoU"],
               "mIoU_after": after["metrics"]["mIoU"], "mIoU_after_generic_background": generic["metrics"]["mIoU"],
               "checkpoint": str(out / "stage2" / "final.pt"), "eval": str(out / "eval" / "results.json"),
               "diagnosis": after.get("diagnosis")}
    atomic_write_text(out / "quickstart.json", json.dumps(summary, indent=2))
    print((out / "eval" / "results.md").read_text())
    print(f"mIoU before training {before['metrics']['mIoU']:.2f} -> after {after['metrics']['mIoU']:.2f}; with the "
          f"generic background vocabulary (protocol workbench-generic) {generic['metrics']['mIoU']:.2f} "
          f"({summary['minutes']} min). Overlays: {out / 'eval' / 'overlays'}; "
          f"results: {out / 'eval' / 'results.json'}")
    return summary
