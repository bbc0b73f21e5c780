"""One DINO run's trainer: the model, AdamW, the augmentation generator and the optimizer step."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch

from textseg.errors import ConfigError, UserError
from textseg.train.schedule import build_optimizer, warmup_cosine
from textseg.train.selfsup.augment import MultiCrop, random_patch_masks
from textseg.train.selfsup.config import SelfSupConfig
from textseg.train.selfsup.loss import teacher_temperature
from textseg.train.selfsup.model import SelfDistillation


def no_weight_decay(name: str, p: torch.nn.Parameter) -> bool:
    """DINO's rule: biases, norm gains and other vectors (the mask token) are not decayed."""
    return p.ndim <= 1 or name.endswith(".bias")


class SelfSupTrainer:
    """One DINO run's state and its step: model, optimizer, augmentation generator and step count.

    Args:
        cfg: the run's config.
        device: where the model runs (the batches are moved there).
    """

    def __init__(self, cfg: SelfSupConfig, device: str | torch.device = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = SelfDistillation(cfg).to(self.device).train()
        p = self.model.patch_size
        c = cfg.crops
        bad = [f"crops.{n}={v}" for n, v in (("global_size", c.global_size), ("local_size", c.local_size)) if v % p]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: crop sides must be multiples of the ViT's patch size {p}")
        self.crops = MultiCrop(c)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        o = cfg.optim
        named = [(f"student.{n}", p) for n, p in self.model.student.named_parameters()]
        if self.model.mask_token is not None:
            named.append(("mask_token", self.model.mask_token))
        # the weight decay is set per step (train_step), on the groups flagged "decay"
        self.optimizer = build_optimizer(named, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas,
                                         no_decay=no_weight_decay, fused=self.device.type == "cuda")
        self.step = 0
        self.amp = self.device.type == "cuda" and cfg.train.amp in ("auto", True)

    def schedules(self, step: int) -> dict[str, float]:
        """Learning rate, weight decay, teacher momentum and teacher temperature at ``step``."""
        o, steps = self.cfg.optim, self.cfg.train.steps
        # DINO's warm-up, start * (step + 1) / (warmup + 1): the first step already learns
        return {"lr": warmup_cosine(step, steps, start=o.lr, end=o.min_lr, warmup=min(o.warmup, steps - 1),
                                    warmup_offset=1),
                "wd": warmup_cosine(step, steps, start=o.weight_decay, end=o.weight_decay_end),
                "momentum": warmup_cosine(step, steps, start=o.teacher_momentum, end=1.0),
                "teacher_temp": teacher_temperature(step, self.cfg.loss)}

    def train_step(self, images: torch.Tensor) -> dict[str, float]:
        """One optimizer step and EMA update on a batch of (B, 3, H, W) uint8 (or [0, 1] float) images.

        Raises:
            UserError: the loss is not finite (a learning rate too high for this run).
        """
        s = self.schedules(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = s["lr"]
            group["weight_decay"] = s["wd"] if group["decay"] else 0.0
        x = images.to(self.device, non_blocking=True)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        views = self.crops(x, self.generator)
        masks = None
        if self.cfg.ibot.enabled:
            p = self.model.patch_size
            grid = (self.cfg.crops.global_size // p, self.cfg.crops.global_size // p)
            masks = random_patch_masks(2 * x.shape[0], grid, self.cfg.ibot, self.generator).to(self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        with autocast:
            out = self.model(views, s["teacher_temp"], masks)
        loss = out["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.cfg.optim.clip_grad > 0:  # per tensor, as DINO's clip_gradients
            norms = torch.stack(torch._foreach_norm([p.grad.detach() for p in params]))
            scale = (self.cfg.optim.clip_grad / (norms + 1e-6)).clamp(max=1.0)
            for p, factor in zip(params, scale.unbind()):
                p.grad.mul_(factor)
        if self.step < self.cfg.optim.freeze_last_layer:
            for p in self.model.student["head"].last_layer.parameters():
                p.grad = None
        self.optimizer.step()
        self.model.update_teacher(s["momentum"])
        self.step += 1
        values = torch.stack([out["loss"].detach().float(), out["dino"].float(), out["ibot"].float(),
                              out["entropy"].float()]).tolist()  # one device sync per step
        if not math.isfinite(values[0]):
            raise UserError(f"the self-supervised loss is not finite at step {self.step}: lower optim.lr")
        return {"loss": values[0], "dino": values[1], "ibot": values[2], "teacher_entropy": values[3], **s}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs but the data position (plain values and tensors)."""
        return {"step": self.step, "selfsup": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        decay = [group["decay"] for group in self.optimizer.param_groups]
        self.model.load_state_dict(state["selfsup"])
        self.optimizer.load_state_dict(state["optimizer"])
        # the groups' "decay" flags follow from the parameters, not from the saved state (older checkpoints lack them)
        for group, flag in zip(self.optimizer.param_groups, decay):
            group["decay"] = flag
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])


__all__ = ["SelfSupTrainer", "no_weight_decay"]
