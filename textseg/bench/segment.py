"""Segmentation speed per stage (:func:`bench_segment_stages`) and the text cache cold and warm in fresh
processes (:func:`bench_segment_cold_warm`).

The stage times come from :meth:`Segmenter.predict_batch <textseg.Segmenter.predict_batch>` itself: while a timed
call runs, :func:`instrument` marks the entry and exit of the public steps it goes through (the region pipeline's
``to_device`` and ``regions_batch``, :meth:`CropPlan.label <textseg.labels.CropPlan.label>`, the text encoder's
``encode_classes``) and of the modules it calls (``model.grouper``, ``model.grouper.backbone``, ``model.region``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from textseg.bench.timing import (StageTimeline, bf16_autocast, count_flops, device_peak_mb, device_sync, mean,
                                  median, module_flops, peak_rss_mb, report_header, reset_device_peak, resolve_amp,
                                  resolve_device)

_log = logging.getLogger(__name__)

#: Stages of a segmentation call, in pipeline order (``other``: the rest of ``predict_batch``).
STAGES = ("preprocess", "text", "features", "grouping", "region", "classification", "upsampling", "other")
STAGE_HELP = {
    "preprocess": "image to the device, resize to the short side and to a multiple of the patch size",
    "text": "class embeddings (the text encoder; warm in-memory cache inside a call)",
    "features": "grouping backbone forward (model.grouper.backbone)",
    "grouping": "k-means, small-group merging, region masks and pixel group maps (model.grouper minus backbone)",
    "region": "CLIP image tower with region tokens (model.region), or a dense mode's CLIP pass and text product",
    "classification": "region x text similarities, softmax, painting region probabilities onto the crop's pixels",
    "upsampling": "window average, resize to the input size, labelling, copy to the host (CropPlan.label; a "
                  "dense mode's PAMR and background rule)",
    "other": "the rest of predict_batch: crop planning and batching",
}

#: Frames of a segmentation call and the stage each one's own time goes to.
SEGMENT_FRAMES = {"call": "other", "to_device": "preprocess", "regions_batch": "preprocess", "text": "text",
                  "backbone": "features", "grouper": "grouping", "region": "region", "finish": "upsampling"}
#: predict_batch's own code after a region pass (and between the labelling calls of a chunk) is classification.
SEGMENT_GAPS = {("call", "regions_batch"): "classification", ("call", "finish"): "classification"}


@contextlib.contextmanager
def instrument(seg: Any, timeline: StageTimeline) -> Iterator[StageTimeline]:
    """Mark a Segmenter's steps and model modules on ``timeline`` while inside; everything is restored after.

    Wrapped: ``seg.pipeline.to_device``, ``seg.pipeline.regions_batch`` and ``seg.text.encode_classes`` (instance
    attributes over the class's methods), and :meth:`CropPlan.label <textseg.labels.CropPlan.label>`,
    ``DensePredictor.window_logits`` and ``DensePredictor.finish`` on their classes (made per call). Hooked (forward pre/post hooks): ``seg.model.grouper``,
    ``seg.model.grouper.backbone`` and ``seg.model.region``.
    """
    from textseg.dense.predict import DensePredictor
    from textseg.labels import CropPlan

    model = seg.model
    wrapped = [(seg.pipeline, "to_device", "to_device"), (seg.pipeline, "regions_batch", "regions_batch"),
               (seg.text, "encode_classes", "text"), (CropPlan, "label", "finish"),
               (DensePredictor, "window_logits", "region"), (DensePredictor, "finish", "finish")]
    saved = []
    handles = []
    try:
        for obj, attr, name in wrapped:
            saved.append((obj, attr, vars(obj).get(attr)))
            setattr(obj, attr, timeline.wrap(name, getattr(obj, attr)))
        for module, name in ((model.grouper, "grouper"), (model.grouper.backbone, "backbone"),
                             (model.region, "region")):
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: timeline.enter(name)))
            handles.append(module.register_forward_hook(lambda m, a, o: timeline.exit()))
        yield timeline
    finally:
        for h in handles:
            h.remove()
        for obj, attr, before in reversed(saved):
            if before is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, before)


def crops_per_image(size: tuple[int, int], short_side: int | None, window: int | None, stride: int | None) -> int:
    """How many crops :meth:`Segmenter.predict_batch` cuts an image of ``size`` into."""
    from textseg.labels import window_starts
    from textseg.pipeline import resized_size

    h, w = resized_size(size, short_side)
    if not window:
        return 1
    return len(window_starts(h, min(window, h), stride or h)) * len(window_starts(w, min(window, w), stride or w))


def _mode_overrides(mode: str, window: int | None, stride: int | None) -> dict[str, int | None]:
    """The protocol fields of a mode: ``window`` slides ``window``/``stride`` windows, ``whole`` none."""
    return {"window": window, "stride": stride} if mode == "window" else {"window": None, "stride": None}


def _segment_run(seg: Any, arr: np.ndarray, classes: list[str], mode: str, batch: int, window: int | None,
                 stride: int | None, repeats: int, warmup: int, amp: bool) -> dict[str, Any]:
    """Time ``seg.predict_batch`` on ``batch`` copies of ``arr`` (see :func:`bench_segment_stages`)."""
    device = seg.device
    sync = device_sync(device)
    images = [arr] * batch
    overrides = _mode_overrides(mode, window, stride)

    def call() -> Any:
        with bf16_autocast(amp):
            return seg.predict_batch(images, classes, batch_size=batch, **overrides)

    reset_device_peak(device)
    for _ in range(warmup):
        call()
    timeline = StageTimeline(SEGMENT_FRAMES, SEGMENT_GAPS, sync)
    stage_runs, instrumented = [], []
    cpu0 = time.process_time()
    with instrument(seg, timeline):
        for _ in range(repeats):
            _, stages, total = timeline.run("call", call)
            stage_runs.append(stages)
            instrumented.append(total)
    cpu_s = time.process_time() - cpu0
    if sync is None:  # no waiting anywhere on the CPU: the instrumented runs are the end-to-end runs
        end_to_end = instrumented
    else:  # on CUDA each mark synchronises: time the plain call, synchronised around it only
        end_to_end = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            call()
            sync()
            end_to_end.append(time.perf_counter() - t0)
    e2e = median(end_to_end)
    per_image = {s: 1000 * mean([r.get(s, 0.0) for r in stage_runs]) / batch for s in STAGES}
    inst_ms = 1000 * mean(instrumented) / batch
    named = sum(v for s, v in per_image.items() if s != "other")
    forwards = per_image["features"] + per_image["region"]
    return {
        "mode": mode, "batch_size": batch, "images": batch,
        "crops_per_image": crops_per_image(arr.shape[:2], seg.protocol.short_side, overrides["window"],
                                           overrides["stride"]),
        "window": overrides["window"], "stride": overrides["stride"],
        "end_to_end_s": [round(t, 4) for t in end_to_end], "ms_per_image": round(1000 * e2e / batch, 2),
        "images_per_s": round(batch / e2e, 3),
        "stages_ms_per_image": {s: round(v, 3) for s, v in per_image.items()},
        "stage_share": {s: round(v / inst_ms, 4) if inst_ms > 0 else 0.0 for s, v in per_image.items()},
        "instrumented_ms_per_image": round(inst_ms, 3),
        "cpu_over_wall": round(cpu_s / sum(instrumented), 3),
        "check": {"stage_sum_ms_per_image": round(named, 3),
                  "stages_and_other_ms_per_image": round(sum(per_image.values()), 3),
                  "stage_sum_over_end_to_end": round(named / (1000 * e2e / batch), 4),
                  "instrumented_over_end_to_end": round(inst_ms / (1000 * e2e / batch), 4),
                  "hooks_synchronise": sync is not None},
        "forwards_ms_per_image": round(forwards, 3),
        "end_to_end_over_forwards": round(1000 * e2e / batch / forwards, 3) if forwards > 0 else None,
        "peak_host_mb": round(peak_rss_mb()), "peak_device_mb": device_peak_mb(device),
    }


def _check_warnings(run: dict[str, Any]) -> list[str]:
    c, where = run["check"], f"{run['mode']} batch {run['batch_size']}"
    out = []
    if c["stage_sum_ms_per_image"] > run["instrumented_ms_per_image"] * 1.001 + 1e-3:
        out.append(f"{where}: the stages add up to more than the call ({c['stage_sum_ms_per_image']} > "
                   f"{run['instrumented_ms_per_image']} ms/image): a hook fired out of order")
    if c["stage_sum_over_end_to_end"] < 0.9:
        out.append(f"{where}: the named stages cover only {c['stage_sum_over_end_to_end']:.0%} of the end-to-end "
                   "time")
    if not c["hooks_synchronise"] and run["cpu_over_wall"] < 0.5:
        out.append(f"{where}: this process got {run['cpu_over_wall']:.2f} cores' worth of CPU time on average: "
                   "the machine was busy, the wall times are inflated")
    if c["instrumented_over_end_to_end"] > 1.25:
        out.append(f"{where}: the instrumented runs are {c['instrumented_over_end_to_end']:.2f}x the plain ones "
                   "(synchronising at every stage costs that much)")
    return out


def bench_segment_stages(model: Any = "dino-s16-clip-b16", *, image: str | Path | np.ndarray | None = None,
                         pretrained: bool = False, device: str | torch.device | None = None, amp: str = "none",
                         batch_sizes: Sequence[int] = (1, 32), modes: Sequence[str] = ("whole", "window"),
                         window: int = 448, stride: int = 224, short_side: int | None = 448,
                         templates: str = "imagenet80", repeats: int = 3, warmup: int = 1, flops: bool = True,
                         seed: int = 0) -> dict[str, Any]:
    """Speed, stage shares and memory of :meth:`Segmenter.predict_batch`: VOC-21 (20 classes + a background prompt
    × ``templates``), every batch size × mode, ``batch`` copies of one image per call (``batch`` crops per model
    call), and the text encoder cold, warm on disk and warm in memory.

    Each stage gets its exclusive time (:class:`~textseg.bench.timing.StageTimeline`), so the stages add up
    exactly to the call's time; the code of ``predict_batch`` between the hooked calls is attributed to
    ``classification`` after a region pass and to ``other`` elsewhere. On CUDA every mark synchronises the device,
    so there the end-to-end figures come from separate runs without hooks (synchronised only around the call); on
    the CPU nothing waits and the same runs give both.

    Args:
        model: a model name (built with ``pretrained`` weights or random ones, on ``device``) or a built model.
        image: the image (default: the bundled VOC 2012 image 2007_000033).
        amp: ``"bf16"`` autocast on CUDA (ignored with a note elsewhere) or ``"none"``.
        modes: ``"whole"`` (one crop per image) and/or ``"window"`` (``window``/``stride`` sliding windows at the
            resized scale).
        repeats, warmup: timed and untimed calls per batch size and mode.
        flops: also count the FLOPs of one batch-1 call per mode (an extra untimed call each).

    Returns:
        The report: ``machine``, ``versions``, ``command``, settings, ``text`` and one entry of ``runs`` per batch
        size and mode (see :func:`~textseg.bench.report.segment_markdown` for what the fields mean).
    """
    import textseg
    from textseg.assets import voc_sample_image
    from textseg.data import get_class_names
    from textseg.io import load_image
    from textseg.segmenter import Segmenter
    from textseg.text import TextEncoder

    for m in modes:
        if m not in ("whole", "window"):
            raise ValueError(f"unknown mode {m!r} (use 'whole' and/or 'window')")
    if not batch_sizes or min(batch_sizes) < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch sizes and repeats must be >= 1, warmup >= 0")
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if isinstance(model, str):
        dev = resolve_device(device)
        model = textseg.create_model(model, pretrained=pretrained, device=dev)
    dev = next(model.parameters()).device
    build_s = time.perf_counter() - t0
    use_amp, amp_note = resolve_amp(amp, dev)
    if amp_note:
        _log.warning("%s", amp_note)
    arr = load_image(image if image is not None else voc_sample_image())
    classes = get_class_names("voc21", prompt=True)[1:]
    names = classes + ["background"]
    report = report_header(dev, kind="segment", model=model.name, pretrained=pretrained,
                           dtype="bfloat16 autocast" if use_amp else "float32", amp_requested=amp, amp_note=amp_note,
                           image=str(image) if isinstance(image, (str, Path)) else ("array" if image is not None else
                                                                                     "voc 2007_000033"),
                           image_size=list(arr.shape[:2]), classes=len(names), templates=templates,
                           short_side=short_side, window=window, stride=stride, repeats=repeats, warmup=warmup,
                           build_s=round(build_s, 2), stages=STAGE_HELP)
    with tempfile.TemporaryDirectory(prefix="textseg-bench-text-") as cache:
        seg = Segmenter(model, text_cache_dir=cache, templates=templates, short_side=short_side,
                        background_classes=["background"])
        text: dict[str, Any] = {}
        for key, encoder in (("cold_s", seg.text), ("warm_disk_s", TextEncoder(model.clip, model.tokenizer, cache)),
                             ("warm_memory_s", seg.text)):
            before = encoder.num_encoded_prompts
            sync = device_sync(dev)
            t0 = time.perf_counter()
            with bf16_autocast(use_amp):
                encoder.encode_classes(names, templates).to(dev)
            if sync:
                sync()
            text[key] = round(time.perf_counter() - t0, 4)
            if key == "cold_s":
                text["prompts"] = encoder.num_encoded_prompts - before
        report["text"] = text
        runs = []
        for mode in modes:
            for b in batch_sizes:
                _log.info("bench segment: %s, batch %d", mode, b)
                runs.append(_segment_run(seg, arr, classes, mode, int(b), window, stride, repeats, warmup, use_amp))
            if flops:
                overrides = _mode_overrides(mode, window, stride)
                with bf16_autocast(use_amp):
                    total, by_module = count_flops(lambda: seg.predict_batch([arr], classes, **overrides))
                for run in runs:
                    if run["mode"] == mode:
                        run["flops_per_image"] = total
                        run["flops_per_image_by_stage"] = {"features": module_flops(by_module, "backbone"),
                                                           "region": module_flops(by_module, "region")}
                        run["gflop_per_s"] = round(total / 1e9 * run["images_per_s"], 3)
    report["runs"] = runs
    report["warnings"] = [w for run in runs for w in _check_warnings(run)]
    report["peak_host_mb"] = round(peak_rss_mb())
    return report


# ------------------------------------------------------------------------- cold/warm text cache, fresh processes
def bench_segment(image: str | Path, model: str, pretrained: bool, cache_dir: str | Path, templates: str,
                  repeats: int, short_side: int | None, window: int | None, stride: int | None,
                  device: str | None = None) -> dict[str, Any]:
    """Time one image's segmentation into the 20 VOC classes + a background prompt, in this process, with the text
    cache as found in ``cache_dir``."""
    import textseg
    from textseg.data import get_class_names
    from textseg.io import load_image
    from textseg.segmenter import Segmenter

    classes = get_class_names("voc21", prompt=True)[1:]
    dev = resolve_device(device)
    sync = device_sync(dev) or (lambda: None)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    seg = Segmenter(textseg.create_model(model, pretrained=pretrained, device=dev), text_cache_dir=cache_dir,
                    templates=templates, short_side=short_side, window=window, stride=stride,
                    background_classes=["background"])
    t_build = time.perf_counter() - t0
    arr = load_image(image)
    t0 = time.perf_counter()
    seg.text.encode_classes(classes + ["background"], templates)  # VOC-21: 20 classes + a background prompt
    t_text = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        res = seg.predict(arr, classes)
        sync()
        times.append(time.perf_counter() - t0)
    return {"model": model, "pretrained": pretrained, "device": str(dev), "image_size": list(arr.shape[:2]),
            "classes": len(classes), "templates": templates, "prompts_encoded": seg.text.num_encoded_prompts,
            "build_s": round(t_build, 2), "text_s": round(t_text, 2),
            "predict_s_median": round(statistics.median(times), 3), "predict_s_all": [round(t, 3) for t in times],
            "short_side": short_side, "window": window, "stride": stride, "peak_rss_mb": round(peak_rss_mb()),
            "threads": torch.get_num_threads(), "label_shape": list(res.labels.shape)}


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
    try:
        for mode in runs:
            if mode == "cold" and folder.exists():
                shutil.rmtree(folder)
            # an executor, not a Pool: a worker that dies (e.g. out of memory) raises here instead of being respawned
            with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                result = pool.submit(bench_segment, **kwargs, cache_dir=str(folder)).result()
            results.append({"cache": mode, **result})
    finally:
        if not cache_dir:
            shutil.rmtree(folder, ignore_errors=True)
    return results


__all__ = ["SEGMENT_FRAMES", "SEGMENT_GAPS", "STAGES", "STAGE_HELP", "bench_segment", "bench_segment_cold_warm",
           "bench_segment_stages", "crops_per_image", "instrument"]
