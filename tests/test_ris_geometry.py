"""Geometric scores of proposals for a spatial reading, against hand-computed values, and the referrer using them."""

from __future__ import annotations

import numpy as np
import pytest

from textseg.ris.geometry import ProposalGeometry, rank_score, relation_score, spatial_scores
from textseg.ris.spatial import SpatialReading


def _boxes(*boxes: tuple[int, int, int, int], size: tuple[int, int] = (10, 20)) -> np.ndarray:
    masks = np.zeros((len(boxes), *size), dtype=bool)
    for m, (y0, y1, x0, x1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return masks


def test_geometry_of_masks_in_image_fractions():
    geom = ProposalGeometry.from_masks(_boxes((0, 2, 0, 4), (5, 10, 10, 20)))
    assert geom.cx.tolist() == pytest.approx([0.1, 0.75])  # columns 0..3 of 20: centre 2 / 20
    assert geom.cy.tolist() == pytest.approx([0.1, 0.75])
    assert geom.area.tolist() == pytest.approx([8 / 200, 50 / 200])
    assert geom.x0.tolist() == pytest.approx([0.0, 0.5]) and geom.x1.tolist() == pytest.approx([0.2, 1.0])
    assert geom.y0.tolist() == pytest.approx([0.0, 0.5]) and geom.y1.tolist() == pytest.approx([0.2, 1.0])


def test_rank_score_orders_the_candidates_only():
    values = np.array([0.5, 0.1, 0.9, 0.3])
    cand = np.array([True, True, True, False])
    assert rank_score(values, cand, ascending=True).tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0])
    assert rank_score(values, cand, ascending=False).tolist() == pytest.approx([0.5, 0.0, 1.0, 0.0])
    assert rank_score(values, cand, ascending=True, ordinal=2).tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0])


def test_relation_scores_point_the_right_way():
    geom = ProposalGeometry.from_masks(_boxes((4, 6, 0, 2), (4, 6, 9, 11), (4, 6, 18, 20), (0, 2, 9, 11)))
    cand = np.ones(4, dtype=bool)
    left = relation_score("left_of", geom, 1, cand)
    right = relation_score("right_of", geom, 1, cand)
    assert left[0] > 0.99 and left[2] < 0.01 and left[1] == 0  # the anchor itself scores 0
    assert right[2] > 0.99 and right[0] < 0.01
    above = relation_score("above", geom, 1, cand)
    assert above[3] > 0.99 and above[0] == pytest.approx(0.5)
    assert relation_score("behind", geom, 1, cand) is None


def test_spatial_scores_let_geometry_choose_among_the_candidates_only():
    geom = ProposalGeometry.from_masks(_boxes((4, 6, 0, 2), (4, 6, 9, 11), (4, 6, 18, 20)))
    appearance = np.array([10.0, 10.5, 3.0])  # the right-hand one is of the wrong kind
    reading = SpatialReading("the dog on the right", head="dog", horizontal="right")
    fused, info = spatial_scores(appearance, reading, geom, margin=2.0, weight=2.0)
    assert info["candidates"] == 2 and info["terms"] == ["absolute"]
    assert fused.tolist() == pytest.approx([10.0, 12.5, 3.0])  # rightmost candidate +2, the other +0
    reading = SpatialReading("the dog on the left", head="dog", horizontal="left")
    fused, _ = spatial_scores(appearance, reading, geom, margin=2.0, weight=2.0)
    assert int(fused.argmax()) == 0
    plain = SpatialReading("the dog", head="dog")
    assert spatial_scores(appearance, plain, geom)[0] is appearance


def test_the_referrer_reads_left_and_right(tmp_path):
    from textseg import Segmenter, create_model

    seg = Segmenter(create_model("tiny", pretrained=False, seed=0), text_cache_dir=False, short_side=64)
    image = np.full((64, 96, 3), 128, dtype=np.uint8)
    masks = _boxes((20, 44, 4, 28), (20, 44, 68, 92), size=(64, 96))
    for sentence, want in (("the square on the left", 0), ("the square on the right", 1)):
        res = seg.refer(image, sentence, proposals=masks, spatial=True, spatial_margin=1e6, spatial_weight=1e3)
        assert res.index == want, sentence
        assert res.reading["horizontal"] == sentence.split()[-1] and res.reading["head"] == "square"
    assert seg.refer(image, "the square on the left", proposals=masks).reading is None


def test_refer_cli_writes_the_reading(tmp_path):
    import json

    from PIL import Image

    from textseg.cli import main

    Image.fromarray(np.full((64, 96, 3), 128, dtype=np.uint8)).save(tmp_path / "a.png")
    base = ["refer", str(tmp_path / "a.png"), "the dog to the left of the bus", "--model", "tiny", "--no-pretrained",
            "--device", "cpu", "--short-side", "64"]
    assert main([*base, "--spatial", "--out", str(tmp_path / "o")]) == 0
    summary = json.loads((tmp_path / "o" / "a.json").read_text())
    assert summary["reading"]["relation"] == "left_of" and summary["reading"]["anchor"] == "bus"
    assert summary["reading"]["head"] == "dog" and summary["reading"]["applied"] is True
    assert main([*base, "--out", str(tmp_path / "p")]) == 0
    plain = json.loads((tmp_path / "p" / "a.json").read_text())["reading"]  # read, but not used by the scores
    assert plain["relation"] == "left_of" and plain["applied"] is False and "terms" not in plain
    assert main([*base, "--spatial", "--spatial-weight", "-1", "--out", str(tmp_path / "q")]) == 2


def test_referring_overlay_wraps_the_sentence_under_the_image():
    from textseg.visualize import referring_overlay, wrap_text

    assert wrap_text("aa bb cc", 5, len) == ["aa bb", "cc"]
    assert wrap_text("abcdefgh ij", 5, len) == ["abcdefgh", "ij"]
    image = np.full((96, 96, 3), 200, dtype=np.uint8)
    mask = np.zeros((96, 96), dtype=bool)
    mask[10:20, 10:20] = True
    short = referring_overlay(image, mask, "the dog")
    long = referring_overlay(image, mask, "the second small dog from the left next to the big red bus " * 3)
    assert short.size[0] == long.size[0] == 240 and long.size[1] > short.size[1] > 96
    top = np.array(long)[:96, :96]
    assert (top[15, 15] != image[15, 15]).any() and (top[50, 50] == image[50, 50]).all()  # tinted; no text over it
