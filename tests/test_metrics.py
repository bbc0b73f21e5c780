"""Metric definitions checked against values computed by hand on 2x3 toy cases."""

import math

import numpy as np
import pytest

from textseg.metrics import RISMetric, SemsegMetric, ris_sample_stats

GT = np.array([[0, 0, 1], [1, 255, 0]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])


def test_semseg_toy_case_with_ignore_and_absent_class():
    # Valid pixels (gt != 255): 5 pairs (gt, pred) = (0,0) (0,1) (1,1) (1,1) (0,2); the pred 0 under 255 is dropped.
    # class 0: TP 1, FP 0, FN 2        -> IoU 1/3, Acc 1/3
    # class 1: TP 2, FP 1 (0->1), FN 0 -> IoU 2/3, Acc 2/2
    # class 2: TP 0, FP 1, FN 0        -> IoU 0/1 = 0 (predicted, so it counts), Acc undefined (no GT pixels)
    # class 3: absent from prediction and GT -> IoU NaN, left out of the mean
    # mIoU = (1/3 + 2/3 + 0) / 3 = 1/3; aAcc = 3/5; mAcc = (1/3 + 1) / 2 = 2/3
    metric = SemsegMetric(num_classes=4)
    metric.update(PRED, GT)
    r = metric.compute()
    assert r["mIoU"] == pytest.approx(100 / 3)
    assert r["aAcc"] == pytest.approx(60.0)
    assert r["mAcc"] == pytest.approx(200 / 3)
    assert r["IoU"][:3] == pytest.approx([100 / 3, 200 / 3, 0.0])
    assert math.isnan(r["IoU"][3])
    assert r["Acc"][:2] == pytest.approx([100 / 3, 100.0])
    assert math.isnan(r["Acc"][2]) and math.isnan(r["Acc"][3])


def test_semseg_accumulates_over_the_split_not_per_image():
    # Image A: gt all 0, pred all 0 (6 px). Image B: gt all 1, pred all 0 (6 px).
    # Accumulated: class 0 TP 6, FP 6 -> IoU 1/2; class 1 TP 0, FN 6 -> IoU 0; mIoU = 1/4.
    # (Averaging per-image mIoUs would give (1 + 0) / 2 instead.)
    metric = SemsegMetric(num_classes=2)
    metric.update(np.zeros((2, 3), int), np.zeros((2, 3), int))
    metric.update(np.zeros((2, 3), int), np.ones((2, 3), int))
    assert metric.compute()["mIoU"] == pytest.approx(25.0)


def test_semseg_empty_prediction_scores_zero():
    # Nothing predicted (every pixel 255, outside [0, 3)): classes 0 and 1 have TP 0 and FN > 0 -> IoU 0, Acc 0;
    # class 2 is absent from both -> NaN. mIoU = mAcc = aAcc = 0.
    metric = SemsegMetric(num_classes=3)
    metric.update(np.full((2, 3), 255), GT)
    r = metric.compute()
    assert r["mIoU"] == 0.0 and r["aAcc"] == 0.0 and r["mAcc"] == 0.0
    assert r["IoU"][:2] == [0.0, 0.0] and math.isnan(r["IoU"][2])


def test_semseg_out_of_range_prediction_is_a_false_negative_only():
    # gt [[1,1,0],[0,0,255]], pred [[7,1,0],[0,-1,3]], 2 classes. Valid pairs: (1,7) (1,1) (0,0) (0,0) (0,-1).
    # class 0: TP 2, FN 1 (the -1), FP 0 -> IoU 2/3; class 1: TP 1, FN 1 (the 7), FP 0 -> IoU 1/2.
    # The 3 under the ignore pixel is not counted. mIoU = (2/3 + 1/2) / 2 = 7/12; aAcc = 3/5.
    metric = SemsegMetric(num_classes=2)
    metric.update(np.array([[7, 1, 0], [0, -1, 3]]), np.array([[1, 1, 0], [0, 0, 255]]))
    r = metric.compute()
    assert r["IoU"] == pytest.approx([200 / 3, 50.0])
    assert r["mIoU"] == pytest.approx(700 / 12)
    assert r["aAcc"] == pytest.approx(60.0)


def test_semseg_errors():
    metric = SemsegMetric(num_classes=2)
    with pytest.raises(ValueError, match="shape"):
        metric.update(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="ground-truth label 5"):
        metric.update(np.zeros((2, 3)), np.full((2, 3), 5))


def test_semseg_confusion_roundtrip():
    a = SemsegMetric(num_classes=3)
    conf = a.update(PRED, GT)
    b = SemsegMetric(num_classes=3)
    b.add_confusion(conf)
    assert b.compute()["mIoU"] == pytest.approx(a.compute()["mIoU"])
    assert conf.sum() == 5  # ignore pixel excluded


G = np.array([[1, 1, 0], [0, 1, 0]], bool)  # |G| = 3


def test_ris_toy_case():
    metric = RISMetric()
    # A: P = {(0,0), (1,1), (1,2)}: I = 2, U = |{(0,0), (0,1), (1,1), (1,2)}| = 4 -> IoU 0.5.
    #    Response peaks at (0,1), inside G -> hit.
    resp_a = np.zeros((2, 3), np.float32)
    resp_a[0, 1] = 1.0
    assert metric.update(np.array([[1, 0, 0], [0, 1, 1]], bool), G, resp_a) == (2, 4, True)
    # B: no mask -> I = 0, U = |G| = 3, IoU 0; counted, not skipped. No response.
    assert metric.update(None, G) == (0, 3, None)
    # C: P = G -> I = 3, U = 3, IoU 1. Response peaks at (1,2), outside G -> miss.
    resp_c = np.zeros((2, 3), np.float32)
    resp_c[1, 2] = 5.0
    assert metric.update(G.copy(), G, resp_c) == (3, 3, False)
    # D: empty prediction -> I = 0, U = 3, IoU 0.
    assert metric.update(np.zeros((2, 3), bool), G) == (0, 3, None)
    r = metric.compute()
    # oIoU = (2 + 0 + 3 + 0) / (4 + 3 + 3 + 3) = 5/13; mIoU = (0.5 + 0 + 1 + 0) / 4 = 0.375
    assert r["oIoU"] == pytest.approx(500 / 13)
    assert r["mIoU"] == pytest.approx(37.5)
    # IoUs 0.5, 0, 1, 0: Prec@0.5 = 2/4 (0.5 >= 0.5), Prec@0.6..0.9 = 1/4
    assert r["Prec@0.5"] == pytest.approx(50.0)
    for t in ("0.6", "0.7", "0.8", "0.9"):
        assert r[f"Prec@{t}"] == pytest.approx(25.0)
    # PointM over the 2 samples with a response: 1 hit of 2
    assert r["PointM"] == pytest.approx(50.0)
    assert r["n"] == 4


def test_ris_pointm_absent_and_empty_union():
    metric = RISMetric()
    # A target whose prediction and ground truth do not meet: IoU 0; U > 0
    metric.add(0, 5, None)
    # Empty GT: a no-target sample; an empty prediction is the right answer, and it is kept out of the IoUs
    metric.update(np.zeros((2, 3), bool), np.zeros((2, 3), bool))
    r = metric.compute()
    assert r["mIoU"] == 0.0 and r["Prec@0.5"] == 0.0 and r["n"] == 1 and r["oIoU"] == 0.0
    assert r["PointM"] is None and r["N-acc"] == 100.0 and r["n_no_target"] == 1
    empty = RISMetric().compute()
    assert math.isnan(empty["oIoU"]) and math.isnan(empty["mIoU"]) and empty["n"] == 0


def test_ris_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        ris_sample_stats(np.zeros((3, 2), bool), G)


def test_ris_metric_scores_no_target_samples_by_n_acc_only():
    m = RISMetric()
    m.update(np.array([[True, False]]), np.array([[True, False]]))  # a target, IoU 1
    m.update(None, np.zeros((1, 2), bool))  # no target, no mask: right
    m.update(np.zeros((1, 2), bool), np.zeros((1, 2), bool))  # no target, an empty mask: right
    m.update(np.array([[False, True]]), np.zeros((1, 2), bool))  # no target, a mask: wrong
    for inter, union, target in [(0, 0, False), (0, 1, False)]:  # as resumed rows
        m.add(inter, union, None, target)
    out = m.compute()
    assert out["n"] == 1 and out["mIoU"] == 100.0 and out["oIoU"] == 100.0
    assert out["n_no_target"] == 5 and out["N-acc"] == pytest.approx(60.0)


def test_no_target_threshold_by_balanced_accuracy():
    from textseg.eval.calibration import choose_no_target_threshold

    # targets 3, 4, 5 and one without proposals (-inf, never answered); no-target sentences 1, 2, 3.5.
    # At 2.5: 3/4 targets answered, 2/3 no-targets refused (70.8 %); at 3.75: 2/4 and 3/3 (75 %, the best)
    t, balanced = choose_no_target_threshold([3.0, 4.0, 5.0, float("-inf")], [1.0, 2.0, 3.5])
    assert t == pytest.approx(3.75) and balanced == pytest.approx(75.0)
    with pytest.raises(Exception, match="with and without a target"):
        choose_no_target_threshold([], [1.0])
