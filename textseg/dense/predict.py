"""Per-pixel labelling with a dense mode of the CLIP (SCLIP, NACLIP, ProxyCLIP), as their public code computes it,
with every window of every image of a call batched through the model.

Per image: resize per the protocol; cut into windows (zero-padded to ``pad_multiple``); per window, patch embeddings
(:func:`~textseg.dense.attention.dense_patch_embeddings`) against the text give (Q, h, w) cosine logits, bilinearly
brought to the window's size and averaged where windows overlap; then to the input size, PAMR, ``logit_scale`` ×
logits, a softmax over all names, each label's best name (:func:`~textseg.vocab.label_scores`), optionally the group
vote, the area filter and the background rule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from textseg.config import Protocol
from textseg.dense.attention import PIXEL_MEAN_255, PIXEL_STD_255, dense_patch_embeddings
from textseg.dense.pamr import pamr
from textseg.errors import UserError
from textseg.io import label_dtype
from textseg.labels import SegmentationResult, bilinear_taps, window_starts
from textseg.pipeline import RegionPipeline, resized_size
from textseg.region import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from textseg.vocab import Vocabulary, label_scores

_log = logging.getLogger(__name__)

#: Above this many (names × H × W) values at the input size, an image is scored at the resized scale and labelled
#: at the input size a band of rows at a time (:meth:`DensePredictor.finish_large`): 2^27 floats is 512 MB.
FULL_SIZE_ELEMENTS = 1 << 27

def channel_stats(mean: Sequence[float], std: Sequence[float], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel statistics as (1, 3, 1, 1) tensors on ``device``."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


def centred_padding(h: int, w: int, multiple: int | None) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that makes h and w multiples of ``multiple``, split evenly (the extra
    pixel right / bottom); none when ``multiple`` is None."""
    if not multiple:
        return 0, 0, 0, 0
    dw, dh = -w % multiple, -h % multiple
    return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2


@dataclass(eq=False)
class DenseImage:
    """One image of a call: its normalised input at the resized scale, its windows and the logits gathered so far."""

    index: int
    size: tuple[int, int]
    pixels: torch.Tensor
    window: tuple[int, int]
    starts: list[tuple[int, int]]
    left: int = 0
    logits: torch.Tensor | None = None
    count: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def add(self, y0: int, x0: int, logits: torch.Tensor) -> None:
        """Add one window's (Q, h, w) logits."""
        if self.logits is None:
            self.logits = logits.new_zeros((logits.shape[0], *self.pixels.shape[-2:]))
            self.count = logits.new_zeros(self.pixels.shape[-2:])
        h, w = logits.shape[-2:]
        self.logits[:, y0: y0 + h, x0: x0 + w] += logits
        self.count[y0: y0 + h, x0: x0 + w] += 1
        self.left -= 1


class DensePredictor:
    """The dense modes' labelling over a :class:`~textseg.pipeline.RegionPipeline` (its model, device, text cache).

    Args:
        pipeline: the segmenter's pipeline; its model's ``config.dense.mode`` must be set.
    """

    def __init__(self, pipeline: RegionPipeline):
        self.pipeline = pipeline
        self.config = pipeline.model.config.dense
        if self.config.mode is None:
            raise ValueError(f"model {pipeline.model.config.name} has no dense mode")

    def normalise(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] → the methods' normalised input."""
        mean, std = channel_stats(PIXEL_MEAN_255, PIXEL_STD_255, images01.device)
        return (images01 * 255 - mean) / std

    def denormalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalise`: images in [0, 1]."""
        mean, std = channel_stats(PIXEL_MEAN_255, PIXEL_STD_255, pixels.device)
        return (pixels * std + mean) / 255

    def proxy_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The grouping backbone's (B, h, w, C) features of normalised crops (their CLIP normalisation undone, as
        ProxyCLIP does it: with CLIP's statistics in [0, 1] units)."""
        mean, std = channel_stats(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, pixels.device)
        return self.pipeline.model.grouper.backbone(pixels * std + mean)

    def window_logits(self, crops: torch.Tensor, text: torch.Tensor, pad_multiple: int | None) -> torch.Tensor:
        """(N, Q, h, w) cosine logits of normalised (N, 3, h, w) crops, at the crops' size."""
        h, w = crops.shape[-2:]
        left, right, top, bottom = centred_padding(h, w, pad_multiple)
        if left or right or top or bottom:
            crops = F.pad(crops, (left, right, top, bottom))
        cfg = self.config
        proxy = self.proxy_features(crops) if cfg.mode == "proxyclip" else None
        emb = dense_patch_embeddings(self.pipeline.model.clip.visual, crops, cfg.mode, gaussian_std=cfg.gaussian_std,
                                     proxy=proxy, beta=cfg.beta, gamma=cfg.gamma)
        logits = (emb @ text.T).permute(0, 3, 1, 2)
        logits = F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        return logits[:, :, top: top + h, left: left + w]

    @torch.no_grad()
    def predict_batch(self, arrays: Sequence[np.ndarray], vocab: Vocabulary, protocol: Protocol, *,
                      batch_size: int = 32, return_scores: bool = False, return_probs: bool = False
                      ) -> list[SegmentationResult]:
        """Label (H, W, 3) uint8 images; windows of one size from all images go through the model together,
        ``batch_size`` at a time. See the module docstring for the steps."""
        p = protocol
        label_dtype(len(vocab.classes) + 1)
        device = self.pipeline.device
        text = self.pipeline.text.encode_classes(vocab.queries, p.templates).to(device)
        images = []
        for i, arr in enumerate(arrays):
            x = self.pipeline.to_device(arr, p)
            h, w = x.shape[-2:]
            patch = self.pipeline.model.region.patch_size
            if min(h, w) < patch:
                raise UserError(f"image {i} is {h}x{w} at the protocol's size, smaller than the CLIP's {patch}-pixel "
                                "patch: resize it up (short_side) first")
            win = (min(p.window, h), min(p.window, w)) if p.window else (h, w)
            starts = [(y0, x0) for y0 in window_starts(h, win[0], p.stride or h)
                      for x0 in window_starts(w, win[1], p.stride or w)]
            images.append(DenseImage(i, tuple(arr.shape[:2]), self.normalise(x), win, starts, left=len(starts)))
        results: list[SegmentationResult | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[tuple[DenseImage, int, int]]] = {}
        for im in images:
            by_size.setdefault(im.window, []).extend((im, y0, x0) for y0, x0 in im.starts)
        for (wh, ww), jobs in by_size.items():
            for first in range(0, len(jobs), batch_size):
                chunk = jobs[first: first + batch_size]
                crops = torch.cat([im.pixels[..., y0: y0 + wh, x0: x0 + ww] for im, y0, x0 in chunk])
                logits = self.window_logits(crops, text, p.pad_multiple).float()
                for (im, y0, x0), lg in zip(chunk, logits):
                    im.add(y0, x0, lg)
                    if im.left == 0:
                        results[im.index] = self.finish(im, vocab, p, return_scores, return_probs)
        return results  # type: ignore[return-value]

    def finish(self, im: DenseImage, vocab: Vocabulary, p: Protocol, return_scores: bool, return_probs: bool
               ) -> SegmentationResult:
        """Label one image whose windows are all in: at the input size, as the methods' code does, unless its
        (names, H, W) logits would exceed :data:`FULL_SIZE_ELEMENTS` (see :meth:`finish_large`)."""
        logits = im.logits / im.count
        im.logits = im.count = None
        size = im.size
        if tuple(logits.shape[-2:]) != size:
            if logits.shape[0] * size[0] * size[1] > FULL_SIZE_ELEMENTS:
                return self.finish_large(im, logits, vocab, p, return_scores)
            logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        return self.label_logits(im, logits, vocab, p, return_scores, return_probs)

    def finish_large(self, im: DenseImage, logits: torch.Tensor, vocab: Vocabulary, p: Protocol,
                     return_scores: bool) -> SegmentationResult:
        """A large image: PAMR, the softmax, each label's best name and the group vote at the resized scale, then
        the (1 + C) label scores brought to the input size a band of rows at a time for the area filter and the
        background rule; memory is bounded by the resized scale whatever the image size (the methods' code refines
        and scores at the input size: the outputs differ slightly)."""
        _log.info("image of %dx%d: dense scores at the resized scale %dx%d, labels at the input size",
                  *im.size, *logits.shape[-2:])
        small = self.label_logits(im, logits, vocab, p.replace(area_threshold=None, normalize_scores=False),
                                  True, False, keep_device=True)
        scores = small.scores
        (h, w), (H, W) = scores.shape[-2:], im.size
        y0s, y1s, wy = bilinear_taps(h, H)
        x0s, x1s, wx = (t.to(scores.device) for t in bilinear_taps(w, W))
        rows = max(1, (1 << 22) // (scores.shape[0] * W))

        def band(t0: int, t1: int) -> torch.Tensor:
            ly = wy[t0:t1, None].to(scores.device)
            mixed = scores[:, y0s[t0:t1]] * (1 - ly) + scores[:, y1s[t0:t1]] * ly
            return mixed[..., x0s] * (1 - wx) + mixed[..., x1s] * wx

        keep = None
        if p.area_threshold is not None and p.background is not None:  # the filter needs the whole image's areas
            area = torch.zeros(scores.shape[0], device=scores.device)
            for t0 in range(0, H, rows):
                area += torch.bincount(band(t0, min(H, t0 + rows)).argmax(0).flatten(), minlength=scores.shape[0])
            keep = (area[1:] > p.area_threshold * area[1:].sum()).to(scores.dtype).view(-1, 1, 1)
        dtype = label_dtype(scores.shape[0])
        labels = np.empty((H, W), dtype=dtype)
        full = np.empty((scores.shape[0], H, W), dtype=np.float32) if return_scores else None
        plain = p.replace(area_threshold=None)
        for t0 in range(0, H, rows):
            t1 = min(H, t0 + rows)
            tile = band(t0, t1)
            if keep is not None:
                tile[1:] *= keep
            labels[t0:t1] = apply_background_rule(tile, plain).cpu().numpy()
            if full is not None:
                full[:, t0:t1] = (tile / tile.sum(0, keepdim=True) if p.normalize_scores else tile).cpu().numpy()
        return SegmentationResult(labels=labels, classes=small.classes, scores=full)

    def label_logits(self, im: DenseImage, logits: torch.Tensor, vocab: Vocabulary, p: Protocol,
                     return_scores: bool, return_probs: bool, keep_device: bool = False) -> SegmentationResult:
        """PAMR, the softmax over the names, each label's best name, the group vote and the background rule on
        (names, H, W) logits (at the input size, or at the resized scale with ``keep_device``: then ``scores``
        stays a tensor on the device)."""
        size = tuple(logits.shape[-2:])
        if p.pamr_steps:
            image = im.pixels
            if tuple(image.shape[-2:]) != size:
                image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            logits = pamr(image, logits[None], p.pamr_steps, p.pamr_dilations)[0]
        owners = vocab.owners(logits.device)
        if p.bg_score is not None:  # a constant background similarity, scored like one more background name
            logits = torch.cat([logits, logits.new_full((1, *logits.shape[1:]), p.bg_score)])
            owners = torch.cat([owners, owners.new_zeros(1)])
        scale = p.logit_scale if p.logit_scale is not None else float(self.pipeline.model.logit_scale)
        probs = (logits * scale).softmax(0)
        del logits
        c = len(vocab.classes)
        scores = label_scores(probs, owners, c + 1)
        if p.group_vote:
            scores = self.group_vote(im, scores, p, size)
        labels = apply_background_rule(scores, p)
        if p.normalize_scores:
            scores = scores / scores.sum(0, keepdim=True)
        names = ["background", *vocab.names]
        if keep_device:
            return SegmentationResult(labels=np.empty((0, 0), np.uint8), classes=names, scores=scores)
        dtype = label_dtype(c + 1)
        return SegmentationResult(labels=labels.cpu().numpy().astype(dtype), classes=names,
                                  probs=probs.cpu().numpy() if return_probs else None,
                                  scores=scores.cpu().numpy().astype(np.float32) if return_scores else None)

    def group_vote(self, im: DenseImage, scores: torch.Tensor, p: Protocol, size: tuple[int, int]) -> torch.Tensor:
        """(1 + C, H, W) scores at ``size`` averaged over each group of the model's grouping of the whole image
        (grouped at the resized scale, group maps at ``size``), and over the protocol's group counts."""
        x01 = self.pipeline.patch_sized(self.denormalise(im.pixels))
        counts = p.group_counts or [None]
        features = self.pipeline.model.group_features(x01) if len(counts) > 1 else None
        voted = torch.zeros_like(scores)
        flat = scores.flatten(1)
        for k in counts:
            groups = self.pipeline.model.group(x01, pixel_size=size, num_groups=k, features=features).pixels[0]
            ids = groups.flatten()
            n = int(ids.max()) + 1
            sums = flat.new_zeros(flat.shape[0], n).index_add_(1, ids, flat)
            sizes = torch.bincount(ids, minlength=n).clamp_min(1).to(flat.dtype)
            voted += (sums / sizes)[:, ids].view_as(scores)
        return voted / len(counts)


def apply_background_rule(scores: torch.Tensor, p: Protocol) -> torch.Tensor:
    """(H, W) labels from (1 + C, H, W) label scores (row 0 the background's names): SCLIP's area filter first (a
    class covering less than ``area_threshold`` of the predicted foreground has its scores zeroed, in place), then
    the argmax, then ``threshold``: background where the best score is below ``bg_threshold``; with ``background``
    None the best class wins everywhere."""
    if p.background is None:
        return scores[1:].argmax(0) + 1
    if p.area_threshold is not None:
        best = scores.argmax(0)
        area = torch.bincount(best.flatten(), minlength=scores.shape[0])[1:].to(scores.dtype)
        keep = (area > p.area_threshold * area.sum()).to(scores.dtype)
        scores[1:] *= keep.view(-1, 1, 1)
    best_p, labels = scores.max(0)
    if p.background == "threshold":
        labels[best_p < p.bg_threshold] = 0
    return labels


__all__ = ["FULL_SIZE_ELEMENTS", "DenseImage", "DensePredictor", "apply_background_rule", "centred_padding"]
