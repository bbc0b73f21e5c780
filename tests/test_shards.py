import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textseg.errors import DatasetError, UserError
from textseg.shards import SkipCounter, caption_pipeline, cli, main, read_caption_file, write_shards

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
           "black": (0, 0, 0), "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255)}


def jpeg_bytes(colour, size=32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def mean_colour(image) -> tuple:
    return tuple(int(round(v)) for v in np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0))


def close_colour(a, b, tol=3) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


def read_all(urls, **kw):
    kw.setdefault("shuffle_buffer", 0)
    kw.setdefault("shardshuffle", False)
    pipe = caption_pipeline(urls, **kw)
    return list(pipe), pipe


def test_pipeline_skips_corrupt_jpeg_and_empty_caption(tmp_path):
    good = ["red", "green", "blue", "yellow", "cyan"]
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, name in enumerate(good):
            add_member(tar, f"s{i}.jpg", jpeg_bytes(COLOURS[name]))
            add_member(tar, f"s{i}.txt", f"a {name} square".encode())
        noisy = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noisy, "JPEG")
        add_member(tar, "s5.jpg", noisy.getvalue()[: len(noisy.getvalue()) // 2])  # truncated JPEG
        add_member(tar, "s5.txt", b"a broken image")
        add_member(tar, "s6.jpg", jpeg_bytes(COLOURS["black"]))
        add_member(tar, "s6.txt", b"   \n")  # empty after strip

    counter = SkipCounter()
    pipe = caption_pipeline(str(shard), shuffle_buffer=0, shardshuffle=False, counter=counter,
                            image_transform=lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=0)
    out = list(loader)
    assert [c for _, c in out] == [f"a {n} square" for n in good]
    for (img, _), name in zip(out, good):
        assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
        assert close_colour(mean_colour(img.permute(1, 2, 0).numpy()), COLOURS[name])
    assert counter.as_dict() == {"decode_error": 1, "empty_caption": 1}
    assert pipe.counter is counter and counter.total == 2


def test_pipeline_counts_unreadable_shards(tmp_path):
    (tmp_path / "garbage.tar").write_bytes(b"not a tar file" * 100)
    out, pipe = read_all([str(tmp_path / "missing.tar"), str(tmp_path / "garbage.tar")])
    assert out == [] and pipe.counter.as_dict() == {"read_error": 2}


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


def test_make_shards_from_csv(tmp_path, capsys):
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
    assert main([str(src), str(csv_path), str(out_dir), "--max-count", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 3 samples in 2 shards, skipped 3 (see {out_dir / 'skipped.jsonl'})" in printed

    skipped = [json.loads(line) for line in (out_dir / "skipped.jsonl").read_text().splitlines()]
    assert [(Path(s["path"]).name, s["reason"].split(":")[0]) for s in skipped] == [
        ("missing.jpg", "missing file"), ("bad.jpg", "bad image"), ("d.jpg", "empty caption")
    ]
    assert sorted(p.name for p in out_dir.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]

    # keys are the CSV row positions; the JPEG is stored byte for byte, the PNG re-encoded
    with tarfile.open(out_dir / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names == ["000000000.jpg", "000000000.txt", "000000001.jpg", "000000001.txt"]
        assert tar.extractfile("000000001.jpg").read() == (src / "b.jpg").read_bytes()

    out, pipe = read_all(str(out_dir / "shard-{000000..000001}.tar"))
    assert [c for _, c in out] == ["a red and white square", "a blue square", "a green square, big"]
    png = np.asarray(out[0][0])
    assert close_colour(png[8, 2], (255, 0, 0), tol=8) and close_colour(png[8, 13], (255, 255, 255), tol=8)
    assert close_colour(mean_colour(out[2][0]), COLOURS["green"])
    assert pipe.counter.total == 0


def test_make_shards_bad_csv_header(tmp_path, capsys):
    src = make_source_folder(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nb.jpg,x\n")
    with pytest.raises(DatasetError, match=r"bad\.csv.*'file' or 'image'"):
        main([str(src), str(bad), str(tmp_path / "o")])
    assert cli([str(src), str(bad), str(tmp_path / "o")]) == 2
    assert "bad.csv" in capsys.readouterr().err
    assert issubclass(DatasetError, UserError)


def test_read_caption_file_formats(tmp_path):
    root = tmp_path
    (root / "c.csv").write_text("image,text\nx.jpg,hello\n")
    assert read_caption_file(root / "c.csv", root) == [(str(root / "x.jpg"), "hello", None)]
    (root / "c.jsonl").write_text('{"file": "x.jpg", "caption": "one"}\n\n{"image": "/abs/y.png", "text": "two"}\n')
    assert read_caption_file(root / "c.jsonl", root) == [
        (str(root / "x.jpg"), "one", None), ("/abs/y.png", "two", None)
    ]
    (root / "bad.jsonl").write_text('{"file": "x.jpg"}\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:1: missing field 'caption' or 'text'"):
        read_caption_file(root / "bad.jsonl", root)
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}],
        "annotations": [{"image_id": 9, "caption": "b first"}, {"image_id": 7, "caption": "a first"},
                        {"image_id": 9, "caption": "b second"}],
    }
    (root / "coco.json").write_text(json.dumps(coco))
    assert read_caption_file(root / "coco.json", root) == [
        (str(root / "a.jpg"), "a first", "coco7"), (str(root / "b.jpg"), "b first", "coco9"),
        (str(root / "c.jpg"), "", "coco3"),  # no caption: reported as "empty caption" by write_shards
    ]
    with pytest.raises(DatasetError, match="not found"):
        read_caption_file(root / "nope.csv", root)


def write_eight(tmp_path: Path) -> tuple[str, list[str]]:
    src = tmp_path / "img"
    src.mkdir()
    samples = []
    for i, name in enumerate(COLOURS):
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(COLOURS[name], size=8))
        samples.append((src / f"{i}.jpg", f"a {name} square", f"k{i}"))
    report = write_shards(samples, str(tmp_path / "sh" / "shard-%06d.tar"), max_count=2)
    assert report.written == 8 and len(report.shards) == 4 and report.skipped == []
    return str(tmp_path / "sh" / "shard-{000000..000003}.tar"), [c for _, c, _ in samples]


def test_split_by_node_gives_disjoint_complete_shard_sets(tmp_path, monkeypatch):
    urls, captions = write_eight(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        out, _ = read_all(urls, shardshuffle=True, seed=3, shuffle_buffer=4)
        per_rank.append({c for _, c in out})
        assert len(out) == 4  # two shards of two samples
    assert per_rank[0].isdisjoint(per_rank[1])
    assert per_rank[0] | per_rank[1] == set(captions)


def test_shard_shuffle_is_seeded(tmp_path):
    urls, captions = write_eight(tmp_path)
    runs = [[c for _, c in read_all(urls, shardshuffle=True, seed=s, shuffle_buffer=8)[0]] for s in (5, 5, 6)]
    assert runs[0] == runs[1] and sorted(runs[0]) == sorted(captions)
    pipe = caption_pipeline(urls, shardshuffle=True, seed=5, shuffle_buffer=0)
    pipe.set_epoch(1)
    epoch1 = [c for _, c in pipe]
    assert [c for _, c in pipe] == epoch1  # fixed epoch: same order again
    assert sorted(epoch1) == sorted(captions)


def test_dataloader_workers_read_each_sample_once(tmp_path):
    urls, captions = write_eight(tmp_path)
    pipe = caption_pipeline(urls, shuffle_buffer=0, shardshuffle=True)
    loader = torch.utils.data.DataLoader(pipe, batch_size=None, num_workers=2)
    assert sorted(c for _, c in loader) == sorted(captions)


def test_warns_when_fewer_shards_than_readers(tmp_path, monkeypatch):
    urls, captions = write_eight(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    with pytest.warns(UserWarning, match="only 4 shard"):
        out, _ = read_all(urls)
    assert out == []  # rank 5 of 8 gets no shard
