"""Speed and memory benchmarks, run on demand (never as timed tests): ``textseg bench segment``."""

from __future__ import annotations

import multiprocessing
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_segment(image: str | Path, model: str, pretrained: bool, cache_dir: str | Path, templates: str,
                  repeats: int, short_side: int | None, window: int | None, stride: int | None) -> dict[str, Any]:
    """Time one image's segmentation into the 20 VOC classes + a background prompt, in this process, with the text
    cache as found in ``cache_dir``."""
    import textseg
    from textseg.data import get_class_names
    from textseg.io import load_image
    from textseg.segmenter import Segmenter

    classes = get_class_names("voc21", prompt=True)[1:]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    seg = Segmenter(textseg.create_model(model, pretrained=pretrained), text_cache_dir=cache_dir,
                    templates=templates, short_side=short_side, window=window, stride=stride,
                    background_classes=["background"])
    t_build = time.perf_counter() - t0
    arr = load_image(image)
    t0 = time.perf_counter()
    seg.text.encode_classes(classes + ["background"], templates)  # VOC-21: 20 classes + a background prompt
    t_text = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = seg.predict(arr, classes)
        times.append(time.perf_counter() - t0)
    return {"model": model, "pretrained": pretrained, "image_size": list(arr.shape[:2]), "classes": len(classes),
            "templates": templates, "prompts_encoded": seg.text.num_encoded_prompts, "build_s": round(t_build, 2),
            "text_s": round(t_text, 2), "predict_s_median": round(statistics.median(times), 3),
            "predict_s_all": [round(t, 3) for t in times], "short_side": short_side, "window": window,
            "stride": stride, "peak_rss_mb": round(peak_rss_mb()), "threads": torch.get_num_threads(),
            "label_shape": list(res.labels.shape)}


def bench_segment_cold_warm(cache: str = "both", cache_dir: str | Path | None = None,
                            **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`bench_segment` with an empty text cache, then with the cache the first run filled.

    Each run has a fresh process of its own (spawned), so its peak memory and its warm cache are those of a new
    start. ``kwargs`` are :func:`bench_segment`'s arguments but ``cache_dir``.
    """
    folder = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="textseg-bench-"))
    runs = ["cold", "warm"] if cache == "both" else [cache]
    results = []
    ctx = multiprocessing.get_context("spawn")
    for mode in runs:
        if mode == "cold" and folder.exists():
            shutil.rmtree(folder)
        with ctx.Pool(1) as pool:
            result = pool.apply(bench_segment, kwds={**kwargs, "cache_dir": str(folder)})
        results.append({"cache": mode, **result})
    return results
