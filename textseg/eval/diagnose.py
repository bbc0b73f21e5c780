"""Error decomposition of a semantic segmentation evaluation: where the missing mIoU goes.

Four views of the same images, one table (:func:`diagnosis_markdown`):

- (a) ``model``: the model's own groups and labels (the ordinary prediction);
- (b) ``oracle_labels``: the model's groups, each given the majority ground-truth label of its non-void pixels
  (background 0 included; :func:`oracle_labels`): the
  grouping ceiling, what perfect recognition would reach on these groups;
- (c) ``oracle_regions``: the ground-truth instances (and one region for all other pixels) as the regions, each
  labelled exactly as the model labels its own groups
  (:func:`label_regions`): the recognition ceiling, what
  perfect grouping would reach with this recognition and background handling; absent without instance maps;
- (d) foreground/background confusion of (a): the share of predicted-foreground pixels that are ground-truth
  background, and the share of ground-truth-foreground pixels predicted background (void not counted); only for
  datasets whose label 0 is background.

mIoU is :class:`~textseg.metrics.SemsegMetric`'s over confusion matrices accumulated over the split.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from textseg.config import Protocol
from textseg.errors import UserError
from textseg.eval.predictors import SegmenterSemsegPredictor
from textseg.io import ImageLike, load_image
from textseg.labels import SegmentationResult, check_maps
from textseg.metrics import SemsegMetric
from textseg.segmenter import Segmenter, check_batch_size

VARIANTS: tuple[str, ...] = ("model", "oracle_labels", "oracle_regions")
NO_INSTANCES = "(c) is absent: the dataset has no ground-truth instance maps (VOC's SegmentationObject)"


def instance_regions(instances: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """The region map (c) gives the model: one region per ground-truth instance, one more for every other pixel.

    Args:
        instances: (H, W) instance map: 0 background, 1.. instances, ``ignore_index`` void.
        ignore_index: the void value (its pixels join the background's region).

    Returns:
        (H, W) int64 region ids: 0..N-1 the N instances in increasing order of their value, N the remaining
        (background and void) pixels if there are any.
    """
    inst = np.asarray(instances).astype(np.int64)
    rest = (inst == 0) | (inst == ignore_index)
    ids = np.unique(inst[~rest])
    regions = np.searchsorted(ids, inst)  # instance ids[i] -> i; other pixels are overwritten below
    regions[rest] = len(ids)
    return regions


def fg_bg_confusion(conf: np.ndarray) -> dict[str, float]:
    """(d) of a confusion matrix (rows ground truth, columns prediction; label 0 background; columns past the last
    class are predictions outside the classes, counted as foreground), in percent (NaN: no such pixel).

    Returns:
        ``pred_fg_gt_bg``: the share of predicted-foreground pixels that are ground-truth background;
        ``gt_fg_pred_bg``: the share of ground-truth-foreground pixels predicted background.
    """
    c = np.asarray(conf, dtype=np.float64)
    pred_fg, gt_fg = c[:, 1:].sum(), c[1:, :].sum()
    return {"pred_fg_gt_bg": float(c[0, 1:].sum() / pred_fg * 100) if pred_fg > 0 else math.nan,
            "gt_fg_pred_bg": float(c[1:, 0].sum() / gt_fg * 100) if gt_fg > 0 else math.nan}


def majority_labels(groups: torch.Tensor, truth: torch.Tensor, num_labels: int, ignore_index: int = 255
                    ) -> torch.Tensor:
    """Each group's majority ground-truth label: (B, K) int64, K = ``groups.max() + 1``.

    Args:
        groups: (B, h, w) group ids >= 0.
        truth: (B, h, w) labels in 0..num_labels-1, or ``ignore_index`` (not counted).
        num_labels: the number of labels (background 0 included).
        ignore_index: the label of pixels that are not counted.

    Ties go to the lower label, and a group without a counted pixel gets 0 (background).
    """
    b, k = groups.shape[0], int(groups.max()) + 1 if groups.numel() else 1
    valid = truth != ignore_index
    image = torch.arange(b, device=groups.device).view(b, 1, 1).expand_as(groups)
    index = ((image * k + groups) * num_labels + truth.long().clamp(0, num_labels - 1))[valid]
    counts = torch.bincount(index, minlength=b * k * num_labels).view(b, k, num_labels)
    return counts.argmax(-1)  # the first of equal maxima



@torch.no_grad()
def label_regions(segmenter: Segmenter, images: Sequence[ImageLike], regions: Sequence[np.ndarray],
                  classes: Sequence[str], protocol: Protocol | None = None, *, batch_size: int = 32,
                  return_probs: bool = False, **overrides: Any) -> list[SegmentationResult]:
    """:meth:`Segmenter.predict_batch <textseg.segmenter.Segmenter.predict_batch>` with given regions in place of
    the model's groups (e.g. ground-truth instances): the recognition ceiling (c).

    Each image's regions are an (H, W) map of region ids 0..K-1 at the input size (every pixel in one region;
    an id may be unused). The map is resized with the image per the protocol (nearest) and cut into the same
    windows; in each window its regions get CLIP-grid masks as the model's groups do, are embedded by the
    model, and are labelled by the very code that labels the model's groups: the same text embeddings,
    templates, logit scale, background rule, ``bg_score`` and threshold, window averaging and resizing. Given
    the model's own group map (under a protocol that neither resizes nor cuts windows, with groups that follow
    its patch grid) it returns what ``predict_batch`` returns.

    Args:
        segmenter: the :class:`~textseg.segmenter.Segmenter`.
        images: as for ``predict_batch``.
        regions: one (H, W) non-negative integer region map per image, at that image's size.
        classes, protocol, batch_size, return_probs, overrides: as for ``predict_batch``.

    Returns:
        One :class:`~textseg.labels.SegmentationResult` per image, in the order given.
    """
    p = segmenter.resolve_protocol(protocol, overrides)
    check_batch_size(batch_size)
    scorer = segmenter.region_probs(classes, p, counts=[None])
    arrays = [load_image(im) for im in images]
    maps = check_maps(regions, arrays, "region map")
    if any(m.size and m.min() < 0 for m in maps):
        raise UserError("a region map holds a negative region id")
    return segmenter.label_windows(arrays, classes, p, scorer, maps=maps, batch_size=batch_size,
                                   return_probs=return_probs)


@torch.no_grad()
def oracle_labels(segmenter: Segmenter, images: Sequence[ImageLike], truth: Sequence[np.ndarray],
                  classes: Sequence[str], protocol: Protocol | None = None, *, batch_size: int = 32,
                  ignore_index: int = 255, **overrides: Any) -> list[SegmentationResult]:
    """The model's own groups, each labelled with the majority ground-truth label of its pixels: the best
    labelling the grouping allows (the grouping ceiling (b)).

    It runs ``predict_batch``'s grouping (same resizing, windows, batches), and in place of each window's
    region probabilities puts a one-hot of the group's majority label (:func:`majority_labels` of the ground
    truth resized with the image, nearest); the windows are then averaged, resized and labelled as
    ``predict_batch`` does, the background going by the best average (a probability threshold would judge
    the model's confidence, which the oracle does not have; with no background rule every pixel gets a class,
    as there). No text or region embedding is computed.

    Args:
        segmenter: the :class:`~textseg.segmenter.Segmenter`.
        images: as for ``predict_batch``.
        truth: one (H, W) ground-truth map per image in the call's label space: 0 background, i + 1 =
            ``classes[i]``, ``ignore_index`` not scored.
        classes, protocol, batch_size, overrides: as for ``predict_batch``.
        ignore_index: the ground-truth value of pixels that are not scored.

    Returns:
        One :class:`~textseg.labels.SegmentationResult` per image, in the order given.
    """
    p = segmenter.resolve_protocol(protocol, overrides)
    if p.background == "threshold":
        p = dataclasses.replace(p, background="classes")  # not Protocol.replace: no schema check per call
    check_batch_size(batch_size)
    c = len(classes)
    arrays = [load_image(im) for im in images]
    maps = check_maps(truth, arrays, "ground-truth map")
    for m in maps:
        bad = (m != ignore_index) & ((m < 0) | (m > c))
        if bad.any():
            raise UserError(f"a ground-truth map holds the label {int(m[bad][0])}, outside 0..{c} "
                            f"and not the ignore index {ignore_index}")
    counts = list(p.group_counts or [None])

    def score(crops: torch.Tensor, given: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        out = []
        for groups in segmenter.pipeline.group_batch(crops, counts=counts)[1]:
            best = majority_labels(groups.pixels, given, c + 1, ignore_index)
            out.append((groups.pixels, F.one_hot(torch.where(best > 0, best - 1, c), c + 1).float(), 1))
        return out

    return segmenter.label_windows(arrays, classes, p, score, maps=maps, batch_size=batch_size,
                                   passes=len(counts))


class Diagnosis:
    """Accumulates the confusion matrices of (a), (b) and (c) over a split; :meth:`compute` gives the decomposition.

    Args:
        num_classes: number of labels (background included where there is one).
        ignore_index: ground-truth value of pixels that are not scored.
        has_background: whether label 0 is background ((d) is computed only then).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, has_background: bool = True) -> None:
        self.metrics = {v: SemsegMetric(num_classes, ignore_index) for v in VARIANTS}
        self.has_background = has_background
        self.n = 0
        self.missing_regions = 0  # samples without (c)

    def update(self, gt: np.ndarray, model: np.ndarray, oracle_labels: np.ndarray,
               oracle_regions: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
        """Add one sample's predictions ((c) None: no instance map); returns its confusion matrices."""
        preds = {"model": model, "oracle_labels": oracle_labels, "oracle_regions": oracle_regions}
        confs = {v: None if p is None else self.metrics[v].sample_confusion(p, gt) for v, p in preds.items()}
        self.add(confs)
        return confs

    def add(self, confs: Mapping[str, np.ndarray | None]) -> None:
        """Add one sample's confusion matrices by variant ((c) None: no instance map)."""
        for v in VARIANTS:
            if confs.get(v) is not None:
                self.metrics[v].add_confusion(confs[v])
            elif v == "oracle_regions":
                self.missing_regions += 1
            else:
                raise ValueError(f"a diagnosed sample needs the {v!r} confusion matrix")
        self.n += 1

    def compute(self) -> dict[str, Any]:
        """The ``diagnosis`` block of results.json: ``mIoU`` by variant (percent; (c) None when any sample lacks an
        instance map), ``fg_bg`` ((d), None without background), ``n_samples`` and ``notes`` (why a part is absent)."""
        notes = []
        miou = {v: self.metrics[v].compute()["mIoU"] for v in VARIANTS}
        if self.missing_regions:
            miou["oracle_regions"] = None
            notes.append(NO_INSTANCES if self.missing_regions == self.n else
                         f"(c) is absent: {self.missing_regions} of {self.n} images have no instance map")
        fg_bg = fg_bg_confusion(self.metrics["model"].confusion) if self.has_background else None
        if fg_bg is None:
            notes.append("(d) is absent: the dataset's label 0 is not background")
        return {"mIoU": miou, "fg_bg": fg_bg, "n_samples": self.n, "notes": notes}


class SegmenterDiagnoser:
    """(b) and (c) of one sample, from the segmenter and protocol behind a semantic predictor (label spaces as
    the predictor's: with a background, the segmenter's labels are the dataset's; without, shifted down by one).

    Args:
        predictor: the :class:`~textseg.eval.predictors.SegmenterSemsegPredictor` that makes (a).
        ignore_index: the dataset's void label (ground truth and instance maps).
    """

    def __init__(self, predictor: SegmenterSemsegPredictor, ignore_index: int = 255) -> None:
        self.segmenter = predictor.segmenter
        self.protocol = predictor.protocol
        self.has_background = predictor.has_background
        self.ignore_index = ignore_index

    def __call__(self, sample: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, np.ndarray | None]:
        """``oracle_labels`` (b) and ``oracle_regions`` (c; None when the sample has no ``instances``) label maps
        in the dataset's label space."""
        names = list(class_names[1:] if self.has_background else class_names)
        shift = 0 if self.has_background else 1
        gt = np.asarray(sample["label"]).astype(np.int64)
        truth = np.where(gt == self.ignore_index, -1, gt + shift)
        image = sample["image"]
        oracle = oracle_labels(self.segmenter, [image], [truth], names, self.protocol, ignore_index=-1)[0]
        out: dict[str, np.ndarray | None] = {"oracle_labels": oracle.labels.astype(np.int64) - shift,
                                             "oracle_regions": None}
        if sample.get("instances") is not None:
            regions = instance_regions(sample["instances"], self.ignore_index)
            result = label_regions(self.segmenter, [image], [regions], names, self.protocol)[0]
            out["oracle_regions"] = result.labels.astype(np.int64) - shift
        return out
