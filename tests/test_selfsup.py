"""The self-supervised grouping backbone: DINO loss, centring, EMA, multi-crop, a training step, the backbone file
and `textseg pretrain-grouping`."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import textseg
from textseg.cli import main
from textseg.errors import MissingWeightsError, UserError
from textseg.train.schedule import warmup_cosine
from textseg.train.selfsup import (CropConfig, MultiCrop, SelfSupTrainer, dino_loss, ema_update, image_batches,
                                   load_selfsup_config, masked_patch_loss, resolve_shards, update_center)

# The packaged config's ViT (so its file loads into learned-small-workbench) on few, small crops.
TINY = ["data.batch_size=2", "data.workers=0", "data.shuffle_buffer=4", "crops.global_size=32",
        "crops.local_size=16", "crops.local_number=2", "head.out_dim=32", "head.hidden_dim=16",
        "head.bottleneck_dim=8", "optim.warmup=1", "train.steps=2", "train.ckpt_every=1", "train.keep_last=2"]


def _softmax(xs, t):
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


def _hand_dino(student, teacher, center, ts, tt):
    """The DINO loss in plain Python: teacher view i against every student view v != i."""
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            for row_t, row_s in zip(t, s):
                q = _softmax([a - c for a, c in zip(row_t, center)], tt)
                p = _softmax(row_s, ts)
                total += -sum(qk * math.log(pk) for qk, pk in zip(q, p)) / len(t)
            pairs += 1
    return total / pairs


def test_dino_loss_by_hand_asymmetric_and_without_own_view():
    student = [[[1.0, 0.0, -1.0]], [[0.5, 2.0, 0.0]], [[0.0, 0.0, 3.0]]]  # 3 views (2 global + 1 local), B = 1
    teacher = [[[2.0, 1.0, 0.0]], [[-1.0, 0.5, 1.5]]]
    center, ts, tt = [0.1, -0.2, 0.3], 0.5, 0.25
    got = dino_loss([torch.tensor(s) for s in student], [torch.tensor(t) for t in teacher], torch.tensor(center),
                    ts, tt)
    assert got.item() == pytest.approx(_hand_dino(student, teacher, center, ts, tt), rel=1e-5)
    # the teacher's own view is not a pair: counting it would give another value
    with_own = 0.0
    for t in teacher:
        for s in student:
            q = _softmax([a - c for a, c in zip(t[0], center)], tt)
            with_own += -sum(qk * math.log(pk) for qk, pk in zip(q, _softmax(s[0], ts)))
    assert got.item() != pytest.approx(with_own / 6, rel=1e-3)
    # asymmetric: the teacher is centred and sharpened, the student is not
    swapped = dino_loss([torch.tensor(t) for t in teacher], [torch.tensor(s) for s in student[:2]],
                        torch.tensor(center), ts, tt)
    assert swapped.item() != pytest.approx(dino_loss([torch.tensor(s) for s in student[:2]],
                                                     [torch.tensor(t) for t in teacher], torch.tensor(center),
                                                     ts, tt).item(), rel=1e-3)


def test_dino_loss_gradient_reaches_only_the_student():
    s = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]
    t = [torch.randn(4, 8, requires_grad=True) for _ in range(2)]
    dino_loss(s, t, torch.zeros(8), 0.1, 0.04).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s) and all(x.grad is None for x in t)


def test_masked_patch_loss_is_a_mean_per_view_then_over_views():
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    view = torch.tensor([0, 0, 2])  # two masked patches in view 0, one in view 2, none in view 1
    ce = (-F.softmax(teacher / 0.04, -1) * F.log_softmax(student / 0.1, -1)).sum(-1)
    want = ((ce[0] + ce[1]) / 2 + ce[2]) / 2
    got = masked_patch_loss(student, teacher, view, 3, torch.zeros(5), 0.1, 0.04)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_center_update_by_hand():
    center = torch.tensor([[1.0, -1.0]])
    teacher = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])]  # mean (4, 5)
    new = update_center(center, teacher, 0.9)
    assert new.shape == (1, 2)
    assert torch.allclose(new, torch.tensor([[0.9 * 1 + 0.1 * 4, 0.9 * -1 + 0.1 * 5]]))


def test_ema_update_by_hand():
    torch.manual_seed(0)
    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for k, v in teacher.state_dict().items():
        assert torch.allclose(v, 0.9 * t0[k] + 0.1 * student.state_dict()[k])
    ema_update(teacher, student, 1.0)  # momentum 1: the teacher stays
    ema_update(teacher, student, 0.0)  # momentum 0: the teacher becomes the student
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in teacher.state_dict().items())


def test_schedules():
    # DINO's warm-up, start * (step + 1) / (warmup + 1): the first step already learns, the peak comes after it
    assert warmup_cosine(0, 10, start=1.0, end=0.0, warmup=4, warmup_offset=1) == pytest.approx(0.2)
    assert warmup_cosine(3, 10, start=1.0, end=0.0, warmup=4, warmup_offset=1) == pytest.approx(0.8)
    assert warmup_cosine(4, 10, start=1.0, end=0.0, warmup=4, warmup_offset=1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, start=1.0, end=0.0, warmup=4, warmup_offset=1) == pytest.approx(0.0)
    assert warmup_cosine(5, 10, start=0.996, end=1.0) == pytest.approx(0.998)  # the teacher momentum halfway to 1


def test_trainer_schedules_and_weight_decay_groups():
    cfg = load_selfsup_config(overrides=TINY + [
        "train.steps=10", "optim.warmup=4", "optim.lr=1.0", "optim.min_lr=0.1", "optim.weight_decay=0.1",
        "optim.weight_decay_end=0.3", "optim.teacher_momentum=0.996", "loss.teacher_temp_warmup=2",
        "loss.warmup_teacher_temp=0.02", "loss.teacher_temp=0.04", "ibot.enabled=true"])
    trainer = SelfSupTrainer(cfg)
    s = [trainer.schedules(step) for step in (0, 1, 3, 7, 10)]
    assert [x["lr"] for x in s] == pytest.approx([0.2, 0.4, 0.8, 0.55, 0.1])  # 0.1 + 0.9 * (1 + cos(pi/2)) / 2
    assert [x["wd"] for x in s] == pytest.approx([0.1, 0.1 + 0.2 * 0.0244717, 0.1 + 0.2 * 0.2061074,
                                                  0.1 + 0.2 * 0.7938926, 0.3], rel=1e-6)  # no warm-up
    assert s[3]["momentum"] == pytest.approx(0.996 + 0.004 * 0.7938926) and s[4]["momentum"] == 1.0
    assert [x["teacher_temp"] for x in s] == pytest.approx([0.02, 0.03, 0.04, 0.04, 0.04])
    # decayed: matrices (and the cls token, 3-d); not decayed: biases, norm gains and the mask token
    groups = {g["decay"]: g for g in trainer.optimizer.param_groups}
    named = dict(trainer.model.named_parameters())
    ids = {flag: {id(p) for p in g["params"]} for flag, g in groups.items()}
    for name in ("student.backbone.model.blocks.0.attn.qkv.weight", "student.head.mlp.0.weight",
                 "student.backbone.model.cls_token"):
        assert id(named[name]) in ids[True], name
    for name in ("student.backbone.model.blocks.0.attn.qkv.bias", "student.backbone.model.norm.weight",
                 "student.head.mlp.0.bias", "mask_token"):
        assert id(named[name]) in ids[False], name
    assert not any(id(p) in ids[True] | ids[False] for n, p in named.items() if n.startswith("teacher."))
    trainer.train_step(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8))
    assert groups[True]["weight_decay"] == s[0]["wd"] and groups[False]["weight_decay"] == 0.0
    assert all(g["lr"] == pytest.approx(0.2) for g in groups.values())
    # a state whose groups lack the flag (checkpoints written before it was named "decay") resumes with it
    state = trainer.state_dict()
    for g in state["optimizer"]["param_groups"]:
        g["apply_wd"] = g.pop("decay")
    again = SelfSupTrainer(cfg)
    again.load_state_dict(state)
    assert [g["decay"] for g in again.optimizer.param_groups] == [True, False] and again.step == 1


def test_multicrop_shapes_range_and_seed():
    crops = MultiCrop(CropConfig(global_size=48, local_number=3, local_size=24))
    images = torch.rand(5, 3, 96, 96)
    views = crops(images, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 3, 48, 48)] * 2 + [(5, 3, 24, 24)] * 3
    assert all(v.min() >= 0 and v.max() <= 1 for v in views)
    again = crops(images, torch.Generator().manual_seed(0))
    other = crops(images, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert not torch.allclose(views[0], other[0])
    assert not torch.allclose(views[0][0], views[0][1])  # each image gets its own crop (same input here)
    same = torch.rand(1, 3, 96, 96).expand(4, -1, -1, -1)
    v = crops(same, torch.Generator().manual_seed(0))[0]
    assert not torch.allclose(v[0], v[1])


def test_blur_matches_a_reflected_gaussian_convolution():
    crops = MultiCrop(CropConfig(blur_sigma=[0.5, 1.0]))
    x = torch.rand(3, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    y = crops.blur(x, 1.0, g)
    g = torch.Generator().manual_seed(0)
    torch.rand(3, generator=g)  # the blur-or-not draw
    sigma = 0.5 + 0.5 * torch.rand(3, generator=g)
    taps = torch.arange(-3, 4).float()
    for i in range(3):
        k = torch.exp(-taps ** 2 / (2 * sigma[i] ** 2))
        k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
        ref = F.conv2d(F.pad(x[i:i + 1], (3, 3, 3, 3), mode="reflect"), k, groups=3)
        ref = F.conv2d(ref, k.transpose(2, 3), groups=3)
        assert torch.allclose(y[i:i + 1], ref, atol=1e-5)
    assert torch.equal(crops.blur(x, 0.0, g), x)


def test_packaged_config_trains_the_model_configs_backbone():
    cfg = load_selfsup_config()
    model_cfg = textseg.get_model_config("learned-small-workbench")
    assert (cfg.backbone.name, cfg.backbone.kwargs) == (model_cfg.backbone.name, model_cfg.backbone.kwargs)
    assert model_cfg.backbone.feature == "keys" and model_cfg.backbone.weights == "runs/grouping/final.pt"
    assert cfg.crops.global_size % cfg.backbone.kwargs["patch_size"] == 0


@pytest.fixture(scope="module")
def workbench(tmp_path_factory) -> Path:
    from textseg.workbench.build import build_workbench

    root = tmp_path_factory.mktemp("wb")
    build_workbench(root, train_scenes=8, val_scenes=0, ref_scenes=0, object_centric=0, refer_train_scenes=0,
                    size=96, workers=1, progress=False)
    return root


def test_corrupt_samples_are_counted_and_skipped(tmp_path):
    import numpy as np

    from textseg.io import ShardWriter, encode_jpeg

    with ShardWriter(folder=tmp_path / "bad", prefix="shard") as w:  # in this order: no shuffle below
        w.write("a0", {"jpg": b"not a jpeg", "txt": "x"})
        w.write("a1", {"txt": "a caption, no image"})
        for i in range(4):
            w.write(f"b{i}", {"jpg": encode_jpeg(np.full((64, 80, 3), 40 * i, np.uint8))})  # no caption needed
    cfg = load_selfsup_config(overrides=TINY + ["data.batch_size=4", "data.shuffle_buffer=0"])
    batches = image_batches(resolve_shards(tmp_path, ["bad/shard-*.tar"]), cfg.data, seed=0)
    images = next(batches)
    batches.close()
    assert images.shape == (4, 3, 96, 96) and images.dtype == torch.uint8  # resized to data.image_size
    assert dict(batches.skipped) == {"decode_error": 1, "missing_image": 1}


def test_one_step_moves_the_student_and_the_teacher_by_the_ema_rule(workbench):
    cfg = load_selfsup_config(overrides=TINY)
    trainer = SelfSupTrainer(cfg)
    batches = image_batches(resolve_shards(workbench, cfg.data.shards), cfg.data, seed=0)
    images = next(batches)
    batches.close()
    model = trainer.model
    student0 = {k: v.clone() for k, v in model.student.state_dict().items()}
    teacher0 = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    assert all(torch.equal(student0[k], teacher0[k]) for k in student0)  # the teacher starts as the student
    momentum = trainer.schedules(0)["momentum"]
    rec = trainer.train_step(images)
    assert math.isfinite(rec["loss"]) and rec["momentum"] == momentum and trainer.step == 1
    student1 = model.student.state_dict()
    moved = [k for k in student0 if not torch.equal(student0[k], student1[k])]
    assert any(k.startswith("backbone.model.blocks.3") for k in moved) and "backbone.model.cls_token" in moved
    for k, t1 in model.teacher.state_dict().items():
        assert torch.allclose(t1, momentum * teacher0[k] + (1 - momentum) * student1[k], atol=1e-6), k
    assert not torch.equal(model.center, torch.zeros_like(model.center))  # the centre moved towards the teacher


def test_ibot_step_runs(workbench):
    cfg = load_selfsup_config(overrides=TINY + ["ibot.enabled=true", "ibot.mask_prob=1.0"])
    trainer = SelfSupTrainer(cfg)
    rec = trainer.train_step(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8))
    assert rec["ibot"] > 0 and rec["loss"] == pytest.approx(rec["dino"] + rec["ibot"], rel=1e-4)
    assert not torch.equal(trainer.model.patch_center, torch.zeros_like(trainer.model.patch_center))


def _run(workbench, out, *extra):
    args = ["pretrain-grouping", "--data", str(workbench), "--out", str(out), "--no-progress", "--device", "cpu"]
    for item in TINY:
        args += ["--set", item]
    return main(args + list(extra))


def test_cli_backbone_file_loads_into_the_model_and_resumes_exactly(workbench, tmp_path, capsys):
    assert _run(workbench, tmp_path / "a") == 0
    final = tmp_path / "a" / "final.pt"
    assert final.is_file() and "grouping backbone" in capsys.readouterr().out
    saved = torch.load(final, weights_only=True)
    assert saved["step"] == 2 and saved["backbone"]["name"] == "vit_tiny_patch16_224"
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"teacher_entropy"' in lines[0]

    model = textseg.create_model("learned-small-workbench", pretrained=False, backbone_pretrained=str(final))
    vit = model.grouper.backbone.model.state_dict()
    assert all(torch.equal(vit[k], v) for k, v in saved["model"].items()) and vit.keys() == saved["model"].keys()
    by_config = textseg.create_model(textseg.get_model_config("learned-small-workbench",
                                                              {"backbone": {"weights": str(final)}}))
    assert all(torch.equal(v, by_config.grouper.backbone.model.state_dict()[k]) for k, v in vit.items())
    # last-block keys, one per 4 x 4 pixels: the config enlarges the image 2 x for the patch-8 ViT
    assert model.grouper.backbone(torch.rand(1, 3, 96, 96)).shape == (1, 24, 24, 128)

    # interrupted after step 1: the rerun resumes from its checkpoint and ends with the same weights
    assert _run(workbench, tmp_path / "b") == 0
    (tmp_path / "b" / "final.pt").unlink()
    (tmp_path / "b" / "checkpoints" / "step-0000002.pt").unlink()
    assert _run(workbench, tmp_path / "b") == 0
    resumed = torch.load(tmp_path / "b" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[k], v) for k, v in saved["model"].items())
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2


def test_backbone_of_another_architecture_is_one_line(workbench, tmp_path):
    assert _run(workbench, tmp_path / "a", "--set", "backbone.kwargs.depth=1") == 0
    with pytest.raises(UserError, match="holds a vit_tiny_patch16_224 with .*'depth': 1") as err:
        textseg.create_model("learned-small-workbench", pretrained=False,
                             backbone_pretrained=str(tmp_path / "a" / "final.pt"))
    assert "\n" not in str(err.value)


def test_missing_backbone_file_names_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as err:
        textseg.create_model("learned-small-workbench")
    msg = str(err.value)
    assert "runs/grouping/final.pt" in msg and "textseg pretrain-grouping" in msg and "\n" not in msg
    textseg.create_model("learned-small-workbench", pretrained=False)  # random weights need no file


@pytest.mark.parametrize("problem, message", [
    ("crops: {global_size: 30}", "crops.global_size=30: crop sides must be multiples"),
    ("optim: {lrr: 1.0}", "optim.lrr"),
    ("crops: {local_scale: [0.5, 0.1]}", "crops.local_scale"),
])
def test_cli_bad_config_is_exit_2_and_one_line(workbench, tmp_path, capsys, problem, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(problem + "\n")
    assert main(["pretrain-grouping", "--data", str(workbench), "--out", str(tmp_path / "o"), "--config", str(bad),
                 "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "o" / "final.pt").exists()


def test_cli_missing_data_is_exit_2(tmp_path, capsys):
    assert main(["pretrain-grouping", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "textseg workbench build" in err and len(err.splitlines()) == 1


def test_upsampled_backbone_is_the_vit_on_the_enlarged_image():
    model = textseg.create_model("learned-small-workbench", pretrained=False, seed=0)
    features = model.grouper.backbone
    assert features.upsample == 2 and features.patch_size == 4 and model.grouper.patch_size == 12
    x = torch.rand(2, 3, 48, 72)
    big = F.interpolate(x, size=(96, 144), mode="bilinear", align_corners=False)
    store = {}
    attn = features.model.blocks[-1].attn
    handle = attn.qkv.register_forward_hook(lambda m, i, o: store.__setitem__("qkv", o))
    features.model.forward_features(features.normalize(big))
    handle.remove()
    keys = store["qkv"][:, 1:, 128:256].reshape(2, 12, 18, 128)  # 96 x 144 in patches of 8
    torch.testing.assert_close(features(x), keys)
    # a different input size is a different grid, not a crop: the asymmetric 48 x 72 keeps its 2:3 aspect
    assert features(x).shape == (2, 12, 18, 128)


def test_upsample_is_checked_and_not_part_of_the_weights(tmp_path):
    from textseg.errors import ConfigError
    from textseg.artifacts import save_checkpoint

    for bad, message in [(0, "whole number >= 1"), (3, "does not divide the patch size 8"),
                         (1.5, "backbone.upsample.*could not be converted")]:
        with pytest.raises(ConfigError, match=message):
            textseg.create_model(textseg.get_model_config("learned-small-workbench",
                                                          {"backbone": {"upsample": bad}}), pretrained=False)
    with pytest.raises(ConfigError, match="timm backbones only"):
        textseg.get_model_config("labxy-small-workbench", {"backbone": {"upsample": 2}})
    # a checkpoint saved before the field existed has the same weights: naming the upsampled model loads it, and
    # the model keeps the grouping it was trained with (no upsampling)
    model = textseg.create_model("learned-small-workbench", pretrained=False, seed=0)
    saved = dataclasses.asdict(textseg.get_model_config("learned-small-workbench"))
    del saved["backbone"]["upsample"]
    save_checkpoint(tmp_path / "old.pt", model.state_dict(), step=1, model_config=saved)
    loaded = textseg.create_model("learned-small-workbench", checkpoint=tmp_path / "old.pt")
    assert loaded.grouper.backbone.upsample == 1 and loaded.grouper.backbone.patch_size == 8
    assert textseg.create_model(None, checkpoint=tmp_path / "old.pt").grouper.backbone.upsample == 1
