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
        x = torch.from_numpy(arr).to(self.device).permute(2, 0, 1)[None].float().div(255)
        if short_side:
            h, w = arr.shape[:2]
            s = short_side / min(h, w)
            x = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                              align_corners=False, antialias=s < 1)
        return arr, x

    @torch.no_grad()
    def _regions(self, crop: torch.Tensor, pixel_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Group a (1, 3, h, w) crop and embed its regions: the group map at ``pixel_size`` (default (h, w)) and
        (K, E) normalised region embeddings."""
        h, w = crop.shape[-2:]
        p = self.model.patch_size
        sized = F.interpolate(crop, size=(max(p, round(h / p) * p), max(p, round(w / p) * p)), mode="bilinear",
                              align_corners=False) if (h % p or w % p) else crop
        groups = self.model.group(sized, pixel_size=pixel_size or (h, w))
        out = self.model(sized, groups.region_masks)
        return groups.pixels[0], F.normalize(out.regions[0].float(), dim=-1)

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
        p = self._protocol(protocol, overrides)
        classes = [str(c) for c in classes]
        if not classes or any(not c.strip() for c in classes):
            raise UserError("the class list is empty or contains an empty name")
        names = classes + list(p.background_classes)
        text = self.text.encode_classes(names, p.templates).to(self.device)
        arr, x = self._prepare(image, p.short_side)
        _, _, h, w = x.shape
        scale = self.model.logit_scale.float()
        probs = torch.zeros(len(names) + (p.bg_score is not None), h, w, device=self.device)
        count = torch.zeros(1, h, w, device=self.device)
        win_h, win_w = (min(p.window, h), min(p.window, w)) if p.window else (h, w)
        for y0 in window_starts(h, win_h, p.stride or h):
            for x0 in window_starts(w, win_w, p.stride or w):
                groups, regions = self._regions(x[..., y0: y0 + win_h, x0: x0 + win_w])
                sims = regions @ text.T
                if p.bg_score is not None:
                    sims = torch.cat([sims, torch.full_like(sims[:, :1], float(p.bg_score))], 1)
                region_probs = (scale * sims).softmax(-1)  # (K, C')
                probs[:, y0: y0 + win_h, x0: x0 + win_w] += region_probs[groups].permute(2, 0, 1)
                count[:, y0: y0 + win_h, x0: x0 + win_w] += 1
        probs = F.interpolate((probs / count)[None], size=arr.shape[:2], mode="bilinear", align_corners=False)[0]
        c = len(classes)
        if p.background is None:
            labels = probs[:c].argmax(0) + 1
        else:
            best_p, best = probs.max(0)
            labels = best + 1
            labels[best >= c] = 0
            if p.background == "threshold":
                labels[best_p < p.bg_threshold] = 0
        return SegmentationResult(labels=labels.cpu().numpy().astype(np.int64), classes=["background", *classes],
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
