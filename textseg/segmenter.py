"""Open-vocabulary semantic segmentation and region-level referring with a :class:`TextSegModel`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from textseg.errors import UserError
from textseg.model import TextSegModel
from textseg.text import TextEncoder

ImageLike = Image.Image | np.ndarray | str | Path


def load_image(image: ImageLike) -> np.ndarray:
    """Read an image (path, PIL image or array) as an (H, W, 3) uint8 RGB array; raises UserError if unreadable."""
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(f"cannot read image {image}: {err.__class__.__name__}") from None
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))  # a writable copy: torch refuses read-only buffers
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UserError(f"expected an (H, W, 3) image array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255 if arr.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of sliding windows that cover [0, length), the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


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
        templates: default prompt templates (``"single"``, ``"imagenet80"`` or a list).
        text_cache_dir: disk cache of class embeddings; ``None`` for the default folder, ``False`` for none.
    """

    def __init__(self, model: TextSegModel, templates: str | Sequence[str] = "imagenet80",
                 text_cache_dir: str | Path | None | bool = None):
        self.model = model.eval()
        self.templates = templates
        self.text = TextEncoder(model.clip, model.tokenizer, cache_dir=text_cache_dir)
        self.device = next(model.parameters()).device

    def _prepare(self, image: ImageLike, short_side: int | None) -> tuple[np.ndarray, torch.Tensor]:
        arr = load_image(image)
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float().div(255).to(self.device)
        if short_side:
            h, w = arr.shape[:2]
            s = short_side / min(h, w)
            x = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                              align_corners=False, antialias=s < 1)
        return arr, x

    @torch.no_grad()
    def _regions(self, crop: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Group a (1, 3, h, w) crop and embed its regions: (h, w) group map and (K, E) normalised embeddings."""
        h, w = crop.shape[-2:]
        p = self.model.patch_size
        sized = F.interpolate(crop, size=(max(p, round(h / p) * p), max(p, round(w / p) * p)), mode="bilinear",
                              align_corners=False) if (h % p or w % p) else crop
        groups = self.model.group(sized)
        out = self.model(sized, self.model.region_masks(groups, sized))
        regions = F.normalize(out.regions[0].float(), dim=-1)
        g = torch.from_numpy(groups[0])[None, None].float()
        g = F.interpolate(g, size=(h, w), mode="nearest")[0, 0].long().numpy() if sized is not crop else groups[0]
        return g, regions

    @torch.no_grad()
    def predict(self, image: ImageLike, classes: Sequence[str], *, background: str | None = "threshold",
                bg_threshold: float = 0.5, background_classes: Sequence[str] = (),
                templates: str | Sequence[str] | None = None, short_side: int | None = 448,
                window: int | None = None, stride: int | None = None, bg_score: float | None = None,
                return_probs: bool = False) -> SegmentationResult:
        """Label every pixel with one of ``classes`` or background.

        Args:
            image: path, PIL image or (H, W, 3) array.
            classes: class names (any vocabulary).
            background: ``"threshold"`` (a pixel whose best probability is below ``bg_threshold``, or whose best
                class is a background class, is background), ``"classes"`` (background classes only) or ``None``
                (every pixel gets a class).
            bg_threshold: probability threshold of ``"threshold"``.
            background_classes: extra names scored like classes and mapped to background (e.g. sky, wall).
            templates: prompt templates; defaults to the segmenter's.
            short_side: resize so the short side has this length (``None`` keeps the size).
            window, stride: sliding-window inference at the resized scale (e.g. 448 / 224); ``None`` runs the
                whole image at once.
            bg_score: a constant background cosine similarity, scored like one more background class (TCL's
                constant background score): a region whose best class similarity is below it is background.
            return_probs: keep the (C', H, W) probability maps in the result.

        Returns:
            A :class:`SegmentationResult` at the input image's size.
        """
        classes = [str(c) for c in classes]
        if not classes or any(not c.strip() for c in classes):
            raise UserError("the class list is empty or contains an empty name")
        if background not in ("threshold", "classes", None):
            raise UserError(f"background must be 'threshold', 'classes' or None, got {background!r}")
        if (window is None) != (stride is None) or (window is not None and (window <= 0 or stride <= 0)):
            raise UserError("window and stride must be given together, both positive")
        if bg_score is not None and background is None:
            raise UserError("bg_score needs a background mode ('threshold' or 'classes')")
        names = classes + list(background_classes)
        text = self.text.encode_classes(names, templates or self.templates).to(self.device)
        arr, x = self._prepare(image, short_side)
        _, _, h, w = x.shape
        scale = float(self.model.logit_scale)
        probs = torch.zeros(len(names) + (bg_score is not None), h, w)
        count = torch.zeros(1, h, w)
        win_h, win_w = (min(window, h), min(window, w)) if window else (h, w)
        for y0 in window_starts(h, win_h, stride or h):
            for x0 in window_starts(w, win_w, stride or w):
                groups, regions = self._regions(x[..., y0: y0 + win_h, x0: x0 + win_w])
                sims = regions @ text.T
                if bg_score is not None:
                    sims = torch.cat([sims, torch.full_like(sims[:, :1], float(bg_score))], 1)
                region_probs = (scale * sims).softmax(-1).cpu()  # (K, C')
                probs[:, y0: y0 + win_h, x0: x0 + win_w] += region_probs[torch.from_numpy(groups)].permute(2, 0, 1)
                count[:, y0: y0 + win_h, x0: x0 + win_w] += 1
        probs = F.interpolate((probs / count)[None], size=arr.shape[:2], mode="bilinear", align_corners=False)[0]
        c = len(classes)
        if background is None:
            labels = probs[:c].argmax(0) + 1
        else:
            best_p, best = probs.max(0)
            labels = best + 1
            labels[best >= c] = 0
            if background == "threshold":
                labels[best_p < bg_threshold] = 0
        return SegmentationResult(labels=labels.numpy().astype(np.int64), classes=["background", *classes],
                                  probs=probs.numpy() if return_probs else None)

    @torch.no_grad()
    def region_similarities(self, image: ImageLike, names: Sequence[str], *, templates: str | Sequence[str] | None = None,
                            short_side: int | None = 448) -> tuple[np.ndarray, torch.Tensor]:
        """Group the whole image once and score every region against every name.

        Returns:
            (H, W) group map at the input size and (K, len(names)) cosine similarities of region k to name c.
        """
        text = self.text.encode_classes(list(names), templates or self.templates).to(self.device)
        arr, x = self._prepare(image, short_side)
        groups, regions = self._regions(x)
        g = torch.from_numpy(groups)[None, None].float()
        groups = F.interpolate(g, size=arr.shape[:2], mode="nearest")[0, 0].long().numpy()
        return groups, (regions @ text.T).cpu()

    @torch.no_grad()
    def predict_referring(self, image: ImageLike, sentence: str, *, short_side: int | None = 448) -> ReferringResult:
        """Pick the region whose embedding best matches a referring sentence (a zero-shot region baseline)."""
        if not sentence or not sentence.strip():
            raise UserError("the referring sentence is empty")
        groups, sims = self.region_similarities(image, [sentence], templates=("{}",), short_side=short_side)
        scores = sims[:, 0]
        best = int(scores.argmax())
        return ReferringResult(mask=groups == best, response=scores[torch.from_numpy(groups)].numpy().astype(np.float32),
                               score=float(scores[best]), region_scores=[float(v) for v in scores])
