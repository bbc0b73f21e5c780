"""Referring segmentation speed: seconds per image over N proposals, per method (:func:`bench_refer`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from textseg.bench.timing import device_sync, report_header, resolve_device


def bench_refer(model: str = "dino-s16-clip-b16", *, image: str | Path | np.ndarray | None = None,
                counts: Sequence[int] = (10, 50, 100), methods: Sequence[str] = ("global-local", "region"),
                device: str | None = None, repeats: int = 1, short_side: int | None = 448,
                spatial: bool = False, sentence: str = "the dog to the left of the bus") -> dict[str, Any]:
    """Seconds per image of referring segmentation over N proposals (random rectangles), per method: the visual
    features of all N proposals and the scores of one sentence (proposal generation not included), random
    weights at real size. One untimed call first; each figure is the best of ``repeats``.

    With ``spatial``, each method and count also times a whole refer call over the same proposals without and with
    the spatial reading (:mod:`textseg.ris.spatial`; its parser loaded by the untimed first call, so spaCy's
    import is not counted), alternating, and reports ``spatial_overhead``: with / without - 1."""
    import textseg
    from textseg.assets import voc_sample_image
    from textseg.io import load_image
    from textseg.ris.global_local import random_box_masks
    from textseg.ris.proposals import Proposals
    from textseg.ris.referrer import Referrer
    from textseg.segmenter import Segmenter

    dev = resolve_device(device)
    arr = load_image(image if image is not None else voc_sample_image())
    seg = Segmenter(textseg.create_model(model, pretrained=False, device=dev, seed=0), short_side=short_side,
                    text_cache_dir=False)
    sync = device_sync(dev) or (lambda: None)
    runs = []
    for method in methods:
        referrer = Referrer(seg, method=method)
        for n in counts:
            props = Proposals(random_box_masks(arr.shape[:2], n, seed=0))
            best = float("inf")
            for i in range(repeats + 1):
                sync()
                start = time.perf_counter()
                referrer.scores(referrer.visual_features(arr, props), ["the man in the red shirt on the left"])
                sync()
                if i:  # the first call warms up
                    best = min(best, time.perf_counter() - start)
            runs.append({"method": method, "proposals": n, "seconds": round(best, 3)})
            if spatial:
                runs[-1].update(_spatial_overhead(seg, method, arr, props, sentence, repeats, sync))
    return {**report_header(dev, model=model, image_size=list(arr.shape[:2]), short_side=short_side,
                            dtype="float32"), "benchmark": "refer", "runs": runs}


def _spatial_overhead(seg: Any, method: str, arr: np.ndarray, props: Any, sentence: str, repeats: int,
                      sync: Any) -> dict[str, Any]:
    """Best-of-``repeats`` seconds of a refer call without and with the spatial reading, and the overhead."""
    from textseg.ris.referrer import Referrer

    referrers = {False: Referrer(seg, method=method), True: Referrer(seg, method=method, spatial=True)}
    best = {False: float("inf"), True: float("inf")}
    for i in range(repeats + 1):
        for on, referrer in referrers.items():
            sync()
            start = time.perf_counter()
            referrer(arr, sentence, proposals=props)
            sync()
            if i:
                best[on] = min(best[on], time.perf_counter() - start)
    return {"refer_seconds": round(best[False], 4), "refer_spatial_seconds": round(best[True], 4),
            "spatial_overhead": round(best[True] / best[False] - 1, 4), "sentence": sentence}


__all__ = ["bench_refer"]
