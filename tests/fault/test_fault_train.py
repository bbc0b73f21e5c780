"""Fault cases of `textseg train` and of checkpoints: bad config values and files, bad `init=` and resume
checkpoints, a checkpoint of another model, corrupt training samples. Each case runs the CLI in this process."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import VOC_IMAGE
from faults import TINY, fault  # noqa: F401  (fixture)
from test_train import BAD_SAMPLES, read_log, tiny_overrides, write_shards
from textseg.config import to_dict
from textseg import artifacts as ckpt
from textseg.train import load_train_config, train


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """Shards, an empty YAML config, a finished 3-step tiny run (step checkpoints 2 and 3) and other checkpoints."""
    root = tmp_path_factory.mktemp("fault-train")
    urls = write_shards(root / "shards", n_shards=2, per_shard=4)
    (root / "empty.yaml").write_text("{}\n")
    extra = {"data.batch_size": 4, "train.steps": 3, "train.ckpt_every": 1}
    summary = train(load_train_config(None, tiny_overrides(urls, root / "done", **extra)), progress=False)
    from textseg.factory import create_model

    torch.manual_seed(0)
    other = create_model("labxy-small-workbench", pretrained=False)
    ckpt.save_checkpoint(root / "labxy.pt", other.state_dict(), step=1, model_config=to_dict(other.config))
    return {"root": root, "urls": urls, "yaml": root / "empty.yaml", "done": root / "done", "extra": extra,
            "sha1": summary["weights_sha1"]}


def argv(base: dict, out: Path, *more: str) -> list[str]:
    """``textseg train empty.yaml <tiny 3-step run into out> more...``."""
    return ["train", base["yaml"], *tiny_overrides(base["urls"], out, **base["extra"]), *more, "--no-progress"]


def copy_run(base: dict, dest: Path, keep: tuple[int, ...] = (2, 3)) -> Path:
    """The finished run's step checkpoints ``keep`` (no final.pt, no log) in a fresh run folder."""
    (dest / "checkpoints").mkdir(parents=True)
    for step in keep:
        shutil.copy(ckpt.step_checkpoint_path(base["done"], step), ckpt.step_checkpoint_path(dest, step))
    return dest


# ------------------------------------------------------------------------------------------------ config values
@pytest.mark.parametrize("override, fragments", [
    ("optim.lr=-1", ["optim.lr", "-1"]),
    ("optim.lr=0", ["optim.lr", "> 0"]),
    ("optim.lr=nan", ["optim.lr", "nan"]),
    ("optim.lr=.inf", ["optim.lr", "inf"]),
    ("train.ckpt_every=0", ["train.ckpt_every", "0"]),
    ("optim.grad_accum=0", ["optim.grad_accum", "0"]),
    ("data.batch_size=0", ["data.batch_size", "0"]),
    ("train.steps=-5", ["train.steps", "-5"]),
    ("train.steps=0", ["train.steps", ">= 1"]),
    ("train.steps=[1,2]", ["train.steps"]),
    ("train.steps=ten", ["train.steps", "ten"]),
    ("train.steps=1.5", ["train.steps"]),
    ("data.workers=-1", ["data.workers", "-1"]),
    ("data.image_size=0", ["data.image_size", "0"]),
    ("data.shuffle_buffer=-4", ["data.shuffle_buffer", "-4"]),
    ("optim.betas=[0.9,1.5]", ["optim.betas[1]", "1.5"]),
    ("optim.betas=[0.9]", ["optim.betas", "two numbers"]),
    ("optim.weight_decay=-0.1", ["optim.weight_decay", "-0.1"]),
    ("optim.min_lr_ratio=2", ["optim.min_lr_ratio", "2"]),
    ("optim.clip_grad=-1", ["optim.clip_grad", "-1"]),
    ("optim.warmup=-1", ["optim.warmup", "-1"]),
    ("train.max_minutes=0", ["train.max_minutes", "0"]),
    ("train.init_temperature=-0.07", ["train.init_temperature", "-0.07"]),
    ("train.keep_last=0", ["train.keep_last", "0"]),
    ("loss.noun_region=-1", ["loss.noun_region", "-1"]),
    ("loss.mode=both", ["loss.mode", "both"]),
    ("seed=-3", ["seed", "-3"]),
    ("train.stepz=5", ["stepz"]),
    ("data.group_on=gpu", ["data.group_on", "gpu"]),
])
def test_invalid_config_value_is_one_line_naming_field_and_value(fault, base, tmp_path, override, fragments):
    fault.error(argv(base, tmp_path / "run", override), *fragments)
    assert not (tmp_path / "run").exists()  # refused when loaded, before anything ran


def test_no_loss_left_is_one_line(fault, base, tmp_path):
    fault.error(argv(base, tmp_path / "run", "loss.image_text=0", "loss.noun_region=0"), "loss.image_text", "are all 0")


def test_override_without_value_is_one_line(fault, base, tmp_path):
    fault.error(argv(base, tmp_path / "run", "train.steps"), "train.steps", "key.sub=value")


def test_image_size_not_a_multiple_of_the_patch_is_one_line(fault, base, tmp_path):
    fault.error(argv(base, tmp_path / "run", "data.image_size=40"), "data.image_size 40", "patch size 16")


def test_unknown_model_is_one_line(fault, base, tmp_path):
    fault.error(argv(base, tmp_path / "run", "model=nosuch"), "nosuch")


# ------------------------------------------------------------------------------------------------ config files
@pytest.mark.parametrize("content, fragment", [
    ("- a\n- b\n", "mapping"),                 # a YAML whose top level is a list
    ("train: {steps: [1, 2\n", "not valid YAML"),
    ("train: 5\n", "train"),                    # a section given as a number
    (b"\xff\xfe\x00 binary", "UTF-8"),
])
def test_bad_config_file_is_one_line_naming_it(fault, base, tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    fault.error(["train", path, "model=tiny", f"out={tmp_path / 'run'}", "--no-progress"], fragment)


def test_missing_config_file_is_one_line(fault, tmp_path):
    fault.error(["train", tmp_path / "nosuch.yaml"], "nosuch.yaml", "presets: stage1_image_text")


# ------------------------------------------------------------------------------------------------ data and out
def test_no_shards_given_is_one_line(fault, base, tmp_path):
    fault.error(["train", base["yaml"], "model=tiny", f"out={tmp_path / 'run'}", "--no-progress"], "data.train")


def test_shards_that_do_not_exist_are_counted_then_one_line(fault, base, tmp_path):
    fault.error(argv(base, tmp_path / "run", f"data.train={tmp_path / 'nosuch-{0..1}.tar'}"), "no usable batch")


def test_out_is_an_existing_file_is_one_line(fault, base, tmp_path):
    (tmp_path / "taken").write_text("mine")
    fault.error(argv(base, tmp_path / "taken"), "out=", "taken")
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_samples_are_counted_skips_with_workers(fault, base, tmp_path, workers):
    urls = write_shards(tmp_path / "shards", n_shards=2, per_shard=4, bad=True)
    out = tmp_path / "run"
    r = fault.run(["train", base["yaml"], *tiny_overrides(urls, out, **{"data.batch_size": 4, "data.workers": workers, "train.steps": 2}),
                   "--no-progress"])
    assert r.rc == 0, r.err
    expected: dict[str, int] = {}
    for _, reason in BAD_SAMPLES:
        expected[reason] = expected.get(reason, 0) + 2
    assert json.loads((out / "summary_rank0.json").read_text())["skipped"] == dict(sorted(expected.items()))
    assert read_log(out / "metrics.jsonl")[-1]["skipped"] == dict(sorted(expected.items()))
    fault.skip(r)


# ------------------------------------------------------------------------------------------------ init= checkpoints
def bad_file(base: dict, tmp_path: Path, kind: str) -> Path:
    """A file that is not a usable checkpoint (``code``: a pickle whose loading would run a shell command)."""
    path = tmp_path / f"{kind}.pt"
    good = (base["done"] / "final.pt").read_bytes()
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("model: tiny\n")
    elif kind == "code":
        class RunsCode:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'pwned'}",))

        torch.save({"model": {"w": torch.zeros(1)}, "hook": RunsCode()}, path)
    elif kind == "tensor_list":
        torch.save([torch.zeros(1)], path)
    return path


@pytest.mark.parametrize("kind", ["random", "empty", "truncated", "missing", "directory", "text", "code",
                                  "tensor_list"])
def test_bad_init_checkpoint_is_one_line_naming_it(fault, base, tmp_path, kind):
    path = bad_file(base, tmp_path, kind)
    r = fault.error(argv(base, tmp_path / "run", f"init={path}"), str(path))
    assert "Traceback" not in r.err and not (tmp_path / "pwned").exists()


def test_init_checkpoint_of_another_model_is_one_line_naming_both(fault, base, tmp_path):
    fault.error(argv(base, tmp_path / "run", f"init={base['root'] / 'labxy.pt'}"), "labxy.pt",
                "labxy-small-workbench", "'tiny'")


def test_init_checkpoint_of_another_size_of_the_same_model_is_one_line(fault, base, tmp_path):
    bigger = "model_overrides={backbone: {kwargs: {embed_dim: 64, depth: 2, num_heads: 2}}}"
    fault.error(argv(base, tmp_path / "run", bigger, f"init={base['done'] / 'final.pt'}"), "final.pt",
                "backbone differs")


def test_init_from_a_region_mode_variant_is_fine(fault, base, tmp_path):
    """Stage 2 starts from stage 1 with another region mode: same weights, so not a mismatch."""
    fault.ok(argv(base, tmp_path / "run", "model_overrides={region: {mode: pool}}", "train.steps=1",
                  f"init={base['done'] / 'final.pt'}"))
    assert (tmp_path / "run" / "final.pt").is_file()


# ------------------------------------------------------------------------------------------------ resume folder
def test_newest_resume_checkpoint_corrupt_falls_back_and_says_so(fault, base, tmp_path, caplog):
    run = copy_run(base, tmp_path / "run")
    newest = ckpt.step_checkpoint_path(run, 3)
    newest.write_bytes(newest.read_bytes()[:5000])
    fault.ok(argv(base, run))
    assert "step-0000003.pt" in caplog.text and "resuming from the previous checkpoint step-0000002.pt" in caplog.text
    assert [r["step"] for r in read_log(run / "metrics.jsonl")] == [3]  # step 3 again, from step 2
    assert ckpt.weights_checksum(ckpt.load_model_weights(run / "final.pt")[0]) == base["sha1"]


@pytest.mark.parametrize("damage", ["random", "empty", "truncated"])
def test_every_resume_checkpoint_corrupt_is_one_line(fault, base, tmp_path, damage):
    run = copy_run(base, tmp_path / "run")
    for step in (2, 3):
        path = ckpt.step_checkpoint_path(run, step)
        data = path.read_bytes()
        path.write_bytes({"random": np.random.default_rng(step).bytes(3000), "empty": b"",
                          "truncated": data[: len(data) // 3]}[damage])
    fault.error(argv(base, run), "no usable checkpoint", str(run / "checkpoints"), "resume=false")
    assert not (run / "final.pt").exists()


def test_resume_checkpoint_of_another_model_is_one_line_naming_both(fault, base, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    done = ckpt.read_checkpoint(ckpt.step_checkpoint_path(base["done"], 3))
    other = ckpt.read_checkpoint(base["root"] / "labxy.pt")
    ckpt.save_checkpoint(ckpt.step_checkpoint_path(run, 3), other["model"], step=3,
                         model_config=other["model_config"], optimizer=done["optimizer"],
                         scheduler=done["scheduler"], rng=done["rng"], data=done["data"])
    fault.error(argv(base, run), "step-0000003.pt", "labxy-small-workbench", "'tiny'")


def test_resume_with_another_region_mode_is_one_line(fault, base, tmp_path):
    run = copy_run(base, tmp_path / "run")
    fault.error(argv(base, run, "model_overrides={region: {mode: pool}}"), "step-0000003.pt", "region", "pool")


def test_resume_checkpoint_with_a_malformed_data_position_falls_back(fault, base, tmp_path, caplog):
    run = copy_run(base, tmp_path / "run")
    path = ckpt.step_checkpoint_path(run, 3)
    data = ckpt.read_checkpoint(path)
    data["data"] = [{"epoch": -1, "next": "x"}]
    torch.save(data, path)
    fault.ok(argv(base, run))
    assert "malformed" in caplog.text and "step-0000002.pt" in caplog.text
    assert ckpt.weights_checksum(ckpt.load_model_weights(run / "final.pt")[0]) == base["sha1"]


def test_resume_beyond_train_steps_is_one_line(fault, base, tmp_path):
    run = copy_run(base, tmp_path / "run")
    fault.error(argv(base, run, "train.steps=2"), "step 3", "train.steps=2")


def test_resume_with_other_workers_warns_and_goes_on(fault, base, tmp_path, caplog):
    run = copy_run(base, tmp_path / "run", keep=(2,))
    fault.ok(argv(base, run, "data.workers=2"))
    assert "data.workers changed" in caplog.text and (run / "final.pt").is_file()


# ------------------------------------------------------------------------------------------------ segment --checkpoint
def test_segment_with_a_checkpoint_of_another_model_is_one_line_naming_both(fault, base, tmp_path):
    fault.error(["segment", VOC_IMAGE, "--classes", "cat", "--out", tmp_path / "o", "--model", "dino-s16-clip-b16",
                 "--no-pretrained", "--checkpoint", base["done"] / "final.pt"],
                "final.pt", "'tiny'", "dino-s16-clip-b16")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("kind", ["random", "empty", "truncated", "code"])
def test_segment_with_a_bad_checkpoint_is_one_line(fault, base, tmp_path, kind):
    path = bad_file(base, tmp_path, kind)
    fault.error(["segment", VOC_IMAGE, "--classes", "cat", "--out", tmp_path / "o", *TINY, "--checkpoint", path],
                str(path))
    assert not (tmp_path / "pwned").exists()


def test_segment_with_the_checkpoint_of_its_model_names_it(fault, base, tmp_path):
    r = fault.ok(["segment", VOC_IMAGE, "--classes", "cat", "--out", tmp_path / "o", *TINY,
                  "--checkpoint", base["done"] / "final.pt", "--short-side", "64"])
    outputs = list((tmp_path / "o").rglob("*.json"))
    assert r is not None and outputs and all("tiny" in p.read_text() for p in outputs)
