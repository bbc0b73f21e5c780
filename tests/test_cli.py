import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import DATA, VOC_IMAGE
from test_captions_file import make_source_folder
from test_data import _refer_fixture
from textseg.cli import main


def test_segment_writes_label_png_overlay_and_json(tmp_path, capsys):
    rc = main(["segment", str(VOC_IMAGE), "--classes", "aeroplane,sky,grass", "--model", "tiny", "--no-pretrained",
               "--templates", "single", "--rle", "--out", str(tmp_path)])
    assert rc == 0
    labels = Image.open(tmp_path / "2007_000033_labels.png")
    assert labels.mode == "P" and labels.size == (500, 366)
    assert np.array(labels).max() <= 3
    overlay = Image.open(tmp_path / "2007_000033_overlay.png")
    assert overlay.size == (500, 366) and overlay.mode == "RGB"
    summary = json.loads((tmp_path / "2007_000033.json").read_text())
    assert summary["classes"] == ["background", "aeroplane", "sky", "grass"]
    assert abs(sum(summary["pixel_share"].values()) - 1.0) < 1e-9
    # the shares are those of the written label map
    counts = np.bincount(np.array(labels).ravel(), minlength=4) / (500 * 366)
    for i, name in enumerate(summary["classes"]):
        assert abs(summary["pixel_share"].get(name, 0.0) - counts[i]) < 1e-9
    # the RLE of each class decodes to exactly its pixels of the label PNG
    from pycocotools import mask as mask_utils

    for name, rle in summary["rle"].items():
        i = summary["classes"].index(name)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert (decoded.astype(bool) == (np.array(labels) == i)).all()


def test_segment_options_change_single_protocol_fields(tmp_path, capsys):
    """--protocol sets every field; an option changes one. sclip's 26 background names keep pixels from the 2 classes."""
    base = ["segment", str(VOC_IMAGE), "--classes", "aeroplane,grass", "--model", "tiny", "--no-pretrained",
            "--no-text-cache", "--short-side", "64"]
    assert main([*base, "--protocol", "sclip", "--window", "32", "--stride", "16", "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--background", "none", "--out", str(tmp_path / "b")]) == 0
    none = np.array(Image.open(tmp_path / "b" / "2007_000033_labels.png"))
    assert none.shape == (366, 500) and 0 not in np.unique(none)  # no background rule: every pixel gets a class
    rc = main([*base, "--protocol", "nosuch", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and "protocol config 'nosuch' not found" in err and "groupvit, sclip, workbench" in err


def test_eval_commands_through_the_real_tiny_model(tmp_path):
    """`textseg eval semseg|ris` end to end: dataset readers, protocol preset, real tiny model, results files."""
    rc = main(["eval", "semseg", "--dataset", "voc21", "--root", str(DATA / "voc2012"), "--out", str(tmp_path / "sem"),
               "--no-progress", "--model", "tiny", "--no-pretrained", "--text-cache-dir", str(tmp_path / "cache"),
               "--overlays", "1"])
    assert rc == 0
    sem = json.loads((tmp_path / "sem" / "results.json").read_text())
    assert sem["n_samples"] == 1 and sem["meta"]["config"]["args"]["model"] == "tiny"
    assert sem["meta"]["config"]["protocol"]["bg_threshold"] == 0.95  # the groupvit preset
    assert 0.0 <= sem["metrics"]["mIoU"] <= 100.0 and len(sem["per_class"]) == 21
    assert (tmp_path / "sem" / "results.md").is_file() and len(list((tmp_path / "sem" / "overlays").iterdir())) == 1
    _refer_fixture(tmp_path / "refer")
    rc = main(["eval", "ris", "--root", str(tmp_path / "refer"), "--split", "testA", "--out", str(tmp_path / "ris"),
               "--no-progress", "--model", "tiny", "--no-pretrained", "--short-side", "64"])
    assert rc == 0
    ris = json.loads((tmp_path / "ris" / "results.json").read_text())
    assert ris["n_samples"] == 1 and ris["n_no_mask"] == 0  # the region baseline always answers with a mask
    assert ris["meta"]["config"]["protocol"]["short_side"] == 64


def test_real_model_without_weights_exits_2_naming_the_weight(tmp_path, capsys):
    rc = main(["segment", str(VOC_IMAGE), "--classes", "aeroplane", "--model", "dino-s16-clip-b16", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("textseg: error: model dino-s16-clip-b16: backbone weights vit_small_patch16_224.dino not found")
    assert err.count("\n") == 1


def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    cases = [
        (["--classes", " , ", str(VOC_IMAGE)], "--classes is empty"),
        (["--classes", "a", str(bad)], "cannot read image"),
        (["--classes", "a", str(tmp_path / "missing.jpg")], "does not exist"),
        (["--classes", "a", "--model", "nope", str(VOC_IMAGE)], "unknown model 'nope'"),
    ]
    for extra, message in cases:
        rc = main(["segment", "--out", str(tmp_path / "o"), "--no-pretrained", *extra])
        err = capsys.readouterr().err
        assert rc == 2, extra
        assert message in err and err.count("\n") == 1, err


def test_console_entry_point_lists_models():
    script = Path(sys.executable).parent / "textseg"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "textseg.cli"]
    out = subprocess.run([*cmd, "models"], capture_output=True, text=True, check=True)
    assert "dino-s16-clip-b16" in out.stdout and "tiny" in out.stdout


def test_data_commands_write_shards_and_report_bad_files(tmp_path, capsys):
    src = make_source_folder(tmp_path)
    (tmp_path / "caps.csv").write_text("file,caption\na.png,a red square\nmissing.jpg,gone\n")
    assert main(["make-shards", str(src), str(tmp_path / "caps.csv"), str(tmp_path / "shards")]) == 0
    out = capsys.readouterr().out
    assert "skipped 1: missing file" in out and "wrote 1 samples in 1 shards" in out
    (tmp_path / "bad.csv").write_text("path,caption\nb.jpg,x\n")
    assert main(["make-shards", str(src), str(tmp_path / "bad.csv"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textseg: error: ") and "bad.csv" in err and err.count("\n") == 1
    rc = main(["convert-coco-object", str(DATA / "coco" / "annotations" / "instances_val2017.json"), str(tmp_path / "co")])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "co").iterdir()) == [
        "000000000139_instanceTrainIds.png", "000000255917_instanceTrainIds.png"]
