import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import VOC_IMAGE
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
