"""Writing image-caption shards from a folder and a captions file (textseg.data.caption_shards)."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textseg.data.caption_files import CaptionRow, read_caption_file
from textseg.data.caption_shards import make_shards, write_shards
from textseg.errors import DatasetError, UserError

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


def jpeg_bytes(colour, size=32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def close_colour(a, b, tol=3) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


def read_shards(paths) -> list[tuple[str, np.ndarray, str]]:
    """(key, decoded RGB image, caption) of every sample, in shard and member order."""
    out = []
    for path in paths:
        with tarfile.open(path) as tar:
            names = tar.getnames()
            for key in dict.fromkeys(n.rsplit(".", 1)[0] for n in names):
                image = np.asarray(Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read())).convert("RGB"))
                out.append((key, image, tar.extractfile(f"{key}.txt").read().decode()))
    return out


def make_source_folder(tmp_path: Path) -> Path:
    src = tmp_path / "images"
    src.mkdir()
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # fully transparent -> white after compositing
    rgba.paste((255, 0, 0, 255), (0, 0, 8, 16))  # left half opaque red
    rgba.save(src / "a.png")
    (src / "b.jpg").write_bytes(jpeg_bytes(COLOURS["blue"]))
    (src / "c.jpg").write_bytes(jpeg_bytes(COLOURS["green"]))
    (src / "d.jpg").write_bytes(jpeg_bytes(COLOURS["yellow"]))
    (src / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return src


def test_make_shards_from_csv(tmp_path):
    src = make_source_folder(tmp_path)
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text(
        "file,caption\n"
        "a.png,a red and white square\n"
        "b.jpg,a blue square\n"
        "missing.jpg,a ghost\n"
        "bad.jpg,a broken file\n"
        "d.jpg,\"  \"\n"
        "c.jpg,\"a green square, big\"\n"
    )
    out_dir = tmp_path / "shards"
    report = make_shards(src, csv_path, out_dir, max_count=2)
    assert report.summary() == (
        f"read 6 rows: wrote 3 samples in 2 shards, skipped 3 (see {out_dir / 'skipped.jsonl'})"
    )
    assert report.rows == report.written + len(report.skipped)
    assert report.skipped_by_reason == {"missing file": 1, "bad image": 1, "empty caption": 1}

    skipped = [json.loads(line) for line in (out_dir / "skipped.jsonl").read_text().splitlines()]
    assert [(Path(s["path"]).name, s["reason"].split(":")[0], s["index"], s["key"], s["line"]) for s in skipped] == [
        ("missing.jpg", "missing file", 2, "000000002", 4), ("bad.jpg", "bad image", 3, "000000003", 5),
        ("d.jpg", "empty caption", 4, "000000004", 6),
    ]  # fmt: skip
    assert sorted(p.name for p in out_dir.iterdir()) == ["shard-000000.tar", "shard-000001.tar", "skipped.jsonl"]
    assert report.shards == [str(out_dir / "shard-000000.tar"), str(out_dir / "shard-000001.tar")]

    # keys are the CSV row positions; the JPEG is stored byte for byte, the PNG re-encoded
    with tarfile.open(out_dir / "shard-000000.tar") as tar:
        assert tar.getnames() == ["000000000.jpg", "000000000.txt", "000000001.jpg", "000000001.txt"]
        assert tar.extractfile("000000001.jpg").read() == (src / "b.jpg").read_bytes()

    samples = read_shards(report.shards)
    assert [(k, c) for k, _, c in samples] == [
        ("000000000", "a red and white square"), ("000000001", "a blue square"), ("000000005", "a green square, big")
    ]  # fmt: skip
    png = samples[0][1]
    assert close_colour(png[8, 2], (255, 0, 0), tol=8) and close_colour(png[8, 13], (255, 255, 255), tol=8)
    assert close_colour(samples[2][1].reshape(-1, 3).mean(0), COLOURS["green"])


def test_make_shards_bad_arguments(tmp_path):
    src = make_source_folder(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nb.jpg,x\n")
    with pytest.raises(DatasetError, match=r"bad\.csv.*'file' or 'image'"):
        make_shards(src, bad, tmp_path / "o")
    assert issubclass(DatasetError, UserError)
    good = tmp_path / "good.csv"
    good.write_text("file,caption\nb.jpg,x\n")
    with pytest.raises(UserError, match="images folder not found"):
        make_shards(tmp_path / "nope", good, tmp_path / "o")
    for kw in ({"max_count": 0}, {"max_size_mb": 0}):
        with pytest.raises(UserError, match="must be (a )?positive"):
            make_shards(src, good, tmp_path / "o", **kw)


def rows(captions_file, root) -> list[tuple]:
    """``(path, caption, key, line, reason)`` of every row :func:`read_caption_file` returns."""
    return [(r.path, r.caption, r.key, r.line, r.reason) for r in read_caption_file(captions_file, root)]


def test_read_caption_file_formats(tmp_path):
    root = tmp_path
    (root / "c.csv").write_text("image,text\nx.jpg,hello\n")
    assert rows(root / "c.csv", root) == [(str(root / "x.jpg"), "hello", None, 2, None)]
    records = [{"file": "x.jpg", "caption": "one"}, {"image": f"{root}/y.png", "text": "two"}]
    (root / "c.jsonl").write_text(f"{json.dumps(records[0])}\n\n{json.dumps(records[1])}\n")
    assert rows(root / "c.jsonl", root) == [
        (str(root / "x.jpg"), "one", None, 1, None), (str(root / "y.png"), "two", None, 3, None)
    ]
    (root / "bad.jsonl").write_text('{"file": "x.jpg"}\n{"file": "/abs/y.png", "caption": "c"}\n')
    assert rows(root / "bad.jsonl", root) == [
        ("x.jpg", None, None, 1, "missing field: 'caption' or 'text'"),
        ("/abs/y.png", "c", None, 2, "outside images folder: /abs/y.png"),
    ]
    (root / "list.json").write_text('[{"file": "x.jpg", "caption": "a"}, {"image": "z.jpg", "text": "b"}, 3]')
    assert rows(root / "list.json", root) == [
        (str(root / "x.jpg"), "a", None, None, None), (str(root / "z.jpg"), "b", None, None, None),
        ("", None, None, None, "bad record: expected an object, got number"),
    ]
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}],
        "annotations": [{"image_id": 9, "caption": "b first"}, {"image_id": 7, "caption": "a first"},
                        {"image_id": 9, "caption": "b second"}],
    }
    (root / "coco.json").write_text(json.dumps(coco))
    assert rows(root / "coco.json", root) == [
        (str(root / "a.jpg"), "a first", "coco7", None, None), (str(root / "b.jpg"), "b first", "coco9", None, None),
        (str(root / "c.jpg"), None, "coco3", None, "no caption: no annotation has image_id 3"),
    ]
    with pytest.raises(DatasetError, match="not found"):
        read_caption_file(root / "nope.csv", root)
    (root / "c.txt").write_text("x")
    with pytest.raises(DatasetError, match="unsupported captions file type '.txt'"):
        read_caption_file(root / "c.txt", root)


def test_unterminated_quote_costs_only_its_own_row(tmp_path):
    src = make_source_folder(tmp_path)
    (tmp_path / "q.csv").write_text('file,caption\nb.jpg,"a blue square\nc.jpg,a green square\nd.jpg,"yellow"\n')
    assert [(r.line, r.reason) for r in read_caption_file(tmp_path / "q.csv", src)] == [
        (2, "unterminated quote"), (3, None), (4, None)
    ]
    report = make_shards(src, tmp_path / "q.csv", tmp_path / "out")
    assert (report.rows, report.written, report.skipped_lines("unterminated quote")) == (3, 2, [2])
    assert [c for _, _, c in read_shards(report.shards)] == ["a green square", "yellow"]


def test_write_shards_accepts_caption_rows_and_cleans_captions(tmp_path):
    src = make_source_folder(tmp_path)
    samples = [
        CaptionRow(str(src / "b.jpg"), "  a blue\tsquare\non two lines  ", line=2),
        CaptionRow(str(src / "c.jpg"), "nul\x00byte", line=3),
        CaptionRow(str(src / "c.jpg"), 5, line=4),
        CaptionRow(str(src / "b.jpg"), "a blue square on two lines", line=5),
        CaptionRow(str(src / "c.jpg"), "x", line=6, reason="unterminated quote"),
        (src / "d.jpg", "a yellow square"),
    ]
    report = write_shards(samples, str(tmp_path / "o" / "shard-%06d.tar"))
    assert [c for _, _, c in read_shards(report.shards)] == ["a blue square on two lines", "a yellow square"]
    assert [(s.index, s.line, s.reason) for s in report.skipped] == [
        (1, 3, "bad caption: control character U+0000"), (2, 4, "bad caption: not a string (number)"),
        (3, 5, "duplicate row: same image and caption as line 2"), (4, 6, "unterminated quote"),
    ]
    assert report.rows == 6 == report.written + len(report.skipped)


def test_write_shards_keys_duplicates_and_determinism(tmp_path):
    src = tmp_path / "img"
    src.mkdir()
    samples = []
    for i, name in enumerate(COLOURS):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(COLOURS[name], size=8))
        samples.append((src / f"{i}.jpg", f"a {name} square", f"k/{i}.x"))  # key sanitised to k_<i>_x
    samples.append((src / "0.jpg", "again", "k/0.x"))
    reports = [write_shards(samples, str(tmp_path / d / "shard-%06d.tar"), max_count=3) for d in ("a", "b")]
    a, b = reports
    assert a.written == 4 and len(a.shards) == 2
    assert [(s.index, s.reason, s.key) for s in a.skipped] == [(4, "duplicate key: k_0_x", "k_0_x")]
    assert [k for k, _, _ in read_shards(a.shards)] == ["k_0_x", "k_1_x", "k_2_x", "k_3_x"]
    for pa, pb in zip(a.shards, b.shards):
        assert Path(pa).read_bytes() == Path(pb).read_bytes()
    clean = write_shards(samples[:1], str(tmp_path / "c" / "shard-%06d.tar"))
    assert clean.skipped == [] and Path(clean.skipped_path).read_text() == ""
