"""What every benchmark measures with: the machine and versions, the report header, peak memory, device
synchronisation, bf16 autocast, exclusive stage times of nested calls (:class:`StageTimeline`) and FLOP counts."""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch

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


def report_header(device: torch.device, **fields: Any) -> dict[str, Any]:
    """The first fields of every report: the command line, :func:`machine_info`, :func:`versions`, the device,
    then ``fields``."""
    return {"command": shlex.join(sys.argv), "machine": machine_info(device), "versions": versions(),
            "device": str(device), **fields}


# ------------------------------------------------------------------------------------------------------ device
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, by default CUDA when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def device_sync(device: torch.device) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device; None elsewhere (no waiting on the CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def reset_device_peak(device: torch.device) -> None:
    """Start the peak of :func:`device_peak_mb` afresh (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_peak_mb(device: torch.device) -> float | None:
    """Peak CUDA memory allocated since the last :func:`reset_device_peak`, in MB; None off CUDA."""
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


def bf16_autocast(enabled: bool) -> ContextManager[Any]:
    """CUDA bf16 autocast when ``enabled``, else a context that does nothing."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def median(xs: Sequence[float]) -> float:
    """The median of ``xs`` as a float."""
    return float(statistics.median(xs))


def mean(xs: Sequence[float]) -> float:
    """The mean of ``xs`` as a float."""
    return float(sum(xs) / len(xs))


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
        """Mark the start of a call of frame ``name`` (nested in the open one, if any)."""
        now = self._now()
        if self._stack:
            self._credit(self._stack[-1], now)
        self._stack.append(_Frame(name, self.stage_of[name], now))

    def exit(self) -> None:
        """Mark the end of the innermost open call."""
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
    if hasattr(torch.ops.aten, "_native_multi_head_attention"):  # torch's own op name
        mapping[torch.ops.aten._native_multi_head_attention] = _mha_flops
    counter = FlopCounterMode(display=False, depth=2, custom_mapping=mapping)
    with counter:
        fn()
    by_module = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items() if k != "Global"}
    return int(counter.get_total_flops()), by_module


def module_flops(by_module: dict[str, int], last: str) -> int:
    """FLOPs of the outermost module whose name ends with ``.last`` (0 if none ran), from :func:`count_flops`."""
    names = sorted((k for k in by_module if k.split(".")[-1] == last), key=lambda k: k.count("."))
    return by_module[names[0]] if names else 0


__all__ = ["AMP_CHOICES", "StageTimeline", "bf16_autocast", "count_flops", "device_peak_mb", "device_sync",
           "machine_info", "mean", "median", "module_flops", "peak_rss_mb", "report_header", "reset_device_peak",
           "resolve_amp", "resolve_device", "versions"]
