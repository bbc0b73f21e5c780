"""Fault cases of `textseg refer`, and its outputs on a real run (tiny model, random weights)."""

import json

import numpy as np
import pytest
from PIL import Image

from faults import TINY, fault  # noqa: F401  (fixture)


@pytest.fixture
def discs(tmp_path):
    img = np.full((64, 128, 3), 255, np.uint8)
    yy, xx = np.mgrid[:64, :128]
    img[((yy - 32) ** 2 + (xx - 32) ** 2 < 256) | ((yy - 32) ** 2 + (xx - 96) ** 2 < 256)] = (200, 20, 20)
    Image.fromarray(img).save(tmp_path / "discs.png")
    return tmp_path / "discs.png"


def refer(image, sentence, out, *extra):
    return ["refer", image, sentence, "--out", out, *TINY, "--short-side", "64", *extra]


def test_refer_writes_mask_overlay_and_json(fault, discs, tmp_path):
    fault.ok(refer(discs, "the red disc on the left", tmp_path / "o", "--rle"))
    mask = np.array(Image.open(tmp_path / "o" / "discs_mask.png"))
    summary = json.loads((tmp_path / "o" / "discs.json").read_text())
    assert mask.shape == (64, 128) and set(np.unique(mask)) <= {0, 255} and (mask > 0).any()
    assert summary["index"] is not None and not summary["no_target"]
    assert summary["score"] == pytest.approx(max(summary["proposal_scores"]))
    assert len(summary["proposal_scores"]) == len(summary["proposal_records"]) >= 2
    from pycocotools import mask as mask_utils

    rle = summary["rle"]
    assert (mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}) == (mask > 0)).all()
    overlay = Image.open(tmp_path / "o" / "discs_overlay.png")
    assert overlay.size[0] == 240 and overlay.size[1] > 64  # the sentence wrapped in a band under the image
    # without --spatial the JSON still says how the sentence reads, and that the scores did not use it
    reading = summary["reading"]
    assert reading["horizontal"] == "left" and reading["applied"] is False and "disc" in reading["head"]
    fault.ok(refer(discs, "the red disc on the left", tmp_path / "s", "--spatial"))
    spatial = json.loads((tmp_path / "s" / "discs.json").read_text())["reading"]
    assert spatial["applied"] is True and spatial["horizontal"] == "left" and "terms" in spatial


def test_refer_no_target_threshold_gives_an_empty_mask(fault, discs, tmp_path):
    fault.ok(refer(discs, "a cat", tmp_path / "o", "--no-target-threshold", "1000", "--method", "region"))
    assert not np.array(Image.open(tmp_path / "o" / "discs_mask.png")).any()
    assert json.loads((tmp_path / "o" / "discs.json").read_text())["no_target"] is True


@pytest.mark.parametrize("extra,fragment", [
    (["--alpha", "1.5"], "--alpha must be in [0, 1]"),
    (["--beta", "-0.1"], "--beta must be in [0, 1]"),
    (["--short-side", "-2"], "--short-side"),
    (["--proposals", "nope.json"], "nope.json: no such mask file"),
    (["--proposals", "sam"], "sam"),
    (["--method", "crop"], "--method"),
    (["--mode", "reference", "--method", "region"], "no reference mode"),
], ids=["alpha", "beta", "short-side", "proposals-missing", "sam-without-checkpoint", "method", "region-reference"])
def test_refer_bad_options(fault, discs, tmp_path, extra, fragment):
    fault.error(refer(discs, "the left disc", tmp_path / "o", *extra), fragment)


def test_refer_missing_image_and_empty_sentence(fault, tmp_path, discs):
    fault.error(refer(tmp_path / "nope.jpg", "x", tmp_path / "o"), "nope.jpg does not exist")
    fault.error(refer(discs, "  ", tmp_path / "o"), "sentence is empty")


def test_refer_proposals_of_another_size(fault, discs, tmp_path):
    Image.fromarray(np.eye(10, dtype=np.uint8) * 255).save(tmp_path / "m.png")
    fault.error(refer(discs, "the left disc", tmp_path / "o", "--proposals", tmp_path / "m.png"), "m.png")


def test_refer_does_not_replace_outputs(fault, discs, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "discs.json").write_text("keep")
    fault.error(refer(discs, "the left disc", tmp_path / "o"), "exists", "--overwrite")
    assert (tmp_path / "o" / "discs.json").read_text() == "keep"
