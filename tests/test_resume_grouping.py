"""Exact resume of `textseg pretrain-grouping`: a run killed with SIGKILL after a step checkpoint, then run again
with the same command, ends with the weights of the uninterrupted run (one DataLoader worker, killed with it)."""

import json
import random
import subprocess
import sys
from pathlib import Path

from killing import REPO, read_log, run_and_kill
from textseg import artifacts as ckpt
from textseg.train.selfsup import load_selfsup_config, pretrain_grouping

STEPS = 12
# the packaged ViT on few, small crops; 8 images in batches of 2: an epoch is 4 steps, the run spans 3 epochs
SETTINGS = ["data.batch_size=2", "data.workers=1", "data.shuffle_buffer=4", "crops.global_size=32",
            "crops.local_size=16", "crops.local_number=2", "head.out_dim=32", "head.hidden_dim=16",
            "head.bottleneck_dim=8", "optim.warmup=3", "optim.freeze_last_layer=1", f"train.steps={STEPS}",
            "train.ckpt_every=2", "train.keep_last=2"]
KILL_SEED = 7


def final_checksum(out: Path) -> str:
    return ckpt.weights_checksum(ckpt.read_backbone_weights(out / "final.pt")["model"])


def test_sigkill_after_a_step_checkpoint_then_rerun_gives_the_uninterrupted_weights(tmp_path):
    from textseg.workbench.build import build_workbench

    data = tmp_path / "wb"
    build_workbench(data, train_scenes=8, val_scenes=0, ref_scenes=0, object_centric=0, refer_train_scenes=0,
                    size=96, workers=1, progress=False)
    ref = tmp_path / "ref"
    pretrain_grouping(load_selfsup_config("workbench", SETTINGS), data, ref, progress=False)
    ref_log = {r["step"]: r["loss"] for r in read_log(ref / "metrics.jsonl")}
    assert sorted(ref_log) == list(range(1, STEPS + 1))

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "textseg.cli", "pretrain-grouping", "--data", str(data), "--out", str(out),
           "--no-progress", "--device", "cpu"]
    for item in SETTINGS:
        cmd += ["--set", item]
    # within the step after the first checkpoint, or the next
    newest = run_and_kill(cmd, out, tmp_path / "stderr.txt", random.Random(KILL_SEED))
    assert 2 <= newest < STEPS

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # it resumed: the rerun trained only the steps after the newest checkpoint
    assert summary["steps"] == STEPS and summary["steps_this_run"] == STEPS - newest
    assert final_checksum(out) == final_checksum(ref)
    # each step logged once, with the loss of the uninterrupted run (those after the kill by the rerun)
    log = read_log(out / "metrics.jsonl")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert all(r["loss"] == ref_log[r["step"]] for r in log)
