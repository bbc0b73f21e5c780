"""Dataset readers on real samples in their original formats (tests/data) and on small layouts written here."""

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from textseg.data import (
    BENCHMARKS,
    COCOObject,
    RefDataset,
    VOCSegmentation,
    build_semseg_dataset,
    convert_coco_object,
    decode_segmentation,
    get_class_names,
)
from textseg.data.coco_object import LABEL_SUFFIX
from textseg.errors import ConfigError, DatasetError

DATA = Path(__file__).parent / "data"
VOC = DATA / "voc2012"
COCO_JSON = DATA / "coco" / "annotations" / "instances_val2017.json"


def _counts(label):
    values, counts = np.unique(label, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


# ---------------------------------------------------------------- VOC


def test_voc21_reads_palette_indices():
    ds = VOCSegmentation(VOC, "val")
    assert len(ds) == 1 and ds.has_background
    item = ds[0]
    assert item["id"] == "2007_000033"
    assert item["image"].shape == (366, 500, 3) and item["image"].dtype == np.uint8
    assert item["label"].dtype == np.uint8
    assert _counts(item["label"]) == {0: 143868, 1: 30937, 255: 8195}
    assert ds.class_names[0] == "background" and ds.class_names[1] == "aeroplane" and len(ds.class_names) == 21


def test_voc_accepts_voc2012_folder_and_voc20_mapping():
    ds = build_semseg_dataset("voc20", VOC / "VOC2012")
    assert not ds.has_background and len(ds.class_names) == 20
    # background -> ignore, aeroplane 1 -> 0
    assert _counts(ds[0]["label"]) == {0: 30937, 255: 143868 + 8195}
    assert ds.class_names[0] == "aeroplane"


def test_voc_missing_files_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match="VOC2012"):
        VOCSegmentation(tmp_path)
    root = tmp_path / "VOCdevkit"
    shutil.copytree(VOC, root)
    with pytest.raises(DatasetError, match=r"train\.txt"):
        VOCSegmentation(root, "train")
    # A missing label or image is found when the reader is built, before any model runs.
    label = root / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    label.rename(label.with_suffix(".bak"))
    with pytest.raises(DatasetError, match=r"label file of '2007_000033' listed in .*val\.txt not found: .*\.png"):
        VOCSegmentation(root, "val")
    label.with_suffix(".bak").rename(label)
    (root / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2007_000099\n2007_9\n")
    with pytest.raises(DatasetError, match=r"image of '2007_000099' listed in .*2007_000099\.jpg \(and 1 more\)"):
        VOCSegmentation(root, "val")


def _voc_copy(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit"
    shutil.copytree(VOC, root)
    return root


def _save_label(path: Path, array: np.ndarray, palette_from: Path | None = None) -> None:
    img = Image.fromarray(array)
    if palette_from is not None:
        img.putpalette(Image.open(palette_from).getpalette())
    img.save(path)


def test_label_values_outside_the_class_range_are_a_one_line_error(tmp_path):
    root = _voc_copy(tmp_path)
    path = root / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    label = np.asarray(Image.open(path)).copy()
    label[5, 7] = 50
    label[6, 7] = 50
    _save_label(path, label, palette_from=VOC / "VOC2012" / "SegmentationClass" / "2007_000033.png")
    with pytest.raises(DatasetError) as info:
        VOCSegmentation(root, "val")[0]
    message = str(info.value)
    assert "\n" not in message and "2007_000033.png" in message, message
    assert "value 50 at x=7, y=5 (2 such pixels)" in message and "0..20 (classes), 255 (ignored)" in message
    # VOC-20 stores the same file: 0 and 255 are ignored, 1..20 are classes.
    with pytest.raises(DatasetError, match=r"value 50 .*voc20: 1\.\.20 \(classes\), 0, 255 \(ignored\)"):
        build_semseg_dataset("voc20", root)[0]
    # 21 is out of range for both (VOC-20's 1..20 and VOC-21's 0..20).
    label[5, 7] = label[6, 7] = 21
    _save_label(path, label)
    with pytest.raises(DatasetError, match="value 21"):
        build_semseg_dataset("voc20", root)[0]


@pytest.mark.parametrize("case, expected", [
    ("rgb", "colour (RGB) image"),
    ("jpeg", "JPEG (lossy)"),
    ("corrupt", "cannot read label file"),
    ("truncated", "cannot read label file"),
    ("two-channel", "not a single-channel image"),
    ("16-bit", "outside 0..255"),
    ("small", "is 20x10 but image"),
])
def test_bad_label_files_are_one_line_errors(tmp_path, case, expected):
    root = _voc_copy(tmp_path)
    path = root / "VOC2012" / "SegmentationClass" / "2007_000033.png"
    good = np.asarray(Image.open(path))
    if case == "rgb":
        Image.open(path).convert("RGB").save(path)
    elif case == "jpeg":
        Image.fromarray(good).save(path, format="JPEG")
    elif case == "corrupt":
        path.write_bytes(b"not a png at all")
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif case == "two-channel":
        Image.fromarray(good).convert("LA").save(path)
    elif case == "16-bit":
        Image.fromarray(np.full(good.shape, 300, np.uint16)).save(path)
    elif case == "small":
        _save_label(path, good[:10, :20])
    with pytest.raises(DatasetError) as info:
        VOCSegmentation(root, "val")[0]
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message, message
    if case == "small":
        assert "2007_000033.jpg is 500x366" in message


def test_bad_images_and_split_files_are_one_line_errors(tmp_path):
    root = _voc_copy(tmp_path)
    image = root / "VOC2012" / "JPEGImages" / "2007_000033.jpg"
    image.write_bytes(image.read_bytes()[:300])
    with pytest.raises(DatasetError, match=r"cannot read image .*2007_000033\.jpg"):
        VOCSegmentation(root, "val")[0]
    split = root / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    for text, expected in ((b"\n  \n", "split file is empty"), (b"\xff\xfe2007\n", "not UTF-8"),
                           (b"2007_000033\n\n2007_000033 1\n", "lists '2007_000033' twice (lines 1 and 3)")):
        split.write_bytes(text)
        with pytest.raises(DatasetError, match=re.escape(expected)):
            VOCSegmentation(root, "val")
    with pytest.raises(DatasetError, match=r"split 'nope' not found: .*nope\.txt \(splits present: val\)"):
        VOCSegmentation(root, "nope")
    with pytest.raises(DatasetError, match="not a folder"):
        VOCSegmentation(split)


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="voc21"):
        build_semseg_dataset("voc", VOC)


# ---------------------------------------------------------------- COCO


def _coco():
    return json.loads(COCO_JSON.read_text())


def test_coco_polygons_match_their_area_and_crowd_rle_decodes_exactly():
    data = _coco()
    images = {im["id"]: im for im in data["images"]}
    crowd = []
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        mask = decode_segmentation(ann["segmentation"], im["height"], im["width"])
        assert mask.shape == (im["height"], im["width"]) and mask.dtype == bool
        if ann["iscrowd"]:
            crowd.append((ann["area"], int(mask.sum())))
        else:
            assert abs(int(mask.sum()) - ann["area"]) <= 0.04 * ann["area"], ann["id"]
    # COCO crowd areas are not pixel counts: the uncompressed RLE holds 3,386 pixels for an area of 4015.
    assert crowd == [(4015, 3386)]


def test_compressed_and_uncompressed_rle_agree():
    from pycocotools import mask as mask_utils

    data = _coco()
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    h, w = crowd["segmentation"]["size"]
    dense = decode_segmentation(crowd["segmentation"], h, w)
    compressed = mask_utils.encode(np.asfortranarray(dense.astype(np.uint8)))
    as_text = {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}
    assert np.array_equal(decode_segmentation(as_text, h, w), dense)
    assert np.array_equal(decode_segmentation(compressed, h, w), dense)
    with pytest.raises(DatasetError, match="size"):
        decode_segmentation(as_text, h + 1, w)


def test_coco_object_converter_and_reader(tmp_path):
    data = _coco()
    names = get_class_names("coco_object")
    out = tmp_path / "coco" / "annotations" / "val2017"
    written = convert_coco_object(COCO_JSON, out)
    assert sorted(p.name for p in written) == [f"000000000139{LABEL_SUFFIX}", f"000000255917{LABEL_SUFFIX}"]
    labels = {p.name[:12]: np.asarray(Image.open(p)) for p in written}
    assert labels["000000000139"].shape == (426, 640) and labels["000000255917"].shape == (427, 640)
    expected = {
        "000000000139": {"person", "chair", "potted plant", "dining table", "tv", "microwave", "refrigerator",
                         "book", "clock", "vase"},
        "000000255917": {"person", "car", "truck", "traffic light"},
    }
    for stem, label in labels.items():
        values = set(np.unique(label).tolist())
        assert 0 in values
        assert {names[v] for v in values - {0, 255}} == expected[stem]
    assert 255 in set(np.unique(labels["000000255917"]).tolist())  # the crowd region of cars
    assert 255 not in set(np.unique(labels["000000000139"]).tolist())
    # Label ids follow the JSON's category order: COCO id 62 (chair) is the 57th category.
    assert [c["id"] for c in data["categories"]].index(62) + 1 == names.index("chair") == 57

    # Reader: images are not in the fixture, so write blank ones of the right size.
    image_dir = tmp_path / "coco" / "images" / "val2017"
    image_dir.mkdir(parents=True)
    for im in data["images"]:
        Image.new("RGB", (im["width"], im["height"])).save(image_dir / im["file_name"])
    ds = COCOObject(tmp_path / "coco", "val")
    assert len(ds) == 2 and ds.has_background and len(ds.class_names) == 81
    item = ds[0]
    assert item["id"] == "000000000139"
    assert np.array_equal(item["label"], labels["000000000139"])


def test_coco_object_painting_rule(tmp_path):
    # 10x10 image: a small "cup" square listed BEFORE a large "table" covering everything; a crowd region over the
    # right half. Smaller objects are painted last, crowd only where no instance lies.
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
        "categories": [{"id": 7, "name": "table"}, {"id": 3, "name": "cup"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[2, 2, 5, 2, 5, 5, 2, 5]]},
            {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 6, 0, 6]]},
            {"id": 3, "image_id": 1, "category_id": 7, "iscrowd": 1,
             "segmentation": {"size": [10, 10], "counts": [50, 50]}},  # column-major: columns 5..9
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    (png,) = convert_coco_object(path, tmp_path / "out")
    label = np.asarray(Image.open(png))
    assert label[3, 3] == 2  # cup (2nd category) on the table
    assert label[0, 0] == 1 and label[0, 9] == 1  # table, also under the crowd region
    assert label[8, 9] == 255  # crowd, no instance
    assert label[8, 0] == 0  # background


# ---------------------------------------------------------------- other semantic layouts


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_context_ade_cocostuff_cityscapes_label_mapping(tmp_path):
    img = np.full((4, 6, 3), 100, np.uint8)
    raw = np.array([[0, 1, 2, 3, 4, 5]] * 4, np.uint8)

    ctx = tmp_path / "VOCdevkit" / "VOC2010"
    _write(ctx / "JPEGImages" / "2008_000001.jpg", img)
    _write(ctx / "SegmentationClassContext" / "2008_000001.png", raw)
    (ctx / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (ctx / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000001\n")
    c60 = build_semseg_dataset("context60", tmp_path / "VOCdevkit")
    c59 = build_semseg_dataset("context59", ctx)
    assert c60[0]["label"][0].tolist() == [0, 1, 2, 3, 4, 5] and c60.class_names[0] == "background"
    assert c59[0]["label"][0].tolist() == [255, 0, 1, 2, 3, 4] and c59.class_names[0] == "aeroplane"
    assert len(c60.class_names) == 60 and len(c59.class_names) == 59

    ade = tmp_path / "ADEChallengeData2016"
    _write(ade / "images" / "validation" / "ADE_val_00000001.jpg", img)
    _write(ade / "annotations" / "validation" / "ADE_val_00000001.png", raw)
    ds = build_semseg_dataset("ade20k", tmp_path)
    assert ds[0]["id"] == "ADE_val_00000001"
    assert ds[0]["label"][0].tolist() == [255, 0, 1, 2, 3, 4] and ds.class_names[0] == "wall"

    stuff = tmp_path / "coco_stuff164k"
    _write(stuff / "images" / "val2017" / "000000000139.jpg", img)
    _write(stuff / "annotations" / "val2017" / "000000000139_labelTrainIds.png", raw)
    ds = build_semseg_dataset("coco_stuff171", stuff)
    assert ds[0]["label"][0].tolist() == [0, 1, 2, 3, 4, 5] and len(ds.class_names) == 171

    city = tmp_path / "cityscapes"
    _write(city / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png", img)
    _write(city / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png", raw)
    ds = build_semseg_dataset("cityscapes", city)
    assert ds[0]["id"] == "lindau_000000_000019" and ds.class_names[13] == "car"
    assert ds[0]["image"].shape == (4, 6, 3)

    with pytest.raises(DatasetError, match="leftImg8bit"):
        build_semseg_dataset("cityscapes", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="split"):
        build_semseg_dataset("ade20k", tmp_path, split="testA")


def test_class_name_lists():
    sizes = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81, "ade20k": 150,
             "coco_stuff171": 171, "cityscapes": 19}
    assert set(sizes) == set(BENCHMARKS)
    for name, size in sizes.items():
        names = get_class_names(name)
        assert len(names) == size and len(set(names)) == size, name
        prompt = get_class_names(name, prompt=True)
        assert len(prompt) == size and not any("-" in n for n in prompt), name
    assert get_class_names("voc21") == [
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    ]
    voc_prompt = get_class_names("voc20", prompt=True)
    assert {"dining table", "potted plant", "tv monitor", "aeroplane"} <= set(voc_prompt)
    assert get_class_names("coco_stuff171", prompt=True)[get_class_names("coco_stuff171").index("wall-brick")] == (
        "brick wall"
    )
    with pytest.raises(ConfigError):
        get_class_names("voc")


# ---------------------------------------------------------------- refer format


def _refer_fixture(root: Path) -> dict:
    """Write refs(unc).p + instances.json + 2 tiny images; return what the tests expect."""
    from pycocotools import mask as mask_utils

    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 6), (10, 20, 30)).save(root / "images" / "COCO_train2014_000000000001.jpg")
    Image.new("RGB", (5, 4), (40, 50, 60)).save(root / "images" / "COCO_train2014_000000000002.jpg")
    # Image 2 is 4 rows x 5 columns. Uncompressed RLE counts run over pixels in column-major order:
    # [5, 3, 12] = 5 off (column 0 and row 0 of column 1), 3 on (rows 1..3 of column 1), 12 off.
    rle_mask = np.zeros((4, 5), bool)
    rle_mask[1:4, 1] = True
    compressed_src = np.zeros((4, 5), np.uint8)
    compressed_src[0, 2:5] = 1
    compressed = mask_utils.encode(np.asfortranarray(compressed_src))
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 6, "width": 8},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 4, "width": 5},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 12.0, "bbox": [1, 1, 4, 3],
             "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},
            {"id": 11, "image_id": 2, "category_id": 18, "iscrowd": 0, "area": 3.0, "bbox": [1, 1, 1, 3],
             "segmentation": {"size": [4, 5], "counts": [5, 3, 12]}},
            {"id": 12, "image_id": 2, "category_id": 3, "iscrowd": 0, "area": 3.0, "bbox": [2, 0, 3, 1],
             "segmentation": {"size": [4, 5], "counts": compressed["counts"].decode("ascii")}},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}],
    }

    def ref(ref_id, ann_id, image_id, split, sents, cat):
        return {
            "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": cat,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sentences": [{"sent": s, "raw": s.capitalize(), "tokens": s.split(), "sent_id": 100 * ref_id + k}
                          for k, s in enumerate(sents)],
            "sent_ids": [100 * ref_id + k for k in range(len(sents))],
        }

    refs = [
        ref(0, 10, 1, "val", ["man on the left", "person in blue"], 1),
        ref(1, 11, 2, "val", ["the dog"], 18),
        ref(2, 12, 2, "testA", ["red car at the top"], 3),
        ref(3, 10, 1, "train", ["a", "b", "c"], 1),
    ]
    for name in ("refcoco", "mydata"):
        (root / name).mkdir()
        (root / name / "instances.json").write_text(json.dumps(instances))
        with (root / name / "refs(unc).p").open("wb") as f:
            pickle.dump(refs, f)
    return {"rle_mask": rle_mask, "compressed_mask": compressed_src.astype(bool)}


def test_refer_dataset(tmp_path):
    expected = _refer_fixture(tmp_path)
    counts = {split: len(RefDataset(tmp_path, "refcoco", "unc", split)) for split in ("val", "testA", "train")}
    assert counts == {"val": 3, "testA": 1, "train": 3}

    ds = RefDataset(tmp_path, "refcoco", "unc", "val")
    first, second, third = ds[0], ds[1], ds[2]
    sentences = (first["sentence"], second["sentence"], third["sentence"])
    assert sentences == ("man on the left", "person in blue", "the dog")
    assert first["image"].shape == (6, 8, 3) and first["mask"].dtype == bool
    assert (first["ref_id"], first["ann_id"], first["image_id"], first["category_id"]) == (0, 10, 1, 1)
    assert (second["sent_id"], third["sent_id"]) == (1, 100)
    assert np.array_equal(first["mask"], second["mask"])
    # Polygon corners (1,1)-(5,4) in pixel-edge coordinates: the pixels whose centres lie inside are columns 1..4,
    # rows 1..3 (12 pixels, equal to the 4x3 area).
    polygon_mask = np.zeros((6, 8), bool)
    polygon_mask[1:4, 1:5] = True
    assert np.array_equal(first["mask"], polygon_mask)
    assert np.array_equal(third["mask"], expected["rle_mask"])  # uncompressed RLE, pixel-exact
    assert third["image"].shape == (4, 5, 3) and third["category_id"] == 18

    test_a = RefDataset(tmp_path, "refcoco", "unc", "testA", image_root=tmp_path / "images")
    assert np.array_equal(test_a[0]["mask"], expected["compressed_mask"])  # compressed RLE (str counts)


def test_refer_dataset_errors(tmp_path):
    _refer_fixture(tmp_path)
    with pytest.raises(ConfigError, match="testA"):
        RefDataset(tmp_path, "refcoco", "unc", "test")  # not a RefCOCO (unc) split
    with pytest.raises(DatasetError, match="testB"):
        RefDataset(tmp_path, "refcoco", "unc", "testB")  # valid name, absent from the file
    with pytest.raises(DatasetError, match=r"refs\(umd\)\.p"):
        RefDataset(tmp_path, "refcocog", "umd", "val")
    with pytest.raises(DatasetError, match="image folder"):
        RefDataset(tmp_path, "refcoco", "unc", "val", image_root=tmp_path / "nope")
    # Another dataset name: any split present in its file.
    assert len(RefDataset(tmp_path, "mydata", "unc", "testA")) == 1


def test_compressed_rle_reader_matches_pycocotools_on_random_masks():
    from pycocotools import mask as mask_utils

    from textseg.data.coco_masks import compressed_rle_counts

    rng = np.random.default_rng(0)
    for trial in range(50):
        h, w = rng.integers(1, 60, size=2)
        mask = rng.random((h, w)) < rng.random()
        if trial % 5 == 0:
            mask[:] = trial % 2  # all off / all on: one or two runs
        flat = mask.T.ravel()  # column-major, as RLE counts run
        change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        edges = np.concatenate([[0], change, [flat.size]])
        runs = np.diff(edges).tolist()
        if flat[0]:
            runs = [0] + runs  # counts start with a run of zeros
        counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        assert compressed_rle_counts(counts) == runs
        assert np.array_equal(decode_segmentation({"size": [int(h), int(w)], "counts": counts.decode()}, h, w), mask)


def test_refer_no_target_pairs_each_sentence_with_an_image_lacking_its_category(tmp_path):
    _refer_fixture(tmp_path)
    nt = RefDataset(tmp_path, "refcoco", "unc", "val", no_target=True)
    assert len(nt) == 3 and nt.no_target
    # ref 0 (a person, image 1) goes to image 2 (a dog and a car); ref 1 (the dog, image 2) to image 1 (a person)
    first, last = nt[0], nt[2]
    assert (first["image_id"], first["sentence"], first["ann_id"]) == (2, "man on the left", -1)
    assert first["image"].shape[:2] == first["mask"].shape == (4, 5) and not first["mask"].any()
    assert (last["image_id"], last["sentence"], last["no_target"]) == (1, "the dog", True)
    assert RefDataset(tmp_path, "refcoco", "unc", "val")[0]["no_target"] is False
    with pytest.raises(DatasetError, match="no image of split 'testA' lacks category 3"):
        RefDataset(tmp_path, "refcoco", "unc", "testA", no_target=True)
