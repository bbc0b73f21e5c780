"""`textseg pretrain-grouping`: the self-supervised grouping backbone (DINO on the workbench's images)."""

from __future__ import annotations

import argparse


def cmd_pretrain_grouping(args: argparse.Namespace) -> int:
    from textseg.cli.common import check_device
    from textseg.errors import UserError
    from textseg.train.selfsup import load_selfsup_config, pretrain_grouping

    overrides = list(args.overrides or [])
    for name, key in (("steps", "train.steps"), ("seed", "seed")):
        value = getattr(args, name)
        if value is not None:
            if name == "steps" and value < 1:
                raise UserError(f"--steps must be positive, got {value}")
            overrides.append(f"{key}={value}")
    cfg = load_selfsup_config(args.config, overrides)
    device = check_device(args.device)
    print(f"pretrain-grouping: {cfg.train.steps} steps of {cfg.data.batch_size} images "
          f"({cfg.backbone.name} {cfg.backbone.kwargs}) on {device}, into {args.out}", flush=True)
    summary = pretrain_grouping(cfg, args.data, args.out, device=device, progress=not args.no_progress)
    rate = f", {summary['steps_per_second']} steps/s" if summary["steps_per_second"] else ""
    skipped = sum(summary["skipped"].values())
    print(f"trained {summary['steps']} steps in {summary['seconds']} s{rate}"
          f"{f'; {skipped} unreadable samples skipped' if skipped else ''}; grouping backbone: {summary['final']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain-grouping",
                       help="train the self-supervised grouping backbone (DINO, images only) of learned-small-workbench")
    p.add_argument("--data", default="workbench/openmoji", help="workbench folder (default workbench/openmoji)")
    p.add_argument("--out", default="runs/grouping",
                   help="run folder; its final.pt is the backbone (default runs/grouping, where the model config "
                        "learned-small-workbench looks)")
    p.add_argument("--config", default="workbench", help="self-supervised preset (workbench) or a YAML file")
    p.add_argument("--steps", type=int, help="training steps (default: the config's)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, help="seed (default: the config's)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="config override, e.g. --set data.batch_size=64 --set ibot.enabled=true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain_grouping)
