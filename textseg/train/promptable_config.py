"""The typed config of the stand-in's training (``textseg train-promptable``): the preset
``textseg/configs/promptable/workbench.yaml`` holds the defaults; YAML files, mappings and ``key=value``
overrides change them (:func:`load_promptable_config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from textseg.config import config_path, load_structured
from textseg.errors import ConfigError
from textseg.ris.standin import DEFAULT_SEGMENTER_OUT, StandInConfig

DEFAULT_CONFIG = "workbench"
# Fields that a resumed run may change: they do not change what is computed.
RESUMABLE_CHANGES = ("out", "workers", "eval_scenes", "device", "resume", "ckpt_every", "keep_last")


@dataclass
class PromptableTrainConfig:
    """How the stand-in for SAM is trained on workbench masks with random point prompts.

    On 2 CPU cores a step of the defaults takes about 0.55 s, so the 800 steps take about 7.5 minutes.

    Attributes:
        out: the run folder (``final.pt``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/``).
        steps, batch_size, lr: optimisation (AdamW, linear warm-up, cosine decay to lr / 20).
        prompts: objects prompted per image, at most.
        weight_decay: AdamW weight decay of the weight matrices (not of biases, norms and embeddings).
        warmup: warm-up steps (None: 5% of ``steps``, at most 100; 0 counts as 1).
        seed: model initialisation and prompt sampling.
        workbench_seed: the workbench scenes.
        image_size: side of the scenes.
        workers: data-loader processes (0: in this process); the data do not depend on it.
        eval_scenes: held-out scenes for the one-point mIoU at the end (0: none).
        device: where to train (None: CUDA when available, else CPU).
        resume: continue from the newest step checkpoint in ``out/checkpoints`` when there is one.
        ckpt_every: steps between step checkpoints (the last step's is always written).
        keep_last: step checkpoints kept.
        model: the stand-in's architecture.
    """

    out: str = str(DEFAULT_SEGMENTER_OUT)
    steps: int = 800
    batch_size: int = 16
    prompts: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: Optional[int] = None
    seed: int = 0
    workbench_seed: int = 0
    image_size: int = 96
    workers: int = 1
    eval_scenes: int = 200
    device: Optional[str] = None
    resume: bool = True
    ckpt_every: int = 100
    keep_last: int = 2
    model: StandInConfig = field(default_factory=StandInConfig)

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("prompts", 1), ("image_size", 1), ("workers", 0),
                          ("eval_scenes", 0), ("ckpt_every", 1), ("keep_last", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"field {name!r} must be >= {low}, got {getattr(self, name)!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"field 'lr' must be > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"field 'weight_decay' must be >= 0, got {self.weight_decay!r}")
        if self.warmup is not None and self.warmup < 0:
            raise ConfigError(f"field 'warmup' must be >= 0 or null, got {self.warmup!r}")
        if not self.out:
            raise ConfigError("field 'out' must name a folder")

    @property
    def warmup_steps(self) -> int:
        """The warm-up steps the run uses."""
        return min(100, max(1, self.steps // 20)) if self.warmup is None else max(1, self.warmup)


def load_promptable_config(name_or_path: str | Path | None = DEFAULT_CONFIG, overrides: Sequence[str] = (),
                           fields: Mapping[str, Any] | None = None) -> PromptableTrainConfig:
    """A preset (``workbench``) or a YAML file, then ``fields`` (e.g. command-line flags; None values are
    skipped), then ``key=value`` overrides (``model.depth=2``).

    Raises:
        ConfigError: no such preset or file, an unknown field, a wrong type or a value out of range.
    """
    base = config_path("promptable", name_or_path) if name_or_path is not None else None
    given = {k: v for k, v in (fields or {}).items() if v is not None}
    return load_structured(PromptableTrainConfig, base, given, overrides=overrides)


__all__ = ["DEFAULT_CONFIG", "PromptableTrainConfig", "RESUMABLE_CHANGES", "load_promptable_config"]
