"""Model factory in the style of open_clip and timm: model configs are JSON files, built by name.

>>> import textseg
>>> textseg.list_models()
['dino-b16-clip-b16', 'dino-s16-clip-b16', ...]
>>> model = textseg.create_model("dino-s16-clip-b16")             # pretrained DINO + OpenAI CLIP weights
>>> model = textseg.create_model("tiny", pretrained=False)        # random weights, test size
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch

from textseg.errors import ConfigError, MissingWeightsError, UserError
from textseg.grouping import GroupingConfig

_log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CLIP_CONFIG_DIR = Path(__file__).parent / "clip_configs"
DEFAULT_MODEL = "dino-s16-clip-b16"
_clip_configs_registered = False


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def get_model_config(name_or_path: str | Path) -> dict[str, Any]:
    """The config dict of a registered model name or of a JSON file."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = MODEL_CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise UserError(f"unknown model {name_or_path!r}; known models: {', '.join(list_models())} (or a .json config)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err})") from None


def _register_clip_configs() -> None:
    global _clip_configs_registered
    if not _clip_configs_registered:
        import open_clip

        open_clip.add_model_config(CLIP_CONFIG_DIR)
        _clip_configs_registered = True


def _build_backbone(cfg: dict[str, Any], pretrained: bool, weight_file: str | None) -> torch.nn.Module:
    from textseg.backbones import ColorXYFeatures, TimmViTFeatures

    kind = cfg.get("type", "timm")
    if kind == "color":
        return ColorXYFeatures(patch_size=int(cfg.get("patch_size", 8)))
    if kind != "timm":
        raise ConfigError(f"backbone.type must be 'timm' or 'color', got {kind!r}")
    import timm

    from textseg.weights import resolve_timm_weights

    name = cfg["name"]
    kwargs = dict(cfg.get("kwargs", {}))
    file = None
    if weight_file or (pretrained and "." in name):
        file = resolve_timm_weights(name, weight_file)
    try:
        model = timm.create_model(name, pretrained=file is not None, num_classes=0, dynamic_img_size=True,
                                  pretrained_cfg_overlay=dict(file=str(file)) if file else None, **kwargs)
    except RuntimeError as err:  # e.g. a state dict of another architecture
        raise UserError(f"cannot load backbone weights {file} into {name}: {str(err).splitlines()[0]}") from None
    cfg_mean = model.pretrained_cfg.get("mean") or (0.485, 0.456, 0.406)
    cfg_std = model.pretrained_cfg.get("std") or (0.229, 0.224, 0.225)
    return TimmViTFeatures(model, feature=cfg.get("feature", "tokens"), mean=cfg_mean, std=cfg_std)


def _build_clip(cfg: dict[str, Any], pretrained: bool, weight_file: str | None):
    import open_clip

    from textseg.weights import resolve_clip_weights

    _register_clip_configs()
    arch = cfg["arch"]
    if arch not in open_clip.list_models():
        raise ConfigError(f"open_clip has no architecture {arch!r}")
    source = weight_file or (cfg.get("pretrained") if pretrained else None)
    file = resolve_clip_weights(arch, source) if source else None
    try:
        clip = open_clip.create_model(arch, pretrained=str(file) if file else None,
                                      force_quick_gelu=bool(cfg.get("quick_gelu", False)))
    except RuntimeError as err:
        raise UserError(f"cannot load CLIP weights {file} into {arch}: {str(err).splitlines()[0]}") from None
    return clip, open_clip.get_tokenizer(arch)


def create_model(name_or_config: str | Path | dict[str, Any] = DEFAULT_MODEL, pretrained: bool = True, *,
                 clip_pretrained: str | None = None, backbone_pretrained: str | None = None,
                 checkpoint: str | Path | None = None, device: str | torch.device = "cpu"):
    """Build a :class:`~textseg.model.TextSegModel`.

    Args:
        name_or_config: a name from :func:`list_models`, a path to a JSON config, or a config dict.
        pretrained: load the weights the config names (a timm tag such as ``.dino`` and an open_clip tag such as
            ``openai``); ``False`` gives random weights.
        clip_pretrained: an open_clip tag or a local file overriding the config's CLIP weights.
        backbone_pretrained: a local file with the grouping backbone's timm weights.
        checkpoint: a textseg checkpoint (from ``textseg train``) whose weights replace the whole model's.
        device: where to put the model.

    Raises:
        MissingWeightsError: a weight is neither on disk nor downloadable; the message says what to get and where.
    """
    from textseg.model import TextSegModel

    if isinstance(name_or_config, dict):
        cfg, name = copy.deepcopy(name_or_config), name_or_config.get("name", "custom")
    else:
        cfg, name = get_model_config(name_or_config), Path(str(name_or_config)).stem
    state = None
    if checkpoint is not None:
        state, cfg = load_checkpoint(checkpoint, cfg)
        pretrained = False  # the checkpoint holds every weight
    try:
        grouping = GroupingConfig(**cfg.get("grouping", {}))
    except TypeError as err:
        raise ConfigError(f"model config {name}: bad grouping field ({err})") from None
    try:
        backbone = _build_backbone(cfg["backbone"], pretrained, backbone_pretrained)
        clip, tokenizer = _build_clip(cfg["clip"], pretrained, clip_pretrained)
    except MissingWeightsError as err:
        raise MissingWeightsError(f"model {name}: {err}") from None
    except KeyError as err:
        raise ConfigError(f"model config {name}: missing field {err}") from None
    region = cfg.get("region", {})
    model = TextSegModel(backbone, grouping, clip, tokenizer, masked_blocks=int(region.get("masked_blocks", 1)),
                         config=cfg, name=name, region_mode=region.get("mode", "tokens"))
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"checkpoint {checkpoint} does not match model {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(device).eval()


def load_checkpoint(path: str | Path, cfg: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a textseg checkpoint: returns its model state dict and its model config (or ``cfg`` if it has none)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or "model" not in data:
        raise UserError(f"{path} is not a textseg checkpoint (no 'model' entry)")
    return data["model"], data.get("model_config", cfg)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add the options that select a model and its weights to a CLI parser."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or JSON config (default {DEFAULT_MODEL}; see `textseg models`)")
    g.add_argument("--no-pretrained", action="store_true", help="random weights (for testing the pipeline)")
    g.add_argument("--clip-pretrained", help="open_clip pretrained tag or local weight file for the CLIP")
    g.add_argument("--backbone-pretrained", help="local weight file for the grouping backbone (timm)")
    g.add_argument("--checkpoint", help="a textseg training checkpoint")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def create_model_from_args(args: argparse.Namespace):
    """Build the model that the options of :func:`add_model_args` describe."""
    return create_model(args.model, pretrained=not args.no_pretrained, clip_pretrained=args.clip_pretrained,
                        backbone_pretrained=args.backbone_pretrained, checkpoint=args.checkpoint, device=args.device)
