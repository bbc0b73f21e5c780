"""`textseg train`, `textseg quickstart` and `textseg ablate`."""

from __future__ import annotations

import argparse


def cmd_train(args: argparse.Namespace) -> int:
    from textseg.train.config import load_config
    from textseg.train.engine import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, progress=not args.no_progress)
    if summary["rank"] == 0:
        print(f"trained {summary['steps']} steps in {summary['minutes']} min; weights: {cfg['out']}/final.pt")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train on caption shards (single process, or many under torchrun)")
    p.add_argument("config", help="training config YAML (see configs/train/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3 data.train='d/s-{0..9}.tar'")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)
