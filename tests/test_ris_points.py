"""Point prompting: the point generator, point selection, its losses (hand-computed) and checkpoints."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from textseg.errors import ConfigError, MissingWeightsError, UserError
from textseg.ris.points import (PointGenerator, load_point_generator, make_prompts, near_patches, patch_centres,
                                save_point_generator, select_points, sincos_2d)
from textseg.train.points_config import load_point_config
from textseg.train.points_loss import (alignment_reward, candidate_images, confidence_candidates, listwise_loss,
                                       localization_loss, region_features, sample_points)


def _rigged_map():
    m = torch.zeros(1, 8, 8)
    m[0, 1, 1] = 5.0  # the peak
    m[0, 1, 2] = 4.9  # its neighbour: suppressed
    m[0, 5, 6] = 4.0  # a second peak
    m[0, 7, 0] = 3.0  # a third
    return m


def test_select_points_picks_the_hand_made_peaks():
    index, score, valid = select_points(_rigged_map(), 3, radius=1)
    assert index.tolist() == [[1 * 8 + 1, 5 * 8 + 6, 7 * 8 + 0]]
    assert score.tolist() == [[5.0, 4.0, 3.0]] and valid.all()
    index, score, _ = select_points(_rigged_map(), 2, radius=0)  # no suppression: the neighbour is second
    assert index.tolist() == [[9, 10]] and score.tolist() == [[5.0, pytest.approx(4.9)]]


def test_select_points_runs_out_of_patches():
    m = torch.arange(4.0).reshape(1, 2, 2)
    index, score, valid = select_points(m, 3, radius=1)  # the first pick suppresses the whole 2x2 grid
    assert index.tolist() == [[3, 0, 0]] and valid.tolist() == [[True, False, False]]
    assert score[0, 1:].isinf().all()
    assert select_points(m, 0)[0].shape == (1, 0)


def test_patch_centres_hand_computed():
    # an 8x8 grid over 96x96: patch (row 1, col 1) is pixels 12..23, centre 18; (row 5, col 6) -> x 78, y 66
    xy = patch_centres(torch.tensor([[9, 46]]), (8, 8), (96, 96))
    assert xy.tolist() == [[[18.0, 18.0], [78.0, 66.0]]]
    # a non-square image: a 2x4 grid over H=40, W=100 -> patches 25 wide, 20 high; index 5 = row 1, col 1
    assert patch_centres(torch.tensor([5]), (2, 4), (40, 100)).tolist() == [[37.5, 30.0]]


def test_make_prompts_labels_and_negatives_away_from_positives():
    pos = _rigged_map()
    neg = torch.zeros(1, 8, 8)
    neg[0, 2, 2] = 9.0  # best negative, but next to the positive peak (1, 1): never taken
    neg[0, 6, 1] = 2.0
    p = make_prompts(pos, neg, (96, 96), n_positive=1, n_negative=1, radius=1)
    assert p.labels.tolist() == [[1, 0]]
    assert p.coords.tolist() == [[[18.0, 18.0], [18.0, 78.0]]]
    assert p.scores.tolist() == [[5.0, 2.0]]
    base = make_prompts(pos, None, (96, 96), n_positive=2, n_negative=3)  # no negative map: no negatives
    assert base.labels.tolist() == [[1, 1]]
    with pytest.raises(UserError):
        make_prompts(pos, neg, (96, 96), n_positive=0)


def test_untrained_generator_is_the_similarity_baseline():
    torch.manual_seed(0)
    gen = PointGenerator(16, width=32, depth=1, heads=4, sim_scale=7.0)
    patches, text = torch.randn(3, 4, 5, 16), torch.randn(3, 16)
    pos, neg = gen(patches, text)
    cos = (F.normalize(patches, dim=-1) * F.normalize(text, dim=-1)[:, None, None]).sum(-1)
    torch.testing.assert_close(pos, 7.0 * cos)
    assert neg.abs().max() == 0
    with pytest.raises(ValueError):
        gen(patches, torch.randn(2, 16))


def test_position_code_tells_left_from_right():
    code = sincos_2d(2, 3, 8)
    assert code.shape == (6, 8)
    assert not torch.allclose(code[0], code[2])  # same row, other column
    assert torch.allclose(code[0, :4], code[3, :4])  # same column: the x half agrees


def test_localization_loss_hand_computed():
    # 2 sentences x 2 candidate images, 1 patch each, tau = 1: pooled = the logit
    positive = torch.tensor([[2.0, 0.0], [1.0, 1.0]]).reshape(2, 2, 1, 1)
    same = torch.tensor([[True, False], [True, False]])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(0.5)) / 2
    assert localization_loss(positive, same).item() == pytest.approx(expected)
    # a candidate with the same sentence counts as correct: sentence 1 then has probability 1
    same2 = torch.tensor([[True, False], [True, True]])
    expected2 = -(math.log(math.exp(2) / (math.exp(2) + 1)) + 0.0) / 2
    assert localization_loss(positive, same2).item() == pytest.approx(expected2)
    # logsumexp pooling over patches: own image patches (0, log 3) -> log 4; the other's (0, 0) -> log 2
    two = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    assert localization_loss(two, torch.tensor([[True, False]])).item() == pytest.approx(-math.log(4 / 6))
    # tau = 2: pooled = 2 * log(exp(0) + exp(log 3 / 2)) and 2 * log 2
    own, other = 2 * math.log(1 + math.sqrt(3)), 2 * math.log(2)
    expected = -(own - math.log(math.exp(own) + math.exp(other)))
    assert localization_loss(two, torch.tensor([[True, False]]), 2.0).item() == pytest.approx(expected)


def test_candidate_images_own_first_no_repeats():
    g = torch.Generator().manual_seed(0)
    cand = candidate_images(6, 4, g)
    assert cand.shape == (6, 4) and cand[:, 0].tolist() == list(range(6))
    for j, row in enumerate(cand.tolist()):
        assert len(set(row)) == 4 and row.count(j) == 1
    assert candidate_images(3, 8, g).shape == (3, 3)  # capped at the batch


def test_region_features_by_hand():
    dense = torch.zeros(1, 2, 2, 3)
    dense[0, 0, 0] = torch.tensor([2.0, 0.0, 0.0])
    dense[0, 1, 1] = torch.tensor([0.0, 0.0, 5.0])
    masks = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True  # exactly patch (0, 0)
    masks[0, 1, :2, :2] = True
    masks[0, 1, 2:, 2:3] = True  # plus half of patch (1, 1): weights 1 and 0.5
    r = region_features(masks, dense)
    torch.testing.assert_close(r[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(r[0, 1], F.normalize(torch.tensor([2.0, 0.0, 2.5]), dim=0))
    assert r[0, 2].abs().max() == 0  # empty mask


def test_alignment_reward_hand_computed():
    regions = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])  # (B=2, S=1, E=2)
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: e1, e2
    r = alignment_reward(regions, text, ["a dog", "a cat"], scale=1.0)
    # mask 0: logits (1, 0) -> log softmax at 0; mask 1: logits (0.6, 0.8) -> at 1
    assert r[0, 0].item() == pytest.approx(1 - math.log(math.e + 1))
    assert r[1, 0].item() == pytest.approx(0.8 - math.log(math.exp(0.6) + math.exp(0.8)))
    same = alignment_reward(regions, text, ["a dog", "a dog"], scale=1.0)  # both sentences are its own
    assert same.abs().max().item() == pytest.approx(0.0, abs=1e-6)


def test_sample_points_log_prob_and_exclusion():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(3, 4, 4)
    neg = torch.randn(3, 4, 4)
    index, labels, log_prob = sample_points(pos, neg, samples=5, n_positive=2, n_negative=1, generator=g)
    assert index.shape == (3, 5, 3) and labels[0, 0].tolist() == [1, 1, 0]
    for b in range(3):
        for s in range(5):
            p1, p2, n1 = index[b, s].tolist()
            assert len({p1, p2, n1}) == 3  # no patch twice in a set
            lp = F.log_softmax(pos[b].reshape(-1), 0)
            masked = neg[b].reshape(-1).clone()
            masked[[p1, p2]] = float("-inf")
            ln = F.log_softmax(masked, 0)
            assert log_prob[b, s].item() == pytest.approx((lp[p1] + lp[p2] + ln[n1]).item(), abs=1e-5)
    # a peaked positive map is sampled at its peak
    peaked = torch.full((1, 4, 4), -50.0)
    peaked[0, 2, 3] = 50.0
    idx, _, _ = sample_points(peaked, neg[:1], samples=8, n_positive=1, n_negative=0, generator=g)
    assert (idx == 11).all()


def test_near_patches_hand_computed():
    near = near_patches(torch.tensor([0, 7]), (3, 3), 1)  # corner (0, 0) and (2, 1) on a 3x3 grid
    assert near[0].reshape(3, 3).int().tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert near[1].reshape(3, 3).int().tolist() == [[0, 0, 0], [1, 1, 1], [1, 1, 1]]
    assert near_patches(torch.tensor([4]), (3, 3), 0)[0].nonzero().flatten().tolist() == [4]


def test_confidence_candidates_top_then_drawn():
    scores = torch.tensor([[0.0, 9.0, 1.0, 8.0, 2.0, 3.0, 7.0, 4.0]])
    g = torch.Generator().manual_seed(0)
    index, valid = confidence_candidates(scores, 5, generator=g)
    assert index[0, :3].tolist() == [1, 3, 6] and valid.all()  # the k - k // 2 = 3 best first
    drawn = index[0, 3:].tolist()
    assert len(set(drawn)) == 2 and not set(drawn) & {1, 3, 6}
    seen = set()
    for seed in range(40):  # the draw reaches every other patch
        seen |= set(confidence_candidates(scores, 5, generator=torch.Generator().manual_seed(seed))[0][0, 3:].tolist())
    assert seen == {0, 2, 4, 5, 7}
    exclude = torch.tensor([[False, True, True, True, True, True, False, False]])  # leaves patches 0, 6, 7
    index, valid = confidence_candidates(scores, 4, exclude, generator=g)
    assert index[0, :2].tolist() == [6, 7] and valid[0].tolist() == [True, True, True, False]
    assert index[0, 2].item() == 0


def test_listwise_loss_hand_computed():
    logits = torch.tensor([[0.0, math.log(2.0)]], requires_grad=True)  # softmax: 1/3, 2/3
    reward = torch.tensor([[0.6, 0.5]])
    loss = listwise_loss(logits, reward, torch.ones(1, 2, dtype=torch.bool), temperature=0.1)
    t0 = math.e / (math.e + 1)  # softmax([6, 5])
    assert loss.item() == pytest.approx(-(t0 * math.log(1 / 3) + (1 - t0) * math.log(2 / 3)), abs=1e-5)
    loss.backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # descent raises the better-rewarded candidate
    # an invalid candidate takes no part; a row with fewer than two valid ones is left out
    three = torch.tensor([[0.0, math.log(2.0), 5.0], [1.0, 2.0, 3.0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    got = listwise_loss(three, torch.tensor([[0.6, 0.5, 9.0], [0.0, 1.0, 1.0]]), valid, 0.1)
    assert got.item() == pytest.approx(loss.item(), abs=1e-5)
    assert listwise_loss(three[1:], three[1:], valid[1:], 0.1).item() == 0.0


def test_generator_checkpoint_round_trip(tmp_path):
    gen = PointGenerator(16, width=32, depth=1, heads=4)
    with torch.no_grad():
        gen.head.weight.normal_()
    path = save_point_generator(gen, tmp_path / "g" / "final.pt", {"note": "x"})
    loaded, meta = load_point_generator(path)
    x, t = torch.randn(2, 3, 3, 16), torch.randn(2, 16)
    for a, b in zip(gen(x, t), loaded(x, t)):
        torch.testing.assert_close(a, b)
    assert meta == {"note": "x"}
    with pytest.raises(MissingWeightsError, match="train-points"):
        load_point_generator(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        load_point_generator(tmp_path / "junk.pt")
    torch.save({"kind": "something else"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a textseg point generator"):
        load_point_generator(tmp_path / "other.pt")


def test_point_config_defaults_and_errors(tmp_path):
    cfg = load_point_config()
    assert [s.name for s in cfg.stages] == ["objects", "referring"] and cfg.curriculum
    assert cfg.total_steps == sum(s.steps for s in cfg.stages)
    assert not load_point_config(curriculum=False).curriculum
    bad = tmp_path / "bad.yaml"
    for text, fragment in [
        ("stages: []\n", "at least one step"),
        ("stages: [{name: a, steps: 2, data: x.tar}]\nbatch_size: 1\n", "batch_size"),
        ("stages: [{name: a, steps: 2}]\n", "stages[0] needs"),
        ("stages: [{name: a, steps: -1, data: x.tar}]\n", "steps must be"),
        ("stages: [{name: a, steps: 2, data: x.tar}]\nlr: .nan\n", "lr must be"),
        ("stages: [{name: a, steps: 2, data: x.tar}]\nlocalization: 0\nconfidence: 0\n", "nothing to train"),
        ("stages: [{name: a, steps: 2, data: x.tar}]\ncandidates: 1\n", "candidates must be >= 2"),
        ("stages: [{name: a, steps: 2, data: x.tar}]\nconfidence_temperature: 0\n", "confidence_temperature"),
        ("stages: [{name: a, steps: 2, data: x.tar}]\nfoo: 1\n", "unknown setting"),
        ("stages: [\n", "not valid YAML"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            load_point_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_point_config(tmp_path / "missing.yaml")


def test_response_map_argmax_is_the_top_positive_patch():
    from textseg.ris.result import ReferResult

    pm = np.zeros((8, 8), np.float32)
    pm[5, 6] = 3.0
    res = ReferResult(np.zeros((96, 96), bool), 0.5, 0, np.array([3.0]), "points", points=np.array([[78.0, 66.0]]),
                      labels=np.array([1]), positive_map=pm)
    resp = res.response
    assert resp.shape == (96, 96)
    y, x = np.unravel_index(resp.argmax(), resp.shape)
    assert 60 <= y < 72 and 72 <= x < 84  # inside patch (5, 6)


def test_point_referrer_spatial_puts_the_point_on_the_placed_instance(color_model, tmp_path):
    """Two identical discs: the baseline's single point goes to one of them whatever the sentence says; with the
    spatial reading "left" and "right" land on the left and the right disc."""
    import textseg
    from textseg.ris.points import PointReferrer
    from textseg.ris.promptable import PromptableSegmenter, build_workbench_segmenter, save_workbench_segmenter

    small = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "out_chans": 32,
             "decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_heads": 2, "iou_head_hidden_dim": 32}
    torch.manual_seed(0)
    save_workbench_segmenter(build_workbench_segmenter(**small), tmp_path / "seg.pt", small)
    promptable = PromptableSegmenter.from_workbench(tmp_path / "seg.pt", device="cpu")
    h, w = 96, 192
    yy, xx = np.mgrid[:h, :w]
    left = (yy - h / 2) ** 2 + (xx - w / 4) ** 2 < (h / 4) ** 2
    right = (yy - h / 2) ** 2 + (xx - 3 * w / 4) ** 2 < (h / 4) ** 2
    img = np.full((h, w, 3), 255, np.uint8)
    img[left | right] = (200, 20, 20)
    seg = textseg.Segmenter(color_model, short_side=None, text_cache_dir=False)
    given = lambda im: textseg.ris.Proposals(np.stack([left, right]), [{"support": 3}, {"support": 3}])
    referrer = PointReferrer(seg, promptable, spatial=True, proposer=given)
    for sentence, half in (("the disc on the left", slice(0, w // 2)), ("the right disc", slice(w // 2, w))):
        res = referrer(img, sentence)
        (x, y), = res.points
        assert half.start <= x < half.stop, sentence
        assert res.reading["chosen"] in (0, 1) and res.reading["horizontal"] in ("left", "right")
    plain = referrer(img, "a red disc")
    assert plain.reading["chosen"] is None
    base = PointReferrer(seg, promptable)(img, "a red disc")
    np.testing.assert_array_equal(plain.points, base.points)  # no spatial words: the baseline's point
