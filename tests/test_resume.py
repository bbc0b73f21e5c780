"""Exact resume when an epoch spans many batches: the data position (epoch, next worker, raw samples used per
worker) is saved in each checkpoint, so a run resumed from any checkpoint — or killed with SIGKILL again and
again — ends with the weights of the uninterrupted run, with or without DataLoader workers."""

import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from killing import REPO, read_log, run_and_kill
from test_train import tiny_overrides, write_shards
from textseg.train import load_train_config, train
from textseg import artifacts as ckpt
from textseg.train.data import BatchStream, caption_batches



def add_corrupt_shard(folder: Path, index: int, n_bad: int) -> None:
    """``folder/shard-<index>.tar``: ``n_bad`` truncated JPEGs (decode errors) and one empty caption."""
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (9, 9, 9)).save(buf, format="JPEG")
    members = [(f"b{i}.{ext}", data) for i in range(n_bad) for ext, data in
               (("jpg", buf.getvalue()[:40]), ("txt", b"a broken dog"))]
    members += [("e0.jpg", buf.getvalue()), ("e0.txt", b"   ")]
    with tarfile.open(folder / f"shard-{index:06d}.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def run_overrides(shards: str, out: Path, workers: int, **extra) -> list[str]:
    # 4 shards x 6 samples + a corrupt shard; batches of 4: an epoch is 5 or 6 batches, steps cross 2 epochs
    return tiny_overrides(shards, out, **{"data.batch_size": 4, "data.shuffle_buffer": 16, "data.workers": workers,
                                          "train.steps": 9, "train.ckpt_every": 1, "train.keep_last": 20,
                                          "optim.warmup": 2, **extra})


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Four shards of 6 good samples, then a fifth of 3 corrupt images and an empty caption."""
    root = tmp_path_factory.mktemp("resume-shards")
    write_shards(root, n_shards=4, per_shard=6)
    add_corrupt_shard(root, 4, n_bad=3)
    return str(root / "shard-{000000..000004}.tar")


def test_batch_stream_state_continues_the_same_batches_with_workers(shards):
    """The batch order of a stream restarted from any state_dict is the rest of the uninterrupted order."""
    def stream(workers: int) -> BatchStream:
        pipe = caption_batches(shards, 4, captions_only, shuffle_buffer=16, seed=3, image_transform=no_image)
        loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=workers,
                                             collate_fn=BatchStream.collate, generator=torch.Generator())
        return BatchStream(loader, pipe, seed=3)

    for workers in (0, 2):
        ref = stream(workers)
        batches, states = [], []
        for _ in range(14):  # two epochs and more
            batches.append(next(ref))
            states.append(ref.state_dict())
        ref.close()
        assert len({tuple(b) for b in batches}) == 14  # no batch repeats: the epochs are reshuffled
        assert states[-1]["epoch"] >= 2 and states[-1]["readers"] == max(1, workers)
        if workers == 0:  # 24 good samples: 6 batches an epoch
            assert [s["epoch"] for s in states[4:8]] == [0, 0, 1, 1]
        skipped = states[-1]["skipped"]  # the corrupt shard read 2 or 3 times: 3 decode errors, 1 empty each
        assert 6 <= skipped["decode_error"] <= 9 and 2 <= skipped["empty_caption"] <= 3
        for k in (0, 2, 5, 6, 9):
            resumed = stream(workers)
            resumed.load_state_dict(states[k])
            assert [next(resumed) for _ in range(14 - k - 1)] == batches[k + 1:], (workers, k)
            assert resumed.state_dict() == states[-1]
            resumed.close()


def captions_only(samples: list) -> list[str]:
    return [caption for _, caption in samples]


def no_image(image):
    return None


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_mid_epoch_checkpoint_gives_the_uninterrupted_weights(tmp_path, shards, workers):
    ref = train(load_train_config(None, run_overrides(shards, tmp_path / "ref", workers)), progress=False)
    ref_log = {r["step"]: r["loss"] for r in read_log(tmp_path / "ref" / "metrics.jsonl")}
    for k in (3, 7):  # mid epoch 0 and mid epoch 1 (an epoch is 6 batches)
        run = tmp_path / f"from{k}"
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(ckpt.step_checkpoint_path(tmp_path / "ref", k), ckpt.step_checkpoint_path(run, k))
        resumed = train(load_train_config(None, run_overrides(shards, run, workers)), progress=False)
        log = read_log(run / "metrics.jsonl")
        assert [r["step"] for r in log] == list(range(k + 1, 10))
        for rec in log:  # the same batches: the same losses at every step after the resume
            assert rec["loss"] == ref_log[rec["step"]], rec["step"]
        assert resumed["weights_sha1"] == ref["weights_sha1"]
        assert resumed["skipped"] == ref["skipped"] and ref["skipped"]["decode_error"] >= 3
        data = ckpt.latest_resume_state(tmp_path / "ref").data  # resumed mid-epoch: an epoch is 5 or 6 batches
        assert ckpt.read_checkpoint(ckpt.step_checkpoint_path(run, k))["data"][0]["epoch"] == (k >= 6)
        assert len(data) == 1 and data[0]["readers"] == max(1, workers) and data[0]["epoch"] == 1


KILL_SEED = 20240610


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path, shards):
    """kill -9 a `textseg train` subprocess (one DataLoader worker) 5 times at seeded random moments."""
    steps = 24
    overrides = run_overrides(shards, tmp_path / "ref", 1, **{"train.steps": steps, "train.ckpt_every": 2,
                                                              "train.keep_last": 2})
    ref = train(load_train_config(None, overrides), progress=False)
    (tmp_path / "run.yaml").write_text("{}\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "textseg.cli", "train", str(tmp_path / "run.yaml"),
           *[o.replace(str(tmp_path / "ref"), str(out)) for o in overrides], "--no-progress"]
    rng = random.Random(KILL_SEED)
    newest = 0
    for _ in range(5):  # each attempt: a checkpoint newer than the one it resumed from, then 0 or 1 more step
        newest = run_and_kill(cmd, out, tmp_path / "stderr.txt", rng, newer_than=newest, then_steps=rng.randint(0, 1))
        assert newest < steps
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary_rank0.json").read_text())
    assert summary["steps"] == steps and summary["skipped"] == ref["skipped"]
    assert ckpt.weights_checksum(ckpt.load_model_weights(out / "final.pt")[0]) == ref["weights_sha1"]
    # every step after the first kill was logged again with the loss of the uninterrupted run
    ref_log = {r["step"]: r["loss"] for r in read_log(tmp_path / "ref" / "metrics.jsonl")}
    for rec in read_log(out / "metrics.jsonl"):
        assert rec["loss"] == ref_log[rec["step"]], rec["step"]
