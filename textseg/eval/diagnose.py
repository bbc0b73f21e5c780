"""Error decomposition of a semantic segmentation evaluation: where the missing mIoU goes.

Four views of the same images, one table (:func:`diagnosis_markdown`):

- (a) ``model``: the model's own groups and labels (the ordinary prediction);
- (b) ``oracle_labels``: the model's groups, each given the majority ground-truth label of its non-void pixels
  (background 0 included; :meth:`Segmenter.oracle_labels <textseg.segmenter.Segmenter.oracle_labels>`): the
  grouping ceiling, what perfect recognition would reach on these groups;
- (c) ``oracle_regions``: the ground-truth instances (and one region for all other pixels) as the regions, each
  labelled exactly as the model labels its own groups
  (:meth:`Segmenter.label_regions <textseg.segmenter.Segmenter.label_regions>`): the recognition ceiling, what
  perfect grouping would reach with this recognition and background handling; absent without instance maps;
- (d) foreground/background confusion of (a): the share of predicted-foreground pixels that are ground-truth
  background, and the share of ground-truth-foreground pixels predicted background (void not counted); only for
  datasets whose label 0 is background.

mIoU is :class:`~textseg.metrics.SemsegMetric`'s over confusion matrices accumulated over the split.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from textseg.eval.predictors import SegmenterSemsegPredictor
from textseg.eval.report import fmt
from textseg.metrics import SemsegMetric

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
        oracle = self.segmenter.oracle_labels([image], [truth], names, self.protocol, ignore_index=-1)[0]
        out: dict[str, np.ndarray | None] = {"oracle_labels": oracle.labels.astype(np.int64) - shift,
                                             "oracle_regions": None}
        if sample.get("instances") is not None:
            regions = instance_regions(sample["instances"], self.ignore_index)
            result = self.segmenter.label_regions([image], [regions], names, self.protocol)[0]
            out["oracle_regions"] = result.labels.astype(np.int64) - shift
        return out


ROWS: tuple[tuple[str, str], ...] = (
    ("(a)", "mIoU: the model's groups and labels"),
    ("(b)", "mIoU: oracle labels on the model's groups (grouping ceiling)"),
    ("(c)", "mIoU: the model's labels on ground-truth regions (recognition ceiling)"),
    ("(d)", "predicted foreground that is ground-truth background (%)"),
    ("(d)", "ground-truth foreground predicted background (%)"),
)


def diagnosis_markdown(d: Mapping[str, Any]) -> str:
    """The decomposition as one Markdown table (a heading, the table, a legend and the notes)."""
    fg_bg = d.get("fg_bg") or {}
    values = [d["mIoU"].get(v) for v in VARIANTS] + [fg_bg.get("pred_fg_gt_bg"), fg_bg.get("gt_fg_pred_bg")]
    lines = [f"## Error decomposition ({d.get('n_samples', '?')} images)", "", "| | measure | value |",
             "|---|---|---:|"]
    lines += [f"| {tag} | {what} | {fmt(v)} |" for (tag, what), v in zip(ROWS, values)]
    lines += ["", "100 - (b): lost to grouping (groups that mix classes); 100 - (c): lost to recognition and "
              "background handling on perfect regions; (b) - (a) and (c) - (a): what perfect labels or perfect "
              "regions would add to this model. – = absent."]
    notes = list(d.get("notes") or [])
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
