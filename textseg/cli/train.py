"""`textseg train`, `textseg quickstart` and `textseg ablate`."""

from __future__ import annotations

import argparse


def cmd_train(args: argparse.Namespace) -> int:
    from textseg.train import load_train_config, train

    cfg = load_train_config(args.config, args.overrides)
    summary = train(cfg, progress=not args.no_progress)
    if summary["rank"] == 0:
        print(f"trained {summary['steps']} steps in {summary['minutes']} min; weights: {cfg.out}/final.pt")
    return 0


def _check_positive(args: argparse.Namespace, *names: str) -> None:
    """A one-line error for the first option among ``names`` that is set and not positive."""
    from textseg.errors import UserError

    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:  # also refuses NaN
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


def cmd_quickstart(args: argparse.Namespace) -> int:
    from textseg.workbench.quickstart import quickstart

    from textseg.errors import UserError

    _check_positive(args, "minutes", "stage2_steps", "eval_limit")
    if args.stage1_steps is not None and args.stage1_steps < 0:
        raise UserError(f"--stage1-steps must be 0 (no stage 1) or positive, got {args.stage1_steps}")
    steps = {k: v for k, v in (("stage1_steps", args.stage1_steps), ("stage2_steps", args.stage2_steps))
             if v is not None}
    quickstart(args.out, args.data, minutes=args.minutes, seed=args.seed, progress=not args.no_progress,
               eval_limit=args.eval_limit, grouping=args.grouping, **steps)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from textseg.workbench.ablate import ablate
    from textseg.workbench.quickstart import STAGE2_STEPS

    _check_positive(args, "steps", "eval_limit")
    ablate(args.variants, args.init, args.data, args.out, args.steps or STAGE2_STEPS, args.overrides or [],
           progress=not args.no_progress, eval_limit=args.eval_limit, seed=args.seed)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train on caption shards (single process, or many under torchrun)")
    p.add_argument("config", help="training preset (stage1_image_text, stage2_region) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-3 data.train='d/s-{0..9}.tar'")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    q = sub.add_parser("quickstart", help="build the OpenMoji workbench, train a small model from scratch, evaluate")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--data", default="workbench/openmoji", help="workbench folder (built if missing)")
    q.add_argument("--minutes", type=float, help="opt-in time budget: training stops early to keep it (the default "
                   "is the fixed schedule of steps, the same work on any machine)")
    q.add_argument("--stage1-steps", type=int, help="image-caption pretraining steps before stage 2, 0 for none "
                   "(default: the fixed schedule, README)")
    q.add_argument("--stage2-steps", type=int, help="default: the fixed schedule (README)")
    q.add_argument("--grouping", choices=["labxy", "learned"], default="labxy",
                   help="labxy: Lab colour + x,y k-means (default); learned: train the self-supervised grouping "
                        "backbone first (textseg pretrain-grouping) and group its keys: about 13 min more on 2 cores")
    q.add_argument("--eval-limit", type=int, help="evaluate only the first N val images")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_quickstart)

    a = sub.add_parser("ablate", help="train and score stage-2 ablation variants (from scratch, or from --init)")
    a.add_argument("variants", nargs="*", help="ablation presets or YAML files (default: every shipped preset)")
    a.add_argument("--init", help="a stage-1 checkpoint every variant continues (default: random weights, as the "
                   "quickstart)")
    a.add_argument("--data", default="workbench/openmoji")
    a.add_argument("--out", default="runs/ablation")
    a.add_argument("--steps", type=int, help="training steps per variant (default: the quickstart's stage 2)")
    a.add_argument("--eval-limit", type=int)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="extra training override")
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=cmd_ablate)
