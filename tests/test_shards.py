import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textseg.io import ShardWriter
from textseg.train.data import SkipCounter, caption_pipeline

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


def write_eight(tmp_path: Path) -> tuple[str, list[str]]:
    """Four shards of two samples, one per colour."""
    captions = [f"a {name} square" for name in COLOURS]
    with ShardWriter(folder=tmp_path / "sh", maxcount=2) as sink:
        for i, (name, caption) in enumerate(zip(COLOURS, captions)):
            sink.write(f"k{i}", {"jpg": jpeg_bytes(COLOURS[name], size=8), "txt": caption})
    assert len(sink.shards) == 4
    return str(tmp_path / "sh" / "shard-{000000..000003}.tar"), captions


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
