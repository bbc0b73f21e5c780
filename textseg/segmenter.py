"""Open-vocabulary semantic segmentation and region-level referring with a :class:`TextSegModel` (groups → labels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from textseg.config import Protocol, load_protocol
from textseg.errors import UserError
from textseg.io import ImageLike, load_image
from textseg.model import TextSegModel
from textseg.text import TextEncoder


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of sliding windows that cover [0, length), the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def resized_size(size: tuple[int, int], short_side: int | None) -> tuple[int, int]:
    """(h, w) after resizing an image of ``size`` so that its short side is ``short_side`` (None: unchanged)."""
    h, w = size
    if not short_side:
        return h, w
    s = short_side / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


@dataclass(eq=False)
class _CropPlan:
    """One image of a :meth:`Segmenter.predict_batch` call: where its crops are, and (while some are pending) its
    resized tensor and probability accumulators on the device."""

    index: int
    window: tuple[int, int]
    starts: list[tuple[int, int]]
    left: int = 0
    image: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    count: torch.Tensor | None = None

    @classmethod
    def make(cls, index: int, size: tuple[int, int], p: Protocol) -> "_CropPlan":
        h, w = resized_size(size, p.short_side)
        win_h, win_w = (min(p.window, h), min(p.window, w)) if p.window else (h, w)
        starts = [(y0, x0) for y0 in window_starts(h, win_h, p.stride or h)
                  for x0 in window_starts(w, win_w, p.stride or w)]
        return cls(index, (win_h, win_w), starts, left=len(starts))

    def open(self, image: torch.Tensor, channels: int) -> None:
        _, _, h, w = image.shape
        self.image = image
        self.probs = torch.zeros(channels, h, w, device=image.device)
        self.count = torch.zeros(1, h, w, device=image.device)

    def close(self) -> None:
        self.image = self.probs = self.count = None


@dataclass
class SegmentationResult:
    """Result of :meth:`Segmenter.predict`.

    Attributes:
        labels: (H, W) int64; 0 = background, i + 1 = ``classes[i]`` of the call.
        classes: ``["background", *classes]``, so ``classes[labels]`` names every pixel.
        probs: (C', H, W) float32 class probabilities (foreground classes, then background classes, then the
            constant background score if one was given), if asked for.
    """

    labels: np.ndarray
    classes: list[str]
    probs: np.ndarray | None = None

    def pixel_share(self) -> dict[str, float]:
        """Share of the image's pixels per class name (classes with no pixel left out)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes))
        total = max(1, self.labels.size)
        return {self.classes[i]: float(c) / total for i, c in enumerate(counts) if c > 0}


@dataclass
class ReferringResult:
    """Result of :meth:`Segmenter.predict_referring`: the best-matching region.

    Attributes:
        mask: (H, W) bool mask of the chosen region.
        response: (H, W) float32 region-text cosine similarity painted over each region.
        score: cosine similarity of the chosen region.
    """

    mask: np.ndarray
    response: np.ndarray
    score: float
    region_scores: list[float] = field(default_factory=list)


class Segmenter:
    """Segments images into any list of classes with region-level CLIP recognition.

    Args:
        model: a model from :func:`textseg.create_model`.
        protocol: the default inference settings: a :class:`~textseg.config.Protocol`, a preset name
            (``groupvit``, ``sclip``, ``workbench``) or None for the defaults (short side 448, 80 templates).
        text_cache_dir: disk cache of class embeddings; ``None`` for the default folder, ``False`` for none.
        **overrides: protocol fields to change, e.g. ``templates="single"``.
    """

    def __init__(self, model: TextSegModel, protocol: Protocol | str | None = None, *,
                 text_cache_dir: str | Path | None | bool = None, **overrides: Any):
        self.model = model.eval()
        protocol = load_protocol(protocol) if isinstance(protocol, str) else protocol or Protocol()
        self.protocol = protocol.replace(**overrides) if overrides else protocol
        self.text = TextEncoder(model.clip, model.tokenizer, cache_dir=text_cache_dir)
        self.device = next(model.parameters()).device

    def _protocol(self, protocol: Protocol | None, overrides: dict[str, Any]) -> Protocol:
        p = protocol or self.protocol
        return p.replace(**overrides) if overrides else p

    def _prepare(self, image: ImageLike, short_side: int | None) -> tuple[np.ndarray, torch.Tensor]:
        arr = load_image(image)
        return arr, self._to_device(arr, short_side)

    def _to_device(self, arr: np.ndarray, short_side: int | None) -> torch.Tensor:
        """An (H, W, 3) uint8 array as a (1, 3, h, w) float tensor in [0, 1] on the model's device, resized so that
        its short side is ``short_side`` (see :func:`resized_size`)."""
        x = torch.from_numpy(arr).to(self.device).permute(2, 0, 1)[None].float().div(255)
        size = resized_size(arr.shape[:2], short_side)
        if size != tuple(arr.shape[:2]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                              antialias=min(size) < min(arr.shape[:2]))
        return x

    @torch.no_grad()
    def _regions_batch(self, crops: torch.Tensor, pixel_size: tuple[int, int] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Group a (B, 3, h, w) batch of crops and embed their regions in one pass of each tower: (B, H, W) group
        maps at ``pixel_size`` (default (h, w)) and (B, K, E) normalised region embeddings, K the most groups of
        any crop (a crop's padding regions are never named by its group map)."""
        h, w = crops.shape[-2:]
        p = self.model.patch_size
        sized = F.interpolate(crops, size=(max(p, round(h / p) * p), max(p, round(w / p) * p)), mode="bilinear",
                              align_corners=False) if (h % p or w % p) else crops
        groups = self.model.group(sized, pixel_size=pixel_size or (h, w))
        out = self.model(sized, groups.region_masks)
        return groups.pixels, F.normalize(out.regions.float(), dim=-1)

    def _regions(self, crop: torch.Tensor, pixel_size: tuple[int, int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_regions_batch` of one (1, 3, h, w) crop: its (H, W) group map and (K, E) region embeddings."""
        pixels, regions = self._regions_batch(crop, pixel_size)
        return pixels[0], regions[0]

    @torch.no_grad()
    def predict(self, image: ImageLike, classes: Sequence[str], protocol: Protocol | None = None, *,
                return_probs: bool = False, **overrides: Any) -> SegmentationResult:
        """Label every pixel with one of ``classes`` or background.

        Args:
            image: path, PIL image or (H, W, 3) array.
            classes: class names (any vocabulary).
            protocol: inference settings (:class:`~textseg.config.Protocol`); defaults to the segmenter's.
                ``background``: ``"threshold"`` (a pixel whose best probability is below ``bg_threshold``, or whose
                best class is a background class, is background), ``"classes"`` (background classes only) or
                None (every pixel gets a class); ``bg_score``: a constant background cosine similarity scored like
                one more background class (TCL); ``window``/``stride``: sliding windows at the resized scale.
            return_probs: keep the (C', H, W) probability maps in the result.
            **overrides: protocol fields to change for this call, e.g. ``short_side=None``.

        Returns:
            A :class:`SegmentationResult` at the input image's size.
        """
        return self.predict_batch([image], classes, protocol, return_probs=return_probs, **overrides)[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageLike], classes: Sequence[str], protocol: Protocol | None = None, *,
                      batch_size: int = 32, return_probs: bool = False, **overrides: Any) -> list[SegmentationResult]:
        """:meth:`predict` for many images at once, with the same results as one call per image.

        Each image is resized per the protocol and cut into its sliding windows (or kept whole). Crops of the same
        size, from one image or several, go through the model together, ``batch_size`` at a time: one grouping
        and one region pass per chunk. The class text is encoded once per call, probabilities are accumulated on
        the model's device, and an image's device tensors are freed as soon as its last crop is done, so device
        memory is bounded by ``batch_size`` crops whatever the number of images. The decoded images and the
        results of the call stay on the host: feed a large collection in slices (as ``textseg segment`` does).

        Args:
            images: paths, PIL images or (H, W, 3) arrays; sizes may differ.
            classes, protocol, return_probs, overrides: as for :meth:`predict`.
            batch_size: the most crops per model call.

        Returns:
            One :class:`SegmentationResult` per image, in the order given.
        """
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        p = self._protocol(protocol, overrides)
        classes = [str(c) for c in classes]
        if not classes or any(not c.strip() for c in classes):
            raise UserError("the class list is empty or contains an empty name")
        names = classes + list(p.background_classes)
        text = self.text.encode_classes(names, p.templates).to(self.device)
        arrays = [load_image(im) for im in images]
        plans = [_CropPlan.make(i, a.shape[:2], p) for i, a in enumerate(arrays)]
        by_size: dict[tuple[int, int], list[_CropPlan]] = {}
        for plan in plans:
            by_size.setdefault(plan.window, []).append(plan)
        results: list[SegmentationResult | None] = [None] * len(arrays)
        channels = len(names) + (p.bg_score is not None)
        for (win_h, win_w), same_size in by_size.items():
            crops = [(plan, y0, x0) for plan in same_size for y0, x0 in plan.starts]
            for chunk in (crops[i: i + batch_size] for i in range(0, len(crops), batch_size)):
                for plan, _, _ in chunk:
                    if plan.image is None:  # the first crop of this image: resize it and open its accumulators
                        plan.open(self._to_device(arrays[plan.index], p.short_side), channels)
                batch = torch.cat([plan.image[..., y0: y0 + win_h, x0: x0 + win_w] for plan, y0, x0 in chunk])
                pixels, regions = self._regions_batch(batch)
                sims = regions @ text.T  # (B, K, C)
                if p.bg_score is not None:
                    sims = torch.cat([sims, torch.full_like(sims[..., :1], float(p.bg_score))], -1)
                region_probs = (self.model.logit_scale.float() * sims).softmax(-1)  # (B, K, C')
                for b, (plan, y0, x0) in enumerate(chunk):
                    plan.probs[:, y0: y0 + win_h, x0: x0 + win_w] += region_probs[b].T[:, pixels[b]]
                    plan.count[:, y0: y0 + win_h, x0: x0 + win_w] += 1
                    plan.left -= 1
                    if plan.left == 0:
                        results[plan.index] = self._finish(plan, arrays[plan.index].shape[:2], len(classes),
                                                           ["background", *classes], p, return_probs)
        return results  # type: ignore[return-value]

    @staticmethod
    def _finish(plan: "_CropPlan", size: tuple[int, int], c: int, names: list[str], p: Protocol,
                return_probs: bool) -> SegmentationResult:
        """Average an image's window probabilities, bring them to the input size and label the pixels."""
        probs = F.interpolate((plan.probs / plan.count)[None], size=size, mode="bilinear", align_corners=False)[0]
        plan.close()
        if p.background is None:
            labels = probs[:c].argmax(0) + 1
        else:
            best_p, best = probs.max(0)
            labels = best + 1
            labels[best >= c] = 0
            if p.background == "threshold":
                labels[best_p < p.bg_threshold] = 0
        return SegmentationResult(labels=labels.cpu().numpy().astype(np.int64), classes=names,
                                  probs=probs.cpu().numpy() if return_probs else None)

    @torch.no_grad()
    def _similarities(self, image: ImageLike, names: Sequence[str], templates: str | Sequence[str],
                      short_side: int | None) -> tuple[np.ndarray, torch.Tensor]:
        text = self.text.encode_classes(list(names), templates).to(self.device)
        arr, x = self._prepare(image, short_side)
        groups, regions = self._regions(x, pixel_size=arr.shape[:2])
        return groups.cpu().numpy(), (regions @ text.T).cpu()

    @torch.no_grad()
    def region_similarities(self, image: ImageLike, names: Sequence[str], protocol: Protocol | None = None,
                            **overrides: Any) -> tuple[np.ndarray, torch.Tensor]:
        """Group the whole image once (no sliding window) and score every region against every name.

        Returns:
            (H, W) group map at the input size and (K, len(names)) cosine similarities of region k to name c.
        """
        p = self._protocol(protocol, overrides)
        return self._similarities(image, names, p.templates, p.short_side)

    @torch.no_grad()
    def predict_referring(self, image: ImageLike, sentence: str, protocol: Protocol | None = None,
                          **overrides: Any) -> ReferringResult:
        """Pick the region whose embedding best matches a referring sentence (a zero-shot region baseline)."""
        if not sentence or not sentence.strip():
            raise UserError("the referring sentence is empty")
        p = self._protocol(protocol, overrides)
        groups, sims = self._similarities(image, [sentence], ("{}",), p.short_side)
        scores = sims[:, 0]
        best = int(scores.argmax())
        return ReferringResult(mask=groups == best, response=scores.numpy()[groups].astype(np.float32),
                               score=float(scores[best]), region_scores=[float(v) for v in scores])
