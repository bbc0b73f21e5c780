"""Promptable segmentation: positive and negative points in, one mask out, with SAM or a small stand-in.

Three layers:

* loading: :func:`load_sam` (the official SAM checkpoints, :data:`SAM_CHECKPOINT_URLS`) and the
  ``workbench-promptable-segmenter`` (:data:`WORKBENCH_SEGMENTER`, :mod:`textseg.ris.standin`): SAM's own modules
  (``segment_anything``) at a small size, trained on workbench masks by ``textseg train-promptable``
  (:mod:`textseg.train.promptable`), for when the pretrained weights cannot be had;
* :class:`PromptableCore`: batched tensors for any ``Sam``, shared by inference and training. Images are resized
  and padded as ``SamPredictor.set_torch_image`` expects, point coordinates go from the original image's pixels
  to SAM's resized frame with ``ResizeLongestSide.apply_coords_torch``, and all prompt sets of all images go
  through the prompt encoder and the mask decoder as one batch;
* :class:`PromptableSegmenter`: numpy in and out, one image at a time (``set_image`` then ``predict``), like
  ``SamPredictor``.

Labels follow SAM: 1 a positive point, 0 a negative point, -1 padding (ignored by the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from textseg.errors import MissingWeightsError, UserError
from textseg.ris.standin import (DEFAULT_SEGMENTER_OUT, SAM_PIXEL_MEAN, SAM_PIXEL_STD, WORKBENCH_SEGMENTER,
                                 StandInConfig, build_workbench_segmenter, load_workbench_segmenter,
                                 require_segment_anything, resolve_device, save_workbench_segmenter, standin_config)

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from textseg.io import ImageLike

SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_sam(checkpoint: str | Path | None, model_type: str = "vit_h",
             device: str | torch.device | None = None) -> Sam:
    """An official SAM checkpoint as a ``Sam`` in eval mode.

    The model is built without weights and the file is read with ``torch.load(weights_only=True)`` (a file can
    never run code, :func:`textseg.artifacts.read_artifact`), then loaded strictly.

    Args:
        checkpoint: the checkpoint file of ``model_type`` (see :data:`SAM_CHECKPOINT_URLS`).
        model_type: ``vit_h``, ``vit_l`` or ``vit_b``.
        device: where the model goes (default: CUDA when available, else CPU).

    Raises:
        UserError: unknown ``model_type``, ``segment_anything`` missing, or the file is not a ``model_type``
            checkpoint (unreadable, other keys or shapes).
        MissingWeightsError: the file does not exist (the message names it and its download URL).
    """
    from textseg.artifacts import load_state_strict, read_artifact

    if model_type not in SAM_CHECKPOINT_URLS:
        raise UserError(f"unknown SAM model type {model_type!r} (use one of {', '.join(SAM_CHECKPOINT_URLS)})")
    sa = require_segment_anything("SAM")
    path = Path(checkpoint) if checkpoint is not None else None
    if path is None or not path.is_file():
        raise MissingWeightsError(f"SAM checkpoint {path if path is not None else '(none given)'} not found: "
                                  f"download the {model_type} checkpoint from {SAM_CHECKPOINT_URLS[model_type]}")
    dev = resolve_device(device)
    state = read_artifact(path, "SAM checkpoint")
    sam = sa.sam_model_registry[model_type](checkpoint=None)
    load_state_strict(sam, state, f"SAM checkpoint {path} is not a {model_type} checkpoint")
    return sam.to(dev).eval()


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


__all__ = [
    "DEFAULT_SEGMENTER_OUT", "Encoded", "PromptResult", "PromptableCore", "PromptableSegmenter", "SAM_CHECKPOINT_URLS",
    "SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "StandInConfig", "WORKBENCH_SEGMENTER", "build_workbench_segmenter", "load_sam",
    "load_workbench_segmenter", "mask_centre_point", "require_segment_anything", "resolve_device",
    "save_workbench_segmenter", "standin_config",
]
