"""From window probabilities to label maps: the sliding-window plan of an image, its labelling at the input size
(a band of rows at a time), class-name checks and the result type of semantic segmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from textseg.config import Protocol
from textseg.dense.pamr import pamr, pamr_affinities, pamr_radius
from textseg.errors import UserError
from textseg.io import label_dtype
from textseg.pipeline import resized_size
from textseg.vocab import Vocabulary, label_scores


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of sliding windows that cover [0, length), the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def check_class_names(classes: Sequence[str]) -> list[str]:
    """The class names as strings, checked: none empty, none repeated (ignoring case and surrounding spaces), none
    called "background" (label 0's name); see :meth:`~textseg.vocab.Vocabulary.make`.

    Raises:
        UserError: the first problem found, naming the class.
    """
    return Vocabulary.make([str(c) for c in classes]).names


def bilinear_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices i0, i1 and weights of i1 for each of ``n_out`` outputs of 1-D bilinear resampling from
    ``n_in`` samples, as ``F.interpolate(mode="bilinear", align_corners=False)`` computes them (no antialias).
    Computed on the CPU in float64 (not every device has it); the weights are float32."""
    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, (src - i0).float()


def gaussian_radius(sigma: float) -> int:
    """Half-width of the Gaussian kernel of :func:`gaussian_smooth`: ceil(3 sigma), 0 for sigma 0."""
    return int(np.ceil(3 * sigma)) if sigma > 0 else 0


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(C, H, W) maps smoothed by a Gaussian of standard deviation ``sigma`` pixels on each axis (a separable kernel
    of half-width :func:`gaussian_radius`, renormalised; edges padded by repeating the border pixels). sigma 0
    returns the maps unchanged."""
    r = gaussian_radius(sigma)
    if r == 0:
        return maps
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=maps.device)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(maps.dtype)
    out = maps[:, None]  # (C, 1, H, W)
    out = torch.nn.functional.pad(out, (r, r, 0, 0), mode="replicate")
    out = torch.nn.functional.conv2d(out, k.view(1, 1, 1, -1))
    out = torch.nn.functional.pad(out, (0, 0, r, r), mode="replicate")
    return torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1))[:, 0]


def channel_max(maps: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The maximum and first argmax over channels of ``transform(maps)``, for (C, ...) ``maps`` and a
    ``transform`` that maps each channel alone, linearly and with non-negative weights (smoothing, PAMR, bilinear
    resampling, cropping), without transforming every channel.

    Only the channels that are the best at some position of ``maps`` are transformed, with one more: the maximum
    of all the others at each position. That channel bounds each of the others from above after the transform (the
    weights are non-negative), so where it stays below the best kept channel everywhere, no other channel can win
    and the result is exact; otherwise every channel is transformed.
    """
    won = torch.zeros(len(maps), dtype=torch.bool, device=maps.device)
    won[maps.argmax(0).flatten()] = True
    kept = won.nonzero()[:, 0]
    if len(kept) + 1 < len(maps):
        out = transform(torch.cat([maps[kept], maps[~won].amax(0, keepdim=True)]))
        best, at = out[:-1].max(0)
        if bool((out[-1] < best).all()):
            return best, kept[at]
    return transform(maps).max(0)


def with_bg_score(sims: torch.Tensor, bg_score: float | None) -> torch.Tensor:
    """(..., C) region-class similarities with the constant background score appended as a last column (C + 1);
    unchanged when ``bg_score`` is None."""
    if bg_score is None:
        return sims
    return torch.cat([sims, sims.new_full((*sims.shape[:-1], 1), float(bg_score))], -1)


def region_class_probs(sims: torch.Tensor, bg_score: float | None, logit_scale: torch.Tensor | float
                       ) -> torch.Tensor:
    """Class probabilities of regions from their (..., C) text similarities: the constant background score
    appended (:func:`with_bg_score`), scaled by the model's logit scale, softmax over the last dimension."""
    return (logit_scale * with_bg_score(sims, bg_score)).softmax(-1)


def check_maps(maps: Sequence[np.ndarray], arrays: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    """One integer (H, W) map per image, at that image's size, as int64 arrays.

    Raises:
        UserError: a count, type or shape that does not match.
    """
    if len(maps) != len(arrays):
        raise UserError(f"{len(maps)} {what}s given for {len(arrays)} images")
    out = []
    for i, (m, a) in enumerate(zip(maps, arrays)):
        m = np.asarray(m)
        if m.dtype.kind not in "iub":
            raise UserError(f"{what} {i} holds {m.dtype} values, expected integers")
        if m.shape != a.shape[:2]:
            raise UserError(f"{what} {i} is {m.shape}, its image is {a.shape[:2]}")
        out.append(m.astype(np.int64))
    return out


@dataclass(eq=False)
class CropPlan:
    """One image of a :meth:`~textseg.segmenter.Segmenter.predict_batch` call: where its crops are, and (while some
    are pending) its resized tensor on the device.

    The window probabilities are kept as they come out of the model, per window: its (h, w) group map and its
    (C, K) region probabilities. Probabilities at a pixel are gathered only for the rows being labelled
    (:meth:`band`), so no (C, H, W) map of the image is ever held whatever the number of classes.
    """

    index: int
    size: tuple[int, int]
    window: tuple[int, int]
    starts: list[tuple[int, int]]
    left: int = 0
    image: torch.Tensor | None = None
    parts: list[tuple[int, int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    count: torch.Tensor | None = None
    given: torch.Tensor | None = None  # a region or ground-truth map at the resized scale, while crops are pending
    keep_image: bool = False  # hold the resized image until labelling (the refinement reads its colours)

    @classmethod
    def make(cls, index: int, size: tuple[int, int], p: Protocol, passes: int = 1) -> "CropPlan":
        """The windows of image ``index``; each is recorded ``passes`` times (once per grouping)."""
        h, w = resized_size(size, p.short_side, p.max_long_side)
        win_h, win_w = (min(p.window, h), min(p.window, w)) if p.window else (h, w)
        starts = [(y0, x0) for y0 in window_starts(h, win_h, p.stride or h)
                  for x0 in window_starts(w, win_w, p.stride or w)]
        return cls(index, (h, w), (win_h, win_w), starts, left=len(starts) * passes, keep_image=p.pamr_steps > 0)

    def open(self, image: torch.Tensor, given: torch.Tensor | None = None) -> None:
        """Hold the image's resized tensor (and its given map) while its crops are pending; start the counts."""
        self.image, self.given = image, given
        self.count = torch.zeros(self.size, device=image.device)

    def add(self, y0: int, x0: int, pixels: torch.Tensor, region_probs: torch.Tensor, weight: int = 1) -> None:
        """Record one window: its (h, w) group map and (C, K) region probabilities, the sum of ``weight`` passes
        over that map (the grid offsets of one grouping), so that the map is painted once."""
        h, w = pixels.shape
        self.parts.append((y0, x0, pixels, region_probs))
        self.count[y0: y0 + h, x0: x0 + w] += weight
        self.left -= 1
        if self.left == 0:
            self.given = None
            if not self.keep_image:
                self.image = None

    def band(self, r0: int, r1: int) -> torch.Tensor:
        """(C, r1 - r0, w) probabilities of rows r0..r1-1 at the resized scale, averaged over the windows."""
        channels = self.parts[0][3].shape[0]
        out = torch.zeros(channels, r1 - r0, self.size[1], device=self.count.device)
        for y0, x0, pixels, probs in self.parts:
            lo, hi = max(r0, y0), min(r1, y0 + pixels.shape[0])
            if lo < hi:
                out[:, lo - r0: hi - r0, x0: x0 + pixels.shape[1]] += probs[:, pixels[lo - y0: hi - y0]]
        return out.div_(self.count[r0:r1])

    def label(self, size: tuple[int, int], owners: torch.Tensor, names: list[str], p: Protocol, return_probs: bool,
              return_scores: bool = False, tile_elements: int = 1 << 22) -> "SegmentationResult":
        """Label an image's pixels at the input size from its window probabilities at the resized scale (first
        smoothed by the protocol's ``smooth_sigma``, :func:`gaussian_smooth`, then refined along the image's colour
        edges by ``pamr_steps``, :func:`~textseg.dense.pamr.pamr`).

        The probabilities are brought to the input size bilinearly (as ``F.interpolate`` does) a band of rows at
        a time, at most ``tile_elements`` values per band (or, with smoothing or refinement, as many rows as the
        halo they read, if that is more), and only the labels of each band are kept: memory is bounded whatever
        the image size and class count, unless ``return_probs`` or ``return_scores`` asks for the full maps.

        Args:
            size: the input image's (H, W).
            owners: int64, the label of each probability channel (0: a background channel; channels past its end
                are background too); a pixel gets the label of its best channel (of its best class channel with
                ``background`` None).
            names: ``["background", *class names]``.
            p: the protocol (background rule).
            return_probs: keep the (C', H, W) channel probabilities.
            return_scores: keep the (len(names), H, W) label scores (each label's best channel; 0 without one).
        """
        (h, w), (H, W) = self.size, size
        device = self.count.device
        channels = self.parts[0][3].shape[0]
        owners = owners.to(device)[:channels]
        owners = torch.cat([owners, owners.new_zeros(channels - len(owners))])  # channels past the names: background
        class_channels = int((owners > 0).sum())
        y0s, y1s, wy = bilinear_taps(h, H)  # on the CPU: the band limits below are read without a device sync
        x0s, x1s, wx = (t.to(device) for t in bilinear_taps(w, W))
        dtype = label_dtype(len(names))
        labels = torch.empty(H, W, dtype=torch.uint8 if dtype == np.uint8 else torch.int32, device=device)
        probs_out = torch.empty(channels, H, W) if return_probs else None
        scores_out = torch.empty(len(names), H, W) if return_scores else None
        # rows per band: its (C, T, W) output and its (C, ~T * h / H + 2, w) source band each within tile_elements
        # smoothing reads `blur` more rows on each side of a band, refinement `reach` more (edge rows repeat only
        # at the image's edges, so every band's rows come out as one whole-image pass would give them)
        blur, reach = gaussian_radius(p.smooth_sigma), pamr_radius(p.pamr_steps, p.pamr_dilations)
        rows = max(1, min(tile_elements // (channels * W),
                          int((tile_elements // (channels * w) - 2 - 2 * (blur + reach)) * H / h)))
        # ... but a band labels at least as many rows of its own as it reads for its halo: with many classes on a
        # wide image, bands of a row or two would each smooth and refine a hundred halo rows (so with a halo, the
        # memory of a band is set by the halo, not by tile_elements)
        rows = max(rows, int(np.ceil(2 * (blur + reach) * H / h)))
        full = probs_out is not None or scores_out is not None
        for t0 in range(0, H, rows):
            t1 = min(H, t0 + rows)
            r0, r1 = int(y0s[t0]), int(y1s[t1 - 1]) + 1  # the source rows this band of output rows reads
            a0, a1 = max(0, r0 - reach), min(h, r1 + reach)  # the rows refined
            h0, h1 = max(0, a0 - blur), min(h, a1 + blur)  # the rows read
            refine = None
            if reach:
                image = self.image[:, :, a0:a1]
                refine = partial(pamr, image, steps=p.pamr_steps, dilations=p.pamr_dilations,
                                 weights=pamr_affinities(image, p.pamr_dilations))
            ly = wy[t0:t1, None].to(device)
            i0, i1 = (y0s[t0:t1] - r0).to(device), (y1s[t0:t1] - r0).to(device)
            to_output = partial(_band_output, sigma=p.smooth_sigma, refine=refine, cuts=(a0 - h0, a1 - h0, r0 - a0,
                                r1 - a0), rows=(i0, i1, ly), cols=(x0s, x1s, wx))
            source = self.band(h0, h1)
            compared = class_channels if p.background is None else channels  # the class channels come first
            if full:
                probs = to_output(source)  # (C, T, W)
                best_p, best = probs[:compared].max(0)
            else:  # only the channels that can win are smoothed, refined and resampled
                best_p, best = channel_max(source[:compared], to_output)
            tile = owners[best]
            if p.background == "threshold":
                tile[best_p < p.bg_threshold] = 0
            labels[t0:t1] = tile
            if probs_out is not None:
                probs_out[:, t0:t1] = probs.cpu()
            if scores_out is not None:
                scores_out[:, t0:t1] = label_scores(probs, owners, len(names)).cpu()
        self.close()
        return SegmentationResult(labels=labels.cpu().numpy().astype(dtype, copy=False), classes=names,
                                  probs=probs_out.numpy() if probs_out is not None else None,
                                  scores=scores_out.numpy() if scores_out is not None else None)

    def close(self) -> None:
        """Let go of the image's tensors and window probabilities."""
        self.image = self.count = None
        self.parts = []


def _band_output(x: torch.Tensor, sigma: float, refine: Callable[..., torch.Tensor] | None,
                 cuts: tuple[int, int, int, int], rows: tuple[torch.Tensor, ...], cols: tuple[torch.Tensor, ...]
                 ) -> torch.Tensor:
    """(C, T, W) output rows of a band from the (C, rows read, w) probabilities of its source rows: smoothed,
    cut to the rows refined, refined, cut to the rows the output reads, resampled bilinearly (:func:`bilinear_taps`)."""
    if sigma or refine is not None:
        x = gaussian_smooth(x, sigma)[:, cuts[0]: cuts[1]]
        if refine is not None:
            x = refine(x[None])[0]
        x = x[:, cuts[2]: cuts[3]]
    (i0, i1, ly), (x0s, x1s, wx) = rows, cols
    mixed = x[:, i0] * (1 - ly) + x[:, i1] * ly  # (C, T, w)
    return mixed[..., x0s] * (1 - wx) + mixed[..., x1s] * wx


@dataclass
class SegmentationResult:
    """Result of :meth:`Segmenter.predict`.

    Attributes:
        labels: (H, W); 0 = background, i + 1 = ``classes[i]`` of the call; uint8 when the names fit (up to 255
            classes), else uint16 (see :func:`label_dtype`). Cast before arithmetic that may go negative.
        classes: ``["background", *classes]``, so ``classes[labels]`` names every pixel.
        probs: (C', H, W) float32 probabilities of every name scored (the classes' names in class order, then
            the background's names, then the constant background score if one was given), if asked for
            (``return_probs``).
        scores: (len(classes), H, W) float32 label scores in label order (0: the background's, i: ``classes[i]``'s,
            each label's best name), if asked for (``return_scores``). With a dense mode, exactly the method's
            scores (its ``seg_logits``); the background rule, not the scores alone, decides the labels.
            ``probs`` and ``scores`` are the parts of a result whose size grows with the class count times the
            image size.
    """

    labels: np.ndarray
    classes: list[str]
    probs: np.ndarray | None = None
    scores: np.ndarray | None = None

    def pixel_counts(self) -> np.ndarray:
        """(len(classes),) int64 number of pixels of each label, background (0) first."""
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for rows in np.array_split(self.labels, max(1, self.labels.size // (1 << 22))):  # bincount copies to int64
            counts += np.bincount(rows.ravel(), minlength=len(self.classes))[: len(self.classes)]
        return counts

    def pixel_share(self) -> dict[str, float]:
        """Share of the image's pixels per class name (classes with no pixel left out)."""
        total = max(1, self.labels.size)
        return {self.classes[i]: float(c) / total for i, c in enumerate(self.pixel_counts()) if c > 0}


__all__ = ["CropPlan", "SegmentationResult", "bilinear_taps", "channel_max", "check_class_names", "check_maps",
           "region_class_probs", "window_starts", "with_bg_score"]
