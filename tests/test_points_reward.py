"""The point generator's sentence-aware confidence reward (hand-computed values)."""

import math

import pytest
import torch

from textseg.errors import ConfigError
from textseg.train.points_config import load_point_config
from textseg.train.points_loss import confidence_loss, sentence_reward, standardised


def test_standardised_over_the_valid_entries_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 5.0, 5.0, 5.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    z = standardised(x, valid)
    s = math.sqrt(2 / 3)  # population std of 1, 2, 3
    assert torch.allclose(z[0], torch.tensor([-1 / s, 0.0, 1 / s, 0.0]), atol=1e-5)
    assert torch.equal(z[1], torch.zeros(4))  # a constant row carries no ranking


def _two_masks():
    """Dense features on a 2 x 2 grid: the top-left patch is the sentence's direction, the others orthogonal.
    Mask 0 covers the top-left quarter (one patch, area 1/4); mask 1 the bottom half (two patches, area 1/2)."""
    dense = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    text = torch.tensor([[2.0, 0.0]])
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True
    masks[0, 1, 2:, :] = True
    return dense, text, masks


def test_sentence_reward_prefers_the_mask_that_matches_the_sentence():
    dense, text, masks = _two_masks()
    valid = torch.ones(1, 2, dtype=torch.bool)
    iou = torch.tensor([[0.6, 0.6]])
    cfg = load_point_config(reward_alignment=1.0, reward_cosine=0.0, reward_area=0.0)
    # alignment 1 vs 0 -> z = +1 / -1; equal predicted IoUs add nothing
    assert torch.allclose(sentence_reward(iou, masks, valid, dense, text, cfg), torch.tensor([[1.0, -1.0]]), atol=1e-5)
    # a higher predicted IoU for mask 1 balances it exactly at equal weights
    both = sentence_reward(torch.tensor([[0.5, 0.7]]), masks, valid, dense, text, cfg)
    assert torch.allclose(both, torch.zeros(1, 2), atol=1e-5)


def test_sentence_reward_cosine_and_area_parts():
    dense, text, masks = _two_masks()
    valid = torch.ones(1, 2, dtype=torch.bool)
    iou = torch.tensor([[0.6, 0.6]])
    area = load_point_config(reward_alignment=0.0, reward_cosine=0.0, reward_area=1.0)
    # the larger mask (1/2 against 1/4) wins on area alone; without the candidates' cosine the area part is left out
    got = sentence_reward(iou, masks, valid, dense, text, area, torch.tensor([[0.3, 0.3]]))
    assert torch.allclose(got, torch.tensor([[-1.0, 1.0]]), atol=1e-5)
    assert torch.equal(sentence_reward(iou, masks, valid, dense, text, area), torch.zeros(1, 2))
    cos = load_point_config(reward_alignment=0.0, reward_cosine=2.0, reward_area=0.0)
    got = sentence_reward(iou, masks, valid, dense, text, cos, torch.tensor([[0.1, 0.4]]))
    assert torch.allclose(got, torch.tensor([[-2.0, 2.0]]), atol=1e-5)


def test_sentence_reward_settings_are_checked():
    assert load_point_config().sentence_reward  # the default
    assert not load_point_config(reward_alignment=0.0, reward_cosine=0.0, reward_area=0.0).sentence_reward
    assert load_point_config(reward_cosine=0.5).sentence_reward
    with pytest.raises(ConfigError, match="reward_area"):
        load_point_config(reward_area=-1.0)
    cfg = load_point_config(confidence=1.0, reward_alignment=1.0)
    with pytest.raises(ValueError, match="dense and text"):
        confidence_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), None, None, (32, 32), cfg, torch.Generator())
