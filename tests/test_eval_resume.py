"""`textseg eval` after kill -9: a rerun in the same folder ends with the results of an uninterrupted run, every
sample stored exactly once, no truncated line, no half-written or temporary file (issue 10)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textseg.cli import main

REPO = Path(__file__).resolve().parents[1]
VOC = Path(__file__).parent / "data" / "voc2012" / "VOC2012"
N_IMAGES = 12


def make_voc(root: Path, n: int) -> Path:
    """A VOC-layout dataset of ``n`` crops (every other one mirrored) of the real VOC image and its palette mask."""
    base = root / "VOC2012"
    image = np.asarray(Image.open(VOC / "JPEGImages" / "2007_000033.jpg"))
    palette_png = Image.open(VOC / "SegmentationClass" / "2007_000033.png")
    label = np.asarray(palette_png)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(n):
        y, x = 13 * k % 180, 29 * k % 250
        im, lb = image[y:y + 180, x:x + 240], label[y:y + 180, x:x + 240]
        if k % 2:
            im, lb = im[:, ::-1], lb[:, ::-1]
        sample_id = f"2007_{k:06d}"
        Image.fromarray(np.ascontiguousarray(im)).save(base / "JPEGImages" / f"{sample_id}.jpg", quality=95)
        png = Image.fromarray(np.ascontiguousarray(lb))
        png.putpalette(palette_png.getpalette())
        png.save(base / "SegmentationClass" / f"{sample_id}.png")
        ids.append(sample_id)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The dataset and a checkpoint of the tiny model: fixed weights, the same in every process (random
    initialisation differs from one process to the next)."""
    import torch

    import textseg
    from textseg.artifacts import save_checkpoint

    root = tmp_path_factory.mktemp("evalkill")
    make_voc(root / "voc", N_IMAGES)
    torch.manual_seed(0)
    save_checkpoint(root / "tiny.pt", textseg.create_model("tiny", pretrained=False).state_dict(), step=0)
    return root


def _argv(setup: Path, out: Path) -> list[str]:
    return ["eval", "semseg", "--dataset", "voc21", "--root", str(setup / "voc"), "--out", str(out),
            "--model", "tiny", "--checkpoint", str(setup / "tiny.pt"), "--protocol", "workbench",
            "--overlays", "4", "--no-progress"]


def _rows(out: Path) -> int:
    try:
        return max(0, (out / "samples.jsonl").read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def _kill_after(setup: Path, out: Path, rows: int, extra_delay: float) -> int:
    """Start the eval in a subprocess; SIGKILL it ``extra_delay`` seconds after ``samples.jsonl`` holds at least
    ``rows`` rows. Returns the rows stored when it died."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "textseg.cli", *_argv(setup, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while _rows(out) < rows and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(extra_delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the eval ended before the kill (exit {proc.returncode}):\n{stderr}"
    return _rows(out)


def _results(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    results.pop("meta")  # argv and finishing time
    return results


def test_eval_resumes_exactly_after_kill_9(setup, tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    reference = tmp_path / "reference"
    assert main(_argv(setup, reference)) == 0

    out = tmp_path / "killed"
    first = _kill_after(setup, out, rows=rng.randint(1, 3), extra_delay=rng.uniform(0, 0.2))
    second = _kill_after(setup, out, rows=first + rng.randint(1, 4), extra_delay=rng.uniform(0, 0.2))
    assert 1 <= first and second < N_IMAGES, (seed, first, second)
    assert not (out / "results.json").exists()

    assert main(_argv(setup, out)) == 0
    assert _results(out) == _results(reference), seed
    text = (out / "samples.jsonl").read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]  # every line complete JSON
    assert "header" in lines[0]
    assert sorted(row["i"] for row in lines[1:]) == list(range(N_IMAGES)), seed  # each sample exactly once
    ref_rows = {row["i"]: row for row in map(json.loads, (reference / "samples.jsonl").read_text().splitlines()[1:])}
    assert {row["i"]: row for row in lines[1:]} == ref_rows
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == sorted(p.name for p in (reference / "overlays").iterdir()) and len(overlays) == 4
    for name in overlays:  # whole pictures, equal to the uninterrupted run's
        assert np.array_equal(np.asarray(Image.open(out / "overlays" / name)),
                              np.asarray(Image.open(reference / "overlays" / name)))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    md = (out / "results.md").read_text()
    assert md == (reference / "results.md").read_text().replace(str(reference), str(out))
