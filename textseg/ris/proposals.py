"""Mask proposals for referring segmentation, from three sources behind one interface.

Every source returns :class:`Proposals`: an (N, H, W) bool array at the image's size (``masks``) and one
JSON-ready record per proposal saying where it came from (``records``). Empty masks are dropped everywhere, and
every source de-duplicates its proposals by default (:func:`deduplicate`: a proposal whose IoU with an *earlier*
kept one is at least 0.9 is dropped), so the order of a source is also its priority:

- :func:`grouping_proposals` / :class:`GroupingProposer` (textseg's own grouping, the CPU default): connected
  components in raster order of their first pixel, then each group that has several components (by group id),
  then unions of touching components by decreasing shared boundary length.
- :class:`SamProposer` (SAM's automatic mask generator, ``pip install 'textseg[sam]'``): by decreasing SAM
  ``predicted_iou``.
- :func:`~textseg.ris.mask_files.load_mask_proposals` (the user's masks: COCO RLE/polygon JSON, a PNG label map, a
  folder of PNG masks): in file order (JSON list order, increasing label value, file names sorted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from textseg.io import ImageLike, load_image
from textseg.model import TextSegModel
from textseg.pipeline import RegionPipeline, as_pipeline
from textseg.ris.components import connected_components, merge_small_components, region_adjacency
from textseg.ris.promptable import SAM_CHECKPOINT_URLS, load_sam

DEDUP_IOU = 0.9


# ---------------------------------------------------------------------------------------------------------------
# The common result


@dataclass
class Proposals:
    """Mask proposals of one image.

    Attributes:
        masks: (N, H, W) bool, none empty.
        records: N dicts (JSON-ready) with at least ``"source"``: ``"component"``, ``"group"``, ``"union"``,
            ``"sam"`` or ``"file"``, and what else identifies the proposal (group ids, component ids, SAM scores,
            the file and the mask's index in it).
    """

    masks: np.ndarray
    records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or self.masks.dtype != bool:
            raise ValueError(f"proposal masks are an (N, H, W) bool array, got {self.masks.dtype} {self.masks.shape}")
        if not self.records:
            self.records = [{"source": "unknown"} for _ in range(len(self.masks))]
        if len(self.records) != len(self.masks):
            raise ValueError(f"{len(self.masks)} masks but {len(self.records)} records")

    def __len__(self) -> int:
        return self.masks.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.masks if dtype is None else self.masks.astype(dtype)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the masks."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "Proposals":
        """No proposal, at ``image_size`` (H, W)."""
        return cls(np.zeros((0, *image_size), dtype=bool), [])

    def select(self, indices: Sequence[int] | np.ndarray) -> "Proposals":
        """The proposals at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Proposals(self.masks[idx], [self.records[int(i)] for i in idx])

    def deduplicate(self, iou: float = DEDUP_IOU) -> "Proposals":
        """These proposals less the near-duplicates of earlier ones (:func:`deduplicate`)."""
        return self.select(deduplicate(self.masks, iou))


def make_proposals(masks: np.ndarray, records: list[dict[str, Any]], dedup_iou: float | None) -> Proposals:
    """Drop empty masks, then near-duplicates when ``dedup_iou`` is set."""
    masks = np.ascontiguousarray(masks, dtype=bool)
    if dedup_iou is not None:
        keep = deduplicate(masks, dedup_iou)
    else:
        keep = np.flatnonzero(masks.reshape(len(masks), -1).any(1)) if len(masks) else np.zeros(0, np.int64)
    out = Proposals(masks, records)
    return out if len(keep) == len(masks) else out.select(keep)


# ---------------------------------------------------------------------------------------------------------------
# De-duplication


def mask_iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor | None = None, *,
             device: str | torch.device | None = None) -> np.ndarray:
    """(N, M) IoU of (N, H, W) masks ``a`` with (M, H, W) masks ``b`` (default ``a``), as matrix products of the
    flattened masks on ``device`` (default CPU). Counts are exact (float32 sums of 0/1 over at most 2**24 pixels
    at a time, accumulated in int64). Two empty masks have IoU 0."""
    ta = torch.as_tensor(a).to(device or "cpu")
    tb = ta if b is None else torch.as_tensor(b).to(ta.device)
    if ta.ndim != 3 or tb.ndim != 3 or ta.shape[1:] != tb.shape[1:]:
        raise ValueError(f"mask_iou expects (N, H, W) and (M, H, W) masks, got {tuple(ta.shape)}, {tuple(tb.shape)}")
    fa, fb = ta.reshape(len(ta), -1).bool(), tb.reshape(len(tb), -1).bool()
    inter = torch.zeros(len(fa), len(fb), dtype=torch.int64, device=ta.device)
    area_a = torch.zeros(len(fa), dtype=torch.int64, device=ta.device)
    area_b = torch.zeros(len(fb), dtype=torch.int64, device=ta.device)
    # pixel chunks: float32 counts stay exact (< 2**24) and the float copies within ~256 MB
    chunk = max(1 << 12, min(1 << 24, (1 << 26) // max(1, len(fa) + (len(fb) if b is not None else 0))))
    for start in range(0, fa.shape[1], chunk):
        xa = fa[:, start: start + chunk].float()
        xb = xa if b is None else fb[:, start: start + chunk].float()
        inter += (xa @ xb.T).round().long()
        area_a += xa.sum(1).round().long()
        area_b += xb.sum(1).round().long()
    union = area_a[:, None] + area_b[None] - inter
    return (inter.double() / union.clamp_min(1).double()).cpu().numpy()


def _boxes(flat_rows: np.ndarray, flat_cols: np.ndarray) -> np.ndarray:
    """(N, 4) inclusive boxes y0, y1, x0, x1 from (N, H) row and (N, W) column occupancy (empty: 0, -1, 0, -1)."""
    def ends(occ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        any_ = occ.any(1)
        first = np.where(any_, occ.argmax(1), 0)
        last = np.where(any_, occ.shape[1] - 1 - occ[:, ::-1].argmax(1), -1)
        return first, last
    y0, y1 = ends(flat_rows)
    x0, x1 = ends(flat_cols)
    return np.stack([y0, y1, x0, x1], 1)


def deduplicate(masks: np.ndarray | torch.Tensor, iou: float = DEDUP_IOU, *,
                device: str | torch.device | None = None) -> np.ndarray:
    """Indices (ascending) of the proposals to keep: greedily in the given order, a mask is dropped when its IoU
    with an earlier *kept* mask is at least ``iou`` (so put the preferred proposals first). Empty masks are
    dropped too.

    Only pairs that can reach ``iou`` are compared (the smaller area at least ``iou`` times the larger, and the
    boxes' overlap at least ``iou`` times the larger area); their exact IoUs come from one matrix product
    (:func:`mask_iou`) over the masks involved, cropped to their common box.

    Args:
        masks: (N, H, W) masks.
        iou: the IoU at or above which a later mask is a duplicate (in (0, 1]).
        device: where the IoU matrix product runs (default CPU).
    """
    if not 0 < iou <= 1:
        raise ValueError(f"the de-duplication IoU must be in (0, 1], got {iou}")
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    n = len(m)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    m = m.astype(bool, copy=False)
    area = np.count_nonzero(m.reshape(n, -1), axis=1).astype(np.int64)
    box = _boxes(m.any(2), m.any(1))
    keep = area > 0
    big, small = np.maximum(area[:, None], area[None]), np.minimum(area[:, None], area[None])
    oy = np.minimum(box[:, None, 1], box[None, :, 1]) - np.maximum(box[:, None, 0], box[None, :, 0]) + 1
    ox = np.minimum(box[:, None, 3], box[None, :, 3]) - np.maximum(box[:, None, 2], box[None, :, 2]) + 1
    overlap = np.clip(oy, 0, None) * np.clip(ox, 0, None)
    candidate = np.triu((small >= iou * big) & (overlap >= iou * big) & (small > 0), 1)
    involved = np.flatnonzero(candidate.any(0) | candidate.any(1))
    if len(involved) == 0:
        return np.flatnonzero(keep)
    b = box[involved]
    y0, y1, x0, x1 = b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()
    dup = np.zeros((n, n), dtype=bool)
    sub = mask_iou(np.ascontiguousarray(m[involved, y0: y1 + 1, x0: x1 + 1]), device=device) >= iou
    dup[np.ix_(involved, involved)] = sub
    dup &= candidate
    for i in involved:  # over proposals, not pixels: each step is one row of the IoU matrix
        if keep[i]:
            keep[i + 1:] &= ~dup[i, i + 1:]
    return np.flatnonzero(keep)


# ---------------------------------------------------------------------------------------------------------------
# (a) Proposals from textseg's grouping


def _min_pixels(min_area: int | float, total: int) -> int:
    if min_area < 0:
        raise ValueError(f"min_area must be >= 0, got {min_area}")
    return int(math.ceil(min_area * total)) if isinstance(min_area, float) and min_area < 1 else int(min_area)


def grouping_proposals(group_map: np.ndarray | torch.Tensor, *, min_area: int | float = 0.002, max_unions: int = 16,
                       connectivity: int = 8, dedup_iou: float | None = DEDUP_IOU) -> Proposals:
    """Instance-like proposals from an (H, W) group map, e.g. k-means groups (two identical objects side by side
    share a group but are separate components, so they become separate proposals).

    In order (then empty masks and near-duplicates of earlier proposals are dropped):

    1. the connected components of each group, after components under ``min_area`` are merged into their largest
       neighbour (:func:`merge_small_components`, no pixel is dropped), in raster order of their first pixel;
    2. each group with two or more components (the union of its components), by group id;
    3. the union of each pair of touching components (e.g. an object split into two groups), the ``max_unions``
       pairs with the longest shared boundary (:func:`region_adjacency`), longest first.

    A group here is the group of each merged component's largest part, so every proposal is a union of cleaned
    components.

    Args:
        group_map: (H, W) integer ids at the image's size (textseg's ``Groups.pixels`` of one image).
        min_area: components smaller than this are merged away: pixels (int or a float >= 1), or a share of the
            image (float < 1). 0 keeps every component.
        max_unions: how many unions of touching components to add (0: none).
        connectivity: 4 or 8, for components and for touching.
        dedup_iou: drop a proposal whose IoU with an earlier one is at least this (None: keep all).

    Returns:
        :class:`Proposals` with records ``{"source": "component", "group": g, "components": [i]}``,
        ``{"source": "group", "group": g, "components": [...]}`` and ``{"source": "union", "groups": [g, h],
        "components": [i, j], "boundary": n}``; component ids are those after the merge.
    """
    if max_unions < 0:
        raise ValueError(f"max_unions must be >= 0, got {max_unions}")
    comp, comp_group = connected_components(group_map, connectivity)
    h, w = comp.shape
    min_px = _min_pixels(min_area, h * w)
    if min_px > 1:
        merged = merge_small_components(comp, min_px, connectivity)
        if merged.max() != comp.max():
            # the merged component's group is the group of its largest part (the one that absorbed the others)
            n_new, n_old = int(merged.max()) + 1, int(comp.max()) + 1
            area = np.bincount(comp.ravel(), minlength=n_old)
            pair = np.unique(merged.ravel() * n_old + comp.ravel())
            new, old = pair // n_old, pair % n_old
            best = np.lexsort((old, -area[old], new))
            new, old = new[best], old[best]
            first = np.ones(len(new), dtype=bool)
            first[1:] = new[1:] != new[:-1]
            group = np.empty(n_new, dtype=comp_group.dtype)
            group[new[first]] = comp_group[old[first]]
            comp, comp_group = merged, group
    n = int(comp.max()) + 1
    ids = np.arange(n)
    masks: list[np.ndarray] = [comp[None] == ids[:, None, None]]
    records = [{"source": "component", "group": int(comp_group[i]), "components": [int(i)]} for i in ids]
    groups, counts = np.unique(comp_group, return_counts=True)
    multi = groups[counts > 1]
    if len(multi):
        group_px = comp_group[comp]
        masks.append(group_px[None] == multi[:, None, None])
        records += [{"source": "group", "group": int(g), "components": np.flatnonzero(comp_group == g).tolist()}
                    for g in multi]
    if max_unions and n > 1:
        a, b, length = region_adjacency(comp, connectivity)
        top = np.lexsort((b, a, -length))[:max_unions]
        if len(top):
            masks.append((comp[None] == a[top, None, None]) | (comp[None] == b[top, None, None]))
            records += [{"source": "union", "groups": [int(comp_group[a[t]]), int(comp_group[b[t]])],
                         "components": [int(a[t]), int(b[t])], "boundary": int(length[t])} for t in top]
    return make_proposals(np.concatenate(masks), records, dedup_iou)


class GroupingProposer:
    """Image → textseg's own grouping → :func:`grouping_proposals` (the CPU default source).

    The image is grouped by :meth:`RegionPipeline.group_map <textseg.pipeline.RegionPipeline.group_map>` (resized
    as for a whole-image prediction, short side ``short_side``, long side at most ``max_long_side``), the group map
    being at the image's size.

    Args:
        model: a :class:`~textseg.segmenter.Segmenter`, a :class:`~textseg.pipeline.RegionPipeline` or a
            :class:`~textseg.model.TextSegModel`.
        short_side, max_long_side: the resize (None: keep the size / no cap); the defaults are the default
            protocol's.
        **options: :func:`grouping_proposals` options (``min_area``, ``max_unions``, ``connectivity``,
            ``dedup_iou``).
    """

    def __init__(self, model: Any, *, short_side: int | None = 448, max_long_side: int | None = 2048,
                 **options: Any) -> None:
        self.pipeline = (RegionPipeline(model, text_cache_dir=False) if isinstance(model, TextSegModel)
                         else as_pipeline(model))
        self.short_side, self.max_long_side = short_side, max_long_side
        unknown = set(options) - {"min_area", "max_unions", "connectivity", "dedup_iou"}
        if unknown:
            raise TypeError(f"unknown grouping_proposals options: {sorted(unknown)}")
        self.options = options

    @torch.no_grad()
    def group_map(self, image: ImageLike) -> np.ndarray:
        """The (H, W) int64 group map of an image (path, PIL image or array) at the image's size."""
        p = self.pipeline.protocol.replace(short_side=self.short_side, max_long_side=self.max_long_side)
        return self.pipeline.group_map(load_image(image), p)

    def __call__(self, image: ImageLike) -> Proposals:
        """The grouping proposals of an image at its size."""
        return grouping_proposals(self.group_map(image), **self.options)


# ---------------------------------------------------------------------------------------------------------------
# (b) SAM's automatic mask generator


def sam_to_proposals(records: Iterable[dict[str, Any]], image_size: tuple[int, int], *,
                     dedup_iou: float | None = DEDUP_IOU) -> Proposals:
    """Proposals from the output of ``SamAutomaticMaskGenerator.generate``: dicts with ``segmentation`` (an
    (H, W) bool array, or a COCO RLE with ``output_mode="coco_rle"`` / ``"uncompressed_rle"``) and scores
    (``area``, ``predicted_iou``, ``stability_score``, ``bbox``, ...), ordered by decreasing ``predicted_iou``.

    Raises:
        ValueError: a record has no ``segmentation`` or a mask of another size than ``image_size``.
    """
    from textseg.data.coco_masks import decode_segmentation

    h, w = image_size
    items = list(records)
    masks = np.zeros((len(items), h, w), dtype=bool)
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if "segmentation" not in item:
            raise ValueError(f"SAM record {i} has no 'segmentation' (keys: {sorted(item)})")
        seg = item["segmentation"]
        mask = decode_segmentation(seg, h, w) if isinstance(seg, dict) else np.asarray(seg).astype(bool)
        if mask.shape != (h, w):
            raise ValueError(f"SAM mask {i} is {mask.shape}, the image is {(h, w)}")
        masks[i] = mask
        rec: dict[str, Any] = {"source": "sam", "index": i}
        for key in ("predicted_iou", "stability_score", "area"):
            if key in item:
                rec[key] = float(item[key]) if key != "area" else int(item[key])
        if "bbox" in item:
            rec["bbox"] = [float(v) for v in item["bbox"]]
        out.append(rec)
    order = sorted(range(len(items)), key=lambda i: -out[i].get("predicted_iou", 0.0))  # stable: ties keep order
    return make_proposals(masks[order], [out[i] for i in order], dedup_iou)


class SamProposer:
    """Proposals from SAM's automatic mask generator (``segment_anything``, installed by
    ``pip install 'textseg[sam]'``).

    Args:
        checkpoint: the SAM checkpoint file of ``model_type`` (see :data:`SAM_CHECKPOINT_URLS`).
        model_type: ``vit_h``, ``vit_l`` or ``vit_b``.
        device: where SAM runs (default: CUDA when available, else CPU).
        dedup_iou: as for :func:`sam_to_proposals`.
        generator: a ready mask generator (anything with ``generate(image) -> list[dict]``); then ``checkpoint``
            and ``model_type`` are not used.
        **generator_kwargs: ``SamAutomaticMaskGenerator`` options (``points_per_side``, ``pred_iou_thresh``, ...).

    Raises:
        UserError: ``segment_anything`` is not installed, or an unknown ``model_type``.
        MissingWeightsError: the checkpoint file does not exist (the message names the file and its download URL).
    """

    def __init__(self, checkpoint: str | Path | None = None, model_type: str = "vit_h", *,
                 device: str | torch.device | None = None, dedup_iou: float | None = DEDUP_IOU,
                 generator: Any = None, **generator_kwargs: Any) -> None:
        self.dedup_iou = dedup_iou
        if generator is not None:
            self.generator = generator
            return
        sam = load_sam(checkpoint, model_type, device)
        from segment_anything import SamAutomaticMaskGenerator

        self.generator = SamAutomaticMaskGenerator(sam, **generator_kwargs)

    @torch.no_grad()
    def __call__(self, image: ImageLike) -> Proposals:
        """SAM's proposals of an image at its size."""
        arr = load_image(image)
        return sam_to_proposals(self.generator.generate(arr), arr.shape[:2], dedup_iou=self.dedup_iou)


__all__ = [
    "DEDUP_IOU", "SAM_CHECKPOINT_URLS", "GroupingProposer", "Proposals", "SamProposer", "connected_components",
    "deduplicate", "grouping_proposals", "make_proposals", "mask_iou", "merge_small_components",
    "region_adjacency", "sam_to_proposals",
]
