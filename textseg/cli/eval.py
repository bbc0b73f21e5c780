"""`textseg eval semseg` and `textseg eval ris`: benchmarks in their original layouts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from textseg.cli.common import (GRID_SHIFTS_HELP, GROUP_COUNTS_HELP, add_model_args, add_promptable_args,
                                add_spatial_args, group_counts, model_from_args, points_options,
                                promptable_from_args, spatial_options)
from textseg.errors import UserError


def _args_config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "func"}


def _model_key(args: argparse.Namespace) -> dict[str, Any]:
    """What names the model and its weights: a resume with other ones is refused (the device is left out)."""
    checkpoint = None if args.checkpoint is None else str(Path(args.checkpoint).resolve())
    return {"model": args.model, "pretrained": not args.no_pretrained, "clip_pretrained": args.clip_pretrained,
            "backbone_pretrained": args.backbone_pretrained, "checkpoint": checkpoint}


def _check_common(args: argparse.Namespace) -> None:
    """Check the options every eval command shares, before any model or dataset is loaded.

    Raises:
        UserError: naming the option whose value is wrong.
    """
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be a positive number of samples, got {args.limit} (leave it out for all)")
    if args.overlays < 0:
        raise UserError(f"--overlays must be 0 or more, got {args.overlays}")
    root = Path(args.root)
    if not root.exists():
        raise UserError(f"--root {root} does not exist")
    if not root.is_dir():
        raise UserError(f"--root {root} is a file, not a dataset folder")
    from textseg.io import check_writable_folder

    check_writable_folder(args.out, "--out")


def cmd_semseg(args: argparse.Namespace) -> int:
    from textseg.config import load_protocol
    from textseg.data.semseg import SEMSEG_DATASETS, build_semseg_dataset
    from textseg.eval import run_semseg_benchmark, summary_line
    from textseg.segmenter import Segmenter

    if args.dataset not in SEMSEG_DATASETS:
        raise UserError(f"--dataset {args.dataset!r} is not a benchmark; choose one of: {', '.join(SEMSEG_DATASETS)}")
    if args.bg_score is not None and not -1.0 <= args.bg_score <= 1.0:
        raise UserError(f"--bg-score is a cosine similarity in [-1, 1], got {args.bg_score}")
    _check_common(args)
    dataset = build_semseg_dataset(args.dataset, args.root, args.split)  # a bad dataset fails before the model loads
    model = model_from_args(args)
    if args.diagnose and model.config.dense.mode:
        raise UserError(f"--diagnose decomposes the errors of groups and their labels; {model.config.name} labels "
                        f"pixels with the dense mode {model.config.dense.mode!r}")
    protocol = load_protocol(args.protocol or model.config.protocol or "groupvit", overrides=args.set or ())
    if args.group_vote:
        protocol = protocol.replace(group_vote=True)
    if args.bg_score is not None:
        protocol = protocol.replace(bg_score=args.bg_score)
    if args.group_counts is not None:
        protocol = protocol.replace(group_counts=args.group_counts)
    if args.grid_shifts is not None:
        protocol = protocol.replace(grid_shifts=args.grid_shifts)
    segmenter = Segmenter(model, protocol, text_cache_dir=args.text_cache_dir)
    results = run_semseg_benchmark(segmenter, args.dataset, args.root, args.split, protocol, args.out,
                                   overlays=args.overlays, limit=args.limit, resume=not args.no_resume,
                                   progress=not args.no_progress, meta={"config": {"args": _args_config(args)}},
                                   dataset=dataset, key=_model_key(args), diagnose=args.diagnose)
    print(f"{summary_line(results)}  -> {Path(args.out) / 'results.json'}")
    if args.diagnose:
        from textseg.eval.report import diagnosis_markdown

        print(diagnosis_markdown(results["diagnosis"]), end="")
    return 0


def _refer_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Segmenter.refer options the RIS options set (left out: the defaults)."""
    for name in ("alpha", "beta"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"--{name} must be in [0, 1], got {value}")
    names = {"alpha": "alpha", "beta": "beta", "mode": "mode", "no_target_threshold": "no_target_threshold",
             "proposals": "proposer"}
    return {**{key: getattr(args, name) for name, key in names.items() if getattr(args, name) is not None},
            **spatial_options(args)}


def cmd_ris(args: argparse.Namespace) -> int:
    from textseg.config import Protocol
    from textseg.data.refcoco import RefDataset
    from textseg.eval import run_ris_benchmark, summary_line
    from textseg.segmenter import Segmenter

    if args.short_side < 0:
        raise UserError(f"--short-side must be positive (or 0 to keep the image size), got {args.short_side}")
    if args.method in ("best-group", "points", "centre-point-oracle"):
        given = {k for k in _refer_options(args) if k not in ("spatial", "spatial_margin", "spatial_weight",
                                                              "support_weight", "area_weight")}
        if given:
            raise UserError("--proposals, --alpha, --beta, --mode and --no-target-threshold need --method "
                            "global-local or region")
        if args.method != "points" and spatial_options(args):
            raise UserError("--spatial, --support-weight and --area-weight need --method global-local, region or "
                            "points")
    points = args.method in ("points", "centre-point-oracle")
    if not points and (args.promptable or args.sam_checkpoint or args.point_generator):
        raise UserError("--promptable, --sam-checkpoint and --point-generator need --method points")
    _check_common(args)
    if args.image_root is not None and not Path(args.image_root).is_dir():
        raise UserError(f"--image-root {args.image_root} is not a folder")
    if args.no_target_threshold_from is not None:
        if args.method not in ("global-local", "region"):
            raise UserError("--no-target-threshold-from needs --method global-local or region")
        if args.no_target_threshold is not None:
            raise UserError("give --no-target-threshold or --no-target-threshold-from, not both")
        if args.no_target_threshold_from == args.split:
            raise UserError(f"--no-target-threshold-from {args.split}: choose the threshold on a development split, "
                            "never on the split evaluated")
    protocol = Protocol(name="ris", short_side=args.short_side or None, templates="single")
    dataset = RefDataset(args.root, args.dataset, args.split_by, args.split, image_root=args.image_root,
                         no_target=args.no_target)
    dev = None
    if args.no_target_threshold_from is not None:
        dev = [RefDataset(args.root, args.dataset, args.split_by, args.no_target_threshold_from,
                          image_root=args.image_root, no_target=nt) for nt in (False, True)]
    meta: dict[str, Any] = {"config": {"args": _args_config(args)}}
    if args.method == "centre-point-oracle":
        return _centre_point_oracle(args, dataset, meta)
    segmenter = Segmenter(model_from_args(args), protocol, text_cache_dir=args.text_cache_dir)
    options = _refer_options(args)
    key = _model_key(args)
    if points:
        options = points_options(args)
        key.update({name: None if getattr(args, name) is None else str(Path(getattr(args, name)).resolve())
                    for name in ("promptable", "sam_checkpoint", "point_generator")})
        key.update(points=options["n_positive"], negative_points=options["n_negative"],
                   **{k: v for k, v in options.items() if k.startswith(("spatial", "support", "area", "generator_"))})
    if dev is not None:
        from textseg.eval.calibration import choose_no_target_threshold, referring_best_scores

        scores = [referring_best_scores(segmenter, d, method=args.method, options=options, limit=args.limit,
                                        progress=not args.no_progress) for d in dev]
        threshold, balanced = choose_no_target_threshold(*scores)
        options["no_target_threshold"] = threshold
        meta["no_target_threshold"] = {"split": args.no_target_threshold_from, "threshold": threshold,
                                       "balanced_accuracy": balanced, "n": [len(s) for s in scores]}
        print(f"no-target threshold {threshold:.4f} (balanced accuracy {balanced:.1f}% on "
              f"{args.no_target_threshold_from}, {len(scores[0])} + {len(scores[1])} sentences)")
    results = run_ris_benchmark(segmenter, args.root, args.dataset, args.split_by, args.split, protocol, args.out,
                                image_root=args.image_root, overlays=args.overlays, limit=args.limit,
                                resume=not args.no_resume, progress=not args.no_progress,
                                meta=meta, dataset=dataset, key=key, method=args.method,
                                refer_options=options)
    print(f"{summary_line(results)}  -> {Path(args.out) / 'results.json'}")
    return 0


def _centre_point_oracle(args: argparse.Namespace, dataset: Any, meta: dict[str, Any]) -> int:
    """The masks-given upper bound of point prompting (reads the ground truth; no textseg model is involved)."""
    from textseg.eval import evaluate_ris, summary_line
    from textseg.ris.points import CentrePointOracle

    if args.point_generator:
        raise UserError("--method centre-point-oracle takes its point from the ground truth: no --point-generator")
    promptable = promptable_from_args(args)
    key = {"method": "centre-point-oracle", "image_root": str(Path(dataset.image_root).resolve()),
           **{name: None if getattr(args, name) is None else str(Path(getattr(args, name)).resolve())
              for name in ("promptable", "sam_checkpoint")}}
    results = evaluate_ris(CentrePointOracle(promptable, dataset), dataset, args.out, resume=not args.no_resume,
                           overlays=args.overlays, limit=args.limit, progress=not args.no_progress, meta=meta, key=key)
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
    sem.add_argument("--dataset", required=True, help=f"benchmark: {', '.join(SEMSEG_DATASETS)}")
    sem.add_argument("--root", required=True, help="dataset folder in its original on-disk layout")
    sem.add_argument("--split", default="val")
    sem.add_argument("--protocol",
                     help=f"protocol preset ({', '.join(list_configs('protocols'))}) or a YAML file (default: the "
                          "model's own, e.g. naclip-voc21 for naclip-b16, else groupvit)")
    sem.add_argument("--set", action="append", metavar="FIELD=VALUE",
                     help="change one protocol field, e.g. --set pamr_steps=0 (repeatable)")
    sem.add_argument("--group-vote", action="store_true",
                     help="(dense modes) average the class scores over each group of the model's grouping")
    sem.add_argument("--bg-score", type=float, help="constant background similarity (overrides the protocol's)")
    sem.add_argument("--group-counts", type=group_counts, help=GROUP_COUNTS_HELP)
    sem.add_argument("--grid-shifts", type=int, metavar="N", help=GRID_SHIFTS_HELP)
    sem.add_argument("--diagnose", action="store_true",
                     help="add the error decomposition: mIoU with oracle labels on the model's groups, with the "
                          "model's labels on ground-truth instance regions (needs instance maps, e.g. VOC's "
                          "SegmentationObject) and the foreground/background confusion (results.md, results.json)")
    _add_common(sem)
    sem.set_defaults(func=cmd_semseg)

    ris = esub.add_parser("ris", help="referring segmentation benchmark (oIoU, mIoU, Prec@X)")
    ris.add_argument("--root", required=True, help="folder holding <dataset>/refs(<split-by>).p and instances.json")
    ris.add_argument("--dataset", default="refcoco", help="refcoco, refcoco+, refcocog, ...")
    ris.add_argument("--split-by", default="unc", help="unc (RefCOCO/+), umd or google (RefCOCOg)")
    ris.add_argument("--split", default="val")
    ris.add_argument("--image-root", default=None, help="image folder (default: <root>/images)")
    ris.add_argument("--short-side", type=int, default=448,
                     help="resize images to this short side (default 448; 0 keeps the size)")
    ris.add_argument("--method", default="best-group",
                     choices=["best-group", "global-local", "region", "points", "centre-point-oracle"],
                     help="best-group: the k-means group nearest the sentence; global-local: Global-Local CLIP over "
                          "instance proposals from the grouping; region: the same with region-token local features; "
                          "points: point prompts for a promptable segmenter; centre-point-oracle: that segmenter "
                          "prompted at the ground-truth mask's centre (an upper bound) (default best-group)")
    ris.add_argument("--proposals", choices=["multiscale", "grouping"],
                     help="global-local / region proposals: multiscale (several group counts with merge hierarchies, "
                          "at most 100 per image; default) or grouping (the model's one group count)")
    ris.add_argument("--alpha", type=float, help="global-branch weight (default 0.95)")
    add_spatial_args(ris)
    ris.add_argument("--beta", type=float, help="sentence weight against the noun phrase (default 0.5)")
    ris.add_argument("--mode", choices=["clean", "reference"], help="Global-Local CLIP preprocessing (default clean)")
    ris.add_argument("--no-target-threshold", type=float,
                     help="a best score below this is 'no target' (an empty mask); choose it on a development split")
    ris.add_argument("--no-target-threshold-from", metavar="SPLIT",
                     help="choose --no-target-threshold on this development split (its sentences with their target "
                          "and their no-target counterparts, by balanced accuracy) before evaluating")
    ris.add_argument("--no-target", action="store_true",
                     help="evaluate the no-target counterpart of each sentence (paired with an image that holds no "
                          "object of its category; scored by N-acc, the percent answered with no mask)")
    add_promptable_args(ris)
    _add_common(ris)
    ris.set_defaults(func=cmd_ris)
