"""Fault cases of `textseg eval semseg|ris`: option values, broken benchmark folders, malformed ground truth and
refer files, and output folders left by an interrupted run.

Each case is one bad (or unusual) input; see tests/fault/faults.py for the outcome classes.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faults import TINY, fault  # noqa: F401  (fixture)
from test_data import _refer_fixture
from test_eval_resume import make_voc


def semseg(root: Path, out: Path, *extra: object) -> list[str]:
    return ["eval", "semseg", "--dataset", "voc21", "--root", str(root), "--out", str(out), "--protocol", "workbench",
            "--no-progress", *TINY, *map(str, extra)]


def ris(root: Path, out: Path, *extra: object) -> list[str]:
    return ["eval", "ris", "--root", str(root), "--out", str(out), "--short-side", "32", "--no-progress", *TINY,
            *map(str, extra)]


@pytest.fixture
def voc(tmp_path) -> Path:
    """A VOC-layout dataset of two 240x180 images (its ``VOC2012`` folder is ``voc / "VOC2012"``)."""
    return make_voc(tmp_path / "voc", 2)


def _base(voc: Path) -> Path:
    return voc / "VOC2012"


def _mask(voc: Path, k: int = 1) -> Path:
    return _base(voc) / "SegmentationClass" / f"2007_{k:06d}.png"


def _save_mask(voc: Path, array: np.ndarray, k: int = 1) -> None:
    palette = Image.open(_mask(voc, 0)).getpalette()
    img = Image.fromarray(array)
    img.putpalette(palette)
    img.save(_mask(voc, k))


def _stored(out: Path) -> list[int]:
    """The sample indices samples.jsonl holds (each line complete JSON)."""
    lines = (out / "samples.jsonl").read_text().splitlines()
    return sorted(json.loads(line)["i"] for line in lines[1:])


# ------------------------------------------------------------------------------------------ option values
BAD_OPTIONS = {
    "limit-zero": (["--limit", "0"], "--limit"),
    "limit-negative": (["--limit", "-1"], "--limit must be a positive number"),
    "limit-not-a-number": (["--limit", "all"], "--limit"),
    "overlays-negative": (["--overlays", "-1"], "--overlays"),
    "bg-score-out-of-range": (["--bg-score", "5"], "--bg-score"),
    "bg-score-nan": (["--bg-score", "nan"], "--bg-score"),
    "group-counts-zero": (["--group-counts", "8,0"], "--group-counts", "at least 1"),
    "group-counts-not-numbers": (["--group-counts", "8;16"], "--group-counts", "separated by commas"),
    "protocol-unknown": (["--protocol", "nosuch"], "nosuch"),
    "split-unknown": (["--split", "nope"], "split 'nope' not found", "splits present: val"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_semseg_option_values(fault, voc, tmp_path, case):
    extra, *fragments = BAD_OPTIONS[case]
    fault.error(semseg(voc, tmp_path / "o", *extra), *fragments)
    assert not (tmp_path / "o" / "samples.jsonl").exists()


def test_dataset_unknown(fault, voc, tmp_path):
    argv = semseg(voc, tmp_path / "o")
    argv[argv.index("voc21")] = "voc2012"
    fault.error(argv, "--dataset 'voc2012' is not a benchmark", "voc21")


def test_root_missing(fault, tmp_path):
    fault.error(semseg(tmp_path / "nowhere", tmp_path / "o"), "--root", "nowhere", "does not exist")


def test_root_is_a_file(fault, voc, tmp_path):
    fault.error(semseg(_base(voc) / "ImageSets" / "Segmentation" / "val.txt", tmp_path / "o"),
                "--root", "val.txt", "is a file")


def test_root_without_voc_layout(fault, tmp_path):
    (tmp_path / "empty").mkdir()
    fault.error(semseg(tmp_path / "empty", tmp_path / "o"), "VOC2012 folder not found")


def test_out_is_an_existing_file(fault, voc, tmp_path):
    (tmp_path / "results").write_text("keep me")
    fault.error(semseg(voc, tmp_path / "results"), "--out", "is an existing file")
    assert (tmp_path / "results").read_text() == "keep me"


def test_out_below_a_file(fault, voc, tmp_path):
    (tmp_path / "results").write_text("keep me")
    fault.error(semseg(voc, tmp_path / "results" / "sub"), "--out", "cannot be created")


# ------------------------------------------------------------------------------------------ dataset files
def test_split_list_empty(fault, voc, tmp_path):
    (_base(voc) / "ImageSets" / "Segmentation" / "val.txt").write_text("\n \n")
    fault.error(semseg(voc, tmp_path / "o"), "split file is empty", "val.txt")


def test_split_list_not_utf8(fault, voc, tmp_path):
    (_base(voc) / "ImageSets" / "Segmentation" / "val.txt").write_bytes(b"2007_000000\n\xff\xfe\n")
    fault.error(semseg(voc, tmp_path / "o"), "val.txt", "not UTF-8")


def test_split_list_lists_an_id_twice(fault, voc, tmp_path):
    (_base(voc) / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000000\n2007_000001\n2007_000000\n")
    fault.error(semseg(voc, tmp_path / "o"), "lists '2007_000000' twice (lines 1 and 3)")


def test_split_list_names_a_missing_image(fault, voc, tmp_path):
    (_base(voc) / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000000\n2007_000042\n")
    fault.error(semseg(voc, tmp_path / "o"), "image of '2007_000042' listed in", "2007_000042.jpg")
    assert not (tmp_path / "o" / "samples.jsonl").exists()  # found before any sample is scored


def test_mask_missing(fault, voc, tmp_path):
    _mask(voc).unlink()
    fault.error(semseg(voc, tmp_path / "o"), "label file of '2007_000001'", "2007_000001.png")


def test_label_folder_missing(fault, voc, tmp_path):
    for path in (_base(voc) / "SegmentationClass").iterdir():
        path.unlink()
    (_base(voc) / "SegmentationClass").rmdir()
    fault.error(semseg(voc, tmp_path / "o"), "label folder not found", "SegmentationClass")


def test_mask_value_outside_the_class_range(fault, voc, tmp_path):
    label = np.asarray(Image.open(_mask(voc))).copy()
    label[3, 4] = 50
    _save_mask(voc, label)
    fault.error(semseg(voc, tmp_path / "o"), "2007_000001.png", "value 50 at x=4, y=3",
                "allowed values for voc21: 0..20 (classes), 255 (ignored)")
    assert _stored(tmp_path / "o") == [0]  # the good sample before it is kept for the rerun


def test_mask_value_outside_the_voc20_range(fault, voc, tmp_path):
    label = np.asarray(Image.open(_mask(voc))).copy()
    label[0, 0] = 21
    _save_mask(voc, label)
    argv = semseg(voc, tmp_path / "o")
    argv[argv.index("voc21")] = "voc20"
    fault.error(argv, "value 21", "1..20 (classes), 0, 255 (ignored)")


def test_mask_size_differs_from_image(fault, voc, tmp_path):
    _save_mask(voc, np.asarray(Image.open(_mask(voc)))[:100, :120].copy())
    fault.error(semseg(voc, tmp_path / "o"), "2007_000001.png is 120x100", "2007_000001.jpg is 240x180")


def test_mask_is_rgb(fault, voc, tmp_path):
    Image.open(_mask(voc)).convert("RGB").save(_mask(voc))
    fault.error(semseg(voc, tmp_path / "o"), "colour (RGB) image", "palette or grey-scale", "2007_000001.png")


def test_mask_is_a_jpeg(fault, voc, tmp_path):
    Image.open(_mask(voc)).convert("L").save(_mask(voc), format="JPEG")
    fault.error(semseg(voc, tmp_path / "o"), "JPEG (lossy)", "2007_000001.png")


def test_mask_is_corrupt(fault, voc, tmp_path):
    _mask(voc).write_bytes(_mask(voc).read_bytes()[:100])
    fault.error(semseg(voc, tmp_path / "o"), "cannot read label file", "2007_000001.png")


def test_mask_is_16_bit_with_large_values(fault, voc, tmp_path):
    Image.fromarray(np.full((180, 240), 1000, np.uint16)).save(_mask(voc))
    fault.error(semseg(voc, tmp_path / "o"), "label values outside 0..255", "found 1000..1000")


def test_image_is_corrupt(fault, voc, tmp_path):
    image = _base(voc) / "JPEGImages" / "2007_000001.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    fault.error(semseg(voc, tmp_path / "o"), "cannot read image", "2007_000001.jpg")


def test_fixed_mask_resumes_after_the_error(fault, voc, tmp_path):
    good = np.asarray(Image.open(_mask(voc))).copy()
    bad = good.copy()
    bad[0, 0] = 77
    _save_mask(voc, bad)
    fault.error(semseg(voc, tmp_path / "o"), "value 77")
    _save_mask(voc, good)
    r = fault.ok(semseg(voc, tmp_path / "o"))
    assert "voc21 val (2 images)" in r.out
    assert _stored(tmp_path / "o") == [0, 1]
    assert json.loads((tmp_path / "o" / "results.json").read_text())["n_samples"] == 2


# ------------------------------------------------------------------------------------------ output folders
def _header(out: Path, **change) -> None:
    out.mkdir(parents=True, exist_ok=True)
    header = {"task": "semseg", "dataset": "voc21", "split": "val", "n": 2, "num_classes": 21, "ignore_index": 255,
              **change}
    (out / "samples.jsonl").write_text(json.dumps({"header": header}) + "\n")


def test_out_holds_another_evaluation(fault, voc, tmp_path):
    _header(tmp_path / "o", dataset="ade20k")
    fault.error(semseg(voc, tmp_path / "o"), "samples.jsonl belongs to a different evaluation", "--no-resume")


def test_out_holds_a_samples_file_of_garbage(fault, voc, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "samples.jsonl").write_bytes(b"\x00\x01garbage\n")
    fault.error(semseg(voc, tmp_path / "o"), "samples.jsonl is not a samples file")


def test_resume_drops_a_truncated_last_line(fault, voc, tmp_path):
    out = tmp_path / "o"
    fault.ok(semseg(voc, out, "--limit", "1"))
    with (out / "samples.jsonl").open("a") as f:
        f.write('{"i": 1, "id": "2007_000001", "conf": [[0, 0, 12')  # a kill mid-append
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (out / f".results.json.{dead.pid}-0123abcd.tmp").write_text('{"half')  # a kill mid atomic write
    fault.ok(semseg(voc, out))
    text = (out / "samples.jsonl").read_text()
    assert text.endswith("\n") and _stored(out) == [0, 1]
    assert not list(out.glob("*.tmp"))
    assert json.loads((out / "results.json").read_text())["n_samples"] == 2


def test_resume_under_another_protocol_is_refused(fault, voc, tmp_path):
    out = tmp_path / "o"
    fault.ok(semseg(voc, out, "--limit", "1"))
    argv = semseg(voc, out)
    argv[argv.index("workbench")] = "groupvit"  # other scores: its samples must not be mixed with these
    fault.error(argv, "samples.jsonl belongs to a different evaluation")
    assert _stored(out) == [0]


def test_no_resume_starts_over(fault, voc, tmp_path):
    out = tmp_path / "o"
    _header(out, dataset="ade20k")  # another evaluation's file: --no-resume replaces it
    fault.ok(semseg(voc, out, "--no-resume", "--limit", "1"))
    assert _stored(out) == [0]
    assert json.loads((out / "samples.jsonl").read_text().splitlines()[0])["header"]["dataset"] == "voc21"


# ------------------------------------------------------------------------------------------ referring (refer format)
@pytest.fixture
def refer(tmp_path) -> Path:
    _refer_fixture(tmp_path / "refer")
    return tmp_path / "refer"


def _refs(refer: Path) -> Path:
    return refer / "refcoco" / "refs(unc).p"


def _instances(refer: Path) -> Path:
    return refer / "refcoco" / "instances.json"


def _edit_refs(refer: Path, mutate) -> None:
    refs = pickle.loads(_refs(refer).read_bytes())
    mutate(refs)
    _refs(refer).write_bytes(pickle.dumps(refs))


def _edit_instances(refer: Path, mutate) -> None:
    instances = json.loads(_instances(refer).read_text())
    mutate(instances)
    _instances(refer).write_text(json.dumps(instances))


def test_refs_missing_ann_id(fault, refer, tmp_path):
    _edit_refs(refer, lambda refs: refs[1].pop("ann_id"))
    fault.error(ris(refer, tmp_path / "o"), "refs(unc).p", "ref #1 has no key 'ann_id'")


def test_refs_sentence_missing_sent(fault, refer, tmp_path):
    _edit_refs(refer, lambda refs: refs[0]["sentences"][1].pop("sent"))
    fault.error(ris(refer, tmp_path / "o"), "refs(unc).p", "ref #0 sentence #1 has no key 'sent'")


def test_refs_not_a_pickle(fault, refer, tmp_path):
    _refs(refer).write_text("ref_id,ann_id\n0,10\n")
    fault.error(ris(refer, tmp_path / "o"), "refs(unc).p", "not a readable refs pickle")


def test_refs_empty(fault, refer, tmp_path):
    _refs(refer).write_bytes(b"")
    fault.error(ris(refer, tmp_path / "o"), "refs(unc).p", "empty or truncated")


def test_refs_holds_a_dict(fault, refer, tmp_path):
    _refs(refer).write_bytes(pickle.dumps({"refs": []}))
    fault.error(ris(refer, tmp_path / "o"), "refs(unc).p", "top level is of type dict, not a list of refs")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_refs_that_would_run_code(fault, refer, tmp_path):
    marker = tmp_path / "pwned"
    _refs(refer).write_bytes(pickle.dumps([_RunsCode(marker)]))
    fault.error(ris(refer, tmp_path / "o"), "refs(unc).p", "refused to load global")
    assert not marker.exists()
    pickle.loads(_refs(refer).read_bytes())  # the payload is live: plain pickle would have run it
    assert marker.exists()


def test_instances_not_json(fault, refer, tmp_path):
    _instances(refer).write_text("images: []\n")
    fault.error(ris(refer, tmp_path / "o"), "instances.json is not valid JSON")


def test_instances_is_a_list(fault, refer, tmp_path):
    _instances(refer).write_text("[]")
    fault.error(ris(refer, tmp_path / "o"), "instances.json", "top level is of type list")


def test_instances_without_annotations(fault, refer, tmp_path):
    _edit_instances(refer, lambda i: i.pop("annotations"))
    fault.error(ris(refer, tmp_path / "o"), "instances.json has no 'annotations' list")


def test_rle_not_covering_the_image(fault, refer, tmp_path):
    _edit_instances(refer, lambda i: i["annotations"][1].update(segmentation={"size": [4, 5], "counts": [5, 3]}))
    fault.error(ris(refer, tmp_path / "o"), "instances.json: annotation 11", "cover 8 pixels")
    assert _stored(tmp_path / "o") == [0, 1]  # the two samples before it are kept


def test_polygon_far_outside_the_image(fault, refer, tmp_path):
    _edit_instances(refer, lambda i: i["annotations"][0].update(segmentation=[[1, 1, 1e12, 1, 5, 4]]))
    fault.error(ris(refer, tmp_path / "o"), "annotation 10", "reaches far outside the 8x6 image")


def test_image_size_differs_from_instances(fault, refer, tmp_path):
    _edit_instances(refer, lambda i: i["images"][0].update(height=60_000, width=80_000))
    fault.error(ris(refer, tmp_path / "o"), "COCO_train2014_000000000001.jpg is 8x6", "says 80000x60000")


def test_ris_image_missing(fault, refer, tmp_path):
    (refer / "images" / "COCO_train2014_000000000002.jpg").unlink()
    fault.error(ris(refer, tmp_path / "o"), "image not found", "COCO_train2014_000000000002.jpg")


def test_ris_split_unknown(fault, refer, tmp_path):
    fault.error(ris(refer, tmp_path / "o", "--split", "test"), "has no split 'test'", "testA")


def test_ris_dataset_folder_missing(fault, refer, tmp_path):
    fault.error(ris(refer, tmp_path / "o", "--dataset", "refclef"), "refer file not found", "refs(unc).p")


def test_ris_short_side_negative(fault, refer, tmp_path):
    fault.error(ris(refer, tmp_path / "o", "--short-side", "-5"), "--short-side must be positive")


def test_ris_image_root_missing(fault, refer, tmp_path):
    fault.error(ris(refer, tmp_path / "o", "--image-root", tmp_path / "nope"), "--image-root", "is not a folder")


def test_ris_limit_zero(fault, refer, tmp_path):
    fault.error(ris(refer, tmp_path / "o", "--limit", "0"), "--limit")


def test_out_not_writable(fault, voc, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        fault.error(semseg(voc, locked / "o"), "--out", "is not writable")
    finally:
        locked.chmod(0o700)


def test_bad_dataset_leaves_no_output_folder(fault, tmp_path):
    (tmp_path / "empty").mkdir()
    fault.error(semseg(tmp_path / "empty", tmp_path / "a" / "o"), "VOC2012 folder not found")
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------------ referring: no target
@pytest.mark.parametrize("extra,fragment", [
    (["--method", "global-local", "--no-target-threshold-from", "val"], "never on the split evaluated"),
    (["--no-target-threshold-from", "testA"], "needs --method global-local or region"),
    (["--method", "region", "--no-target-threshold-from", "testA", "--no-target-threshold", "1"], "not both"),
    (["--alpha", "0.5"], "need --method global-local or region"),
    (["--method", "global-local", "--alpha", "2"], "--alpha must be in [0, 1]"),
    (["--method", "global-local", "--no-target-threshold-from", "train", "--split", "testA"],
     "no image of split 'train' lacks category"),
], ids=["threshold-on-the-evaluated-split", "threshold-with-best-group", "threshold-twice", "alpha-with-best-group",
        "alpha-out-of-range", "no-target-pair-missing"])
def test_ris_method_option_mistakes(fault, refer, tmp_path, extra, fragment):
    fault.error(ris(refer, tmp_path / "o", *extra), fragment)


def test_ris_no_target_evaluation_reports_n_acc(fault, refer, tmp_path):
    """No-target counterparts of the val sentences: a threshold above every score answers each with no mask."""
    fault.ok(ris(refer, tmp_path / "o", "--method", "region", "--no-target", "--no-target-threshold", "1e9"))
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["metrics"]["N-acc"] == 100.0 and results["metrics"]["n_no_target"] == 3
    assert results["metrics"]["n"] == 0 and results["n_no_mask"] == 3
