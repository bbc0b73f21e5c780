"""textseg.io (images, JPEG, palette PNG, RLE, shard writer, atomic writes) and textseg.visualize panels."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin
from pycocotools import mask as mask_utils

from textseg.errors import UserError
from textseg.io import (
    ShardWriter,
    atomic_write_bytes,
    atomic_write_text,
    encode_jpeg,
    encode_label_png,
    label_png_bits,
    image_file_to_jpeg,
    labels_to_rles,
    load_image,
    mask_to_rle,
    save_png,
    write_label_png,
)
from textseg.visualize import overlay, ris_panel, semseg_panel, voc_palette


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


# ---------------------------------------------------------------- RLE


def test_mask_to_rle_hand_checked_and_round_trip() -> None:
    # Column-major runs, alternating starting with zeros: a full 2x2 mask is [0, 4] -> "04"; the right column is
    # [2, 2] -> "22".
    assert mask_to_rle(np.ones((2, 2), bool)) == {"size": [2, 2], "counts": "04"}
    assert mask_to_rle(np.array([[0, 1], [0, 1]])) == {"size": [2, 2], "counts": "22"}
    mask = np.random.default_rng(0).random((37, 53)) > 0.6
    rle = mask_to_rle(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(_decode(rle), mask)
    with pytest.raises(ValueError, match="H, W"):
        mask_to_rle(np.ones((2, 2, 2)))


def test_labels_to_rles_every_class_but_background() -> None:
    labels = np.zeros((6, 7), np.int64)
    labels[1:3, 2:5] = 1
    labels[4, :] = 3
    rles = labels_to_rles(labels, ["background", "cat", "dog", "tree"])
    assert set(rles) == {"cat", "tree"}
    np.testing.assert_array_equal(_decode(rles["cat"]), labels == 1)
    np.testing.assert_array_equal(_decode(rles["tree"]), labels == 3)
    with pytest.raises(ValueError, match="label 3 has no name"):
        labels_to_rles(labels, ["background", "cat"])


# ---------------------------------------------------------------- palette PNG


def test_voc_palette_hand_checked() -> None:
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert pal[255].tolist() == [224, 224, 192]


def test_label_png_round_trip(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 255, 20]], dtype=np.int64)
    img = Image.open(io.BytesIO(encode_label_png(labels)))
    assert img.format == "PNG" and img.mode == "P"
    np.testing.assert_array_equal(np.asarray(img), labels)
    assert img.getpalette()[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    write_label_png(labels, tmp_path / "l.png")
    assert (tmp_path / "l.png").read_bytes() == encode_label_png(labels)
    assert [p.name for p in tmp_path.iterdir()] == ["l.png"]
    for bad in (np.array([[0, 256]]), np.array([[-1, 0]])):
        with pytest.raises(ValueError, match="0..255"):
            encode_label_png(bad, bits=8)
    with pytest.raises(ValueError, match="0..65535"):
        encode_label_png(np.array([[0, 65536]]))


def test_label_png_16_bit_when_labels_need_it() -> None:
    """300 classes: labels above 255 go into a 16-bit grey PNG that reads back to the same values."""
    labels = np.array([[0, 1, 255], [256, 299, 65535]], dtype=np.uint16)
    img = Image.open(io.BytesIO(encode_label_png(labels)))
    assert img.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(img), labels)
    small = Image.open(io.BytesIO(encode_label_png(np.array([[0, 3]]), bits=16)))  # asked for: 16-bit anyway
    assert small.mode == "I;16" and np.asarray(small).tolist() == [[0, 3]]
    assert label_png_bits(256) == 8 and label_png_bits(257) == 16


# ---------------------------------------------------------------- images


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    """A phone photo stored landscape with "rotate 90" in its EXIF is read upright, as viewers show it."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (250, 0, 0)  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "phone.jpg")
    assert out.shape == (40, 20, 3)  # upright: portrait
    assert out[2, 10, 0] > 200 and out[-3, 10, 0] < 50  # the stored left half is now the top half


def test_load_image_scales_16_bit_instead_of_saturating(tmp_path: Path) -> None:
    grey = np.array([[0, 257, 32896, 65535]], np.uint16)  # 0, 1/255, ~1/2, 1 of full scale
    Image.fromarray(grey).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "deep.png")[0, :, 0].tolist() == [0, 1, 128, 255]
    assert load_image(grey)[0, :, 1].tolist() == [0, 1, 128, 255]  # uint16 arrays alike
    assert load_image(np.array([[True, False]]))[0, :, 2].tolist() == [255, 0]
    assert load_image(np.array([[np.nan, 0.5]]))[0, :, 0].tolist() == [0, 127]


def test_load_image_refuses_files_over_the_pixel_limit_from_the_header(tmp_path: Path) -> None:
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", max_pixels=60_000).shape == (200, 300, 3)
    with pytest.raises(UserError, match=r"big.png is 300x200 .* above the limit") as err:
        load_image(tmp_path / "big.png", max_pixels=59_999)
    assert "\n" not in str(err.value)
    before = Image.MAX_IMAGE_PIXELS
    load_image(tmp_path / "big.png", max_pixels=None)
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's own limit is restored for the caller


def test_load_image_arrays() -> None:
    gray = np.array([[0, 7], [200, 255]], np.uint8)
    out = load_image(gray)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8 and (out == gray[..., None]).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 9, 17
    assert load_image(rgba)[0, 0].tolist() == [9, 0, 0]
    unit = np.full((1, 1, 3), 0.5, np.float32)  # 0..1 floats are scaled: 0.5 * 255 = 127.5 -> 127
    assert load_image(unit)[0, 0].tolist() == [127, 127, 127]
    big = np.array([[[300.0, 12.7, -4.0]]])  # floats above 1 are clipped, not scaled
    assert load_image(big)[0, 0].tolist() == [255, 12, 0]
    assert load_image(Image.new("LA", (3, 2), (40, 0))).shape == (2, 3, 3)
    with pytest.raises(UserError, match=r"\(H, W, 3\)"):
        load_image(np.zeros((4, 4, 2), np.uint8))


def test_load_image_files(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "t.png")
    assert load_image(tmp_path / "g.png")[3, 4].tolist() == [77, 77, 77]
    assert load_image(str(tmp_path / "t.png"))[0, 0].tolist() == [10, 20, 30]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match=r"cannot read image .*broken\.jpg"):
        load_image(tmp_path / "broken.jpg")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "missing.png")


def test_encode_jpeg_is_444() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, 7] = (255, 0, 0)  # a one-pixel red line: 4:2:0 would bleed its colour into the next column
    jpg = Image.open(io.BytesIO(encode_jpeg(image)))
    assert jpg.format == "JPEG" and JpegImagePlugin.get_sampling(jpg) == 0
    decoded = np.asarray(jpg).astype(int)
    assert abs(decoded[8, 7, 0] - 255) <= 12 and decoded[8, 5, 0] <= 12


def test_image_file_to_jpeg(tmp_path: Path) -> None:
    src = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8), (0, 0, 255)).save(src, quality=80)
    assert image_file_to_jpeg(src) == src.read_bytes()  # a JPEG is stored byte for byte
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # transparent black -> white after compositing
    rgba.paste((255, 0, 0, 255), (0, 0, 8, 16))
    rgba.save(tmp_path / "t.png")
    out = np.asarray(Image.open(io.BytesIO(image_file_to_jpeg(tmp_path / "t.png")))).astype(int)
    assert np.abs(out[8, 2] - (255, 0, 0)).max() <= 8 and np.abs(out[8, 13] - (255, 255, 255)).max() <= 8
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(OSError):
        image_file_to_jpeg(tmp_path / "bad.png")


# ---------------------------------------------------------------- atomic writes


def test_atomic_writes_leave_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second é")
    assert target.read_text(encoding="utf-8") == "second é"
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails while writing: the old file stays whole
    assert target.read_text(encoding="utf-8") == "second é"
    save_png(np.full((2, 3), 9, np.uint8), tmp_path / "g.png")
    assert np.asarray(Image.open(tmp_path / "g.png")).tolist() == [[9, 9, 9], [9, 9, 9]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "out.txt"]


# ---------------------------------------------------------------- shard writer


def _write(folder: Path, n: int, **kw) -> ShardWriter:
    with ShardWriter(folder=folder, **kw) as writer:
        for i in range(n):
            writer.write(f"s{i:03d}", {"txt": f"caption {i}", "jpg": bytes([i]) * 100, "json": b"{}"})
    return writer


def test_shard_writer_is_deterministic_and_splits_by_count(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a", 5, maxcount=2), _write(tmp_path / "b", 5, maxcount=2)
    assert a.count == 5 and [Path(p).name for p in a.shards] == [f"shard-00000{i}.tar" for i in range(3)]
    assert a.shards[0] == str(tmp_path / "a" / "shard-000000.tar")
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [Path(p).name for p in a.shards]  # no temporary file
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["s000.jpg", "s000.json", "s000.txt", "s001.jpg", "s001.json", "s001.txt"]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
        assert tar.extractfile("s001.txt").read() == b"caption 1"


def test_shard_writer_pattern_and_maxsize(tmp_path: Path) -> None:
    import webdataset as wds

    with ShardWriter(str(tmp_path / "x" / "part-%03d.tar"), maxsize=250) as writer:
        for i in range(5):
            writer.write(f"k{i}", {"bin": bytes(100)})  # 100 payload bytes: a shard is full after 3 (300 >= 250)
    assert writer.shards == [str(tmp_path / "x" / "part-000.tar"), str(tmp_path / "x" / "part-001.tar")]
    samples = list(wds.WebDataset(writer.shards, shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["k0", "k1", "k2", "k3", "k4"]
    assert [s["__url__"] for s in samples] == [writer.shards[0]] * 3 + [writer.shards[1]] * 2


def test_shard_writer_edge_cases(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty", 0)
    assert empty.shards == [] and empty.count == 0 and list((tmp_path / "empty").iterdir()) == []
    with pytest.raises(ValueError, match="'a.b'"):
        _write(tmp_path / "k", 0).write("a.b", {"txt": b""})
    with pytest.raises(ValueError, match="exactly one"):
        ShardWriter()
    with pytest.raises(RuntimeError):
        with ShardWriter(folder=tmp_path / "err", maxcount=2) as writer:
            for i in range(3):
                writer.write(f"s{i}", {"txt": b"x"})
            raise RuntimeError("stop")
    # The full first shard is kept; the one cut short by the error is not committed, and no temporary file stays.
    assert [p.name for p in (tmp_path / "err").iterdir()] == ["shard-000000.tar"]
    assert writer.shards == [str(tmp_path / "err" / "shard-000000.tar")]


# ---------------------------------------------------------------- panels


def test_semseg_panel_pixels() -> None:
    image = np.full((2, 3, 3), 101, np.uint8)
    pred = np.array([[1, 0, 255], [-1, 300, 2]])
    gt = np.array([[2, 2, 2], [0, 255, 1]], np.uint8)
    panel = semseg_panel(image, pred, gt)
    assert panel.shape == (2, 9, 3) and panel.dtype == np.uint8
    assert (panel[:, :3] == 101).all()
    # half blends, truncated: 101/2 + 128/2 = 114.5 -> 114; with black 50.5 -> 50; with white (ignore) 178
    pred_part = panel[:, 3:6]
    assert pred_part[0, 0].tolist() == [114, 50, 50]
    assert pred_part[0, 1].tolist() == [50, 50, 50]
    assert pred_part[0, 2].tolist() == [178, 178, 178]
    assert pred_part[1, 0].tolist() == [50, 50, 50] and pred_part[1, 1].tolist() == [50, 50, 50]  # outside 0..255
    assert pred_part[1, 2].tolist() == [50, 114, 50]
    gt_part = panel[:, 6:]
    assert gt_part[0, 0].tolist() == [50, 114, 50] and gt_part[1, 1].tolist() == [178, 178, 178]
    assert gt_part[1, 2].tolist() == [114, 50, 50]


def test_ris_panel_pixels() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    pred = np.array([[True, False], [False, False]])
    gt = np.array([[0, 0], [0, 1]])
    panel = ris_panel(image, pred, gt)
    assert panel.shape == (2, 6, 3)
    assert panel[0, 2].tolist() == [177, 50, 50] and panel[0, 3].tolist() == [100, 100, 100]
    assert panel[1, 5].tolist() == [50, 177, 50] and panel[0, 4].tolist() == [100, 100, 100]
    assert (ris_panel(image, None, gt)[:, 2:4] == 100).all()


def test_overlay_paints_classes_only_and_draws_a_legend() -> None:
    image = np.full((40, 40, 3), 100, np.uint8)
    labels = np.zeros((40, 40), np.int64)
    labels[30:, 30:] = 1
    labels[30:, :5] = 255
    plain = np.asarray(overlay(image, labels))
    assert plain[35, 35].tolist() == [115, 45, 45]  # 0.45 * 100 + 0.55 * (128, 0, 0), truncated
    assert plain[35, 2].tolist() == [100, 100, 100] and plain[7, 7].tolist() == [100, 100, 100]
    legend = np.asarray(overlay(image, labels, names=["background", "cat"]))
    assert legend[7, 7].tolist() == [128, 0, 0]  # the legend's colour box of class 1
    assert legend[35, 35].tolist() == [115, 45, 45]


def test_image_cache_keeps_the_most_recent_images():
    from textseg.io import ImageCache

    a, b, c = (np.full((2, 2, 3), v, np.uint8) for v in (1, 2, 3))
    calls: list[int] = []
    cache = ImageCache(2)

    def get(image):
        return cache.get(image, lambda: calls.append(int(image[0, 0, 0])) or int(image[0, 0, 0]) * 10)

    assert [get(a), get(b), get(a.copy())] == [10, 20, 10] and calls == [1, 2]  # same content: no recompute
    get(c)  # evicts b, the least recently used (a was used after it)
    assert calls == [1, 2, 3]
    get(a)
    get(b)
    assert calls == [1, 2, 3, 2]
    get(np.full((3, 2, 2), 1, np.uint8))  # a's bytes in another shape: another key, computed again
    assert calls == [1, 2, 3, 2, 1]


def test_decode_image_reads_bytes_in_memory_with_the_same_checks() -> None:
    from textseg.io import decode_image

    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buf, format="PNG")
    out = decode_image(buf.getvalue())
    assert out.shape == (2, 3, 3) and out[1, 2].tolist() == [1, 2, 3]
    with pytest.raises(UserError, match=r"^cannot read 'a.txt': UnidentifiedImageError$"):
        decode_image(b"plain text", "'a.txt'")
    with pytest.raises(UserError, match=r"^the upload is 3x2 \(0 MP\), above the limit of 0 MP$"):
        decode_image(buf.getvalue(), max_pixels=5)
