"""The point generator's training objective, from image-text pairs alone (no mask is ever read).

Objective (per batch of B image-sentence pairs; frozen CLIP, frozen promptable segmenter):

* **Localisation** (TRIS style): the generator scores every patch of image i for sentence j; the pooled score
  ``S[i, j] = τ · logsumexp_p(positive[i, j, p] / τ)`` must be highest for the sentence's own image: a cross-entropy
  over the sentence's own image and ``loc_images - 1`` other images of the batch (images whose sentence is the same
  text count as correct). This is the term that carries the sentence.
* **Segmenter confidence** (the frozen segmenter's judgement of a prompt, read with the sentence): ``candidates``
  patches per pair (half the current top of the positive map, half drawn at random) are each given to the
  segmenter as one positive point, and the positive map restricted to the candidates is trained towards
  ``softmax(reward / confidence_temperature)`` (a listwise cross-entropy). The reward (:func:`sentence_reward`) sums,
  each standardised over the pair's candidates, the segmenter's predicted IoU of the mask it returns (SAM's score),
  the cosine of the mask's pooled dense features to the sentence, the point's own text-patch cosine and the mask's
  log area: a confident mask of what the sentence names. (With the ``reward_*`` weights at 0 it is the predicted IoU
  alone, which does not depend on the sentence.) The negative map is trained the same way on negative candidates,
  each added to the pair's top positive point, ranked by the predicted IoU and sentence cosine of the two-point
  mask. No mask of the data is read: the segmenter was pretrained with masks of its own, as SAM was.
* **Mask alignment** (optional, ``mask_alignment > 0``): for each pair, ``samples`` point sets are drawn from the
  generator's maps, the segmenter turns each into a mask, and the mask's region embedding (the dense CLIP features
  pooled over the mask) must match its own sentence better than the batch's other sentences: reward = log-softmax
  over sentences, trained by the policy gradient (REINFORCE, the mean reward of the pair's samples as baseline).
  Off by default: on the workbench its reward prefers small fragments (the README's ablation).

(:func:`train_step` is the whole objective of one batch.)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from textseg.ris.points import PointGenerator, dense_and_text, near_patches, patch_centres
from textseg.train.points_config import PointTrainConfig


def localization_loss(positive: torch.Tensor, same: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """TRIS-style localisation loss.

    Args:
        positive: (B, M, gh, gw) positive logits of each sentence (dim 0) on M candidate images, its own first.
        same: (B, M) bool, candidates whose own sentence is the same text (these count as correct too; column 0
            is always True).
        temperature: τ of the logsumexp pooling over patches.
    """
    b, m = positive.shape[:2]
    pooled = temperature * torch.logsumexp(positive.reshape(b, m, -1) / temperature, -1)
    log_p = F.log_softmax(pooled, dim=1)
    return -(torch.logsumexp(log_p.masked_fill(~same, float("-inf")), 1)).mean()


def candidate_images(b: int, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, M) image indices per sentence: its own image first, then M - 1 others of the batch drawn at random
    (all others when M >= B)."""
    m = min(m, b)
    others = torch.stack([torch.randperm(b - 1, generator=generator)[: m - 1] for _ in range(b)])
    others = others + (others >= torch.arange(b)[:, None]).long()  # skip the own index
    return torch.cat([torch.arange(b)[:, None], others], 1)


def region_features(masks: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """(B, S, E) normalised mean dense features over (B, S, H, W) masks (each mask's area share per patch as its
    weight; an empty mask gives zeros)."""
    b, s, h, w = masks.shape
    gh, gw, e = dense.shape[1:]
    weights = F.adaptive_avg_pool2d(masks.float().reshape(b * s, 1, h, w), (gh, gw)).reshape(b, s, gh * gw)
    pooled = weights @ dense.reshape(b, gh * gw, e)
    return F.normalize(pooled / weights.sum(-1, keepdim=True).clamp_min(1e-6), dim=-1)


def alignment_reward(regions: torch.Tensor, text: torch.Tensor, sentences: Sequence[str], scale: float
                     ) -> torch.Tensor:
    """(B, S) log-probability that each mask's region embedding picks its own sentence among the batch's.

    Args:
        regions: (B, S, E) normalised region embeddings (S masks per pair).
        text: (B, E) sentence embeddings.
        sentences: the B sentences (equal sentences count as the own one).
        scale: CLIP's logit scale.
    """
    logits = scale * regions @ F.normalize(text, dim=-1).T  # (B, S, B)
    same = torch.tensor([[a == c for c in sentences] for a in sentences], device=regions.device)
    log_p = F.log_softmax(logits, -1)
    return torch.logsumexp(log_p.masked_fill(~same[:, None, :], float("-inf")), -1)


def confidence_candidates(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The patches the segmenter is prompted with for the confidence term: the ``k - k // 2`` best of each score
    map, then ``k // 2`` others drawn uniformly (so that patches the map ranks low can climb).

    Args:
        scores: (B, N) flat score maps (detached here).
        k: candidates per map.
        exclude: (B, N) bool patches never taken (e.g. around the positive point, for negatives).
        generator: for the random draw (on the CPU, so that runs repeat on any device).

    Returns:
        ``(index (B, k), valid (B, k))``: flat patch indices, distinct within a row; ``valid`` is False where
        fewer than ``k`` patches were allowed.
    """
    b, n = scores.shape
    k = min(k, n)
    blocked = torch.zeros(b, n, dtype=torch.bool, device=scores.device) if exclude is None else exclude.clone()
    s = scores.detach().float().masked_fill(blocked, float("-inf"))
    top_score, top = s.topk(k - k // 2, -1)
    blocked.scatter_(1, top, True)
    keys = torch.rand((b, n), generator=generator).to(scores.device).masked_fill(blocked, -1.0)
    key, drawn = keys.topk(k // 2, -1)
    return torch.cat([top, drawn], 1), torch.cat([torch.isfinite(top_score), key >= 0], 1)


def listwise_loss(logits: torch.Tensor, reward: torch.Tensor, valid: torch.Tensor, temperature: float
                  ) -> torch.Tensor:
    """Cross-entropy from ``softmax(reward / temperature)`` to ``softmax(logits)`` over each row's valid candidates
    (rows with fewer than two valid candidates are left out; none left gives 0).

    Args:
        logits: (B, K) the map's logits at the candidates.
        reward: (B, K) their rewards (the segmenter's predicted IoU).
        valid: (B, K) bool.
        temperature: > 0; smaller makes the target peakier.
    """
    target = F.softmax((reward.float() / temperature).masked_fill(~valid, float("-inf")), -1)
    log_p = F.log_softmax(logits.float().masked_fill(~valid, float("-inf")), -1).masked_fill(~valid, 0.0)
    rows = valid.sum(-1) >= 2
    if not bool(rows.any()):
        return logits.sum() * 0.0
    return -(target * log_p).sum(-1)[rows].mean()


def sample_points(positive: torch.Tensor, negative: torch.Tensor, samples: int, n_positive: int, n_negative: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``samples`` point sets per map pair, without replacement within a set (Gumbel top-k).

    Returns:
        ``(index (B, S, K), labels (B, S, K), log_prob (B, S))``: flat patch indices (positives first), 1/0
        labels, and the sum of each point's log-probability under its map's softmax (negatives: over the patches
        that are not positives of the set).
    """
    b = positive.shape[0]
    pos = positive.reshape(b, 1, -1).expand(b, samples, -1)
    neg = negative.reshape(b, 1, -1).expand(b, samples, -1)

    def gumbel(shape: torch.Size) -> torch.Tensor:
        u = torch.rand(shape, generator=generator, device="cpu").to(positive.device)
        return -torch.log(-torch.log(u.clamp(1e-9, 1 - 1e-9)))

    lp_pos = F.log_softmax(pos, -1)
    p_idx = (lp_pos.detach() + gumbel(pos.shape)).topk(n_positive, -1).indices
    log_prob = lp_pos.gather(-1, p_idx).sum(-1)
    index, labels = p_idx, torch.ones_like(p_idx)
    if n_negative:
        taken = torch.zeros_like(neg, dtype=torch.bool).scatter(-1, p_idx, True)
        lp_neg = F.log_softmax(neg.masked_fill(taken, float("-inf")), -1)
        n_idx = (lp_neg.detach() + gumbel(neg.shape)).topk(n_negative, -1).indices
        log_prob = log_prob + lp_neg.gather(-1, n_idx).sum(-1)
        index = torch.cat([p_idx, n_idx], -1)
        labels = torch.cat([labels, torch.zeros_like(n_idx)], -1)
    return index, labels, log_prob


def standardised(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K) values standardised over each row's valid entries (invalid entries 0; a constant row gives 0)."""
    n = valid.sum(-1, keepdim=True).clamp_min(1)
    x = x.float().masked_fill(~valid, 0.0)
    mean = x.sum(-1, keepdim=True) / n
    var = ((x - mean).masked_fill(~valid, 0.0) ** 2).sum(-1, keepdim=True) / n
    return ((x - mean) / (var.sqrt() + 1e-6)).masked_fill(~valid, 0.0)


def sentence_reward(iou: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor, dense: torch.Tensor,
                    text: torch.Tensor, cfg: PointTrainConfig, cosine: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K) sentence-aware reward of K candidate prompts per pair (see :class:`PointTrainConfig`).

    Args:
        iou: (B, K) the segmenter's predicted IoUs; masks: (B, K, H, W) its masks; valid: (B, K) bool.
        dense: (B, gh, gw, E) dense CLIP features; text: (B, E) sentence embeddings.
        cosine: (B, K) the patch–sentence cosine at each candidate, or None to leave that part and the area part
            out (negative candidates).
    """
    align = (region_features(masks, dense) * F.normalize(text.float(), dim=-1)[:, None]).sum(-1)
    reward = standardised(iou, valid) + cfg.reward_alignment * standardised(align, valid)
    if cosine is not None:
        area = masks.flatten(2).float().mean(-1).clamp_min(1e-4).log()
        reward = reward + cfg.reward_cosine * standardised(cosine, valid) + cfg.reward_area * standardised(area, valid)
    return reward


def confidence_loss(positive: torch.Tensor, negative: torch.Tensor, core: Any, encoded: Any,
                    image_size: tuple[int, int], cfg: PointTrainConfig, rng: torch.Generator,
                    dense: torch.Tensor | None = None, text: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """The segmenter-confidence term (module docstring) of (B, gh, gw) positive and negative maps, and its parts.

    Positive candidates are prompted alone; negative candidates (none within one patch of the pair's top positive)
    together with that positive, as at inference. The negative part is skipped when ``cfg.n_negative`` is 0. With
    ``cfg.sentence_reward`` the candidates are ranked by :func:`sentence_reward`, which needs ``dense`` (B, gh, gw,
    E) and ``text`` (B, E).
    """
    b, gh, gw = positive.shape
    device = positive.device
    if cfg.sentence_reward and (dense is None or text is None):
        raise ValueError("a sentence-aware confidence reward needs the dense and text features")
    flat_pos = positive.reshape(b, -1)
    idx, ok = confidence_candidates(flat_pos, cfg.candidates, None, rng)
    k = idx.shape[1]
    coords = patch_centres(idx, (gh, gw), image_size)[:, :, None]
    with torch.no_grad():
        masks, q_pos, _ = core.decode(encoded, coords, torch.ones(b, k, 1, dtype=torch.int, device=device))
        reward = q_pos
        if cfg.sentence_reward:
            cos = (F.normalize(dense.float(), dim=-1) * F.normalize(text.float(), dim=-1)[:, None, None]).sum(-1)
            reward = sentence_reward(q_pos, masks, ok, dense, text, cfg, cos.reshape(b, -1).gather(1, idx))
    loss = listwise_loss(flat_pos.gather(1, idx), reward, ok, cfg.confidence_temperature)
    stats = {"confidence_pos": float(loss.detach()), "iou_pred_top": float(q_pos[:, 0].mean())}
    if cfg.n_negative:
        top = flat_pos.detach().argmax(1)
        flat_neg = negative.reshape(b, -1)
        n_idx, n_ok = confidence_candidates(flat_neg, cfg.candidates, near_patches(top, (gh, gw), 1), rng)
        k = n_idx.shape[1]
        both = torch.cat([patch_centres(top, (gh, gw), image_size)[:, None, None].expand(b, k, 1, 2),
                          patch_centres(n_idx, (gh, gw), image_size)[:, :, None]], 2)
        labels = torch.tensor([1, 0], dtype=torch.int, device=device).expand(b, k, 2)
        with torch.no_grad():
            n_masks, q_neg, _ = core.decode(encoded, both, labels)
            n_reward = sentence_reward(q_neg, n_masks, n_ok, dense, text, cfg) if cfg.sentence_reward else q_neg
        neg_loss = listwise_loss(flat_neg.gather(1, n_idx), n_reward, n_ok, cfg.confidence_temperature)
        loss = loss + neg_loss
        stats.update(confidence_neg=float(neg_loss.detach()), iou_pred_top_neg=float(q_neg[:, 0].mean()))
    return loss, stats


def train_step(generator: PointGenerator, model: Any, core: Any, images: np.ndarray, sentences: list[str],
               cfg: PointTrainConfig, rng: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (module docstring) and its parts. ``images`` (B, S, S, 3) uint8; ``core`` the
    frozen promptable segmenter's tensor core (``encode`` / ``decode``)."""
    device = next(generator.parameters()).device
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255)
    dense, text = dense_and_text(model, x, sentences)
    b, gh, gw, e = dense.shape
    stats: dict[str, float] = {}
    loss = torch.zeros((), device=device)
    pos, neg = generator(dense, text)
    if cfg.localization > 0:
        cand = candidate_images(b, cfg.loc_images, rng)[:, 1:].to(device)  # (B, M - 1): the others
        m = cand.shape[1]
        pos_other, _ = generator(dense[cand].reshape(b * m, gh, gw, e), text[:, None].expand(b, m, e).reshape(-1, e))
        candidates = torch.cat([pos[:, None], pos_other.reshape(b, m, gh, gw)], 1)
        same = torch.tensor([[True] + [sentences[int(i)] == sentences[j] for i in row] for j, row in
                             enumerate(cand.tolist())], device=device)
        loc = localization_loss(candidates, same, cfg.pool_temperature)
        loss = loss + cfg.localization * loc
        stats["localization"] = float(loc.detach())
    if cfg.confidence > 0 or cfg.mask_alignment > 0:
        with torch.no_grad():
            enc = core.encode(torch.from_numpy(images).to(device))
    if cfg.confidence > 0:
        conf, conf_stats = confidence_loss(pos, neg, core, enc, images.shape[1:3], cfg, rng, dense, text)
        loss = loss + cfg.confidence * conf
        stats.update(conf_stats)
    if cfg.mask_alignment > 0:
        index, labels, log_prob = sample_points(pos, neg, cfg.samples, cfg.n_positive, cfg.n_negative, rng)
        coords = patch_centres(index, (gh, gw), images.shape[1:3])
        with torch.no_grad():
            masks, _, _ = core.decode(enc, coords, labels)
            reward = alignment_reward(region_features(masks, dense), text, sentences,
                                      float(model.clip.logit_scale.exp()))
        advantage = reward - reward.mean(1, keepdim=True)
        pg = -(advantage * log_prob).mean()
        loss = loss + cfg.mask_alignment * pg
        stats["reward"] = float(reward.mean())
        stats["policy"] = float(pg.detach())
        stats["mask_area"] = float(masks.float().mean())
    stats["loss"] = float(loss.detach())
    return loss, stats


__all__ = ["alignment_reward", "candidate_images", "confidence_candidates", "confidence_loss", "listwise_loss",
           "localization_loss", "region_features", "sample_points", "sentence_reward", "standardised",
           "train_step"]
