"""The self-distillation model: student and EMA teacher (timm ViT + DINO head each) and their losses."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from textseg.config import BackboneConfig
from textseg.train.selfsup.config import HeadConfig, SelfSupConfig, ViTArch
from textseg.train.selfsup.loss import dino_loss, ema_update, masked_patch_loss, update_center


class DINOHead(nn.Module):
    """DINO's projection head: MLP (GELU) to a bottleneck, L2 normalisation, weight-normalised linear layer.

    With ``norm_last_layer`` the last layer's weight norms are fixed at 1 (only directions are learned).
    """

    def __init__(self, in_dim: int, head: HeadConfig) -> None:
        super().__init__()
        dims = [in_dim] + [head.hidden_dim] * (head.layers - 1) + [head.bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.Linear(head.bottleneck_dim, head.out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not head.norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def build_vit(arch: ViTArch) -> nn.Module:
    """The grouping backbone (a :class:`textseg.backbones.TimmViTFeatures` over a randomly initialised timm
    ViT) exactly as :func:`textseg.create_model` builds a ``timm`` backbone with these name and kwargs."""
    from textseg.factory import build_backbone

    return build_backbone(BackboneConfig(type="timm", name=arch.name, feature="keys", kwargs=dict(arch.kwargs)),
                           pretrained=False, weight_file=None)


class SelfDistillation(nn.Module):
    """Student and EMA teacher (ViT backbone + DINO head each), the teacher's output centres and, with iBOT, the
    student's mask token.

    :meth:`forward` takes the views of a batch and returns the losses; it also moves the centres (DINO updates
    them with every teacher output). :meth:`update_teacher` is the EMA step, after the optimizer's.
    """

    def __init__(self, cfg: SelfSupConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.student = nn.ModuleDict({"backbone": build_vit(cfg.backbone), "head": None})
        dim = int(self.student["backbone"].model.embed_dim)
        self.student["head"] = DINOHead(dim, cfg.head)
        self.teacher = nn.ModuleDict({"backbone": build_vit(cfg.backbone), "head": DINOHead(dim, cfg.head)})
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, cfg.head.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, cfg.head.out_dim))
        self.mask_token = nn.Parameter(torch.zeros(dim)) if cfg.ibot.enabled else None
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def patch_size(self) -> int:
        return int(self.student["backbone"].patch_size)

    def train(self, mode: bool = True) -> "SelfDistillation":
        super().train(mode)
        self.teacher.eval()
        return self

    def _tokens(self, backbone: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, prefix + N, C) output tokens of the ViT, after its final norm; masked patches get the mask token."""
        vit = backbone.model
        x = backbone.normalize(x)
        if mask is None:
            return vit.forward_features(x)
        x = vit.patch_embed(x)  # (B, h, w, C) with dynamic_img_size
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
        return vit.norm(vit.blocks(x))

    def forward(self, views: Sequence[torch.Tensor], teacher_temp: float,
                masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The losses of one batch.

        Args:
            views: ``[global 1, global 2, local 1, ...]`` (B, 3, s, s) in [0, 1] (:class:`MultiCrop`).
            teacher_temp: the teacher's temperature at this step.
            masks: (2B, h, w) bool iBOT masks of the two global views (stacked), or None.

        Returns:
            ``loss`` (to minimise), ``dino``, ``ibot`` (0 without masks) and ``entropy`` (mean entropy of the
            teacher's targets; near log(out_dim) means uniform, near 0 collapse onto one dimension).
        """
        cfg, prefix = self.cfg, int(getattr(self.student["backbone"].model, "num_prefix_tokens", 1))
        globals_ = torch.cat(list(views[:2]))
        with torch.no_grad():
            t_tokens = self._tokens(self.teacher["backbone"], globals_)
            t_cls = self.teacher["head"](t_tokens[:, 0])
        s_tokens = self._tokens(self.student["backbone"], globals_, masks)
        s_cls = [s_tokens[:, 0]]
        if len(views) > 2:
            s_cls.append(self._tokens(self.student["backbone"], torch.cat(list(views[2:])))[:, 0])
        s_out = self.student["head"](torch.cat(s_cls)).chunk(len(views))
        t_out = t_cls.chunk(2)
        dino = dino_loss(s_out, t_out, self.center, cfg.loss.student_temp, teacher_temp)
        loss, ibot = dino, torch.zeros((), device=dino.device)
        if masks is not None:
            flat = masks.flatten(1)  # (2B, N)
            where = flat.nonzero()  # the heads run on the masked patches only
            if len(where):
                rows, cols = where[:, 0], where[:, 1] + prefix
                with torch.no_grad():
                    t_patch = self.teacher["head"](t_tokens[rows, cols])
                s_patch = self.student["head"](s_tokens[rows, cols])
                ibot = masked_patch_loss(s_patch, t_patch, rows, flat.shape[0], self.patch_center,
                                         cfg.loss.student_temp, teacher_temp)
                self.patch_center.copy_(update_center(self.patch_center, t_patch, cfg.loss.center_momentum))
            loss = dino + cfg.ibot.weight * ibot
        with torch.no_grad():
            q = F.softmax((t_cls.float() - self.center) / teacher_temp, dim=-1)
            entropy = -(q * q.clamp_min(1e-12).log()).sum(-1).mean()
            self.center.copy_(update_center(self.center, t_cls, cfg.loss.center_momentum))
        return {"loss": loss, "dino": dino.detach(), "ibot": ibot.detach(), "entropy": entropy}

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """The EMA step: ``teacher = momentum * teacher + (1 - momentum) * student``."""
        ema_update(self.teacher, self.student, momentum)

    def teacher_backbone_state(self) -> dict[str, torch.Tensor]:
        """The teacher ViT's timm state dict (what ``create_model`` loads as the grouping backbone)."""
        return self.teacher["backbone"].model.state_dict()



__all__ = ["DINOHead", "SelfDistillation", "build_vit"]
