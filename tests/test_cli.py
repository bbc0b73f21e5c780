import json
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
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
    assert main([*base, "--background", "none", "--group-counts", "2,5", "--out", str(tmp_path / "g")]) == 0
    assert np.array(Image.open(tmp_path / "g" / "2007_000033_labels.png")).shape == (366, 500)
    assert main([*base, "--grid-shifts", "2", "--out", str(tmp_path / "s")]) == 0
    assert np.array(Image.open(tmp_path / "s" / "2007_000033_labels.png")).shape == (366, 500)
    capsys.readouterr()
    for bad, message in (("0", "grid_shifts"), ("17", "grid_shifts must be in 1..16")):
        assert main([*base, "--grid-shifts", bad, "--out", str(tmp_path / f"bad{bad}")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    rc = main([*base, "--protocol", "nosuch", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and "protocol config 'nosuch' not found" in err and "groupvit, naclip-voc21, proxyclip-voc21, sclip" in err


def test_eval_commands_through_the_real_tiny_model(tmp_path):
    """`textseg eval semseg|ris` end to end: dataset readers, protocol preset, real tiny model, results files."""
    rc = main(["eval", "semseg", "--dataset", "voc21", "--root", str(DATA / "voc2012"), "--out", str(tmp_path / "sem"),
               "--no-progress", "--model", "tiny", "--no-pretrained", "--text-cache-dir", str(tmp_path / "cache"),
               "--overlays", "1", "--grid-shifts", "2"])
    assert rc == 0
    sem = json.loads((tmp_path / "sem" / "results.json").read_text())
    assert sem["n_samples"] == 1 and sem["meta"]["config"]["args"]["model"] == "tiny"
    assert sem["meta"]["config"]["protocol"]["bg_threshold"] == 0.95  # the groupvit preset
    assert sem["meta"]["config"]["protocol"]["grid_shifts"] == 2  # ... with one field changed
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


TINY = ["--model", "tiny", "--no-pretrained", "--templates", "single", "--no-text-cache", "--short-side", "32",
        "--classes", "a,b", "--no-progress"]


def save_image(path: Path, seed: int, size=(40, 56)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_segment_folders_mirror_the_tree_and_same_stems_never_overwrite(tmp_path, capsys):
    same1 = save_image(tmp_path / "d1" / "same.jpg", 1)
    same2 = save_image(tmp_path / "d2" / "same.jpg", 2, size=(30, 70))
    tree = tmp_path / "tree"
    a, b = save_image(tree / "a.png", 3), save_image(tree / "sub" / "deeper" / "b.JPEG", 4)
    save_image(tree / ".hidden" / "c.jpg", 5)
    (tree / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = ["segment", str(same1), str(same2), str(tree), "--out", str(out), "--batch-size", "2",
            "--num-workers", "2", *TINY]
    assert main(args) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{key}{suffix}" for key in ["d1/same", "d2/same", "a", "sub/deeper/b"]
                             for suffix in ["_labels.png", "_overlay.png", ".json"])
    for key, source in [("d1/same", same1), ("d2/same", same2), ("a", a), ("sub/deeper/b", b)]:
        summary = json.loads((out / f"{key}.json").read_text())
        assert summary["image"] == str(source) and summary["labels_png"] == f"{Path(key).name}_labels.png"
        assert Image.open(out / f"{key}_labels.png").size == Image.open(source).size
    capsys.readouterr()
    before = (out / "d2" / "same.json").stat().st_mtime_ns
    assert main(args) == 2  # a second run into the same folder replaces nothing ...
    err = capsys.readouterr().err
    assert "exists (12 output file(s) would be replaced)" in err and "--overwrite" in err and err.count("\n") == 1
    assert (out / "d2" / "same.json").stat().st_mtime_ns == before
    assert main([*args, "--overwrite"]) == 0  # ... unless asked to
    assert (out / "d2" / "same.json").stat().st_mtime_ns > before


def test_unique_keys_disambiguate_every_collision():
    from textseg.cli.segment import unique_keys

    def keys(*items):
        return [str(k) for k in unique_keys([(Path(p), Path(p).parent, PurePosixPath(k)) for p, k in items])]

    assert keys(("/x/d1/same.jpg", "same"), ("/x/d2/same.jpg", "same"), ("/x/d2/other.jpg", "other")) == [
        "d1/same", "d2/same", "other"]
    assert keys(("/x/d/same.jpg", "same"), ("/y/d/same.jpg", "same")) == ["x/d/same", "y/d/same"]
    assert keys(("/x/a.jpg", "a"), ("/x/a.png", "a"), ("/y/A.jpg", "A")) == ["x/a_jpg", "x/a_png", "y/A"]
    # a disambiguated key that meets another input's key still ends up unique
    got = keys(("/r/d1/same.jpg", "same"), ("/r/d2/same.jpg", "same"), ("/r/x/d1/same.png", "d1/same"))
    assert len({k.casefold() for k in got}) == 3 and got[1] == "d2/same"


def test_collect_inputs_skips_the_output_folder_and_repeats(tmp_path):
    from textseg.cli.segment import collect_inputs

    a = save_image(tmp_path / "in" / "a.jpg", 0)
    save_image(tmp_path / "in" / "out" / "a_labels.png", 1)  # an earlier run's output inside the input folder
    found = collect_inputs([tmp_path / "in", a], out=tmp_path / "in" / "out")
    assert [(i.path, str(i.key)) for i in found] == [(tmp_path / "in" / "a.jpg", "a")]


def test_rank_slices_cover_every_input_exactly_once(tmp_path, monkeypatch):
    """The torchrun split is tested through the slicing function and the env variables; no process group is
    started (segment needs none: each rank writes its own share)."""
    from textseg.cli.segment import rank_and_world, rank_slice
    from textseg.errors import UserError

    for n in range(0, 12):
        items = list(range(n))
        for world in range(1, 5):
            shares = [rank_slice(items, rank, world) for rank in range(world)]
            assert sorted(x for share in shares for x in share) == items
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert rank_and_world({}) == (0, 1) and rank_and_world({"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    with pytest.raises(UserError, match="RANK 3"):
        rank_and_world({"RANK": "3", "WORLD_SIZE": "3"})
    # two "ranks" run one after the other write disjoint shares that together hold every input
    for i in range(5):
        save_image(tmp_path / "in" / f"{i}.png", i)
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--num-workers", "0", *TINY]) == 0
        got = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
        assert got == (["0.json", "2.json", "4.json"] if rank == 0 else [f"{i}.json" for i in range(5)])


def test_an_unreadable_image_stops_no_other(tmp_path, capsys):
    save_image(tmp_path / "in" / "good.png", 0)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rc = main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--num-workers", "1", *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot read image" in err and "broken.jpg" in err and "the other 1 image(s)" in err
    assert (tmp_path / "out" / "good_labels.png").is_file() and not (tmp_path / "out" / "broken.json").exists()
    assert main(["segment", str(tmp_path / "empty_dir_missing"), "--out", str(tmp_path / "o2"), *TINY]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"), *TINY]) == 2
    assert "holds no image" in capsys.readouterr().err
