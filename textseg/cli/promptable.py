"""`textseg train-segmenter`: the workbench-promptable-segmenter, a small SAM-architecture stand-in for SAM."""

from __future__ import annotations

import argparse
import json
import math

from textseg.errors import UserError


def cmd_train_segmenter(args: argparse.Namespace) -> int:
    from textseg.cli.common import check_device
    from textseg.ris.promptable import train_workbench_segmenter

    for name in ("steps", "batch_size", "prompts"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("num_workers", "eval_scenes"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be > 0, got {args.lr}")
    summary = train_workbench_segmenter(args.out, steps=args.steps, batch_size=args.batch_size, prompts=args.prompts,
                                        lr=args.lr, seed=args.seed, device=check_device(args.device),
                                        workers=args.num_workers, progress=not args.no_progress,
                                        eval_scenes=args.eval_scenes)
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from textseg.ris import promptable as P

    p = sub.add_parser("train-segmenter",
                       help="train the workbench-promptable-segmenter stand-in for SAM on workbench masks (SAM's "
                            "architecture, small, with random point prompts)")
    p.add_argument("--out", default=str(P.DEFAULT_SEGMENTER_OUT),
                   help=f"output folder: final.pt, metrics.jsonl, summary.json (default {P.DEFAULT_SEGMENTER_OUT})")
    p.add_argument("--steps", type=int, default=P.DEFAULT_STEPS, help=f"training steps (default {P.DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=int, default=P.DEFAULT_BATCH_SIZE,
                   help=f"images per step (default {P.DEFAULT_BATCH_SIZE})")
    p.add_argument("--prompts", type=int, default=P.DEFAULT_PROMPTS,
                   help=f"objects prompted per image, at most (default {P.DEFAULT_PROMPTS})")
    p.add_argument("--lr", type=float, default=P.DEFAULT_LR, help=f"peak learning rate (default {P.DEFAULT_LR:g})")
    p.add_argument("--seed", type=int, default=0, help="initialisation and prompt sampling seed (default 0)")
    p.add_argument("--eval-scenes", type=int, default=200,
                   help="held-out scenes for the one-point mIoU reported at the end (default 200; 0: none)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--num-workers", type=int, default=P.DEFAULT_WORKERS,
                   help=f"scene-generating DataLoader workers (default {P.DEFAULT_WORKERS})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_train_segmenter)
