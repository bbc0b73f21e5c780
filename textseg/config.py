"""One typed configuration system for models, inference protocols and training.

A configuration is a dataclass (the schema). :func:`load_structured` fills it from YAML/JSON files, mappings and
``key.sub=value`` overrides, in that order, through OmegaConf structured configs: an unknown field or a value of
the wrong type is a one-line :class:`~textseg.errors.ConfigError` naming the source and the field.

The presets that ship with textseg (model architectures, protocols, training and ablation configs) are package
data under ``textseg/configs/<kind>/``; :func:`config_path` finds a preset by name or takes a user file by path.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Type, TypeVar, Union

from omegaconf import MISSING

from textseg.errors import ConfigError

T = TypeVar("T")
Source = Union[str, Path, Mapping[str, Any], None]
CONFIG_KINDS = {"models": ".json", "clip": ".json", "protocols": ".yaml", "train": ".yaml", "ablations": ".yaml",
                "selfsup": ".yaml", "promptable": ".yaml"}


# ---------------------------------------------------------------------------------------------------- loading
def package_config_dir(kind: str) -> Path:
    """The folder of the presets of one kind shipped inside the package (``textseg/configs/<kind>``)."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown config kind {kind!r}; known: {', '.join(CONFIG_KINDS)}")
    return Path(str(importlib.resources.files("textseg") / "configs" / kind))


def list_configs(kind: str) -> list[str]:
    """Names of the presets of one kind, e.g. ``list_configs("protocols") == ["groupvit", "sclip", "workbench"]``."""
    folder = package_config_dir(kind)
    return sorted(p.stem for p in folder.glob(f"*{CONFIG_KINDS[kind]}"))


def config_path(kind: str, name_or_path: str | Path) -> Path:
    """A user's config file given by path, else the shipped preset of that name.

    Raises:
        ConfigError: neither a file nor a preset of that name exists; the message lists the presets.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    preset = package_config_dir(kind) / f"{name_or_path}{CONFIG_KINDS[kind]}"
    if preset.is_file():
        return preset
    raise ConfigError(f"{kind[:-1] if kind.endswith('s') else kind} config {str(name_or_path)!r} not found: "
                      f"no such file, and no preset of that name (presets: {', '.join(list_configs(kind))})")


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file (JSON is YAML) that must hold a mapping; errors name the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML/JSON ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of field names to values")
    return data


def _describe(err: Exception) -> str:
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    key = getattr(err, "full_key", None)
    return f"field {key!r}: {msg}" if key else msg


def load_structured(schema: Type[T], *sources: Source, overrides: Sequence[str] = ()) -> T:
    """Fill a dataclass schema from files and mappings (later ones win), then ``key.sub=value`` overrides.

    Args:
        schema: a dataclass type; nested dataclass fields are nested sections.
        sources: YAML/JSON file paths, mappings (or dataclass instances), or None (skipped).
        overrides: command-line style ``a.b=value`` items; values are parsed as YAML scalars or lists.

    Returns:
        An instance of ``schema`` (its ``__post_init__`` checks run).

    Raises:
        ConfigError: an unknown field, a wrong type, an unreadable file; the message names source and field.
    """
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    merged = OmegaConf.structured(schema)
    items: list[tuple[str, Any]] = []
    sources_used = [src for src in sources if src is not None]
    for src in sources_used:
        if isinstance(src, (str, Path)):
            items.append((str(src), read_mapping(src)))
        elif dataclasses.is_dataclass(src) and not isinstance(src, type):
            items.append((type(src).__name__, dataclasses.asdict(src)))
        else:
            items.append(("config", dict(src)))
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    for item in overrides:  # one at a time, so that an error names the override it is in
        try:
            items.append(("override", OmegaConf.to_container(OmegaConf.from_dotlist([item]))))
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {_describe(err)}") from None
        except yaml.YAMLError as err:  # the value is parsed as YAML: an unclosed [ or {, or a stray quote
            raise ConfigError(f"override {item!r}: its value is not valid YAML ({str(err).splitlines()[0]}); "
                              "quote values that hold commas or braces, e.g. key=['a,b']") from None
    for where, data in items:
        try:
            merged = OmegaConf.merge(merged, data)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{where}: {_describe(err)}") from None
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{schema.__name__}: {_describe(err)}") from None
    except ConfigError as err:  # a check of the schema's __post_init__: name the files the values came from
        files = [where for (where, _), src in zip(items, sources_used) if isinstance(src, (str, Path))]
        if not files:
            raise
        raise ConfigError(f"{', '.join(files)}: {err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts and lists (JSON- and checkpoint-safe)."""
    return dataclasses.asdict(config)


def check_choice(where: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise a ConfigError naming the field unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"field {where!r} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class BackboneConfig:
    """The grouping backbone: a timm ViT (``type: timm``) or mean Lab colour per patch (``type: color``).

    Attributes:
        type: ``timm`` or ``color``.
        name: timm model name, with its pretrained tag (``vit_small_patch16_224.dino``).
        feature: ``tokens`` (last block output) or ``keys`` (last block's attention keys).
        patch_size: patch side of the ``color`` backbone.
        kwargs: extra arguments of ``timm.create_model`` (e.g. a test-size depth).
        weights: a local weight file of a ``timm`` backbone, loaded when the model is built with pretrained
            weights (``backbone_pretrained=`` overrides it): a ``textseg pretrain-grouping`` file (``final.pt``)
            or a timm state dict. A relative path is taken from the working directory.
        upsample: a ``timm`` backbone sees the image enlarged by this integer factor (bilinear), so its features
            lie on a grid ``upsample`` times denser: a patch-8 ViT gives one feature per 4 × 4 pixels at 2. The
            ViT's patch size must be divisible by it. Not part of the weights (a checkpoint loads at any value).
        pos_embed: how a ``timm`` ViT's position embedding is resampled to other grids: ``timm`` (timm's own) or
            ``dino`` (DINO's scale-factor bicubic, as DINO and ProxyCLIP compute it).
    """

    type: str = MISSING
    name: Optional[str] = None
    feature: str = "tokens"
    patch_size: int = 8
    kwargs: Dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None
    upsample: int = 1
    pos_embed: str = "timm"

    def __post_init__(self) -> None:
        check_choice("backbone.type", self.type, ("timm", "color"))
        check_choice("backbone.feature", self.feature, ("tokens", "keys"))
        check_choice("backbone.pos_embed", self.pos_embed, ("timm", "dino"))
        if self.type == "timm" and not self.name:
            raise ConfigError("field 'backbone.name' is required for a timm backbone")
        if not isinstance(self.upsample, int) or isinstance(self.upsample, bool) or self.upsample < 1:
            raise ConfigError(f"field 'backbone.upsample' must be a whole number >= 1, got {self.upsample!r}")
        if self.upsample != 1 and self.type != "timm":
            raise ConfigError("field 'backbone.upsample' applies to timm backbones only (the color backbone's "
                              "grid is set by backbone.patch_size)")


@dataclass
class GroupingConfig:
    """Settings of per-image k-means grouping.

    Attributes:
        num_groups: k of k-means.
        xy_weight: weight of the (x, y) position in [0, 1] appended to the features; 0 disables it.
        min_group_frac: groups with fewer than this share of the patches are merged into their nearest group.
        iters: Lloyd iterations.
        seed: k-means++ seed (the same image gives the same groups).
        backend: ``torch``: batched k-means on the features' device; ``faiss``: per image on the host;
            ``auto``: ``torch`` when the features are on CUDA, else per image on the host (faiss if installed).
        normalize: L2-normalise features before clustering (cosine geometry, as for DINO features).
    """

    num_groups: int = 8
    xy_weight: float = 0.0
    min_group_frac: float = 0.01
    iters: int = 20
    seed: int = 0
    backend: str = "auto"
    normalize: bool = True

    def __post_init__(self) -> None:
        check_choice("grouping.backend", self.backend, ("auto", "faiss", "torch"))
        if self.num_groups < 1 or self.iters < 0:
            raise ConfigError("fields 'grouping.num_groups' (>= 1) and 'grouping.iters' (>= 0) are out of range")


@dataclass
class ClipConfig:
    """The CLIP: an open_clip architecture (shipped or textseg's own) and its pretrained tag."""

    arch: str = MISSING
    pretrained: Optional[str] = None
    quick_gelu: bool = False


@dataclass
class RegionConfig:
    """How regions are embedded: ``tokens`` (region tokens in the last ``masked_blocks`` blocks, contextual
    masking) or ``pool`` (mean of each region's projected output patch tokens). ``init``: what a region token
    starts as, ``cls`` (a copy of the CLS token) or ``mean`` (the mean of its region's patch tokens)."""

    masked_blocks: int = 1
    mode: str = "tokens"
    init: str = "cls"

    def __post_init__(self) -> None:
        check_choice("region.mode", self.mode, ("tokens", "pool"))
        check_choice("region.init", self.init, ("cls", "mean"))
        if self.masked_blocks < 1:
            raise ConfigError(f"field 'region.masked_blocks' must be >= 1, got {self.masked_blocks}")


DENSE_MODES = ("sclip", "naclip", "proxyclip")


@dataclass
class DenseConfig:
    """Per-pixel recognition with a training-free dense mode of the CLIP instead of region embeddings.

    Attributes:
        mode: None (region embeddings of groups), ``sclip`` (correlative self-attention in the last block),
            ``naclip`` (the reduced last block with neighbourhood attention) or ``proxyclip`` (the last block's
            values aggregated by the grouping backbone's feature similarities); see :mod:`textseg.dense`.
        gaussian_std: ``naclip``'s neighbourhood width in patches.
        beta, gamma: ``proxyclip``'s attention shift and sharpness.
    """

    mode: Optional[str] = None
    gaussian_std: float = 5.0
    beta: float = 1.2
    gamma: float = 3.0

    def __post_init__(self) -> None:
        check_choice("dense.mode", self.mode, (None, *DENSE_MODES))
        if self.gaussian_std <= 0:
            raise ConfigError(f"field 'dense.gaussian_std' must be positive, got {self.gaussian_std}")


@dataclass
class ModelConfig:
    """A textseg model: grouping backbone, k-means grouping, CLIP and region embedding (``configs/models``).

    ``backbone.type`` and ``clip.arch`` are required; every other field has a default. ``protocol`` names the
    protocol preset a :class:`~textseg.segmenter.Segmenter` of this model uses by default (None: the defaults).
    """

    name: str = "custom"
    description: str = ""
    backbone: BackboneConfig = MISSING
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    clip: ClipConfig = MISSING
    region: RegionConfig = field(default_factory=RegionConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    protocol: Optional[str] = None


# ---------------------------------------------------------------------------------------------------- protocol
TEMPLATE_SETS = ("single", "imagenet80")


@dataclass
class Protocol:
    """How an image is segmented: what :meth:`textseg.Segmenter.predict` receives, and what an evaluation
    preset (``configs/protocols``) holds.

    Attributes:
        name: preset name.
        short_side: resize so that the short side has this length; None keeps the size.
        max_long_side: shrink further, if needed, so that the long side is at most this (None: no cap); keeps an
            extreme aspect ratio (20000x50) from being upscaled to a huge image.
        window, stride: sliding-window inference at the resized scale; None runs the whole image at once.
        templates: prompt template set, ``single`` or ``imagenet80``.
        background: ``threshold`` (below ``bg_threshold`` or a background class is background), ``classes``
            (background classes only) or None (every pixel gets a class).
        bg_threshold: the probability threshold of ``threshold``.
        background_classes: names scored like classes and mapped to background (e.g. sky, wall).
        bg_score: a constant background cosine similarity, scored like one more background class.
        group_counts: k-means group counts to segment with, each a grouping of its own; a pixel's class
            probabilities are averaged over them (groupings of several granularities). None: the model's own
            ``grouping.num_groups``.
        grid_shifts: n lays the CLIP's patch grid at n × n offsets (steps of patch size / n on each axis, the
            image padded by repeating its edges) and averages each region's class probabilities over them: a
            region smaller than a patch, or sharing its patches with a neighbour, is seen on grids where it has
            patches of its own. Costs n² region passes; 1 (the default) is the plain grid.
        logit_scale: the factor on cosine similarities before the softmax; None: the model's own.
        area_threshold: (dense modes) a class whose predicted area is below this share of the predicted foreground
            has its scores zeroed before labelling (SCLIP's filter); None: no filter.
        pamr_steps, pamr_dilations: PAMR refinement (:func:`textseg.dense.pamr.pamr`): each pixel's scores
            become the mean of its neighbours' (8 at each of ``pamr_dilations`` pixels), weighted by how alike
            their colours are, ``pamr_steps`` times, so labels spread within an object and stop at its edges.
            Dense modes refine their logits at the input size; region labelling refines the averaged class
            probabilities at the resized scale, after ``smooth_sigma``. 0 steps: none.
        pad_multiple: (dense modes) windows are zero-padded (centred) to multiples of this side (ProxyCLIP's 56).
        normalize_scores: (dense modes) scores are renormalised to sum to 1 over the labels (NACLIP).
        class_file_background: the first line of a class file names the background (label 0), as the dense
            methods' class files do.
        group_vote: average the class scores over each group of the model's grouping (``group_counts`` or the
            model's k, averaged over the counts) before labelling.
        smooth_sigma: (region labelling) the averaged class probabilities are smoothed by a Gaussian of this
            standard deviation, in pixels at the resized scale, before labelling: a pixel on an object's edge, in a
            sliver of a group, takes the class its neighbourhood favours. 0: no smoothing.
    """

    name: str = "custom"
    short_side: Optional[int] = 448
    max_long_side: Optional[int] = 2048
    window: Optional[int] = None
    stride: Optional[int] = None
    templates: str = "imagenet80"
    background: Optional[str] = "threshold"
    bg_threshold: float = 0.5
    background_classes: List[str] = field(default_factory=list)
    bg_score: Optional[float] = None
    group_counts: Optional[List[int]] = None
    grid_shifts: int = 1
    per_benchmark: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    logit_scale: Optional[float] = None
    area_threshold: Optional[float] = None
    pamr_steps: int = 0
    pamr_dilations: List[int] = field(default_factory=lambda: [8, 16])
    pad_multiple: Optional[int] = None
    normalize_scores: bool = False
    class_file_background: bool = False
    group_vote: bool = False
    smooth_sigma: float = 0.0

    def __post_init__(self) -> None:
        check_choice("templates", self.templates, TEMPLATE_SETS)
        check_choice("background", self.background, ("threshold", "classes", None))
        if self.short_side is not None and self.short_side <= 0:
            raise ConfigError(f"field 'short_side' must be positive or null, got {self.short_side}")
        if self.max_long_side is not None and self.max_long_side <= 0:
            raise ConfigError(f"field 'max_long_side' must be positive or null, got {self.max_long_side}")
        if (self.window is None) != (self.stride is None) or (
                self.window is not None and min(self.window, self.stride) <= 0):
            raise ConfigError("fields 'window' and 'stride' must both be positive or both be null")
        if self.window is not None and self.stride > self.window:
            raise ConfigError(f"field 'stride' ({self.stride}) must not exceed 'window' ({self.window}): "
                              "windows would leave pixels uncovered")
        if not 0.0 <= self.bg_threshold <= 1.0:
            raise ConfigError(f"field 'bg_threshold' is a probability in [0, 1], got {self.bg_threshold}")
        if self.bg_score is not None and not -1.0 <= self.bg_score <= 1.0:
            raise ConfigError(f"field 'bg_score' is a cosine similarity in [-1, 1], got {self.bg_score}")
        if self.bg_score is not None and self.background is None:
            raise ConfigError("field 'bg_score' needs a background mode ('threshold' or 'classes')")
        if any(not str(c).strip() for c in self.background_classes):
            raise ConfigError("field 'background_classes' holds an empty name")
        if self.group_counts is not None and (not self.group_counts or min(self.group_counts) < 1):
            raise ConfigError(f"field 'group_counts' is a non-empty list of group counts >= 1 or null, "
                              f"got {self.group_counts}")
        if self.grid_shifts < 1:
            raise ConfigError(f"field 'grid_shifts' is a number of grid offsets per axis >= 1, got {self.grid_shifts}")
        if self.logit_scale is not None and self.logit_scale <= 0:
            raise ConfigError(f"field 'logit_scale' must be positive or null, got {self.logit_scale}")
        if self.area_threshold is not None and not 0.0 <= self.area_threshold < 1.0:
            raise ConfigError(f"field 'area_threshold' is a share in [0, 1) or null, got {self.area_threshold}")
        if self.pamr_steps < 0 or not self.pamr_dilations or min(self.pamr_dilations) < 1:
            raise ConfigError("fields 'pamr_steps' (>= 0) and 'pamr_dilations' (a non-empty list of pixel "
                              "distances >= 1) are out of range")
        if not 0.0 <= self.smooth_sigma <= 100.0:
            raise ConfigError(f"field 'smooth_sigma' is a Gaussian's standard deviation in pixels, 0 to 100, got "
                              f"{self.smooth_sigma}")
        if self.pad_multiple is not None and self.pad_multiple < 1:
            raise ConfigError(f"field 'pad_multiple' must be >= 1 or null, got {self.pad_multiple}")

    def replace(self, **changes: Any) -> "Protocol":
        """A copy with some fields replaced (not merged), checked like a loaded protocol."""
        return load_structured(Protocol, {**to_dict(self), **changes})

    def for_benchmark(self, benchmark: str) -> "Protocol":
        """This protocol with the ``per_benchmark`` overrides of ``benchmark`` applied (and none left)."""
        return self.replace(**self.per_benchmark.get(benchmark, {}), per_benchmark={})


def load_protocol(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Protocol:
    """Load a protocol preset (``groupvit``, ``sclip``, ``workbench``) or a YAML file, with overrides.

    Per-benchmark overrides are checked against the schema too, so a typo there fails at load time.
    """
    path = config_path("protocols", name_or_path)
    protocol = load_structured(Protocol, path, overrides=overrides)
    for bench in protocol.per_benchmark:
        try:
            protocol.for_benchmark(bench)
        except ConfigError as err:
            raise ConfigError(f"{path}: per_benchmark.{bench}: {err}") from None
    return protocol
