"""Segmentation metrics with the definitions papers use (numpy only).

Semantic segmentation follows mmsegmentation: a confusion matrix accumulated over the whole split; per class
IoU = TP / (TP + FP + FN) and Acc = TP / (TP + FN); a class whose union is empty (absent from prediction and ground
truth) has IoU NaN and is left out of mIoU; mAcc averages over classes with ground-truth pixels.

Referring segmentation follows LAVT / Zero-shot-RIS: per sample I = |P & G|, U = |P | G|; oIoU = sum I / sum U;
mIoU = mean of I / U (0 when U = 0); Prec@X = share of samples with IoU >= X; PointM = share of samples whose
response map peaks inside the ground-truth mask.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PREC_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


class SemsegMetric:
    """Accumulates a confusion matrix over a split and computes mIoU / aAcc / mAcc.

    The matrix has ``num_classes`` rows (ground truth) and ``num_classes + 1`` columns (prediction); the extra
    column counts valid pixels whose prediction is outside ``[0, num_classes)``: they are wrong (a false negative
    for the ground-truth class) but no class's false positive.

    Args:
        num_classes: Number of classes; ground-truth labels must be in ``[0, num_classes)`` or ``ignore_index``.
        ignore_index: Ground-truth value of pixels that are not scored.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def sample_confusion(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Return one sample's confusion matrix (same layout as :attr:`confusion`) without accumulating it."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
        valid = gt != self.ignore_index
        g = gt[valid].astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.num_classes):
            bad = int(g[(g < 0) | (g >= self.num_classes)][0])
            raise ValueError(f"ground-truth label {bad} outside [0, {self.num_classes}) and not {self.ignore_index}")
        p = pred[valid].astype(np.int64)
        p = np.where((p < 0) | (p >= self.num_classes), self.num_classes, p)
        counts = np.bincount(g * (self.num_classes + 1) + p, minlength=self.num_classes * (self.num_classes + 1))
        return counts.reshape(self.num_classes, self.num_classes + 1)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Add one sample (HxW integer arrays) and return its confusion matrix."""
        conf = self.sample_confusion(pred, gt)
        self.confusion += conf
        return conf

    def add_confusion(self, conf: np.ndarray) -> None:
        """Add a confusion matrix computed earlier (used when resuming an evaluation)."""
        conf = np.asarray(conf, dtype=np.int64)
        if conf.shape != self.confusion.shape:
            raise ValueError(f"confusion matrix shape {conf.shape} differs from {self.confusion.shape}")
        self.confusion += conf

    def compute(self) -> dict[str, Any]:
        """Return ``mIoU``, ``aAcc``, ``mAcc`` and per-class ``IoU``, ``Acc`` lists, in percent (NaN: undefined)."""
        c = self.confusion.astype(np.float64)
        tp = np.diag(c[:, : self.num_classes])
        gt_pixels = c.sum(axis=1)
        pred_pixels = c[:, : self.num_classes].sum(axis=0)
        union = gt_pixels + pred_pixels - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt_pixels > 0, tp / gt_pixels, np.nan)
        total = gt_pixels.sum()
        return {
            "mIoU": _nanmean(iou) * 100,
            "aAcc": float(tp.sum() / total * 100) if total > 0 else math.nan,
            "mAcc": _nanmean(acc) * 100,
            "IoU": [float(v) * 100 for v in iou],
            "Acc": [float(v) * 100 for v in acc],
        }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def ris_sample_stats(
    pred_mask: np.ndarray | None, gt_mask: np.ndarray, response: np.ndarray | None = None
) -> tuple[int, int, bool | None]:
    """Return (I, U, hit) of one referring sample.

    ``pred_mask`` None means the method gave no mask: I = 0, U = |G|. ``hit`` is None without a response map, else
    whether the response's argmax (first maximum in row-major order) lies inside the ground-truth mask.
    """
    gt = np.asarray(gt_mask).astype(bool)
    if pred_mask is None:
        inter, union = 0, int(gt.sum())
    else:
        pred = np.asarray(pred_mask).astype(bool)
        if pred.shape != gt.shape:
            raise ValueError(f"predicted mask shape {pred.shape} differs from ground-truth shape {gt.shape}")
        inter, union = int((pred & gt).sum()), int((pred | gt).sum())
    hit: bool | None = None
    if response is not None:
        resp = np.asarray(response)
        if resp.shape != gt.shape:
            raise ValueError(f"response map shape {resp.shape} differs from ground-truth shape {gt.shape}")
        hit = bool(gt.flat[int(np.argmax(resp))])
    return inter, union, hit


class RISMetric:
    """Referring segmentation metrics over a split: oIoU, mIoU, Prec@0.5..0.9, PointM (percent) and n over the
    samples with a target; over no-target samples (an empty ground truth), no-target accuracy ``N-acc``: the percent
    answered with no mask (an empty or missing prediction), and their count ``n_no_target``."""

    def __init__(self) -> None:
        self.inter: list[int] = []
        self.union: list[int] = []
        self.hits: list[bool | None] = []
        self.no_target_answers: list[bool] = []  # per no-target sample: answered with no mask

    def update(
        self, pred_mask: np.ndarray | None, gt_mask: np.ndarray, response: np.ndarray | None = None
    ) -> tuple[int, int, bool | None]:
        """Add one sample; a missing mask (None) counts as IoU 0, never skipped; an empty ground truth makes it a
        no-target sample. Returns (I, U, hit)."""
        stats = ris_sample_stats(pred_mask, gt_mask, response)
        self.add(*stats, target=bool(np.asarray(gt_mask).any()))
        return stats

    def add(self, inter: int, union: int, hit: bool | None = None, target: bool = True) -> None:
        """Add a sample's precomputed (I, U, hit) (used when resuming an evaluation). A no-target sample
        (``target=False``: empty ground truth, so U is the predicted area) only counts for ``N-acc``."""
        if not target:
            self.no_target_answers.append(int(union) == 0)
            return
        self.inter.append(int(inter))
        self.union.append(int(union))
        self.hits.append(None if hit is None else bool(hit))

    def compute(self) -> dict[str, Any]:
        """Return oIoU, mIoU, Prec@X, PointM (None when no sample had a response map) and n."""
        n = len(self.inter)
        inter = np.asarray(self.inter, dtype=np.float64)
        union = np.asarray(self.union, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        out: dict[str, Any] = {
            "oIoU": float(inter.sum() / union.sum() * 100) if union.sum() > 0 else math.nan,
            "mIoU": float(iou.mean() * 100) if n else math.nan,
        }
        for t in PREC_THRESHOLDS:
            out[f"Prec@{t:.1f}"] = float((iou >= t).mean() * 100) if n else math.nan
        responded = [h for h in self.hits if h is not None]
        out["PointM"] = float(np.mean(responded) * 100) if responded else None
        out["n"] = n
        if self.no_target_answers:
            out["N-acc"] = float(np.mean(self.no_target_answers) * 100)
            out["n_no_target"] = len(self.no_target_answers)
        return out
