"""Model factory in the style of open_clip and timm: model configs are data, built by name.

>>> import textseg
>>> textseg.list_models()
['dino-b16-clip-b16', 'dino-s16-clip-b16', ...]
>>> model = textseg.create_model()                                # NACLIP on OpenAI's CLIP ViT-B/16
>>> model = textseg.create_model("dino-s16-clip-b16")             # pretrained DINO + OpenAI CLIP weights
>>> model = textseg.create_model("tiny", pretrained=False)        # random weights, test size
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from textseg.config import (BackboneConfig, ClipConfig, ModelConfig, config_path, list_configs, load_structured,
                            package_config_dir, to_dict)
from textseg.errors import ConfigError, MissingWeightsError, UserError

_log = logging.getLogger(__name__)

DEFAULT_MODEL = "naclip-b16"
_clip_configs_registered = False


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list_configs("models")


def get_model_config(name_or_path: str | Path | Mapping[str, Any] | ModelConfig,
                     overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """The typed config of a registered model name, a JSON/YAML file or a mapping, with optional overrides.

    Args:
        name_or_path: a name from :func:`list_models`, a config file, a mapping or a :class:`ModelConfig`.
        overrides: nested fields merged on top, e.g. ``{"region": {"mode": "pool"}}``.

    Raises:
        UserError: unknown name; ConfigError: a field is unknown or of the wrong type.
    """
    if isinstance(name_or_path, (str, Path)):
        if not Path(name_or_path).is_file() and str(name_or_path) not in list_models():
            raise UserError(f"unknown model {str(name_or_path)!r}; known models: {', '.join(list_models())} "
                            "(or a .json config file)")
        path = config_path("models", name_or_path)
        return load_structured(ModelConfig, {"name": path.stem}, path, overrides)
    return load_structured(ModelConfig, name_or_path, overrides)


def _register_clip_configs() -> None:
    global _clip_configs_registered
    if not _clip_configs_registered:
        import open_clip

        open_clip.add_model_config(package_config_dir("clip"))
        _clip_configs_registered = True


def _config_weights(path: str) -> Path:
    """The backbone weight file a model config names; missing, a one-line error naming the command that makes it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingWeightsError(f"grouping backbone weights {file} not found: make them with `textseg "
                                  f"pretrain-grouping --out {file.parent}`, pass --backbone-pretrained FILE, or "
                                  "use random weights (--no-pretrained, pretrained=False)")
    return file


def build_backbone(cfg: BackboneConfig, pretrained: bool, weight_file: str | None) -> torch.nn.Module:
    from textseg.backbones import ColorXYFeatures, TimmViTFeatures

    if cfg.type == "color":
        return ColorXYFeatures(patch_size=cfg.patch_size)
    import timm

    from textseg.artifacts import mismatch_detail, read_backbone_weights
    from textseg.weights import resolve_timm_weights

    file = None
    if weight_file:
        file = resolve_timm_weights(cfg.name, weight_file)
    elif pretrained and cfg.weights:
        file = _config_weights(cfg.weights)
    elif pretrained and "." in cfg.name:
        file = resolve_timm_weights(cfg.name)
    # A `textseg pretrain-grouping` file is read here (weights only, architecture checked); others by timm.
    saved = read_backbone_weights(file) if file is not None and file.suffix in (".pt", ".pth") else None
    timm_file = file if saved is None else None
    if saved is not None:
        arch = saved["backbone"]
        if arch["name"].split(".")[0] != cfg.name.split(".")[0] or dict(arch["kwargs"]) != dict(cfg.kwargs):
            raise UserError(f"backbone weight file {file} holds a {arch['name']} with {dict(arch['kwargs'])}, not the "
                            f"{cfg.name} with {dict(cfg.kwargs)} this model config builds")
    released = None
    if timm_file is not None and timm_file.suffix in (".pt", ".pth"):  # DINO's release format (timm's key names)
        from textseg.weight_formats import read_dino_state_dict

        released, timm_file = read_dino_state_dict(timm_file), None
    try:
        model = timm.create_model(cfg.name, pretrained=timm_file is not None, num_classes=0, dynamic_img_size=True,
                                  pretrained_cfg_overlay=dict(file=str(timm_file)) if timm_file else None,
                                  **cfg.kwargs)
        if saved is not None:
            model.load_state_dict(saved["model"])
        if released is not None:
            model.load_state_dict(released)
    except RuntimeError as err:  # e.g. a state dict of another architecture
        raise UserError(f"cannot load backbone weights {file} into {cfg.name}: {mismatch_detail(err)}") from None
    mean = model.pretrained_cfg.get("mean") or (0.485, 0.456, 0.406)
    std = model.pretrained_cfg.get("std") or (0.229, 0.224, 0.225)
    if int(model.patch_embed.patch_size[0]) % cfg.upsample:
        raise ConfigError(f"field 'backbone.upsample' {cfg.upsample} does not divide the patch size "
                          f"{model.patch_embed.patch_size[0]} of {cfg.name}")
    try:
        return TimmViTFeatures(model, feature=cfg.feature, mean=mean, std=std, upsample=cfg.upsample,
                               pos_embed=cfg.pos_embed)
    except ValueError as err:
        raise ConfigError(f"backbone {cfg.name}: {err}") from None


def _build_clip(cfg: ClipConfig, pretrained: bool, weight_file: str | None):
    import open_clip

    from textseg.weights import resolve_clip_weights

    _register_clip_configs()
    if cfg.arch not in open_clip.list_models():
        raise ConfigError(f"open_clip has no architecture {cfg.arch!r}")
    source = weight_file or (cfg.pretrained if pretrained else None)
    file = resolve_clip_weights(cfg.arch, source) if source else None
    archive = False
    if file is not None:
        from textseg.weight_formats import is_torchscript_archive

        archive = is_torchscript_archive(file)  # OpenAI's releases: their tensors are read, their code never run
    try:
        clip = open_clip.create_model(cfg.arch, pretrained=str(file) if file and not archive else None,
                                      force_quick_gelu=cfg.quick_gelu)
    except RuntimeError as err:
        raise UserError(f"cannot load CLIP weights {file} into {cfg.arch}: {str(err).splitlines()[0]}") from None
    if archive:
        from textseg.weight_formats import load_clip_state_dict, read_clip_state_dict

        load_clip_state_dict(clip, read_clip_state_dict(file))
    return clip, open_clip.get_tokenizer(cfg.arch)


def create_model(name_or_config: str | Path | Mapping[str, Any] | ModelConfig | None = DEFAULT_MODEL,
                 pretrained: bool = True,
                 *, clip_pretrained: str | None = None, backbone_pretrained: str | None = None,
                 checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                 seed: int | None = None, overrides: Mapping[str, Any] | None = None):
    """Build a :class:`~textseg.model.TextSegModel`.

    Args:
        name_or_config: a name from :func:`list_models`, a JSON config file, a mapping or a :class:`ModelConfig`;
            None with ``checkpoint``: the checkpoint's model.
        pretrained: load the weights the config names (a timm tag such as ``.dino`` and an open_clip tag such as
            ``openai``); ``False`` gives random weights.
        clip_pretrained: an open_clip tag or a local file overriding the config's CLIP weights.
        backbone_pretrained: a local file with the grouping backbone's weights (a ``textseg pretrain-grouping``
            file or a timm state dict); it overrides the config's ``backbone.weights``.
        checkpoint: a textseg checkpoint (from ``textseg train``) whose weights replace the whole model's. Its
            model config (with the grouping and region settings it was trained with) replaces ``name_or_config``,
            which must name a model of the same architecture; ``name_or_config=None`` takes the checkpoint's.
        device: where to put the model.
        seed: seed of the random initialisation of the weights no file provides, drawn from a private generator
            (the caller's torch RNG is left as it was); None draws from the global torch RNG. With a seed, two
            processes build the same "random weights" model.
        overrides: nested model-config fields merged on top of the config (the checkpoint's too), e.g.
            ``{"dense": {"mode": "naclip"}}`` to read a trained model's CLIP with NACLIP's last block.

    Raises:
        MissingWeightsError: a weight is neither on disk nor downloadable; the message says what to get and where.
        UserError: the checkpoint is unreadable or holds the weights of a model of another architecture.
    """
    from textseg.grouping import Grouper
    from textseg.model import TextSegModel
    from textseg.artifacts import check_same_architecture, load_model_weights, mismatch_detail

    if name_or_config is None and checkpoint is None:
        name_or_config = DEFAULT_MODEL
    cfg = get_model_config(name_or_config) if name_or_config is not None else None
    state = None
    if checkpoint is not None:
        state, saved = load_model_weights(checkpoint)
        if saved is not None:
            try:
                saved_cfg = get_model_config(saved)
            except UserError as err:
                raise UserError(f"checkpoint {checkpoint}: its model config is invalid: {err}") from None
            if cfg is not None:
                check_same_architecture(to_dict(saved_cfg), to_dict(cfg), f"checkpoint {checkpoint}")
            cfg = saved_cfg
        elif cfg is None:
            raise UserError(f"checkpoint {checkpoint} does not record its model: name the model too (--model)")
        pretrained = False  # the checkpoint holds every weight
    assert cfg is not None
    if overrides:
        cfg = get_model_config(cfg, overrides)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            backbone = build_backbone(cfg.backbone, pretrained, backbone_pretrained)
            clip, tokenizer = _build_clip(cfg.clip, pretrained, clip_pretrained)
        except MissingWeightsError as err:
            raise MissingWeightsError(f"model {cfg.name}: {err}") from None
        grouper = Grouper(backbone, cfg.grouping, region_patch_size=int(clip.visual.conv1.kernel_size[0]))
        try:
            model = TextSegModel(grouper, clip, tokenizer, cfg)
        except ValueError as err:
            raise ConfigError(f"model config {cfg.name}: {err}") from None
    if state is not None:
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # a shape mismatch
            raise UserError(f"checkpoint {checkpoint} does not match model {cfg.name}: {mismatch_detail(err)}"
                            ) from None
        if missing or unexpected:
            raise UserError(f"checkpoint {checkpoint} does not match model {cfg.name}: "
                            f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(device).eval()


__all__ = ["DEFAULT_MODEL", "create_model", "get_model_config", "list_models"]
