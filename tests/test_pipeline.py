"""The layer between the model and its users: RegionPipeline, Segmenter.label_windows with any scorer, and the one
referring result type."""

import dataclasses

import numpy as np
import pytest
import torch

import textseg
from textseg.config import Protocol
from textseg.pipeline import RegionPipeline, as_pipeline
from textseg.ris import BestGroupReferrer, ReferResult, Referrer


@pytest.fixture(scope="module")
def seg(color_model):
    return textseg.Segmenter(color_model, short_side=None, templates="single", text_cache_dir=False)


def halves(h: int = 64, w: int = 128) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    img[:, : w // 2] = (200, 20, 20)
    return img


def test_as_pipeline_accepts_a_segmenter_or_a_pipeline_only(seg, color_model):
    assert as_pipeline(seg) is seg.pipeline and as_pipeline(seg.pipeline) is seg.pipeline
    with pytest.raises(TypeError, match="TextSegModel"):
        as_pipeline(color_model)
    assert RegionPipeline(color_model, text_cache_dir=False).protocol == Protocol()


def test_segmenter_and_its_pipeline_share_model_text_and_protocol(color_model):
    s = textseg.Segmenter(color_model, short_side=None, text_cache_dir=False)
    assert s.model is s.pipeline.model and s.text is s.pipeline.text and s.device == s.pipeline.device
    s.protocol = s.protocol.replace(short_side=32)
    assert s.pipeline.protocol.short_side == 32  # what the referrers read
    assert s.resolve_protocol(None, {"short_side": 16}).short_side == 16 and s.protocol.short_side == 32


def test_pipeline_prepare_sizes_to_the_protocol_and_the_patch(seg):
    x = seg.pipeline.prepare(np.zeros((50, 70, 3), np.uint8), Protocol(short_side=40))
    p = seg.model.patch_size
    assert x.shape[:2] == (1, 3) and x.shape[-2] % p == 0 and x.shape[-1] % p == 0
    assert abs(x.shape[-2] - 40) <= p / 2 and abs(x.shape[-1] - 56) <= p / 2  # 50 x 70 at short side 40: 40 x 56


def test_label_windows_paints_what_any_scorer_says(seg):
    """A scorer that names each given region by its id: the labels are the map + 1, window averaging included."""
    img = halves()
    regions = np.zeros(img.shape[:2], np.int64)
    regions[:, 32:] = 1
    regions[40:, 100:] = 2  # three regions, not aligned with the windows

    def by_id(crops: torch.Tensor, given: torch.Tensor):
        k = 3
        probs = torch.eye(k + 1)[:k].expand(len(crops), k, k + 1)  # region i -> class i (background last)
        return [(given, probs, 1)]

    p = Protocol(short_side=None, window=48, stride=32, background="classes", templates="single")
    (res,) = seg.label_windows([img], ["a", "b", "c"], p, by_id, maps=[regions])
    np.testing.assert_array_equal(res.labels, regions + 1)
    assert res.classes == ["background", "a", "b", "c"]


def test_every_referring_method_returns_the_same_type(seg):
    img = halves()
    best = seg.refer(img, "the red half", method="best-group")
    proposals = seg.refer(img, "the red half", method="region")
    for res in (best, proposals):
        assert isinstance(res, ReferResult)
        assert res.mask.shape == img.shape[:2] and res.mask.dtype == bool
        assert res.index is not None and not res.no_target and res.score == pytest.approx(float(res.scores[res.index]))
        assert res.response.shape == img.shape[:2] and res.response.dtype == np.float32
        y, x = np.unravel_index(res.response.argmax(), res.response.shape)
        assert res.mask[y, x]  # the response peaks inside the chosen mask (PointM)
    assert best.method == "best-group" and best.proposals is None
    np.testing.assert_array_equal(best.mask, best.regions == best.index)
    np.testing.assert_allclose(best.response, best.scores[best.regions].astype(np.float32))
    assert proposals.method == "region" and len(proposals.proposals) == len(proposals.scores)
    assert {f.name for f in dataclasses.fields(best)} == {f.name for f in dataclasses.fields(proposals)}


def test_best_group_alias_and_referrer_on_the_pipeline(seg):
    img = halves()
    old = seg.predict_referring(img, "the white half")
    new = BestGroupReferrer(seg.pipeline)(img, "the white half")
    np.testing.assert_array_equal(old.mask, new.mask)
    assert old.region_scores == [float(v) for v in new.scores] and textseg.ReferringResult is ReferResult
    # a referrer built on the pipeline alone scores as the one the segmenter keeps
    direct = Referrer(seg.pipeline, method="region")(img, "the red half")
    kept = seg.refer(img, "the red half", method="region")
    np.testing.assert_allclose(direct.scores, kept.scores, rtol=1e-5)


def test_best_group_takes_no_proposals_and_no_empty_sentence(seg):
    with pytest.raises(textseg.UserError, match="no proposals"):
        seg.refer(halves(), "x", method="best-group", proposals=np.zeros((1, 64, 128), bool))
    with pytest.raises(textseg.UserError, match="empty"):
        seg.refer(halves(), "  ", method="best-group")
