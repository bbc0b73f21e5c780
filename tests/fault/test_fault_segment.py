"""Fault cases of `textseg segment`: options, class lists, output folders and hostile or unusual images.

Each case is one bad (or unusual) input; see tests/fault/faults.py for the outcome classes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import VOC_IMAGE
from faults import TINY, fault  # noqa: F401  (fixture)

FAST = [*TINY, "--no-text-cache", "--templates", "single", "--no-progress", "--num-workers", "0"]


def seg(*args, out):
    return ["segment", *map(str, args), "--out", str(out), *FAST]


def labels_of(out: Path, key: str) -> np.ndarray:
    return np.array(Image.open(out / f"{key}_labels.png"))


# ------------------------------------------------------------------------------------------ option values
BAD_OPTIONS = {
    "short-side-negative": (["--short-side", "-5"], "short_side"),
    "bg-threshold-above-1": (["--bg-threshold", "5"], "bg_threshold"),
    "bg-threshold-negative": (["--bg-threshold", "-0.1"], "bg_threshold"),
    "bg-score-out-of-range": (["--bg-score", "5"], "bg_score"),
    "bg-score-without-background": (["--bg-score", "0.2", "--background", "none"], "bg_score"),
    "window-without-stride": (["--window", "32"], "'window' and 'stride'"),
    "window-zero": (["--window", "0", "--stride", "0"], "'window' and 'stride'"),
    "stride-above-window": (["--window", "32", "--stride", "64"], "must not exceed 'window'"),
    "max-long-side-negative": (["--max-long-side", "-3"], "max_long_side"),
    "batch-size-zero": (["--batch-size", "0"], "--batch-size"),
    "num-workers-negative": (["--num-workers", "-1"], "--num-workers"),
    "max-pixels-zero": (["--max-pixels", "0"], "--max-pixels"),
    "templates-unknown": (["--templates", "fancy"], "--templates"),
    "background-unknown": (["--background", "sometimes"], "--background"),
    "short-side-not-a-number": (["--short-side", "big"], "--short-side"),
    "protocol-unknown": (["--protocol", "nosuch"], "protocol config 'nosuch' not found"),
    "device-unknown": (["--device", "tpu9"], "--device"),
    "device-cuda-absent": (["--device", "cuda:7"], "--device cuda:7"),
    "model-unknown": (["--model", "nosuch"], "nosuch"),
    "checkpoint-missing": (["--checkpoint", "/nonexistent/ckpt.pt"], "/nonexistent/ckpt.pt"),
    "background-classes-empty": (["--background-classes", ", ,"], "--background-classes"),
    "group-counts-zero": (["--group-counts", "0"], "--group-counts"),
    "group-counts-empty": (["--group-counts", ""], "--group-counts"),
}


@pytest.mark.parametrize("extra,fragment", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_option_values(fault, tmp_path, extra, fragment):
    fault.error([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", "cat", *extra], fragment)
    assert not list((tmp_path / "o").glob("*.png")) if (tmp_path / "o").exists() else True


# ------------------------------------------------------------------------------------------ class lists
def test_class_file_missing(fault, tmp_path):
    fault.error([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", "foo.txt"], "foo.txt not found")


def test_class_file_not_utf8(fault, tmp_path):
    (tmp_path / "c.txt").write_bytes("cat\ndog\ncr\xe8me\n".encode("latin-1"))
    fault.error([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", tmp_path / "c.txt"], "c.txt line 3", "UTF-8")


def test_class_file_empty(fault, tmp_path):
    (tmp_path / "c.txt").write_text("\n  \n")
    fault.error([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", tmp_path / "c.txt"], "--classes is empty")


def test_class_file_is_a_folder(fault, tmp_path):
    (tmp_path / "c.txt").mkdir()
    fault.error([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", tmp_path / "c.txt"], "c.txt")


@pytest.mark.parametrize("classes,fragment", [(",,", "--classes is empty"), ("cat,cat", "listed twice"),
                                              ("Cat, cat ", "listed twice"), ("background,cat", "name of label 0"),
                                              ("cat,BACKGROUND", "name of label 0")],
                         ids=["empty", "duplicate", "duplicate-case", "background", "background-case"])
def test_bad_class_lists(fault, tmp_path, classes, fragment):
    fault.error([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", classes], fragment)


def test_class_file_with_bom_and_crlf(fault, tmp_path):
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbfcat\r\ndog\r\n")
    fault.ok([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", tmp_path / "c.txt"])
    summary = json.loads((tmp_path / "o" / "2007_000033.json").read_text())
    assert summary["classes"] == ["background", "cat", "dog"]


def test_more_than_255_classes_write_a_16_bit_label_png(fault, tmp_path):
    names = [f"thing {i}" for i in range(300)]
    (tmp_path / "c.txt").write_text("\n".join(names))
    fault.ok([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", tmp_path / "c.txt", "--short-side", "64",
              "--background", "none"])
    img = Image.open(tmp_path / "o" / "2007_000033_labels.png")
    summary = json.loads((tmp_path / "o" / "2007_000033.json").read_text())
    labels = np.array(img)
    assert img.mode == "I;16" and summary["labels_png_bits"] == 16 and labels.shape == (366, 500)
    assert 1 <= labels.min() and labels.max() <= 300
    shares = {summary["classes"][v]: n / labels.size for v, n in zip(*np.unique(labels, return_counts=True))}
    assert shares == pytest.approx(summary["pixel_share"])


# ------------------------------------------------------------------------------------------ outputs
def test_out_is_an_existing_file(fault, tmp_path):
    (tmp_path / "o").write_text("not a folder")
    fault.error([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", "cat"], "--out", "is an existing file")


def test_out_below_a_file(fault, tmp_path):
    (tmp_path / "f").write_text("x")
    fault.error([*seg(VOC_IMAGE, out=tmp_path / "f" / "sub"), "--classes", "cat"], "--out", "cannot be created")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_out_not_writable(fault, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        fault.error([*seg(VOC_IMAGE, out=tmp_path / "ro"), "--classes", "cat"], "--out", "not writable")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_existing_outputs_are_not_replaced_without_overwrite(fault, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "2007_000033.json").write_text("precious")
    fault.error([*seg(VOC_IMAGE, out=out), "--classes", "cat"], "exists", "--overwrite")
    assert (out / "2007_000033.json").read_text() == "precious"


def test_same_stem_inputs_get_separate_outputs(fault, tmp_path):
    for d, colour in (("d1", 30), ("d2", 220)):
        (tmp_path / d).mkdir()
        Image.new("RGB", (40, 30), (colour, colour, colour)).save(tmp_path / d / "same.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "d1" / "same.png")
    fault.ok([*seg(tmp_path / "d1" / "same.jpg", tmp_path / "d2" / "same.jpg", tmp_path / "d1" / "same.png",
                   out=tmp_path / "o"), "--classes", "cat"])
    jsons = sorted(p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.json"))
    assert len(jsons) == 3
    sources = {json.loads((tmp_path / "o" / j).read_text())["image"] for j in jsons}
    assert len(sources) == 3  # every input has its own outputs


# ------------------------------------------------------------------------------------------ images
def test_missing_image(fault, tmp_path):
    fault.error([*seg(tmp_path / "nope.jpg", out=tmp_path / "o"), "--classes", "cat"], "nope.jpg does not exist")


def test_folder_without_images(fault, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hi")
    fault.error([*seg(tmp_path / "d", out=tmp_path / "o"), "--classes", "cat"], "holds no image")


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20,
                                     b"\xff\xd8\xff\xe0" + os.urandom(200)],
                         ids=["zero-bytes", "text", "png-header-only", "jpeg-header-random"])
def test_unreadable_image_next_to_good_ones(fault, tmp_path, content):
    """The bad file is named in the one error line; the good images are all segmented (nothing else lost)."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "bad.jpg").write_bytes(content)
    Image.open(VOC_IMAGE).resize((50, 40)).save(d / "a.jpg")
    Image.open(VOC_IMAGE).resize((40, 50)).save(d / "z.png")
    fault.error([*seg(d, out=tmp_path / "o"), "--classes", "cat"], "bad.jpg", "other 2 image(s) were segmented")
    assert sorted(p.name for p in (tmp_path / "o").glob("*_labels.png")) == ["a_labels.png", "z_labels.png"]


def test_truncated_jpeg(fault, tmp_path):
    data = VOC_IMAGE.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    fault.error([*seg(tmp_path / "cut.jpg", out=tmp_path / "o"), "--classes", "cat"], "cut.jpg")


def test_image_over_the_pixel_limit_is_refused_before_decoding(fault, tmp_path):
    Image.new("1", (17000, 17000)).save(tmp_path / "huge.png")  # 289 MP: above the 256 MP default
    Image.open(VOC_IMAGE).resize((50, 40)).save(tmp_path / "ok.jpg")
    fault.error([*seg(tmp_path / "huge.png", tmp_path / "ok.jpg", out=tmp_path / "o"), "--classes", "cat"],
                "huge.png is 17000x17000", "--max-pixels")
    assert (tmp_path / "o" / "ok_labels.png").is_file()


def test_pixel_limit_option(fault, tmp_path):
    fault.error([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", "cat", "--max-pixels", "1000"],
                "above the limit")


def test_exif_rotated_photo_is_segmented_upright(fault, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees: stored 60 wide, shown 60 high
    Image.new("RGB", (60, 30), (200, 30, 30)).save(tmp_path / "phone.jpg", exif=exif)
    fault.ok([*seg(tmp_path / "phone.jpg", out=tmp_path / "o"), "--classes", "cat"])
    assert labels_of(tmp_path / "o", "phone").shape == (60, 30)
    assert json.loads((tmp_path / "o" / "phone.json").read_text())["size"] == [60, 30]


def test_16_bit_png_is_scaled_not_saturated(fault, tmp_path):
    """Everything background (a threshold no pixel reaches) leaves the overlay equal to the image as read."""
    Image.fromarray(np.full((30, 40), 16448, np.uint16)).save(tmp_path / "deep.png")  # 16448 / 257 = 64
    fault.ok([*seg(tmp_path / "deep.png", out=tmp_path / "o"), "--classes", "cat,dog", "--bg-threshold", "1.0"])
    assert (labels_of(tmp_path / "o", "deep") == 0).all()
    overlay = np.array(Image.open(tmp_path / "o" / "deep_overlay.png"))
    assert (overlay[15:, 20:] == 64).all()  # not 255 (saturated); the legend corner aside


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "LA", "I", "F"])
def test_unusual_image_modes(fault, tmp_path, mode):
    img = Image.open(VOC_IMAGE).resize((48, 36)).convert(mode if mode not in ("I", "F") else "L").convert(mode)
    path = tmp_path / ("img.tif" if mode in ("I", "F", "CMYK") else "img.png")
    img.save(path)
    fault.ok([*seg(path, out=tmp_path / "o"), "--classes", "cat,dog"])
    assert labels_of(tmp_path / "o", "img").shape == (36, 48)


def test_extreme_aspect_ratio_finishes_at_the_input_size(fault, tmp_path):
    Image.new("RGB", (20000, 50), (90, 120, 30)).save(tmp_path / "strip.png")
    fault.ok([*seg(tmp_path / "strip.png", out=tmp_path / "o"), "--classes", "cat,grass"])
    assert labels_of(tmp_path / "o", "strip").shape == (50, 20000)


def test_one_pixel_image(fault, tmp_path):
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "dot.png")
    fault.ok([*seg(tmp_path / "dot.png", out=tmp_path / "o"), "--classes", "cat"])
    assert labels_of(tmp_path / "o", "dot").shape == (1, 1)


def test_png_content_with_jpg_suffix(fault, tmp_path):
    Image.open(VOC_IMAGE).resize((40, 30)).save(tmp_path / "liar.jpg", format="PNG")
    fault.ok([*seg(tmp_path / "liar.jpg", out=tmp_path / "o"), "--classes", "cat"])
    assert labels_of(tmp_path / "o", "liar").shape == (30, 40)


def test_protocol_file_faults(fault, tmp_path):
    cases = {"list.yaml": ("- 1\n- 2\n", "must be a mapping"), "latin.yaml": (b"name: cr\xe8me\n", "not UTF-8"),
             "typo.yaml": ("shortside: 3\n", "shortside"), "range.yaml": ("bg_threshold: 2\n", "bg_threshold"),
             "broken.yaml": ("short_side: [1\n", "not valid YAML")}
    for name, (content, fragment) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        fault.error([*seg(VOC_IMAGE, out=tmp_path / "o"), "--classes", "cat", "--protocol", path], name, fragment)
