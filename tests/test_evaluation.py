"""End-to-end evaluation: runners on the VOC fixture, resume after an interruption, adapters, protocols,
calibration and the benchmark runs the ``textseg eval`` command calls."""

import json
import sys
import types
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textseg.config import Protocol
from textseg.data import VOCSegmentation
from textseg.errors import ConfigError
from textseg.eval import (
    RISOutput,
    SegmenterRISPredictor,
    SegmenterSemsegPredictor,
    calibrate_bg_score,
    evaluate_ris,
    evaluate_semseg,
    load_protocol,
    run_ris_benchmark,
    run_semseg_benchmark,
    summary_line,
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
    panel = np.asarray(Image.open(overlay))
    assert panel.shape == (366, 3 * 500, 3) and overlay.name == "00000_2007_000033.png"
    assert np.array_equal(panel[:, :500], ds[0]["image"])  # image | prediction | ground truth
    assert np.array_equal(panel[:, 500:1000], panel[:, 1000:])  # the oracle's prediction is the ground truth
    assert not np.array_equal(panel[:, :500], panel[:, 500:1000])


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
    with pytest.raises(ConfigError, match="limit"):
        evaluate_semseg(_CountingPredictor(), _ToyDataset(), tmp_path / "a", progress=False, limit=-1)
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
    """Records what the adapters pass; the labels / masks it returns are fixed."""

    def __init__(self, labels=None, mask=None):
        self.labels, self.mask = labels, mask
        self.calls = []

    def predict(self, image, classes, protocol=None, **overrides):
        self.calls.append((list(classes), protocol, overrides))
        labels = self.labels if self.labels is not None else np.zeros(image.shape[:2], np.int64)
        return types.SimpleNamespace(labels=labels)

    def refer(self, image, sentence, method="global-local", protocol=None, **overrides):
        assert method == "best-group"
        self.calls.append((sentence, protocol, overrides))
        return types.SimpleNamespace(mask=self.mask, response=None if self.mask is None else self.mask.astype(float))


def test_segmenter_adapters_pass_the_protocol_object():
    protocol = load_protocol("sclip").for_benchmark("voc21")
    seg = _FakeSegmenter(np.array([[0, 1], [2, 3]]))
    with_bg = SegmenterSemsegPredictor(seg, protocol, has_background=True)
    out = with_bg(np.zeros((2, 2, 3), np.uint8), ["background", "aeroplane", "bicycle", "bird"])
    assert out.tolist() == [[0, 1], [2, 3]]
    classes, got, overrides = seg.calls[-1]
    assert classes == ["aeroplane", "bicycle", "bird"] and overrides == {}
    assert got is protocol  # exactly what the segmenter receives

    seg = _FakeSegmenter(np.array([[1, 2], [3, 1]]))
    no_bg = SegmenterSemsegPredictor(seg, protocol.replace(bg_score=0.2), has_background=False)
    out = no_bg(np.zeros((2, 2, 3), np.uint8), ["aeroplane", "bicycle", "bird"])
    assert out.tolist() == [[0, 1], [2, 0]]  # labels shifted down by one
    classes, got, _ = seg.calls[-1]
    assert classes == ["aeroplane", "bicycle", "bird"]
    assert got.background is None and got.background_classes == [] and got.bg_score is None
    assert (got.short_side, got.window, got.stride, got.templates) == (336, 224, 112, "imagenet80")

    seg = _FakeSegmenter(mask=np.ones((2, 2), bool))
    ris_protocol = Protocol(name="ris", short_side=320, templates="single")
    res = SegmenterRISPredictor(seg, ris_protocol)(np.zeros((2, 2, 3), np.uint8), "the dog")
    assert isinstance(res, RISOutput) and res.mask.all() and res.response.shape == (2, 2)
    assert seg.calls[-1] == ("the dog", ris_protocol, {})


def test_adapters_drive_the_real_segmenter(tiny_model):
    # The fakes above check the plumbing; this one checks that the adapters match the real Segmenter's signature.
    from textseg.segmenter import Segmenter

    seg = Segmenter(tiny_model, text_cache_dir=False)
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    protocol = load_protocol("workbench", ["short_side=32"])
    names = ["background", "cat", "dog"]
    with_bg = SegmenterSemsegPredictor(seg, protocol, has_background=True)(image, names)
    assert with_bg.shape == (40, 56) and with_bg.min() >= 0 and with_bg.max() <= 2
    no_bg = SegmenterSemsegPredictor(seg, protocol, has_background=False)(image, ["cat", "dog", "bird"])
    assert no_bg.shape == (40, 56) and no_bg.min() >= 0 and no_bg.max() <= 2  # 3 classes, no background label
    res = SegmenterRISPredictor(seg, protocol)(image, "the cat on the left")
    assert res.mask.shape == (40, 56) and res.mask.dtype == bool and res.mask.any()


def test_protocol_presets_and_errors(tmp_path):
    g = load_protocol("groupvit")
    assert (g.short_side, g.window, g.stride, g.templates) == (448, 448, 224, "single")
    assert g.background == "threshold" and g.background_classes == [] and g.bg_score is None
    assert g.for_benchmark("voc21").bg_threshold == 0.95
    assert g.for_benchmark("context60").bg_threshold == 0.35 and g.for_benchmark("context60").per_benchmark == {}
    s = load_protocol("sclip")
    assert s.short_side == 336 and len(s.background_classes) == 26
    w = load_protocol("workbench", ["bg_score=0.3"])
    assert (w.short_side, w.window, w.bg_score) == (96, None, 0.3)
    # A user file by path; fields left out take the defaults.
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\nshort_side: 224\ntemplates: single\n"
                    "per_benchmark:\n  voc20:\n    templates: imagenet80\n")
    p = load_protocol(mine)
    assert (p.short_side, p.templates, p.window, p.bg_threshold) == (224, "single", None, 0.5)
    assert p.for_benchmark("voc20").templates == "imagenet80" and p.for_benchmark("voc21").templates == "single"

    with pytest.raises(ConfigError, match="nope.*groupvit"):  # the message lists the presets
        load_protocol("nope")
    for text, field in [
        ("short_side: big\n", "short_side"),  # wrong type
        ("bg_threshold: [1]\n", "bg_threshold"),
        ("templates_x: single\n", "templates_x"),  # unknown field
        ("templates: many\n", "templates"),  # not a template set
        ("window: 448\n", "window"),  # window without stride
        ("smooth_sigma: -1\n", "smooth_sigma"),  # a negative standard deviation
        ("per_benchmark:\n  voc21:\n    bg_treshold: 0.3\n", "bg_treshold"),  # typo in an override: at load time
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=field):
            load_protocol(bad)
    with pytest.raises(ConfigError, match="short_side"):
        load_protocol("groupvit", ["short_side=wide"])
    with pytest.raises(ConfigError, match="bg_treshold"):
        g.replace(bg_treshold=0.1)


def test_semseg_and_ris_benchmarks_by_name(tmp_path):
    # What `textseg eval semseg|ris` runs once it has a segmenter and a protocol.
    protocol = load_protocol("groupvit").replace(per_benchmark={"voc21": {"bg_threshold": 0.3}})
    seg = _FakeSegmenter()  # all background
    res = run_semseg_benchmark(seg, "voc21", VOC, "val", protocol, tmp_path / "sem", progress=False,
                               meta={"config": {"args": {"model": "m1"}}})
    assert res["metrics"]["mIoU"] == pytest.approx(100 * (BG / (BG + AERO)) / 2)
    assert seg.calls[0][1].bg_threshold == 0.3 and seg.calls[0][1].per_benchmark == {}  # resolved for voc21
    saved = json.loads((tmp_path / "sem" / "results.json").read_text())
    assert saved["meta"]["config"]["args"] == {"model": "m1"}
    assert saved["meta"]["config"]["protocol"]["bg_threshold"] == 0.3
    assert saved["meta"]["config"]["protocol"]["window"] == 448

    _refer_fixture(tmp_path / "refer")
    seg = _FakeSegmenter(mask=None)  # never answers
    res = run_ris_benchmark(seg, tmp_path / "refer", "refcoco", "unc", "testA", Protocol(short_side=320),
                            tmp_path / "ris", progress=False)
    assert seg.calls[0][0] == "red car at the top" and seg.calls[0][1].short_side == 320
    saved = json.loads((tmp_path / "ris" / "results.json").read_text())
    assert saved["metrics"]["mIoU"] == 0.0 and saved["metrics"]["oIoU"] == 0.0 and saved["n_no_mask"] == 1
    assert saved["metrics"]["PointM"] is None and saved["meta"]["config"]["protocol"]["short_side"] == 320
    assert summary_line(res).startswith("refcoco (unc) testA (1 sentences): oIoU 0.00")


def one_image(image, label):
    """A VOC-like dataset of one image (classes: background, thing)."""

    class OneImage:
        class_names = ["background", "thing"]
        ignore_index = 255
        has_background = True

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": image, "label": label, "id": "x"}

    return OneImage


def test_calibrate_bg_score_picks_the_best_constant():
    import torch

    groups = np.zeros((4, 4), dtype=np.int64)
    groups[:, 2:] = 1
    label = np.zeros((4, 4), dtype=np.uint8)
    label[:, :2] = 1  # left half is the class, right half background

    class FakeSegmenter:
        logit_scale = 10.0

        def grouping_similarities(self, image, names, protocol=None, **overrides):
            assert protocol.templates == "single" and not overrides
            if protocol.group_counts:  # halves with the right one nearer "thing", then the whole image as one region
                return [{2: (groups, torch.tensor([[0.6], [0.38]])), 1: (np.zeros_like(groups),
                                                                         torch.tensor([[0.2]]))}[k]
                        for k in protocol.group_counts]
            # Region 0 (left) is more like "thing"; region 1 is most like the background class "sky".
            sims = {("thing",): [[0.6], [0.3]], ("thing", "sky"): [[0.6, 0.1], [0.3, 0.35]]}[tuple(names)]
            return [(groups, torch.tensor(sims))]

    OneImage = one_image(np.zeros((4, 4, 3), np.uint8), label)
    protocol = Protocol(templates="single")
    best, scores = calibrate_bg_score(FakeSegmenter(), OneImage(), protocol, candidates=(0.0, 0.4, 0.7),
                                      progress=False)
    # 0.0: both regions "thing" -> IoU bg 0, thing 8/16 -> 25; 0.4: exact -> 100; 0.7: all bg -> (8/16 + 0) / 2 -> 25
    assert best == 0.4
    assert scores == {0.0: 25.0, 0.4: 100.0, 0.7: 25.0}
    # A background class that wins a region makes it background whatever the constant.
    best, scores = calibrate_bg_score(FakeSegmenter(), OneImage(), protocol.replace(background_classes=["sky"]),
                                      candidates=(0.0, 0.7), progress=False)
    assert best == 0.0 and scores == {0.0: 100.0, 0.7: 25.0}

    # Two groupings: pixel probabilities averaged. At 0.35 the halves alone call the right half "thing"
    # (p = 0.57); with the whole image (0.2, p = 0.18) averaged in it is background (0.38 < 0.5), the left half
    # stays "thing" ((0.92 + 0.18) / 2 > 0.5).
    _, alone = calibrate_bg_score(FakeSegmenter(), OneImage(), protocol.replace(group_counts=[2]),
                                  candidates=(0.35,), progress=False)
    _, both = calibrate_bg_score(FakeSegmenter(), OneImage(), protocol.replace(group_counts=[2, 1]),
                                 candidates=(0.35,), progress=False)
    assert alone == {0.35: 25.0} and both == {0.35: 100.0}

    no_bg = OneImage()
    no_bg.has_background = False
    with pytest.raises(ConfigError, match="background"):
        calibrate_bg_score(FakeSegmenter(), no_bg, protocol, progress=False)


def test_calibrate_bg_score_sums_each_candidates_probabilities_over_the_grid_offsets():
    import torch

    groups = np.zeros((4, 4), dtype=np.int64)
    groups[:, 2:] = 1
    label = np.zeros((4, 4), dtype=np.uint8)
    label[:, :2] = 1

    class FakeSegmenter:
        logit_scale = 10.0

        def grouping_similarities(self, image, names, protocol=None, **overrides):  # one grouping, its grids
            grids = [torch.tensor([[0.6], [0.38]]), torch.tensor([[0.6], [0.30]])]
            return [(groups, sims) for sims in grids[: protocol.grid_shifts]]

    OneImage = one_image(np.zeros((4, 4, 3), np.uint8), label)
    protocol = Protocol(templates="single", short_side=None)
    # at 0.35 the right half on the first grid alone is "thing" (sigmoid(0.3) = 0.57); the second grid's 0.30
    # (sigmoid(-0.5) = 0.38) makes its summed probability 0.95 < 1.05 for the background: background, exact
    _, one = calibrate_bg_score(FakeSegmenter(), OneImage(), protocol, candidates=(0.35, 0.7), progress=False)
    _, two = calibrate_bg_score(FakeSegmenter(), OneImage(), protocol.replace(grid_shifts=2, smooth_sigma=0.0),
                                candidates=(0.35, 0.7), progress=False)
    assert one == {0.35: 25.0, 0.7: 25.0} and two == {0.35: 100.0, 0.7: 25.0}


def test_calibrate_bg_score_with_refinement_rescores_the_best_and_its_neighbours(monkeypatch):
    import torch

    from textseg.eval import calibration

    groups = np.zeros((4, 4), dtype=np.int64)
    groups[:, 3] = 1  # region 0 straddles the colour edge: the black left half and the first white column
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 2:] = 255
    label = np.zeros((4, 4), dtype=np.uint8)
    label[:, :2] = 1  # the class is the black half

    class FakeSegmenter:
        logit_scale = 10.0
        pipeline = SimpleNamespace(to_device=lambda arr, p: torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)
        calls = 0

        def grouping_similarities(self, image, names, protocol=None, **overrides):
            FakeSegmenter.calls += 1
            return [(groups, torch.tensor([[0.6], [0.1]]))]

    OneImage = one_image(image, label)
    protocol = Protocol(templates="single", short_side=None)
    candidates = (-0.4, -0.2, 0.0, 0.4, 0.7, 0.8, 0.9)
    best, plain = calibrate_bg_score(FakeSegmenter(), OneImage(), protocol, candidates=candidates, progress=False)
    # 0.4: region 0 "thing" (p = sigmoid(2) = 0.88), region 1 background (sigmoid(-3) = 0.05): the white column 2
    # is wrong, IoU thing 8/12, background 4/8
    assert best == 0.4 and plain[0.4] == pytest.approx(100 * (8 / 12 + 4 / 8) / 2)
    best, refined = calibrate_bg_score(FakeSegmenter(), OneImage(), protocol.replace(pamr_steps=1,
                                       pamr_dilations=[1]), candidates=candidates, progress=False)
    # refined (PAMR), column 2 averages its white neighbours only (two copies of itself, three of column 3):
    # (2 * 0.88 + 3 * 0.05) / 5 < 0.5, background; only the best unrefined candidate and two on each side are
    # scored again
    assert best == 0.4 and sorted(refined) == [-0.2, 0.0, 0.4, 0.7, 0.8]
    assert refined[0.4] == 100.0 and refined[0.0] == 25.0 and refined[0.7] == 25.0
    assert FakeSegmenter.calls == 2  # one per calibration: the second pass reads the first's similarities
    monkeypatch.setattr(calibration, "CACHE_BYTES", 0)  # nothing fits: the second pass computes them again
    again = calibrate_bg_score(FakeSegmenter(), OneImage(), protocol.replace(pamr_steps=1, pamr_dilations=[1]),
                               candidates=candidates, progress=False)
    assert again == (best, refined) and FakeSegmenter.calls == 4


def _lines(path):
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_resume_drops_partial_malformed_and_duplicate_lines(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_semseg(_CountingPredictor(fail_at=4), _ToyDataset(), out, progress=False)
    samples = out / "samples.jsonl"
    good = samples.read_text().splitlines()
    assert len(good) == 1 + 3
    samples.write_text("\n".join([
        good[0], good[1],
        good[1],  # the same sample twice
        '{"i": 2, "id": "s2", "conf": [[0, 0, 4], [7, 0, 1]]}',  # a ground-truth class the toy set lacks
        '{"i": 9, "id": "s9", "conf": []}',  # no such sample
        '[1, 2]', '{"i": true, "conf": []}', '{"id": "x"}', "\x00\x00\x00",
        good[3],
        '{"i": 3, "id": "s3", "co',  # cut short by a kill mid-append, no newline
    ]))
    second = _CountingPredictor()
    res = evaluate_semseg(second, _ToyDataset(), out, progress=False)
    assert second.calls == 3  # kept: sample 0 and the valid row of sample 2; recomputed: 1, 3, 4
    rows = _lines(samples)
    assert rows[0] == {"header": json.loads(good[0])["header"]}
    assert sorted(r["i"] for r in rows[1:]) == [0, 1, 2, 3, 4]  # each sample exactly once, no garbage left
    assert res["metrics"]["mIoU"] == pytest.approx(40 / 3)


def test_samples_file_that_is_no_header_or_another_evaluation(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "samples.jsonl").write_text("")  # an empty file (e.g. a copy cut short) is started over
    evaluate_semseg(_CountingPredictor(), _ToyDataset(), out, progress=False, limit=2)
    assert len(_lines(out / "samples.jsonl")) == 3
    for text in ('{"i": 0}\n', "garbage", "\xff"):
        (out / "samples.jsonl").write_text(text, encoding="latin-1")
        with pytest.raises(ConfigError, match="not a samples file"):
            evaluate_semseg(_CountingPredictor(), _ToyDataset(), out, progress=False)
    # Samples scored with another model (key) are not mixed in.
    evaluate_semseg(_CountingPredictor(), _ToyDataset(), out, progress=False, key={"model": "a"}, resume=False)
    with pytest.raises(ConfigError, match="different evaluation"):
        evaluate_semseg(_CountingPredictor(), _ToyDataset(), out, progress=False, key={"model": "b"})
    again = _CountingPredictor()
    evaluate_semseg(again, _ToyDataset(), out, progress=False, key={"model": "a"})
    assert again.calls == 0


def test_overlay_is_written_before_the_row(tmp_path, monkeypatch):
    import textseg.eval.runner as runner

    def failing_save(image, path):
        raise OSError("disk full")

    monkeypatch.setattr(runner, "save_png", failing_save)
    with pytest.raises(OSError, match="disk full"):
        evaluate_semseg(_CountingPredictor(), _ToyDataset(), tmp_path, progress=False, overlays=2)
    assert len(_lines(tmp_path / "samples.jsonl")) == 1  # the sample whose overlay failed is not stored
    monkeypatch.undo()
    calls = _CountingPredictor()
    evaluate_semseg(calls, _ToyDataset(), tmp_path, progress=False, overlays=2)
    assert calls.calls == 5
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["00000_s0.png", "00001_s1.png"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left


def test_out_dir_that_is_a_file_or_negative_overlays(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is an existing file, not a folder"):
        evaluate_semseg(_CountingPredictor(), _ToyDataset(), tmp_path / "file", progress=False)
    with pytest.raises(ConfigError, match="cannot be created"):
        evaluate_semseg(_CountingPredictor(), _ToyDataset(), tmp_path / "file" / "sub", progress=False)
    with pytest.raises(ConfigError, match="overlays"):
        evaluate_semseg(_CountingPredictor(), _ToyDataset(), tmp_path / "o", progress=False, overlays=-1)


def test_evaluate_ris_reports_outcomes_and_the_proposal_oracle(tmp_path):
    from textseg.data import RefDataset

    _refer_fixture(tmp_path / "refer")
    ds = RefDataset(tmp_path / "refer", "refcoco", "unc", "val")
    inst = ds.instances(2)
    assert [(a, c) for a, c, _ in inst] == [(11, 18), (12, 3)] and inst[0][2].sum() == 3
    car, dog = inst[1][2], inst[0][2]

    def predictor(image, sentence):
        if sentence == "the dog":  # the car chosen among proposals that hold the dog: wrong kind, oracle 1
            return RISOutput(mask=car, proposals=np.stack([car, dog]))
        if sentence == "person in blue":
            return None
        return RISOutput(mask=ds[0]["mask"], proposals=np.stack([ds[0]["mask"]]))

    res = evaluate_ris(predictor, ds, tmp_path / "out", progress=False)
    assert res["outcomes"]["n"] == 3
    assert res["outcomes"]["hit"] == pytest.approx(100 / 3) and res["outcomes"]["wrong_kind"] == pytest.approx(100 / 3)
    assert res["outcomes"]["no_mask"] == pytest.approx(100 / 3)
    assert res["proposal_oracle"] == pytest.approx(100.0) and res["proposals_per_sentence"] == pytest.approx(1.5)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Proposal oracle" in md and "| hit | poor_mask |" in md
