"""`textseg refer`: the mask a sentence refers to, zero-shot, over instance mask proposals."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from textseg.cli.common import (add_model_args, add_promptable_args, add_spatial_args, model_from_args,
                                points_options, spatial_options)
from textseg.errors import UserError


def _proposer(args: argparse.Namespace):
    """The ``proposer`` option of Segmenter.refer for --proposals multiscale|grouping|sam."""
    if args.proposals == "sam":
        from textseg.ris.proposals import SamProposer

        return SamProposer(args.sam_checkpoint, args.sam_model_type, device=args.device)
    return args.proposals


def _reading(sentence: str, used: dict | None) -> dict:
    """How the sentence was read for the JSON: the reading the method used (``applied``: true), or, without
    ``--spatial``, the reading it would have used (``applied``: false; the scores did not use it)."""
    if used is not None:
        return {**used, "applied": True}
    from textseg.ris.spatial import SpatialParser

    parser = SpatialParser("auto")
    return {**parser.read(sentence).to_dict(), "parser": parser.backend_used, "applied": False}


def cmd_refer(args: argparse.Namespace) -> int:
    from textseg.io import atomic_write_text, check_writable_folder, load_image, mask_to_rle, save_png
    from textseg.segmenter import Segmenter
    from textseg.visualize import referring_overlay

    image_path = Path(args.image)
    if not image_path.is_file():
        raise UserError(f"image {image_path} does not exist")
    if not args.sentence.strip():
        raise UserError("the referring sentence is empty")
    for name in ("alpha", "beta"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise UserError(f"--{name} must be in [0, 1], got {value}")
    if args.short_side < 0:
        raise UserError(f"--short-side must be positive (or 0 to keep the image size), got {args.short_side}")
    given = None
    if args.proposals not in ("multiscale", "grouping", "sam"):
        given = Path(args.proposals)
        if not given.exists():
            raise UserError(f"--proposals {given}: no such mask file or folder (or say multiscale, grouping or sam)")
    out = Path(args.out)
    stem = image_path.stem
    outputs = [out / f"{stem}_mask.png", out / f"{stem}_overlay.png", out / f"{stem}.json"]
    existing = [o for o in outputs if o.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{existing[0]} exists; pass --overwrite to replace it, or choose another --out")
    check_writable_folder(out, "--out")
    arr = load_image(image_path)
    segmenter = Segmenter(model_from_args(args), short_side=args.short_side or None, templates="single",
                          text_cache_dir=False)
    if args.method == "points":
        if args.proposals != "multiscale" or args.no_target_threshold is not None:
            raise UserError("--method points makes its mask from point prompts: --proposals and "
                            "--no-target-threshold do not apply")
        res = segmenter.refer(arr, args.sentence, method="points", **points_options(args))
        out.mkdir(parents=True, exist_ok=True)
        save_png((res.mask * 255).astype("uint8"), outputs[0])
        save_png(referring_overlay(arr, res.mask, args.sentence, score=res.score, points=res.points,
                                   labels=res.labels), outputs[1])
        summary = {"image": str(image_path), "sentence": args.sentence, "size": list(res.mask.shape),
                   "model": segmenter.model.config.name, "checkpoint": args.checkpoint, "method": "points",
                   "promptable": args.promptable or args.sam_checkpoint, "point_generator": args.point_generator,
                   "score": res.score,
                   "points": [{"x": float(x), "y": float(y), "label": int(lab), "score": float(sc)}
                              for (x, y), lab, sc in zip(res.points, res.labels, res.scores)],
                   "mask_png": outputs[0].name, "overlay_png": outputs[1].name}
        summary["reading"] = _reading(args.sentence, res.reading)
        if args.rle:
            summary["rle"] = mask_to_rle(res.mask)
        atomic_write_text(outputs[2], json.dumps(summary, indent=2))
        n_pos = int((res.labels == 1).sum())
        print(f"{image_path}: {n_pos} positive and {len(res.labels) - n_pos} negative points, predicted IoU "
              f"{res.score:.2f}; wrote {', '.join(o.name for o in outputs)} to {out}")
        return 0
    res = segmenter.refer(arr, args.sentence, proposals=given, method=args.method, proposer=_proposer(args),
                          alpha=args.alpha, beta=args.beta, mode=args.mode,
                          no_target_threshold=args.no_target_threshold, **spatial_options(args))
    out.mkdir(parents=True, exist_ok=True)
    save_png((res.mask * 255).astype("uint8"), outputs[0])
    save_png(referring_overlay(arr, res.mask, args.sentence, score=res.score), outputs[1])
    summary = {"image": str(image_path), "sentence": args.sentence, "size": list(res.mask.shape),
               "model": segmenter.model.config.name, "checkpoint": args.checkpoint, "method": args.method,
               "mode": args.mode, "alpha": args.alpha, "beta": args.beta, "proposals": args.proposals,
               "no_target": res.no_target, "index": res.index,
               "score": float(res.score) if res.scores.size else None,
               "no_target_threshold": args.no_target_threshold,
               "reading": _reading(args.sentence, res.reading),
               "proposal_scores": [float(s) for s in res.scores], "proposal_records": res.proposals.records,
               "mask_png": outputs[0].name, "overlay_png": outputs[1].name}
    if args.rle:
        summary["rle"] = mask_to_rle(res.mask)
    atomic_write_text(outputs[2], json.dumps(summary, indent=2))
    what = "no target" if res.no_target else f"proposal {res.index} of {len(res.proposals)}, score {res.score:.2f}"
    print(f"{image_path}: {what}; wrote {', '.join(o.name for o in outputs)} to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("refer", help="segment what a sentence refers to (zero-shot, over mask proposals)")
    p.add_argument("image", help="image file")
    p.add_argument("sentence", help='the referring sentence, e.g. "the man in the red shirt on the left"')
    p.add_argument("--out", required=True, help="output folder (mask PNG, overlay PNG, JSON)")
    p.add_argument("--proposals", default="multiscale",
                   help="multiscale (textseg's grouping at several group counts with merge hierarchies, at most 100; "
                        "default), grouping (one group count, made instance-like), sam (needs --sam-checkpoint and "
                        "`pip install 'textseg[sam]'`), or a mask file: COCO RLE JSON, PNG label map, folder")
    p.add_argument("--sam-checkpoint", help="SAM checkpoint file (sam_vit_h_4b8939.pth, ...)")
    p.add_argument("--sam-model-type", default="vit_h", choices=["vit_h", "vit_l", "vit_b"])
    p.add_argument("--method", default="global-local", choices=["global-local", "region", "points"],
                   help="global-local: masked crops (default); region: region tokens, one forward (fast); points: "
                        "point prompts for a promptable segmenter (--promptable or --sam-checkpoint)")
    p.add_argument("--mode", default="clean", choices=["clean", "reference"],
                   help="Global-Local CLIP preprocessing: clean (default) or the public code's (reference)")
    p.add_argument("--alpha", type=float, default=0.95, help="global-branch weight (default 0.95)")
    add_spatial_args(p)
    p.add_argument("--beta", type=float, default=0.5, help="sentence weight against its noun phrase (default 0.5)")
    p.add_argument("--no-target-threshold", type=float,
                   help="a best score below this gives an empty mask (no target); choose it on a development split")
    p.add_argument("--short-side", type=int, default=448,
                   help="resize for the grouping and region tokens (default 448; 0 keeps the size)")
    p.add_argument("--rle", action="store_true", help="add the mask as COCO RLE to the JSON")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    add_promptable_args(p, with_sam=False)
    add_model_args(p)
    p.set_defaults(func=cmd_refer)
