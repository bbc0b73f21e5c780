"""Dense modes (SCLIP, NACLIP, ProxyCLIP): their building blocks against hand-computed values, classes with synonyms,
the background rule and the batched labelling on tiny models of the same code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from textseg import Segmenter, create_model
from textseg.config import Protocol, load_protocol
from textseg.dense.attention import correlative_attention, dino_pos_embed, neighbourhood_bias, proxy_attention
from textseg.dense.pamr import pamr
from textseg.dense.predict import apply_background_rule, centred_padding
from textseg.errors import UserError
from textseg.factory import get_model_config
from textseg.vocab import Vocabulary, label_scores, read_class_file, split_synonyms


# ------------------------------------------------------------------------------------------------- building blocks
def test_pamr_on_a_flat_image_averages_the_eight_neighbours_with_edges_repeated():
    image = torch.zeros(1, 3, 1, 3)
    mask = torch.tensor([0.0, 3.0, 6.0]).view(1, 1, 1, 3)
    out = pamr(image, mask, steps=1, dilations=(1,))
    # (0,0): neighbours 0,0,3 / 0,3 / 0,0,3 -> 9/8; (0,1): 0,3,6 / 0,6 / 0,3,6 -> 24/8; (0,2): 3,6,6 / 3,6 / 3,6,6
    assert torch.allclose(out.flatten(), torch.tensor([9 / 8, 3.0, 39 / 8]))


def test_pamr_weights_follow_the_image_not_the_mask():
    image = torch.tensor([0.0, 0.0, 10.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3).contiguous()
    mask = torch.tensor([0.0, 3.0, 6.0]).view(1, 1, 1, 3)
    out = pamr(image, mask, steps=1, dilations=(1,))
    # pixel 1: the three right neighbours differ by 10 (sigma 5: weight e^-20 each), the five others share 1/5:
    # their mask values 0, 3, 0, 0, 3 -> 6/5. A reversed affinity would pull it towards 6.
    assert out[0, 0, 0, 1].item() == pytest.approx(1.2, abs=1e-6)
    assert torch.equal(pamr(image, mask, steps=0), mask)


def test_neighbourhood_bias_is_a_gaussian_of_patch_distance_and_spares_the_class_token():
    bias = neighbourhood_bias(2, 3, std=1.0)
    assert bias.shape == (7, 7)
    assert torch.all(bias[0] == 0) and torch.all(bias[:, 0] == 0)
    assert bias[1, 1].item() == pytest.approx(1.0)
    assert bias[1, 2].item() == pytest.approx(math.exp(-0.5))  # (0,0) -> (0,1): d^2 = 1
    assert bias[1, 6].item() == pytest.approx(math.exp(-2.5))  # (0,0) -> (1,2): d^2 = 5
    assert torch.allclose(bias, bias.T)


def test_dino_pos_embed_keeps_the_trained_grid_and_resamples_along_the_right_axes():
    side, dim = 4, 2
    xs = torch.arange(side, dtype=torch.float32).repeat(side)  # value = column index
    pos = torch.cat([torch.tensor([[9.0, 9.0]]), torch.stack([xs, torch.zeros_like(xs)], 1)])
    assert dino_pos_embed(pos, 4, 4) is pos
    out = dino_pos_embed(pos, 2, 6)
    assert out.shape == (1 + 12, dim)
    assert torch.equal(out[0], pos[0])
    grid = out[1:, 0].view(2, 6)
    assert torch.allclose(grid[0], grid[1])  # constant along y
    assert torch.all(grid[0, 1:] > grid[0, :-1])  # increasing along x


def test_proxy_attention_drops_similarities_below_the_shifted_mean():
    feats = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])  # cosine: 1 within {0, 1}, 0 to 2; mean 5/9
    attn = proxy_attention(feats, beta=1.2, gamma=3.0)  # (S - 2/3) * 3: 1 where S = 1, -2 (dropped) where S = 0
    assert torch.allclose(attn[0], torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    attn = proxy_attention(feats, beta=0.0, gamma=3.0)  # nothing dropped: softmax of 3 S
    e3 = math.exp(3)
    assert attn[0, 0].tolist() == pytest.approx([e3 / (2 * e3 + 1), e3 / (2 * e3 + 1), 1 / (2 * e3 + 1)])


def test_correlative_attention_is_query_query_plus_key_key():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    s = 4 ** -0.5
    want = (q @ q.transpose(-1, -2) * s).softmax(-1) @ v + (k @ k.transpose(-1, -2) * s).softmax(-1) @ v
    assert torch.allclose(correlative_attention(q, k, v), want, atol=1e-6)
    plain = (q @ k.transpose(-1, -2) * s).softmax(-1) @ v * 2
    assert not torch.allclose(correlative_attention(q, k, v), plain, atol=1e-3)


def test_centred_padding_splits_the_extra_pixel_right_and_bottom():
    assert centred_padding(336, 459, 56) == (22, 23, 0, 0)
    assert centred_padding(57, 56, 56) == (0, 0, 27, 28)
    assert centred_padding(100, 100, None) == (0, 0, 0, 0)


# ------------------------------------------------------------------------------------------------- classes
def test_class_lines_split_on_semicolons_first_then_commas(tmp_path):
    assert split_synonyms("person, person in shirt") == ["person", "person in shirt"]
    assert split_synonyms("potted plant; plant, green") == ["potted plant", "plant, green"]
    f = tmp_path / "c.txt"
    f.write_text("sky, wall\n\naeroplane\nperson; person in jeans\n")
    assert read_class_file(f) == [["sky", "wall"], ["aeroplane"], ["person", "person in jeans"]]
    with pytest.raises(UserError, match="not found"):
        read_class_file(tmp_path / "none.txt")


def test_vocabulary_queries_owners_and_label_scores():
    vocab = Vocabulary.make(["dog", ["person", "man"]], background=["sky"])
    assert vocab.names == ["dog", "person"] and vocab.has_synonyms
    assert vocab.queries == ["dog", "person", "man", "sky"]
    assert vocab.owners().tolist() == [1, 2, 2, 0]
    probs = torch.tensor([[0.1, 0.2], [0.3, 0.1], [0.4, 0.6], [0.2, 0.1]])  # (Q, 2 pixels)
    scores = label_scores(probs, vocab.owners(), 3)
    assert torch.allclose(scores, torch.tensor([[0.2, 0.1], [0.1, 0.2], [0.4, 0.6]]))
    for bad, match in ((["dog", ["cat", "Dog "]], "listed twice"), ([["person", "background"]], "label 0"),
                       ([], "empty"), ("dog", "not one string"), ([[]], "no name")):
        with pytest.raises(UserError, match=match):
            Vocabulary.make(bad)


def test_background_rule_area_filter_then_threshold():
    # 10 pixels: class 1 wins 9, class 2 wins pixel 9 (10 % of the foreground: not above 0.1, zeroed)
    scores = torch.zeros(3, 1, 10)
    scores[0] = 0.05
    scores[1, 0, :9], scores[1, 0, 9] = 0.8, 0.3
    scores[2, 0, :9], scores[2, 0, 9] = 0.1, 0.6
    p = Protocol(background="threshold", bg_threshold=0.2, area_threshold=0.1)
    labels = apply_background_rule(scores.clone(), p)
    assert labels[0].tolist() == [1] * 9 + [1]  # class 2 zeroed: class 1's 0.3 is the best and above 0.2
    p = p.replace(bg_threshold=0.4)
    assert apply_background_rule(scores.clone(), p)[0].tolist() == [1] * 9 + [0]
    p = p.replace(area_threshold=None)
    assert apply_background_rule(scores.clone(), p)[0].tolist() == [1] * 9 + [2]
    assert apply_background_rule(scores.clone(), p.replace(background=None))[0].tolist() == [1] * 9 + [2]


# ------------------------------------------------------------------------------------------------- labelling
def _tiny(mode: str):
    cfg = get_model_config("tiny", {"dense": {"mode": mode}})
    return create_model(cfg, pretrained=False, seed=0)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (70, 90, 3), dtype=np.uint8), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)]


@pytest.mark.parametrize("mode", ["sclip", "naclip", "proxyclip"])
def test_batched_windows_equal_one_image_at_a_time(mode, images):
    seg = Segmenter(_tiny(mode), "sclip-voc21", text_cache_dir=False, short_side=48, window=32, stride=16,
                    background_classes=["sky"], pamr_steps=2, pamr_dilations=[1, 2], pad_multiple=8)
    classes = ["dog", ["person", "man"]]
    together = seg.predict_batch(images, classes, batch_size=16, return_scores=True)
    for img, res in zip(images, together):
        alone = seg.predict(img, classes, return_scores=True)
        assert res.labels.shape == img.shape[:2] and res.classes == ["background", "dog", "person"]
        assert res.scores.shape == (3, *img.shape[:2]) and res.scores.dtype == np.float32
        np.testing.assert_allclose(res.scores, alone.scores, atol=1e-5)
        assert (res.labels == alone.labels).mean() > 0.999


def test_group_vote_makes_scores_constant_within_each_group(images):
    model = _tiny("naclip")
    seg = Segmenter(model, "naclip-voc21", text_cache_dir=False, short_side=None, background_classes=["sky"],
                    group_vote=True, group_counts=[3])
    res = seg.predict(images[1], ["dog", "cat"], return_scores=True)
    x = seg.pipeline.patch_sized(seg.pipeline.to_device(images[1], seg.protocol))
    groups = model.group(x, pixel_size=images[1].shape[:2], num_groups=3).pixels[0].numpy()
    assert len(np.unique(groups)) > 1
    for g in np.unique(groups):
        block = res.scores[:, groups == g]
        assert np.allclose(block, block[:, :1], atol=1e-6)
    with pytest.raises(UserError, match="dense mode"):
        Segmenter(create_model("tiny", pretrained=False, seed=0), text_cache_dir=False).predict(
            images[1], ["dog"], group_vote=True)
    with pytest.raises(UserError, match="smooth_sigma applies to labelling groups"):  # and the other way round
        seg.predict(images[1], ["dog"], smooth_sigma=1.0)


def test_a_constant_background_score_is_one_more_background_name(images):
    seg = Segmenter(_tiny("sclip"), "sclip-voc21", text_cache_dir=False, short_side=None, window=None, stride=None,
                    background="classes", background_classes=[], area_threshold=None)
    plain = seg.predict(images[1], ["dog", "cat"], return_scores=True)
    assert np.all(plain.scores[0] == 0) and np.all(plain.labels > 0)  # no background name: row 0 scores 0
    high = seg.predict(images[1], ["dog", "cat"], bg_score=1.0, return_scores=True)  # no cosine beats 1
    assert np.all(high.labels == 0) and np.all(high.scores[0] > high.scores[1:].max(0))


def test_model_protocol_is_the_default_and_method_protocols_load():
    assert Segmenter(_tiny("sclip"), text_cache_dir=False).protocol == Protocol()  # tiny names none
    cfg = get_model_config("tiny", {"dense": {"mode": "naclip"}, "protocol": "naclip-voc21"})
    seg = Segmenter(create_model(cfg, pretrained=False, seed=0), text_cache_dir=False)
    assert seg.protocol.name == "naclip-voc21" and seg.protocol.pamr_steps == 10
    assert Segmenter(seg.model, "sclip", text_cache_dir=False).protocol.name == "sclip"
    for name, scale in (("sclip-voc21", 65), ("naclip-voc21", 40), ("proxyclip-voc21", 40)):
        p = load_protocol(name)
        assert p.short_side == 336 and p.logit_scale == scale and p.class_file_background
    assert get_model_config("naclip-b16").protocol == "naclip-voc21"
    assert get_model_config("proxyclip-b16").backbone.pos_embed == "dino"


def test_overrides_give_a_model_a_dense_mode_and_the_cli_takes_it(tmp_path, images):
    from PIL import Image

    from textseg.cli import main

    model = create_model("tiny", pretrained=False, seed=0, overrides={"dense": {"mode": "sclip"}})
    assert model.config.dense.mode == "sclip" and model.config.name == "tiny"
    Image.fromarray(images[0]).save(tmp_path / "a.png")
    (tmp_path / "cls.txt").write_text("sky; wall\ndog\nperson, man\n")
    base = ["segment", str(tmp_path / "a.png"), "--model", "tiny", "--no-pretrained", "--device", "cpu",
            "--num-workers", "0", "--no-progress", "--no-text-cache", "--classes", str(tmp_path / "cls.txt")]
    # textseg's own protocol: every line is a class; under a method's protocol the first line is the background
    assert main([*base, "--dense-mode", "naclip", "--out", str(tmp_path / "o1")]) == 0
    assert main([*base, "--dense-mode", "naclip", "--protocol", "naclip-voc21", "--short-side", "64",
                 "--out", str(tmp_path / "o2")]) == 0
    import json

    assert json.loads((tmp_path / "o1" / "a.json").read_text())["classes"] == ["background", "sky", "dog", "person"]
    assert json.loads((tmp_path / "o2" / "a.json").read_text())["classes"] == ["background", "dog", "person"]
    assert main([*base, "--group-vote", "--out", str(tmp_path / "o3")]) == 2  # a region model votes already


def test_peers_markdown_reports_the_ratios():
    from textseg.bench.peers import peers_markdown

    row = {"peer": "naclip", "model": "naclip-b16", "n_prompts": 3680, "peer_per_image_s": 14.0,
           "peer_model_s": 13.9, "peer_text_s": 130.0, "peer_rss_mb": 3500.0, "per_image_s": 1.4,
           "text_cold_s": 13.0, "text_cached_s": 0.05, "rss_mb": 1800.0, "ratio_per_image": 0.1,
           "text_cold_speedup": 10.0, "text_cached_speedup": 2600.0, "scores_max_abs_diff": 3e-7,
           "scores_mean_abs_diff": 4e-8, "labels_equal": 0.99999, "peer_deviation": None, "threads": 2}
    md = peers_markdown({"machine": {"cpu": "X"}, "image": "a/voc.jpg", "input_hw": [336, 459], "repeats": 3,
                         "warmup": 1, "rows": [row]})
    assert "(X, 2 threads)" in md and "336x459" in md
    assert "| naclip (naclip-b16) | 14.00 | 1.40 | 0.10 | 130.0 | 13.0 | 0.050 | 10.0 | 2600 | 3,500 / 1,800 | " \
           "3.0e-07 / 4.0e-08 | 99.999 % |" in md


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_create_model_reads_a_torchscript_archive_without_running_it(tmp_path):
    import open_clip

    create_model("tiny", pretrained=False, seed=0)  # registers textseg's CLIP configs with open_clip
    torch.manual_seed(3)
    clip = open_clip.create_model("textseg-tiny-vit16").eval()
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.trace_module(clip, {"encode_image": torch.randn(1, 3, 224, 224)}, check_trace=False),
                   str(path))
    model = create_model("tiny", clip_pretrained=str(path), overrides={"dense": {"mode": "naclip"}})
    for name, value in clip.state_dict().items():
        if name != "attn_mask":
            assert torch.equal(model.clip.state_dict()[name], value), name
    with pytest.raises(UserError, match="not found|does not exist"):
        create_model("tiny", clip_pretrained=str(tmp_path / "missing.pt"))


def test_large_images_are_scored_at_the_resized_scale_and_labelled_at_full_size(monkeypatch, images):
    import textseg.dense.predict as dense_predict

    seg = Segmenter(_tiny("naclip"), "naclip-voc21", text_cache_dir=False, short_side=32, background_classes=["sky"],
                    pamr_dilations=[1, 2], area_threshold=0.1)
    classes = ["dog", ["person", "man"], "tree"]
    full = seg.predict(images[0], classes, return_scores=True)
    monkeypatch.setattr(dense_predict, "FULL_SIZE_ELEMENTS", 100)
    large = seg.predict(images[0], classes, return_scores=True)
    assert large.labels.shape == full.labels.shape == images[0].shape[:2]
    assert large.labels.dtype == full.labels.dtype and large.scores.shape == full.scores.shape
    np.testing.assert_allclose(large.scores.sum(0), 1.0, atol=1e-5)  # normalize_scores holds on this path too
    assert (large.labels == full.labels).mean() > 0.8
    assert seg.predict(images[0], classes).scores is None


def test_an_image_smaller_than_a_patch_is_a_clear_error():
    seg = Segmenter(_tiny("naclip"), text_cache_dir=False, short_side=None)
    with pytest.raises(UserError, match="8x30 .* smaller than the CLIP's 16-pixel patch"):
        seg.predict(np.zeros((8, 30, 3), np.uint8), ["dog"])
