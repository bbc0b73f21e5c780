"""`textseg segment` and `textseg models`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tqdm import tqdm

from textseg.errors import UserError

_log = logging.getLogger(__name__)


def _parse_classes(text: str) -> list[str]:
    path = Path(text)
    if path.suffix == ".txt" and path.is_file():
        names = [line.strip() for line in path.read_text().splitlines()]
    else:
        names = [c.strip() for c in text.split(",")]
    names = [n for n in names if n]
    if not names:
        raise UserError("--classes is empty: give names separated by commas or a .txt file with one name per line")
    return names


def class_rles(labels, names: list[str]) -> dict[str, dict]:
    """COCO RLE (compressed, ``counts`` as text) of each class present in a label map, background excluded."""
    import numpy as np
    from pycocotools import mask as mask_utils

    out = {}
    for i in np.unique(labels):
        if i == 0:
            continue
        rle = mask_utils.encode(np.asfortranarray(labels == i))
        out[names[i]] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return out


def cmd_segment(args: argparse.Namespace) -> int:
    from textseg.factory import create_model_from_args
    from textseg.segmenter import Segmenter, load_image
    from textseg.visualize import overlay, save_label_png

    classes = _parse_classes(args.classes)
    bg_classes = _parse_classes(args.background_classes) if args.background_classes else []
    images = [Path(p) for p in args.images]
    for p in images:
        if not p.is_file():
            raise UserError(f"image {p} does not exist")
    arrays = {p: load_image(p) for p in images}  # fail on an unreadable image before loading the model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter(create_model_from_args(args), templates=args.templates,
                          text_cache_dir=False if args.no_text_cache else None)
    background = None if args.background == "none" else args.background
    for path in tqdm(images, desc="segment", unit="img", disable=len(images) < 2):
        res = segmenter.predict(arrays[path], classes, background=background, bg_threshold=args.bg_threshold,
                                background_classes=bg_classes, short_side=args.short_side or None,
                                window=args.window, stride=args.stride, bg_score=args.bg_score)
        stem = path.stem
        save_label_png(res.labels, out / f"{stem}_labels.png")
        overlay(arrays[path], res.labels, names=res.classes).save(out / f"{stem}_overlay.png")
        summary = {"image": str(path), "size": list(res.labels.shape), "model": args.model,
                   "classes": res.classes, "pixel_share": res.pixel_share(),
                   "labels_png": f"{stem}_labels.png", "overlay_png": f"{stem}_overlay.png"}
        if args.rle:
            summary["rle"] = class_rles(res.labels, res.classes)
        (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
        print(f"{path}: " + ", ".join(f"{k} {v:.1%}" for k, v in sorted(res.pixel_share().items(), key=lambda kv: -kv[1])))
    print(f"wrote label maps, overlays and JSON summaries to {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from textseg.factory import get_model_config, list_models

    for name in list_models():
        print(f"{name:28s} {get_model_config(name).get('description', '')}")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    from textseg.factory import add_model_args

    p = sub.add_parser("segment", help="open-vocabulary semantic segmentation of images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--classes", required=True, help="comma-separated class names, or a .txt file (one per line)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--templates", default="imagenet80", choices=["single", "imagenet80"])
    p.add_argument("--background", default="threshold", choices=["threshold", "classes", "none"])
    p.add_argument("--bg-threshold", type=float, default=0.5)
    p.add_argument("--background-classes", help="names scored as background (comma-separated or .txt)")
    p.add_argument("--bg-score", type=float, help="constant background similarity (TCL-style background score)")
    p.add_argument("--rle", action="store_true", help="add each class's mask as COCO RLE to the JSON summary")
    p.add_argument("--short-side", type=int, default=448, help="resize the short side to this (0 keeps the size)")
    p.add_argument("--window", type=int, help="sliding window size (e.g. 448)")
    p.add_argument("--stride", type=int, help="sliding window stride (e.g. 224)")
    p.add_argument("--no-text-cache", action="store_true", help="do not read or write the on-disk text cache")
    add_model_args(p)
    p.set_defaults(func=cmd_segment)

    m = sub.add_parser("models", help="list model names")
    m.set_defaults(func=cmd_models)
