"""Hand-computed checks of textseg.losses.

Embeddings are 2-D unit vectors so every dot product is one of 1, 0.8, 0.6, 0, -1; scale 10 turns them into logits
10, 8, 6, 0, -10.
"""

import math

import pytest
import torch

from textseg.losses import image_text_loss, noun_calibration_loss, noun_region_loss


def log1pexp(x: float) -> float:
    return math.log1p(math.exp(x))


def two_image_case():
    """Two images with three regions each and one noun per caption.

    image 0: r00 = (1, 0), r01 = (0.6, 0.8), r02 = (-1, 0)
    image 1: r10 = (0, 1), r11 = (0.8, 0.6), r12 = (0, -1)
    noun t0 = (1, 0) from image 0, noun t1 = (0, 1) from image 1.
    """
    regions = torch.tensor(
        [[[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]], [[0.0, 1.0], [0.8, 0.6], [0.0, -1.0]]], dtype=torch.float64
    )
    nouns = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    noun_image = torch.tensor([0, 1])
    valid = torch.ones(2, 3, dtype=torch.bool)
    return nouns, noun_image, regions, valid


def test_one_way_hand_computed():
    """Asymmetric on purpose: the noun -> image direction and its reverse give different values.

    image 0: r00 = (1, 0), r01 = (0, 1), r02 = (-1, 0);  image 1: r10 = (0.8, 0.6), r11 = (0, -1)
    noun t0 = (1, 0) from image 0, noun t1 = (0, 1) from image 1.
    Best similarity per (noun, image), scale 10: t0 -> [10, 8], t1 -> [10, 6] (t1 matches image 0 better).
    """
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [[0.8, 0.6], [0.0, -1.0], [0.0, 0.0]]],
                           dtype=torch.float64)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    nouns = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    noun_image = torch.tensor([0, 1])
    # softmax over images per noun: t0 [10, 8] target 0 -> log(1 + e^-2);  t1 [10, 6] target 1 -> 4 + log(1 + e^-4)
    expected = (log1pexp(-2.0) + 4 + log1pexp(-4.0)) / 2  # 2.072539...
    # the reverse (softmax over nouns per image): image 0 [10, 10] -> log 2; image 1 [8, 6] -> 2 + log(1 + e^-2)
    reversed_direction = (math.log(2) + 2 + log1pexp(-2.0)) / 2  # 1.409960...
    assert abs(expected - reversed_direction) > 0.5
    loss, stats = noun_region_loss(nouns, noun_image, regions, valid, 10.0, mode="one_way")
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["nouns"] == 2 and stats["nouns_dropped"] == 0
    assert stats["acc"] == 0.5  # t1's best image is image 0
    assert stats["best_sim"] == pytest.approx((1.0 + 0.6) / 2)


def test_one_way_unmatched_regions_get_exactly_zero_gradient():
    nouns, noun_image, regions, valid = two_image_case()
    regions = regions.clone().requires_grad_(True)
    loss, _ = noun_region_loss(nouns, noun_image, regions, valid, 10.0, mode="one_way")
    loss.backward()
    grad = regions.grad
    # argmax regions: t0 -> r00 (image 0), r11 (image 1); t1 -> r01 (image 0), r10 (image 1).
    # r02 and r12 are the argmax of no noun: their gradient is exactly zero.
    assert torch.equal(grad[0, 2], torch.zeros(2, dtype=grad.dtype))
    assert torch.equal(grad[1, 2], torch.zeros(2, dtype=grad.dtype))
    for j, k in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        assert grad[j, k].abs().sum() > 0
    # d loss / d r00 = (1/2) * 10 * (p - 1) * t0 with p = softmax([10, 8])[0] = 1 / (1 + e^-2)
    p = 1.0 / (1.0 + math.exp(-2.0))
    assert grad[0, 0, 0].item() == pytest.approx(0.5 * 10 * (p - 1), abs=1e-9)


def test_soft_maximum_over_regions_hand_computed_and_shares_the_gradient():
    """region_temperature t: s(n, j) = t * log sum_k exp(cos_nk / t) over image j's valid regions.

    two_image_case, t = 1, scale 10. t0 = (1, 0): image 0 cosines [1, 0.6, -1], image 1 [0, 0.8, 0];
    t1 = (0, 1): image 0 [0, 0.8, 0], image 1 [1, 0.6, -1] -- each noun sees its own image as [1, 0.6, -1] and the
    other as [0, 0.8, 0].
    """
    nouns, noun_image, regions, valid = two_image_case()
    t = 1.0
    own = math.log(math.exp(1.0) + math.exp(0.6) + math.exp(-1.0))  # 1.59090...
    other = math.log(math.exp(0.0) + math.exp(0.8) + math.exp(0.0))  # 1.44115...
    expected = log1pexp(10 * (other - own))  # the same for both nouns
    hard = log1pexp(10 * (0.8 - 1.0))  # the max: 1 against 0.8
    assert abs(expected - hard) > 0.05
    regions = regions.clone().requires_grad_(True)
    loss, stats = noun_region_loss(nouns, noun_image, regions, valid, 10.0, region_temperature=t)
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    assert stats["best_sim"] == pytest.approx(own)
    loss.backward()
    # the second-best region of t0's own image (r01) now gets a share of the pull towards t0: its weight in the
    # soft maximum is softmax([1, 0.6, -1])[1]; with the max it would get t1's push only
    w = math.exp(0.6) / (math.exp(1.0) + math.exp(0.6) + math.exp(-1.0))
    p_own = 1.0 / (1.0 + math.exp(10 * (other - own)))
    assert regions.grad[0, 1, 0].item() == pytest.approx(0.5 * 10 * (p_own - 1) * w, abs=1e-9)
    assert torch.all(regions.grad[0, 2] != 0)  # even the worst region gets a (tiny) share: no exact zero
    # a small temperature is the max again
    near, _ = noun_region_loss(nouns, noun_image, regions.detach(), valid, 10.0, region_temperature=1e-4)
    assert near.item() == pytest.approx(hard, abs=1e-6)
    with pytest.raises(ValueError, match="region_temperature"):
        noun_region_loss(nouns, noun_image, regions, valid, 10.0, mode="region_batch", region_temperature=t)
    with pytest.raises(ValueError, match="region_temperature"):
        noun_region_loss(nouns, noun_image, regions, valid, 10.0, region_temperature=-1.0)


def test_invalid_region_with_huge_similarity_changes_nothing():
    nouns, noun_image, regions, valid = two_image_case()
    ref, ref_stats = noun_region_loss(nouns, noun_image, regions, valid, 10.0)
    # add a 4th region per image that would win every max (similarity 1000) but is marked invalid
    extra = torch.tensor([[[1000.0, 1000.0]], [[1000.0, 1000.0]]], dtype=torch.float64)
    regions4 = torch.cat([regions, extra], dim=1).requires_grad_(True)
    valid4 = torch.cat([valid, torch.zeros(2, 1, dtype=torch.bool)], dim=1)
    for mode in ("one_way", "region_batch", "two_way"):
        ref_m, _ = noun_region_loss(nouns, noun_image, regions, valid, 10.0, mode=mode)
        loss, stats = noun_region_loss(nouns, noun_image, regions4, valid4, 10.0, mode=mode)
        assert loss.item() == pytest.approx(ref_m.item(), abs=1e-9)
        loss.backward()
        assert torch.equal(regions4.grad[:, 3], torch.zeros(2, 2, dtype=torch.float64))
        regions4.grad = None
    assert stats["nouns"] == ref_stats["nouns"]


def test_region_batch_hand_computed():
    nouns, noun_image, regions, valid = two_image_case()
    # t0 against all 6 regions: image 0 -> [10, 6, -10], image 1 -> [0, 8, 0]; target = r00 (logit 10)
    #   CE = log(1 + e^-4 + e^-20 + e^-10 + e^-2 + e^-10)
    # t1: image 0 -> [0, 8, 0], image 1 -> [10, 6, -10]; target r10: the same value
    expected = math.log(1 + math.exp(-4) + math.exp(-20) + 2 * math.exp(-10) + math.exp(-2))
    loss, stats = noun_region_loss(nouns, noun_image, regions, valid, 10.0, mode="region_batch")
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["acc"] == 1.0


def test_two_way_hand_computed():
    nouns, noun_image, regions, valid = two_image_case()
    n2r = log1pexp(-2.0)  # as in test_one_way_hand_computed
    # region -> noun, logits over the nouns [t0, t1]:
    #   r00 [10, 0] own t0 -> log(1 + e^-10);  r01 [6, 8] own t0 -> log(1 + e^2);  r02 [-10, 0] -> log(1 + e^10)
    #   image 1 mirrors image 0 with t1 as its own noun: the same three values.
    r2n = (log1pexp(-10.0) + log1pexp(2.0) + log1pexp(10.0)) / 3
    loss, stats = noun_region_loss(nouns, noun_image, regions, valid, 10.0, mode="two_way")
    assert loss.item() == pytest.approx(0.5 * (n2r + r2n), abs=1e-6)
    assert stats["loss_n2r"] == pytest.approx(n2r, abs=1e-6)
    assert stats["loss_r2n"] == pytest.approx(r2n, abs=1e-6)


def test_two_way_skips_images_without_nouns_and_sums_own_noun_mass():
    # image 0: r00 = (1, 0), r01 = (0, 1); image 1: r10 = (0.6, 0.8) and one padding region.
    # nouns t0 = (1, 0), t1 = (0, 1), both from image 0; image 1 has no noun.
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.0, 0.0]]], dtype=torch.float64)
    valid = torch.tensor([[True, True], [True, False]])
    nouns = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    noun_image = torch.tensor([0, 0])
    # noun -> image: t0 logits [10, 6] -> log(1 + e^-4); t1 logits [10, 8] -> log(1 + e^-2)
    n2r = (log1pexp(-4.0) + log1pexp(-2.0)) / 2
    # region -> noun: both nouns belong to image 0, so each region of image 0 puts all its mass on its own
    # nouns: loss 0. Image 1 has no noun: skipped (otherwise r10 would add a positive term).
    loss, stats = noun_region_loss(nouns, noun_image, regions, valid, 10.0, mode="two_way")
    assert stats["loss_r2n"] == pytest.approx(0.0, abs=1e-12)
    assert loss.item() == pytest.approx(0.5 * n2r, abs=1e-6)


def test_nouns_of_images_without_regions_are_dropped():
    nouns, noun_image, regions, valid = two_image_case()
    valid = valid.clone()
    valid[1] = False  # image 1 has no valid region: t1 is dropped, image 1 is no negative for t0 either
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    loss, stats = noun_region_loss(nouns, noun_image, regions, valid, scale)
    assert stats["nouns"] == 1 and stats["nouns_dropped"] == 1
    assert loss.item() == pytest.approx(0.0, abs=1e-12)  # a softmax over one image
    loss.backward()
    assert torch.isfinite(scale.grad)
    # the soft maximum too: the region-less image's value is masked, and no NaN reaches any gradient
    for mode in ("one_way", "two_way"):
        nouns_g = nouns.clone().requires_grad_(True)
        regions_g = regions.clone().requires_grad_(True)
        loss, stats = noun_region_loss(nouns_g, noun_image, regions_g, valid, 10.0, mode=mode, region_temperature=0.05)
        assert stats["nouns_dropped"] == 1 and torch.isfinite(loss)
        loss.backward()
        assert torch.isfinite(nouns_g.grad).all() and torch.isfinite(regions_g.grad).all()


def test_no_noun_left_returns_zero_with_grad_fn():
    nouns, noun_image, regions, _ = two_image_case()
    regions = regions.clone().requires_grad_(True)
    valid = torch.zeros(2, 3, dtype=torch.bool)
    for mode in ("one_way", "region_batch", "two_way"):
        loss, stats = noun_region_loss(nouns, noun_image, regions, valid, 10.0, mode=mode)
        assert loss.item() == 0.0 and loss.grad_fn is not None
        assert stats["nouns"] == 0 and stats["nouns_dropped"] == 2
        loss.backward()
        assert torch.equal(regions.grad, torch.zeros_like(regions))
    empty, stats = noun_region_loss(
        torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), regions.float(), torch.ones(2, 3, dtype=torch.bool), 10.0
    )
    assert empty.item() == 0.0 and empty.grad_fn is not None and stats["nouns"] == 0


def test_learnable_scale_gets_finite_gradient_in_every_mode():
    nouns, noun_image, regions, valid = two_image_case()
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)  # as clip.logit_scale
    for mode in ("one_way", "region_batch", "two_way"):
        loss, _ = noun_region_loss(nouns, noun_image, regions, valid, log_scale.exp(), mode=mode)
        loss.backward()
        assert torch.isfinite(log_scale.grad) and log_scale.grad != 0
        log_scale.grad = None


def test_image_text_loss_hand_computed():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    text = torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    # logits = 10 * image @ text.T = [[6, 0], [8, 10]]
    # image->text rows: [6, 0] target 0 -> log(1 + e^-6); [8, 10] target 1 -> log(1 + e^-2)
    # text->image columns: [6, 8] target 0 -> log(1 + e^2); [0, 10] target 1 -> log(1 + e^-10)
    i2t = (log1pexp(-6.0) + log1pexp(-2.0)) / 2
    t2i = (log1pexp(2.0) + log1pexp(-10.0)) / 2
    loss = image_text_loss(image, text, torch.tensor(10.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(0.5 * (i2t + t2i), abs=1e-6)


def test_positives_make_a_shared_noun_no_negative():
    """Two images both contain a dog; the noun "dog" of image 0 must not be pushed away from image 1.

    s(dog, img0) = 10 * 1.0, s(dog, img1) = 10 * 0.0, s(dog, img2) = 10 * 0.0 (scale 10, unit vectors).
    Without positives: -log(e^10 / (e^10 + 1 + 1)).  With img1 also positive: -log((e^10 + 1) / (e^10 + 2)).
    """
    e = torch.eye(2)
    nouns = e[:1]
    regions = torch.stack([e[:1], e[1:], e[1:]])  # (3 images, 1 region, 2)
    valid = torch.ones(3, 1, dtype=torch.bool)
    img = torch.tensor([0])
    plain, _ = noun_region_loss(nouns, img, regions, valid, 10.0)
    assert plain.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 2)), abs=1e-6)
    pos = torch.tensor([[True, True, False]])
    shared, _ = noun_region_loss(nouns, img, regions, valid, 10.0, positives=pos)
    assert shared.item() == pytest.approx(-math.log((math.exp(10) + 1) / (math.exp(10) + 2)), abs=1e-6)
    # region_batch: image 1's region leaves the softmax: -log(e^10 / (e^10 + e^0 [image 2]))
    rb, _ = noun_region_loss(nouns, img, regions, valid, 10.0, mode="region_batch", positives=pos)
    assert rb.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 1)), abs=1e-6)


def calibration_case():
    """image 0: r00 = (1, 0), r01 = (0, 1), r02 = (-1, 0); image 1: r10 = (0.6, 0.8), r11 padding (huge); image 2:
    no valid region. Pairs: dog (1, 0) and sky (0, 1) from image 0; dog again and cat (0.6, 0.8) from image 1;
    cat from image 2 (dropped)."""
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [[0.6, 0.8], [50.0, 50.0], [0.0, 0.0]],
                            [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]], dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    dog, sky, cat = [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]
    nouns = torch.tensor([dog, sky, dog, cat, cat], dtype=torch.float64, requires_grad=True)
    noun_image = torch.tensor([0, 0, 1, 1, 2])
    keys = torch.tensor([5, 7, 5, 9, 9])
    return nouns, noun_image, regions, valid, keys


def test_noun_calibration_hand_computed():
    nouns, noun_image, regions, valid, keys = calibration_case()
    loss = noun_calibration_loss(nouns, noun_image, regions, valid, 10.0, keys)
    # dog @ r00 against cat (sky is named by the same caption): logits 10 vs 6
    # sky @ r01 against cat (dog excluded): 10 vs 8; dog @ r10 against sky (cat excluded): 6 vs 8
    # cat @ r10 against sky (dog excluded): 10 vs 8; the pair of image 2 (no valid region) is dropped
    expected = (log1pexp(-4) + log1pexp(-2) + log1pexp(2) + log1pexp(-2)) / 4
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-9)
    loss.backward()
    # regions no noun picks (r02, padding, image 2) and the dropped pair get exactly zero gradient
    assert float(regions.grad[0, 2].abs().sum()) == 0.0 and float(regions.grad[1, 1:].abs().sum()) == 0.0
    assert float(regions.grad[2].abs().sum()) == 0.0 and float(nouns.grad[4].abs().sum()) == 0.0
    assert float(regions.grad[0, 0].abs().sum()) > 0 and float(regions.grad[1, 0].abs().sum()) > 0


def test_noun_calibration_is_what_the_one_way_loss_cannot_see():
    """A constant added to one noun's similarities leaves the one-way loss unchanged, not the calibration."""
    nouns, noun_image, regions, valid, keys = calibration_case()
    regions, nouns = regions.detach(), nouns.detach()
    # lift every similarity of "cat" by 0.5: append a third dimension that only cat's and the regions' share
    lift = torch.cat([nouns, torch.tensor([[0.0], [0.0], [0.0], [1.0], [1.0]], dtype=torch.float64)], 1)
    flat = torch.cat([regions, torch.full((3, 3, 1), 0.5, dtype=torch.float64)], 2)
    plain = torch.cat([nouns, torch.zeros(5, 1, dtype=torch.float64)], 1)
    one_way = [noun_region_loss(n, noun_image, flat, valid, 10.0)[0] for n in (plain, lift)]
    assert float(one_way[0]) == pytest.approx(float(one_way[1]), rel=1e-9)
    cal = [noun_calibration_loss(n, noun_image, flat, valid, 10.0, keys) for n in (plain, lift)]
    assert float(cal[1]) > float(cal[0]) + 0.1  # cat now wins where dog and sky should


def test_noun_calibration_without_nouns_is_a_connected_zero():
    nouns, noun_image, regions, valid, keys = calibration_case()
    loss = noun_calibration_loss(nouns[4:], noun_image[4:], regions, valid, 10.0, keys[4:])
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="noun_keys"):
        noun_calibration_loss(nouns, noun_image, regions, valid, 10.0, keys[:2])
