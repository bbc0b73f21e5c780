"""Training configuration: typed sections loaded from a preset or YAML file, more YAML files and ``key=value``
overrides (later ones win); an unknown field or a value of the wrong type is a :class:`ConfigError`.

Presets ship in ``textseg/configs/train/`` (``stage1_image_text``, ``stage2_region``); ablation variants, which
are partial training configs, in ``textseg/configs/ablations/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from textseg.config import Source, check_choice, config_path, load_structured
from textseg.errors import ConfigError

LOSS_MODES = ("one_way", "region_batch", "two_way")
TRAINABLE = ("all", "last_blocks")
GROUP_ON = ("auto", "workers", "device")


def check_at_least(section: str, config: Any, minimums: dict[str, float]) -> None:
    """Each named field is a finite number >= its minimum (NaN and infinities fail too)."""
    for name, low in minimums.items():
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= low):
            raise ConfigError(f"field '{section}.{name}' must be >= {low}, got {value}")


def check_in_range(section: str, name: str, value: Any, low: float, high: float, high_open: bool = False) -> None:
    """``low <= value <= high`` (``< high`` when ``high_open``), a finite number."""
    ok = math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        raise ConfigError(f"field '{section}.{name}' must be in [{low}, {high}{')' if high_open else ']'}, "
                          f"got {value}")


def check_positive(section: str, name: str, value: Any) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"field '{section}.{name}' must be > 0, got {value}")


@dataclass
class DataConfig:
    """Caption shards and how they are batched.

    Attributes:
        train: shard URLs, a string in brace notation (``"dir/shard-{000000..000009}.tar"``) or a list of them.
        batch_size: samples per process and micro-step.
        workers: DataLoader worker processes (decoding and resizing; grouping too with ``group_on=workers``).
        shuffle_buffer: sample shuffle buffer; 0 disables sample shuffling.
        image_size: square training resolution; a multiple of the model's patch size.
        noun_template: prompt each caption noun is encoded with.
        group_on: where the frozen grouping runs: ``workers`` (each image in the data workers, with a CPU copy of
            the grouper), ``device`` (the whole batch at once in the training process, on the training device,
            before the step's forward) or ``auto`` (``device`` on CUDA, ``workers`` on CPU). Both give the same
            region masks.
        hflip: probability that a training image is mirrored left-right, with its region masks (the same flip
            for every image's pixels and groups; drawn from the run's seed and the step, so a resumed run flips
            as the uninterrupted one did).
    """

    train: Any = None
    batch_size: int = 64
    workers: int = 1
    shuffle_buffer: int = 1000
    image_size: int = 96
    noun_template: str = "a photo of a {}."
    group_on: str = "auto"
    hflip: float = 0.0

    def __post_init__(self) -> None:
        urls = [self.train] if isinstance(self.train, str) else self.train
        if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) and u for u in urls)):
            raise ConfigError(f"field 'data.train' must be a shard URL string or a list of them, got {self.train!r}")
        check_choice("data.group_on", self.group_on, GROUP_ON)
        check_at_least("data", self, {"batch_size": 1, "workers": 0, "shuffle_buffer": 0, "image_size": 1})
        check_in_range("data", "hflip", self.hflip, 0, 1)


@dataclass
class LossConfig:
    """Loss weights and the noun-to-region loss settings (see :func:`textseg.losses.noun_region_loss`).

    Attributes:
        image_text: weight of the image-caption InfoNCE.
        noun_region: weight of the noun-to-region loss.
        noun_calibration: weight of the noun calibration term (:func:`textseg.losses.noun_calibration_loss`): at
            each noun's best region, the noun must beat the batch's other nouns.
        mode: ``one_way``, ``region_batch`` or ``two_way``.
        same_noun_positives: a noun shared by several captions of the batch is not a negative.
        max_nouns: nouns taken per caption.
        keep_background_nouns: background words (stripes, checkerboard, ...) count as nouns too.
        noun_parser: how caption nouns are found (:class:`textseg.nouns.NounExtractor`): ``auto`` (spaCy when its
            English pipeline is installed, else the rule-based extractor), ``spacy`` or ``rule``. The workbench
            presets say ``rule``, so a run trains the same whatever spaCy pipelines the machine has.
        region_temperature: how a noun scores an image from its regions in the ``one_way`` and ``two_way`` losses:
            0 takes the best region (a hard max); t > 0 a soft maximum, ``t * logsumexp(cos / t)`` over the regions,
            so every region nearly as close as the best (another part of the object) shares the gradient.
    """

    image_text: float = 1.0
    noun_region: float = 0.0
    noun_calibration: float = 0.0
    mode: str = "one_way"
    same_noun_positives: bool = True
    max_nouns: int = 3
    keep_background_nouns: bool = True
    noun_parser: str = "auto"
    region_temperature: float = 0.0

    def __post_init__(self) -> None:
        check_choice("loss.mode", self.mode, LOSS_MODES)
        check_choice("loss.noun_parser", self.noun_parser, ("auto", "spacy", "rule"))
        check_at_least("loss", self, {"image_text": 0, "noun_region": 0, "noun_calibration": 0, "max_nouns": 1,
                                 "region_temperature": 0})
        if self.mode == "region_batch" and self.region_temperature > 0:
            raise ConfigError("field 'loss.region_temperature' applies to the one_way and two_way modes; "
                              "loss.mode=region_batch takes a softmax over all regions and has none: set it to 0")
        if self.image_text == 0 and self.noun_region == 0 and self.noun_calibration == 0:
            raise ConfigError("fields 'loss.image_text', 'loss.noun_region' and 'loss.noun_calibration' are all 0: "
                              "nothing to train")

    @property
    def uses_nouns(self) -> bool:
        """Whether a step encodes the caption nouns (a noun-region or calibration term is on)."""
        return self.noun_region > 0 or self.noun_calibration > 0


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay to ``min_lr_ratio * lr``.

    Attributes:
        lr, weight_decay, betas: AdamW settings (no weight decay on gains, biases, embeddings, temperature).
        warmup: warmup steps.
        min_lr_ratio: floor of the cosine as a share of ``lr``.
        grad_accum: micro-batches per optimizer step.
        clip_grad: gradient norm clip; 0 disables it.
    """

    lr: float = 2.0e-3
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup: int = 100
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    clip_grad: float = 1.0

    def __post_init__(self) -> None:
        check_positive("optim", "lr", self.lr)
        if len(self.betas) != 2:
            raise ConfigError(f"field 'optim.betas' must be two numbers, got {list(self.betas)}")
        for i, beta in enumerate(self.betas):
            check_in_range("optim", f"betas[{i}]", beta, 0, 1, high_open=True)
        check_at_least("optim", self, {"weight_decay": 0, "warmup": 0, "grad_accum": 1, "clip_grad": 0})
        check_in_range("optim", "min_lr_ratio", self.min_lr_ratio, 0, 1)


@dataclass
class TrainLoopConfig:
    """Steps, what is trained, logging and checkpoints.

    Attributes:
        steps: optimizer steps.
        trainable: ``all`` (the whole CLIP image tower) or ``last_blocks`` (its last ``trainable_blocks`` blocks
            and head).
        trainable_blocks: see ``trainable``.
        train_text: train the text tower too.
        learn_temperature: train the logit scale.
        init_temperature: initial temperature when the run does not start from a checkpoint (``init``).
        amp: bfloat16 autocast: ``auto`` (on CUDA), true or false (never on CPU).
        tf32: on CUDA, let float32 matmuls and convolutions use TensorFloat-32 (process-wide setting).
        compile: ``torch.compile`` the training step (the model's forward and both text encodings; grouping and
            the losses stay eager).
        log_every: steps between ``metrics.jsonl`` records.
        ckpt_every: steps between checkpoints.
        keep_last: step checkpoints kept.
        max_minutes: stop early, with a checkpoint, after this much time; None for no limit.
    """

    steps: int = 1000
    trainable: str = "all"
    trainable_blocks: int = 1
    train_text: bool = True
    learn_temperature: bool = True
    init_temperature: float = 0.07
    amp: Union[bool, str] = "auto"
    tf32: bool = True
    compile: bool = False
    log_every: int = 10
    ckpt_every: int = 200
    keep_last: int = 2
    max_minutes: Optional[float] = None

    def __post_init__(self) -> None:
        check_choice("train.trainable", self.trainable, TRAINABLE)
        check_choice("train.amp", self.amp, ("auto", True, False))
        positive = ("steps", "trainable_blocks", "log_every", "ckpt_every", "keep_last")
        check_at_least("train", self, dict.fromkeys(positive, 1))
        check_positive("train", "init_temperature", self.init_temperature)
        if self.max_minutes is not None:
            check_positive("train", "max_minutes", self.max_minutes)


@dataclass
class TrainConfig:
    """A training run.

    Attributes:
        model: textseg model config, a preset name or a JSON path.
        model_overrides: merged into the model config, e.g. ``{region: {mode: pool}}``.
        pretrained: load the pretrained weights the model config names.
        init: a textseg checkpoint whose weights start the run (e.g. stage 1's ``final.pt``).
        out: run folder (checkpoints, ``metrics.jsonl``, summaries, ``final.pt``).
        resume: continue from the newest checkpoint in ``out/checkpoints``.
        seed: seed of the model initialisation, the shuffles and the training randomness.
    """

    model: str = "labxy-small-workbench"
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    init: Optional[str] = None
    out: str = "runs/train"
    resume: bool = True
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**31:
            raise ConfigError(f"field 'seed' must be in [0, 2**31), got {self.seed}")
        if not str(self.out).strip():
            raise ConfigError("field 'out' is empty: give the run folder")


def load_train_config(name_or_path: str | Path | None, overrides: Sequence[str] = (),
                      *extra_sources: Source) -> TrainConfig:
    """Defaults, then a preset or YAML file, then ``extra_sources`` (files or mappings), then the overrides.

    >>> cfg = load_train_config("stage2_region", ["train.steps=10"], "textseg/configs/ablations/two_way_pool.yaml")

    Args:
        name_or_path: a preset name (``stage1_image_text``, ``stage2_region``), a YAML path, or None (defaults).
        overrides: ``key.sub=value`` items, e.g. ``optim.lr=1e-3``, ``data.train=[a.tar,b.tar]``.
        extra_sources: more YAML/JSON files or mappings merged after the first (e.g. an ablation variant).

    Raises:
        ConfigError: no such preset or file, an unknown field, a wrong type or a value out of range.
    """
    base = config_path("train", name_or_path) if name_or_path is not None else None
    return load_structured(TrainConfig, base, *extra_sources, overrides=overrides)
