"""Speed and memory benchmarks (run on demand, never as timed tests): ``python tools/bench.py segment``."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_segment(image: str, model: str, pretrained: bool, cache_dir: Path, templates: str, repeats: int,
                  short_side: int, window: int | None, stride: int | None) -> dict:
    """Time one image's segmentation into the 20 VOC classes + background, text cache as found in ``cache_dir``."""
    import textseg
    from textseg.data import get_class_names
    from textseg.segmenter import Segmenter, load_image

    classes = get_class_names("voc21", prompt=True)[1:]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    seg = Segmenter(textseg.create_model(model, pretrained=pretrained), templates=templates, text_cache_dir=cache_dir)
    t_build = time.perf_counter() - t0
    arr = load_image(image)
    t0 = time.perf_counter()
    seg.text.encode_classes(classes + ["background"], templates)  # VOC-21: 20 classes + a background prompt
    t_text = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = seg.predict(arr, classes, background_classes=["background"], short_side=short_side, window=window,
                          stride=stride)
        times.append(time.perf_counter() - t0)
    return {"model": model, "pretrained": pretrained, "image_size": list(arr.shape[:2]), "classes": len(classes),
            "templates": templates, "prompts_encoded": seg.text.num_encoded_prompts, "build_s": round(t_build, 2),
            "text_s": round(t_text, 2), "predict_s_median": round(statistics.median(times), 3),
            "predict_s_all": [round(t, 3) for t in times], "short_side": short_side, "window": window,
            "stride": stride, "peak_rss_mb": round(peak_rss_mb()), "threads": torch.get_num_threads(),
            "label_shape": list(res.labels.shape)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="textseg benchmarks")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("segment", help="segment one image into VOC-21 classes, cold and warm text cache")
    s.add_argument("--image", default=str(Path(__file__).resolve().parents[1] / "tests/data/voc2012/VOC2012/JPEGImages/2007_000033.jpg"))
    s.add_argument("--model", default="dino-s16-clip-b16")
    s.add_argument("--pretrained", action="store_true", help="load real weights (default: random weights, real size)")
    s.add_argument("--templates", default="imagenet80")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--short-side", type=int, default=448)
    s.add_argument("--window", type=int)
    s.add_argument("--stride", type=int)
    s.add_argument("--cache", choices=["cold", "warm", "both"], default="both",
                   help="cold: empty text cache; warm: the cache filled by a previous process")
    s.add_argument("--cache-dir", help="text cache folder to use (default: a fresh temporary one)")
    s.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="textseg-bench-"))
    runs = ["cold", "warm"] if args.cache == "both" else [args.cache]
    results = []
    for mode in runs:
        if mode == "cold" and cache.exists():
            shutil.rmtree(cache)
        if len(runs) > 1:
            # each run in its own process, so that peak memory and the warm cache are those of a fresh start
            import subprocess
            import sys

            child = ["--image", args.image, "--model", args.model, "--templates", args.templates,
                     "--repeats", str(args.repeats), "--short-side", str(args.short_side)]
            child += ["--pretrained"] if args.pretrained else []
            child += ["--window", str(args.window), "--stride", str(args.stride)] if args.window else []
            out = subprocess.run([sys.executable, "-m", "textseg.bench", "segment", "--cache", mode, "--cache-dir",
                                  str(cache), *child], capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        else:
            r = bench_segment(args.image, args.model, args.pretrained, cache, args.templates, args.repeats,
                              args.short_side, args.window, args.stride)
            r["cache"] = mode
            results.append(r)
    if len(runs) > 1:
        for r in results:
            print(f"{r['cache']:5s} cache: build {r['build_s']} s, text {r['text_s']} s ({r['prompts_encoded']} prompts), "
                  f"predict {r['predict_s_median']} s/image (median of {len(r['predict_s_all'])}), peak RSS {r['peak_rss_mb']} MB")
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
    else:
        print(json.dumps(results[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
