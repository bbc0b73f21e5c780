"""End-to-end evaluation: runners on the VOC fixture, resume after an interruption, adapters, protocols, CLI."""

import argparse
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import textseg
from textseg.data import VOCSegmentation
from textseg.errors import ConfigError
from textseg.evaluation import (
    RISOutput,
    SegmenterRISPredictor,
    SegmenterSemsegPredictor,
    evaluate_ris,
    evaluate_semseg,
    load_protocol,
    protocol_for_benchmark,
    register_cli,
)
from test_data import _refer_fixture

VOC = Path(__file__).parent / "data" / "voc2012"
BG, AERO = 143868, 30937  # VOC 2007_000033 pixel counts of background and aeroplane (255: 8,195 ignored)


def test_oracle_scores_100_and_results_are_written(tmp_path):
    ds = VOCSegmentation(VOC, "val")
    labels = [ds[i]["label"] for i in range(len(ds))]
    calls = iter(labels)
    res = evaluate_semseg(lambda image, names: next(calls), ds, tmp_path, progress=False, overlays=1,
                          meta={"config": {"model": "oracle"}})
    assert res["metrics"]["mIoU"] == pytest.approx(100.0)
    assert res["metrics"]["aAcc"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"]["mIoU"] == pytest.approx(100.0)
    assert saved["meta"]["argv"] == sys.argv and saved["meta"]["config"] == {"model": "oracle"}
    assert saved["per_class"][0] == {"class": "background", "IoU": 100.0, "Acc": 100.0}
    assert saved["per_class"][2]["IoU"] is None  # bicycle: absent from both, NaN written as null
    md = (tmp_path / "results.md").read_text()
    assert "| 100.00 | 100.00 | 100.00 |" in md and "| aeroplane | 100.00 | 100.00 |" in md
    (overlay,) = (tmp_path / "overlays").iterdir()
    assert Image.open(overlay).size == (3 * 500, 366)


def test_all_background_predictor_scores_the_hand_computed_value(tmp_path):
    ds = VOCSegmentation(VOC, "val")
    seen = {}

    def all_background(image, class_names):
        seen["names"] = class_names
        return np.zeros(image.shape[:2], np.int64)

    res = evaluate_semseg(all_background, ds, tmp_path, progress=False)
    # background: TP = 143868, FP = 30937 (aeroplane pixels predicted background), FN = 0;
    # aeroplane: TP 0, FN 30937 -> IoU 0; the 19 other classes are absent from both -> NaN, excluded.
    bg_iou = BG / (BG + AERO)
    assert res["metrics"]["mIoU"] == pytest.approx(100 * (bg_iou + 0.0) / 2)
    assert res["metrics"]["aAcc"] == pytest.approx(100 * BG / (BG + AERO))
    assert res["metrics"]["mAcc"] == pytest.approx(50.0)
    # The predictor receives prompt-friendly names.
    assert "dining table" in seen["names"] and seen["names"][0] == "background"


class _ToyDataset:
    """5 tiny samples with 3 classes; sample i is labelled (i % 3) everywhere except one ignore pixel."""

    name = "toy"
    split = "val"
    class_names = ["a", "b", "c"]
    ignore_index = 255

    def __len__(self):
        return 5

    def __getitem__(self, i):
        label = np.full((2, 3), i % 3, np.uint8)
        label[0, 0] = 255
        return {"image": np.zeros((2, 3, 3), np.uint8), "label": label, "id": f"s{i}"}


class _CountingPredictor:
    """Predicts class 0 everywhere; raises on call number ``fail_at`` (1-based) to simulate an interruption."""

    def __init__(self, fail_at=None):
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, image, class_names):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("interrupted")
        return np.zeros(image.shape[:2], np.int64)


def test_resume_recomputes_no_finished_sample(tmp_path):
    fresh = evaluate_semseg(_CountingPredictor(), _ToyDataset(), tmp_path / "fresh", progress=False)

    out = tmp_path / "resumed"
    first = _CountingPredictor(fail_at=3)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_semseg(first, _ToyDataset(), out, progress=False)
    assert first.calls == 3
    rows = (out / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + the 2 finished samples
    assert not (out / "results.json").exists()
    # A line cut short by a crash is ignored (its sample recomputed), not fatal.
    with (out / "samples.jsonl").open("a") as f:
        f.write('{"i": 2, "id": "s2", "co')

    second = _CountingPredictor()
    res = evaluate_semseg(second, _ToyDataset(), out, progress=False)
    assert second.calls == 3  # samples 2, 3, 4 only
    assert res["metrics"] == fresh["metrics"]
    # Hand check: 5 samples x 5 valid pixels, all predicted 0; GT classes 0,1,2,0,1.
    # class 0: TP 10, FP 15 -> IoU 10/25; classes 1 and 2: TP 0 -> IoU 0. mIoU = 0.4 / 3.
    assert res["metrics"]["mIoU"] == pytest.approx(40 / 3)

    # A finished evaluation resumes with no call at all; resume=False starts over.
    third = _CountingPredictor()
    evaluate_semseg(third, _ToyDataset(), out, progress=False)
    assert third.calls == 0
    evaluate_semseg(third, _ToyDataset(), out, progress=False, resume=False)
    assert third.calls == 5

    # The store belongs to this evaluation only.
    other = _ToyDataset()
    other.name = "other"
    with pytest.raises(ConfigError, match="different evaluation"):
        evaluate_semseg(third, other, out, progress=False)


def test_limit_and_shape_check(tmp_path):
    res = evaluate_semseg(_CountingPredictor(), _ToyDataset(), tmp_path, progress=False, limit=2)
    assert res["n_samples"] == 2
    with pytest.raises(ValueError, match="shape"):
        evaluate_semseg(lambda im, n: np.zeros((3, 3), int), _ToyDataset(), tmp_path / "b", progress=False)


def test_evaluate_ris_end_to_end_with_resume(tmp_path):
    from textseg.data import RefDataset

    _refer_fixture(tmp_path / "refer")
    ds = RefDataset(tmp_path / "refer", "refcoco", "unc", "val")
    gts = [ds[i]["mask"] for i in range(len(ds))]

    # Sample 0: exact mask with a response peaking inside it; sample 1: no mask; sample 2: exact mask.
    def predictor(image, sentence):
        if sentence == "person in blue":
            return None
        mask = gts[0] if sentence == "man on the left" else gts[2]
        response = mask.astype(np.float32)
        return RISOutput(mask=mask, response=response) if sentence == "man on the left" else mask

    res = evaluate_ris(predictor, ds, tmp_path / "out", progress=False, overlays=1)
    m = res["metrics"]
    # I/U: 12/12, 0/12 (no mask: U = |G|), 3/3 -> oIoU = 15/27; mIoU = (1 + 0 + 1) / 3; Prec@X = 2/3
    assert m["oIoU"] == pytest.approx(100 * 15 / 27)
    assert m["mIoU"] == pytest.approx(200 / 3)
    assert m["Prec@0.9"] == pytest.approx(200 / 3)
    assert m["PointM"] == pytest.approx(100.0) and m["n"] == 3
    assert res["n_no_mask"] == 1
    assert json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]["n"] == 3
    assert "| oIoU |" in (tmp_path / "out" / "results.md").read_text()
    assert len(list((tmp_path / "out" / "overlays").iterdir())) == 1

    calls = []
    again = evaluate_ris(lambda im, s: calls.append(s), ds, tmp_path / "out", progress=False)
    assert calls == [] and again["metrics"] == m


class _FakeSegmenter:
    def __init__(self, labels):
        self.labels = labels
        self.calls = []

    def predict(self, image, classes, **kw):
        self.calls.append((list(classes), kw))
        return types.SimpleNamespace(labels=self.labels)

    def predict_referring(self, image, sentence, *, short_side=448):
        self.calls.append((sentence, short_side))
        return types.SimpleNamespace(mask=np.ones((2, 2), bool), response=np.zeros((2, 2), np.float32), score=1.0)


def test_segmenter_adapters():
    protocol = protocol_for_benchmark(load_protocol("sclip"), "voc21")
    seg = _FakeSegmenter(np.array([[0, 1], [2, 3]]))
    with_bg = SegmenterSemsegPredictor(seg, protocol, has_background=True)
    out = with_bg(np.zeros((2, 2, 3), np.uint8), ["background", "aeroplane", "bicycle", "bird"])
    assert out.tolist() == [[0, 1], [2, 3]]
    classes, kw = seg.calls[-1]
    assert classes == ["aeroplane", "bicycle", "bird"]
    assert kw["background"] == "threshold" and kw["bg_threshold"] == 0.1 and "sky" in kw["background_classes"]
    assert (kw["short_side"], kw["window"], kw["stride"], kw["templates"]) == (336, 224, 112, "imagenet80")

    seg = _FakeSegmenter(np.array([[1, 2], [3, 1]]))
    no_bg = SegmenterSemsegPredictor(seg, protocol_for_benchmark(load_protocol("sclip"), "voc20"), False)
    out = no_bg(np.zeros((2, 2, 3), np.uint8), ["aeroplane", "bicycle", "bird"])
    assert out.tolist() == [[0, 1], [2, 0]]
    classes, kw = seg.calls[-1]
    assert classes == ["aeroplane", "bicycle", "bird"]
    assert kw["background"] is None and tuple(kw["background_classes"]) == ()

    ris = SegmenterRISPredictor(seg, {"short_side": 320})
    res = ris(np.zeros((2, 2, 3), np.uint8), "the dog")
    assert isinstance(res, RISOutput) and res.mask.all() and seg.calls[-1] == ("the dog", 320)


def test_protocols(tmp_path):
    g = load_protocol("groupvit")
    assert (g["short_side"], g["window"], g["stride"], g["templates"]) == (448, 448, 224, "single")
    assert g["background"] == "threshold" and g["background_classes"] == []
    assert protocol_for_benchmark(g, "voc21")["bg_threshold"] == 0.95
    assert protocol_for_benchmark(g, "context60")["bg_threshold"] == 0.35
    s = load_protocol(Path(textseg.__file__).parents[1] / "configs" / "protocols" / "sclip.yaml")
    assert s["short_side"] == 336 and len(s["background_classes"]) == 26

    with pytest.raises(ConfigError, match="protocol not found"):
        load_protocol("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nshort_side: 448\nwindow: 448\nstride: 224\ntemplates: single\nbackground: null\n"
                   "background_classes: []\n")
    with pytest.raises(ConfigError, match="bg_threshold"):
        load_protocol(bad)
    bad.write_text(bad.read_text() + "bg_threshold: 0.5\ntemplates_x: 1\n")
    with pytest.raises(ConfigError, match="templates_x"):
        load_protocol(bad)
    bad.write_text(bad.read_text().replace("templates_x: 1\n", "").replace("single", "many"))
    with pytest.raises(ConfigError, match="templates"):
        load_protocol(bad)


def test_cli_eval_semseg_and_ris(tmp_path, monkeypatch):
    # The model factory and Segmenter are the lead's modules; stand-ins with the agreed API.
    factory = types.ModuleType("textseg.factory")
    factory.add_model_args = lambda p: p.add_argument("--model", default="tiny")
    factory.create_model_from_args = lambda args: {"model": args.model}
    segmenter = types.ModuleType("textseg.segmenter")

    class Segmenter:
        def __init__(self, model, templates="imagenet80", text_cache_dir=None):
            self.model, self.templates = model, templates

        def predict(self, image, classes, **kw):
            return types.SimpleNamespace(labels=np.zeros(image.shape[:2], np.int64))

        def predict_referring(self, image, sentence, *, short_side=448):
            return types.SimpleNamespace(mask=None, response=None, score=0.0)

    segmenter.Segmenter = Segmenter
    monkeypatch.setitem(sys.modules, "textseg.factory", factory)
    monkeypatch.setitem(sys.modules, "textseg.segmenter", segmenter)
    monkeypatch.setattr(textseg, "factory", factory, raising=False)
    monkeypatch.setattr(textseg, "segmenter", segmenter, raising=False)

    parser = argparse.ArgumentParser(prog="textseg")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "semseg", "--dataset", "voc21", "--root", str(VOC), "--out",
                              str(tmp_path / "sem"), "--no-progress", "--model", "m1"])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "sem" / "results.json").read_text())
    assert saved["metrics"]["mIoU"] == pytest.approx(100 * (BG / (BG + AERO)) / 2)
    assert saved["meta"]["config"]["args"]["model"] == "m1"
    assert saved["meta"]["config"]["protocol"]["bg_threshold"] == 0.95

    _refer_fixture(tmp_path / "refer")
    args = parser.parse_args(["eval", "ris", "--root", str(tmp_path / "refer"), "--split", "testA", "--out",
                              str(tmp_path / "ris"), "--no-progress"])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "ris" / "results.json").read_text())
    assert saved["metrics"]["mIoU"] == 0.0 and saved["n_no_mask"] == 1 and saved["metrics"]["PointM"] is None
    assert math.isclose(saved["metrics"]["oIoU"], 0.0)


def test_calibrate_bg_score_picks_the_best_constant():
    import torch

    from textseg.evaluation import calibrate_bg_score

    groups = np.zeros((4, 4), dtype=np.int64)
    groups[:, 2:] = 1
    label = np.zeros((4, 4), dtype=np.uint8)
    label[:, :2] = 1  # left half is the class, right half background

    class FakeSegmenter:
        def region_similarities(self, image, names, templates=None, short_side=None):
            assert names == ["thing"]
            return groups, torch.tensor([[0.6], [0.3]])  # region 0 (left) is more like "thing"

    class OneImage:
        class_names = ["background", "thing"]
        ignore_index = 255
        has_background = True

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": np.zeros((4, 4, 3), np.uint8), "label": label, "id": "x"}

    best, scores = calibrate_bg_score(FakeSegmenter(), OneImage(), {"templates": "single", "short_side": None},
                                      candidates=(0.0, 0.4, 0.7), progress=False)
    # 0.0: both regions "thing" -> IoU bg 0, thing 8/16 -> 25; 0.4: exact -> 100; 0.7: all bg -> (8/16 + 0) / 2 -> 25
    assert best == 0.4
    assert scores == {0.0: 25.0, 0.4: 100.0, 0.7: 25.0}
