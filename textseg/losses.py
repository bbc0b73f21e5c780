"""Contrastive losses between caption nouns, image regions and whole images.

Conventions: embeddings are L2-normalised by the caller; ``logit_scale`` is the already exponentiated inverse
temperature (a float, or a 0-dim tensor such as ``clip.logit_scale.exp()``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

NounRegionMode = Literal["one_way", "region_batch", "two_way"]

__all__ = ["noun_region_loss", "noun_calibration_loss", "image_text_loss", "same_noun_positives", "NounRegionMode"]


def _check_inputs(nouns: Tensor, noun_image: Tensor, regions: Tensor, region_valid: Tensor) -> None:
    if nouns.ndim != 2 or regions.ndim != 3:
        raise ValueError(
            f"expected nouns (M, D) and regions (B, K, D), got {tuple(nouns.shape)} and {tuple(regions.shape)}"
        )
    if nouns.shape[1] != regions.shape[2]:
        raise ValueError(f"embedding sizes differ: nouns D={nouns.shape[1]}, regions D={regions.shape[2]}")
    if noun_image.shape != (nouns.shape[0],):
        raise ValueError(f"noun_image must have shape ({nouns.shape[0]},), got {tuple(noun_image.shape)}")
    if region_valid.shape != regions.shape[:2] or region_valid.dtype != torch.bool:
        raise ValueError(f"region_valid must be a bool tensor of shape {tuple(regions.shape[:2])}")
    if noun_image.numel() and (int(noun_image.min()) < 0 or int(noun_image.max()) >= regions.shape[0]):
        raise ValueError(f"noun_image values must lie in [0, {regions.shape[0]})")


def _zero_loss(nouns: Tensor, regions: Tensor, logit_scale: Tensor | float) -> Tensor:
    """A zero connected to every input, so DDP sees a gradient (of zero) for all parameters."""
    zero = regions.sum() * 0 + nouns.sum() * 0
    if isinstance(logit_scale, Tensor):
        zero = zero + logit_scale * 0
    return zero


def noun_region_loss(
    nouns: Tensor,
    noun_image: Tensor,
    regions: Tensor,
    region_valid: Tensor,
    logit_scale: Tensor | float,
    mode: NounRegionMode = "one_way",
    positives: Tensor | None = None,
    region_temperature: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Contrastive loss matching caption nouns to image regions.

    Args:
        nouns: (M, D) noun embeddings.
        noun_image: (M,) long, index in ``[0, B)`` of the image whose caption each noun came from.
        regions: (B, K, D) region embeddings.
        region_valid: (B, K) bool, False for padding regions.
        logit_scale: exponentiated inverse temperature.
        mode: ``"one_way"``: s(n, j) = scale * max over valid k of <t_n, r_jk> (or the soft maximum of
            ``region_temperature``), cross-entropy over images j with target ``noun_image[n]``; with the max,
            regions that match no noun get no gradient. ``"region_batch"``: softmax
            over all valid regions of the batch, target = best valid region of the noun's own image (chosen
            without gradient), so the noun is also pushed away from its own image's other regions.
            ``"two_way"``: mean of the one-way term and a region->noun term (for every valid region of an image
            with nouns: -log of the softmax mass over all nouns that falls on that image's nouns).
        positives: optional (M, B) bool, images whose caption has the same noun (the noun's own image included).
            They are not negatives: the one-way term maximises the softmax mass on all of them, and
            ``"region_batch"`` drops the regions of the other positive images from the softmax. Without it, a noun
            shared by several captions of a batch ("dog") would push its true matches apart.

    Returns:
        ``(loss, stats)``; stats (floats): ``nouns`` used, ``nouns_dropped`` (their image has no valid region),
        ``best_sim`` (mean unscaled similarity of each noun to its best own region), ``acc`` (share of nouns
        whose best-scoring image is their own), and per-term losses for ``"two_way"``.
    """
    if mode not in ("one_way", "region_batch", "two_way"):
        raise ValueError(f"unknown noun-region loss mode {mode!r}")
    if region_temperature < 0 or (region_temperature > 0 and mode == "region_batch"):
        raise ValueError(f"region_temperature must be >= 0, and 0 in mode 'region_batch'; got {region_temperature}")
    _check_inputs(nouns, noun_image, regions, region_valid)
    B, K, _ = regions.shape

    has_region = region_valid.any(dim=1)  # (B,)
    keep = has_region[noun_image] if nouns.shape[0] else noun_image.new_zeros(0, dtype=torch.bool)
    stats: dict[str, float] = {"nouns": float(keep.sum()), "nouns_dropped": float((~keep).sum())}
    if not bool(keep.any()):
        stats.update(best_sim=0.0, acc=0.0)
        return _zero_loss(nouns, regions, logit_scale), stats
    t = nouns[keep]
    target = noun_image[keep]
    pos = None
    if positives is not None:
        pos = positives[keep].clone()
        pos[torch.arange(t.shape[0], device=t.device), target] = True

    sim = torch.einsum("md,bkd->mbk", t, regions)  # (M', B, K), unscaled cosine similarities
    valid = region_valid.unsqueeze(0).expand_as(sim)
    # -inf on padding so max ignores it; images without any valid region are masked after scaling instead
    # (a -inf inside scale * best would make the gradient of a learnable scale NaN).
    padded = sim.masked_fill(~valid, float("-inf"))
    if region_temperature > 0:
        best = region_temperature * torch.logsumexp(padded / region_temperature, 2)
    else:
        best, _ = padded.max(dim=2)  # (M', B)
    best = torch.where(has_region.unsqueeze(0), best, torch.zeros_like(best))
    image_logits = (logit_scale * best).masked_fill(~has_region.unsqueeze(0), float("-inf"))
    rows = torch.arange(t.shape[0], device=t.device)
    with torch.no_grad():
        stats["best_sim"] = float(best[rows, target].mean())
        stats["acc"] = float((image_logits.argmax(dim=1) == target).float().mean())

    if mode == "region_batch":
        drop = ~valid
        if pos is not None:  # regions of other images that share the noun are not negatives
            other = pos.clone()
            other[rows, target] = False
            drop = drop | other.unsqueeze(2)
        flat = (logit_scale * sim).masked_fill(drop, float("-inf")).reshape(t.shape[0], B * K)
        with torch.no_grad():
            own = sim[rows, target].masked_fill(~region_valid[target], float("-inf"))  # (M', K)
            region_target = target * K + own.argmax(dim=1)
        loss = F.cross_entropy(flat, region_target)
        return loss, stats

    if pos is None:
        loss_n2r = F.cross_entropy(image_logits, target)
    else:
        pos_logits = image_logits.masked_fill(~(pos & has_region.unsqueeze(0)), float("-inf"))
        loss_n2r = (torch.logsumexp(image_logits, 1) - torch.logsumexp(pos_logits, 1)).mean()
    if mode == "one_way":
        return loss_n2r, stats

    # two_way: region -> noun term over valid regions of images that have at least one (kept) noun.
    has_noun = torch.zeros(B, dtype=torch.bool, device=regions.device)
    has_noun[target] = True
    region_rows = region_valid & has_noun.unsqueeze(1)  # (B, K)
    r2n = (logit_scale * sim).permute(1, 2, 0)[region_rows]  # (R, M')
    region_img = torch.arange(B, device=regions.device).unsqueeze(1).expand(B, K)[region_rows]  # (R,)
    own_noun = region_img.unsqueeze(1) == target.unsqueeze(0)  # (R, M')
    log_all = torch.logsumexp(r2n, dim=1)
    log_own = torch.logsumexp(r2n.masked_fill(~own_noun, float("-inf")), dim=1)
    loss_r2n = (log_all - log_own).mean()
    stats["loss_n2r"] = float(loss_n2r.detach())
    stats["loss_r2n"] = float(loss_r2n.detach())
    return 0.5 * (loss_n2r + loss_r2n), stats


def noun_calibration_loss(nouns: Tensor, noun_image: Tensor, regions: Tensor, region_valid: Tensor,
                          logit_scale: Tensor | float, noun_keys: Tensor) -> Tensor:
    """Nouns compared with each other at their regions: the calibration the one-way loss lacks.

    The one-way loss is a softmax over images for each noun, so adding a constant to one noun's similarities
    changes nothing: each noun's level is free, and a label map (an argmax over class names per region, against a
    constant background score) compares those levels. Here, at each noun's best region of its own image (chosen
    without gradient), the noun must score above every other distinct noun of the batch (cross-entropy), except
    the other nouns of its own caption, which may name that region too. Regions that match no noun still get no
    gradient.

    Args:
        nouns: (M, D) embedding of each (noun, image) pair's noun; noun_image: (M,) its image in ``[0, B)``.
        regions: (B, K, D); region_valid: (B, K) bool.
        logit_scale: exponentiated inverse temperature.
        noun_keys: (M,) integer identity of each pair's noun (equal nouns, equal keys).
    """
    _check_inputs(nouns, noun_image, regions, region_valid)
    if noun_keys.shape != noun_image.shape:
        raise ValueError(f"noun_keys must have shape {tuple(noun_image.shape)}, got {tuple(noun_keys.shape)}")
    keep = region_valid.any(dim=1)[noun_image] if nouns.shape[0] else noun_image.new_zeros(0, dtype=torch.bool)
    if not bool(keep.any()):
        return _zero_loss(nouns, regions, logit_scale)
    t, target, keys = nouns[keep], noun_image[keep], noun_keys[keep]
    same_word = keys.unsqueeze(1) == keys.unsqueeze(0)  # (M', M'), without torch.unique: no device sync
    first = same_word.int().argmax(dim=1)  # each pair's first pair with the same noun: its column
    own = torch.einsum("md,mkd->mk", t, regions[target]).masked_fill(~region_valid[target], float("-inf"))
    best = regions[target, own.detach().argmax(dim=1)]  # (M', D)
    logits = logit_scale * best @ t.t()  # (M', M'); only the first column of each distinct noun is kept
    rows = torch.arange(t.shape[0], device=t.device)
    caption_has = torch.zeros(regions.shape[0], t.shape[0], dtype=torch.bool, device=t.device)
    caption_has[target, first] = True  # (B, M'): the caption of image b names the noun of column j
    excluded = (first != rows).unsqueeze(0) | (caption_has[target] & ~same_word)
    return F.cross_entropy(logits.masked_fill(excluded, float("-inf")), first)


def image_text_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric CLIP InfoNCE: mean of image->text and text->image cross-entropy; pair i is (image i, text i)."""
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"expected two (B, D) tensors, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    logits = logit_scale * image_emb @ text_emb.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def same_noun_positives(noun_keys: Tensor, noun_image: Tensor, num_images: int) -> Tensor:
    """The ``positives`` of :func:`noun_region_loss` from noun identities: (M, B) bool, ``[i, j]`` true when image
    ``j`` has a (noun, image) pair with the same key as pair ``i`` (pair ``i``'s own image included).

    Args:
        noun_keys: (M,) integer identity of each pair's noun (equal nouns, equal keys), e.g. hashes of the words.
        noun_image: (M,) long, the image of each pair, in ``[0, num_images)``.
        num_images: B.
    """
    if noun_keys.shape != noun_image.shape or noun_keys.ndim != 1:
        raise ValueError(f"expected two (M,) tensors, got {tuple(noun_keys.shape)} and {tuple(noun_image.shape)}")
    _, noun = torch.unique(noun_keys, return_inverse=True)
    has = torch.zeros(int(noun.max()) + 1 if noun.numel() else 0, num_images, dtype=torch.bool,
                      device=noun_keys.device)
    has[noun, noun_image] = True
    return has[noun]
