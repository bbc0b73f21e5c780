"""Peak memory of ``textseg segment`` on large synthetic images and long class lists, each case in a fresh
process (:func:`bench_segment_memory`)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from textseg.bench.timing import report_header
from textseg.errors import UserError

# Runs the CLI on argv[2:], then writes this process's own peak RSS to the JSON file argv[1].
_PEAK_REPORTING_MAIN = (
    "import json, sys\n"
    "from textseg.cli import main\n"
    "rc = main(sys.argv[2:])\n"
    "from textseg.bench import peak_rss_mb\n"
    "open(sys.argv[1], 'w').write(json.dumps({'peak_rss_mb': peak_rss_mb()}))\n"
    "sys.exit(rc)\n"
)


def parse_memory_case(text: str) -> tuple[int, int, int]:
    """``"12000x12000:21"`` → (width, height, classes).

    Raises:
        UserError: not of that form, or a number below 1.
    """
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
    runs in the one process whose peak the child reports itself (:func:`~textseg.bench.timing.peak_rss_mb` at its
    exit: ``ru_maxrss`` seen from here would include this parent's memory, which a child started by fork or vfork
    inherits in its high-water mark); DataLoader workers would hold decoded images in processes of their own.

    Args:
        cases: (width, height, classes) triples.
        model, templates, device: as for ``textseg segment``.
        num_workers: ``--num-workers`` of the runs.
        extra_args: more ``textseg segment`` options.

    Raises:
        UserError: a case's ``textseg segment`` run failed (its last line of stderr is in the message).
    """
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
    return {**report_header(torch.device(device), model=model, templates=templates, num_workers=num_workers,
                            dtype="float32"), "benchmark": "segment_memory", "runs": runs}


__all__ = ["bench_segment_memory", "parse_memory_case", "synthetic_photo"]
