"""Speed and memory benchmarks, run on demand (never as timed tests): ``textseg bench segment`` and ``train``.

Segmentation (:func:`bench_segment_stages`) times :meth:`Segmenter.predict_batch <textseg.Segmenter.predict_batch>`
itself, batch 1 and batch N, whole image and sliding window. Its stage times come from the same calls, not from a
re-implementation: while a timed call runs, light hooks (:class:`StageTimeline`, :func:`instrument`) mark the
entry and exit of the Segmenter's own steps (``_to_device``, ``_regions_batch``, ``_finish``, the text encoder's
``encode_classes``) and of the modules it calls (``model.grouper``, ``model.grouper.backbone``, ``model.region``).
Each stage gets its exclusive time, so the stages add up exactly to the call's time; the code of ``predict_batch``
between the hooked calls is attributed to ``classification`` after a region pass and to ``other`` elsewhere. On
CUDA every mark synchronises the device, so there the end-to-end figures come from separate runs without hooks
(synchronised only around the call); on the CPU nothing waits and the same runs give both.

Training (:func:`bench_train`) times the training step of :mod:`textseg.train.loop` (grouping on the device,
:class:`~textseg.train.loop.TrainStep`, the image-text and noun-region losses, backward, AdamW) and a plain
open_clip image-text step on the same synthetic batch, in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import multiprocessing
import os
import platform
import random
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from textseg.errors import UserError

_log = logging.getLogger(__name__)

#: Stages of a segmentation call, in pipeline order (``other``: the rest of ``predict_batch``).
STAGES = ("preprocess", "text", "features", "grouping", "region", "classification", "upsampling", "other")
STAGE_HELP = {
    "preprocess": "image to the device, resize to the short side and to a multiple of the patch size",
    "text": "class embeddings (the text encoder; warm in-memory cache inside a call)",
    "features": "grouping backbone forward (model.grouper.backbone)",
    "grouping": "k-means, small-group merging, region masks and pixel group maps (model.grouper minus backbone)",
    "region": "CLIP image tower with region tokens (model.region)",
    "classification": "region x text similarities, softmax, painting region probabilities onto the crop's pixels",
    "upsampling": "window average, resize to the input size, labelling, copy to the host (Segmenter._finish)",
    "other": "the rest of predict_batch: crop planning and batching",
}
AMP_CHOICES = ("none", "bf16")


# ----------------------------------------------------------------------------------------------------- machine
def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM of ``/proc/self/status`` where there is one (it starts
    afresh in a spawned process, while ``ru_maxrss`` keeps the peak of the parent it was forked from), else
    ``ru_maxrss`` (KiB on Linux)."""
    with contextlib.suppress(OSError, StopIteration, ValueError, IndexError):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """The machine a benchmark ran on: CPU model and cores, memory, torch threads and the GPU if any."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                            "torch_threads": torch.get_num_threads()}
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        info["memory_gb"] = round(kb / 1024 ** 2, 1)
    with contextlib.suppress(OSError, ValueError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        index = torch.device(device).index if device is not None and torch.device(device).type == "cuda" else None
        props = torch.cuda.get_device_properties(index or 0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 1024 ** 3, 1)
    else:
        info["gpu"] = None
    return info


def versions() -> dict[str, str | None]:
    """Versions of Python, torch (and its CUDA), textseg, open_clip, timm, faiss and numpy (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
    for name, module in (("textseg", "textseg"), ("open_clip", "open_clip"), ("timm", "timm"), ("faiss", "faiss"),
                         ("numpy", "numpy")):
        try:
            out[name] = str(getattr(importlib.import_module(module), "__version__", "unknown"))
        except ImportError:
            out[name] = None
    return out


def _header(device: torch.device, **fields: Any) -> dict[str, Any]:
    return {"command": shlex.join(sys.argv), "machine": machine_info(device), "versions": versions(),
            "device": str(device), **fields}


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _sync_of(device: torch.device) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device; None elsewhere (no waiting on the CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def _reset_device_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _device_peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 1024 ** 2, 1) if device.type == "cuda" else None


def resolve_amp(amp: str | None, device: torch.device) -> tuple[bool, str | None]:
    """(use bf16 autocast, a note when the request is ignored). bf16 autocast runs on CUDA only."""
    if amp in (None, "none"):
        return False, None
    if amp != "bf16":
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if device.type != "cuda":
        return False, f"--amp bf16 is ignored on {device.type}: bf16 autocast runs on CUDA only, timing float32"
    return True, None


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------- stage timeline
@dataclass
class _Frame:
    name: str
    label: str  # the stage that the frame's own time is credited to now
    mark: float


class StageTimeline:
    """Exclusive time per stage of nested calls, from ``enter``/``exit`` marks (hooks or wrapped functions).

    A frame's own time (not inside a nested marked call) goes to its stage; ``gap_labels[(frame, child)]`` sends
    the frame's own time after a given child returned to another stage (the inline code that follows it). So the
    stages of one outermost call add up to its wall time exactly.

    Args:
        stage_of: frame name → stage.
        gap_labels: (frame name, last child's frame name) → stage of the frame's own time after that child.
        sync: called before every mark (``torch.cuda.synchronize`` on CUDA; None on the CPU).
        clock: seconds now (``time.perf_counter``).
    """

    def __init__(self, stage_of: dict[str, str], gap_labels: dict[tuple[str, str], str] | None = None,
                 sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.stage_of, self.gap_labels, self.sync, self.clock = stage_of, gap_labels or {}, sync, clock
        self.totals: dict[str, float] = {}
        self._stack: list[_Frame] = []

    def _now(self) -> float:
        if self.sync is not None:
            self.sync()
        return self.clock()

    def _credit(self, frame: _Frame, now: float) -> None:
        self.totals[frame.label] = self.totals.get(frame.label, 0.0) + (now - frame.mark)

    def enter(self, name: str) -> None:
        now = self._now()
        if self._stack:
            self._credit(self._stack[-1], now)
        self._stack.append(_Frame(name, self.stage_of[name], now))

    def exit(self) -> None:
        now = self._now()
        frame = self._stack.pop()
        self._credit(frame, now)
        if self._stack:
            parent = self._stack[-1]
            parent.mark = now
            parent.label = self.gap_labels.get((parent.name, frame.name), self.stage_of[parent.name])

    def wrap(self, name: str, fn: Callable) -> Callable:
        """``fn`` with an enter mark before and an exit mark after."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()
        return timed

    def run(self, name: str, fn: Callable[[], Any]) -> tuple[Any, dict[str, float], float]:
        """Call ``fn`` as the outermost frame ``name``: (its result, seconds per stage, its wall time)."""
        self.totals, self._stack = {}, []
        t0 = self._now()
        result = self.wrap(name, fn)()
        return result, dict(self.totals), self._now() - t0


#: Frames of a segmentation call and the stage each one's own time goes to.
SEGMENT_FRAMES = {"call": "other", "to_device": "preprocess", "regions_batch": "preprocess", "text": "text",
                  "backbone": "features", "grouper": "grouping", "region": "region", "finish": "upsampling"}
#: predict_batch's own code after a region pass (and between the _finish calls of a chunk) is classification.
SEGMENT_GAPS = {("call", "regions_batch"): "classification", ("call", "finish"): "classification"}


@contextlib.contextmanager
def instrument(seg: Any, timeline: StageTimeline) -> Iterator[StageTimeline]:
    """Mark the Segmenter's own steps and model modules on ``timeline`` while inside; everything is restored after.

    Wrapped (instance attributes over the class's methods): ``seg._to_device``, ``seg._regions_batch``,
    ``seg._finish`` and ``seg.text.encode_classes``. Hooked (forward pre/post hooks): ``seg.model.grouper``,
    ``seg.model.grouper.backbone`` and ``seg.model.region``.
    """
    model = seg.model
    wrapped = [(seg, "_to_device", "to_device"), (seg, "_regions_batch", "regions_batch"), (seg, "_finish", "finish"),
               (seg.text, "encode_classes", "text")]
    saved = []
    handles = []
    try:
        for obj, attr, name in wrapped:
            saved.append((obj, attr, obj.__dict__.get(attr)))
            setattr(obj, attr, timeline.wrap(name, getattr(obj, attr)))
        for module, name in ((model.grouper, "grouper"), (model.grouper.backbone, "backbone"),
                             (model.region, "region")):
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: timeline.enter(name)))
            handles.append(module.register_forward_hook(lambda m, a, o: timeline.exit()))
        yield timeline
    finally:
        for h in handles:
            h.remove()
        for obj, attr, before in saved:
            if before is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, before)


# ------------------------------------------------------------------------------------------------------- FLOPs
def _mha_flops(query, key, value, embed_dim, num_heads, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """FLOPs of ``aten._native_multi_head_attention`` (nn.MultiheadAttention's inference fast path, which torch's
    counter does not know): q, k, v and output projections and the two attention matmuls."""
    b, lq, d = query
    lk = key[1]
    return 2 * b * d * d * (2 * lq + 2 * lk) + 4 * b * lq * lk * d


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of ``fn()`` (torch's FLOP counter: matmuls, convolutions, attention) and per top-level module
    name (e.g. ``Grouper.backbone``, ``TextSegModel.region``)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    if hasattr(torch.ops.aten, "_native_multi_head_attention"):
        mapping[torch.ops.aten._native_multi_head_attention] = _mha_flops
    counter = FlopCounterMode(display=False, depth=2, custom_mapping=mapping)
    with counter:
        fn()
    by_module = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items() if k != "Global"}
    return int(counter.get_total_flops()), by_module


def _module_flops(by_module: dict[str, int], last: str) -> int:
    """FLOPs of the outermost module whose name ends with ``.last`` (0 if none ran)."""
    names = sorted((k for k in by_module if k.split(".")[-1] == last), key=lambda k: k.count("."))
    return by_module[names[0]] if names else 0


# ------------------------------------------------------------------------------------------------ segmentation
def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs))


def crops_per_image(size: tuple[int, int], short_side: int | None, window: int | None, stride: int | None) -> int:
    """How many crops :meth:`Segmenter.predict_batch` cuts an image of ``size`` into."""
    from textseg.segmenter import resized_size, window_starts

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
    sync = _sync_of(device)
    images = [arr] * batch
    overrides = _mode_overrides(mode, window, stride)

    def call() -> Any:
        with _autocast(device, amp):
            return seg.predict_batch(images, classes, batch_size=batch, **overrides)

    _reset_device_peak(device)
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
    e2e = _median(end_to_end)
    per_image = {s: 1000 * _mean([r.get(s, 0.0) for r in stage_runs]) / batch for s in STAGES}
    inst_ms = 1000 * _mean(instrumented) / batch
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
        "peak_host_mb": round(peak_rss_mb()), "peak_device_mb": _device_peak_mb(device),
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
        size and mode (see :func:`segment_markdown` for what the fields mean).
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
        dev = _device(device)
        model = textseg.create_model(model, pretrained=pretrained, device=dev)
    dev = next(model.parameters()).device
    build_s = time.perf_counter() - t0
    use_amp, amp_note = resolve_amp(amp, dev)
    if amp_note:
        _log.warning("%s", amp_note)
    arr = load_image(image if image is not None else voc_sample_image())
    classes = get_class_names("voc21", prompt=True)[1:]
    names = classes + ["background"]
    report = _header(dev, kind="segment", model=model.name, pretrained=pretrained,
                     dtype="bfloat16 autocast" if use_amp else "float32", amp_requested=amp, amp_note=amp_note,
                     image=str(image) if isinstance(image, (str, Path)) else ("array" if image is not None else
                                                                               "voc 2007_000033"),
                     image_size=list(arr.shape[:2]), classes=len(names), templates=templates, short_side=short_side,
                     window=window, stride=stride, repeats=repeats, warmup=warmup, build_s=round(build_s, 2),
                     stages=STAGE_HELP)
    with tempfile.TemporaryDirectory(prefix="textseg-bench-text-") as cache:
        seg = Segmenter(model, text_cache_dir=cache, templates=templates, short_side=short_side,
                        background_classes=["background"])
        text: dict[str, Any] = {}
        for key, encoder in (("cold_s", seg.text), ("warm_disk_s", TextEncoder(model.clip, model.tokenizer, cache)),
                             ("warm_memory_s", seg.text)):
            before = encoder.num_encoded_prompts
            sync = _sync_of(dev)
            t0 = time.perf_counter()
            with _autocast(dev, use_amp):
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
                with _autocast(dev, use_amp):
                    total, by_module = count_flops(lambda: seg.predict_batch([arr], classes, **overrides))
                for run in runs:
                    if run["mode"] == mode:
                        run["flops_per_image"] = total
                        run["flops_per_image_by_stage"] = {"features": _module_flops(by_module, "backbone"),
                                                           "region": _module_flops(by_module, "region")}
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
    dev = _device(device)
    sync = _sync_of(dev) or (lambda: None)
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


# ---------------------------------------------------------------------------------------------------- training
_WORDS = {"adj": ["red", "small", "striped", "bright", "old", "wooden", "blue", "round"],
          "noun": ["dog", "car", "tree", "house", "cat", "boat", "bicycle", "person", "bird", "chair", "flower",
                   "horse", "bottle", "train", "sheep", "table"],
          "place": ["on a street", "in a park", "on a beach", "in a kitchen", "next to a wall", "under the sky"]}


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions naming two or three objects each (seeded), e.g. "a red dog and a small car in a park"."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        objs = [f"a {rng.choice(_WORDS['adj'])} {rng.choice(_WORDS['noun'])}" for _ in range(rng.randint(2, 3))]
        out.append(f"{', '.join(objs[:-1])} and {objs[-1]} {rng.choice(_WORDS['place'])}")
    return out


class _StepClock:
    """Seconds per section of one training step, synchronised on CUDA only."""

    def __init__(self, sync: Callable[[], None] | None) -> None:
        self.sync = sync
        self.sections: dict[str, float] = {}
        self._mark = 0.0

    def start(self) -> None:
        self.sections = {}
        if self.sync:
            self.sync()
        self._mark = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sync:
            self.sync()
        now = time.perf_counter()
        self.sections[name] = self.sections.get(name, 0.0) + now - self._mark
        self._mark = now


def _optimizer_step(loss: torch.Tensor, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
                    clip_grad: float, clock: _StepClock) -> None:
    """Backward, clip, AdamW step and zero_grad, as the training loop does them."""
    loss.backward()
    clock.lap("backward")
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    opt.step()
    opt.zero_grad(set_to_none=True)
    clock.lap("optimizer")


def training_step_seconds(cfg: Any, *, steps: int = 2, warmup: int = 1, seed: int = 0) -> float:
    """Median seconds per optimizer step of a training config on this machine (CUDA when there is one, as training).

    One synthetic batch of the config's size (random images at ``data.image_size``, captions from
    :func:`synthetic_captions`) goes through what a training step does: grouping, :class:`TrainStep`, the config's
    losses (:func:`~textseg.train.loop.step_loss`), backward, gradient clipping and AdamW; ``warmup`` untimed steps
    first. Random weights (``init`` is not read), so it can run before the run that makes them.
    """
    from textseg.train.data import NounBatcher
    from textseg.train.loop import TrainStep, build_model, build_optimizer, select_trainable, step_inputs, step_loss

    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    dev = _device(None)
    model = build_model(dataclasses.replace(cfg, init=None))
    params = select_trainable(model, cfg.train)
    model.to(dev).train()
    model.grouper.eval()
    opt, _ = build_optimizer(model, cfg.optim, steps + warmup)
    gen = torch.Generator().manual_seed(seed)
    size = cfg.data.image_size
    images = torch.rand(cfg.data.batch_size, 3, size, size, generator=gen).to(dev)
    captions = synthetic_captions(cfg.data.batch_size, seed)
    nouns_of = NounBatcher(cfg.data.noun_template, cfg.loss.max_nouns, cfg.loss.keep_background_nouns)
    net, sync = TrainStep(model), _sync_of(dev)
    clock = _StepClock(sync)
    times = []
    for i in range(warmup + steps):
        clock.start()
        inputs = step_inputs(model, captions, nouns_of, cfg.loss, dev)
        masks = model.group(images, pixels=False).region_masks
        with _autocast(dev, dev.type == "cuda" and cfg.train.amp in ("auto", True)):
            res = net(images, masks, inputs.caption_tokens, inputs.noun_tokens)
            loss, _ = step_loss(res, inputs, cfg.loss)
        _optimizer_step(loss, params, opt, cfg.optim.clip_grad, clock)
        if i >= warmup:
            times.append(sum(clock.sections.values()))
    return _median(times)


def bench_train(model: str = "labxy-small-workbench", *, steps: int = 10, warmup: int = 2,
                batch_size: int | None = None, image_size: int | None = None, device: str | None = None,
                amp: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Training throughput: the textseg step against a plain open_clip image-text step, on one synthetic batch.

    ``textseg``: grouping of the batch on the device (``data.group_on=device``), :class:`TrainStep` (region tokens,
    image and caption embeddings, noun prompts), the image-text + noun-region losses with the weights of the
    ``stage2_region`` preset, backward, gradient clipping and AdamW. ``open_clip``: ``clip.encode_image`` and
    ``clip.encode_text`` of the same images and captions, the image-text loss, the same backward and optimizer,
    the same trained parameters. Random weights and random images; captions from :func:`synthetic_captions`.

    Args:
        model: a model config name; its region mode is kept (region tokens for the shipped configs).
        steps, warmup: timed and untimed steps per variant.
        batch_size: samples per step (default 64 on CUDA, 8 elsewhere).
        image_size: square training size (default the CLIP's own input size; at another size the plain step's
            image tower runs through :meth:`RegionTokenViT.encode_image <textseg.region.RegionTokenViT.encode_image>`,
            the same blocks with the position embedding interpolated, as open_clip's own forward cannot).
        amp: ``auto`` (bf16 autocast on CUDA, as ``train.amp``), ``bf16`` or ``none``.

    On CUDA it turns TF32 on for the process (``train.tf32``), as training does. Each step is timed in sections
    (tokens, grouping, forward + loss, backward, optimizer), synchronised between them on CUDA only.
    """
    import textseg
    from textseg.losses import image_text_loss
    from textseg.train.config import load_train_config
    from textseg.train.data import NounBatcher
    from textseg.train.loop import (MAX_LOGIT_SCALE, TrainStep, build_optimizer, enable_cuda_speedups,
                                    select_trainable, step_inputs, step_loss)

    if steps < 1 or warmup < 0:
        raise ValueError("steps must be >= 1 and warmup >= 0")
    dev = _device(device)
    use_amp, amp_note = resolve_amp("bf16" if amp == "auto" and dev.type == "cuda" else
                                    ("none" if amp == "auto" else amp), dev)
    if amp_note:
        _log.warning("%s", amp_note)
    cfg = load_train_config("stage2_region")
    lw = cfg.loss
    if dev.type == "cuda":
        enable_cuda_speedups(cfg.train.tf32)
    torch.manual_seed(seed)
    net_model = textseg.create_model(model, pretrained=False, device=dev)
    params = select_trainable(net_model, cfg.train)
    net_model.train()
    net_model.grouper.eval()
    clip = net_model.clip
    size = image_size or int(np.atleast_1d(clip.visual.image_size)[0])
    size = max(net_model.patch_size, size // net_model.patch_size * net_model.patch_size)
    native = tuple(np.broadcast_to(clip.visual.image_size, 2)) == (size, size)
    batch = batch_size or (64 if dev.type == "cuda" else 8)
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=gen).to(dev)
    captions = synthetic_captions(batch, seed)
    nouns_of = NounBatcher(cfg.data.noun_template, lw.max_nouns, lw.keep_background_nouns)
    net = TrainStep(net_model)
    sync = _sync_of(dev)

    def textseg_step(clock: _StepClock) -> None:
        inputs = step_inputs(net_model, captions, nouns_of, lw, dev)
        clock.lap("tokens")
        masks = net_model.group(images, pixels=False).region_masks
        clock.lap("grouping")
        with _autocast(dev, use_amp):
            res = net(images, masks, inputs.caption_tokens, inputs.noun_tokens)
            loss, _ = step_loss(res, inputs, lw)
        clock.lap("forward")
        _optimizer_step(loss, params, opt, cfg.optim.clip_grad, clock)

    def open_clip_step(clock: _StepClock) -> None:
        caption_tokens = net_model.tokenizer(captions).to(dev)
        clock.lap("tokens")
        with _autocast(dev, use_amp):
            image = F.normalize(clip.encode_image(net_model.region.normalize(images)) if native else
                                net_model.region.encode_image(images), dim=-1)
            text = F.normalize(clip.encode_text(caption_tokens), dim=-1)
            loss = image_text_loss(image.float(), text.float(), clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE))
        clock.lap("forward")
        _optimizer_step(loss, params, opt, cfg.optim.clip_grad, clock)

    variants = {}
    for name, step_fn in (("open_clip", open_clip_step), ("textseg", textseg_step)):
        opt, _ = build_optimizer(net_model, cfg.optim, steps + warmup)
        clock = _StepClock(sync)
        _reset_device_peak(dev)
        times, sections = [], []
        for i in range(warmup + steps):
            clock.start()
            step_fn(clock)
            if i >= warmup:
                times.append(sum(clock.sections.values()))
                sections.append(clock.sections)
        med = _median(times)
        variants[name] = {"samples_per_s": round(batch / med, 2), "ms_per_step": round(1000 * med, 2),
                          "ms_per_step_all": [round(1000 * t, 2) for t in times],
                          "sections_ms": {k: round(1000 * _mean([s.get(k, 0.0) for s in sections]), 2)
                                          for k in ("tokens", "grouping", "forward", "backward", "optimizer")
                                          if k in sections[0]},
                          "peak_device_mb": _device_peak_mb(dev)}
        del opt
    ts, oc = variants["textseg"], variants["open_clip"]
    grouping_ms = ts["sections_ms"].get("grouping", 0.0)
    return _header(dev, kind="train", model=model, region_mode=net_model.config.region.mode,
                   dtype="bfloat16 autocast" if use_amp else "float32", amp_requested=amp, amp_note=amp_note,
                   batch_size=batch, image_size=size, steps=steps, warmup=warmup, loss=asdict(lw),
                   trainable=cfg.train.trainable, variants=variants,
                   overhead=round(ts["ms_per_step"] / oc["ms_per_step"] - 1, 4),
                   overhead_without_grouping=round((ts["ms_per_step"] - grouping_ms) / oc["ms_per_step"] - 1, 4),
                   peak_host_mb=round(peak_rss_mb()))


# ------------------------------------------------------------------------------------------------------ output
def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _sig(x: float | None, scale: float = 1.0) -> str:
    """Three significant digits (thousands separated), "–" for None."""
    if x is None:
        return "–"
    v = x * scale
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _header_markdown(report: dict[str, Any]) -> list[str]:
    m, v = report["machine"], report["versions"]
    gpu = f", GPU {m['gpu']} ({m.get('gpu_memory_gb')} GB)" if m.get("gpu") else ", no GPU"
    lines = [f"`{report['command']}`", "",
             f"- machine: {m['cpu']}, {m['cpu_count']} cores ({m['torch_threads']} torch threads)"
             f"{', ' + str(m['memory_gb']) + ' GB' if m.get('memory_gb') else ''}{gpu}"
             f"{'; load average ' + ' '.join(map(str, m['load_average'])) if m.get('load_average') else ''}",
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None)
             + "".join(f", {k} not installed" for k, val in v.items() if val is None),
             f"- device {report['device']}, {report['dtype']}" + (f" ({report['amp_note']})" if report.get("amp_note")
                                                                  else "")]
    return lines


def segment_markdown(report: dict[str, Any]) -> str:
    """The segmentation report as Markdown: header, end-to-end table, stage table, text and process tables."""
    r = report
    t = r["text"]
    lines = [f"## textseg bench segment: {r['model']} ({'pretrained' if r['pretrained'] else 'random'} weights)", "",
             *_header_markdown(r),
             f"- image {r['image']} {r['image_size'][0]}×{r['image_size'][1]}, short side {r['short_side']}, "
             f"{r['classes']} classes × {r['templates']} templates, {r['repeats']} timed calls after {r['warmup']} "
             "untimed per row; batch = images per call = crops per model call",
             f"- text ({t['prompts']} prompts): cold {t['cold_s']:.2f} s, warm disk cache {t['warm_disk_s']:.3f} s, "
             f"warm memory cache {t['warm_memory_s']:.4f} s", "",
             "| mode | batch | crops/image | ms/image | images/s | GFLOP/image | GFLOP/s | end-to-end / forwards "
             "| CPU time / wall | peak host MB | peak device MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in r["runs"]:
        lines.append(f"| {run['mode']} | {run['batch_size']} | {run['crops_per_image']} | {run['ms_per_image']:,.1f} "
                     f"| {run['images_per_s']:.2f} | {_sig(run.get('flops_per_image'), 1e-9)} "
                     f"| {_sig(run.get('gflop_per_s'))} | {_fmt(run['end_to_end_over_forwards'], 2)} "
                     f"| {run['cpu_over_wall']:.2f} | {run['peak_host_mb']:,} | {_fmt(run['peak_device_mb'], 0)} |")
    lines += ["", "Stages, ms per image (share of the instrumented call); sum = named stages, checked against "
              "end to end:", "",
              "| mode | batch | " + " | ".join(STAGES) + " | sum | end to end |",
              "|---|---:|" + "---:|" * (len(STAGES) + 2)]
    for run in r["runs"]:
        cells = [f"{run['stages_ms_per_image'][s]:,.1f} ({run['stage_share'][s]:.0%})" for s in STAGES]
        c = run["check"]
        lines.append(f"| {run['mode']} | {run['batch_size']} | " + " | ".join(cells)
                     + f" | {c['stage_sum_ms_per_image']:,.1f} ({c['stage_sum_over_end_to_end']:.0%}) "
                     f"| {run['ms_per_image']:,.1f} |")
    lines += ["", "Stages: " + "; ".join(f"**{s}** {h}" for s, h in STAGE_HELP.items()) + ". End-to-end / forwards "
              "= end-to-end time over features + region (the two image towers). GFLOP: torch's FLOP counter over "
              "one batch-1 call. CPU time / wall: process CPU seconds (all threads) per wall second of the timed "
              "calls, low when other processes share the cores. Peak host MB: the process's peak resident memory "
              "so far (VmHWM); peak device MB: torch.cuda.max_memory_allocated over the row's calls."]
    if r.get("processes"):
        lines += ["", "Fresh processes (spawned), one image, `Segmenter.predict`:", "",
                  "| text cache | build s | text s (prompts) | s/image | peak host MB |", "|---|---:|---:|---:|---:|"]
        for p in r["processes"]:
            lines.append(f"| {p['cache']} | {p['build_s']} | {p['text_s']} ({p['prompts_encoded']}) "
                         f"| {p['predict_s_median']} | {p['peak_rss_mb']:,} |")
    if r.get("warnings"):
        lines += ["", *[f"- warning: {w}" for w in r["warnings"]]]
    return "\n".join(lines) + "\n"


def train_markdown(report: dict[str, Any]) -> str:
    """The training report as Markdown: header and one row per step variant."""
    r = report
    lines = [f"## textseg bench train: {r['model']} (random weights, region mode {r['region_mode']})", "",
             *_header_markdown(r),
             f"- batch {r['batch_size']} synthetic images {r['image_size']}×{r['image_size']} + captions, "
             f"{r['steps']} timed steps after {r['warmup']} untimed, trained: {r['trainable']} image tower + text",
             "",
             "| step | samples/s | ms/step | tokens ms | grouping ms | forward + loss ms | backward ms "
             "| optimizer ms | peak device MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in r["variants"].items():
        s = v["sections_ms"]
        label = "open_clip image-text" if name == "open_clip" else "textseg: grouping + region tokens + nouns"
        lines.append(f"| {label} | {v['samples_per_s']:,.1f} | {v['ms_per_step']:,.1f} | {_fmt(s.get('tokens'))} "
                     f"| {_fmt(s.get('grouping'))} "
                     f"| {_fmt(s.get('forward'))} | {_fmt(s.get('backward'))} | {_fmt(s.get('optimizer'))} "
                     f"| {_fmt(v['peak_device_mb'], 0)} |")
    lines += ["", f"Grouping + region tokens add {r['overhead']:.0%} to the open_clip step "
              f"({r['overhead_without_grouping']:.0%} without the grouping, as when the data workers group)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ memory
def parse_memory_case(text: str) -> tuple[int, int, int]:
    """``"12000x12000:21"`` → (width, height, classes)."""
    try:
        size, classes = text.split(":")
        w, h = (int(v) for v in size.lower().split("x"))
        n = int(classes)
    except ValueError:
        raise UserError(f"memory case {text!r} is not WIDTHxHEIGHT:CLASSES (e.g. 12000x12000:21)") from None
    if min(w, h, n) < 1:
        raise UserError(f"memory case {text!r}: width, height and classes must be positive")
    return w, h, n


def synthetic_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 test image: 16x16-pixel blocks of random colour (JPEG-compressible, not uniform)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-height // 16), -(-width // 16), 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 16, axis=0), 16, axis=1)[:height, :width]


def bench_segment_memory(cases: Sequence[tuple[int, int, int]], *, model: str = "dino-s16-clip-b16",
                         templates: str = "imagenet80", num_workers: int = 0, device: str = "cpu",
                         extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Peak resident memory of ``textseg segment`` on synthetic images, each case in a fresh process.

    Every case writes a JPEG of the given size and a class list of that many names to a temporary folder and
    runs the real command on them (random weights at real size), so the figure includes decoding, the model,
    labelling at the input size and writing the label PNG, overlay and JSON. With ``num_workers=0`` everything
    runs in the one process whose peak the child reports itself (:func:`peak_rss_mb` at its exit: ``ru_maxrss``
    seen from here would include this parent's memory, which a child started by fork or vfork inherits in its
    high-water mark); DataLoader workers would hold decoded images in processes of their own.

    Args:
        cases: (width, height, classes) triples.
        model, templates, device: as for ``textseg segment``.
        num_workers: ``--num-workers`` of the runs.
        extra_args: more ``textseg segment`` options.
    """
    import subprocess

    from PIL import Image

    runs = []
    with tempfile.TemporaryDirectory(prefix="textseg-bench-memory-") as tmp:
        for w, h, n in cases:
            folder = Path(tmp) / f"{w}x{h}-{n}"
            folder.mkdir()
            image = folder / "image.jpg"
            Image.fromarray(synthetic_photo(w, h)).save(image, quality=90)
            classes = folder / "classes.txt"
            classes.write_text("\n".join(f"object kind {i}" for i in range(n)) + "\n")
            cmd = [sys.executable, "-c", _PEAK_REPORTING_MAIN, str(folder / "peak.json"), "segment", str(image),
                   "--classes", str(classes), "--out", str(folder / "out"), "--model", model, "--no-pretrained",
                   "--no-text-cache", "--templates", templates, "--num-workers", str(num_workers),
                   "--device", device, "--no-progress", *extra_args]
            start = time.perf_counter()
            with open(folder / "stderr.txt", "wb") as err:
                rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err).returncode
            wall = time.perf_counter() - start
            if rc != 0:
                tail = (folder / "stderr.txt").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise UserError(f"textseg segment failed on the {w}x{h}, {n}-class case: {tail[0]}")
            peak_mb = json.loads((folder / "peak.json").read_text())["peak_rss_mb"]
            runs.append({"width": w, "height": h, "megapixels": round(w * h / 1e6, 2), "classes": n,
                         "image_mb": round(w * h * 3 / 2**20, 1), "wall_s": round(wall, 1),
                         "peak_rss_mb": round(peak_mb, 1)})
    return {**_header(torch.device(device), model=model, templates=templates, num_workers=num_workers,
                      dtype="float32"), "benchmark": "segment_memory", "runs": runs}


# ------------------------------------------------------------------------------------------------ referring
def bench_refer(model: str = "dino-s16-clip-b16", *, image: str | Path | np.ndarray | None = None,
                counts: Sequence[int] = (10, 50, 100), methods: Sequence[str] = ("global-local", "region"),
                device: str | None = None, repeats: int = 1, short_side: int | None = 448) -> dict[str, Any]:
    """Seconds per image of referring segmentation over N proposals (random rectangles), per method: the visual
    features of all N proposals and the scores of one sentence (proposal generation not included), random
    weights at real size. One untimed call first; each figure is the best of ``repeats``."""
    import textseg
    from textseg.assets import voc_sample_image
    from textseg.io import load_image
    from textseg.ris.global_local import random_box_masks
    from textseg.ris.proposals import Proposals
    from textseg.ris.referrer import Referrer
    from textseg.segmenter import Segmenter

    dev = _device(device)
    arr = load_image(image if image is not None else voc_sample_image())
    seg = Segmenter(textseg.create_model(model, pretrained=False, device=dev, seed=0), short_side=short_side,
                    text_cache_dir=False)
    sync = _sync_of(dev) or (lambda: None)
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
    return {**_header(dev, model=model, image_size=list(arr.shape[:2]), short_side=short_side, dtype="float32"),
            "benchmark": "refer", "runs": runs}


def refer_markdown(report: dict[str, Any]) -> str:
    """The Markdown table of a :func:`bench_refer` report, under the machine and versions."""
    methods = list(dict.fromkeys(r["method"] for r in report["runs"]))
    counts = list(dict.fromkeys(r["proposals"] for r in report["runs"]))
    cell = {(r["method"], r["proposals"]): r["seconds"] for r in report["runs"]}
    lines = _header_markdown(report)
    lines += ["| proposals | " + " | ".join(f"{m} (s)" for m in methods) + " |",
              "|---:|" + "---:|" * len(methods)]
    lines += [f"| {n} | " + " | ".join(f"{cell[m, n]:.2f}" for m in methods) + " |" for n in counts]
    return "\n".join(lines) + "\n"


# Runs the CLI on argv[2:], then writes this process's own peak RSS to the JSON file argv[1].
_PEAK_REPORTING_MAIN = (
    "import json, sys\n"
    "from textseg.cli import main\n"
    "rc = main(sys.argv[2:])\n"
    "from textseg.bench import peak_rss_mb\n"
    "open(sys.argv[1], 'w').write(json.dumps({'peak_rss_mb': peak_rss_mb()}))\n"
    "sys.exit(rc)\n"
)


def memory_markdown(report: dict[str, Any]) -> str:
    """The Markdown table of a :func:`bench_segment_memory` report, under the machine and versions."""
    lines = _header_markdown(report)
    lines += ["| image | megapixels | classes | decoded image (MB) | peak RSS (MB) | wall (s) |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        lines.append(f"| {r['width']}x{r['height']} | {r['megapixels']} | {r['classes']} | {r['image_mb']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['wall_s']} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path, name: str, markdown: str) -> tuple[Path, Path]:
    """Write ``out_dir/name.json`` and ``out_dir/name.md``; returns both paths."""
    from textseg.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(paths[0], json.dumps(report, indent=2) + "\n")
    atomic_write_text(paths[1], markdown)
    return paths
