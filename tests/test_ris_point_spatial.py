"""The spatial reading for point prompting: the positive map moved onto the proposal the sentence places."""

import numpy as np
import pytest
import torch

from textseg.ris.point_spatial import proposal_means, spatial_positive_map, standardise
from textseg.ris.spatial import SpatialParser

RULES = SpatialParser("rules")


def two_boxes(h=32, w=64):
    left = np.zeros((h, w), bool)
    left[8:24, 4:28] = True
    right = np.zeros((h, w), bool)
    right[8:24, 36:60] = True
    return left, right


def test_standardise_and_proposal_means():
    m = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    z = standardise(m)
    assert float(z.mean()) == pytest.approx(0.0) and float(z.std()) == pytest.approx(1.0)
    assert torch.equal(standardise(torch.ones(2, 2)), torch.zeros(2, 2))
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True   # the top-left patch's pixels, away from the bilinear blend only at its inner edge
    masks[1, :, :] = True
    means = proposal_means(m, masks)
    assert means[1] == pytest.approx(3.0)  # bilinear upsampling keeps the mean of a 2x2 map
    assert means[0] < means[1]
    assert proposal_means(m, np.zeros((0, 4, 4), bool)).shape == (0,)


def test_the_map_moves_to_the_instance_the_reading_places():
    left, right = two_boxes()
    # an 4 x 8 patch map that peaks on the LEFT object; the sentence asks for the right one
    pos = torch.zeros(4, 8)
    pos[1:3, 0:4] = 3.0
    pos[1:3, 4:8] = 2.8
    moved, info = spatial_positive_map(pos, RULES.read("the dog on the right"),
                                       np.stack([left, right]), margin=1.0, weight=1.0)
    assert info["chosen"] == 1 and info["terms"] == ["absolute"] and info["candidates"] == 2
    peak = int(moved.argmax())
    assert peak % 8 >= 4  # the peak is now on the right half
    inside = torch.zeros(4, 8, dtype=torch.bool)
    inside[1:3, 4:8] = True  # the patches the right box covers
    assert torch.equal(moved[inside], pos[inside]) and (moved[~inside] < pos.min()).all()
    # "left" keeps the left object, and the map outside it drops
    kept, info = spatial_positive_map(pos, RULES.read("the dog on the left"),
                                      np.stack([left, right]))
    assert info["chosen"] == 0 and int(kept.argmax()) % 8 < 4


def test_a_sentence_without_spatial_words_leaves_the_map_alone():
    left, right = two_boxes()
    pos = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    same, info = spatial_positive_map(pos, RULES.read("a brown dog"), np.stack([left, right]))
    assert same is pos and info["chosen"] is None


def test_a_relation_uses_the_anchor_map():
    left, right = two_boxes()
    pos = torch.zeros(4, 8)
    pos[1:3, 0:4] = 2.0   # both dogs look alike
    pos[1:3, 4:8] = 2.0
    anchor = torch.zeros(4, 8)
    anchor[1:3, 4:8] = 3.0  # the bus is the right object: "the dog left of the bus" is the left one
    masks = np.stack([left, right, left | right])
    moved, info = spatial_positive_map(pos, RULES.read("the dog to the left of the bus"), masks,
                                       anchor_map=anchor, margin=1.0, weight=1.0)
    assert info["anchor_proposal"] == 1 and "relation" in info["terms"] and info["chosen"] == 0
