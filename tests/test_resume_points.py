"""Exact resume of `textseg train-points`: step checkpoints hold the generator, the optimizer, the RNG states and
the data position, so a run resumed from any checkpoint -- or killed with SIGKILL and started again -- ends with
the weights (and the metrics log) of the uninterrupted run."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_ris_points_train import segmenter_ckpt, workbench  # noqa: F401 (module fixtures)
from killing import REPO, read_log, run_and_kill
from textseg import artifacts
from textseg.cli import main
from textseg.errors import ConfigError, UserError
from textseg.ris.points import load_point_generator
from textseg.train.points import data_position, train_point_generator
from textseg.train.points_config import Stage, load_point_config
from textseg.train.points_data import pair_batches, resolve_shards

KILL_SEED = 11


def _config(**kw):
    cfg = load_point_config(**{"batch_size": 4, "samples": 2, "width": 32, "depth": 1, "heads": 2, "loc_images": 3,
                               "warmup_steps": 1, "mask_alignment": 1.0, "ckpt_every": 1, "keep_last": 10, **kw})
    # objects: 6 samples, so its batches of 4 cross epochs; the stage boundary falls after step 2
    cfg.stages = [Stage("objects", 2, ["objects/shard-000000.tar"]),
                  Stage("referring", 3, ["refer_train/shard-000000.tar"])]
    return cfg


def _checksum(path: Path) -> str:
    return artifacts.weights_checksum(load_point_generator(path)[0])


@pytest.fixture(scope="module")
def core(segmenter_ckpt):  # noqa: F811
    from textseg.ris.promptable import PromptableSegmenter

    return PromptableSegmenter.from_workbench(segmenter_ckpt, device="cpu").core


@pytest.fixture(scope="module")
def reference(workbench, core, tiny_model, tmp_path_factory):  # noqa: F811
    """An uninterrupted 5-step run with a checkpoint after every step."""
    out = tmp_path_factory.mktemp("points-ref") / "run"
    train_point_generator(tiny_model, core, _config(), out, data_root=workbench, progress=False)
    return out


def test_data_position_of_a_step():
    # stages of 2, 0 and 3 steps: the empty stage is never the position
    assert [data_position([2, 0, 3], s) for s in (0, 1, 2, 4, 5)] == [
        {"stage": 0, "batches": 0}, {"stage": 0, "batches": 1}, {"stage": 2, "batches": 0},
        {"stage": 2, "batches": 2}, {"stage": 2, "batches": 3}]


def test_pair_batches_skip_passes_over_the_first_batches(workbench):  # noqa: F811
    urls = resolve_shards(["objects/shard-000000.tar"], workbench)
    full = pair_batches(urls, 4, 32, seed=5)
    first = [next(full) for _ in range(4)]  # 16 samples of a 6-sample shard: three epochs
    rest = pair_batches(urls, 4, 32, seed=5, skip=3)
    images, texts = next(rest)
    assert np.array_equal(images, first[3][0]) and texts == first[3][1]
    assert not np.array_equal(first[2][0], first[3][0])  # the batches differ, so the comparison means something


def test_resume_from_each_checkpoint_gives_the_uninterrupted_weights(reference, workbench, core, tiny_model,
                                                                     tmp_path):  # noqa: F811
    ref_sum = _checksum(reference / "final.pt")
    ref_rows = read_log(reference / "metrics.jsonl")
    assert [r["step"] for r in ref_rows] == [1, 2, 3, 4, 5]
    assert [p.name for p in artifacts.step_checkpoints(reference)] == [f"step-{s:07d}.pt" for s in range(1, 6)]
    for k in (1, 2, 3):  # mid-stage, at the stage boundary, in the second stage
        out = tmp_path / f"from{k}"
        (out / "checkpoints").mkdir(parents=True)
        shutil.copy(artifacts.step_checkpoint_path(reference, k), artifacts.step_checkpoint_path(out, k))
        # the log as a killed run leaves it: its steps after k are logged again; the sentinel shows what is kept
        rows = [dict(r, loss=-1.0) if r["step"] == k else r for r in ref_rows]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')
        summary = train_point_generator(tiny_model, core, _config(), out, data_root=workbench, progress=False)
        assert _checksum(out / "final.pt") == ref_sum, k
        got = read_log(out / "metrics.jsonl")
        assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
        assert got[k - 1]["loss"] == -1.0  # kept from before the resume: the run did not start afresh
        assert got[k:] == ref_rows[k:]
        assert summary["steps"] == 5 and summary["final"]["loss"] == pytest.approx(ref_rows[-1]["loss"], abs=1e-5)


def test_resume_false_starts_afresh_and_other_settings_are_refused(reference, workbench, core, tiny_model,
                                                                   tmp_path):  # noqa: F811
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "final.pt").unlink()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(json.dumps(dict(json.loads(lines[0]), loss=-1.0)) + "\n")
    train_point_generator(tiny_model, core, _config(resume=False), out, data_root=workbench, progress=False)
    assert read_log(out / "metrics.jsonl")[0]["loss"] != -1.0  # rewritten from step 1
    assert _checksum(out / "final.pt") == _checksum(reference / "final.pt")
    with pytest.raises(UserError, match=r"was saved by a run with lr 0\.001, but this run has lr 0\.002"):
        train_point_generator(tiny_model, core, _config(lr=2e-3), out, data_root=workbench, progress=False)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(reference, workbench, core, tiny_model, tmp_path,
                                                                caplog):  # noqa: F811
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(artifacts.step_checkpoint_path(reference, 3), artifacts.step_checkpoint_path(out, 3))
    artifacts.step_checkpoint_path(out, 4).write_bytes(b"cut short")
    with caplog.at_level("WARNING"):
        train_point_generator(tiny_model, core, _config(keep_last=2), out, data_root=workbench, progress=False)
    assert "resuming from the previous checkpoint step-0000003.pt" in caplog.text
    assert _checksum(out / "final.pt") == _checksum(reference / "final.pt")
    assert [p.name for p in artifacts.step_checkpoints(out)] == ["step-0000004.pt", "step-0000005.pt"]  # pruned
    for p in artifacts.step_checkpoints(out):
        p.write_bytes(b"junk")
    with pytest.raises(UserError, match="no usable checkpoint to resume from"):
        train_point_generator(tiny_model, core, _config(), out, data_root=workbench, progress=False)


def test_checkpoint_settings_are_checked(tmp_path):
    for text, fragment in [("ckpt_every: 0\n", "ckpt_every must be a whole number >= 1"),
                           ("keep_last: 0\n", "keep_last must be a whole number >= 1"),
                           ("resume: maybe\n", "field 'resume'")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text("stages: [{name: a, steps: 2, data: x.tar}]\n" + text)
        with pytest.raises(ConfigError, match=fragment) as err:
            load_point_config(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    cfg = load_point_config("default")
    assert (cfg.ckpt_every, cfg.keep_last, cfg.resume) == (50, 2, True)


def test_sigkill_then_resume_gives_the_uninterrupted_weights(workbench, segmenter_ckpt, tmp_path):  # noqa: F811
    """kill -9 a `textseg train-points` subprocess at a seeded random moment after a checkpoint, then run it again."""
    steps = 50  # a step takes milliseconds: enough steps that the kill always lands before the end
    cfg = tmp_path / "points.yaml"
    cfg.write_text("stages:\n  - {name: objects, steps: 3, data: objects/shard-000000.tar}\n"
                   "  - {name: referring, steps: 47, data: refer_train/shard-000000.tar}\n"
                   "batch_size: 4\nsamples: 2\nwidth: 32\ndepth: 1\nheads: 2\nloc_images: 3\nwarmup_steps: 2\n"
                   "ckpt_every: 1\nkeep_last: 2\n")
    args = ["train-points", "--data", str(workbench), "--config", str(cfg), "--promptable", str(segmenter_ckpt),
            "--no-progress", "--model", "tiny", "--no-pretrained", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "textseg.cli", *args, "--out", str(out)]
    rng = random.Random(KILL_SEED)
    newest = run_and_kill(cmd, out, tmp_path / "stderr.txt", rng, newer_than=rng.randint(0, 2), jitter=0.1)
    assert newest < steps
    log = (out / "metrics.jsonl").read_text()  # mark step 1's record: a resumed run keeps it, a fresh one would not
    (out / "metrics.jsonl").write_text(log.replace('{"step": 1,', '{"marked": true, "step": 1,', 1))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[0])["steps"] == steps
    assert _checksum(out / "final.pt") == _checksum(tmp_path / "ref" / "final.pt")
    rows = read_log(out / "metrics.jsonl")
    assert rows[0].pop("marked")
    assert rows == read_log(tmp_path / "ref" / "metrics.jsonl")  # each step once, with the uninterrupted run's losses
    assert [p.name for p in artifacts.step_checkpoints(out)] == ["step-0000049.pt", "step-0000050.pt"]
