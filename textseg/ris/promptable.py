"""Promptable segmentation: positive and negative points in, one mask out, with SAM or a small stand-in.

Three layers:

* loading: :func:`load_sam` (the official SAM checkpoints, :data:`SAM_CHECKPOINT_URLS`) and the
  ``workbench-promptable-segmenter`` (:data:`WORKBENCH_SEGMENTER`): SAM's own modules (``segment_anything``) at a
  small size, trained here on workbench masks by :func:`train_workbench_segmenter`, for when the pretrained
  weights cannot be had;
* :class:`PromptableCore`: batched tensors for any ``Sam``, shared by inference and training. Images are resized
  and padded as ``SamPredictor.set_torch_image`` expects, point coordinates go from the original image's pixels
  to SAM's resized frame with ``ResizeLongestSide.apply_coords_torch``, and all prompt sets of all images go
  through the prompt encoder and the mask decoder as one batch;
* :class:`PromptableSegmenter`: numpy in and out, one image at a time (``set_image`` then ``predict``), like
  ``SamPredictor``.

Labels follow SAM: 1 a positive point, 0 a negative point, -1 padding (ignored by the model).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from textseg.errors import ConfigError, MissingWeightsError, UserError

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from textseg.io import ImageLike

SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

WORKBENCH_SEGMENTER = "workbench-promptable-segmenter"
DEFAULT_SEGMENTER_OUT = Path("runs/workbench-segmenter")
# The stand-in's architecture; stored in its checkpoint, so that loading needs no code change. Sized for CPU
# training on the 96 x 96 workbench scenes (no resize: img_size = 96): a 12 x 12 embedding grid, 48 x 48
# low-resolution masks. The 128-pixel, 192-wide, 6-block variant trains ~3x slower per step on 2 CPU cores and
# gets fewer steps in the same time.
WORKBENCH_SEGMENTER_CONFIG: dict[str, Any] = {
    "img_size": 96,  # SAM's input side (SAM: 1024)
    "patch_size": 8,
    "embed_dim": 128,
    "depth": 4,
    "num_heads": 4,
    "window_size": 0,  # 0: global attention in every block
    "use_rel_pos": True,
    "out_chans": 96,  # the prompt embedding size (SAM: 256)
    "decoder_depth": 2,
    "decoder_mlp_dim": 384,
    "decoder_heads": 4,
    "num_multimask_outputs": 3,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 96,
    "mask_in_chans": 16,
}

# Training of the stand-in: on 2 CPU cores about 0.55 s a step, so the defaults take about 7.5 minutes.
DEFAULT_STEPS = 800
DEFAULT_BATCH_SIZE = 16
DEFAULT_PROMPTS = 4
DEFAULT_LR = 1e-3
DEFAULT_WORKERS = 1
EVAL_START = 10_000_000  # held-out scene indices of the "segmenter" stream: far above any training index
MAX_POSITIVES = 3
MAX_NEGATIVES = 2


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _segment_anything(what: str) -> Any:
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


def _read(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a one-line UserError naming the file otherwise."""
    from textseg.artifacts import load_weights_only

    return load_weights_only(path, f"{what} {path} cannot be read")


def _load_strict(model: torch.nn.Module, state: Any, message: str) -> None:
    from textseg.artifacts import mismatch_detail

    if not (isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise UserError(f"{message} (no state dict of tensors)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{message} ({mismatch_detail(err)})") from None


def load_sam(checkpoint: str | Path | None, model_type: str = "vit_h",
             device: str | torch.device | None = None) -> Sam:
    """An official SAM checkpoint as a ``Sam`` in eval mode.

    The model is built without weights and the file is read with ``torch.load(weights_only=True)`` (a file can
    never run code), then loaded strictly.

    Args:
        checkpoint: the checkpoint file of ``model_type`` (see :data:`SAM_CHECKPOINT_URLS`).
        model_type: ``vit_h``, ``vit_l`` or ``vit_b``.
        device: where the model goes (default: CUDA when available, else CPU).

    Raises:
        UserError: unknown ``model_type``, ``segment_anything`` missing, or the file is not a ``model_type``
            checkpoint (unreadable, other keys or shapes).
        MissingWeightsError: the file does not exist (the message names it and its download URL).
    """
    if model_type not in SAM_CHECKPOINT_URLS:
        raise UserError(f"unknown SAM model type {model_type!r} (use one of {', '.join(SAM_CHECKPOINT_URLS)})")
    sa = _segment_anything("SAM")
    path = Path(checkpoint) if checkpoint is not None else None
    if path is None or not path.is_file():
        raise MissingWeightsError(f"SAM checkpoint {path if path is not None else '(none given)'} not found: "
                                  f"download the {model_type} checkpoint from {SAM_CHECKPOINT_URLS[model_type]}")
    dev = resolve_device(device)
    state = _read(path, "SAM checkpoint")
    sam = sa.sam_model_registry[model_type](checkpoint=None)
    _load_strict(sam, state, f"SAM checkpoint {path} is not a {model_type} checkpoint")
    return sam.to(dev).eval()


def workbench_segmenter_config(**overrides: Any) -> dict[str, Any]:
    """:data:`WORKBENCH_SEGMENTER_CONFIG` with ``overrides``.

    Raises:
        ConfigError: an unknown field, or sizes that do not fit together.
    """
    unknown = sorted(set(overrides) - set(WORKBENCH_SEGMENTER_CONFIG))
    if unknown:
        raise ConfigError(f"unknown {WORKBENCH_SEGMENTER} config field {unknown[0]!r} "
                          f"(fields: {', '.join(WORKBENCH_SEGMENTER_CONFIG)})")
    cfg = {**WORKBENCH_SEGMENTER_CONFIG, **overrides}
    if cfg["img_size"] % cfg["patch_size"]:
        raise ConfigError(f"{WORKBENCH_SEGMENTER} config: img_size {cfg['img_size']} is not a multiple of "
                          f"patch_size {cfg['patch_size']}")
    if cfg["embed_dim"] % cfg["num_heads"] or (cfg["out_chans"] // 2) % cfg["decoder_heads"]:
        raise ConfigError(f"{WORKBENCH_SEGMENTER} config: embed_dim is not divisible by num_heads, or out_chans / 2 "
                          "by decoder_heads")
    return cfg


def build_workbench_segmenter(**config: Any) -> Sam:
    """The stand-in for SAM, made of ``segment_anything``'s own modules at a small size, randomly initialised
    (from torch's global generator).

    Args:
        **config: fields of :data:`WORKBENCH_SEGMENTER_CONFIG` to change.

    Raises:
        UserError: ``segment_anything`` is not installed.
        ConfigError: an unknown field or sizes that do not fit.
    """
    cfg = workbench_segmenter_config(**config)
    _segment_anything(f"the {WORKBENCH_SEGMENTER}")
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = cfg["img_size"] // cfg["patch_size"]
    dim = cfg["out_chans"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=cfg["img_size"], patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"], depth=cfg["depth"],
            num_heads=cfg["num_heads"], mlp_ratio=4.0, out_chans=dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=cfg["use_rel_pos"],
            window_size=cfg["window_size"]),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(cfg["img_size"], cfg["img_size"]),
                                     mask_in_chans=cfg["mask_in_chans"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg["num_multimask_outputs"],
            transformer=TwoWayTransformer(depth=cfg["decoder_depth"], embedding_dim=dim,
                                          mlp_dim=cfg["decoder_mlp_dim"], num_heads=cfg["decoder_heads"]),
            transformer_dim=dim, iou_head_depth=cfg["iou_head_depth"],
            iou_head_hidden_dim=cfg["iou_head_hidden_dim"]),
        pixel_mean=list(SAM_PIXEL_MEAN), pixel_std=list(SAM_PIXEL_STD),
    )


def save_workbench_segmenter(model: Sam, path: str | Path, config: Mapping[str, Any],
                             meta: Mapping[str, Any] | None = None) -> Path:
    """Write the stand-in atomically: ``{"kind": WORKBENCH_SEGMENTER, "config", "state_dict", "meta"}`` (tensors
    and plain values only, read back with ``weights_only=True``); returns the path.

    Args:
        model: the stand-in.
        path: the file (its folder is made).
        config: the fields it was built with (:func:`build_workbench_segmenter`).
        meta: plain values to keep with it (training settings, scores).
    """
    from textseg.io import atomic_open

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"kind": WORKBENCH_SEGMENTER, "config": dict(config),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta or {})}
    with atomic_open(path) as f:
        torch.save(state, f)
    return path


def load_workbench_segmenter(path: str | Path | None = None,
                             device: str | torch.device | None = None) -> tuple[Sam, dict[str, Any]]:
    """The trained stand-in (from :func:`train_workbench_segmenter`) in eval mode, and its meta.

    Args:
        path: its weights (default: ``runs/workbench-segmenter/final.pt``).
        device: where it goes (default: CUDA when available, else CPU).

    Raises:
        MissingWeightsError: the file does not exist (the message says how to train it).
        UserError: the file is not a stand-in checkpoint.
    """
    path = Path(path) if path is not None else DEFAULT_SEGMENTER_OUT / "final.pt"
    if not path.is_file():
        folder = path.parent if path.name == "final.pt" else DEFAULT_SEGMENTER_OUT
        raise MissingWeightsError(f"{WORKBENCH_SEGMENTER} checkpoint {path} not found: train it with `textseg "
                                  f"train-segmenter --out {folder}` (which writes {folder / 'final.pt'})")
    dev = resolve_device(device)
    data = _read(path, f"{WORKBENCH_SEGMENTER} checkpoint")
    if not isinstance(data, Mapping) or data.get("kind") != WORKBENCH_SEGMENTER:
        raise UserError(f"{path} is not a {WORKBENCH_SEGMENTER} checkpoint (from `textseg train-segmenter`); "
                        "for SAM's own weights use --sam-checkpoint")
    if not isinstance(data.get("config"), Mapping):
        raise UserError(f"{path}: its {WORKBENCH_SEGMENTER} config is missing")
    try:
        model = build_workbench_segmenter(**data["config"])
    except ConfigError as err:
        raise UserError(f"{path}: {err}") from None
    _load_strict(model, data.get("state_dict"), f"{path} does not match its {WORKBENCH_SEGMENTER} config")
    meta = data.get("meta")
    return model.to(dev).eval(), dict(meta) if isinstance(meta, Mapping) else {}


# ---------------------------------------------------------------------------------------------------------------
# The tensor core


@dataclass
class Encoded:
    """Image embeddings of a batch of images of one size.

    Attributes:
        embeddings: (B, C, h, w) image-encoder output.
        input_size: (H', W') of the images resized for SAM, before padding.
        original_size: (H, W) of the images given.
    """

    embeddings: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    def __len__(self) -> int:
        return self.embeddings.shape[0]


def _run_mask_decoder(decoder: torch.nn.Module, src: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                      dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` with one image embedding per prompt set (``src``: (N, C, h, w)).

    ``predict_masks`` repeats ONE image's embedding for all its prompt sets; this is the same computation, with
    the modules of ``decoder``, for the prompt sets of many images at once. Returns every mask token's
    low-resolution logits (N, 1 + multimask outputs, 4h, 4w) and IoU predictions (N, 1 + multimask outputs).
    """
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    src = src + dense
    pos_src = image_pe.expand(n, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1: 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                            for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token_out)


class PromptableCore:
    """Batched point prompting of any ``Sam`` (the official models or the stand-in), on the model's device;
    gradients as the caller's context says (training uses it too).

    Args:
        sam: a ``segment_anything`` ``Sam``.
    """

    def __init__(self, sam: Sam) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam = sam
        self.img_size = int(sam.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.img_size)

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(H', W') of an image of ``original_size`` resized for SAM (long side = the encoder's input side)."""
        return tuple(self.transform.get_preprocess_shape(original_size[0], original_size[1], self.img_size))

    def preprocess(self, images: torch.Tensor | np.ndarray | Sequence[np.ndarray],
                   ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """The encoder input of (B, H, W, 3) uint8 images (resized so that the long side is the encoder's input
        side, bilinear and antialiased, then normalised and padded), with the input and original sizes.

        Raises:
            ValueError: not (B, H, W, 3) uint8 images of one size.
        """
        if isinstance(images, (list, tuple)):
            shapes = {tuple(np.shape(im)) for im in images}
            if len(shapes) != 1:
                raise ValueError(f"images of one size are needed to encode them together, got sizes {sorted(shapes)}")
            images = torch.stack([torch.as_tensor(np.asarray(im)) for im in images])
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8 or 0 in x.shape:
            raise ValueError(f"images must be (B, H, W, 3) uint8, got {x.dtype} {tuple(x.shape)}")
        original = (int(x.shape[1]), int(x.shape[2]))
        target = self.input_size(original)
        x = x.to(self.device).permute(0, 3, 1, 2).float()
        if target != original:
            # ResizeLongestSide.apply_image_torch with the size taken from H and W: segment_anything 1.0 reads the
            # batch and channel sizes there instead (facebookresearch/segment-anything#218).
            x = F.interpolate(x, target, mode="bilinear", align_corners=False, antialias=True)
        return self.sam.preprocess(x), target, original

    def encode(self, images: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> Encoded:
        """Image embeddings of (B, H, W, 3) uint8 images of one size (a tensor, an array or a list of arrays), in
        one image-encoder call."""
        x, input_size, original_size = self.preprocess(images)
        return Encoded(self.sam.image_encoder(x), input_size, original_size)

    def decode_flat(self, encoded: Encoded, image_index: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
                    multimask: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits and IoU predictions of N prompt sets, each on one of the encoded images, in one
        prompt-encoder and one mask-decoder call.

        Args:
            encoded: from :meth:`encode`.
            image_index: (N,) which image each prompt set is on.
            coords: (N, K, 2) float xy in original image pixels.
            labels: (N, K) int: 1 positive, 0 negative, -1 padding.
            multimask: the multimask outputs (M = 3) or the single output (M = 1).

        Returns:
            (N, M, 4h, 4w) logits in SAM's padded frame, (N, M) predicted IoUs.
        """
        dev = self.device
        coords = torch.as_tensor(coords, dtype=torch.float32, device=dev)
        labels = torch.as_tensor(labels, device=dev).to(torch.int)
        if coords.ndim != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2] or coords.shape[1] == 0:
            raise ValueError(f"coords must be (N, K, 2) and labels (N, K) with K >= 1, got {tuple(coords.shape)} "
                             f"and {tuple(labels.shape)}")
        coords = self.transform.apply_coords_torch(coords, encoded.original_size)
        pe = self.sam.prompt_encoder
        sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
        src = encoded.embeddings[torch.as_tensor(image_index, device=dev).long()]
        low_res, iou = _run_mask_decoder(self.sam.mask_decoder, src, pe.get_dense_pe(), sparse, dense)
        keep = slice(1, None) if multimask else slice(0, 1)
        return low_res[:, keep], iou[:, keep]

    def upscale(self, encoded: Encoded, low_res: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Logits at the original image size (padding removed) of (N, M, 4h, 4w) low-resolution logits,
        ``chunk`` prompt sets at a time (SAM's frame is 1024 x 1024)."""
        parts = [self.sam.postprocess_masks(low_res[i: i + chunk], encoded.input_size, encoded.original_size)
                 for i in range(0, max(1, low_res.shape[0]), chunk)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _flatten(self, encoded: Encoded, coords: torch.Tensor, labels: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        coords = torch.as_tensor(coords, dtype=torch.float32, device=self.device)
        labels = torch.as_tensor(labels, device=self.device)
        if coords.ndim != 4 or coords.shape[-1] != 2 or labels.shape != coords.shape[:3]:
            raise ValueError(f"coords must be (B, Q, K, 2) and labels (B, Q, K), got {tuple(coords.shape)} and "
                             f"{tuple(labels.shape)}")
        b, q, k = labels.shape
        if b != len(encoded):
            raise ValueError(f"prompts for {b} images, but {len(encoded)} images are encoded")
        index = torch.arange(b, device=self.device).repeat_interleave(q)
        return index, coords.reshape(b * q, k, 2), labels.reshape(b * q, k), b, q

    def _low_res(self, encoded: Encoded, coords: torch.Tensor, labels: torch.Tensor, multimask: bool = True,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode_flat` of (B, Q, K, 2) coords and (B, Q, K) labels: (B, Q, M, 4h, 4w) logits, (B, Q, M)
        predicted IoUs."""
        index, flat_coords, flat_labels, b, q = self._flatten(encoded, coords, labels)
        low_res, iou = self.decode_flat(encoded, index, flat_coords, flat_labels, multimask)
        return low_res.view(b, q, *low_res.shape[1:]), iou.view(b, q, -1)

    def decode_all(self, encoded: Encoded, coords: torch.Tensor, labels: torch.Tensor, multimask: bool = True,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every output mask of Q prompt sets per image.

        Args:
            encoded: B encoded images.
            coords: (B, Q, K, 2) float xy in original image pixels.
            labels: (B, Q, K) int: 1 positive, 0 negative, -1 padding.
            multimask: the multimask outputs (M = 3) or the single output (M = 1).

        Returns:
            masks (B, Q, M, H, W) bool at the original size, predicted IoUs (B, Q, M), low-resolution logits
            (B, Q, M, 4h, 4w).
        """
        low_res, iou = self._low_res(encoded, coords, labels, multimask)
        b, q, m = iou.shape
        masks = self.upscale(encoded, low_res.flatten(0, 1)) > self.sam.mask_threshold
        return masks.view(b, q, m, *masks.shape[-2:]), iou, low_res

    def decode(self, encoded: Encoded, coords: torch.Tensor, labels: torch.Tensor, multimask: bool = True,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One mask per prompt set: with ``multimask`` the output with the highest predicted IoU (as SAM's
        predictor is used), else the single output.

        Args: as :meth:`decode_all`.

        Returns:
            masks (B, Q, H, W) bool at the original size, their predicted IoUs (B, Q), and every output's predicted
            IoU (B, Q, M).
        """
        low_res, iou = self._low_res(encoded, coords, labels, multimask)
        b, q, m = iou.shape
        best = iou.argmax(dim=2)
        chosen = low_res.gather(2, best[:, :, None, None, None].expand(-1, -1, 1, *low_res.shape[-2:]))
        # Upscaling works per channel, so choosing before it gives the same mask for a third of the work.
        masks = self.upscale(encoded, chosen.flatten(0, 1)) > self.sam.mask_threshold
        return masks.view(b, q, *masks.shape[-2:]), iou.gather(2, best[..., None])[..., 0], iou


# ---------------------------------------------------------------------------------------------------------------
# The numpy segmenter


@dataclass
class PromptResult:
    """The mask of one prompt set.

    Attributes:
        mask: (H, W) bool, the output with the highest predicted IoU.
        score: its predicted IoU.
        masks: (M, H, W) bool, every output (M = 3 with multimask output, else 1).
        scores: (M,) float32 predicted IoUs.
    """

    mask: np.ndarray
    score: float
    masks: np.ndarray
    scores: np.ndarray


class PromptableSegmenter:
    """Masks from positive and negative points on one image at a time, like ``SamPredictor``.

    Args:
        sam: a ``segment_anything`` ``Sam`` (official or :func:`build_workbench_segmenter`); it runs where it is.
        name: what the model is called in reports.
        meta: what its checkpoint says of it (training settings, scores).
    """

    def __init__(self, sam: Sam, name: str = "sam", meta: Mapping[str, Any] | None = None) -> None:
        self.core = PromptableCore(sam.eval())
        self.name = name
        self.meta = dict(meta or {})
        self._encoded: Encoded | None = None

    @classmethod
    def from_sam(cls, checkpoint: str | Path | None, model_type: str = "vit_h",
                 device: str | torch.device | None = None) -> PromptableSegmenter:
        """A segmenter over an official SAM checkpoint (see :func:`load_sam`)."""
        return cls(load_sam(checkpoint, model_type, device), name=f"sam-{model_type}",
                   meta={"checkpoint": str(checkpoint), "model_type": model_type})

    @classmethod
    def from_workbench(cls, checkpoint: str | Path | None = None,
                       device: str | torch.device | None = None) -> PromptableSegmenter:
        """A segmenter over the trained stand-in (see :func:`load_workbench_segmenter`)."""
        model, meta = load_workbench_segmenter(checkpoint, device)
        return cls(model, name=WORKBENCH_SEGMENTER, meta=meta)

    @property
    def model(self) -> Sam:
        return self.core.sam

    @property
    def device(self) -> torch.device:
        return self.core.device

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the image set, or None."""
        return None if self._encoded is None else self._encoded.original_size

    @torch.no_grad()
    def set_image(self, image: ImageLike) -> None:
        """Encode the image that the next predictions are on (an (H, W, 3) uint8 array, a PIL image or a path)."""
        from textseg.io import load_image

        arr = load_image(image)
        self._encoded = self.core.encode(torch.from_numpy(arr)[None])

    def reset_image(self) -> None:
        """Forget the image set."""
        self._encoded = None

    def _checked(self, points: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """(Q, K, 2) float points and (Q, K) int labels, validated against the image set."""
        if self._encoded is None:
            raise UserError("no image to predict on: call set_image(image) before predict")
        pts = np.asarray(points, dtype=np.float64)
        try:
            lab = np.asarray(labels, dtype=np.float64)
        except (TypeError, ValueError):
            raise UserError(f"labels are 1 (positive), 0 (negative) or -1 (padding), got {labels!r}") from None
        if pts.ndim != 3 or pts.shape[2] != 2 or pts.shape[0] == 0 or pts.shape[1] == 0:
            raise UserError(f"points must be (K, 2) (or (Q, K, 2)) xy pixel coordinates with K >= 1, got shape "
                            f"{pts.shape[1:] if pts.ndim == 3 else pts.shape}")
        if lab.shape != pts.shape[:2]:
            raise UserError(f"labels must have one entry per point: {pts.shape[1]} points, labels of shape "
                            f"{lab.shape[1:] if lab.ndim == 2 else lab.shape}")
        bad = ~np.isin(lab, (-1, 0, 1))
        if bad.any():
            raise UserError(f"labels are 1 (positive), 0 (negative) or -1 (padding), got {lab[bad][0]:g}")
        lab = lab.astype(np.int64)
        if not (lab == 1).any(axis=1).all():
            raise UserError("every prompt needs a positive point (label 1): negatives alone say where the object "
                            "is not")
        h, w = self._encoded.original_size
        real = lab != -1
        xy = pts[real]
        outside = ~(np.isfinite(xy).all(axis=1) & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0)
                    & (xy[:, 1] < h))
        if outside.any():
            x, y = xy[int(np.argmax(outside))]
            raise UserError(f"points must lie in the {w}x{h} image (0 <= x < {w}, 0 <= y < {h}), got "
                            f"({x:g}, {y:g})")
        return np.where(real[..., None], pts, 0.0), lab

    @torch.no_grad()
    def _predict(self, pts: np.ndarray, lab: np.ndarray, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        masks, scores, _ = self.core.decode_all(self._encoded, torch.from_numpy(pts)[None],
                                                torch.from_numpy(lab)[None], multimask=multimask)
        return masks[0].cpu().numpy(), scores[0].float().cpu().numpy()

    def predict(self, points: np.ndarray | Sequence[Sequence[float]], labels: np.ndarray | Sequence[int],
                multimask: bool = True) -> PromptResult:
        """The mask of one prompt set on the image set.

        Args:
            points: (K, 2) xy in image pixels.
            labels: (K,) 1 (positive) or 0 (negative); -1 marks a padding point (ignored). At least one positive.
            multimask: the three multimask outputs, the mask being the one with the highest predicted IoU (SAM's
                predictor default), or the single output (which SAM advises for several points).

        Raises:
            UserError: no image set, shapes or labels wrong, no positive point, a point outside the image.
        """
        pts, lab = np.asarray(points, dtype=np.float64), np.asarray(labels)
        pts, lab = self._checked(pts[None] if pts.ndim == 2 else pts.reshape(1, *pts.shape),
                                 lab[None] if lab.ndim == 1 else lab.reshape(1, *lab.shape))
        masks, scores = self._predict(pts, lab, multimask)
        best = int(scores[0].argmax())
        return PromptResult(mask=masks[0, best], score=float(scores[0, best]), masks=masks[0], scores=scores[0])

    def predict_batch(self, points: np.ndarray, labels: np.ndarray,
                      multimask: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The masks of Q prompt sets on the image set, in one decoder call.

        Args:
            points: (Q, K, 2) xy in image pixels.
            labels: (Q, K) 1 (positive), 0 (negative) or -1 (padding, so that sets can have fewer points); every
                set needs a positive point.
            multimask: as for :meth:`predict`.

        Returns:
            masks (Q, H, W) bool (each set's output with the highest predicted IoU) and their scores (Q,).

        Raises:
            UserError: no image set, shapes or labels wrong, a set without a positive point, a point outside the
                image.
        """
        pts, lab = self._checked(points, labels)
        masks, scores = self._predict(pts, lab, multimask)
        best = scores.argmax(axis=1)
        rows = np.arange(len(best))
        return masks[rows, best], scores[rows, best]


# ---------------------------------------------------------------------------------------------------------------
# Interior points


def mask_centre_point(mask: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """The (x, y) pixel of a mask farthest from its boundary (pixels outside the image count as outside): where
    one positive point at "the GT mask's centre" goes.

    The distance is that of repeated erosions alternating the 4- and the 8-neighbourhood (an octagonal
    approximation of the Euclidean distance); among the deepest pixels the one nearest to their mean is taken
    (ties: the first in raster order).

    Raises:
        UserError: the mask is not 2-D, or is an empty mask.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise UserError(f"a mask is (H, W), got shape {m.shape}")
    m = m.astype(bool)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        raise UserError("an empty mask has no centre point")
    y0, x0 = ys.min(), xs.min()
    cur = np.pad(m[y0: ys.max() + 1, x0: xs.max() + 1], 1)
    step = 0
    while True:
        nxt = cur[1:-1, 1:-1] & cur[:-2, 1:-1] & cur[2:, 1:-1] & cur[1:-1, :-2] & cur[1:-1, 2:]
        if step % 2:
            nxt &= cur[:-2, :-2] & cur[:-2, 2:] & cur[2:, :-2] & cur[2:, 2:]
        if not nxt.any():
            break
        cur = np.pad(nxt, 1)
        step += 1
    dy, dx = np.nonzero(cur[1:-1, 1:-1])
    i = int(np.argmin((dy - dy.mean()) ** 2 + (dx - dx.mean()) ** 2))
    return float(dx[i] + x0), float(dy[i] + y0)


# ---------------------------------------------------------------------------------------------------------------
# Training the stand-in


def min_object_area(image_size: int) -> int:
    """The fewest visible pixels an object needs to be trained or evaluated on (0.2% of the image)."""
    return max(4, round(0.002 * image_size * image_size))


def sample_prompts(rng: np.random.Generator, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random training prompts of (N, H, W) masks, as SAM is trained.

    Returns:
        one positive point per mask (N, 1, 2), uniform inside it (for the multimask outputs); and 1 to
        :data:`MAX_POSITIVES` positives inside with 0 to :data:`MAX_NEGATIVES` negatives outside, padded with
        label -1 to (N, K, 2) points and (N, K) labels (for the single output).
    """
    n, _, w = masks.shape
    k = MAX_POSITIVES + MAX_NEGATIVES
    one = np.zeros((n, 1, 2), np.float32)
    many = np.zeros((n, k, 2), np.float32)
    labels = np.full((n, k), -1, np.int64)
    for i, m in enumerate(masks):
        inside, outside = np.flatnonzero(m), np.flatnonzero(~m)
        p = inside[rng.integers(len(inside))]
        one[i, 0] = (p % w, p // w)
        n_pos = int(rng.integers(1, MAX_POSITIVES + 1))
        n_neg = int(rng.integers(0, MAX_NEGATIVES + 1)) if len(outside) else 0
        chosen = np.concatenate([inside[rng.integers(len(inside), size=n_pos)],
                                 outside[rng.integers(max(1, len(outside)), size=n_neg)]])
        many[i, : len(chosen)] = np.stack([chosen % w, chosen // w], axis=1)
        labels[i, :n_pos], labels[i, n_pos: len(chosen)] = 1, 0
    return one, many, labels


class SegmenterScenes(torch.utils.data.Dataset):
    """Training sample ``index``: scene ``index`` of the workbench stream "segmenter", up to ``prompts`` of its
    objects' visible masks (objects of at least :func:`min_object_area` pixels, distractors included) and
    :func:`sample_prompts` for them, from a generator seeded by (seed, index): any worker count gives the same data.
    """

    def __init__(self, length: int, *, prompts: int, seed: int = 0, workbench_seed: int = 0,
                 image_size: int = 96) -> None:
        self.length, self.prompts, self.seed = length, prompts, seed
        self.workbench_seed, self.image_size = workbench_seed, image_size
        self._glyphs: Any = None  # one GlyphCache per process, made on first use (so in each worker)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        from textseg.workbench.glyphs import GlyphCache
        from textseg.workbench.scenes import make_scene

        if self._glyphs is None:
            self._glyphs = GlyphCache()
        scene = make_scene(self.workbench_seed, int(index), self.image_size, stream="segmenter", cache=self._glyphs)
        rng = np.random.default_rng([self.seed, int(index)])
        area = min_object_area(self.image_size)
        masks = [o.visible for o in scene.objects if o.visible_area >= area]
        if len(masks) > self.prompts:
            masks = [masks[i] for i in sorted(rng.choice(len(masks), self.prompts, replace=False))]
        masks = np.stack(masks) if masks else np.zeros((0, *scene.image.shape[:2]), bool)
        one, many, labels = sample_prompts(rng, masks)
        return {"image": scene.image, "masks": masks, "one": one, "many": many, "labels": labels}


def collate_scenes(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """A batch of :class:`SegmenterScenes` samples: ``images`` (B, H, W, 3) uint8, the N objects' ``masks``,
    ``one``, ``many``, ``labels`` concatenated, and ``image_index`` (N,)."""
    counts = torch.tensor([len(s["masks"]) for s in samples], dtype=torch.long)
    return {"images": torch.from_numpy(np.stack([s["image"] for s in samples])),
            "image_index": torch.arange(len(samples)).repeat_interleave(counts),
            **{k: torch.from_numpy(np.concatenate([s[k] for s in samples]))
               for k in ("masks", "one", "many", "labels")}}


def _mask_losses(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output (N, M) of (N, M, H, W) logits against (N, H, W) masks: sigmoid focal loss (alpha 0.25,
    gamma 2, mean over pixels), dice loss, and the IoU of the thresholded output (no gradient)."""
    t = target[:, None].to(logits.dtype).expand_as(logits)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - p_t) ** 2).flatten(2).mean(-1)
    dice = 1 - (2 * (p * t).flatten(2).sum(-1) + 1) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    with torch.no_grad():
        hard, tb = logits > 0, t > 0.5
        iou = (hard & tb).flatten(2).sum(-1).float() / (hard | tb).flatten(2).sum(-1).clamp(min=1).float()
    return focal, dice, iou


def segmenter_loss(core: PromptableCore, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM's training loss on a :func:`collate_scenes` batch: 20 x focal + dice on the masks (for the one-point
    multimask prompt the least over its outputs, for the several-point prompt the single output), plus the MSE
    between the predicted and the actual IoU of every output."""
    dev = core.device
    encoded = core.encode(batch["images"])
    index = batch["image_index"].to(dev)
    target = batch["masks"].to(dev)
    ones = torch.ones(index.shape[0], 1, dtype=torch.int, device=dev)
    low_multi, iou_multi = core.decode_flat(encoded, index, batch["one"], ones, multimask=True)
    low_single, iou_single = core.decode_flat(encoded, index, batch["many"], batch["labels"], multimask=False)
    focal_m, dice_m, true_m = _mask_losses(core.upscale(encoded, low_multi), target)
    focal_s, dice_s, true_s = _mask_losses(core.upscale(encoded, low_single), target)
    loss_m = 20 * focal_m + dice_m
    best = loss_m.argmin(dim=1, keepdim=True)
    mask_loss = loss_m.gather(1, best).mean() + (20 * focal_s + dice_s).mean()
    iou_loss = F.mse_loss(iou_multi, true_m) + F.mse_loss(iou_single, true_s)
    loss = mask_loss + iou_loss
    with torch.no_grad():
        focal = focal_m.gather(1, best).mean() + focal_s.mean()
        dice = dice_m.gather(1, best).mean() + dice_s.mean()
    stats = {"loss": float(loss.detach()), "focal": float(focal), "dice": float(dice),
             "iou_mse": float(iou_loss.detach()),
             "one_point_iou": float(true_m.gather(1, iou_multi.argmax(dim=1, keepdim=True)).mean()),
             "points_iou": float(true_s.mean())}
    return loss, stats


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_workbench_segmenter(out: str | Path, *, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
                              prompts: int = DEFAULT_PROMPTS, lr: float = DEFAULT_LR, seed: int = 0,
                              workbench_seed: int = 0, image_size: int = 96, device: str | torch.device | None = None,
                              workers: int = DEFAULT_WORKERS, progress: bool = True, eval_scenes: int = 200,
                              config: Mapping[str, Any] | None = None, weight_decay: float = 0.05,
                              warmup: int | None = None) -> dict[str, Any]:
    """Train the stand-in for SAM on workbench masks with random point prompts, as SAM is trained.

    Sample ``i`` of step ``s`` is scene ``s * batch_size + i`` of the workbench stream "segmenter" (made in the
    data-loader workers); up to ``prompts`` of its objects (any with at least :func:`min_object_area` visible
    pixels, distractors included) each get a one-point prompt for the multimask outputs and a prompt of 1-3
    positives and 0-2 negatives for the single output (:func:`segmenter_loss`). AdamW, linear warm-up, cosine
    decay to lr / 20, gradients clipped at norm 1. The run depends only on ``seed`` (weights, prompts) and
    ``workbench_seed`` (scenes), not on ``workers``.

    Writes ``out/final.pt`` (:func:`save_workbench_segmenter`, the summary in its meta), ``out/metrics.jsonl``
    (one record per step) and ``out/summary.json``.

    Args:
        out: the run folder.
        steps, batch_size, lr: optimisation.
        prompts: objects prompted per image, at most.
        seed: model initialisation and prompt sampling.
        workbench_seed: the workbench scenes.
        image_size: side of the scenes.
        device: where to train (default: CUDA when available, else CPU).
        workers: data-loader processes (0: in this process).
        progress: show a progress bar.
        eval_scenes: held-out scenes for :func:`evaluate_workbench_segmenter` at the end (0: none).
        config: fields of :data:`WORKBENCH_SEGMENTER_CONFIG` to change.
        weight_decay: AdamW weight decay of the weight matrices (not of biases, norms and embeddings).
        warmup: warm-up steps (default: 5% of ``steps``, at most 100).

    Returns:
        The summary: ``name``, ``steps``, ``seconds``, ``final`` (the training losses and IoUs over the last
        steps), ``held_out_one_point`` (:func:`evaluate_workbench_segmenter`), ``settings``, ``weights``.

    Raises:
        UserError: a setting out of range, or the out folder cannot be written.
    """
    from tqdm import tqdm

    from textseg.io import atomic_write_text, check_writable_folder

    for name, value in (("steps", steps), ("batch_size", batch_size), ("prompts", prompts),
                        ("image_size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be >= 1, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"lr must be > 0, got {lr!r}")
    if not isinstance(workers, int) or workers < 0:
        raise UserError(f"workers must be >= 0, got {workers!r}")
    if not isinstance(eval_scenes, int) or eval_scenes < 0:
        raise UserError(f"eval_scenes must be >= 0, got {eval_scenes!r}")
    out = check_writable_folder(out, "out folder")
    dev = resolve_device(device)
    cfg = workbench_segmenter_config(**(config or {}))
    warmup = min(100, max(1, steps // 20)) if warmup is None else max(1, int(warmup))

    torch.manual_seed(seed)
    model = build_workbench_segmenter(**cfg).to(dev).train()
    core = PromptableCore(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay = [p for p in model.parameters() if p.ndim >= 2 and id(p) not in embeddings]
    no_decay = [p for p in model.parameters() if p.ndim < 2 or id(p) in embeddings]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup))
    data = SegmenterScenes(steps * batch_size, prompts=prompts, seed=seed, workbench_seed=workbench_seed,
                           image_size=image_size)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate_scenes, prefetch_factor=4 if workers else None)

    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    atomic_write_text(metrics, "")  # a new run starts a new log
    start = time.perf_counter()
    recent: list[dict[str, float]] = []
    with tqdm(total=steps, desc="train-segmenter", unit="step", disable=not progress, dynamic_ncols=True) as bar, \
            open(metrics, "a", encoding="utf-8") as log:
        for step, batch in enumerate(loader):
            if len(batch["masks"]) == 0:  # no object big enough in the whole batch: nothing to learn from
                stats = {}
            else:
                loss, stats = segmenter_loss(core, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
                opt.step()
                recent = (recent + [stats])[-50:]
            sched.step()
            record = {"step": step + 1, **{k: round(v, 5) for k, v in stats.items()},
                      "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - start, 2)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(1)
            if stats:
                bar.set_postfix(loss=f"{stats['loss']:.3f}", iou=f"{stats['one_point_iou']:.2f}")
    seconds = time.perf_counter() - start
    model.eval()
    held_out = (evaluate_workbench_segmenter(model, scenes=eval_scenes, workbench_seed=workbench_seed,
                                             image_size=image_size, progress=progress) if eval_scenes else {})
    final = {k: round(float(np.mean([s[k] for s in recent])), 5) for k in ("one_point_iou", "points_iou", "loss")} \
        if recent else {}
    summary = {"name": WORKBENCH_SEGMENTER, "steps": steps, "seconds": round(seconds, 1), "final": final,
               "held_out_one_point": held_out,
               "settings": {"steps": steps, "batch_size": batch_size, "prompts": prompts, "lr": lr, "seed": seed,
                            "workbench_seed": workbench_seed, "image_size": image_size,
                            "weight_decay": weight_decay, "warmup": warmup, "workers": workers, "device": str(dev)}}
    weights = save_workbench_segmenter(model, out / "final.pt", cfg, {"summary": summary})
    summary["weights"] = str(weights)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


@torch.no_grad()
def evaluate_workbench_segmenter(model: Sam, *, scenes: int = 200, workbench_seed: int = 0, image_size: int = 96,
                                 start: int = EVAL_START, batch_size: int = 32, progress: bool = False,
                                 ) -> dict[str, Any]:
    """One-point mIoU on held-out workbench scenes (stream "segmenter", indices from ``start``): each object with
    at least :func:`min_object_area` visible pixels is prompted with one positive point at its
    :func:`mask_centre_point`; the mask is the multimask output with the highest predicted IoU.

    Returns:
        ``objects``; ``mIoU`` (percent, every object counting once); ``iou_ge_0.5`` (percent of objects with IoU
        >= 0.5); ``mIoU_best_output`` (percent, the best of the outputs: how good the IoU prediction's choice
        could be); ``scenes`` and ``start``.
    """
    from tqdm import tqdm

    from textseg.workbench.glyphs import GlyphCache
    from textseg.workbench.scenes import make_scene

    core = PromptableCore(model)
    glyphs = GlyphCache()
    area = min_object_area(image_size)
    chosen: list[float] = []
    best: list[float] = []
    for lo in tqdm(range(0, scenes, batch_size), desc="eval-segmenter", unit="batch", disable=not progress):
        batch = [make_scene(workbench_seed, start + i, image_size, stream="segmenter", cache=glyphs)
                 for i in range(lo, min(scenes, lo + batch_size))]
        objects = [(b, o.visible) for b, s in enumerate(batch) for o in s.objects if o.visible_area >= area]
        if not objects:
            continue
        encoded = core.encode(np.stack([s.image for s in batch]))
        coords = torch.tensor([mask_centre_point(m) for _, m in objects], dtype=torch.float32)[:, None]
        low_res, iou_pred = core.decode_flat(encoded, torch.tensor([b for b, _ in objects]), coords,
                                             torch.ones(len(objects), 1, dtype=torch.int), multimask=True)
        pred = core.upscale(encoded, low_res) > model.mask_threshold
        target = torch.from_numpy(np.stack([m for _, m in objects])).to(pred.device)[:, None]
        iou = (pred & target).flatten(2).sum(-1).float() / (pred | target).flatten(2).sum(-1).clamp(min=1).float()
        chosen += iou.gather(1, iou_pred.argmax(1, keepdim=True))[:, 0].tolist()
        best += iou.max(1).values.tolist()
    def pct(values: list[Any]) -> float:
        return round(100 * float(np.mean(values)), 2) if values else float("nan")

    return {"objects": len(chosen), "mIoU": pct(chosen), "iou_ge_0.5": pct([v >= 0.5 for v in chosen]),
            "mIoU_best_output": pct(best), "scenes": scenes, "start": start}


__all__ = [
    "DEFAULT_SEGMENTER_OUT", "EVAL_START", "Encoded", "PromptResult", "PromptableCore", "PromptableSegmenter",
    "SAM_CHECKPOINT_URLS", "SegmenterScenes", "WORKBENCH_SEGMENTER", "WORKBENCH_SEGMENTER_CONFIG",
    "build_workbench_segmenter", "collate_scenes", "evaluate_workbench_segmenter", "load_sam",
    "load_workbench_segmenter", "mask_centre_point", "min_object_area", "resolve_device", "sample_prompts",
    "save_workbench_segmenter", "segmenter_loss", "train_workbench_segmenter", "workbench_segmenter_config",
]
