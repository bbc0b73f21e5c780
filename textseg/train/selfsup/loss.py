"""The DINO and iBOT losses, the teacher's output centring, its temperature schedule and the EMA update."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from textseg.train.selfsup.config import DinoLossConfig


def teacher_temperature(step: int, loss: DinoLossConfig) -> float:
    """The teacher's temperature at ``step``: linear warm-up, then constant."""
    if step >= loss.teacher_temp_warmup:
        return loss.teacher_temp
    return loss.warmup_teacher_temp + (loss.teacher_temp - loss.warmup_teacher_temp) * step / loss.teacher_temp_warmup


def dino_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """The DINO cross-entropy, averaged over all (teacher view i, student view v ≠ i) pairs.

    Args:
        student: the student's head outputs (logits), one (B, K) tensor per view; the teacher's views come first.
        teacher: the teacher's head outputs on its views (the global ones), one (B, K) tensor each.
        center: (K,) or (1, K) centre subtracted from the teacher's outputs.
        student_temp, teacher_temp: softmax temperatures.

    Returns:
        The scalar loss: mean over pairs of ``-sum_k softmax((t_i - c) / T_t) * log_softmax(s_v / T_s)`` averaged
        over the batch.
    """
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=-1).detach() for t in teacher]
    total, pairs = 0.0, 0
    for i, q in enumerate(targets):
        for v, log_p in enumerate(log_probs):
            if v == i:  # the teacher's own view is not a pair
                continue
            total = total + (-q * log_p).sum(-1).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("dino_loss needs a student view other than the teacher's")
    return total / pairs


def masked_patch_loss(student: torch.Tensor, teacher: torch.Tensor, view: torch.Tensor, num_views: int,
                      center: torch.Tensor, student_temp: float, teacher_temp: float) -> torch.Tensor:
    """iBOT's masked-patch cross-entropy: per view, the mean over its masked patches; then the mean over the views
    with a masked patch (0 when there is none).

    Args:
        student: (M, K) head outputs on the M masked patches (the student saw the mask token there).
        teacher: (M, K) the teacher's head outputs on the same patches of the unmasked views.
        view: (M,) the view index of each patch, in ``[0, num_views)``.
        center: the teacher's patch centre.
    """
    log_p = F.log_softmax(student.float() / student_temp, dim=-1)
    q = F.softmax((teacher.float() - center) / teacher_temp, dim=-1).detach()
    per_patch = (-q * log_p).sum(-1)
    sums = per_patch.new_zeros(num_views).index_add_(0, view, per_patch)
    counts = torch.bincount(view, minlength=num_views).to(per_patch.dtype)
    used = counts > 0
    return (sums / counts.clamp_min(1)).sum() / used.sum().clamp_min(1)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: Sequence[torch.Tensor] | torch.Tensor, momentum: float
                  ) -> torch.Tensor:
    """DINO's centre update: ``momentum * center + (1 - momentum) * mean of the teacher outputs`` (over every
    row of every view); returns the new centre (same shape as ``center``)."""
    out = torch.cat(list(teacher)) if not isinstance(teacher, torch.Tensor) else teacher.reshape(-1, center.shape[-1])
    return center * momentum + out.float().mean(0).reshape(center.shape) * (1 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter; buffers are copied."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)



__all__ = ["dino_loss", "ema_update", "masked_patch_loss", "teacher_temperature", "update_center"]
