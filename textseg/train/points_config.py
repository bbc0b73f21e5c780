"""Settings of the point generator's training (``textseg train-points``): a typed config loaded with
:func:`textseg.config.load_structured` from a preset (``textseg/configs/points/<name>.yaml``, by name) or a YAML
file (by path), with keyword overrides."""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from textseg.config import load_structured, read_mapping
from textseg.errors import ConfigError

DEFAULT_PRESET = "default"
# Settings that say how a run is checkpointed, not what it trains: a resumed run may change them.
RUN_CONTROL = ("resume", "ckpt_every", "keep_last")


@dataclass
class Stage:
    """One curriculum stage: a name, its number of steps, and its image-text shards (brace notation; relative
    paths are taken from the data root). ``data`` may be given as one pattern; it is kept as a list.

    The fields default to None only so that a stage missing one is reported by :class:`PointTrainConfig` with
    its index; every stage of a loaded config has all three.
    """

    name: Optional[str] = None
    steps: Optional[int] = None
    data: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        elif isinstance(self.data, (list, tuple)):
            self.data = [str(d) for d in self.data]


@dataclass
class PointTrainConfig:
    """Settings of :func:`textseg.train.points.train_point_generator` (the preset ``points/default.yaml`` holds
    the defaults).

    Attributes:
        stages: the curriculum, in order.
        curriculum: False: one stage over the union of the stages' data, for their total steps (the ablation).
        batch_size: pairs per step; lr, weight_decay, warmup_steps: AdamW with linear warm-up, cosine decay.
        localization, confidence, mask_alignment: loss weights (0 switches a term off).
        pool_temperature: τ of the localisation pooling.
        loc_images: images each sentence is compared on (its own and loc_images - 1 others of the batch).
        candidates: patches per pair (and per map) the segmenter is prompted with for the confidence term.
        confidence_temperature: temperature of the confidence term's target distribution.
        reward_alignment, reward_cosine, reward_area: with any of them > 0 the confidence term's reward is
            sentence-aware: ``z(predicted IoU) + reward_alignment · z(mask–sentence cosine) + reward_cosine ·
            z(patch–sentence cosine) + reward_area · z(log mask area)``, each standardised over a pair's candidates
            (negative candidates: the first two parts, of the two-point mask). All 0: the raw predicted IoU.
        samples: point sets drawn per pair for the mask-alignment reward.
        n_positive, n_negative: points per drawn set.
        image_size: side the images are resized to (a multiple of the CLIP patch size).
        seed: seeds the generator's initialisation, the data order and the point sampling.
        width, depth, heads: :class:`~textseg.ris.points.PointGenerator` size.
        ckpt_every: steps between step checkpoints (``out/checkpoints/step-*.pt``).
        keep_last: step checkpoints kept.
        resume: continue from the newest step checkpoint in ``out/checkpoints`` when there is one.
    """

    stages: List[Stage] = field(default_factory=list)
    curriculum: bool = True
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    localization: float = 1.0
    confidence: float = 1.0
    mask_alignment: float = 0.0
    pool_temperature: float = 1.0
    loc_images: int = 8
    candidates: int = 16
    confidence_temperature: float = 0.5
    reward_alignment: float = 1.0
    reward_cosine: float = 1.0
    reward_area: float = 1.0
    samples: int = 4
    n_positive: int = 1
    n_negative: int = 1
    image_size: int = 96
    seed: int = 0
    width: int = 128
    depth: int = 2
    heads: int = 4
    ckpt_every: int = 50
    keep_last: int = 2
    resume: bool = True

    @property
    def sentence_reward(self) -> bool:
        """Whether the confidence term's reward reads the sentence (any ``reward_*`` weight > 0)."""
        return self.reward_alignment > 0 or self.reward_cosine > 0 or self.reward_area > 0

    @property
    def total_steps(self) -> int:
        """The steps of all stages."""
        return sum(s.steps for s in self.stages)

    def __post_init__(self) -> None:
        for i, st in enumerate(self.stages):
            if st.name is None or st.steps is None or st.data is None:
                raise ConfigError(f"stages[{i}] needs name, steps and data")
            if not isinstance(st.steps, int) or st.steps < 0:
                raise ConfigError(f"stages[{i}].steps must be a whole number >= 0, got {st.steps!r}")
        if not self.stages or self.total_steps < 1:
            raise ConfigError("stages must hold at least one step")
        for name in ("batch_size", "loc_images", "samples", "candidates", "n_positive", "image_size", "width",
                     "depth", "heads", "ckpt_every", "keep_last"):
            _check_whole(name, getattr(self, name), 1)
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (the losses compare pairs), got {self.batch_size}")
        _check_whole("n_negative", self.n_negative, 0)
        for name in ("lr", "pool_temperature", "confidence_temperature"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        for name in ("weight_decay", "localization", "confidence", "mask_alignment", "reward_alignment",
                     "reward_cosine", "reward_area"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {v!r}")
        if self.candidates < 2:
            raise ConfigError(f"candidates must be >= 2 (the confidence term ranks them), got {self.candidates}")
        if self.localization == 0 and self.confidence == 0 and self.mask_alignment == 0:
            raise ConfigError("localization, confidence and mask_alignment are all 0: nothing to train")


def _check_whole(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")


def point_presets() -> list[str]:
    """Names of the point-training presets shipped in ``textseg/configs/points``."""
    folder = Path(str(importlib.resources.files("textseg") / "configs" / "points"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


def point_config_path(name_or_path: str | Path | None) -> Path:
    """A YAML file given by path, else the shipped preset of that name (None: ``default``).

    Raises:
        ConfigError: neither a file nor a preset of that name exists.
    """
    name = DEFAULT_PRESET if name_or_path is None else name_or_path
    path = Path(name).expanduser()
    if path.is_file():
        return path
    preset = Path(str(importlib.resources.files("textseg") / "configs" / "points" / f"{name}.yaml"))
    if preset.is_file():
        return preset
    raise ConfigError(f"point training config {name} does not exist (no such file, and no preset of that name; "
                      f"presets: {', '.join(point_presets())})")


def load_point_config(name_or_path: str | Path | None = None, **overrides: Any) -> PointTrainConfig:
    """The training config of a preset or YAML file (default: the packaged ``points/default.yaml``), with
    ``overrides`` (keyword settings; None values are ignored).

    A setting the file does not give takes the :class:`PointTrainConfig` default.

    Raises:
        ConfigError: one line naming the file and the setting: no such file or preset, not YAML, an unknown
            setting, a wrong type or a value out of range.
    """
    path = point_config_path(name_or_path)
    given = {k: v for k, v in overrides.items() if v is not None}
    # Checked here, before the typed merge, so that a typo reads as before: "<file>: unknown setting(s) ...".
    unknown = sorted(set(read_mapping(path)) - set(PointTrainConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(map(str, unknown))}")
    return load_structured(PointTrainConfig, path, given)


__all__ = ["DEFAULT_PRESET", "PointTrainConfig", "RUN_CONTROL", "Stage", "load_point_config", "point_config_path",
           "point_presets"]
