"""Referrer / Segmenter.refer: proposals from the grouping, batched visual features, sentence choice, no target."""

import numpy as np
import pytest
import torch

import textseg
from textseg.errors import UserError
from textseg.ris import Referrer


@pytest.fixture(scope="module")
def color_seg(color_model):
    """The colour-grouping model (k = 2): red discs and the white background fall into two groups."""
    return textseg.Segmenter(color_model, short_side=None, text_cache_dir=False)


def two_discs(h: int = 96, w: int = 192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    left = (yy - h / 2) ** 2 + (xx - w / 4) ** 2 < (h / 4) ** 2
    right = (yy - h / 2) ** 2 + (xx - 3 * w / 4) ** 2 < (h / 4) ** 2
    img = np.full((h, w, 3), 255, np.uint8)
    img[left | right] = (200, 20, 20)
    return img, left, right


def best_match(props, target: np.ndarray) -> int:
    flat = props.masks.reshape(len(props), -1)
    t = target.ravel()
    return int(((flat & t).sum(1) / (flat | t).sum(1)).argmax())


def rig_text(referrer: Referrer, monkeypatch, image: np.ndarray, targets: dict[str, np.ndarray]) -> None:
    """A test-only text embedding per sentence: the vector whose cosine is positive with the proposal that best
    matches the sentence's target mask and zero with every other proposal (least squares on the visual
    features, which random weights make nearly parallel)."""
    props, visual = referrer.proposals_and_features(image)
    v = torch.nn.functional.normalize(visual.double(), dim=-1)

    def feature(sentence: str) -> torch.Tensor:
        onehot = torch.zeros(len(props), dtype=torch.float64)
        onehot[best_match(props, targets[sentence])] = 1.0
        return (torch.linalg.pinv(v) @ onehot).float()

    monkeypatch.setattr(referrer, "text_features", lambda sentences: torch.stack([feature(s) for s in sentences]))


@pytest.mark.parametrize("method", ["global-local", "region"])
def test_the_left_one_and_the_right_one_get_different_masks(color_seg, monkeypatch, method):
    img, left, right = two_discs()
    assert len(np.unique(color_seg.group_map(img))) == 2  # k-means: both discs are one group
    referrer = Referrer(color_seg, method=method, proposer="grouping")
    rig_text(referrer, monkeypatch, img, {"the left one": left, "the right one": right})
    a = referrer(img, "the left one")
    b = referrer(img, "the right one")
    assert a.index == best_match(a.proposals, left) != b.index == best_match(b.proposals, right)
    assert a.mask[:, :96].sum() > 0.9 * a.mask.sum() and b.mask[:, 96:].sum() > 0.9 * b.mask.sum()
    assert {a.proposals.records[a.index]["source"], b.proposals.records[b.index]["source"]} == {"component"}
    assert a.scores.shape == (len(a.proposals),) and a.score == pytest.approx(a.scores.max())


def test_visual_features_are_cached_per_image_and_equal_the_scorer(color_seg, monkeypatch):
    img, left, right = two_discs()
    referrer = Referrer(color_seg)
    calls = []
    proposer = referrer.proposer
    monkeypatch.setattr(referrer, "proposer", lambda im: calls.append(1) or proposer(im))
    first = referrer(img, "a red disc")
    second = referrer(img, "the white background")
    assert len(calls) == 1 and len(first.proposals) == len(second.proposals) >= 3
    # the cached features give the scores GlobalLocalCLIP itself gives (same alpha, beta and noun phrases)
    want = referrer.scorer.score(img, first.proposals.masks, ["a red disc"]).scores[0].numpy()
    np.testing.assert_allclose(first.scores, want + referrer.prior(first.proposals), rtol=1e-4, atol=1e-4)


def test_default_proposals_are_multiscale_with_a_support_prior(color_seg):
    img, left, right = two_discs()
    referrer = Referrer(color_seg)
    props, _ = referrer.proposals_and_features(img)
    support = np.array([r["support"] for r in props.records])
    assert len(props) <= 100 and {r["count"] for r in props.records} <= {8, 16, 32} and support.min() >= 1
    area = props.masks.reshape(len(props), -1).mean(1)
    np.testing.assert_allclose(referrer.prior(props), 2.0 * np.log(support) - 0.5 * np.log(area))
    assert Referrer(color_seg, support_weight=0.0, area_weight=0.0).prior(props) == pytest.approx(0.0)
    # the prior needs every record's support: given masks have none
    given = textseg.ris.Proposals(np.stack([left, right]))
    assert referrer.prior(given) == 0.0
    with pytest.raises(UserError, match="proposer must be one of"):
        Referrer(color_seg, proposer="selective")


def test_no_target_threshold_and_given_proposals(color_seg):
    img, left, right = two_discs()
    plain = color_seg.refer(img, "the left disc", proposals=np.stack([left, np.zeros_like(left), right]))
    assert len(plain.proposals) == 2 and [r["index"] for r in plain.proposals.records] == [0, 2]  # empty dropped
    high = color_seg.refer(img, "the left disc", proposals=np.stack([left, right]),
                           no_target_threshold=plain.score + 1.0)
    assert high.no_target and not high.mask.any() and high.score == pytest.approx(plain.score, abs=1e-4)
    none = color_seg.refer(img, "the left disc", proposals=np.zeros((0, 96, 192), bool))
    assert none.no_target and none.score == float("-inf") and none.scores.shape == (0,)


def test_refer_mistakes_are_user_errors(color_seg):
    img, left, _ = two_discs()
    with pytest.raises(UserError, match="sentence is empty"):
        color_seg.refer(img, " ")
    with pytest.raises(UserError, match="method must be one of"):
        color_seg.refer(img, "x", method="nearest")
    with pytest.raises(UserError, match="proposals are 10x10"):
        color_seg.refer(img, "x", proposals=np.ones((1, 10, 10), bool))
    with pytest.raises(UserError, match=r"\(N, H, W\)"):
        color_seg.refer(img, "x", proposals=left)


def test_response_map_paints_each_pixel_with_its_best_covering_proposal(color_seg):
    img, left, right = two_discs()
    both = left | right
    res = color_seg.refer(img, "a disc", proposals=np.stack([left, both, right]))
    resp = res.response
    s = res.scores
    assert resp.shape == left.shape and resp.dtype == np.float32
    np.testing.assert_allclose(resp[left], max(s[0], s[1]), rtol=1e-6)
    np.testing.assert_allclose(resp[right], max(s[1], s[2]), rtol=1e-6)
    np.testing.assert_allclose(resp[~both], s.min(), rtol=1e-6)
    assert res.proposals.masks[res.index].flat[int(resp.argmax())]  # PointM: the argmax is in the chosen mask


def test_proposal_short_side_is_a_pixel_grid_for_colour_grouping(color_model):
    from textseg.ris.referrer import proposal_short_side

    assert color_model.config.backbone.type == "color" and color_model.config.backbone.patch_size == 16
    assert proposal_short_side(color_model, 96) == 96 * 16
    assert proposal_short_side(color_model, None) is None
    vit = textseg.create_model("tiny", pretrained=False, seed=0)
    assert vit.config.backbone.type != "color" and proposal_short_side(vit, 96) == 96
