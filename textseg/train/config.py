"""Training configs: YAML files merged over defaults, with ``key.sub=value`` overrides from the command line."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import yaml

from textseg.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "model": "labxy-small-workbench",  # textseg model config (name or JSON path)
    "model_overrides": {},             # merged into the model config, e.g. {region: {mode: pool}}
    "pretrained": False,               # load the model config's pretrained weights
    "init": None,                      # textseg checkpoint whose weights start the run (e.g. stage 1's)
    "out": "runs/train",
    "resume": True,                    # continue from the newest checkpoint in out/checkpoints
    "seed": 0,
    "data": {
        "train": None,                 # shard URLs, brace notation: "dir/shard-{000000..000009}.tar"
        "batch_size": 64,              # per process
        "workers": 1,
        "shuffle_buffer": 1000,
        "image_size": 96,
        "noun_template": "a photo of a {}.",
    },
    "loss": {
        "image_text": 1.0,             # weight of the image-caption InfoNCE
        "noun_region": 0.0,            # weight of the noun-to-region loss
        "mode": "one_way",             # one_way | region_batch | two_way
        "same_noun_positives": True,   # a noun shared by captions of the batch is not a negative
        "max_nouns": 3,
        "keep_background_nouns": True, # background words (stripes, checkerboard, ...) are nouns too
    },
    "optim": {
        "lr": 2.0e-3,
        "weight_decay": 0.1,
        "betas": [0.9, 0.98],
        "warmup": 100,
        "min_lr_ratio": 0.0,
        "grad_accum": 1,
        "clip_grad": 1.0,
    },
    "train": {
        "steps": 1000,
        "trainable": "all",            # all | last_blocks (the last `trainable_blocks` visual blocks + head)
        "trainable_blocks": 1,
        "train_text": True,
        "learn_temperature": True,
        "init_temperature": 0.07,      # used when the run does not start from a checkpoint
        "amp": "auto",                 # bfloat16 autocast on CUDA; off on CPU
        "log_every": 10,
        "ckpt_every": 200,
        "keep_last": 2,
        "max_minutes": None,           # stop early (with a checkpoint) when this much time has passed
    },
}


def _merge(base: dict[str, Any], extra: dict[str, Any], where: str, strict: bool = True) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if strict and key not in base:
            raise ConfigError(f"{where}: unknown field {key!r} (known: {', '.join(base)})")
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and key != "model_overrides":
            out[key] = _merge(old, value, f"{where}.{key}", strict)
        elif strict and isinstance(old, (int, float)) and not isinstance(old, bool) and isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                out[key] = float(value)
            except ValueError:
                raise ConfigError(f"{where}.{key} must be a number, got {value!r}") from None
        else:
            out[key] = copy.deepcopy(value)
    return out


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge without key checks (for model configs)."""
    return _merge(base, extra, "", strict=False)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "loss.mode=two_way"]`` → nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults, then the YAML file (if any), then the overrides; unknown fields are errors naming the field."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
        cfg = _merge(cfg, data, str(path))
    cfg = _merge(cfg, parse_overrides(overrides), "override")
    if cfg["loss"]["mode"] not in ("one_way", "region_batch", "two_way"):
        raise ConfigError(f"loss.mode must be one_way, region_batch or two_way, got {cfg['loss']['mode']!r}")
    if cfg["train"]["trainable"] not in ("all", "last_blocks"):
        raise ConfigError(f"train.trainable must be 'all' or 'last_blocks', got {cfg['train']['trainable']!r}")
    return cfg
