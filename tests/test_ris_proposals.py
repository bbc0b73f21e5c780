import json
import sys
from collections import deque

import numpy as np
import pytest
import torch
from PIL import Image

import textseg
from textseg.errors import DatasetError, MissingWeightsError, UserError
from textseg.io import mask_to_rle, write_label_png
from textseg.ris.mask_files import load_mask_proposals
from textseg.ris.proposals import (
    SAM_CHECKPOINT_URLS, GroupingProposer, Proposals, SamProposer, connected_components, deduplicate,
    grouping_proposals, mask_iou, merge_small_components, region_adjacency, sam_to_proposals,
)


def two_discs(h=128, w=256, r=40):
    yy, xx = np.mgrid[:h, :w]
    left = (yy - h // 2) ** 2 + (xx - w // 4) ** 2 < r ** 2
    right = (yy - h // 2) ** 2 + (xx - 3 * w // 4) ** 2 < r ** 2
    return left, right


def flood_fill(m, connectivity):
    """Reference components: BFS in raster order."""
    h, w = m.shape
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    out = np.full((h, w), -1)
    n = 0
    for y in range(h):
        for x in range(w):
            if out[y, x] >= 0:
                continue
            out[y, x] = n
            queue = deque([(y, x)])
            while queue:
                cy, cx = queue.popleft()
                for dy, dx in steps:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and out[ny, nx] < 0 and m[ny, nx] == m[y, x]:
                        out[ny, nx] = n
                        queue.append((ny, nx))
            n += 1
    return out


def one_line(err):
    return "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Connected components, cleanup, unions


def test_connected_components_hand_labelled_4_vs_8():
    m = np.array([[1, 0, 0, 2],
                  [0, 1, 0, 2],
                  [0, 0, 1, 0],
                  [2, 0, 0, 1]])
    labels8, values8 = connected_components(m, connectivity=8)
    np.testing.assert_array_equal(labels8, [[0, 1, 1, 2],
                                            [1, 0, 1, 2],
                                            [1, 1, 0, 1],
                                            [3, 1, 1, 0]])
    np.testing.assert_array_equal(values8, [1, 0, 2, 2])
    labels4, values4 = connected_components(m, connectivity=4)
    # the diagonal of 1s falls apart, and the 0s split into the two triangles the diagonal separates
    np.testing.assert_array_equal(labels4, [[0, 1, 1, 2],
                                            [3, 4, 1, 2],
                                            [3, 3, 5, 6],
                                            [7, 3, 3, 8]])
    np.testing.assert_array_equal(values4, [1, 0, 2, 0, 1, 1, 0, 2, 1])
    # torch input is accepted
    np.testing.assert_array_equal(connected_components(torch.from_numpy(m))[0], labels8)
    with pytest.raises(ValueError):
        connected_components(m, connectivity=6)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_match_flood_fill(connectivity):
    rng = np.random.default_rng(connectivity)
    for m in (rng.integers(0, 3, (40, 50)), np.kron(rng.integers(0, 4, (8, 10)), np.ones((5, 5), int))):
        labels, values = connected_components(m, connectivity)
        np.testing.assert_array_equal(labels, flood_fill(m, connectivity))
        np.testing.assert_array_equal(values[labels], m)


def test_connected_components_long_paths():
    """A 1-pixel serpentine through a 501x501 map: one component made of a long chain of runs."""
    n = 501
    m = np.zeros((n, n), dtype=np.int64)
    m[::2] = 1
    m[1::4, -1] = 1  # connectors alternate between the right and the left end
    m[3::4, 0] = 1
    for connectivity in (4, 8):
        labels, values = connected_components(m, connectivity)
        assert (values == 1).sum() == 1 and len(values) == 1 + n // 2  # the path, and each gap row
        assert (values[labels] == m).all()
    spiral = np.zeros((41, 41), dtype=np.int64)  # a square spiral wall: long components that turn
    y, x, dy, dx, length = 20, 20, 0, 1, 1
    while 0 <= y < 41 and 0 <= x < 41:
        for _ in range(2):
            for _ in range(length):
                if 0 <= y < 41 and 0 <= x < 41:
                    spiral[y, x] = 1
                y, x = y + dy, x + dx
            dy, dx = dx, -dy
        length += 2
    for connectivity in (4, 8):
        np.testing.assert_array_equal(connected_components(spiral, connectivity)[0], flood_fill(spiral, connectivity))


def test_small_components_merge_into_largest_neighbour_and_keep_every_pixel():
    m = np.zeros((20, 30), dtype=np.int64)
    m[:, 20:] = 1  # big region on the right
    m[5:7, 5:7] = 2  # a 4-pixel speck inside region 0
    m[10, 19:21] = 3  # a 2-pixel speck on the border of 0 (200 px) and 1 (100 px)
    comp, _ = connected_components(m)
    merged = merge_small_components(comp, min_area=10)
    assert merged.max() == 1  # two components left
    assert (merged[5:7, 5:7] == merged[0, 0]).all()  # the speck joined its surrounding region
    assert (merged[10, 19:21] == merged[0, 0]).all()  # the border speck joined the larger neighbour
    assert merged[0, 0] != merged[0, -1]

    props = grouping_proposals(m, min_area=10, max_unions=0)
    comps = props.masks[[r["source"] == "component" for r in props.records]]
    np.testing.assert_array_equal(comps.sum(0), np.ones_like(m))  # a partition: every pixel exactly once
    assert [r["group"] for r in props.records] == [0, 1]  # each merged component has its largest part's group
    # a share of the image works like a pixel count: 10 / 600 pixels
    assert len(grouping_proposals(m, min_area=10 / 600, max_unions=0)) == 2
    assert len(grouping_proposals(m, min_area=0, max_unions=0)) == 4


def test_only_speck_regions_still_cover_the_image():
    m = np.arange(16).reshape(4, 4) % 2  # a striped map in which every component is small
    comp, _ = connected_components(m, 4)
    merged = merge_small_components(comp, min_area=100, connectivity=4)
    assert merged.max() == 0  # everything merged into one, nothing dropped


def test_unions_only_of_touching_components_ranked_by_boundary():
    m = np.zeros((10, 30), dtype=np.int64)
    m[:, 10:20] = 1
    m[:, 20:] = 2
    m[:4, 20:] = 3  # 3 touches 1 along 4 rows, 2 touches 1 along 6 rows; 0 touches only 1
    props = grouping_proposals(m, min_area=0, connectivity=4)
    unions = [r for r in props.records if r["source"] == "union"]
    pairs = [tuple(r["groups"]) for r in unions]
    # components (raster order): 0 = group 0, 1 = group 1, 2 = group 3, 3 = group 2; ties by component id
    assert pairs == [(0, 1), (3, 2), (1, 2), (1, 3)]  # 10, 10, 6, 4 touching pixel pairs
    assert [r["boundary"] for r in unions] == [10, 10, 6, 4]
    for r in unions:
        i = props.records.index(r)
        np.testing.assert_array_equal(props.masks[i], np.isin(m, r["groups"]))
    a, b, length = region_adjacency(connected_components(m, 4)[0], 4)
    assert list(zip(a.tolist(), b.tolist(), length.tolist())) == [(0, 1, 10), (1, 2, 4), (1, 3, 6), (2, 3, 10)]
    top = grouping_proposals(m, min_area=0, max_unions=1, connectivity=4)
    assert [r["source"] for r in top.records].count("union") == 1


def test_two_identical_objects_give_two_proposals_from_a_hand_made_group_map():
    left, right = two_discs()
    group_map = (left | right).astype(np.int64)  # k-means would put both discs in one group
    props = grouping_proposals(group_map)
    kinds = [r["source"] for r in props.records]
    assert kinds == ["component", "component", "component", "group", "union", "union"]
    np.testing.assert_array_equal(props.masks[1], left)  # raster order: the left disc starts first
    np.testing.assert_array_equal(props.masks[2], right)
    np.testing.assert_array_equal(props.masks[3], left | right)
    assert props.records[3] == {"source": "group", "group": 1, "components": [1, 2]}
    assert {tuple(r["components"]) for r in props.records[4:]} == {(0, 1), (0, 2)}  # the discs do not touch
    json.dumps(props.records)


def test_two_identical_objects_give_two_proposals_through_textseg_grouping(color_model):
    left, right = two_discs()
    img = np.full((*left.shape, 3), 255, dtype=np.uint8)
    img[left | right] = (220, 30, 30)
    proposer = GroupingProposer(color_model, short_side=None)
    group_map = proposer.group_map(img)
    assert group_map.shape == left.shape
    assert group_map[64, 64] == group_map[64, 192] != group_map[0, 0]  # k-means: one group for both discs
    props = proposer(img)
    ious = mask_iou(props.masks, np.stack([left, right]))  # (N, 2)
    best = ious.argmax(0)
    assert best[0] != best[1] and (ious[best, [0, 1]] > 0.7).all()
    assert not (props.masks[best[0]] & props.masks[best[1]]).any()
    assert all(props.records[i]["source"] == "component" for i in best)
    # a Segmenter is taken for its model
    seg = textseg.Segmenter(color_model, text_cache_dir=False)
    np.testing.assert_array_equal(GroupingProposer(seg, short_side=None).group_map(img), group_map)


def test_uniform_image_gives_one_proposal(color_model):
    props = grouping_proposals(np.zeros((30, 40), dtype=np.int64))
    assert len(props) == 1 and props.masks.all() and props.records[0]["source"] == "component"
    img = np.full((64, 96, 3), 90, dtype=np.uint8)
    props = GroupingProposer(color_model, short_side=None)(img)
    assert len(props) == 1 and props.masks[0].all() and props.image_size == (64, 96)


# ---------------------------------------------------------------------------------------------------------------
# De-duplication


def test_deduplicate_known_ious():
    base = np.zeros((4, 10, 10), dtype=bool)
    base[0] = True  # 100 pixels
    base[1].flat[:91] = True  # IoU 0.91 with mask 0: dropped
    base[2].flat[:89] = True  # IoU 0.89 with mask 0: kept
    base[3].flat[:90] = True  # IoU exactly 0.9 with mask 0: dropped (the threshold is inclusive)
    np.testing.assert_allclose(mask_iou(base)[0], [1, 0.91, 0.89, 0.9])
    assert deduplicate(base[[0, 1]]).tolist() == [0]
    assert deduplicate(base[[0, 2]]).tolist() == [0, 1]
    assert deduplicate(base[[0, 3]]).tolist() == [0]
    assert deduplicate(base[[0, 1]], iou=0.95).tolist() == [0, 1]
    # 1 goes (0.91 with 0); 2 stays (0.89 with 0, and 1 is gone); 3 goes (0.9 with 0)
    assert deduplicate(base).tolist() == [0, 2]
    # the earlier one wins, whatever the sizes; empty masks go
    assert deduplicate(base[[2, 0]]).tolist() == [0, 1]
    assert deduplicate(base[[1, 0]]).tolist() == [0]
    with_empty = np.concatenate([np.zeros((1, 10, 10), bool), base])
    assert deduplicate(with_empty).tolist() == [1, 3]
    assert deduplicate(np.zeros((0, 5, 5), bool)).tolist() == []
    # greedy: a mask that only duplicates a dropped one stays
    chain = np.zeros((3, 1, 100), dtype=bool)
    chain[0, 0, :100] = True
    chain[1, 0, :91] = True  # 0.91 with 0: dropped
    chain[2, 0, :83] = True  # 0.83 with 0, 0.912 with 1: kept because 1 was dropped
    assert deduplicate(chain).tolist() == [0, 2]
    p = Proposals(base, [{"source": "x", "i": i} for i in range(4)]).deduplicate()
    assert [r["i"] for r in p.records] == [0, 2]


def test_deduplicate_matches_a_pairwise_reference():
    rng = np.random.default_rng(0)
    for _ in range(30):
        masks = rng.random((15, 12, 12)) < rng.random((15, 1, 1))
        masks[rng.integers(0, 15, 4)] = masks[rng.integers(0, 15, 4)]
        masks[rng.integers(0, 15)] ^= rng.random((12, 12)) < 0.03
        iou = mask_iou(masks)
        keep = []
        for i in range(len(masks)):
            if masks[i].any() and all(iou[i, j] < 0.9 for j in keep):
                keep.append(i)
        assert deduplicate(masks).tolist() == keep
        assert deduplicate(torch.from_numpy(masks)).tolist() == keep


# ---------------------------------------------------------------------------------------------------------------
# User masks


def _masks(h=12, w=16):
    a = np.zeros((h, w), dtype=bool)
    a[2:6, 3:9] = True
    b = np.zeros((h, w), dtype=bool)
    b[7:11, 1:15] = True
    return a, b


def test_load_rle_json_forms(tmp_path):
    a, b = _masks()
    rles = [mask_to_rle(a), mask_to_rle(b)]
    forms = {
        "list.json": rles,
        "masks.json": {"masks": rles},
        "anns.json": [{"id": 7, "segmentation": rles[0]}, {"id": 8, "segmentation": rles[1]}],
        "coco.json": {"annotations": [{"segmentation": rles[0]}, {"segmentation": [[1, 7, 15, 7, 15, 11, 1, 11]]}]},
    }
    for name, data in forms.items():
        (tmp_path / name).write_text(json.dumps(data))
        props = load_mask_proposals(tmp_path / name, (12, 16))
        assert len(props) == 2 and props.masks.dtype == bool
        np.testing.assert_array_equal(props.masks[0], a)
        assert mask_iou(props.masks[1:], b[None])[0, 0] > 0.7  # the polygon is rasterised by pycocotools
        assert props.records[1] == {"source": "file", "path": str(tmp_path / name), "index": 1}
    # a single RLE, an uncompressed RLE, and an empty mask among others (dropped; indices keep the file's order)
    (tmp_path / "one.json").write_text(json.dumps(rles[1]))
    np.testing.assert_array_equal(load_mask_proposals(tmp_path / "one.json", (12, 16)).masks, b[None])
    flat = b.ravel(order="F").astype(int)  # uncompressed RLE: column-major runs, starting with a run of zeros
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    runs = [0] + runs if flat[0] else runs
    empty = mask_to_rle(np.zeros((12, 16), bool))
    (tmp_path / "mixed.json").write_text(json.dumps([empty, {"size": [12, 16], "counts": runs}, rles[1]]))
    props = load_mask_proposals(tmp_path / "mixed.json", (12, 16), dedup_iou=None)
    assert [r["index"] for r in props.records] == [1, 2]
    np.testing.assert_array_equal(props.masks[0], b)
    assert len(load_mask_proposals(tmp_path / "mixed.json", (12, 16))) == 1  # the duplicate goes


def test_load_png_label_map_and_folder(tmp_path):
    a, b = _masks()
    labels = np.zeros((12, 16), dtype=np.uint8)
    labels[a], labels[b] = 7, 3
    write_label_png(labels, tmp_path / "palette.png")  # palette PNG: values are the indices
    Image.fromarray(labels).save(tmp_path / "grey.png")
    Image.fromarray((labels.astype(np.uint16) * 1000)).save(tmp_path / "sixteen.png")
    Image.fromarray(np.repeat(labels[..., None], 3, axis=2)).save(tmp_path / "grey_rgb.png")
    for name in ("palette.png", "grey.png", "sixteen.png", "grey_rgb.png"):
        props = load_mask_proposals(tmp_path / name, (12, 16))
        np.testing.assert_array_equal(props.masks, np.stack([b, a]))  # by increasing value
        assert [r["value"] for r in props.records] in ([3, 7], [3000, 7000])
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.fromarray(a.astype(np.uint8) * 255).save(folder / "b.png")
    Image.fromarray(b).save(folder / "a.png")  # a 1-bit PNG
    (folder / "notes.txt").write_text("not a mask")
    props = load_mask_proposals(folder, (12, 16))
    np.testing.assert_array_equal(props.masks, np.stack([b, a]))  # sorted by file name
    assert [r["path"] for r in props.records] == [str(folder / "a.png"), str(folder / "b.png")]


def test_load_mask_proposals_errors(tmp_path):
    a, _ = _masks()
    cases = []
    missing = tmp_path / "missing.json"
    cases.append((missing, UserError))
    (tmp_path / "notes.txt").write_text("x")
    cases.append((tmp_path / "notes.txt", UserError))
    (tmp_path / "bad.json").write_text("{not json")
    cases.append((tmp_path / "bad.json", DatasetError))
    (tmp_path / "size.json").write_text(json.dumps([mask_to_rle(np.zeros((5, 5), bool))]))
    cases.append((tmp_path / "size.json", DatasetError))
    (tmp_path / "none.json").write_text("[]")
    cases.append((tmp_path / "none.json", DatasetError))
    (tmp_path / "allempty.json").write_text(json.dumps([mask_to_rle(np.zeros((12, 16), bool))]))
    cases.append((tmp_path / "allempty.json", DatasetError))
    (tmp_path / "number.json").write_text("[3]")
    cases.append((tmp_path / "number.json", DatasetError))
    (tmp_path / "object.json").write_text('{"images": []}')
    cases.append((tmp_path / "object.json", DatasetError))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "small.png")
    cases.append((tmp_path / "small.png", DatasetError))
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "zeros.png")
    cases.append((tmp_path / "zeros.png", DatasetError))
    colour = np.zeros((12, 16, 3), np.uint8)
    colour[a] = (200, 10, 10)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    cases.append((tmp_path / "colour.png", DatasetError))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    cases.append((tmp_path / "broken.png", DatasetError))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases.append((empty_dir, DatasetError))
    grey_dir = tmp_path / "grey"
    grey_dir.mkdir()
    Image.fromarray(np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)).save(grey_dir / "soft.png")
    cases.append((grey_dir, DatasetError))
    for path, kind in cases:
        with pytest.raises(kind) as err:
            load_mask_proposals(path, (12, 16))
        assert str(path) in str(err.value) or str(grey_dir / "soft.png") in str(err.value), str(err.value)
        assert one_line(err), str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# SAM


def _sam_records(h=12, w=16):
    a, b = _masks(h, w)
    near_a = a.copy()
    near_a[2, 3] = False  # IoU 23/24 with a
    return [
        {"segmentation": near_a, "area": int(near_a.sum()), "predicted_iou": 0.8, "stability_score": 0.9,
         "bbox": [3, 2, 6, 4], "point_coords": [[5.0, 3.0]], "crop_box": [0, 0, w, h]},
        {"segmentation": b, "area": int(b.sum()), "predicted_iou": 0.95, "stability_score": 0.97,
         "bbox": [1, 7, 14, 4], "point_coords": [[7.0, 9.0]], "crop_box": [0, 0, w, h]},
        {"segmentation": np.zeros((h, w), bool), "area": 0, "predicted_iou": 0.99, "stability_score": 0.5,
         "bbox": [0, 0, 0, 0], "point_coords": [[0.0, 0.0]], "crop_box": [0, 0, w, h]},
        {"segmentation": mask_to_rle(a), "area": int(a.sum()), "predicted_iou": 0.9, "stability_score": 0.95,
         "bbox": [3, 2, 6, 4], "point_coords": [[5.0, 3.0]], "crop_box": [0, 0, w, h]},
    ]


def test_sam_output_conversion():
    a, b = _masks()
    props = sam_to_proposals(_sam_records(), (12, 16))
    # by predicted IoU (empty dropped), then the 0.8 one duplicates the RLE mask of 0.9 and goes
    assert [r["predicted_iou"] for r in props.records] == [0.95, 0.9]
    assert [r["index"] for r in props.records] == [1, 3]
    np.testing.assert_array_equal(props.masks, np.stack([b, a]))
    assert props.records[0] == {"source": "sam", "index": 1, "predicted_iou": 0.95, "stability_score": 0.97,
                                "area": int(b.sum()), "bbox": [1.0, 7.0, 14.0, 4.0]}
    assert len(sam_to_proposals(_sam_records(), (12, 16), dedup_iou=None)) == 3
    assert len(sam_to_proposals([], (12, 16))) == 0
    with pytest.raises(ValueError):
        sam_to_proposals(_sam_records(), (10, 16))


def test_sam_proposer_with_an_injected_generator():
    class FakeGenerator:
        def generate(self, image):
            assert image.dtype == np.uint8 and image.shape == (12, 16, 3)
            return _sam_records()

    props = SamProposer(generator=FakeGenerator())(np.zeros((12, 16, 3), np.uint8))
    assert len(props) == 2 and all(r["source"] == "sam" for r in props.records)


def test_sam_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'textseg\[sam\]'") as err:
        SamProposer(tmp_path / "sam_vit_b.pth", "vit_b")
    assert one_line(err)
    with pytest.raises(UserError, match="vit_h, vit_l, vit_b"):
        SamProposer(tmp_path / "x.pth", "vit_x")


def test_sam_proposer_runs_real_sam_from_a_checkpoint_file(tmp_path):
    """segment_anything's own vit_b (random weights, real size) saved as a checkpoint file, loaded by path, and its
    automatic mask generator run on an image: proposals at the image's size, with SAM's scores."""
    sam_pkg = pytest.importorskip("segment_anything")
    torch.manual_seed(0)
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam_pkg.sam_model_registry["vit_b"](checkpoint=None).state_dict(), ckpt)
    missing = tmp_path / "sam_vit_l_0b3195.pth"
    with pytest.raises(MissingWeightsError) as err:
        SamProposer(missing, "vit_l")
    assert str(missing) in str(err.value) and SAM_CHECKPOINT_URLS["vit_l"] in str(err.value) and one_line(err)
    # random weights score low: SAM's quality filters off, so that masks come out
    proposer = SamProposer(ckpt, "vit_b", device="cpu", points_per_side=2, pred_iou_thresh=0.0,
                           stability_score_thresh=0.0)
    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    props = proposer(image)
    assert len(props) >= 1 and props.image_size == (60, 80) and props.masks.dtype == bool
    assert all(r["source"] == "sam" and 0.0 <= r["stability_score"] <= 1.0 for r in props.records)
    assert props.masks.any((1, 2)).all()
    with pytest.raises(UserError, match="vit_l") as err:  # a vit_b file given as vit_l
        SamProposer(ckpt, "vit_l")
    assert one_line(err)


# ---------------------------------------------------------------------------------------------------------------
# The common result


def test_proposals_object():
    a, b = _masks()
    p = Proposals(np.stack([a, b]), [{"source": "file", "index": 0}, {"source": "file", "index": 1}])
    assert len(p) == 2 and p.image_size == (12, 16)
    np.testing.assert_array_equal(np.asarray(p), p.masks)
    assert p.select([1]).records == [{"source": "file", "index": 1}]
    assert Proposals.empty((3, 4)).masks.shape == (0, 3, 4)
    with pytest.raises(ValueError):
        Proposals(np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ValueError):
        Proposals(np.zeros((2, 3, 4), bool), [{"source": "x"}])
