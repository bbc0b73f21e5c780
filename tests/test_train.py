import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textseg.config import config_path, to_dict
from textseg.errors import ConfigError, UserError
from textseg.grouping import Grouper
from textseg.io import ShardWriter
from textseg.train import TrainConfig, load_train_config, train
from textseg.artifacts import load_model_weights, weights_checksum
from textseg.train.samples import NounBatcher, TrainTransform, collate, random_hflip
from textseg.train.loop import build_model

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red dog next to a blue bus", "two sheep on a striped background", "a cat and a dog",
            "there is a bus here", "a red apple above a chair", "a chair near the sofa", "a bird on a wall",
            "a horse and a cow"]


# What write_shards(bad=True) puts at the start of every shard, and the skip reason of each.
BAD_SAMPLES = [({"jpg": b"\xff\xd8\xff\xe0 truncated", "txt": "a dog"}, "decode_error"),
               ({"jpg": b"GIF89a not really", "txt": "a bus"}, "decode_error"),
               ({"jpg": b"", "txt": "a cat"}, "decode_error"),
               ({"jpg": None, "txt": "   "}, "empty_caption"),
               ({"jpg": None, "txt": b"\xff\xfe not utf-8"}, "decode_error"),
               ({"jpg": None}, "missing_caption"),
               ({"txt": "a chair without its image"}, "missing_image")]


def write_shards(folder: Path, n_shards: int, per_shard: int, size: int = 48, bad: bool = False) -> str:
    """Shards of flat-colour images with a square of another colour, captions from CAPTIONS in turn; with
    ``bad``, each shard starts with the BAD_SAMPLES (``None`` stands for a good JPEG)."""
    rng = np.random.default_rng(0)
    good_jpeg = io.BytesIO()
    Image.new("RGB", (size, size), (90, 20, 200)).save(good_jpeg, format="JPEG")
    extra = len(BAD_SAMPLES) if bad else 0
    with ShardWriter(folder=folder, maxcount=per_shard + extra) as sink:
        for i in range(n_shards * per_shard):
            if bad and i % per_shard == 0:
                for j, (members, _) in enumerate(BAD_SAMPLES):
                    sink.write(f"bad{i}-{j}", {k: good_jpeg.getvalue() if v is None else v
                                               for k, v in members.items()})
            img = np.zeros((size, size, 3), dtype=np.uint8)
            img[:] = rng.integers(0, 255, 3)
            y, x = rng.integers(0, size // 2, 2)
            img[y: y + size // 2, x: x + size // 2] = rng.integers(0, 255, 3)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            sink.write(f"s{i}", {"jpg": buf.getvalue(), "txt": CAPTIONS[i % len(CAPTIONS)]})
    return str(folder / ("shard-{000000..%06d}.tar" % (n_shards - 1)))


def tiny_overrides(urls: str, out: Path, **extra) -> list[str]:
    overrides = ["model=tiny", f"out={out}", f"data.train={urls}", "data.batch_size=8", "data.workers=0",
                 "data.shuffle_buffer=0", "data.image_size=48", "loss.noun_region=1.0", "loss.image_text=1.0",
                 "optim.lr=1e-3", "optim.warmup=2", "train.steps=6", "train.ckpt_every=2", "train.log_every=1"]
    return overrides + [f"{k}={v}" for k, v in extra.items()]


def read_log(path: Path) -> list[dict]:
    """The complete records of a metrics log (a line still being written is left out)."""
    lines = path.read_text().split("\n")[:-1] if path.is_file() else []
    return [json.loads(line) for line in lines]


def test_config_presets_variants_overrides_and_errors(tmp_path):
    cfg = load_train_config(None, ["optim.lr=5e-4", "loss.mode=two_way", "data.train=[a.tar, b.tar]"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.lr == 5e-4 and cfg.loss.mode == "two_way" and cfg.data.train == ["a.tar", "b.tar"]
    assert cfg.optim.warmup == 100 and cfg.model == "labxy-small-workbench"  # untouched defaults stay
    # ablate: stage-2 preset, then a variant file, then overrides; later sources win, nested dicts merge
    variant = config_path("ablations", "region_batch_tokens")
    cfg = load_train_config("stage2_region", ["train.steps=7", "data.train=d/s-{0..3}.tar"], variant)
    assert cfg.model_overrides == {"region": {"mode": "tokens", "masked_blocks": 1}} and cfg.loss.mode == "region_batch"
    assert cfg.loss.image_text == 0.25 and cfg.optim.lr == 1e-3 and cfg.train.steps == 7  # preset, then override
    assert cfg.data.train == "d/s-{0..3}.tar" and to_dict(cfg)["loss"]["mode"] == "region_batch"
    (tmp_path / "mine.yaml").write_text("optim: {lr: 1e-4}\n")  # YAML 1.1 reads 1e-4 as a string
    assert load_train_config(tmp_path / "mine.yaml").optim.lr == 1e-4
    with pytest.raises(ConfigError, match="'lr'"):
        load_train_config(None, ["lr=1"])
    with pytest.raises(ConfigError, match="loss.mode"):
        load_train_config(None, ["loss.mode=both"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_train_config(None, ["train.steps=[1]"])
    with pytest.raises(ConfigError, match="'data.batch_size' must be >= 1"):
        load_train_config(None, ["data.batch_size=0"])
    # the soft maximum over regions: the preset's default; region_batch has no per-image pooling to soften
    assert load_train_config("stage2_region").loss.region_temperature == 0.05
    assert load_train_config(None).loss.region_temperature == 0.0
    with pytest.raises(ConfigError, match="'loss.region_temperature' must be >= 0"):
        load_train_config(None, ["loss.region_temperature=-0.1"])
    with pytest.raises(ConfigError, match="loss.region_temperature.*region_batch"):
        load_train_config("stage2_region", ["loss.mode=region_batch"])
    with pytest.raises(ConfigError, match="data.train"):
        load_train_config(None, ["data.train={a: 1}"])
    # the workbench presets find nouns by rule whatever spaCy pipelines are installed; a user's config chooses
    presets = [load_train_config(name).loss.noun_parser for name in ("stage1_image_text", "stage2_region")]
    assert presets == ["rule", "rule"]
    assert load_train_config(None).loss.noun_parser == "auto"
    assert NounBatcher(parser="rule").extractor.backend == "rule"
    with pytest.raises(ConfigError, match="loss.noun_parser"):
        load_train_config(None, ["loss.noun_parser=nltk"])
    with pytest.raises(ConfigError, match="presets: stage1_image_text, stage2_region"):
        load_train_config("stage3")
    # a value that is not YAML (braces inside a flow list) names the override, in one line, not a parser traceback
    with pytest.raises(ConfigError, match=r"override 'data.train=\[a\{0..1\},b\]': its value is not valid YAML") as err:
        load_train_config(None, ["optim.lr=1e-4", "data.train=[a{0..1},b]"])
    assert "\n" not in str(err.value)
    quoted = load_train_config(None, ["data.train=['a{0..1}.tar','b.tar']", "optim.lr=2e-4", "optim.lr=3e-4"])
    assert quoted.data.train == ["a{0..1}.tar", "b.tar"] and quoted.optim.lr == 3e-4  # the later override wins


def test_noun_batcher_pairs_and_shared_noun_positives():
    nb = NounBatcher()
    prompts, noun_ids, noun_image, positives = nb(["a dog next to a bus", "two dogs on a striped background"])
    assert prompts == ["a photo of a dog.", "a photo of a bus.", "a photo of a background."]
    assert noun_ids.tolist() == [0, 1, 0, 2] and noun_image.tolist() == [0, 0, 1, 1]
    # "dog" appears in both captions: both images are positives for both of its pairs
    assert positives.tolist() == [[True, True], [True, False], [True, True], [False, True]]
    prompts, noun_ids, _, positives = NounBatcher(keep_background_nouns=False)(["a striped background", "here"])
    assert prompts == [] and noun_ids.shape == (0,) and positives.shape == (0, 2)


def test_transform_groups_with_the_grouper_alone_and_collate_pads(tiny_model):
    transform = TrainTransform(tiny_model.grouper, 48)
    held = [v for v in vars(transform).values() if isinstance(v, torch.nn.Module)]
    assert held == [tiny_model.grouper] and isinstance(held[0], Grouper)
    assert {id(m) for m in held[0].modules()}.isdisjoint(id(m) for m in tiny_model.clip.modules())
    flat = Image.new("RGB", (40, 40), (200, 30, 30))
    halves = Image.fromarray(np.concatenate([np.zeros((48, 24, 3), np.uint8), np.full((48, 24, 3), 255, np.uint8)], 1))
    (x0, m0), (x1, m1) = transform(flat), transform(halves)
    assert x0.shape == (3, 48, 48) and x0.dtype == torch.float32 and 0 <= float(x0.min()) <= float(x0.max()) <= 1
    for m in (m0, m1):  # CLIP grid of a 48-pixel image with 16-pixel patches: every patch in exactly one region
        assert m.dtype == torch.bool and m.shape[1:] == (3, 3) and bool((m.sum(0) == 1).all())
    batch = collate([((x0, m0), "a"), ((x1, m1), "b")])
    k = max(len(m0), len(m1))
    assert batch["masks"].shape == (2, k, 3, 3) and batch["captions"] == ["a", "b"] and batch["urls"] == []
    assert not batch["masks"][0, len(m0):].any() and torch.equal(batch["masks"][1, : len(m1)], m1)
    with pytest.raises(ConfigError, match="multiple of the model's patch size 16"):
        TrainTransform(tiny_model.grouper, 40)


def test_transform_groups_each_image_once_and_the_cache_gives_the_same_masks(tiny_model):
    calls = []
    hook = tiny_model.grouper.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]
        cached = TrainTransform(tiny_model.grouper, 48, cache_size=2)
        fresh = TrainTransform(tiny_model.grouper, 48, cache_size=0)
        first = [cached(im)[1] for im in images]
        assert len(calls) == 3
        again = cached(images[2])[1]  # the newest two stay: no new grouping
        assert len(calls) == 3 and torch.equal(again, first[2])
        again[:] = ~again  # a caller changing its masks does not change the cache
        assert torch.equal(cached(images[2])[1], first[2]) and len(calls) == 3
        cached(images[0])  # evicted (cache_size 2): grouped again
        assert len(calls) == 4
        for im, m in zip(images, first):
            assert torch.equal(fresh(im)[1], m)  # the cache gives exactly what grouping gives
        assert len(calls) == 7
        assert not torch.equal(first[0], first[1]) or not torch.equal(first[1], first[2])
    finally:
        hook.remove()


def test_init_weights_and_a_mismatching_init(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"model": {"clip.logit_scale": torch.zeros(())}}, other)
    cfg = load_train_config(None, ["model=tiny", f"init={other}"])
    with pytest.raises(UserError, match="do not fit model 'tiny'"):
        build_model(cfg)


KILLED_RUN = "import sys; from textseg.train import load_train_config, train; " \
             "train(load_train_config(None, sys.argv[1:]), progress=False)"


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    urls = write_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    # with random mirroring on: a resumed run must flip the images the uninterrupted one flipped
    ref = train(load_train_config(None, tiny_overrides(urls, tmp_path / "ref", **{"data.hflip": 0.5})),
                progress=False)
    ref_log = {r["step"]: r["loss"] for r in read_log(tmp_path / "ref" / "metrics.jsonl")}
    assert ref["steps"] == 6 and ref_log[6] < ref_log[1]

    out = tmp_path / "run"
    cmd = [sys.executable, "-c", KILLED_RUN, *tiny_overrides(urls, out, **{"data.hflip": 0.5})]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 240
    # kill -9 from outside once step 3 is logged: the checkpoint of step 2 is on disk, step 3 is lost
    while not any(r["step"] >= 3 for r in read_log(out / "metrics.jsonl")):
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert time.time() < deadline, "the training run logged no step 3 in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "final.pt").exists()
    done = [r["step"] for r in read_log(out / "metrics.jsonl")]
    newest = int(sorted((out / "checkpoints").glob("step-*.pt"))[-1].stem.split("-")[1])
    assert 2 <= newest < 6 and newest <= done[-1] < 6
    assert not list((out / "checkpoints").glob(".*tmp"))  # no partial checkpoint file left under any name

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    log = read_log(out / "metrics.jsonl")
    # continues after the checkpoint, not at 0, and the steps logged after it before the kill are logged once
    steps = [r["step"] for r in log]
    assert steps == [s for s in done if s <= newest] + list(range(newest + 1, 7)) == [1, 2, 3, 4, 5, 6]
    for rec in log[newest:]:
        assert rec["loss"] == pytest.approx(ref_log[rec["step"]], rel=1e-4, abs=1e-5)
    # exact resume: the same final weights as without the kill
    assert weights_checksum(load_model_weights(out / "final.pt")[0]) == ref["weights_sha1"]
    assert json.loads((out / "summary_rank0.json").read_text())["weights_sha1"] == ref["weights_sha1"]


def test_random_hflip_mirrors_images_with_their_masks_and_is_a_function_of_seed_and_step():
    images = torch.arange(4 * 3 * 2 * 3, dtype=torch.float32).reshape(4, 3, 2, 3)
    masks = torch.zeros(4, 2, 1, 3, dtype=torch.bool)
    masks[:, 0, 0, 0] = True  # region 0 is the left column, region 1 the right two
    masks[:, 1, 0, 1:] = True
    same, same_masks = random_hflip(images, masks, 0.0, seed=0, step=0)
    assert same is images and same_masks is masks
    flipped, flipped_masks = random_hflip(images, masks, 1.0, seed=0, step=0)
    assert flipped[0, 0, 0].tolist() == [2.0, 1.0, 0.0] and flipped[3, 2, 1].tolist() == [71.0, 70.0, 69.0]
    assert flipped_masks[:, 0, 0].tolist() == [[False, False, True]] * 4  # the left column is now the right one
    assert flipped_masks[:, 1, 0].tolist() == [[True, True, False]] * 4

    images = torch.rand(64, 1, 1, 2)
    masks = torch.zeros(64, 1, 1, 2, dtype=torch.bool)
    masks[..., 0] = True
    out, out_masks = random_hflip(images, masks, 0.5, seed=3, step=7)
    mirrored = out_masks[:, 0, 0, 1]  # the mask followed its image, whichever images were drawn
    assert torch.equal(out[mirrored], images[mirrored].flip(-1)) and torch.equal(out[~mirrored], images[~mirrored])
    assert 16 < int(mirrored.sum()) < 48
    again, again_masks = random_hflip(images, masks, 0.5, seed=3, step=7)
    assert torch.equal(again, out) and torch.equal(again_masks, out_masks)
    _, next_masks = random_hflip(images, masks, 0.5, seed=3, step=8)
    _, other_seed = random_hflip(images, masks, 0.5, seed=4, step=7)
    assert not torch.equal(next_masks, out_masks) and not torch.equal(other_seed, out_masks)
    with pytest.raises(ConfigError, match="hflip"):
        load_train_config(None, ["data.hflip=1.5"])


def bad_counts(n_shards: int) -> dict[str, int]:
    """The skips, by reason, of reading every shard of ``write_shards(bad=True)`` once."""
    counts: dict[str, int] = {}
    for _, reason in BAD_SAMPLES:
        counts[reason] = counts.get(reason, 0) + n_shards
    return dict(sorted(counts.items()))


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_skips_counted_in_dataloader_workers_reach_the_metrics_and_the_summary(tmp_path, workers):
    # 4 shards of 4 good samples after 7 bad ones each; batches of 4: one epoch is the 4 steps
    urls = write_shards(tmp_path / "shards", n_shards=4, per_shard=4, bad=True)
    cfg = load_train_config(None, tiny_overrides(urls, tmp_path / "run", **{
        "data.batch_size": 4, "data.workers": workers, "data.shuffle_buffer": 0, "train.steps": 4}))
    summary = train(cfg, progress=False)
    expected = {"decode_error": 16, "empty_caption": 4, "missing_caption": 4, "missing_image": 4}
    assert bad_counts(4) == expected
    assert summary["skipped"] == summary["skipped_this_rank"] == expected
    log = read_log(tmp_path / "run" / "metrics.jsonl")
    assert log[-1]["step"] == 4 and log[-1]["skipped"] == expected
    assert sum(log[0]["skipped"].values()) in (7, 14)  # step 1: the bad samples before its batch (per worker)


def test_torchrun_two_processes_split_shards_agree_and_change_the_weights(tmp_path):
    urls = write_shards(tmp_path / "shards", n_shards=4, per_shard=4, bad=True)
    out = tmp_path / "ddp"
    (tmp_path / "empty.yaml").write_text("{}\n")
    overrides = tiny_overrides(urls, out, **{"data.batch_size": 4, "train.steps": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tools" / "train.py"), str(tmp_path / "empty.yaml"), *overrides, "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    res = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    s0 = json.loads((out / "summary_rank0.json").read_text())
    s1 = json.loads((out / "summary_rank1.json").read_text())
    assert s0["world_size"] == s1["world_size"] == 2 and s0["steps"] == s1["steps"] == 2
    # each rank read two shards, 7 bad samples in each: the summaries total both ranks' skips
    assert s0["skipped"] == s1["skipped"] == bad_counts(4)
    assert s0["skipped_this_rank"] == s1["skipped_this_rank"] == bad_counts(2)
    assert read_log(out / "metrics.jsonl")[-1]["skipped"] == bad_counts(4)
    assert set(s0["shards_read"]).isdisjoint(s1["shards_read"])
    assert len(s0["shards_read"]) == len(s1["shards_read"]) == 2
    assert s0["weights_sha1"] == s1["weights_sha1"]
    # the trained weights changed from the run's initial ones, the frozen grouper did not
    before = build_model(load_train_config(tmp_path / "empty.yaml", overrides)).state_dict()
    after, model_config = load_model_weights(out / "final.pt")
    assert model_config["name"] == "tiny" and weights_checksum(after) == s0["weights_sha1"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"clip.logit_scale", "clip.visual.proj", "clip.text_projection"} <= changed
    assert not any(k.startswith("grouper.") for k in changed)


def test_grouping_in_the_workers_or_on_the_device_gives_the_same_run(tmp_path, monkeypatch):
    import textseg.train.loop as loop

    urls = write_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    runs = {}
    for mode in ("workers", "device"):
        if mode == "device":  # the data workers only resize: the step groups the batch with the model's grouper
            monkeypatch.setattr(loop, "TrainTransform", None)
        cfg = load_train_config(None, tiny_overrides(urls, tmp_path / mode, **{"train.steps": 3,
                                                                                "data.group_on": mode}))
        runs[mode] = train(cfg, progress=False), read_log(tmp_path / mode / "metrics.jsonl")
    (workers, w_log), (device, d_log) = runs["workers"], runs["device"]
    assert [r["step"] for r in d_log] == [r["step"] for r in w_log] == [1, 2, 3]
    for a, b in zip(w_log, d_log):  # grouping is deterministic: the same masks, the same losses
        for key in ("loss", "loss_image_text", "loss_noun_region", "noun_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
    assert device["weights_sha1"] == workers["weights_sha1"]
    assert (workers["group_on"], device["group_on"]) == ("workers", "device")


def test_group_on_image_transform_and_its_collate():
    from textseg.train.config import DataConfig
    from textseg.train.loop import ImageTransform, collate_images, group_on

    assert group_on(DataConfig(), torch.device("cpu")) == "workers"
    assert group_on(DataConfig(), torch.device("cuda")) == "device"
    assert group_on(DataConfig(group_on="workers"), torch.device("cuda")) == "workers"
    with pytest.raises(ConfigError, match="data.group_on"):
        load_train_config(None, ["data.group_on=gpu"])
    cfg = load_train_config(None, ["train.compile=true", "train.tf32=false"])
    assert cfg.train.compile is True and cfg.train.tf32 is False and cfg.data.group_on == "auto"
    transform = ImageTransform(48, 16)
    x = transform(Image.new("RGB", (40, 30), (255, 0, 0)))
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and float(x[0].min()) == 1 and float(x[1].max()) == 0
    batch = collate_images([(x, "a", "u0"), (x, "b", "u1")])
    assert batch["images"].shape == (2, 3, 48, 48) and batch["captions"] == ["a", "b"] and "masks" not in batch
    assert batch["urls"] == ["u0", "u1"]
    with pytest.raises(ConfigError, match="multiple of the model's patch size 16"):
        ImageTransform(40, 16)


def test_compile_option_compiles_the_training_step(tmp_path, monkeypatch):
    from textseg.train.loop import TrainStep

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module) or module)
    urls = write_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    train(load_train_config(None, tiny_overrides(urls, tmp_path / "run", **{"train.steps": 1})), progress=False)
    assert compiled == []
    train(load_train_config(None, tiny_overrides(urls, tmp_path / "compiled", **{"train.steps": 1,
                                                                                 "train.compile": "true"})),
          progress=False)
    assert len(compiled) == 1 and isinstance(compiled[0], TrainStep)


def test_fused_adamw_on_request_steps_like_the_plain_one():
    from textseg.train.config import OptimConfig
    from textseg.train.loop import build_optimizer

    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
    nets[1].load_state_dict(nets[0].state_dict())
    plain, _ = build_optimizer(nets[0], OptimConfig(), 10)  # CPU parameters: not fused by default
    fused, _ = build_optimizer(nets[1], OptimConfig(), 10, fused=True)  # the CUDA default, run here on CPU
    assert not plain.defaults.get("fused") and fused.defaults["fused"] is True
    x = torch.randn(5, 4)
    for net, opt in zip(nets, (plain, fused)):
        for _ in range(3):
            net(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_tf32_switch_sets_the_cuda_flags():
    from textseg.train.loop import enable_cuda_speedups

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        enable_cuda_speedups(False)
        assert not torch.backends.cuda.matmul.allow_tf32
        enable_cuda_speedups(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_noun_keys_give_the_noun_batchers_positives():
    from textseg.losses import same_noun_positives
    from textseg.train.distributed import noun_keys

    prompts, noun_ids, noun_image, positives = NounBatcher()(CAPTIONS)
    keys = noun_keys([prompts[i] for i in noun_ids.tolist()])
    assert torch.equal(same_noun_positives(keys, noun_image, len(CAPTIONS)), positives)
    assert positives.sum() > len(noun_ids)  # some nouns are shared between captions


def test_trim_metrics_keeps_each_step_once_after_a_kill(tmp_path):
    """A run killed after its checkpoint at step 3 logged steps 4-5 and half of step 6: resuming at 3 keeps 1-3."""
    from textseg.train.loop import trim_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4, 5)]
    path.write_text("\n".join(lines) + '\n{"step": 6, "lo')
    trim_metrics(path, 3)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
    trim_metrics(path, 0)  # a fresh run in the same folder starts an empty log
    assert path.read_text() == ""
    trim_metrics(tmp_path / "absent.jsonl", 5)
    assert not (tmp_path / "absent.jsonl").exists()


def test_a_random_frozen_grouping_backbone_is_warned_of(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="textseg.train.loop"):
        build_model(load_train_config(None, ["model=learned-small-workbench"]))
    assert "groups come from a random ViT; pretrained=true loads runs/grouping/final.pt" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="textseg.train.loop"):
        build_model(load_train_config(None, ["model=labxy-small-workbench"]))  # colour groups: nothing to load
    assert "random ViT" not in caplog.text
