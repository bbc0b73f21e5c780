"""The typed config of a self-supervised grouping-backbone run (``textseg/configs/selfsup/*.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from textseg.config import check_choice, config_path, load_structured
from textseg.errors import ConfigError
from textseg.train.config import check_at_least, check_in_range, check_positive

DEFAULT_CONFIG = "workbench"


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



__all__ = ["DEFAULT_CONFIG", "CropConfig", "DinoLossConfig", "HeadConfig", "IBotConfig", "SelfSupConfig",
           "SelfSupData", "SelfSupLoop", "SelfSupOptim", "ViTArch", "load_selfsup_config"]
