"""`textseg ablate`: stage-2 variants from one stage-1 checkpoint, each trained and scored the same way.

Each variant is a YAML file of overrides over ``configs/train/stage2_region.yaml`` (``configs/ablations/``).
Finished variants (with a ``results.json``) are not recomputed, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from textseg.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _flatten(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "model_overrides":
            out += _flatten(v, key + ".")
        else:
            out.append(f"{key}={json.dumps(v)}")
    return out


def ablate(variants: list[Path], init: Path, data: Path, out: Path, steps: int, extra: list[str],
           progress: bool = True, eval_limit: int | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every variant; returns one row per variant (also in ``out/ablation.{json,md}``)."""
    from textseg.factory import create_model
    from textseg.quickstart import _shards, build_dev_set, evaluate_workbench, run_stage

    if not init.is_file():
        raise UserError(f"stage-1 checkpoint {init} does not exist (run `textseg quickstart` or train stage 1)")
    dev = build_dev_set(data, seed=0, progress=progress)
    rows = []
    for path in variants:
        name = path.stem
        run = out / name
        if not (run / "eval" / "results.json").is_file():
            overrides = _flatten(yaml.safe_load(path.read_text()) or {})
            run_stage("stage2_region.yaml", [f"out={run}", f"init={init}", f"data.train={json.dumps(_shards(data))}",
                                             f"train.steps={steps}", *overrides, *extra], progress)
            model = create_model(json.loads((run / "config.json").read_text())["model"],
                                 checkpoint=run / "final.pt")
            evaluate_workbench(model, data, run / "eval", overlays=4, limit=eval_limit, progress=progress,
                               meta={"variant": name, "overrides": overrides}, dev=dev)
        res = json.loads((run / "eval" / "results.json").read_text())["metrics"]
        summary = json.loads((run / "summary_rank0.json").read_text())
        rows.append({"variant": name, "mIoU": res["mIoU"], "aAcc": res["aAcc"], "mAcc": res["mAcc"],
                     "steps": summary["steps"], "minutes": summary["minutes"]})
    table = ["| variant | mIoU | aAcc | mAcc | steps | train min |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['variant']} | {r['mIoU']:.2f} | {r['aAcc']:.2f} | {r['mAcc']:.2f} | {r['steps']} | {r['minutes']} |"
              for r in rows]
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    (out / "ablation.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return rows


def cmd_ablate(args: argparse.Namespace) -> int:
    variants = [Path(v) for v in args.variants] or sorted((REPO / "configs" / "ablations").glob("*.yaml"))
    for v in variants:
        if not v.is_file():
            raise UserError(f"ablation config {v} does not exist")
    ablate(variants, Path(args.init), Path(args.data), Path(args.out), args.steps, args.overrides or [],
           progress=not args.no_progress, eval_limit=args.eval_limit)
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="train and score stage-2 ablation variants from one stage-1 checkpoint")
    p.add_argument("variants", nargs="*", help="variant YAML files (default: configs/ablations/*.yaml)")
    p.add_argument("--init", default="runs/quickstart/stage1/final.pt", help="stage-1 checkpoint")
    p.add_argument("--data", default="workbench/openmoji")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-limit", type=int)
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="extra training override")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_ablate)
