"""`textseg make-shards` and `textseg convert-coco-object`: data preparation."""

from __future__ import annotations

import argparse


def _where(lines: list[int]) -> str:
    """`` (lines 3, 7, ...)``: the first few lines of the captions file skipped for one reason."""
    if not lines:
        return ""
    more = ", ..." if len(lines) > 5 else ""
    return f" (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines[:5]))}{more})"


def cmd_make_shards(args: argparse.Namespace) -> int:
    """Write caption shards; print the skipped rows per reason (with their first lines) and a summary."""
    from textseg.data.caption_shards import make_shards

    report = make_shards(args.images_dir, args.captions_file, args.out_dir, max_count=args.max_count,
                         max_size_mb=args.max_size_mb, overwrite=args.overwrite)
    for reason, n in sorted(report.skipped_by_reason.items()):
        print(f"  skipped {n}: {reason}{_where(report.skipped_lines(reason))}")
    print(report.summary())
    return 0


def cmd_convert_coco_object(args: argparse.Namespace) -> int:
    """Write COCO-Object label PNGs from a COCO instances JSON."""
    from textseg.data.coco_object import convert_coco_object

    written = convert_coco_object(args.instances_json, args.out_dir)
    print(f"wrote {len(written)} label PNGs to {args.out_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-shards", help="write image-caption webdataset shards from a folder + captions file")
    p.add_argument("images_dir")
    p.add_argument("captions_file", help="CSV (file|image, caption|text), JSONL, or COCO captions JSON")
    p.add_argument("out_dir")
    p.add_argument("--max-count", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--max-size-mb", type=float, default=1000.0, help="MB per shard (default 1000)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the shards of an earlier run in OUT_DIR (and delete those not rewritten)")
    p.set_defaults(func=cmd_make_shards)

    c = sub.add_parser("convert-coco-object", help="COCO instances JSON -> COCO-Object label PNGs")
    c.add_argument("instances_json", help="COCO annotations/instances_<split>2017.json")
    c.add_argument("out_dir", help="output folder, conventionally <coco>/annotations/<split>2017")
    c.set_defaults(func=cmd_convert_coco_object)
