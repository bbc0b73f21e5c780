"""The training toolkit every loop shares: the warm-up + cosine schedule and the AdamW builder."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

NoDecay = Callable[[str, torch.nn.Parameter], bool]


def warmup_cosine(step: int, steps: int, *, start: float = 1.0, end: float = 0.0, warmup: int = 0,
                  warmup_offset: int = 0) -> float:
    """A value that rises linearly for ``warmup`` steps, then falls along a half cosine from ``start`` (at step
    ``warmup``) to ``end`` (at step ``steps``, and after it).

    During the warm-up the value is ``start * (step + 1) / (warmup + warmup_offset)``: with offset 0 the last
    warm-up step already reaches ``start`` (textseg's trainer, the SAM stand-in, the point generator); with offset 1
    (DINO's schedule) it reaches ``start`` one step later.

    Args:
        step: the step, from 0.
        steps: the step at which the cosine reaches ``end``.
        start, end: the value at the end of the warm-up and at ``steps``.
        warmup: warm-up steps (0: none).
        warmup_offset: added to ``warmup`` in the ramp's denominator.
    """
    if step < warmup:
        return start * (step + 1) / (warmup + warmup_offset)
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_scheduler(optimizer: torch.optim.Optimizer, steps: int, *, warmup: int = 0, end: float = 0.0,
                 warmup_offset: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` whose factor of each group's learning rate is :func:`warmup_cosine` from 1 to ``end``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, steps, end=end, warmup=warmup, warmup_offset=warmup_offset))


def no_decay_by_shape(name: str, p: torch.nn.Parameter) -> bool:
    """Gains and biases (fewer than 2 dimensions) are not decayed."""
    return p.ndim < 2


def build_optimizer(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], *, lr: float,
                    weight_decay: float = 0.0, betas: Sequence[float] = (0.9, 0.999),
                    no_decay: NoDecay | None = no_decay_by_shape, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the parameters that require gradients, in two groups: decayed (``weight_decay``) and not
    (``no_decay(name, p)`` true; None decays every parameter). Each group records ``"decay"`` (bool) for loops
    that schedule the weight decay themselves.

    Args:
        named_parameters: ``(name, parameter)`` pairs, e.g. ``model.named_parameters()``.
        lr, weight_decay, betas: AdamW's.
        no_decay: which parameters keep weight decay 0.
        fused: torch's fused AdamW kernel; by default when every trained parameter is on CUDA.
    """
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, p in named_parameters:
        if p.requires_grad:
            (plain if no_decay is not None and no_decay(name, p) else decay).append(p)
    if fused is None:
        fused = bool(decay + plain) and all(p.is_cuda for p in decay + plain)
    groups = [{"params": decay, "weight_decay": weight_decay, "decay": True},
              {"params": plain, "weight_decay": 0.0, "decay": False}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas),
                             **({"fused": True} if fused else {}))


__all__ = ["NoDecay", "build_optimizer", "lr_scheduler", "no_decay_by_shape", "warmup_cosine"]
