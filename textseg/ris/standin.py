"""The ``workbench-promptable-segmenter``: SAM's own modules (``segment_anything``) at a small size, a stand-in for
SAM when its pretrained weights cannot be had. Its architecture (:class:`StandInConfig`), building, saving and
loading; also the device and package checks that every SAM-architecture model shares.

A stand-in file is ``{"kind": WORKBENCH_SEGMENTER, "config": <StandInConfig as a plain dict>, "state_dict",
"meta"}``, written and read through :mod:`textseg.artifacts`; the architecture is stored in the file, so that
loading needs no code change. ``textseg train-promptable`` (:mod:`textseg.train.promptable`) trains it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from textseg.errors import ConfigError, MissingWeightsError, UserError

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

WORKBENCH_SEGMENTER = "workbench-promptable-segmenter"
DEFAULT_SEGMENTER_OUT = Path("runs/workbench-segmenter")


def require_segment_anything(what: str) -> Any:
    """The ``segment_anything`` package; a UserError saying how to install it when ``what`` needs it."""
    try:
        import segment_anything
    except ImportError:
        raise UserError(f"{what} needs the segment_anything package: pip install 'textseg[sam]'") from None
    return segment_anything


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (None: CUDA when available, else CPU).

    Raises:
        UserError: not a device name, or a CUDA device that is not here.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"device {device!r} is not a device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {device}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    return dev


@dataclass
class StandInConfig:
    """The stand-in's architecture. The defaults are sized for CPU training on the 96 x 96 workbench scenes (no
    resize: ``img_size`` 96): a 12 x 12 embedding grid, 48 x 48 low-resolution masks. The 128-pixel, 192-wide,
    6-block variant trains ~3x slower per step on 2 CPU cores and gets fewer steps in the same time.

    Attributes:
        img_size: SAM's input side (SAM: 1024); a multiple of ``patch_size``.
        patch_size, embed_dim, depth, num_heads: the image encoder's ViT.
        window_size: the encoder's attention window; 0: global attention in every block.
        use_rel_pos: relative position embeddings in the encoder's attention.
        out_chans: the image and prompt embedding size (SAM: 256).
        decoder_depth, decoder_mlp_dim, decoder_heads: the mask decoder's two-way transformer.
        num_multimask_outputs: masks of the multimask output.
        iou_head_depth, iou_head_hidden_dim: the IoU prediction head.
        mask_in_chans: the prompt encoder's mask-input channels.
    """

    img_size: int = 96
    patch_size: int = 8
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    window_size: int = 0
    use_rel_pos: bool = True
    out_chans: int = 96
    decoder_depth: int = 2
    decoder_mlp_dim: int = 384
    decoder_heads: int = 4
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 96
    mask_in_chans: int = 16

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ConfigError(f"{WORKBENCH_SEGMENTER} config: img_size {self.img_size} is not a multiple of "
                              f"patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads or (self.out_chans // 2) % self.decoder_heads:
            raise ConfigError(f"{WORKBENCH_SEGMENTER} config: embed_dim is not divisible by num_heads, or out_chans "
                              "/ 2 by decoder_heads")


def standin_config(config: StandInConfig | Mapping[str, Any] | None = None, **overrides: Any) -> StandInConfig:
    """A :class:`StandInConfig` of ``config`` (the defaults when None; a mapping may name some fields only) with
    ``overrides``; values are type-checked.

    Raises:
        ConfigError: an unknown field, a value of the wrong type, or sizes that do not fit together.
    """
    from textseg.config import load_structured, to_dict

    base = to_dict(config) if isinstance(config, StandInConfig) else dict(config or {})
    merged = {**base, **overrides}
    names = [f.name for f in fields(StandInConfig)]
    unknown = sorted(set(merged) - set(names))
    if unknown:
        raise ConfigError(f"unknown {WORKBENCH_SEGMENTER} config field {unknown[0]!r} (fields: {', '.join(names)})")
    return load_structured(StandInConfig, merged)


def build_workbench_segmenter(config: StandInConfig | Mapping[str, Any] | None = None, **overrides: Any) -> Sam:
    """The stand-in for SAM, made of ``segment_anything``'s own modules at a small size, randomly initialised
    (from torch's global generator).

    Args:
        config: its architecture (default: :class:`StandInConfig`'s defaults).
        **overrides: fields of :class:`StandInConfig` to change.

    Raises:
        UserError: ``segment_anything`` is not installed.
        ConfigError: an unknown field or sizes that do not fit.
    """
    cfg = standin_config(config, **overrides)
    require_segment_anything(f"the {WORKBENCH_SEGMENTER}")
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = cfg.img_size // cfg.patch_size
    dim = cfg.out_chans
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=4.0, out_chans=dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=cfg.use_rel_pos,
            window_size=cfg.window_size),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(cfg.img_size, cfg.img_size), mask_in_chans=cfg.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=dim, mlp_dim=cfg.decoder_mlp_dim,
                                          num_heads=cfg.decoder_heads),
            transformer_dim=dim, iou_head_depth=cfg.iou_head_depth, iou_head_hidden_dim=cfg.iou_head_hidden_dim),
        pixel_mean=list(SAM_PIXEL_MEAN), pixel_std=list(SAM_PIXEL_STD),
    )


def save_workbench_segmenter(model: Sam, path: str | Path, config: StandInConfig | Mapping[str, Any],
                             meta: Mapping[str, Any] | None = None) -> Path:
    """Write the stand-in atomically (:func:`textseg.artifacts.write_artifact`): ``{"kind": WORKBENCH_SEGMENTER,
    "config", "state_dict", "meta"}``, tensors and plain values only; returns the path.

    Args:
        model: the stand-in.
        path: the file (its folder is made).
        config: the architecture it was built with (:func:`build_workbench_segmenter`), stored as a plain dict.
        meta: plain values to keep with it (training settings, scores).
    """
    from textseg.artifacts import write_artifact
    from textseg.config import to_dict

    return write_artifact(path, {
        "kind": WORKBENCH_SEGMENTER, "config": to_dict(standin_config(config)),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta or {})})


def load_workbench_segmenter(path: str | Path | None = None,
                             device: str | torch.device | None = None) -> tuple[Sam, dict[str, Any]]:
    """The trained stand-in (from ``textseg train-promptable``) in eval mode, and its meta.

    Args:
        path: its weights (default: ``runs/workbench-segmenter/final.pt``).
        device: where it goes (default: CUDA when available, else CPU).

    Raises:
        MissingWeightsError: the file does not exist (the message says how to train it).
        UserError: the file is not a stand-in checkpoint.
    """
    from textseg.artifacts import load_state_strict, read_artifact

    path = Path(path) if path is not None else DEFAULT_SEGMENTER_OUT / "final.pt"
    if not path.is_file():
        folder = path.parent if path.name == "final.pt" else DEFAULT_SEGMENTER_OUT
        raise MissingWeightsError(f"{WORKBENCH_SEGMENTER} checkpoint {path} not found: train it with `textseg "
                                  f"train-promptable --out {folder}` (which writes {folder / 'final.pt'})")
    dev = resolve_device(device)
    data = read_artifact(path, f"{WORKBENCH_SEGMENTER} checkpoint", kind=WORKBENCH_SEGMENTER,
                         hint=" (from `textseg train-promptable`); for SAM's own weights use --sam-checkpoint")
    if not isinstance(data.get("config"), Mapping):
        raise UserError(f"{path}: its {WORKBENCH_SEGMENTER} config is missing")
    try:
        model = build_workbench_segmenter(data["config"])
    except ConfigError as err:
        raise UserError(f"{path}: {err}") from None
    load_state_strict(model, data.get("state_dict"), f"{path} does not match its {WORKBENCH_SEGMENTER} config")
    meta = data.get("meta")
    return model.to(dev).eval(), dict(meta) if isinstance(meta, Mapping) else {}


__all__ = ["DEFAULT_SEGMENTER_OUT", "SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "StandInConfig", "WORKBENCH_SEGMENTER",
           "build_workbench_segmenter", "load_workbench_segmenter", "require_segment_anything", "resolve_device",
           "save_workbench_segmenter", "standin_config"]
