"""`textseg train-points`: the point generator of point-prompted referring segmentation, from image-text pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from textseg.cli.common import add_model_args, model_from_args
from textseg.errors import UserError


def cmd_train_points(args: argparse.Namespace) -> int:
    from textseg.train.points import train_point_generator
    from textseg.train.points_config import load_point_config

    if args.steps_scale is not None and not args.steps_scale > 0:
        raise UserError(f"--steps-scale must be > 0, got {args.steps_scale}")
    if not Path(args.data).is_dir():
        raise UserError(f"--data {args.data} is not a folder")
    overrides = {"seed": args.seed, "localization": args.localization, "confidence": args.confidence,
                 "mask_alignment": args.mask_alignment, "batch_size": args.batch_size}
    if args.no_curriculum:
        overrides["curriculum"] = False
    if args.no_resume:
        overrides["resume"] = False
    cfg = load_point_config(args.config, **overrides)
    if args.steps_scale is not None:
        for stage in cfg.stages:
            stage.steps = max(1, round(stage.steps * args.steps_scale)) if stage.steps else 0
    if args.promptable is None:
        raise UserError("--promptable CKPT is required: the frozen promptable segmenter whose masks train the "
                        "generator (`textseg train-promptable` makes the workbench stand-in)")
    from textseg.ris.promptable import PromptableSegmenter

    model = model_from_args(args)
    device = next(model.parameters()).device
    promptable = PromptableSegmenter.from_workbench(args.promptable, device=device)
    meta = {"model": model.config.name, "checkpoint": args.checkpoint, "promptable": args.promptable,
            "data": args.data}
    summary = train_point_generator(model, promptable.core, cfg, args.out, data_root=args.data,
                                    progress=not args.no_progress, meta=meta)
    print(json.dumps(summary))
    print(f"point generator written to {Path(args.out) / 'final.pt'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-points", help="train the point generator (referring segmentation by point prompts) "
                                            "from image-text pairs, with a frozen promptable segmenter")
    p.add_argument("--data", default="workbench/openmoji",
                   help="folder the config's shard paths are relative to (default workbench/openmoji)")
    p.add_argument("--out", default="runs/points", help="output folder (default runs/points)")
    p.add_argument("--config", default=None,
                   help="training preset name or YAML file (default: the packaged preset points/default.yaml)")
    p.add_argument("--promptable", metavar="CKPT", help="workbench-promptable-segmenter checkpoint (required)")
    p.add_argument("--no-curriculum", action="store_true",
                   help="ablation: train on the union of the stages' data instead of stage by stage")
    p.add_argument("--steps-scale", type=float, default=None, help="multiply every stage's steps by this")
    p.add_argument("--localization", type=float, default=None, help="weight of the localisation loss")
    p.add_argument("--confidence", type=float, default=None,
                   help="weight of the segmenter-confidence term (0 switches it off)")
    p.add_argument("--mask-alignment", type=float, default=None,
                   help="weight of the prompted-mask CLIP-alignment reward (default 0: off)")
    p.add_argument("--batch-size", type=int, default=None, help="image-sentence pairs per step")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the config's)")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh even when --out holds step checkpoints (default: continue from the newest)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_args(p)
    p.set_defaults(func=cmd_train_points)
