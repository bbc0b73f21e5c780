"""Global-Local CLIP scorer (textseg.ris.global_local) on random CLIP weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from textseg.errors import ConfigError, UserError
from textseg.ris.global_local import (GlobalLocalCLIP, freesolo_boxes, reference_crop_boxes, square_boxes,
                                      tight_boxes, time_scoring)

SENTENCES = ["the red car on the left", "a small dog next to the bench"]
NOUNS = ["red car", "small dog"]


@pytest.fixture(scope="module")
def tiny():
    import textseg

    return textseg.create_model("tiny", pretrained=False, seed=0)


@pytest.fixture(scope="module")
def b32():
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    return clip, open_clip.get_tokenizer("ViT-B-32")


def _image(h=60, w=90, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _masks(h=60, w=90):
    m = np.zeros((5, h, w), dtype=bool)
    m[0, 10:30, 5:40] = True
    m[1, 35:58, 50:88] = True
    m[2, 5:50, 60:70] = True
    m[2, 40:50, 20:70] = True  # an L
    m[3, 20:21, 45:46] = True  # one pixel
    m[4, 0:40:3, 0:90:4] = True  # a sparse grid
    return m


def _scorer(model, **kw):
    kw.setdefault("masked_blocks", 2)
    return GlobalLocalCLIP(model.clip, model.tokenizer, **kw)


@pytest.mark.parametrize("mode", ["clean", "reference"])
def test_batched_global_equals_per_mask_loop(tiny, mode):
    sc = _scorer(tiny, mode=mode)
    img, masks = _image(), _masks()
    batched = sc.global_features(img, masks)
    assert batched.shape == (5, sc.embed_dim)
    for i in range(len(masks)):
        torch.testing.assert_close(sc.global_features(img, masks[i: i + 1])[0], batched[i], atol=1e-5, rtol=0)
    assert (batched[0] - batched[1]).abs().max() > 1e-3  # the masks do change the feature


def test_full_image_mask_gives_unmasked_image_embedding(tiny):
    # A square image at the CLIP's size: the global input is exactly open_clip's own input.
    img = _image(224, 224)
    full = np.ones((1, 224, 224), dtype=bool)
    for mode in ("clean", "reference"):
        sc = _scorer(tiny, mode=mode)
        expected = tiny.clip.encode_image(sc.prepare(img)["global"])
        torch.testing.assert_close(sc.global_features(img, full), expected, atol=1e-5, rtol=0)
        half = full.copy()
        half[0, :, 112:] = False
        assert (sc.global_features(img, half) - expected).abs().max() > 1e-3
    # Clean mode keeps the aspect: a non-square image runs at a non-square grid.
    sc = _scorer(tiny)
    img = _image(60, 90)
    prep = sc.prepare(img)
    assert tuple(prep["global"].shape[-2:]) == (224, 336)
    torch.testing.assert_close(sc.global_features(img, np.ones((1, 60, 90), bool)), sc.encode_image(prep["global"]),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["clean", "reference"])
def test_crop_branch_equals_each_crop_encoded_alone(tiny, mode):
    sc = _scorer(tiny, mode=mode, chunk_size=2)
    img, masks = _image(), _masks()
    feats = sc.local_features(img, masks)
    crops = sc.local_crops(img, masks)
    assert crops.shape == (5, 3, 224, 224)
    for i in range(len(masks)):
        torch.testing.assert_close(feats[i], tiny.clip.encode_image(crops[i: i + 1])[0], atol=1e-5, rtol=0)


def test_clean_crop_pixels():
    """A square 224-pixel box needs no resize: the crop is the normalised image inside the mask, 0 (CLIP's mean,
    the default fill) outside."""
    import textseg

    model = textseg.create_model("tiny", pretrained=False, seed=1)
    sc = _scorer(model)
    img = _image(300, 260, seed=3)
    m = np.zeros((1, 300, 260), dtype=bool)
    m[0, 20:244, 30:254] = True
    m[0, 100:120, 100:140] = False  # a hole
    crop = sc.local_crops(img, m)[0]
    x = torch.from_numpy(img[20:244, 30:254]).permute(2, 0, 1).float() / 255
    mean = torch.tensor(sc.mean).view(3, 1, 1)
    expected = ((x - mean) / torch.tensor(sc.std).view(3, 1, 1)) * torch.from_numpy(m[0, 20:244, 30:254])
    torch.testing.assert_close(crop, expected, atol=1e-6, rtol=0)
    # a tall box grows to a square around it (aspect kept)
    tall = np.zeros((1, 300, 260), dtype=bool)
    tall[0, 10:110, 50:70] = True
    assert sc.crop_boxes(torch.from_numpy(tall)).tolist() == [[10, 10, 110, 110]]


def test_box_helpers_by_hand():
    m = torch.zeros(3, 10, 12, dtype=torch.bool)
    m[0, 2:7, 1] = True
    m[0, 6, 1:5] = True  # L: columns 1..4, rows 2..6
    m[1, 5, 7] = True
    assert tight_boxes(m[:2]).tolist() == [[1, 2, 5, 7], [7, 5, 8, 6]]
    assert square_boxes(torch.tensor([[1, 2, 5, 7]])).tolist() == [[1, 2, 6, 7]]  # 4x5 -> 5x5, 1 px left of centre


def test_reference_boxes_hand_computed():
    m = torch.zeros(4, 10, 12, dtype=torch.bool)
    # 0: an L (column 1 rows 2..6, row 6 columns 1..4) and a separate dot at row 0, column 9.
    m[0, 2:7, 1] = True
    m[0, 6, 1:5] = True
    m[0, 0, 9] = True
    # occupied columns {1, 2, 3, 4, 9}: width 5, centre 19/5 = 3.8 -> x 1.3 .. 6.3 -> int 1 .. 6
    # occupied rows {0, 2, 3, 4, 5, 6}: height 6, centre 20/6 = 3.333 -> y 0.333 .. 6.333 -> int 0 .. 6
    # 1: the L alone: columns 1..4 -> centre 2.5 ± 2 -> 0.5 .. 4.5 (half-pixel edges) -> 0 .. 4
    #                 rows 2..6    -> centre 4 ± 2.5   -> 1.5 .. 6.5 -> 1 .. 6
    m[1, 2:7, 1] = True
    m[1, 6, 1:5] = True
    # 2: one pixel at (row 0, column 0): -0.5 .. 0.5 -> truncated toward zero 0 .. 0 -> widened to 0 .. 1
    m[2, 0, 0] = True
    # 3: one pixel at (row 5, column 7): 6.5 .. 7.5, 4.5 .. 5.5 -> 6 .. 7, 4 .. 5
    m[3, 5, 7] = True
    expected = torch.tensor([[1.3, 1 / 3, 6.3, 19 / 3], [0.5, 1.5, 4.5, 6.5], [-0.5, -0.5, 0.5, 0.5],
                             [6.5, 4.5, 7.5, 5.5]])
    torch.testing.assert_close(freesolo_boxes(m), expected, atol=1e-5, rtol=0)
    assert reference_crop_boxes(m).tolist() == [[1, 0, 6, 6], [0, 1, 4, 6], [0, 0, 1, 1], [6, 4, 7, 5]]


def _reference_oracle(clip, img, masks, masked_blocks=3):
    """The public pipeline restated with torchvision (antialias off for tensors, as torchvision 0.11)."""
    h, w = img.shape[:2]
    x800 = TF.normalize(TF.to_tensor(TF.resize(Image.fromarray(img), 800)), (0.485, 0.456, 0.406),
                        (0.229, 0.224, 0.225))
    source = TF.resize(x800, [h, w], antialias=False)
    x224 = TF.resize(x800, [224, 224], antialias=False)[None]
    m = torch.from_numpy(masks)
    n, v = len(m), clip.visual
    grid = TF.resize(m.float(), [7, 7], antialias=False)  # (N, 7, 7) soft
    x = v._embeds(x224)
    blocks = v.transformer.resblocks
    for blk in blocks[: len(blocks) - masked_blocks]:
        x = blk(x)
    x = x.repeat(n, 1, 1)
    for blk in blocks[len(blocks) - masked_blocks:]:
        d = x.shape[-1]
        patches = x[:, 1:].transpose(1, 2).reshape(n, d, 7, 7) * grid[:, None]
        x = blk(torch.cat([x[:, :1], patches.flatten(2).transpose(1, 2)], 1))
    glob = v.ln_post(x[:, 0]) @ v.proj
    crops = []
    fill = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    for mi in m:
        ys, xs = np.nonzero(mi.any(1).numpy())[0], np.nonzero(mi.any(0).numpy())[0]
        x0, x1 = int(xs.mean() - len(xs) / 2), int(xs.mean() + len(xs) / 2)
        y0, y1 = int(ys.mean() - len(ys) / 2), int(ys.mean() + len(ys) / 2)
        mu = mi.to(torch.uint8)
        masked = source * mu + (1 - mu) * fill
        crops.append(TF.resized_crop(masked, y0, x0, y1 - y0, x1 - x0, [224, 224], antialias=False))
    return glob, clip.encode_image(torch.stack(crops))


@torch.no_grad()
def test_reference_mode_matches_restated_public_pipeline(b32):
    clip, tok = b32
    img = _image(48, 64, seed=5)
    masks = np.zeros((3, 48, 64), dtype=bool)
    masks[0, 5:30, 3:20] = True
    masks[1, 10:40, 30:60] = True
    masks[1, 2:6, 8:12] = True  # a second part: the box comes from the centre of mass
    masks[2, 20:25, 40:41] = True
    sc = GlobalLocalCLIP(clip, tok, mode="reference")
    assert sc.masked_blocks == 3 and sc.token_masks(torch.from_numpy(masks), (7, 7)).shape == (3, 49)
    glob, loc = _reference_oracle(clip, img, masks)
    out = sc.score(img, masks, SENTENCES, NOUNS)
    torch.testing.assert_close(out.global_features, glob, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.local_features, loc, atol=1e-4, rtol=0)
    # the antialias default of today's torchvision would give other crops (the reason for the mode)
    aa = TF.resize(TF.to_tensor(TF.resize(Image.fromarray(img), 800)), [224, 224], antialias=True)
    no = TF.resize(TF.to_tensor(TF.resize(Image.fromarray(img), 800)), [224, 224], antialias=False)
    assert (aa - no).abs().max() > 1e-3


def test_scores_are_scaled_cosines_of_returned_features(tiny):
    sc = _scorer(tiny, alpha=0.7, beta=0.4)
    out = sc.score(_image(), _masks(), SENTENCES, NOUNS)
    assert out.scores.shape == (2, 5) and out.sentence_features.shape == out.noun_phrase_features.shape == (2, 32)
    v = 0.7 * out.global_features + 0.3 * out.local_features
    t = 0.4 * out.sentence_features + 0.6 * out.noun_phrase_features
    cos = F.cosine_similarity(t[:, None], v[None], dim=-1)
    torch.testing.assert_close(out.scores, tiny.clip.logit_scale.exp() * cos, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.sentence_features, sc.encode_text(SENTENCES))
    assert out.best.tolist() == out.scores.argmax(1).tolist()


def test_alpha_beta_edge_cases(tiny):
    img, masks = _image(), _masks()
    scale = tiny.clip.logit_scale.exp()

    def cos(a, b):
        return scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T

    g_only = _scorer(tiny, alpha=1.0, beta=1.0).score(img, masks, SENTENCES, NOUNS)
    torch.testing.assert_close(g_only.scores, cos(g_only.sentence_features, g_only.global_features))
    other = _scorer(tiny, alpha=1.0, beta=1.0).score(img, masks, SENTENCES, ["tree", "house"])
    torch.testing.assert_close(other.scores, g_only.scores)  # beta = 1: noun phrases do not count
    l_only = _scorer(tiny, alpha=0.0, beta=0.0).score(img, masks, SENTENCES, NOUNS)
    torch.testing.assert_close(l_only.scores, cos(l_only.noun_phrase_features, l_only.local_features))
    assert (l_only.scores - g_only.scores).abs().max() > 1e-3


def test_masked_blocks_zero_gives_one_global_feature(tiny):
    sc = _scorer(tiny, masked_blocks=0)
    img = _image()
    g = sc.global_features(img, _masks())
    expected = sc.encode_image(sc.prepare(img)["global"])[0]
    for row in g:
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["clean", "reference"])
def test_chunking_changes_nothing(tiny, mode):
    img, masks = _image(), _masks()
    one = _scorer(tiny, mode=mode, chunk_size=64).score(img, masks, SENTENCES, NOUNS)
    many = _scorer(tiny, mode=mode, chunk_size=2).score(img, masks, SENTENCES, NOUNS)
    for name in ("scores", "global_features", "local_features"):
        torch.testing.assert_close(getattr(many, name), getattr(one, name), atol=1e-5, rtol=0)


def test_edge_cases(tiny, tmp_path):
    sc = _scorer(tiny)
    img, masks = _image(), _masks()
    # N = 0
    out = sc.score(img, masks[:0], SENTENCES, NOUNS)
    assert out.scores.shape == (2, 0) and out.global_features.shape == (0, 32) and out.best.tolist() == [-1, -1]
    # an empty proposal scores -inf, never wins, and leaves the others alone
    with_empty = np.concatenate([masks[:2], np.zeros_like(masks[:1])])
    out = sc.score(img, with_empty, SENTENCES, NOUNS)
    ref = sc.score(img, masks[:2], SENTENCES, NOUNS)
    assert out.valid.tolist() == [True, True, False] and torch.isinf(out.scores[:, 2]).all()
    assert not out.global_features[2].any() and not out.local_features[2].any()
    torch.testing.assert_close(out.scores[:, :2], ref.scores)
    # {0, 1} uint8 masks and image as path / PIL / array give the same scores
    path = tmp_path / "im.png"
    Image.fromarray(img).save(path)
    base = sc.score(img, masks, SENTENCES[0]).scores
    assert base.shape == (1, 5)
    for image in (path, str(path), Image.fromarray(img)):
        torch.testing.assert_close(sc.score(image, masks.astype(np.uint8), SENTENCES[0]).scores, base)
    # one-pixel proposals in both modes, anywhere (a corner pixel would give the public code an empty crop)
    px = np.zeros((2, 60, 90), dtype=bool)
    px[0, 0, 0] = px[1, 59, 89] = True
    for mode in ("clean", "reference"):
        assert torch.isfinite(_scorer(tiny, mode=mode).score(img, px, SENTENCES, NOUNS).scores).all()
    # user mistakes
    with pytest.raises(UserError, match=r"\(30, 90\).*\(60, 90\)"):
        sc.score(img, masks[:, :30], SENTENCES, NOUNS)
    with pytest.raises(UserError, match="0 and 1"):
        sc.score(img, masks.astype(np.uint8) * 255, SENTENCES, NOUNS)
    with pytest.raises(UserError, match="2 noun phrases for 1 sentences"):
        sc.score(img, masks, SENTENCES[:1], NOUNS)
    with pytest.raises(UserError, match="cannot read image"):
        sc.score(tmp_path / "missing.png", masks, SENTENCES, NOUNS)
    with pytest.raises(ConfigError, match="masked_blocks"):
        _scorer(tiny, masked_blocks=3)
    with pytest.raises(ConfigError, match="alpha"):
        _scorer(tiny, alpha=1.5)


def test_noun_phrases_extracted_when_not_given(tiny):
    from textseg.nouns import head_noun_phrase

    sc = _scorer(tiny)
    out = sc.score(_image(), _masks()[:2], SENTENCES)
    assert out.noun_phrases == [head_noun_phrase(s) for s in SENTENCES]
    torch.testing.assert_close(out.noun_phrase_features, sc.encode_text(out.noun_phrases))
    custom = _scorer(tiny, noun_phrase_fn=lambda s: s.split()[-1]).score(_image(), _masks()[:2], SENTENCES)
    assert custom.noun_phrases == ["left", "bench"]


def test_time_scoring_runs(tiny):
    times = time_scoring(_scorer(tiny), _image(), counts=(1, 3))
    assert set(times) == {1, 3} and all(t > 0 for t in times.values())
