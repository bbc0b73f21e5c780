"""`textseg workbench build|preview`: the OpenMoji workbench."""

from __future__ import annotations

import argparse
import json
import time


def cmd_build(args: argparse.Namespace) -> int:
    from textseg.workbench.build import build_workbench

    start = time.perf_counter()
    manifest = build_workbench(args.out, train_scenes=args.scenes, val_scenes=args.val_scenes,
                               ref_scenes=args.ref_scenes, object_centric=args.objects,
                               refer_train_scenes=args.refer_train_scenes, size=args.size,
                               val_size=args.val_size, seed=args.seed, workers=args.workers,
                               shard_size=args.shard_size, progress=not args.no_progress)
    print(json.dumps(manifest["counts"]))
    print(f"workbench written to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from textseg.workbench.preview import preview_grid

    print(f"wrote {preview_grid(args.out, n=args.n, seed=args.seed)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("workbench", help="build the OpenMoji scene benchmark")
    wsub = parser.add_subparsers(dest="workbench_command", metavar="SUBCOMMAND", required=True)
    build = wsub.add_parser("build", help="generate train shards, VOC-format and refer-format val sets")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--scenes", type=int, default=10000, help="caption-training scenes (default 10000)")
    build.add_argument("--val-scenes", type=int, default=1000, help="VOC-format validation scenes (default 1000)")
    build.add_argument("--ref-scenes", type=int, default=500, help="referring-segmentation scenes (default 500)")
    build.add_argument("--objects", type=int, default=2000, help="object-centric images (default 2000)")
    build.add_argument("--refer-train-scenes", type=int, default=3000,
                       help="scenes drawn for referring image-sentence training pairs, no masks (default 3000)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--size", type=int, default=96, help="training image side in px (default 96)")
    build.add_argument("--val-size", type=int, default=None, help="VOC/refer image side in px (default: --size)")
    build.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default 1000)")
    build.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    build.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    build.set_defaults(func=cmd_build)
    preview = wsub.add_parser("preview", help="a PNG grid of scenes with their masks and captions")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--n", type=int, default=12, help="number of scenes (default 12)")
    preview.add_argument("--seed", type=int, default=0)
    preview.set_defaults(func=cmd_preview)
