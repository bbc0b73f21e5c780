"""Shared by the exact-resume tests: run a training command in a subprocess and SIGKILL it after a step checkpoint."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from textseg import artifacts

REPO = Path(__file__).resolve().parents[1]


def read_log(path: Path) -> list[dict]:
    """The records of a metrics log; a line cut by a kill is left out."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def newest_step(out: Path) -> int:
    """The step of the newest step checkpoint in ``out/checkpoints`` (0: none)."""
    found = artifacts.step_checkpoints(out)
    return int(found[-1].stem.split("-")[1]) if found else 0


def run_and_kill(cmd: list[str], out: Path, stderr: Path, rng: random.Random, *, newer_than: int = 0,
                 then_steps: int = 0, jitter: float = 0.2, timeout: float = 300) -> int:
    """Start ``cmd``; once a step checkpoint newer than step ``newer_than`` exists and ``then_steps`` more steps are
    logged in ``out/metrics.jsonl``, wait a random moment of up to ``jitter`` seconds and SIGKILL it. Progress per
    attempt is bounded in steps, not in seconds, so a fast machine cannot finish the run before the kill.

    Returns:
        The step of the newest checkpoint left behind (checked to be newer than ``newer_than``, with no final.pt).
    """
    with open(stderr, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    deadline, target = time.time() + timeout, None
    while True:
        if target is None and newest_step(out) > newer_than:
            target = newest_step(out) + then_steps
        if target is not None and any(r.get("step", -1) >= target for r in read_log(out / "metrics.jsonl")):
            break
        assert proc.poll() is None, stderr.read_text()[-3000:]
        assert time.time() < deadline, "no new checkpoint in time"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, jitter))
    if proc.poll() is not None:
        pytest.fail("the run finished before the kill; give it more steps")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    newest = newest_step(out)
    assert newest > newer_than and not (out / "final.pt").exists()
    return newest
