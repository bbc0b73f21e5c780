"""`textseg train-promptable`: the workbench-promptable-segmenter, a small SAM-architecture stand-in for SAM
(`train-segmenter` is its deprecated alias, kept for one release)."""

from __future__ import annotations

import argparse
import json
import logging
import math

from textseg.errors import UserError

_log = logging.getLogger(__name__)
DEPRECATED = "train-segmenter"
# flag -> config field
FIELDS = {"out": "out", "steps": "steps", "batch_size": "batch_size", "prompts": "prompts", "lr": "lr",
          "seed": "seed", "eval_scenes": "eval_scenes", "device": "device", "num_workers": "workers"}


def cmd_train_promptable(args: argparse.Namespace) -> int:
    from textseg.cli.common import check_device
    from textseg.train.promptable import train_workbench_segmenter
    from textseg.train.promptable_config import load_promptable_config

    if args.command == DEPRECATED:
        _log.warning("`textseg %s` is deprecated and goes in the next release: use `textseg train-promptable`",
                     DEPRECATED)
    for name in ("steps", "batch_size", "prompts"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("num_workers", "eval_scenes"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be > 0, got {args.lr}")
    fields = {key: getattr(args, flag) for flag, key in FIELDS.items()}
    if args.device is not None:
        fields["device"] = check_device(args.device)
    cfg = load_promptable_config(args.config, args.overrides or [], fields)
    summary = train_workbench_segmenter(cfg, progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from textseg.train.promptable_config import DEFAULT_CONFIG, PromptableTrainConfig

    d = PromptableTrainConfig()
    p = sub.add_parser("train-promptable", aliases=[DEPRECATED],
                       help="train the workbench-promptable-segmenter stand-in for SAM on workbench masks (SAM's "
                            f"architecture, small, with random point prompts); `{DEPRECATED}` is a deprecated alias "
                            "that goes in the next release")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"training preset ({DEFAULT_CONFIG}) or a YAML file; the flags below override its fields "
                        f"(defaults: the {DEFAULT_CONFIG} preset's)")
    p.add_argument("--out", help=f"output folder: final.pt, metrics.jsonl, summary.json, checkpoints/ (default "
                                 f"{d.out}); a run resumes from its newest step checkpoint")
    p.add_argument("--steps", type=int, help=f"training steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, help=f"images per step (default {d.batch_size})")
    p.add_argument("--prompts", type=int, help=f"objects prompted per image, at most (default {d.prompts})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, help=f"initialisation and prompt sampling seed (default {d.seed})")
    p.add_argument("--eval-scenes", type=int,
                   help=f"held-out scenes for the one-point mIoU reported at the end (default {d.eval_scenes}; "
                        "0: none)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--num-workers", type=int, help=f"scene-generating DataLoader workers (default {d.workers})")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="config override, e.g. --set warmup=40 --set resume=false --set model.depth=2")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_train_promptable)
