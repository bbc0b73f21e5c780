"""Self-supervised grouping backbone: DINO self-distillation of a small timm ViT on images alone.

No captions and no masks: a student ViT and its teacher, an exponential moving average (EMA) of the student, see
multi-crop views of the same images (2 global and N local crops, made on the training device from a whole batch
at once). The teacher's output on each global view, centred and sharpened, is the target of the student's output on
every other view (the DINO cross-entropy). iBOT's masked-patch loss can be added (``ibot.enabled``): the student
sees the global views with some patches replaced by a learned mask token and predicts the teacher's output on
those patches.

The teacher's backbone is saved as a grouping-backbone file (``out/final.pt``,
:func:`textseg.artifacts.save_backbone_weights`) that :func:`textseg.create_model` loads as a model's
grouping backbone (``backbone.weights`` in the model config, or ``backbone_pretrained=``): its last-block keys,
grouped by k-means, are the model's regions (model ``learned-small-workbench``).

Entry points: :func:`load_selfsup_config` and :func:`pretrain_grouping` (``textseg pretrain-grouping``); the
pieces (:func:`dino_loss`, :func:`update_center`, :func:`ema_update`, :class:`MultiCrop`, :class:`DINOHead`,
:class:`SelfDistillation`, :class:`SelfSupTrainer`) are public for tests and reuse.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from textseg.config import BackboneConfig, check_choice, config_path, load_structured, to_dict
from textseg.errors import ConfigError, DatasetError, UserError
from textseg.io import atomic_write_text, check_writable_folder
from textseg import artifacts as ckpt
from textseg.train.config import check_at_least, check_in_range, check_positive
from textseg.train.data import IMAGE_EXTS, BatchStream, SkipCounter, decode_sample_image, expand_urls, worker_init

_log = logging.getLogger(__name__)
DEFAULT_CONFIG = "workbench"


# ---------------------------------------------------------------------------------------------------- config
def _check_range(section: str, name: str, values: Sequence[float], low: float, high: float) -> None:
    """``values`` is ``[a, b]`` with ``low <= a <= b <= high``."""
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or not low <= values[0] <= values[1] <= high:
        raise ConfigError(f"field '{section}.{name}' must be [min, max] within [{low}, {high}], got {list(values)}")


@dataclass
class SelfSupData:
    """Image shards and batching.

    Attributes:
        shards: shard patterns (glob or brace notation) relative to the data folder (``--data``) unless absolute;
            only each sample's image is read.
        image_size: images of another size are resized to this square side (the workbench's are 96 px).
        batch_size: images per step; each gives ``2 + crops.local_number`` views.
        workers: DataLoader processes decoding images (0: in the training process).
        shuffle_buffer: raw-sample shuffle buffer; 0 disables sample shuffling.
    """

    shards: List[str] = field(default_factory=lambda: ["train/shard-*.tar", "objects/shard-*.tar"])
    image_size: int = 96
    batch_size: int = 64
    workers: int = 1
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        if not self.shards or not all(isinstance(s, str) and s for s in self.shards):
            raise ConfigError(f"field 'data.shards' must be a non-empty list of shard patterns, got {self.shards!r}")
        check_at_least("data", self, {"image_size": 8, "batch_size": 1, "workers": 0, "shuffle_buffer": 0})


@dataclass
class ViTArch:
    """The timm ViT trained: ``timm.create_model(name, num_classes=0, dynamic_img_size=True, **kwargs)``.

    The model config that loads the result (``learned-small-workbench``) must name the same ``name`` and
    ``kwargs`` in its ``backbone`` section.
    """

    name: str = "vit_tiny_patch16_224"
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class HeadConfig:
    """The DINO projection head: an MLP to a bottleneck, L2 normalisation, a weight-normalised last layer."""

    out_dim: int = 1024
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    layers: int = 3
    norm_last_layer: bool = True

    def __post_init__(self) -> None:
        check_at_least("head", self, {"out_dim": 2, "hidden_dim": 1, "bottleneck_dim": 1, "layers": 1})


@dataclass
class CropConfig:
    """Multi-crop augmentation, as DINO's (sizes in pixels of the crops; scales are shares of the image area).

    Attributes:
        global_size, global_scale: the 2 global crops' side and area range.
        local_number, local_size, local_scale: the local crops.
        flip_prob: horizontal flip.
        jitter_prob, brightness, contrast, saturation, hue: colour jitter (hue as a rotation of the YIQ chroma plane).
        gray_prob: grayscale.
        blur_prob: Gaussian blur probability of global crop 1, global crop 2 and the local crops.
        blur_sigma: blur sigma range in pixels of the crop.
        solarize_prob: solarisation of global crop 2.
    """

    global_size: int = 96
    global_scale: List[float] = field(default_factory=lambda: [0.4, 1.0])
    local_number: int = 4
    local_size: int = 48
    local_scale: List[float] = field(default_factory=lambda: [0.1, 0.4])
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_prob: float = 0.2
    blur_prob: List[float] = field(default_factory=lambda: [1.0, 0.1, 0.5])
    blur_sigma: List[float] = field(default_factory=lambda: [0.1, 1.0])
    solarize_prob: float = 0.2

    def __post_init__(self) -> None:
        check_at_least("crops", self, {"global_size": 1, "local_number": 0, "local_size": 1})
        _check_range("crops", "global_scale", self.global_scale, 1e-3, 1.0)
        _check_range("crops", "local_scale", self.local_scale, 1e-3, 1.0)
        _check_range("crops", "blur_sigma", self.blur_sigma, 1e-3, 10.0)
        for name in ("flip_prob", "jitter_prob", "gray_prob", "solarize_prob"):
            check_in_range("crops", name, getattr(self, name), 0, 1)
        for name in ("brightness", "contrast", "saturation"):
            check_in_range("crops", name, getattr(self, name), 0, 1)
        check_in_range("crops", "hue", self.hue, 0, 0.5)
        if len(self.blur_prob) != 3 or not all(math.isfinite(p) and 0 <= p <= 1 for p in self.blur_prob):
            raise ConfigError(f"field 'crops.blur_prob' must be 3 probabilities (global 1, global 2, local), "
                              f"got {list(self.blur_prob)}")


@dataclass
class DinoLossConfig:
    """Temperatures and centring of the DINO loss.

    Attributes:
        student_temp: the student's softmax temperature.
        teacher_temp: the teacher's (sharpening) temperature after the warm-up.
        warmup_teacher_temp: the teacher's temperature at step 0, linearly moved to ``teacher_temp``.
        teacher_temp_warmup: steps of that warm-up.
        center_momentum: EMA momentum of the teacher's output centre.
    """

    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup: int = 0
    center_momentum: float = 0.9

    def __post_init__(self) -> None:
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            check_positive("loss", name, getattr(self, name))
        check_at_least("loss", self, {"teacher_temp_warmup": 0})
        check_in_range("loss", "center_momentum", self.center_momentum, 0, 1)


@dataclass
class IBotConfig:
    """iBOT's masked-patch loss on top of DINO's (off by default).

    Attributes:
        enabled: add the loss.
        weight: its weight (DINO's has weight 1).
        mask_prob: share of the images whose global views are masked.
        mask_ratio: range of the share of patches masked in a masked view (uniform per view; patches drawn at
            random, not in iBOT's blocks).
    """

    enabled: bool = False
    weight: float = 1.0
    mask_prob: float = 0.5
    mask_ratio: List[float] = field(default_factory=lambda: [0.1, 0.5])

    def __post_init__(self) -> None:
        check_at_least("ibot", self, {"weight": 0})
        check_in_range("ibot", "mask_prob", self.mask_prob, 0, 1)
        _check_range("ibot", "mask_ratio", self.mask_ratio, 0.0, 1.0)


@dataclass
class SelfSupOptim:
    """AdamW with DINO's schedules (by step): linear warm-up then cosine decay of the learning rate, cosine
    increase of the weight decay, cosine increase of the teacher momentum to 1.

    Attributes:
        lr, min_lr, warmup: peak learning rate, its floor and the warm-up steps.
        weight_decay, weight_decay_end: weight decay at the start and at the end (none on biases and norms).
        betas: AdamW betas.
        clip_grad: gradient norm clip per parameter tensor, as DINO; 0 disables it.
        teacher_momentum: EMA momentum of the teacher at step 0 (1 at the end).
        freeze_last_layer: steps during which the head's last layer is not updated (stabilises the start).
    """

    lr: float = 5.0e-4
    min_lr: float = 1.0e-5
    warmup: int = 100
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float = 3.0
    teacher_momentum: float = 0.996
    freeze_last_layer: int = 0

    def __post_init__(self) -> None:
        check_positive("optim", "lr", self.lr)
        check_at_least("optim", self, {"min_lr": 0, "warmup": 0, "weight_decay": 0, "weight_decay_end": 0,
                                  "clip_grad": 0, "freeze_last_layer": 0})
        if len(self.betas) != 2:
            raise ConfigError(f"field 'optim.betas' must be two numbers, got {list(self.betas)}")
        for i, beta in enumerate(self.betas):
            check_in_range("optim", f"betas[{i}]", beta, 0, 1, high_open=True)
        check_in_range("optim", "teacher_momentum", self.teacher_momentum, 0, 1)


@dataclass
class SelfSupLoop:
    """Steps, checkpoints and precision.

    Attributes:
        steps: optimizer steps (a fixed amount of work: the same on any machine).
        ckpt_every: steps between step checkpoints (``out/checkpoints``); a run resumes from the newest.
        keep_last: step checkpoints kept.
        amp: bfloat16 autocast: ``auto`` (on CUDA), true or false (never on CPU).
    """

    steps: int = 1000
    ckpt_every: int = 250
    keep_last: int = 1
    amp: Union[bool, str] = "auto"

    def __post_init__(self) -> None:
        check_at_least("train", self, {"steps": 1, "ckpt_every": 1, "keep_last": 1})
        check_choice("train.amp", self.amp, ("auto", True, False))


@dataclass
class SelfSupConfig:
    """A self-supervised grouping-backbone run (``textseg/configs/selfsup/*.yaml``).

    Attributes:
        seed: seed of the initialisation, the shuffles and the augmentations.
        resume: continue from the newest step checkpoint in ``out/checkpoints`` when there is one.
    """

    seed: int = 0
    resume: bool = True
    data: SelfSupData = field(default_factory=SelfSupData)
    backbone: ViTArch = field(default_factory=ViTArch)
    head: HeadConfig = field(default_factory=HeadConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    loss: DinoLossConfig = field(default_factory=DinoLossConfig)
    ibot: IBotConfig = field(default_factory=IBotConfig)
    optim: SelfSupOptim = field(default_factory=SelfSupOptim)
    train: SelfSupLoop = field(default_factory=SelfSupLoop)


def load_selfsup_config(name_or_path: str | Path | None = DEFAULT_CONFIG, overrides: Sequence[str] = ()
                        ) -> SelfSupConfig:
    """The packaged preset (``workbench``) or a YAML file, then ``key.sub=value`` overrides.

    Raises:
        ConfigError: no such preset or file, an unknown field, a wrong type or a value out of range.
    """
    base = config_path("selfsup", name_or_path) if name_or_path is not None else None
    return load_structured(SelfSupConfig, base, overrides=overrides)


# ---------------------------------------------------------------------------------------------------- schedules
def cosine_schedule(step: int, steps: int, start: float, end: float, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps (``start * (step + 1) / (warmup + 1)``: the first step already learns),
    then cosine from ``start`` at step ``warmup`` to ``end`` at ``steps``."""
    if step < warmup:
        return start * (step + 1) / (warmup + 1)
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def teacher_temperature(step: int, loss: DinoLossConfig) -> float:
    """The teacher's temperature at ``step``: linear warm-up, then constant."""
    if step >= loss.teacher_temp_warmup:
        return loss.teacher_temp
    return loss.warmup_teacher_temp + (loss.teacher_temp - loss.warmup_teacher_temp) * step / loss.teacher_temp_warmup


# ---------------------------------------------------------------------------------------------------- losses
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


# ---------------------------------------------------------------------------------------------------- multi-crop
_GRAY = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _bernoulli(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


class MultiCrop:
    """DINO's multi-crop views of a batch, made with batched tensor ops on the images' device.

    Every random parameter (crop box, flip, jitter factors, blur sigma, ...) is drawn per image from a CPU
    ``torch.Generator`` (a few numbers per image, moved to the device in one copy per kind), so a seed gives the same
    views on any device and nothing per image goes back to the host.

    Args:
        crops: the augmentation settings.
    """

    def __init__(self, crops: CropConfig) -> None:
        self.cfg = crops

    @property
    def num_views(self) -> int:
        return 2 + self.cfg.local_number

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """(B, 3, H, W) float images in [0, 1] → ``[global 1, global 2, local 1, ..., local N]``, each
        (B, 3, s, s) in [0, 1]."""
        c = self.cfg
        views = []
        for i in range(self.num_views):
            is_global = i < 2
            size, scale = (c.global_size, c.global_scale) if is_global else (c.local_size, c.local_scale)
            x = self.resized_crop(images, size, scale, generator)
            x = self.color_jitter(x, generator)
            x = self.grayscale(x, generator)
            x = self.blur(x, c.blur_prob[min(i, 2)], generator)
            if i == 1:
                x = self.solarize(x, c.solarize_prob, generator)
            views.append(x)
        return views

    def resized_crop(self, images: torch.Tensor, size: int, scale: Sequence[float], g: torch.Generator
                     ) -> torch.Tensor:
        """Per-image random resized crop (area share in ``scale``, aspect ratio in [3/4, 4/3]) and horizontal
        flip, resampled bilinearly to ``size`` x ``size`` in one ``grid_sample``."""
        b = images.shape[0]
        area = _uniform(g, b, scale[0], scale[1])
        log_ratio = _uniform(g, b, math.log(3 / 4), math.log(4 / 3))
        w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # crop side as a share of the image side
        h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
        flip = torch.where(_bernoulli(g, b, self.cfg.flip_prob), -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def color_jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation and hue jitter with probability ``jitter_prob`` per image (in this
        fixed order; torchvision draws an order per call)."""
        c, b = self.cfg, x.shape[0]
        on = _bernoulli(g, b, c.jitter_prob)
        factors = torch.stack([_uniform(g, b, 1 - c.brightness, 1 + c.brightness),
                               _uniform(g, b, 1 - c.contrast, 1 + c.contrast),
                               _uniform(g, b, 1 - c.saturation, 1 + c.saturation),
                               _uniform(g, b, -c.hue, c.hue)], 1)
        factors = torch.where(on[:, None], factors, torch.tensor([1.0, 1.0, 1.0, 0.0]))
        angle = factors[:, 3] * 2 * math.pi
        cos, sin = angle.cos(), angle.sin()
        rot = torch.zeros(b, 3, 3)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, cos, -sin, sin, cos
        hue = torch.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ  # (B, 3, 3): a hue rotation in RGB
        factors, hue = factors.to(x.device, x.dtype), hue.to(x.device, x.dtype)
        f = factors[:, :3].view(b, 3, 1, 1, 1).unbind(1)
        x = (x * f[0]).clamp(0, 1)
        mean = _gray(x).mean((2, 3), keepdim=True)
        x = ((x - mean) * f[1] + mean).clamp(0, 1)
        gray = _gray(x)
        x = ((x - gray) * f[2] + gray).clamp(0, 1)
        return torch.einsum("bij,bjhw->bihw", hue, x).clamp(0, 1)

    def grayscale(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Grayscale (3 equal channels) with probability ``gray_prob`` per image."""
        on = _bernoulli(g, x.shape[0], self.cfg.gray_prob).to(x.device).view(-1, 1, 1, 1)
        return torch.where(on, _gray(x).expand_as(x), x)

    def blur(self, x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        """Separable Gaussian blur (reflected borders) with a sigma per image drawn from ``blur_sigma``, with
        probability ``p`` (an image not blurred gets a one-tap kernel).

        Each image's 1-D kernel becomes a (S, S) banded matrix with the reflection folded in, so the blur of the whole
        batch is two batched matmuls (grouped convolutions with one group per image are slow on the CPU).
        """
        b, ch, size, _ = x.shape
        lo, hi = self.cfg.blur_sigma
        sigma = torch.where(_bernoulli(g, b, p), _uniform(g, b, lo, hi), torch.tensor(1e-3))
        radius = min(max(1, math.ceil(3 * hi)), size - 1)
        taps = torch.arange(-radius, radius + 1)
        weights = torch.exp(-taps[None].float() ** 2 / (2 * sigma[:, None] ** 2))
        weights = weights / weights.sum(1, keepdim=True)  # (B, 2r+1)
        src = torch.arange(size)[:, None] + taps[None]  # (S, 2r+1) source pixel of each tap, reflected at the borders
        src = torch.where(src < 0, -src, torch.where(src >= size, 2 * (size - 1) - src, src))
        band = torch.zeros(b, size, size).scatter_add_(2, src.expand(b, -1, -1), weights[:, None].expand(-1, size, -1))
        band = band.to(x.device, x.dtype)
        x = torch.einsum("bij,bcjw->bciw", band, x)  # rows
        return torch.einsum("bcij,bwj->bciw", x, band)  # columns

    def solarize(self, x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        """Invert the values >= 0.5 with probability ``p`` per image."""
        on = _bernoulli(g, x.shape[0], p).to(x.device).view(-1, 1, 1, 1)
        return torch.where(on & (x >= 0.5), 1 - x, x)


def random_patch_masks(b: int, grid: tuple[int, int], ibot: IBotConfig, g: torch.Generator) -> torch.Tensor:
    """(b, h, w) bool iBOT masks: with probability ``mask_prob`` an image gets a share of its patches, drawn from
    ``mask_ratio``, masked at random; the others none."""
    n = grid[0] * grid[1]
    ratio = torch.where(_bernoulli(g, b, ibot.mask_prob), _uniform(g, b, *ibot.mask_ratio), torch.tensor(0.0))
    return (torch.rand(b, n, generator=g) < ratio[:, None]).view(b, *grid)


# ---------------------------------------------------------------------------------------------------- model
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


# ---------------------------------------------------------------------------------------------------- trainer
def _param_groups(model: SelfDistillation) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    named = [(f"student.{n}", p) for n, p in model.student.named_parameters()]
    if model.mask_token is not None:
        named.append(("mask_token", model.mask_token))
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False}]


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
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(_param_groups(self.model), lr=o.lr, betas=tuple(o.betas),
                                           weight_decay=0.0, **({"fused": True} if fused else {}))
        self.step = 0
        self.amp = self.device.type == "cuda" and cfg.train.amp in ("auto", True)

    def schedules(self, step: int) -> dict[str, float]:
        """Learning rate, weight decay, teacher momentum and teacher temperature at ``step``."""
        o, steps = self.cfg.optim, self.cfg.train.steps
        return {"lr": cosine_schedule(step, steps, o.lr, o.min_lr, warmup=min(o.warmup, steps - 1)),
                "wd": cosine_schedule(step, steps, o.weight_decay, o.weight_decay_end),
                "momentum": cosine_schedule(step, steps, o.teacher_momentum, 1.0),
                "teacher_temp": teacher_temperature(step, self.cfg.loss)}

    def train_step(self, images: torch.Tensor) -> dict[str, float]:
        """One optimizer step and EMA update on a batch of (B, 3, H, W) uint8 (or [0, 1] float) images.

        Raises:
            UserError: the loss is not finite (a learning rate too high for this run).
        """
        s = self.schedules(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = s["lr"]
            group["weight_decay"] = s["wd"] if group["apply_wd"] else 0.0
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
        self.model.load_state_dict(state["selfsup"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])


# ---------------------------------------------------------------------------------------------------- data
def resolve_shards(data: str | Path, patterns: Sequence[str]) -> list[str]:
    """The shard files of ``patterns`` (glob or brace notation, relative to ``data`` unless absolute), sorted
    per pattern.

    Raises:
        DatasetError: ``data`` is not a folder, or no pattern matches a file.
    """
    root = Path(data)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist: build the workbench with "
                           f"`textseg workbench build --out {root}`, or pass --data FOLDER")
    found: list[str] = []
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(root / pattern)
        hits = []
        for item in expand_urls(full):
            hits.extend(sorted(glob.glob(item)) if glob.has_magic(item) else [item] if Path(item).is_file() else [])
        if not hits:
            _log.warning("no shard matches %s", full)
        found.extend(hits)
    if not found:
        raise DatasetError(f"no image shards in {root} (looked for {', '.join(patterns)}): build the workbench "
                           f"with `textseg workbench build --out {root}`, or set data.shards")
    return found


class _ImageDecoder:
    """Raw tar samples → (H, W, 3) uint8 arrays of side ``size``; samples without a readable image are counted
    (``missing_image``, ``decode_error``) and skipped. Captions and masks are not read."""

    def __init__(self, counter: SkipCounter, size: int) -> None:
        self.counter, self.size = counter, size

    def decode(self, sample: dict) -> np.ndarray | None:
        key, url = sample.get("__key__"), sample.get("__url__")
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            self.counter.add("missing_image", key, url)
            return None
        image = decode_sample_image(sample, ext, self.counter)
        if image is None:
            return None
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)


def _stack_images(items: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).contiguous()


def image_batches(shards: Sequence[str], data: SelfSupData, seed: int = 0, pin_memory: bool = False) -> BatchStream:
    """Endless (B, 3, S, S) uint8 batches of the shards' images, epoch after epoch, with a resumable position.

    The stages of :func:`textseg.train.data.caption_pipeline` (seeded shard and sample shuffles, a split by
    DataLoader worker, skipped samples counted) with an image-only decoder; one process, no split by rank.
    """
    import webdataset as wds

    from textseg.train.data import CaptionPipeline, _Batches, _CheckSplit, _ReadShards, _SampleShuffle, _ShardShuffle

    counter = SkipCounter()
    stages: list[Any] = [wds.SimpleShardList(list(shards)), _ShardShuffle(seed),
                         _CheckSplit(len(shards), False, True), wds.split_by_worker, _ReadShards(counter)]
    if data.shuffle_buffer > 0:
        stages.append(_SampleShuffle(data.shuffle_buffer, seed))
    stages.append(_Batches(_ImageDecoder(counter, data.image_size), data.batch_size, _stack_images))
    pipeline = CaptionPipeline(stages)
    pipeline.counter, pipeline.num_shards = counter, len(shards)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=data.workers,
                                         collate_fn=BatchStream.collate, worker_init_fn=worker_init,
                                         pin_memory=pin_memory, generator=torch.Generator())
    return BatchStream(loader, pipeline, seed=seed)


# ---------------------------------------------------------------------------------------------------- run
# Fields that may change between a run and its resumption (they do not change what is computed).
_RESUMABLE_CHANGES = {("train", "steps"), ("train", "ckpt_every"), ("train", "keep_last"), ("data", "workers")}


def _config_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    for section in sorted(set(saved) | set(now)):
        a, b = saved.get(section), now.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if (section, key) not in _RESUMABLE_CHANGES and a.get(key) != b.get(key):
                    return f"{section}.{key} {a.get(key)!r} -> {b.get(key)!r}"
        elif a != b:
            return f"{section} {a!r} -> {b!r}"
    return None


def _latest_step_checkpoint(out: Path, cfg: SelfSupConfig) -> dict[str, Any] | None:
    for path in reversed(ckpt.step_checkpoints(out)):
        try:
            data = ckpt.read_backbone_weights(path)
        except UserError as err:
            _log.warning("cannot resume from %s (%s); trying an older checkpoint", path, err)
            continue
        if data is None or "trainer" not in data:
            continue
        change = _config_change(dict(data.get("config") or {}), to_dict(cfg))
        if change:
            raise UserError(f"{path} was saved by a run with another config ({change}): use another --out, or "
                            "delete its checkpoints")
        data["path"] = path
        return data
    return None


def pretrain_grouping(cfg: SelfSupConfig, data: str | Path, out: str | Path, device: str | torch.device = "cpu",
                      progress: bool = True) -> dict[str, Any]:
    """Train the grouping backbone by DINO self-distillation on the images of the shards in ``data``.

    Writes ``out/config.json``, ``out/metrics.jsonl`` (one record per step), step checkpoints in
    ``out/checkpoints`` (the newest ``train.keep_last``, the last step's included; with ``resume`` a run continues
    exactly from the newest, so running a finished run again only rewrites ``final.pt``) and ``out/final.pt``: the
    teacher backbone, loadable with ``create_model(..., backbone_pretrained=...)`` or as a model config's
    ``backbone.weights``. Every file is written atomically.

    Returns:
        A summary: steps, seconds, steps per second of this run, samples skipped, the final file.

    Raises:
        DatasetError: no shards; ConfigError: a crop side that is not a multiple of the patch size;
        UserError: an unusable checkpoint, a loss that is not finite, or no readable image in the shards.
    """
    out = check_writable_folder(out, "--out")
    shards = resolve_shards(data, cfg.data.shards)
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    trainer = SelfSupTrainer(cfg, device)
    batches = image_batches(shards, cfg.data, seed=cfg.seed, pin_memory=device.type == "cuda")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    resume = _latest_step_checkpoint(out, cfg) if cfg.resume else None
    if resume is not None:
        if int(resume["step"]) > cfg.train.steps:
            raise UserError(f"{resume['path']} is at step {resume['step']}, beyond train.steps={cfg.train.steps}: "
                            "use another --out")
        try:
            trainer.load_state_dict(resume["trainer"])
            batches.load_state_dict(resume["data"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise UserError(f"cannot resume from {resume['path']}: {ckpt.mismatch_detail(err)}") from None
        _log.info("resumed from %s at step %d", resume["path"], trainer.step)
    from textseg.train.loop import trim_metrics

    trim_metrics(out / "metrics.jsonl", trainer.step)
    atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2))
    arch = {"name": cfg.backbone.name, "kwargs": dict(cfg.backbone.kwargs)}
    start_step, start = trainer.step, time.perf_counter()
    bar = tqdm(total=cfg.train.steps, initial=trainer.step, desc="pretrain-grouping", unit="step",
               disable=not progress)
    try:
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as log:
            while trainer.step < cfg.train.steps:
                t0 = time.perf_counter()
                images = next(batches)
                rec = trainer.train_step(images)
                rec = {"step": trainer.step, **{k: round(v, 6) for k, v in rec.items()},
                       "seconds": round(time.perf_counter() - t0, 4), "skipped": sum(batches.skipped.values())}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", H=f"{rec['teacher_entropy']:.2f}", refresh=False)
                if trainer.step % cfg.train.ckpt_every == 0 or trainer.step == cfg.train.steps:
                    ckpt.save_backbone_weights(ckpt.step_checkpoint_path(out, trainer.step),
                                               trainer.model.teacher_backbone_state(), **arch, step=trainer.step,
                                               config=to_dict(cfg), trainer=trainer.state_dict(),
                                               data=batches.state_dict())
                    ckpt.prune_step_checkpoints(out, cfg.train.keep_last)
    finally:
        bar.close()
        batches.close()
    seconds = time.perf_counter() - start
    final = ckpt.save_backbone_weights(out / "final.pt", trainer.model.teacher_backbone_state(), **arch,
                                       step=trainer.step, config=to_dict(cfg))
    ran = trainer.step - start_step
    summary = {"steps": trainer.step, "steps_this_run": ran, "seconds": round(seconds, 1),
               "steps_per_second": round(ran / seconds, 3) if seconds > 0 and ran else None,
               "skipped": dict(batches.skipped), "final": str(final), "device": str(device)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


__all__ = ["CropConfig", "DINOHead", "DinoLossConfig", "HeadConfig", "IBotConfig", "MultiCrop", "SelfDistillation",
           "SelfSupConfig", "SelfSupData", "SelfSupLoop", "SelfSupOptim", "SelfSupTrainer", "ViTArch",
           "build_vit", "cosine_schedule", "dino_loss", "ema_update", "image_batches", "load_selfsup_config",
           "masked_patch_loss", "pretrain_grouping", "random_patch_masks", "resolve_shards", "teacher_temperature",
           "update_center"]
