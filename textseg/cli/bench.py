"""`textseg bench segment`: speed and memory of one image's segmentation."""

from __future__ import annotations

import argparse
import json


def cmd_segment(args: argparse.Namespace) -> int:
    from textseg.assets import voc_sample_image
    from textseg.bench import bench_segment_cold_warm
    from textseg.io import atomic_write_text

    results = bench_segment_cold_warm(
        args.cache, args.cache_dir, image=args.image or str(voc_sample_image()), model=args.model,
        pretrained=args.pretrained, templates=args.templates, repeats=args.repeats,
        short_side=args.short_side or None, window=args.window, stride=args.stride)
    for r in results:
        print(f"{r['cache']:5s} cache: build {r['build_s']} s, text {r['text_s']} s ({r['prompts_encoded']} prompts), "
              f"predict {r['predict_s_median']} s/image (median of {len(r['predict_s_all'])}), "
              f"peak RSS {r['peak_rss_mb']} MB")
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="speed and memory benchmarks")
    bsub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    s = bsub.add_parser("segment", help="segment one image into VOC-21 classes, cold and warm text cache")
    s.add_argument("--image", help="image to segment (default: the bundled VOC 2012 image 2007_000033)")
    s.add_argument("--model", default="dino-s16-clip-b16")
    s.add_argument("--pretrained", action="store_true", help="load real weights (default: random weights, real size)")
    s.add_argument("--templates", default="imagenet80", choices=["single", "imagenet80"])
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--short-side", type=int, default=448, help="0 keeps the image size")
    s.add_argument("--window", type=int)
    s.add_argument("--stride", type=int)
    s.add_argument("--cache", choices=["cold", "warm", "both"], default="both",
                   help="cold: empty text cache; warm: the cache filled by a previous process")
    s.add_argument("--cache-dir", help="text cache folder to use (default: a fresh temporary one)")
    s.add_argument("--out", help="write the results as JSON here")
    s.set_defaults(func=cmd_segment)
