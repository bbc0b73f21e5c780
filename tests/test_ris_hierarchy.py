"""Multi-scale grouping proposals: the merge hierarchy, support ranking and the proposer's cap."""

import numpy as np
import pytest

from textseg.ris.hierarchy import MultiScaleProposer, merge_hierarchy, support
from textseg.ris.proposals import mask_iou


def test_merge_hierarchy_joins_similar_colours_first():
    # four vertical strips: red, red-ish, blue, blue-ish; colour similarity must pair 0-1 and 2-3 before crossing
    labels = np.repeat(np.arange(4)[None], 8, 0).repeat(5, 1)  # (8, 20)
    colours = np.array([[250, 0, 0], [240, 10, 0], [0, 0, 250], [0, 10, 240]], dtype=np.uint8)
    img = colours[labels]
    merged = merge_hierarchy(img, labels, weights=(1.0, 0.0, 0.0))
    assert len(merged) == 3
    assert sorted(map(tuple, merged[:2])) == [(0, 1), (2, 3)]
    assert merged[2] == [0, 1, 2, 3]


def test_merge_hierarchy_size_term_merges_small_regions_first():
    # one colour everywhere: colour and fill tie, so size decides: the two small regions merge first
    labels = np.zeros((10, 10), dtype=np.int64)
    labels[:, 6:8] = 1
    labels[:, 8:] = 2
    img = np.full((10, 10, 3), 128, dtype=np.uint8)
    merged = merge_hierarchy(img, labels, weights=(1.0, 1.0, 0.0))
    assert merged[0] == [1, 2]
    assert merged[1] == [0, 1, 2]


def test_merge_hierarchy_only_merges_touching_regions():
    labels = np.zeros((6, 9), dtype=np.int64)
    labels[:, 3:6] = 1
    labels[:, 6:] = 2
    img = np.zeros((6, 9, 3), dtype=np.uint8)
    img[:, 3:6] = 255  # regions 0 and 2 have the same colour but do not touch
    merged = merge_hierarchy(img, labels, weights=(1.0, 0.0, 0.0))
    assert all(m != [0, 2] for m in merged)
    assert merged[-1] == [0, 1, 2]


def test_merge_hierarchy_checks_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        merge_hierarchy(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 4), np.int64))


def test_support_counts_near_duplicates():
    a = np.zeros((3, 10, 10), dtype=bool)
    a[0, :5] = True
    a[1, :5] = True
    a[1, 5, 0] = True  # IoU with 0: 50 / 51
    a[2, 5:] = True
    np.testing.assert_array_equal(support(a, 0.9), [2, 2, 1])
    np.testing.assert_array_equal(support(a, 0.99), [1, 1, 1])
    assert support(np.zeros((0, 4, 4), bool)).shape == (0,)


def two_squares_image():
    """Two red squares on grey, on the colour model's 16-pixel grid; the left one has a black "eye" (a part)."""
    img = np.full((64, 112, 3), 240, dtype=np.uint8)
    img[16:48, 16:48] = (200, 40, 40)
    img[16:48, 64:96] = (200, 40, 40)
    img[16:32, 16:32] = (20, 20, 20)
    return img


def test_multiscale_proposer_finds_both_objects_and_ranks_them_first(color_model):
    img = two_squares_image()
    left = np.zeros(img.shape[:2], bool)
    left[16:48, 16:48] = True
    right = np.zeros_like(left)
    right[16:48, 64:96] = True
    proposer = MultiScaleProposer(color_model, counts=(2, 3, 4), short_side=None, min_area=0.01)
    props = proposer(img)
    assert 0 < len(props) <= 100
    ious = mask_iou(props.masks, np.stack([left, right]))
    assert (ious.max(0) > 0.85).all()  # (the 16-pixel grid's map is smoothed at the image size)
    sup = np.array([r["support"] for r in props.records])
    assert (np.diff(sup) <= 0).all()  # ranked by support
    assert all(r["source"] in {"component", "group", "union", "merge"} and "count" in r for r in props.records)
    assert (mask_iou(props.masks) - np.eye(len(props)) < 0.9).all()  # no near-duplicates left


def test_multiscale_proposer_caps_and_filters_by_area(color_model):
    img = two_squares_image()
    props = MultiScaleProposer(color_model, counts=(2, 3, 4), short_side=None, max_proposals=2)(img)
    assert len(props) == 2
    share = props.masks.reshape(len(props), -1).mean(1)
    assert (share <= 0.5).all()
    small = MultiScaleProposer(color_model, counts=(2, 3, 4), short_side=None, min_area=0.0, max_area=0.05)(img)
    eye = np.zeros(img.shape[:2], bool)
    eye[16:32, 16:32] = True
    assert len(small) == 1 and mask_iou(small.masks, eye[None])[0, 0] > 0.7  # only the eye is under 5 %


@pytest.mark.parametrize("kwargs, match", [({"counts": ()}, "counts"), ({"min_area": 0.6, "max_area": 0.5}, "min_area"),
                                           ({"max_proposals": 0}, "max_proposals")])
def test_multiscale_proposer_rejects_bad_options(color_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiScaleProposer(color_model, **kwargs)


def test_proposal_prior_by_hand():
    from textseg.ris.hierarchy import proposal_prior
    from textseg.ris.proposals import Proposals

    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, :5] = True      # half the image
    masks[1, :1, :1] = True  # one pixel
    props = Proposals(masks, [{"support": 4}, {"support": 1}])
    want = 2.0 * np.log([4.0, 1.0]) - 0.5 * np.log([0.5, 0.01])
    np.testing.assert_allclose(proposal_prior(props), want)
    np.testing.assert_allclose(proposal_prior(props, 1.0, 0.0), np.log([4.0, 1.0]))
    assert proposal_prior(Proposals(masks)) == 0.0  # no support: no prior
