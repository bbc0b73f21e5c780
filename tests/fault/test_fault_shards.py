"""Fault cases of `textseg make-shards`: bad captions files, bad rows, bad images, bad options and output folders.

Every case that writes asserts the invariant: rows in == samples written + rows skipped, each skip listed in
``skipped.jsonl`` with its line (when the format has lines) and reason, and counted in the printed report.
"""

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from faults import TINY, fault  # noqa: F401  (fixture)

HEADER = "file,caption\n"


def jpeg(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def images(tmp_path) -> Path:
    """An images folder with a.jpg, b.jpg, c.jpg (valid) and, next to it, outside.jpg (valid, must not be read)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 255, 0)), ("c", (0, 0, 255))):
        (folder / f"{name}.jpg").write_bytes(jpeg(colour))
    (tmp_path / "outside.jpg").write_bytes(jpeg())
    return folder


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def samples(out: Path) -> list[tuple[str, str]]:
    """(key, caption) of every sample in the shards of ``out``, in order."""
    found = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            keys = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
            for key in keys:
                assert f"{key}.jpg" in names
                found.append((key, tar.extractfile(f"{key}.txt").read().decode("utf-8")))
    return found


def accounted(run, out: Path, rows: int) -> tuple[list[str], list[dict]]:
    """Assert rows == written + skipped in the shards, skipped.jsonl and the printed report; return both lists."""
    written = [caption for _, caption in samples(out)]
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(written) + len(skipped) == rows, (written, skipped)
    assert f"read {rows} rows: wrote {len(written)} samples" in run.out, run.out
    assert f"skipped {len(skipped)} (see" in run.out, run.out
    by_reason: dict[str, int] = {}
    for item in skipped:
        by_reason[item["reason"].split(":")[0]] = by_reason.get(item["reason"].split(":")[0], 0) + 1
    for reason, n in by_reason.items():
        assert f"skipped {n}: {reason}" in run.out, run.out
    assert not list(out.glob("*.tmp*")) and all(p.stat().st_size > 0 for p in out.glob("shard-*.tar"))
    return written, skipped


def shards(fault, images, captions, out, *options):
    return fault.ok(["make-shards", images, captions, out, *options])


# ---------------------------------------------------------------------------------------------------------------
# CSV structure


def test_unterminated_quote_skips_its_row_and_keeps_the_next(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + 'a.jpg,"a red square\nb.jpg,a green square\nc.jpg,a blue square\n')
    run = fault.run(["make-shards", images, csv, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 3)
    assert written == ["a green square", "a blue square"]
    assert [(s["line"], s["reason"], Path(s["path"]).name) for s in skipped] == [(2, "unterminated quote", "a.jpg")]
    assert "skipped 1: unterminated quote (line 2)" in run.out
    fault.skip(run)


def test_unterminated_quote_on_the_last_line(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + 'a.jpg,red\nb.jpg,green\nc.jpg,"blue')
    run = fault.run(["make-shards", images, csv, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 3)
    assert written == ["red", "green"] and [(s["line"], s["reason"]) for s in skipped] == [(4, "unterminated quote")]
    fault.skip(run)


def test_quoted_caption_spanning_lines_is_skipped_line_by_line(fault, images, tmp_path):
    # one row per line (documented): the two lines of the quoted caption are two counted skips, nothing swallowed
    csv = write(tmp_path / "c.csv", HEADER + 'a.jpg,"a red\nsquare"\nb.jpg,green\n')
    run = fault.run(["make-shards", images, csv, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 3)
    assert written == ["green"]
    assert [(s["line"], s["reason"].split(":")[0]) for s in skipped] == [(2, "unterminated quote"), (3, "bad row")]
    fault.skip(run)


def test_unquoted_comma_gives_too_many_fields(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red, and white\nb.jpg,green\n")
    run = fault.run(["make-shards", images, csv, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 2)
    assert written == ["green"] and skipped[0]["line"] == 2 and "3 fields, the header has 2" in skipped[0]["reason"]
    fault.skip(run)


def test_quoted_comma_and_escaped_quote_are_one_caption(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + 'a.jpg,"red, ""bright"" square"\n')
    run = shards(fault, images, csv, tmp_path / "o")
    assert accounted(run, tmp_path / "o", 1)[0] == ['red, "bright" square']


def test_header_only_csv_is_an_error_and_writes_nothing(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + "\n\n")
    fault.error(["make-shards", images, csv, tmp_path / "o"], "no caption rows", str(csv), "only a header")
    assert not (tmp_path / "o").exists()


def test_empty_csv_is_an_error(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", "")
    fault.error(["make-shards", images, csv, tmp_path / "o"], "no caption rows", str(csv))
    assert not (tmp_path / "o").exists()


def test_missing_header_is_an_error_naming_the_line(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", "a.jpg,red\nb.jpg,green\n")
    fault.error(["make-shards", images, csv, tmp_path / "o"], f"{csv}:1", "missing column 'file' or 'image'")


def test_unknown_caption_column_is_an_error(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", "file,label\na.jpg,red\n")
    fault.error(["make-shards", images, csv, tmp_path / "o"], str(csv), "'caption' or 'text'", "label")


def test_duplicate_header_column_is_an_error(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", "file,caption,caption\na.jpg,red,blue\n")
    fault.error(["make-shards", images, csv, tmp_path / "o"], str(csv), "'caption' appears 2 times")


def test_header_names_are_case_and_space_insensitive(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", " File , CAPTION \na.jpg,red\n")
    run = shards(fault, images, csv, tmp_path / "o")
    assert accounted(run, tmp_path / "o", 1)[0] == ["red"]


def test_bom_and_crlf_are_read(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", b"\xef\xbb\xbffile,caption\r\na.jpg,red\r\nb.jpg,\"green, bright\"\r\n")
    run = shards(fault, images, csv, tmp_path / "o")
    assert accounted(run, tmp_path / "o", 2)[0] == ["red", "green, bright"]


def test_blank_lines_are_not_rows(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + "\na.jpg,red\n   \n\nb.jpg,green\n")
    run = shards(fault, images, csv, tmp_path / "o")
    assert [k for k, _ in samples(tmp_path / "o")] == ["000000000", "000000001"]
    assert accounted(run, tmp_path / "o", 2)[0] == ["red", "green"]


# ---------------------------------------------------------------------------------------------------------------
# Encodings and characters


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_non_utf8_file_names_the_file_and_line(fault, images, tmp_path, suffix):
    rows = [HEADER.encode(), b"a.jpg,red\n", b"b.jpg,caf\xe9\n"] if suffix == ".csv" else [
        b'{"file": "a.jpg", "caption": "red"}\n', b'{"file": "b.jpg", "caption": "caf\xe9"}\n']
    path = write(tmp_path / f"c{suffix}", b"".join(rows))
    fault.error(["make-shards", images, path, tmp_path / "o"], f"{path}:{len(rows)}", "not UTF-8", "0xe9")
    assert not (tmp_path / "o").exists()


def test_utf16_file_is_an_error_that_says_so(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", (HEADER + "a.jpg,red\n").encode("utf-16"))
    fault.error(["make-shards", images, csv, tmp_path / "o"], f"{csv}:1", "UTF-16")


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x85x\x9b"])
def test_control_character_in_csv_caption_is_a_counted_skip(fault, images, tmp_path, char):
    csv = write(tmp_path / "c.csv", HEADER + f"a.jpg,red{char}square\nb.jpg,green\n")
    run = fault.run(["make-shards", images, csv, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 2)
    assert written == ["green"] and skipped[0]["reason"].startswith("bad caption: control character U+")
    assert all(char not in c for c in written)
    fault.skip(run)


def test_nul_and_lone_surrogate_in_jsonl_captions_are_counted_skips(fault, images, tmp_path):
    jsonl = write(tmp_path / "c.jsonl", '{"file": "a.jpg", "caption": "red\\u0000"}\n'
                                        '{"file": "b.jpg", "caption": "green \\ud800"}\n'
                                        '{"file": "c.jpg", "caption": "blue"}\n')
    run = fault.run(["make-shards", images, jsonl, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 3)
    assert written == ["blue"]
    assert [(s["line"], s["reason"]) for s in skipped] == [
        (1, "bad caption: control character U+0000"), (2, "bad caption: invalid character U+D800")]
    fault.skip(run)


def test_tabs_and_line_breaks_in_a_caption_become_spaces(fault, images, tmp_path):
    jsonl = write(tmp_path / "c.jsonl", '{"file": "a.jpg", "caption": " red\\tand\\r\\nwhite "}\n')
    run = shards(fault, images, jsonl, tmp_path / "o")
    assert accounted(run, tmp_path / "o", 1)[0] == ["red and  white"]


def test_control_character_in_file_name_is_a_counted_skip(fault, images, tmp_path):
    jsonl = write(tmp_path / "c.jsonl", '{"file": "a.jpg\\u0000.png", "caption": "red"}\n'
                                        '{"file": "b.jpg", "caption": "green"}\n')
    run = fault.run(["make-shards", images, jsonl, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 2)
    assert written == ["green"] and skipped[0]["reason"] == "bad file name: control character"
    fault.skip(run)


# ---------------------------------------------------------------------------------------------------------------
# JSONL records


@pytest.mark.parametrize("record, reason", [
    ('{"file": "a.jpg", "caption": null}', "bad caption: not a string (null)"),
    ('{"file": "a.jpg", "caption": 42}', "bad caption: not a string (number)"),
    ('{"file": "a.jpg", "caption": ["red"]}', "bad caption: not a string (array)"),
    ('{"file": "a.jpg", "caption": {"en": "red"}}', "bad caption: not a string (object)"),
    ('{"file": "a.jpg", "caption": ""}', "empty caption"),
    ('{"file": "a.jpg", "caption": " \\t\\n "}', "empty caption"),
    ('{"file": "a.jpg"}', "missing field: 'caption' or 'text'"),
    ('{"caption": "red"}', "missing field: 'file' or 'image'"),
    ('{"file": null, "caption": "red"}', "bad file name: not a string (null)"),
    ('{"file": "", "caption": "red"}', "bad file name: empty"),
    ('["a.jpg", "red"]', "bad record: expected an object, got array"),
    ('"a.jpg red"', "bad record: expected an object, got string"),
    ('7', "bad record: expected an object, got number"),
    ('{"file": "a.jpg", "caption": "red"', "invalid JSON: Expecting ',' delimiter"),
    ("not json at all", "invalid JSON: Expecting value"),
    ("[" * 100000, "invalid JSON: nested too deeply"),
])  # fmt: skip
def test_bad_jsonl_record_is_a_counted_skip(fault, images, tmp_path, record, reason):
    jsonl = write(tmp_path / "c.jsonl", f'{{"file": "b.jpg", "caption": "green"}}\n{record}\n'
                                        f'{{"image": "c.jpg", "text": "blue"}}\n')
    run = fault.run(["make-shards", images, jsonl, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 3)
    assert written == ["green", "blue"]
    assert [(s["line"], s["reason"]) for s in skipped] == [(2, reason)]
    fault.skip(run)


def test_jsonl_with_bom_is_read(fault, images, tmp_path):
    jsonl = write(tmp_path / "c.jsonl", b'\xef\xbb\xbf{"file": "a.jpg", "caption": "red"}\r\n')
    run = shards(fault, images, jsonl, tmp_path / "o")
    assert accounted(run, tmp_path / "o", 1)[0] == ["red"]


def test_empty_jsonl_is_an_error(fault, images, tmp_path):
    jsonl = write(tmp_path / "c.jsonl", "\n \n")
    fault.error(["make-shards", images, jsonl, tmp_path / "o"], "no caption rows", str(jsonl))


# ---------------------------------------------------------------------------------------------------------------
# Rows and images


def test_duplicate_rows_are_skipped_but_other_captions_of_an_image_are_kept(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red\na.jpg,a red square\n./a.jpg,red\nb.jpg,green\n")
    run = fault.run(["make-shards", images, csv, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 4)
    assert written == ["red", "a red square", "green"]
    assert [(s["line"], s["reason"]) for s in skipped] == [(4, "duplicate row: same image and caption as line 2")]
    fault.skip(run)


@pytest.mark.parametrize("name", ["../outside.jpg", "sub/../../outside.jpg", "{tmp}/outside.jpg", "/etc/hostname"])
def test_image_outside_the_images_folder_is_never_read(fault, images, tmp_path, name):
    name = name.format(tmp=tmp_path)
    csv = write(tmp_path / "c.csv", HEADER + f"{name},escaped\na.jpg,red\n")
    run = fault.run(["make-shards", images, csv, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 2)
    assert written == ["red"] and [s["reason"] for s in skipped] == [f"outside images folder: {name}"]
    fault.skip(run)


def test_absolute_path_inside_the_images_folder_is_accepted(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + f"{images / 'a.jpg'},red\nsub/../b.jpg,green\n")
    run = shards(fault, images, csv, tmp_path / "o")
    assert accounted(run, tmp_path / "o", 2)[0] == ["red", "green"]


def test_missing_empty_corrupt_and_folder_images_are_counted_skips(fault, images, tmp_path):
    (images / "empty.jpg").write_bytes(b"")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (images / "text.png").write_text("hello")
    (images / "dir.jpg").mkdir()
    names = ["nope.jpg", "empty.jpg", "corrupt.jpg", "text.png", "dir.jpg"]
    csv = write(tmp_path / "c.csv", HEADER + "".join(f"{name},x\n" for name in names) + "a.jpg,red\n")
    run = fault.run(["make-shards", images, csv, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 6)
    assert written == ["red"]
    assert [(s["line"], s["reason"].split(":")[0]) for s in skipped] == [
        (2, "missing file"), (3, "bad image"), (4, "bad image"), (5, "bad image"), (6, "not a file")]
    assert skipped[1]["reason"] == "bad image: empty file"
    fault.skip(run)


def test_every_row_skipped_is_an_error_after_listing_them(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + "nope.jpg,x\na.jpg,\n")
    fault.error(["make-shards", images, csv, tmp_path / "o"], "no samples written", "all 2 rows", "skipped.jsonl")
    skipped = [json.loads(line) for line in (tmp_path / "o" / "skipped.jsonl").read_text().splitlines()]
    assert [s["line"] for s in skipped] == [2, 3] and not list((tmp_path / "o").glob("*.tar"))


def test_shards_split_by_count_and_keys_are_row_positions(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red\nnope.jpg,x\nb.jpg,green\nc.jpg,blue\n")
    run = fault.run(["make-shards", images, csv, tmp_path / "o", "--max-count", "2"])
    accounted(run, tmp_path / "o", 4)
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert samples(tmp_path / "o") == [("000000000", "red"), ("000000002", "green"), ("000000003", "blue")]
    fault.skip(run)


# ---------------------------------------------------------------------------------------------------------------
# JSON and COCO captions files


def coco(images, annotations) -> str:
    return json.dumps({"images": images, "annotations": annotations})


@pytest.mark.parametrize("content, fragments", [
    (json.dumps({"images": []}), ["'images' and 'annotations'"]),
    (json.dumps({"annotations": []}), ["'images' and 'annotations'"]),
    ('"a.jpg"', ["found a string"]),
    (coco({"id": 1}, []), ["'images' must be a list"]),
    (coco([], []), ["no caption rows", "'images' is empty"]),
    (coco([{"id": 1, "file_name": "a.jpg"}], [5]), ["annotations[0]"]),
    (coco([{"id": 1, "file_name": "a.jpg"}], [{"image_id": [1], "caption": "x"}]), ["annotations[0]"]),
    ('{"images": [\n', [":2:", "invalid JSON"]),
    ("[]", ["no caption rows", "the list is empty"]),
])  # fmt: skip
def test_malformed_json_file_is_an_error(fault, images, tmp_path, content, fragments):
    path = write(tmp_path / "c.json", content)
    fault.error(["make-shards", images, path, tmp_path / "o"], str(path), *fragments)
    assert not (tmp_path / "o").exists()


def test_coco_bad_image_entries_are_counted_skips(fault, images, tmp_path):
    content = coco(
        [{"id": 1, "file_name": "a.jpg"}, {"id": 2}, "b.jpg", {"id": 3, "file_name": "c.jpg"},
         {"id": 4, "file_name": 12}, {"id": 1, "file_name": "b.jpg"}, {"id": 5, "file_name": "b.jpg"}],
        [{"image_id": 1, "caption": "red"}, {"image_id": 1, "caption": "red again"}, {"image_id": 4, "caption": "x"},
         {"image_id": 5, "caption": None}],
    )  # fmt: skip
    run = fault.run(["make-shards", images, write(tmp_path / "c.json", content), tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 7)
    assert samples(tmp_path / "o") == [("coco1", "red")]
    assert [(s["index"], s["reason"]) for s in skipped] == [
        (1, "missing field: 'file_name'"), (2, "bad record: expected an object, got string"),
        (3, "no caption: no annotation has image_id 3"), (4, "bad file name: not a string (number)"),
        (5, "duplicate key: coco1"), (6, "bad caption: not a string (null)")]
    fault.skip(run)


def test_json_list_of_records_is_read_like_jsonl(fault, images, tmp_path):
    path = write(tmp_path / "c.json", json.dumps([{"file": "a.jpg", "caption": "red"}, None, {"image": "b.jpg"}]))
    run = fault.run(["make-shards", images, path, tmp_path / "o"])
    written, skipped = accounted(run, tmp_path / "o", 3)
    assert written == ["red"] and [(s["index"], s["line"], s["reason"].split(":")[0]) for s in skipped] == [
        (1, None, "bad record"), (2, None, "missing field")]
    fault.skip(run)


# ---------------------------------------------------------------------------------------------------------------
# Options, paths and output folders


@pytest.mark.parametrize("option, fragment", [
    (["--max-count", "0"], "--max-count"), (["--max-count", "-3"], "--max-count"),
    (["--max-size-mb", "0"], "--max-size-mb"), (["--max-size-mb", "-1.5"], "--max-size-mb"),
    (["--max-size-mb", "nan"], "--max-size-mb"),
])  # fmt: skip
def test_bad_shard_limits_are_errors(fault, images, tmp_path, option, fragment):
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red\n")
    fault.error(["make-shards", images, csv, tmp_path / "o", *option], fragment, "positive")
    assert not (tmp_path / "o").exists()


def test_out_dir_that_is_a_file_is_an_error(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red\n")
    out = write(tmp_path / "o", "keep me")
    fault.error(["make-shards", images, csv, out], "existing file", str(out))
    assert out.read_text() == "keep me"


def test_out_dir_under_a_file_is_an_error(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red\n")
    write(tmp_path / "f", "x")
    fault.error(["make-shards", images, csv, tmp_path / "f" / "o"], "cannot be created", str(tmp_path / "f" / "o"))


def test_out_dir_with_old_shards_needs_overwrite_and_loses_stale_ones(fault, images, tmp_path):
    out = tmp_path / "o"
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red\nb.jpg,green\nc.jpg,blue\n")
    shards(fault, images, csv, out, "--max-count", "1")
    assert len(list(out.glob("*.tar"))) == 3
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red again\n")
    fault.error(["make-shards", images, csv, out, "--max-count", "1"], "already holds shards", "--overwrite")
    assert len(samples(out)) == 3  # untouched
    run = shards(fault, images, csv, out, "--overwrite")
    assert accounted(run, out, 1)[0] == ["red again"] and [p.name for p in out.glob("*.tar")] == ["shard-000000.tar"]


def test_captions_file_that_is_a_folder_is_an_error(fault, images, tmp_path):
    (tmp_path / "c.csv").mkdir()
    fault.error(["make-shards", images, tmp_path / "c.csv", tmp_path / "o"], "is a folder", str(tmp_path / "c.csv"))


def test_missing_captions_file_is_an_error(fault, images, tmp_path):
    fault.error(["make-shards", images, tmp_path / "nope.csv", tmp_path / "o"], "not found", "nope.csv")


def test_unsupported_captions_file_type_is_an_error(fault, images, tmp_path):
    path = write(tmp_path / "c.tsv", "file\tcaption\na.jpg\tred\n")
    fault.error(["make-shards", images, path, tmp_path / "o"], "unsupported captions file type", "c.tsv")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_images_folder_missing_or_a_file_is_an_error(fault, tmp_path, kind):
    folder = tmp_path / "images"
    if kind == "file":
        write(folder, "x")
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red\n")
    fault.error(["make-shards", folder, csv, tmp_path / "o"], "images folder", str(folder))


def test_out_dir_with_a_percent_sign_is_taken_literally(fault, images, tmp_path):
    csv = write(tmp_path / "c.csv", HEADER + "a.jpg,red\n")
    fault.ok(["make-shards", images, csv, tmp_path / "100%d"])
    assert [p.name for p in (tmp_path / "100%d").glob("*.tar")] == ["shard-000000.tar"]
    assert not (tmp_path / "100%%d").exists() and not (tmp_path / "1000").exists()


def test_convert_coco_object_names_the_file_and_annotation_of_a_broken_segmentation(fault, tmp_path):
    import json

    bad = {"images": [{"id": 7, "file_name": "a.jpg", "height": 4, "width": 5}],
           "categories": [{"id": 1, "name": "person"}],
           "annotations": [{"id": 99, "image_id": 7, "category_id": 1, "iscrowd": 0,
                            "segmentation": {"size": [4, 5], "counts": "0"}}]}  # RLE that covers 0 of 20 pixels
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(bad))
    fault.error(["convert-coco-object", path, tmp_path / "out"], "instances.json", "annotation 99", "image 7")
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("row", ["a.jpg,hello\rworld", "a.jpg," + "x" * 200_000],
                         ids=["bare-carriage-return", "caption-over-the-csv-field-limit"])
def test_rows_the_csv_module_refuses_are_counted_skips(fault, images, tmp_path, row):
    csv = write(tmp_path / "c.csv", HEADER + row + "\nb.jpg,green\n")
    run = fault.run(["make-shards", images, csv, tmp_path / "o"])
    assert run.rc == 0, run.err
    skipped = [json.loads(x) for x in (tmp_path / "o" / "skipped.jsonl").read_text().splitlines()]
    assert [s["line"] for s in skipped] == [2] and "bad row" in skipped[0]["reason"]
    assert "wrote 1 samples" in run.out  # rows in = written + skipped
    fault.skip(run)
