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
- :func:`load_mask_proposals` (the user's masks: COCO RLE/polygon JSON, a PNG label map, a folder of PNG masks):
  in file order (JSON list order, increasing label value, file names sorted).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from textseg.errors import DatasetError, UserError
from textseg.ris.promptable import SAM_CHECKPOINT_URLS, load_sam

if TYPE_CHECKING:
    from textseg.io import ImageLike
    from textseg.model import TextSegModel
    from textseg.segmenter import Segmenter

DEDUP_IOU = 0.9


_MASK_IMAGE_SUFFIXES = (".png",)


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


def _finish(masks: np.ndarray, records: list[dict[str, Any]], dedup_iou: float | None) -> Proposals:
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
# Connected components and region adjacency (numpy only)


def _offsets(connectivity: int) -> list[tuple[int, int]]:
    if connectivity == 4:
        return [(0, 1), (1, 0)]
    if connectivity == 8:
        return [(0, 1), (1, 0), (1, 1), (1, -1)]
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")


def _neighbour_pairs(a: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """The values of ``a`` at every pixel p and at p + (dy, dx), for all p where both lie in the map (dy >= 0)."""
    h, w = a.shape
    ys, ye = 0, h - dy
    xs, xe = max(0, -dx), w - max(0, dx)
    return a[ys:ye, xs:xe], a[ys + dy: ye + dy, xs + dx: xe + dx]


def _union_find(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Root (smallest member) of each of ``n`` nodes under the undirected edges a[i]-b[i]: vectorised hooking of
    the larger root onto the smaller one, then pointer jumping, until no edge joins two roots."""
    parent = np.arange(n, dtype=np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        np.minimum.at(parent, hi, lo)  # hi is a root: parents only ever decrease, so no cycle can form
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        a, b = a[differ], b[differ]
    return parent


def _renumber_raster(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..C-1 in raster order of each label's first pixel."""
    _, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse].reshape(labels.shape)


def connected_components(label_map: np.ndarray | torch.Tensor, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of each value of an (H, W) label map.

    Works on runs of equal values along rows (union-find over the runs that touch across rows), so it costs a few
    vectorised passes over the pixels, not a Python loop.

    Args:
        label_map: (H, W) integer map (e.g. group ids).
        connectivity: 4 (edge neighbours) or 8 (edges and corners).

    Returns:
        (H, W) int64 component ids 0..C-1, in raster order of each component's first pixel, and the (C,) value of
        ``label_map`` of each component.
    """
    offsets = _offsets(connectivity)
    m = label_map.detach().cpu().numpy() if isinstance(label_map, torch.Tensor) else np.asarray(label_map)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a non-empty (H, W) label map, got shape {m.shape}")
    h, w = m.shape
    flat = m.ravel()
    start = np.ones(flat.size, dtype=bool)
    start[1:] = flat[1:] != flat[:-1]
    start[::w] = True
    run = (np.cumsum(start) - 1).reshape(h, w)
    n_runs = int(run[-1, -1]) + 1
    edges = []
    for dy, dx in offsets:
        if dy == 0:
            continue  # within a row, equal neighbours are one run already
        va, vb = _neighbour_pairs(m, dy, dx)
        ra, rb = _neighbour_pairs(run, dy, dx)
        same = va == vb
        edges.append(ra[same].astype(np.int64) * n_runs + rb[same])
    codes = np.unique(np.concatenate(edges)) if edges else np.zeros(0, np.int64)
    root = _union_find(codes // n_runs, codes % n_runs, n_runs)
    # a root is the smallest run id of its component, and run ids are in raster order: so are the roots
    roots, comp_of_run = np.unique(root, return_inverse=True)
    values = flat[np.flatnonzero(start)[roots]]
    return comp_of_run[run], values


def region_adjacency(labels: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of touching regions of an (H, W) label map and the length of their shared boundary.

    The boundary length of regions a and b is the number of neighbouring pixel pairs (right and down; with
    connectivity 8 also both diagonals) with one pixel in a and the other in b.

    Returns:
        (P,) a, (P,) b with a < b, and (P,) boundary lengths, sorted by (a, b).
    """
    n = int(labels.max()) + 1
    codes = []
    for dy, dx in _offsets(connectivity):
        la, lb = _neighbour_pairs(labels, dy, dx)
        differ = la != lb
        x, y = la[differ].astype(np.int64), lb[differ].astype(np.int64)
        codes.append(np.minimum(x, y) * n + np.maximum(x, y))
    pairs, counts = np.unique(np.concatenate(codes), return_counts=True)
    return pairs // n, pairs % n, counts.astype(np.int64)


def merge_small_components(labels: np.ndarray, min_area: int, connectivity: int = 8) -> np.ndarray:
    """Merge each component smaller than ``min_area`` pixels into its largest neighbouring component.

    A small component merges only into a neighbour larger than itself (equal areas: the one with the smaller id),
    so merges never form a cycle; rounds repeat until no small component has such a neighbour. Every pixel keeps a
    component: a small component with no larger neighbour (e.g. the only one) stays.

    Args:
        labels: (H, W) component ids 0..C-1 (:func:`connected_components`).
        min_area: components with fewer pixels are merged.
        connectivity: which pixels touch (4 or 8).

    Returns:
        (H, W) ids 0..C'-1 in raster order of each component's first pixel.
    """
    labels = np.asarray(labels, dtype=np.int64)
    while True:
        n = int(labels.max()) + 1
        area = np.bincount(labels.ravel(), minlength=n)
        small = area < min_area
        if not small.any() or n == 1:
            return labels
        a, b, _ = region_adjacency(labels, connectivity)
        src, dst = np.concatenate([a, b]), np.concatenate([b, a])
        keep = small[src]
        src, dst = src[keep], dst[keep]
        if not len(src):
            return labels
        order = np.lexsort((dst, -area[dst], src))  # per source: the largest neighbour first, ties to smaller id
        src, dst = src[order], dst[order]
        first = np.ones(len(src), dtype=bool)
        first[1:] = src[1:] != src[:-1]
        src, dst = src[first], dst[first]
        bigger = (area[dst] > area[src]) | ((area[dst] == area[src]) & (dst < src))
        if not bigger.any():
            return labels
        parent = np.arange(n, dtype=np.int64)
        parent[src[bigger]] = dst[bigger]
        while True:  # follow chains of merges (a -> b -> c) to their end
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        labels = _renumber_raster(parent[labels])


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
    return _finish(np.concatenate(masks), records, dedup_iou)


class GroupingProposer:
    """Image → textseg's own grouping → :func:`grouping_proposals` (the CPU default source).

    The image is grouped by :meth:`Segmenter.group_map <textseg.segmenter.Segmenter.group_map>` (resized as for a
    whole-image prediction, short side ``short_side``, long side at most ``max_long_side``), the group map being at
    the image's size.

    Args:
        model: a :class:`~textseg.segmenter.Segmenter`, or a :class:`~textseg.model.TextSegModel`.
        short_side, max_long_side: the resize (None: keep the size / no cap); the defaults are the default
            protocol's.
        **options: :func:`grouping_proposals` options (``min_area``, ``max_unions``, ``connectivity``,
            ``dedup_iou``).
    """

    def __init__(self, model: "TextSegModel | Segmenter", *, short_side: int | None = 448,
                 max_long_side: int | None = 2048, **options: Any) -> None:
        from textseg.segmenter import Segmenter

        self.segmenter = model if isinstance(model, Segmenter) else Segmenter(model, text_cache_dir=False)
        self.short_side, self.max_long_side = short_side, max_long_side
        unknown = set(options) - {"min_area", "max_unions", "connectivity", "dedup_iou"}
        if unknown:
            raise TypeError(f"unknown grouping_proposals options: {sorted(unknown)}")
        self.options = options

    @torch.no_grad()
    def group_map(self, image: "ImageLike") -> np.ndarray:
        """The (H, W) int64 group map of an image (path, PIL image or array) at the image's size."""
        return self.segmenter.group_map(image, short_side=self.short_side, max_long_side=self.max_long_side)

    def __call__(self, image: "ImageLike") -> Proposals:
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
    return _finish(masks[order], [out[i] for i in order], dedup_iou)


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
    def __call__(self, image: "ImageLike") -> Proposals:
        """SAM's proposals of an image at its size."""
        from textseg.io import load_image

        arr = load_image(image)
        return sam_to_proposals(self.generator.generate(arr), arr.shape[:2], dedup_iou=self.dedup_iou)


# ---------------------------------------------------------------------------------------------------------------
# (c) Masks given by the user


def _json_masks(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    from textseg.data.coco_masks import decode_segmentation

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"mask file {path} is not valid JSON: {err}") from None
    if isinstance(data, dict):
        key = next((k for k in ("masks", "annotations") if k in data), None)
        if key is None and {"counts", "size"} <= set(data):
            data = [data]  # a single RLE
        elif key is None:
            raise DatasetError(f"mask file {path} is a JSON object without 'masks' or 'annotations' (keys: "
                               f"{', '.join(sorted(map(str, data))[:8])})")
        else:
            data = data[key]
    if not isinstance(data, list):
        raise DatasetError(f"mask file {path} holds a JSON {type(data).__name__}, not a list of masks")
    h, w = size
    masks = np.zeros((len(data), h, w), dtype=bool)
    for i, item in enumerate(data):
        if isinstance(item, dict) and "segmentation" in item:
            item = item["segmentation"]
        if not isinstance(item, (dict, list)):
            raise DatasetError(f"mask file {path}: mask {i} is a {type(item).__name__}, not an RLE or polygons")
        try:
            masks[i] = decode_segmentation(item, h, w)
        except DatasetError as err:
            raise DatasetError(f"mask file {path}: mask {i}: {err}") from None
    return masks, list(range(len(data)))


def _read_mask_image(path: Path) -> np.ndarray:
    """The (H, W) integer values of a mask/label PNG (grey, palette indices, 16-bit or 1-bit)."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot read mask image {path}: {err.__class__.__name__}") from None
    if arr.ndim == 3:
        same = (arr[..., :3] == arr[..., :1]).all()
        if mode not in ("RGB", "RGBA") or not same:
            raise DatasetError(f"mask image {path} is a {mode} colour image, not a mask or label map (save it as "
                               "grey or palette PNG with one value per mask)")
        arr = arr[..., 0]
    return arr.astype(np.int64)


def _check_size(path: Path, arr: np.ndarray, size: tuple[int, int]) -> None:
    if arr.shape != tuple(size):
        raise DatasetError(f"mask image {path} is {arr.shape[1]}x{arr.shape[0]}, the image is {size[1]}x{size[0]}")


def load_mask_proposals(path: str | Path, image_size: tuple[int, int], *,
                        dedup_iou: float | None = DEDUP_IOU) -> Proposals:
    """Masks given by the user, as proposals at ``image_size``.

    Accepted:

    - a ``.json`` file: a list of COCO RLEs (compressed or not), ``{"masks": [...]}``, a COCO annotation list
      (items with ``segmentation``: RLE or polygons) or ``{"annotations": [...]}``; in list order;
    - a ``.png`` label map (grey, palette or 16-bit): each non-zero value is one mask, by increasing value;
    - a folder of binary ``.png`` masks (0 outside, any one non-zero value inside), by sorted file name.

    Empty masks are dropped; each record keeps where the mask came from (``path`` and ``index`` in the list,
    ``value`` in the label map, or ``path`` of the file in the folder).

    Args:
        path: the file or folder.
        image_size: (H, W) of the image the masks are for.
        dedup_iou: drop a mask whose IoU with an earlier one is at least this (None: keep all).

    Raises:
        UserError: the path does not exist or is of an unknown kind.
        DatasetError: a file is unreadable, of another size than the image, not a mask, or no mask is left (a file
            with zero masks is an error: there would be nothing to refer to).
    """
    path = Path(path)
    size = (int(image_size[0]), int(image_size[1]))
    if not path.exists():
        raise UserError(f"mask file {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _MASK_IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"mask folder {path} holds no .png masks")
        masks = np.zeros((len(files), *size), dtype=bool)
        for i, f in enumerate(files):
            arr = _read_mask_image(f)
            _check_size(f, arr, size)
            values = np.unique(arr)
            if len(values) > 2 or (len(values) == 2 and values[0] != 0):
                raise DatasetError(f"mask image {f} holds the values {values[:6].tolist()}, not a binary mask "
                                   "(0 outside, one non-zero value inside)")
            masks[i] = arr != 0
        records = [{"source": "file", "path": str(f)} for f in files]
    elif path.suffix.lower() == ".json":
        masks, indices = _json_masks(path, size)
        records = [{"source": "file", "path": str(path), "index": i} for i in indices]
    elif path.suffix.lower() in _MASK_IMAGE_SUFFIXES:
        arr = _read_mask_image(path)
        _check_size(path, arr, size)
        values = np.unique(arr)
        values = values[values != 0]
        masks = arr[None] == values[:, None, None]
        records = [{"source": "file", "path": str(path), "value": int(v)} for v in values]
    else:
        raise UserError(f"mask file {path}: unsupported kind (expected a .json of COCO RLEs/polygons, a .png label "
                        "map or a folder of .png masks)")
    out = _finish(masks, records, dedup_iou)
    if len(out) == 0:
        raise DatasetError(f"mask file {path} holds no mask (every mask is empty)" if len(masks)
                           else f"mask file {path} holds no mask")
    return out


__all__ = [
    "DEDUP_IOU", "SAM_CHECKPOINT_URLS", "GroupingProposer", "Proposals", "SamProposer", "connected_components",
    "deduplicate", "grouping_proposals", "load_mask_proposals", "mask_iou", "merge_small_components",
    "region_adjacency", "sam_to_proposals",
]
