import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textseg.errors import ConfigError
from textseg.train.config import load_config, parse_overrides
from textseg.train.engine import NounBatcher, train

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red dog next to a blue bus", "two sheep on a striped background", "a cat and a dog",
            "there is a bus here", "a red apple above a chair", "a chair near the sofa", "a bird on a wall",
            "a horse and a cow"]


def write_shards(folder: Path, n_shards: int, per_shard: int, size: int = 48) -> str:
    import webdataset as wds

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"shard-{s:06d}.tar")) as sink:
            for i in range(per_shard):
                img = np.zeros((size, size, 3), dtype=np.uint8)
                img[:] = rng.integers(0, 255, 3)
                y, x = rng.integers(0, size // 2, 2)
                img[y: y + size // 2, x: x + size // 2] = rng.integers(0, 255, 3)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=95)
                sink.write({"__key__": f"s{s}_{i}", "jpg": buf.getvalue(),
                            "txt": CAPTIONS[(s * per_shard + i) % len(CAPTIONS)].encode()})
    return str(folder / ("shard-{000000..%06d}.tar" % (n_shards - 1)))


def tiny_config(tmp_path: Path, urls: str, out: str, **extra) -> list[str]:
    overrides = [f"model=tiny", f"out={out}", f"data.train={urls}", "data.batch_size=8", "data.workers=0",
                 "data.shuffle_buffer=0", "data.image_size=48", "loss.noun_region=1.0", "loss.image_text=1.0",
                 "optim.lr=1e-3", "optim.warmup=2", "train.steps=6", "train.ckpt_every=3", "train.log_every=1"]
    return overrides + [f"{k}={v}" for k, v in extra.items()]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_config_merging_and_errors(tmp_path):
    cfg = load_config(None, ["optim.lr=5e-4", "loss.mode=two_way", "data.train=[a.tar, b.tar]"])
    assert cfg["optim"]["lr"] == 5e-4 and cfg["loss"]["mode"] == "two_way" and cfg["data"]["train"] == ["a.tar", "b.tar"]
    assert cfg["optim"]["warmup"] == 100  # untouched defaults stay
    with pytest.raises(ConfigError, match="unknown field 'lr'"):
        load_config(None, ["lr=1"])
    with pytest.raises(ConfigError, match="loss.mode"):
        load_config(None, ["loss.mode=both"])
    assert parse_overrides(["a.b.c=3"]) == {"a": {"b": {"c": 3}}}


def test_noun_batcher_pairs_and_shared_noun_positives():
    nb = NounBatcher(load_config(None))
    prompts, noun_ids, noun_image, positives = nb(["a dog next to a bus", "two dogs on a striped background"])
    assert prompts == ["a photo of a dog.", "a photo of a bus.", "a photo of a background."]
    assert noun_ids.tolist() == [0, 1, 0, 2] and noun_image.tolist() == [0, 0, 1, 1]
    # "dog" appears in both captions: both images are positives for both of its pairs
    assert positives.tolist() == [[True, True], [True, False], [True, True], [False, True]]


def test_kill_then_resume_continues_step_count_and_loss_curve(tmp_path):
    urls = write_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    ref = train(load_config(None, tiny_config(tmp_path, urls, str(tmp_path / "ref"))), progress=False)
    ref_log = {r["step"]: r["loss"] for r in read_log(tmp_path / "ref" / "metrics.jsonl")}
    assert ref["steps"] == 6 and ref_log[6] < ref_log[1]

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "textseg.cli", "train", "-", *tiny_config(tmp_path, urls, str(out))]
    cmd[4] = str(tmp_path / "empty.yaml")
    (tmp_path / "empty.yaml").write_text("{}\n")
    env = {**os.environ, "TEXTSEG_DEBUG_EXIT_AFTER_STEP": "4"}
    killed = subprocess.run([*cmd, "--no-progress"], env=env, capture_output=True, text=True)
    assert killed.returncode == 17, killed.stderr  # died like a kill -9 after step 4; checkpoint of step 3 on disk
    assert [p.name for p in sorted((out / "checkpoints").glob("*.pt"))] == ["step-0000003.pt"]
    resumed = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["step"] for r in read_log(out / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 4, 5, 6]  # the second run starts after the checkpoint, not from 0
    log = read_log(out / "metrics.jsonl")
    for rec in log[4:]:
        assert rec["loss"] == pytest.approx(ref_log[rec["step"]], rel=1e-4, abs=1e-5)
    run_summary = json.loads((out / "summary_rank0.json").read_text())
    assert run_summary["weights_sha1"] == ref["weights_sha1"]  # exact resume: the same weights as without the kill


def test_torchrun_two_processes_split_shards_and_agree(tmp_path):
    urls = write_shards(tmp_path / "shards", n_shards=4, per_shard=4)
    out = tmp_path / "ddp"
    (tmp_path / "empty.yaml").write_text("{}\n")
    overrides = tiny_config(tmp_path, urls, str(out), **{"data.batch_size": 4, "train.steps": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tools" / "train.py"), str(tmp_path / "empty.yaml"), *overrides, "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    res = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    s0 = json.loads((out / "summary_rank0.json").read_text())
    s1 = json.loads((out / "summary_rank1.json").read_text())
    assert s0["world_size"] == s1["world_size"] == 2 and s0["steps"] == s1["steps"] == 2
    assert set(s0["shards_read"]).isdisjoint(s1["shards_read"])
    assert len(s0["shards_read"]) == len(s1["shards_read"]) == 2
    assert s0["weights_sha1"] == s1["weights_sha1"]
    # the weights did change from their initial values
    assert torch.load(out / "final.pt", weights_only=False)["step"] == 2
