"""`textseg segment` and `textseg models`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from textseg.cli.common import add_model_args, model_from_args, parse_names
from textseg.errors import UserError

# --option -> Protocol field; an option left out keeps the value of --protocol (or the defaults).
_PROTOCOL_OPTIONS = ("templates", "background", "bg_threshold", "bg_score", "short_side", "window", "stride")


def _protocol(args: argparse.Namespace):
    from textseg.config import Protocol, load_protocol

    base = load_protocol(args.protocol) if args.protocol else Protocol()
    changes = {k: getattr(args, k) for k in _PROTOCOL_OPTIONS if getattr(args, k) is not None}
    if changes.get("background") == "none":
        changes["background"] = None
    if changes.get("short_side") == 0:
        changes["short_side"] = None
    if args.background_classes:
        changes["background_classes"] = parse_names(args.background_classes, "--background-classes")
    return base.replace(**changes) if changes else base


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from textseg.io import atomic_write_text, labels_to_rles, load_image, save_png, write_label_png
    from textseg.segmenter import Segmenter
    from textseg.visualize import overlay

    classes = parse_names(args.classes, "--classes")
    protocol = _protocol(args)
    images = [Path(p) for p in args.images]
    for p in images:
        if not p.is_file():
            raise UserError(f"image {p} does not exist")
    arrays = {p: load_image(p) for p in images}  # fail on an unreadable image before loading the model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter(model_from_args(args), protocol, text_cache_dir=False if args.no_text_cache else None)
    for path in tqdm(images, desc="segment", unit="img", disable=len(images) < 2):
        res = segmenter.predict(arrays[path], classes)
        stem = path.stem
        write_label_png(res.labels, out / f"{stem}_labels.png")
        save_png(overlay(arrays[path], res.labels, names=res.classes), out / f"{stem}_overlay.png")
        summary = {"image": str(path), "size": list(res.labels.shape), "model": args.model,
                   "classes": res.classes, "pixel_share": res.pixel_share(),
                   "labels_png": f"{stem}_labels.png", "overlay_png": f"{stem}_overlay.png"}
        if args.rle:
            summary["rle"] = labels_to_rles(res.labels, res.classes)
        atomic_write_text(out / f"{stem}.json", json.dumps(summary, indent=2))
        shares = sorted(res.pixel_share().items(), key=lambda kv: -kv[1])
        print(f"{path}: " + ", ".join(f"{k} {v:.1%}" for k, v in shares))
    print(f"wrote label maps, overlays and JSON summaries to {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from textseg.factory import get_model_config, list_models

    for name in list_models():
        print(f"{name:28s} {get_model_config(name).description}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="open-vocabulary semantic segmentation of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--classes", required=True, help="comma-separated class names, or a .txt file (one per line)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--protocol", help="start from a protocol preset (groupvit, sclip, workbench) or YAML file; "
                                      "the options below change single fields")
    p.add_argument("--templates", choices=["single", "imagenet80"], help="prompt templates (default imagenet80)")
    p.add_argument("--background", choices=["threshold", "classes", "none"], help="background rule (default threshold)")
    p.add_argument("--bg-threshold", type=float, help="probability threshold of --background threshold (default 0.5)")
    p.add_argument("--background-classes", help="names scored as background (comma-separated or .txt)")
    p.add_argument("--bg-score", type=float, help="constant background similarity (TCL-style background score)")
    p.add_argument("--short-side", type=int, help="resize the short side to this (default 448; 0 keeps the size)")
    p.add_argument("--window", type=int, help="sliding window size (e.g. 448)")
    p.add_argument("--stride", type=int, help="sliding window stride (e.g. 224)")
    p.add_argument("--rle", action="store_true", help="add each class's mask as COCO RLE to the JSON summary")
    p.add_argument("--no-text-cache", action="store_true", help="do not read or write the on-disk text cache")
    add_model_args(p)
    p.set_defaults(func=cmd_segment)

    m = sub.add_parser("models", help="list model names")
    m.set_defaults(func=cmd_models)
