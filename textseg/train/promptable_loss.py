"""The stand-in's training loss: SAM's mask loss (focal + dice) and IoU-prediction loss on point prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from textseg.ris.promptable import PromptableCore


def mask_losses(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output (N, M) of (N, M, H, W) logits against (N, H, W) masks: sigmoid focal loss (alpha 0.25,
    gamma 2, mean over pixels), dice loss, and the IoU of the thresholded output (no gradient)."""
    t = target[:, None].to(logits.dtype).expand_as(logits)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).flatten(2).mean(-1)
    dice = 1 - (2 * (p * t).flatten(2).sum(-1) + 1) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    with torch.no_grad():
        hard, tb = logits > 0, t > 0.5
        iou = (hard & tb).flatten(2).sum(-1).float() / (hard | tb).flatten(2).sum(-1).clamp(min=1).float()
    return focal, dice, iou


def segmenter_loss(core: PromptableCore, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM's training loss on a :func:`~textseg.train.promptable_data.collate_scenes` batch: 20 x focal + dice on
    the masks (for the one-point multimask prompt the least over its outputs, for the several-point prompt the single
    output), plus the MSE between the predicted and the actual IoU of every output."""
    dev = core.device
    encoded = core.encode(batch["images"])
    index = batch["image_index"].to(dev)
    target = batch["masks"].to(dev)
    ones = torch.ones(index.shape[0], 1, dtype=torch.int, device=dev)
    low_multi, iou_multi = core.decode_flat(encoded, index, batch["one"], ones, multimask=True)
    low_single, iou_single = core.decode_flat(encoded, index, batch["many"], batch["labels"], multimask=False)
    focal_m, dice_m, true_m = mask_losses(core.upscale(encoded, low_multi), target)
    focal_s, dice_s, true_s = mask_losses(core.upscale(encoded, low_single), target)
    loss_m = 20 * focal_m + dice_m
    best = loss_m.argmin(dim=1, keepdim=True)
    mask_loss = loss_m.gather(1, best).mean() + (20 * focal_s + dice_s).mean()
    iou_loss = F.mse_loss(iou_multi, true_m) + F.mse_loss(iou_single, true_s)
    loss = mask_loss + iou_loss
    with torch.no_grad():
        focal = focal_m.gather(1, best).mean() + focal_s.mean()
        dice = dice_m.gather(1, best).mean() + dice_s.mean()
    stats = {"loss": float(loss.detach()), "focal": float(focal), "dice": float(dice),
             "iou_mse": float(iou_loss.detach()),
             "one_point_iou": float(true_m.gather(1, iou_multi.argmax(dim=1, keepdim=True)).mean()),
             "points_iou": float(true_s.mean())}
    return loss, stats


__all__ = ["mask_losses", "segmenter_loss"]
