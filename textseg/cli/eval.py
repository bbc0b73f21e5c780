"""`textseg eval semseg` and `textseg eval ris`: benchmarks in their original layouts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from textseg.cli.common import add_model_args, model_from_args


def _args_config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "func"}


def cmd_semseg(args: argparse.Namespace) -> int:
    from textseg.config import load_protocol
    from textseg.eval import run_semseg_benchmark, summary_line
    from textseg.segmenter import Segmenter

    protocol = load_protocol(args.protocol)
    if args.bg_score is not None:
        protocol = protocol.replace(bg_score=args.bg_score)
    segmenter = Segmenter(model_from_args(args), protocol, text_cache_dir=args.text_cache_dir)
    results = run_semseg_benchmark(segmenter, args.dataset, args.root, args.split, protocol, args.out,
                                   overlays=args.overlays, limit=args.limit, resume=not args.no_resume,
                                   progress=not args.no_progress, meta={"config": {"args": _args_config(args)}})
    print(f"{summary_line(results)}  -> {Path(args.out) / 'results.json'}")
    return 0


def cmd_ris(args: argparse.Namespace) -> int:
    from textseg.config import Protocol
    from textseg.eval import run_ris_benchmark, summary_line
    from textseg.segmenter import Segmenter

    protocol = Protocol(name="ris", short_side=args.short_side or None, templates="single")
    segmenter = Segmenter(model_from_args(args), protocol, text_cache_dir=args.text_cache_dir)
    results = run_ris_benchmark(segmenter, args.root, args.dataset, args.split_by, args.split, protocol, args.out,
                                image_root=args.image_root, overlays=args.overlays, limit=args.limit,
                                resume=not args.no_resume, progress=not args.no_progress,
                                meta={"config": {"args": _args_config(args)}})
    print(f"{summary_line(results)}  -> {Path(args.out) / 'results.json'}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (results.json, results.md, samples.jsonl)")
    p.add_argument("--overlays", type=int, default=0, metavar="N", help="write overlays of the first N samples")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N samples")
    p.add_argument("--no-resume", action="store_true", help="start over instead of reusing finished samples")
    p.add_argument("--text-cache-dir", default=None, help="cache folder for class-name text embeddings")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    from textseg.config import list_configs
    from textseg.data.semseg import SEMSEG_DATASETS

    parser = sub.add_parser("eval", help="evaluate a model on a benchmark")
    esub = parser.add_subparsers(dest="eval_task", metavar="TASK", required=True)

    sem = esub.add_parser("semseg", help="semantic segmentation benchmark (mIoU)")
    sem.add_argument("--dataset", required=True, choices=SEMSEG_DATASETS)
    sem.add_argument("--root", required=True, help="dataset folder in its original on-disk layout")
    sem.add_argument("--split", default="val")
    sem.add_argument("--protocol", default="groupvit",
                     help=f"protocol preset ({', '.join(list_configs('protocols'))}) or a YAML file")
    sem.add_argument("--bg-score", type=float, help="constant background similarity (overrides the protocol's)")
    _add_common(sem)
    sem.set_defaults(func=cmd_semseg)

    ris = esub.add_parser("ris", help="referring segmentation benchmark (oIoU, mIoU, Prec@X)")
    ris.add_argument("--root", required=True, help="folder holding <dataset>/refs(<split-by>).p and instances.json")
    ris.add_argument("--dataset", default="refcoco", help="refcoco, refcoco+, refcocog, ...")
    ris.add_argument("--split-by", default="unc", help="unc (RefCOCO/+), umd or google (RefCOCOg)")
    ris.add_argument("--split", default="val")
    ris.add_argument("--image-root", default=None, help="image folder (default: <root>/images)")
    ris.add_argument("--short-side", type=int, default=448, help="resize images to this short side (default 448)")
    _add_common(ris)
    ris.set_defaults(func=cmd_ris)
