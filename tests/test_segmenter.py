import numpy as np
import pytest
import torch

import textseg.labels as labels_module
from textseg.config import Protocol, load_protocol
from textseg.errors import ConfigError, UserError
from textseg.io import load_image
from textseg.labels import channel_max as real_channel_max
from textseg.labels import (CropPlan, bilinear_taps, gaussian_radius, gaussian_smooth, region_class_probs,
                            window_starts, with_bg_score)
from textseg.dense.pamr import pamr, pamr_radius
from textseg.pipeline import grid_offsets, resized_size, shift_patch_grid, shifted_region_masks
from textseg.segmenter import Segmenter


def prepare(seg, image, protocol):
    """The image as an array and as the model's input tensor at the protocol's size."""
    arr = load_image(image)
    return arr, seg.pipeline.to_device(arr, protocol)


def two_halves(h=64, w=128):
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, : w // 2] = (220, 30, 30)
    img[:, w // 2:] = (20, 40, 200)
    return img


def fix_text_to_regions(seg, monkeypatch, img):
    """Make class 0 the embedding of the right half's region and class 1 that of the left half's."""
    _, x = prepare(seg, img, Protocol(short_side=None))
    groups, regions = (t[0] for t in seg.pipeline.regions_batch(x)[0])
    groups = groups.numpy()
    text = torch.stack([regions[groups[0, -1]], regions[groups[0, 0]]])
    monkeypatch.setattr(seg.text, "encode_classes", lambda names, templates=None: text[: len(names)])
    return groups


def test_window_starts():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(3, 4, 2) == [0]
    assert window_starts(448, 448, 224) == [0]


def test_region_class_probs_appends_the_background_score_last():
    sims = torch.tensor([[[0.2, 0.5], [0.6, -0.1]]])  # (B=1, K=2, C=2)
    assert torch.equal(with_bg_score(sims, None), sims)
    assert with_bg_score(sims, 0.3)[0, :, 2].tolist() == pytest.approx([0.3, 0.3])
    probs = region_class_probs(sims, 0.3, 10.0)
    e = np.exp([2.0, 5.0, 3.0])  # region 0: logits 10 * (0.2, 0.5, bg 0.3)
    assert probs[0, 0].tolist() == pytest.approx((e / e.sum()).tolist(), abs=1e-6)
    assert probs[0, 1].argmax() == 0 and probs[0, 0].argmax() == 1  # region 1: 0.6 beats the bg score 0.3
    assert region_class_probs(sims, None, 10.0).shape == (1, 2, 2)


def test_each_region_gets_the_class_whose_text_matches_it(color_model, monkeypatch):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    img = two_halves()
    groups = fix_text_to_regions(seg, monkeypatch, img)
    assert (groups[:, :64] == groups[0, 0]).all() and (groups[:, 64:] == groups[0, -1]).all()
    res = seg.predict(img, ["right", "left"], background=None, short_side=None)
    assert res.labels.shape == (64, 128)
    assert (res.labels[:, :64] == 2).all() and (res.labels[:, 64:] == 1).all()
    assert res.classes == ["background", "right", "left"]
    assert res.pixel_share() == {"right": 0.5, "left": 0.5}
    # the threshold applies to the best probability: below it is background, at or above it keeps its class
    res = seg.predict(img, ["right", "left"], background="threshold", bg_threshold=1.0, short_side=None,
                      return_probs=True)
    below = res.probs.max(0) < 1.0
    assert below.any() and ((res.labels == 0) == below).all()
    # a constant background score above the similarity of each region's class makes it background
    res = seg.predict(img, ["right", "left"], bg_score=0.5, bg_threshold=0.0, short_side=None, return_probs=True)
    assert (res.labels == 0).all() == (res.probs[-1] > res.probs[:2]).all()  # the case is decided by the scores
    res = seg.predict(img, ["right", "left"], bg_score=-1.0, bg_threshold=0.0, short_side=None)
    assert (res.labels[:, :64] == 2).all() and (res.labels[:, 64:] == 1).all()
    # a background class that matches the left half maps it to 0
    res = seg.predict(img, ["right"], background="classes", background_classes=["left"], short_side=None)
    assert (res.labels[:, :64] == 0).all() and (res.labels[:, 64:] == 1).all()


@torch.no_grad()
def test_recognition_through_the_real_text_tower(color_model):
    """No stand-in: each half gets the class whose real prompt embedding is closest to that half's region embedding,
    computed here independently from the model's parts (full 77-token text pass, no cache, no template trimming)."""
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    img = two_halves()
    names = ["dog", "bus", "tree", "sky"]
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    groups = color_model.group(x)
    regions = torch.nn.functional.normalize(color_model(x, groups.region_masks).regions[0], dim=-1)
    tokens = color_model.tokenizer([f"a photo of a {n}." for n in names])
    text = torch.nn.functional.normalize(color_model.clip.encode_text(tokens), dim=-1)
    expected = (regions @ text.T).argmax(1)[groups.pixels[0]] + 1
    res = seg.predict(img, names, background=None, short_side=None)
    assert (res.labels == expected.numpy()).all()
    assert len(np.unique(res.labels[:, :64])) == 1 and len(np.unique(res.labels[:, 64:])) == 1


def test_protocol_object_presets_and_per_call_overrides(color_model):
    img = two_halves()
    seg = Segmenter(color_model, "workbench", text_cache_dir=False)
    assert seg.protocol == load_protocol("workbench") and seg.protocol.short_side == 96
    with_bg = seg.predict(img, ["dog", "bus"], bg_score=1.0, short_side=None)
    assert (with_bg.labels == 0).all()  # a background score above every cosine similarity
    plain = Protocol(templates="single", background=None, short_side=None)
    res = seg.predict(img, ["dog", "bus"], plain)
    assert set(np.unique(res.labels)) <= {1, 2}
    assert seg.protocol.bg_score is None  # a per-call override leaves the segmenter's protocol alone


def test_resize_and_sliding_window_return_input_size(color_model):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    img = two_halves(50, 90)
    res = seg.predict(img, ["a", "b", "c"], short_side=64, window=64, stride=32, background=None, return_probs=True)
    assert res.labels.shape == (50, 90) and res.probs.shape == (3, 50, 90)
    assert set(np.unique(res.labels)) <= {1, 2, 3}
    np.testing.assert_allclose(res.probs.sum(0), 1.0, atol=1e-4)


def test_referring_picks_matching_region(color_model, monkeypatch):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    img = two_halves()
    fix_text_to_regions(seg, monkeypatch, img)
    monkeypatch.setattr(seg.text, "encode_classes",
                        lambda names, templates=None, f=seg.text.encode_classes: f(["x", "y"])[1:])
    ref = seg.predict_referring(img, "the red thing on the left", short_side=None)
    assert ref.mask[:, :64].all() and not ref.mask[:, 64:].any()
    assert ref.score == pytest.approx(1.0, abs=1e-5)
    assert ref.response.shape == (64, 128) and ref.response[:, :64].min() == pytest.approx(1.0, abs=1e-4)


def test_bad_inputs_are_user_errors(color_model, tmp_path):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    with pytest.raises(UserError, match="class list"):
        seg.predict(two_halves(), [])
    with pytest.raises(ConfigError, match="'window' and 'stride'"):
        seg.predict(two_halves(), ["a"], window=32)
    with pytest.raises(ConfigError, match="Key 'windows' not in 'Protocol'"):
        seg.predict(two_halves(), ["a"], windows=32)
    with pytest.raises(ConfigError, match="bg_score"):
        seg.predict(two_halves(), ["a"], background=None, bg_score=0.2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(bad)
    with pytest.raises(UserError, match="sentence is empty"):
        seg.predict_referring(two_halves(), "  ")


def mixed_images():
    """Colour blocks plus noise at three sizes, two of them shared (portrait, landscape, square), and a path."""
    from conftest import VOC_IMAGE

    rng = np.random.default_rng(0)
    images = []
    for h, w in [(50, 90), (90, 50), (50, 90), (40, 40), (50, 90)]:
        img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        img[: h // 2, : w // 3] += np.array(rng.integers(100, 190, 3), dtype=np.uint8)
        img[h // 3:, w // 2:] += np.array(rng.integers(100, 190, 3), dtype=np.uint8)
        images.append(img)
    return [*images, VOC_IMAGE]


BATCH_PROTOCOLS = {
    "whole-threshold": dict(short_side=64),
    "whole-native-no-background": dict(short_side=None, background=None),
    "windows-background-classes": dict(short_side=96, window=64, stride=32, background="classes",
                                       background_classes=["sky"]),
    "windows-bg-score": dict(short_side=64, window=48, stride=48, bg_score=0.1, bg_threshold=0.3),
}


@pytest.mark.parametrize("overrides", BATCH_PROTOCOLS.values(), ids=BATCH_PROTOCOLS.keys())
def test_predict_batch_equals_predict_per_image(tiny_model, overrides, monkeypatch):
    seg = Segmenter(tiny_model, templates="single", text_cache_dir=False)
    images = mixed_images()
    classes = ["dog", "grass", "bus"]
    # random text embeddings would give every pixel one class: name the regions of two images instead
    regions = torch.cat([seg.pipeline.regions_batch(prepare(seg, im, Protocol(short_side=64))[1])[0][1][0]
                         for im in images[3:5]])
    monkeypatch.setattr(seg.text, "encode_classes", lambda names, templates=None: regions[: len(names)])
    batched = seg.predict_batch(images, classes, batch_size=3, return_probs=True, **overrides)
    assert len(batched) == len(images)
    for image, got in zip(images, batched):
        want = seg.predict(image, classes, return_probs=True, **overrides)
        assert got.labels.shape == load_image(image).shape[:2] and got.classes == want.classes
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.probs.shape == want.probs.shape
        np.testing.assert_allclose(got.probs, want.probs, rtol=0, atol=1e-5)
    assert max(len(np.unique(r.labels)) for r in batched) >= 3  # the labels vary, so their equality means something


def model_calls(model, monkeypatch):
    """Record the (B, H, W) of every grouping call and the batch size of every region pass of ``model``."""
    calls = {"group": [], "regions": []}
    group = model.group

    def spy(images, **kwargs):
        calls["group"].append(tuple(images.shape[:1]) + tuple(images.shape[2:]))
        return group(images, **kwargs)

    monkeypatch.setattr(model, "group", spy)
    handle = model.register_forward_hook(lambda m, args, out: calls["regions"].append(args[0].shape[0]))
    return calls, handle


def test_predict_batch_batches_same_size_crops_across_images(tiny_model, monkeypatch):
    seg = Segmenter(tiny_model, templates="single", text_cache_dir=False)
    images = mixed_images()[:5]  # sizes 50x90 (three), 90x50 and 40x40
    encodes = []
    encode = seg.text.encode_classes
    monkeypatch.setattr(seg.text, "encode_classes", lambda *a, **k: encodes.append(a) or encode(*a, **k))
    calls, handle = model_calls(tiny_model, monkeypatch)
    try:
        # whole images at short side 64: 64x115 (three images, cut to 64x112 for the patch size), 115x64, 64x64
        seg.predict_batch(images, ["a", "b"], batch_size=2, short_side=64)
        assert sorted(calls["group"]) == [(1, 64, 64), (1, 64, 112), (1, 112, 64), (2, 64, 112)]
        assert sorted(calls["regions"]) == [1, 1, 1, 2]
        assert len(encodes) == 1  # the text once per call
        # windows of 64 at short side 96: 10 + 10 + 10 (96x173) + 10 (173x96) + 4 (96x96) crops, all 64x64
        calls["group"].clear(), calls["regions"].clear()
        seg.predict_batch(images, ["a", "b"], batch_size=16, short_side=96, window=64, stride=32)
        assert calls["group"] == [(16, 64, 64), (16, 64, 64), (12, 64, 64)] and calls["regions"] == [16, 16, 12]
        assert len(encodes) == 2
    finally:
        handle.remove()


def test_predict_batch_edge_cases(tiny_model):
    seg = Segmenter(tiny_model, templates="single", text_cache_dir=False)
    assert seg.predict_batch([], ["a"]) == []
    with pytest.raises(UserError, match="batch_size"):
        seg.predict_batch([two_halves()], ["a"], batch_size=0)
    with pytest.raises(UserError, match="class list"):
        seg.predict_batch([two_halves()], ["a", " "])
    one = seg.predict_batch([two_halves()], ["a", "b"], batch_size=1, short_side=None, window=32, stride=32)
    assert one[0].labels.shape == (64, 128) and one[0].probs is None


def test_bilinear_taps_match_torch_interpolate():
    """The banded upsampling of CropPlan.label reads the same source rows and weights as F.interpolate."""
    torch.manual_seed(1)
    for (h, w), (H, W) in [((7, 5), (20, 13)), ((9, 12), (9, 12)), ((30, 17), (11, 40))]:
        src = torch.rand(3, h, w)
        y0, y1, wy = bilinear_taps(h, H)
        x0, x1, wx = bilinear_taps(w, W)
        rows = src[:, y0] * (1 - wy[:, None]) + src[:, y1] * wy[:, None]
        ours = rows[..., x0] * (1 - wx) + rows[..., x1] * wx
        want = torch.nn.functional.interpolate(src[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)


def three_region_texts(seg, monkeypatch):
    """The first mixed image, with the class texts "a", "b", "c" replaced by region embeddings of two other images
    (texts that tell the image's regions apart)."""
    regions = torch.cat([seg.pipeline.regions_batch(prepare(seg, im, Protocol(short_side=64))[1])[0][1][0]
                         for im in mixed_images()[3:5]])
    monkeypatch.setattr(seg.text, "encode_classes", lambda names, templates=None: regions[: len(names)])
    return mixed_images()[0]


def assert_same_in_bands(seg, img, kw, full, monkeypatch, tile_elements):
    """Labelling in bands of at most each of ``tile_elements`` values gives ``full``'s labels and probabilities."""
    label = CropPlan.label
    for elements in tile_elements:
        monkeypatch.setattr(CropPlan, "label", lambda *a, e=elements, **k: label(*a, tile_elements=e, **k))
        banded = seg.predict(img, ["a", "b", "c"], **kw)
        np.testing.assert_array_equal(banded.labels, full.labels)
        np.testing.assert_allclose(banded.probs, full.probs, atol=1e-6)


def test_labels_do_not_depend_on_the_band_size(color_model, monkeypatch):
    """Bands of 1 row, of a few rows and of the whole image give the same labels and probabilities as one
    full-size upsampling of the averaged window probabilities."""
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    img = three_region_texts(seg, monkeypatch)
    kw = dict(short_side=64, window=48, stride=24, bg_threshold=0.4, return_probs=True)
    full = seg.predict(img, ["a", "b", "c"], **kw)
    assert len(np.unique(full.labels)) >= 2  # something to disagree about
    assert_same_in_bands(seg, img, kw, full, monkeypatch, (1, 3 * 90 * 5))


def test_gaussian_smoothing_of_probabilities_by_hand():
    z = 1 + 2 * (np.exp(-0.5) + np.exp(-2) + np.exp(-4.5))  # the 7-tap kernel of sigma 1, normalised by z
    impulse = torch.zeros(1, 9, 9)
    impulse[0, 4, 4] = 1.0
    out = gaussian_smooth(impulse, 1.0)
    assert out[0, 4, 4].item() == pytest.approx(1 / z ** 2, rel=1e-5)
    assert out[0, 4, 5].item() == pytest.approx(np.exp(-0.5) / z ** 2, rel=1e-5)
    assert out[0, 2, 5].item() == pytest.approx(np.exp(-2.5) / z ** 2, rel=1e-5)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)  # nothing reaches the edges: the mass stays
    corner = torch.zeros(1, 9, 9)
    corner[0, 0, 0] = 1.0  # at an edge the border pixel repeats: the pixel keeps the kernel mass beyond the edge
    beyond = (np.exp(-0.5) + np.exp(-2) + np.exp(-4.5) + 1) / z
    assert gaussian_smooth(corner, 1.0)[0, 0, 0].item() == pytest.approx(beyond ** 2, rel=1e-5)
    ramp = torch.arange(12.0).view(1, 3, 4).repeat(2, 1, 1)
    assert torch.equal(gaussian_smooth(ramp, 0.0), ramp)
    flat = torch.full((3, 5, 6), 0.25)
    torch.testing.assert_close(gaussian_smooth(flat, 2.5), flat)
    assert gaussian_radius(0.0) == 0 and gaussian_radius(1.0) == 3 and gaussian_radius(1.1) == 4


def test_smoothed_labels_are_the_smoothed_probabilities_in_any_band(color_model, monkeypatch):
    """smooth_sigma smooths the averaged probabilities at the resized scale before labelling; bands of any height
    read the rows the kernel needs, so they agree with one whole-image pass."""
    seg = Segmenter(color_model, templates="single", text_cache_dir=False, short_side=None, bg_threshold=0.0)
    img = three_region_texts(seg, monkeypatch)
    plain = seg.predict(img, ["a", "b", "c"], return_probs=True)
    smooth = seg.predict(img, ["a", "b", "c"], return_probs=True, smooth_sigma=1.5)
    expected = gaussian_smooth(torch.from_numpy(plain.probs), 1.5).numpy()
    np.testing.assert_allclose(smooth.probs, expected, atol=1e-5)
    np.testing.assert_array_equal(smooth.labels, expected.argmax(0) + 1)  # no background channel: class i + 1
    assert (smooth.labels != plain.labels).any()  # edges move
    assert_same_in_bands(seg, img, {"return_probs": True, "smooth_sigma": 1.5}, smooth, monkeypatch,
                         (1, 4 * 90 * 5))


def test_pamr_refined_labels_are_the_refined_probabilities_in_any_band(color_model, monkeypatch):
    """pamr_steps refines the smoothed probabilities along the resized image's colour edges; bands of any height
    read the rows the smoothing and refinement need, so they agree with one whole-image pass."""
    seg = Segmenter(color_model, templates="single", text_cache_dir=False, short_side=None, bg_threshold=0.0)
    img = three_region_texts(seg, monkeypatch)
    kw = {"return_probs": True, "smooth_sigma": 1.0, "pamr_steps": 3, "pamr_dilations": [1, 3]}
    plain = seg.predict(img, ["a", "b", "c"], return_probs=True)
    refined = seg.predict(img, ["a", "b", "c"], **kw)
    colours = torch.from_numpy(np.asarray(load_image(img))).permute(2, 0, 1).float() / 255
    expected = pamr(colours[None], gaussian_smooth(torch.from_numpy(plain.probs), 1.0)[None], 3, [1, 3])[0].numpy()
    np.testing.assert_allclose(refined.probs, expected, atol=1e-5)
    np.testing.assert_array_equal(refined.labels, expected.argmax(0) + 1)
    smoothed = seg.predict(img, ["a", "b", "c"], return_probs=True, smooth_sigma=1.0)
    assert (refined.labels != smoothed.labels).any()  # the refinement moves labels
    assert_same_in_bands(seg, img, kw, refined, monkeypatch, (1, 4 * 90 * 5))
    assert pamr_radius(10, [1, 2, 4]) == 40 and pamr_radius(0, [1, 2, 4]) == 0


def test_long_side_is_capped_and_resizing_shrinks_on_the_host(color_model, monkeypatch):
    import textseg.pipeline as pipeline_module

    assert resized_size((20000, 50), 448, 2048) == (2048, 5)  # not 179200 x 448
    assert resized_size((50, 20000), 448, None) == (448, 179200)
    assert resized_size((375, 500), 448, 2048) == (448, 597)
    assert resized_size((375, 500), None, 400) == (300, 400)
    assert resized_size((375, 500), None, None) == (375, 500)
    seg = Segmenter(color_model, templates="single", text_cache_dir=False, max_long_side=256)
    img = np.zeros((40, 2000, 3), np.uint8)
    img[:, 1000:] = 255
    x = seg.pipeline.to_device(img, seg.protocol)
    assert tuple(x.shape) == (1, 3, 5, 256) and x.dtype == torch.float32
    assert x[0, :, :, :120].max() < 0.01 and x[0, :, :, 136:].min() > 0.99  # the two halves survive the shrink
    monkeypatch.setattr(pipeline_module, "HOST_SHRINK_PIXELS", 1000)  # the same through the uint8 host path
    y = seg.pipeline.to_device(img, seg.protocol)
    assert tuple(y.shape) == (1, 3, 5, 256) and (y - x).abs().max() < 0.05
    assert y[0, :, :, :120].max() < 0.01 and y[0, :, :, 136:].min() > 0.99
    res = seg.predict(img, ["a", "b"], background=None)
    assert res.labels.shape == (40, 2000)


def test_class_names_are_checked(color_model, monkeypatch):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    for classes, message in [(["cat", "Cat "], "listed twice"), (["background", "cat"], "name of label 0"),
                             (["cat", " "], "empty name")]:
        with pytest.raises(UserError, match=message):
            seg.predict(two_halves(), classes)
    # a class that a protocol also lists as background ties with it, and the class wins
    groups = fix_text_to_regions(seg, monkeypatch, two_halves())
    text = seg.text.encode_classes(["right", "left"])
    monkeypatch.setattr(seg.text, "encode_classes", lambda names, templates=None: text[[0, 1, 1][: len(names)]])
    res = seg.predict(two_halves(), ["right", "left"], background="classes", background_classes=["left"],
                      short_side=None)
    assert res.classes == ["background", "right", "left"] and (groups[:, :64] == groups[0, 0]).all()
    assert (res.labels[:, :64] == 2).all() and (res.labels[:, 64:] == 1).all()


def test_more_than_255_classes_give_uint16_labels(color_model, monkeypatch):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    img = two_halves()
    _, x = prepare(seg, img, Protocol(short_side=None))
    groups, regions = (t[0] for t in seg.pipeline.regions_batch(x)[0])
    names = [f"class {i}" for i in range(300)]
    text = torch.nn.functional.normalize(torch.randn(300, regions.shape[1]), dim=-1)
    text[279], text[2] = regions[groups[0, 0]], regions[groups[0, -1]]  # left half is class 279, right class 2
    monkeypatch.setattr(seg.text, "encode_classes", lambda n, templates=None: text[: len(n)])
    res = seg.predict(img, names, background=None, short_side=None)
    assert res.labels.dtype == np.uint16 and len(res.classes) == 301
    assert (res.labels[:, :64] == 280).all() and (res.labels[:, 64:] == 3).all()
    assert res.pixel_share() == {"class 279": 0.5, "class 2": 0.5}


def four_quadrants(h=64, w=64):
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 2] = (220, 30, 30)
    img[: h // 2, w // 2:] = (20, 200, 40)
    img[h // 2:, : w // 2] = (20, 40, 200)
    img[h // 2:, w // 2:] = (230, 230, 30)
    return img


def test_group_counts_average_the_probabilities_of_each_grouping(color_model):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    img = four_quadrants()
    x = prepare(seg, img, Protocol(short_side=None))[1]
    assert len(np.unique(color_model.group(x).pixels)) == 2  # the model's own k ...
    assert len(np.unique(color_model.group(x, num_groups=4).pixels)) == 4  # ... and a per-call k
    assert color_model.grouper.config.num_groups == 2  # left as configured
    feats = color_model.group_features(x)  # computed once, reused by another k: the same groups as from scratch
    assert torch.equal(color_model.group(x, num_groups=4, features=feats).pixels,
                       color_model.group(x, num_groups=4).pixels)
    kw = dict(background=None, short_side=None, return_probs=True)
    two = seg.predict(img, ["a", "b", "c"], group_counts=[2], **kw).probs
    four = seg.predict(img, ["a", "b", "c"], group_counts=[4], **kw).probs
    both = seg.predict(img, ["a", "b", "c"], group_counts=[2, 4], **kw)
    np.testing.assert_allclose(seg.predict(img, ["a", "b", "c"], **kw).probs, two, atol=1e-6)
    assert np.abs(two - four).max() > 1e-3  # the groupings differ, so the average is not either of them
    np.testing.assert_allclose(both.probs, (two + four) / 2, atol=1e-6)
    assert ((both.labels - 1) == both.probs.argmax(0)).all()
    # the grouping backbone runs once per batch whatever the number of groupings
    calls = []
    handle = color_model.grouper.backbone.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        seg.predict(img, ["a", "b", "c"], group_counts=[2, 4, 3], **kw)
    finally:
        handle.remove()
    assert len(calls) == 1
    # several counts in one batch call: each image gets the same as alone
    batch = seg.predict_batch([img, two_halves(64, 64)], ["a", "b", "c"], group_counts=[2, 4], **kw)
    np.testing.assert_allclose(batch[0].probs, both.probs, atol=1e-6)


def test_group_counts_must_be_positive():
    with pytest.raises(ConfigError, match="group_counts"):
        Protocol(group_counts=[])
    with pytest.raises(ConfigError, match="group_counts"):
        Protocol(group_counts=[8, 0])
    assert load_protocol("workbench", ["group_counts=[12,16]"]).group_counts == [12, 16]


def test_one_clip_pass_embeds_every_grouping_as_separate_passes_would(color_model):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    x = prepare(seg, four_quadrants(), Protocol(short_side=None))[1]
    joint = seg.pipeline.regions_batch(x, counts=[2, 4, None])
    assert [r.shape[1] for _, r in joint] == [2, 4, 2]
    for (pixels, regions), k in zip(joint, [2, 4, None]):
        ((alone_pixels, alone),) = seg.pipeline.regions_batch(x, counts=[k])
        assert torch.equal(pixels, alone_pixels)
        torch.testing.assert_close(regions, alone, atol=1e-5, rtol=1e-5)


def test_grid_offsets():
    assert grid_offsets(12, 1) == [(0, 0)]
    assert grid_offsets(12, 2) == [(0, 0), (0, 6), (6, 0), (6, 6)]
    assert [dx for dy, dx in grid_offsets(12, 4) if dy == 0] == [0, 3, 6, 9] and len(grid_offsets(12, 4)) == 16
    assert sorted({dy for dy, _ in grid_offsets(16, 3)}) == [0, 5, 11]  # round(16 / 3), round(32 / 3)
    with pytest.raises(UserError, match="grid_shifts must be in 1..12"):
        grid_offsets(12, 13)
    with pytest.raises(ConfigError, match="grid_shifts"):
        Protocol(grid_shifts=0)


def test_shifted_grid_moves_the_patch_grid_right_and_down():
    # patch 4; region 0 = columns 0-2, region 1 = columns 3-7 of an 8 x 8 crop
    pixels = torch.zeros(1, 8, 8, dtype=torch.long)
    pixels[:, :, 3:] = 1
    image = torch.rand(1, 3, 8, 8)
    x, masks = shift_patch_grid(image, 4, 0, 1), shifted_region_masks(pixels, 2, 4, 0, 1)
    assert x.shape == (1, 3, 12, 12)
    assert torch.equal(x[..., :8, 1:9], image)  # 0 rows on top, 1 column on the left ...
    assert torch.equal(x[..., :, 0], x[..., :, 1]) and torch.equal(x[..., 8:, :], x[..., 7:8, :].expand(-1, -1, 4, -1))
    # columns of patches: [pad, c0, c1, c2] -> region 0 (3/4); [c3..c6] -> region 1; [c7, pad, pad, pad] -> none;
    # the bottom row of patches is padding only
    expected = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    expected[0, 0, :2, 0] = True
    expected[0, 1, :2, 1] = True
    assert torch.equal(masks, expected)
    down = shifted_region_masks(pixels, 2, 4, 1, 0)  # 1 row on top, 3 below: rows of 3, 4 and 1 image rows
    expected = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    expected[0, 0, :2, 0] = True  # 9/16 and 12/16 of the first column of patches; the last row only 3/16
    expected[0, 1, :2, 1] = True
    assert torch.equal(down, expected)


def test_shifted_region_masks_follow_the_region_mask_rule_on_random_maps():
    """Counted per pixel, the masks are those of masks_to_region_masks on the padded one-hot (fallback included)."""
    from textseg.grouping import masks_to_region_masks

    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 6, (3, 4, 6), generator=g)  # blobs, plus single pixels of a rare region 6
    pixels = coarse.repeat_interleave(6, 1).repeat_interleave(6, 2)
    pixels[0, 5, 7] = pixels[1, 20, 2] = 6
    image = torch.rand(3, 3, 24, 36, generator=g)
    for dy, dx in [(0, 0), (3, 5), (11, 1)]:
        x, masks = shift_patch_grid(image, 12, dy, dx), shifted_region_masks(pixels, 8, 12, dy, dx)
        onehot = torch.nn.functional.pad(pixels, (dx, 12 - dx, dy, 12 - dy), value=-1)[:, None] == \
            torch.arange(8).view(1, 8, 1, 1)
        assert x.shape == (3, 3, 36, 48)
        assert torch.equal(masks, masks_to_region_masks(onehot, (3, 4)))  # 36 x 48 pixels, patch 12
        assert masks[0, 6].sum() == 1 and masks[1, 6].sum() == 1 and not masks[2, 6].any() and not masks[:, 7].any()


def test_grid_shifts_average_the_probabilities_of_each_grid(color_model):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False)
    img = four_quadrants()
    kw = dict(background=None, short_side=None, return_probs=True, group_counts=[4])
    plain = seg.predict(img, ["a", "b", "c"], **kw).probs
    np.testing.assert_allclose(seg.predict(img, ["a", "b", "c"], grid_shifts=1, **kw).probs, plain, atol=1e-6)
    shifted = seg.predict(img, ["a", "b", "c"], grid_shifts=2, **kw)
    # by hand: the model's groups, their regions embedded on the plain grid and on the grids moved by half a patch
    x = prepare(seg, img, Protocol(short_side=None))[1]
    groups = color_model.group(x, num_groups=4)
    text = seg.text.encode_classes(["a", "b", "c"], "single")
    probs = 0
    for dy, dx in [(0, 0), (0, 8), (8, 0), (8, 8)]:
        xs, masks = x, groups.region_masks
        if (dy, dx) != (0, 0):
            xs = shift_patch_grid(x, 16, dy, dx)
            masks = shifted_region_masks(groups.pixels, groups.region_masks.shape[1], 16, dy, dx)
        regions = torch.nn.functional.normalize(color_model(xs, masks).regions.float(), dim=-1)[0]
        probs = probs + region_class_probs(regions @ text.T, None, color_model.logit_scale.float()) / 4
    expected = probs[groups.pixels[0]].permute(2, 0, 1).detach().numpy()
    np.testing.assert_allclose(shifted.probs, expected, atol=1e-5)
    assert np.abs(shifted.probs - plain).max() > 1e-3  # the other grids do change the result
    with pytest.raises(UserError, match="grid_shifts must be in 1..16"):
        seg.predict(img, ["a", "b", "c"], grid_shifts=17, **kw)


def test_bg_score_calibration_scores_what_predict_labels(color_model):
    """With several groupings and grids, the calibration's mIoU of each candidate is that of predict's labels."""
    from textseg.eval import calibrate_bg_score
    from textseg.metrics import SemsegMetric

    class TwoImages:
        class_names = ["background", "red", "green", "blue"]
        ignore_index = 255
        has_background = True

        def __init__(self):
            self.items = []
            for img in (four_quadrants(), two_halves(64, 64)):
                label = np.zeros(img.shape[:2], dtype=np.uint8)
                label[img[..., 0] > 200] = 1
                label[img[..., 1] > 150] = 2
                label[img[..., 2] > 150] = 3
                self.items.append({"image": img, "label": label})

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    ds = TwoImages()
    p = Protocol(short_side=None, templates="single", bg_threshold=0.0, group_counts=[2, 4], grid_shifts=2)
    seg = Segmenter(color_model, p, text_cache_dir=False)
    candidates = (-0.2, 0.0, 0.1, 0.3)
    for sigma in (0.0, 4.0):  # with smoothing too: both label the smoothed average
        _, scores = calibrate_bg_score(seg, ds, p.replace(smooth_sigma=sigma), candidates=candidates, progress=False)
        for c in candidates:
            metric = SemsegMetric(4, 255)
            for item in ds.items:
                metric.update(seg.predict(item["image"], ds.class_names[1:], bg_score=c, smooth_sigma=sigma).labels,
                              item["label"])
            assert scores[c] == pytest.approx(metric.compute()["mIoU"], abs=1e-6)
        assert len(set(round(v, 6) for v in scores.values())) > 1  # the candidates are told apart
    # the parts the calibration reads are those predict averages: one per grouping and grid offset
    img, names = ds.items[0]["image"], ds.class_names[1:]
    parts = seg.grouping_similarities(img, names)
    assert len(parts) == 2 * 4
    probs = sum(region_class_probs(sims, 0.1, seg.logit_scale)[torch.from_numpy(groups)] for groups, sims in parts)
    np.testing.assert_allclose(probs.permute(2, 0, 1).numpy() / len(parts),
                               seg.predict(img, names, bg_score=0.1, return_probs=True).probs, atol=1e-5)


def test_region_similarities_are_the_mean_over_the_grids(color_model):
    seg = Segmenter(color_model, templates="single", text_cache_dir=False, short_side=None, grid_shifts=2)
    img = four_quadrants()
    groups, sims = seg.region_similarities(img, ["a", "b"])
    parts = seg.grouping_similarities(img, ["a", "b"])
    assert len(parts) == 4 and all((g == groups).all() for g, _ in parts)
    torch.testing.assert_close(sims, sum(s for _, s in parts) / 4)
    assert (sims - seg.region_similarities(img, ["a", "b"], grid_shifts=1)[1]).abs().max() > 1e-4


def test_labels_without_probabilities_refine_only_the_channels_that_can_win(color_model, monkeypatch):
    """Without return_probs, labelling smooths and refines only the channels that win somewhere (plus their
    envelope): the labels are those of the full probabilities."""
    seg = Segmenter(color_model, templates="single", text_cache_dir=False, short_side=None, bg_threshold=0.0)
    img = three_region_texts(seg, monkeypatch)
    texts = seg.text.encode_classes(["a", "b", "c", "d"])
    names = list("abcdefgh")  # e..h: the opposites of a..d, which win nowhere
    monkeypatch.setattr(seg.text, "encode_classes", lambda names, templates=None: torch.cat([texts, -texts]))
    kw = {"smooth_sigma": 1.0, "pamr_steps": 3, "pamr_dilations": [1, 3]}
    full = seg.predict(img, names, return_probs=True, **kw)
    assert len(np.unique(full.probs.argmax(0))) + 1 < len(full.probs)  # some channels win nowhere: pruned
    widths = []
    monkeypatch.setattr(labels_module, "channel_max", lambda maps, f: real_channel_max(
        maps, lambda x: widths.append(len(x)) or f(x)))
    np.testing.assert_array_equal(seg.predict(img, names, **kw).labels, full.labels)
    assert min(widths) < len(full.probs)


def test_channel_max_is_the_max_of_the_transformed_channels():
    """channel_max transforms the winning channels and the envelope of the rest; where that envelope catches up
    with the winner after the transform (a channel that wins nowhere wins after averaging), it falls back to all."""
    maps = torch.tensor([[1.0, 0.7, 0.0], [0.0, 0.0, 1.0], [0.6, 0.6, 0.6], [0.0, 0.1, 0.2]])[:, None]  # (4, 1, 3)
    mean = lambda x: x.mean(-1, keepdim=True).expand_as(x)  # noqa: E731 (each channel alone, weights >= 0)
    best, at = real_channel_max(maps, mean)
    assert at.flatten().tolist() == [2, 2, 2]  # 0.6 beats 1.7 / 3 and 1 / 3: channel 2 never won before
    torch.testing.assert_close(best.flatten(), torch.full((3,), 0.6))
    seen = []
    halve = lambda x: seen.append(len(x)) or x * 0.5  # noqa: E731
    best, at = real_channel_max(maps, halve)
    assert seen == [3] and at.flatten().tolist() == [0, 0, 1]  # channels 0, 1 and the envelope of 2, 3
    torch.testing.assert_close(best.flatten(), torch.tensor([0.5, 0.35, 0.5]))
