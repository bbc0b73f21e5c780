"""Multi-scale grouping proposals: several group counts, a merge hierarchy of each, ranked by agreement.

One group count rarely cuts every object out: a coarse grouping joins touching objects, a fine one splits an object
into its coloured parts. :class:`MultiScaleProposer` groups the image at several counts; for each it takes the
grouping proposals (:func:`~textseg.ris.proposals.grouping_proposals`) and every region of a bottom-up merge
hierarchy of the components (:func:`merge_hierarchy`: adjacent regions joined by colour, size and fill similarity,
as in selective search). From that pool it keeps proposals within an area range, ranks them by *support* — how many
pool proposals cover nearly the same pixels (a region found at many counts and merge levels is likely an object) —
drops near-duplicates of better-ranked ones and keeps at most ``max_proposals``.
"""

from __future__ import annotations

import heapq
from typing import Any, Sequence

import numpy as np
import torch

from textseg.io import ImageLike, load_image
from textseg.model import TextSegModel
from textseg.pipeline import RegionPipeline, as_pipeline
from textseg.ris.components import connected_components, merge_small_components, region_adjacency
from textseg.ris.proposals import DEDUP_IOU, Proposals, deduplicate, grouping_proposals, mask_iou


def _colour_histograms(image: np.ndarray, labels: np.ndarray, n: int, bins: int) -> np.ndarray:
    """(n, 3 * bins) per-channel colour histograms of each region, each summing to 1."""
    q = np.clip(image.astype(np.int64) * bins // 256, 0, bins - 1)
    flat = labels.ravel()
    hist = np.zeros((n, 3 * bins))
    for c in range(3):
        np.add.at(hist, (flat, c * bins + q[..., c].ravel()), 1.0)
    return hist / np.maximum(hist.sum(1, keepdims=True), 1.0)


def _region_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) inclusive boxes y0, y1, x0, x1 of each region of a label map."""
    h, w = labels.shape
    ys, xs = np.divmod(np.arange(h * w), w)
    flat = labels.ravel()
    box = np.stack([np.full(n, h), np.full(n, -1), np.full(n, w), np.full(n, -1)], 1)
    np.minimum.at(box[:, 0], flat, ys)
    np.maximum.at(box[:, 1], flat, ys)
    np.minimum.at(box[:, 2], flat, xs)
    np.maximum.at(box[:, 3], flat, xs)
    return box


def merge_hierarchy(image: np.ndarray, labels: np.ndarray, *, bins: int = 8,
                    weights: Sequence[float] = (1.0, 1.0, 1.0), connectivity: int = 8) -> list[list[int]]:
    """Bottom-up merge hierarchy of the regions of a label map.

    Starting from the regions of ``labels``, the most similar pair of touching regions is merged until one region
    is left. Similarity is ``wc * colour + ws * size + wf * fill``: the intersection of the two regions' colour
    histograms (in [0, 1]), 1 minus their joint share of the image (small regions merge first), and 1 minus the
    share of the image their joint bounding box holds beyond them (regions that fill each other's box merge first).

    Args:
        image: (H, W, 3) uint8 image at the label map's size.
        labels: (H, W) region ids 0..n-1 (e.g. :func:`~textseg.ris.components.connected_components`).
        bins: histogram bins per colour channel.
        weights: (colour, size, fill) weights.
        connectivity: 4 or 8, which pixels touch.

    Returns:
        The members (region ids of ``labels``) of each merged region, in merge order (n - 1 lists for a connected
        map of n regions; fewer when the map is not connected).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and label map {labels.shape} differ in size")
    n = int(labels.max()) + 1
    wc, ws, wf = (float(v) for v in weights)
    total = float(labels.size)
    hist = list(_colour_histograms(image, labels, n, bins))
    size = np.bincount(labels.ravel(), minlength=n).astype(float).tolist()
    box = [tuple(b) for b in _region_boxes(labels, n).tolist()]
    members: list[list[int]] = [[i] for i in range(n)]
    a, b, _ = region_adjacency(labels, connectivity)
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for x, y in zip(a.tolist(), b.tolist()):
        neighbours[x].add(y)
        neighbours[y].add(x)

    def joint_box(i: int, j: int) -> tuple[int, int, int, int]:
        return (min(box[i][0], box[j][0]), max(box[i][1], box[j][1]), min(box[i][2], box[j][2]),
                max(box[i][3], box[j][3]))

    def similarity(i: int, j: int) -> float:
        y0, y1, x0, x1 = joint_box(i, j)
        joint = size[i] + size[j]
        return (wc * float(np.minimum(hist[i], hist[j]).sum()) + ws * (1.0 - joint / total)
                + wf * (1.0 - ((y1 - y0 + 1) * (x1 - x0 + 1) - joint) / total))

    # a max-heap of (-similarity, i, j); pairs with a merged-away region are skipped when popped
    heap = [(-similarity(i, j), i, j) for i in range(n) for j in neighbours[i] if i < j]
    heapq.heapify(heap)
    alive = [True] * n
    merged: list[list[int]] = []
    while heap:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        k = len(members)
        joint = size[i] + size[j]
        hist.append((hist[i] * size[i] + hist[j] * size[j]) / joint)
        size.append(joint)
        box.append(joint_box(i, j))
        members.append(members[i] + members[j])
        alive[i] = alive[j] = False
        alive.append(True)
        merged.append(sorted(members[k]))
        around = (neighbours.pop(i) | neighbours.pop(j)) - {i, j}
        neighbours[k] = around
        for x in around:
            neighbours[x] -= {i, j}
            neighbours[x].add(k)
            heapq.heappush(heap, (-similarity(x, k), x, k))
    return merged


def support(masks: np.ndarray, iou: float = 0.7) -> np.ndarray:
    """(N,) how many of the N masks (itself included) have IoU at least ``iou`` with each mask."""
    if len(masks) == 0:
        return np.zeros(0, dtype=np.int64)
    return (mask_iou(masks) >= iou).sum(1).astype(np.int64)


def proposal_prior(proposals: Proposals, support_weight: float = 2.0, area_weight: float = -0.5) -> np.ndarray | float:
    """(N,) ``support_weight × log(support) + area_weight × log(area share)`` of proposals whose records all carry
    ``support`` (:class:`MultiScaleProposer`'s), else 0: added to appearance scores, it lets a whole object, found
    at many counts and merge levels, beat its parts, and an object beat the larger regions that contain it."""
    if not len(proposals) or any("support" not in r for r in proposals.records):
        return 0.0
    support = np.array([max(1, int(r["support"])) for r in proposals.records], dtype=np.float64)
    area = np.maximum(proposals.masks.reshape(len(proposals), -1).mean(1), 1e-9)
    return support_weight * np.log(support) + area_weight * np.log(area)


class MultiScaleProposer:
    """Image → grouping at several counts → grouping proposals + merge hierarchies → ranked, capped proposals.

    Args:
        model: a :class:`~textseg.segmenter.Segmenter`, a :class:`~textseg.pipeline.RegionPipeline` or a
            :class:`~textseg.model.TextSegModel`; its grouping is run with each count of ``counts``.
        counts: the group counts.
        short_side, max_long_side: the resize at which the image is grouped (None: keep the size / no cap).
        min_area, max_area: proposals outside this share of the image are dropped.
        max_proposals: at most this many proposals, the best supported first.
        support_iou: the IoU at which two pool proposals count as supporting each other (:func:`support`).
        dedup_iou: a proposal whose IoU with a better-ranked kept one reaches this is dropped.
        hierarchy: add each count's merge hierarchy (:func:`merge_hierarchy`) to the pool.
        min_component: components under this share of the image are merged into a neighbour first.
    """

    def __init__(self, model: Any, *, counts: Sequence[int] = (8, 16, 32), short_side: int | None = 448,
                 max_long_side: int | None = 2048, min_area: float = 0.006, max_area: float = 0.5,
                 max_proposals: int = 100, support_iou: float = 0.7, dedup_iou: float = DEDUP_IOU,
                 hierarchy: bool = True, min_component: float = 0.002) -> None:
        if not counts or any(int(k) < 1 for k in counts):
            raise ValueError(f"counts must be positive group counts, got {list(counts)}")
        if not 0 <= min_area <= max_area <= 1:
            raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {min_area}, {max_area}")
        if max_proposals < 1:
            raise ValueError(f"max_proposals must be >= 1, got {max_proposals}")
        self.pipeline = (RegionPipeline(model, text_cache_dir=False) if isinstance(model, TextSegModel)
                         else as_pipeline(model))
        self.counts = tuple(int(k) for k in counts)
        self.short_side, self.max_long_side = short_side, max_long_side
        self.min_area, self.max_area = min_area, max_area
        self.max_proposals, self.support_iou, self.dedup_iou = max_proposals, support_iou, dedup_iou
        self.hierarchy, self.min_component = hierarchy, min_component

    @torch.no_grad()
    def group_maps(self, image: np.ndarray) -> list[np.ndarray]:
        """The (H, W) group map of an (H, W, 3) image at each count, at the image's size."""
        p = self.pipeline.protocol.replace(short_side=self.short_side, max_long_side=self.max_long_side)
        x = self.pipeline.prepare(image, p)
        model = self.pipeline.model
        features = model.grouper.backbone(x)  # once for every count
        return [model.group(x, pixel_size=image.shape[:2], num_groups=k, features=features).pixels[0].cpu().numpy()
                for k in self.counts]

    def pool(self, image: np.ndarray) -> Proposals:
        """Every candidate of an (H, W, 3) image before the area filter and ranking."""
        masks: list[np.ndarray] = []
        records: list[dict[str, Any]] = []
        min_px = int(np.ceil(self.min_component * image.shape[0] * image.shape[1]))
        for k, groups in zip(self.counts, self.group_maps(image)):
            base = grouping_proposals(groups, min_area=self.min_component, dedup_iou=None)
            masks.append(base.masks)
            records += [{**r, "count": k} for r in base.records]
            if not self.hierarchy:
                continue
            comp, _ = connected_components(groups)
            if min_px > 1:
                comp = merge_small_components(comp, min_px)
            merged = merge_hierarchy(image, comp)
            if merged:
                ids = np.arange(int(comp.max()) + 1)
                member = np.zeros((len(merged), len(ids)), dtype=bool)
                for r, m in enumerate(merged):
                    member[r, m] = True
                masks.append(member[:, comp])
                records += [{"source": "merge", "count": k, "level": r + 1, "components": m}
                            for r, m in enumerate(merged)]
        return Proposals(np.concatenate(masks) if masks else np.zeros((0, *image.shape[:2]), bool), records)

    def __call__(self, image: ImageLike) -> Proposals:
        """The ranked proposals of an image at its size (records carry ``count`` and ``support``)."""
        arr = load_image(image)
        pool = self.pool(arr)
        if len(pool) == 0:
            return pool
        area = pool.masks.reshape(len(pool), -1).mean(1)
        pool = pool.select(np.flatnonzero((area >= self.min_area) & (area <= self.max_area) & (area > 0)))
        sup = support(pool.masks, self.support_iou)
        order = np.argsort(-sup, kind="stable")
        ranked = pool.select(order)
        keep = deduplicate(ranked.masks, self.dedup_iou)[: self.max_proposals]
        out = ranked.select(keep)
        for rec, s in zip(out.records, sup[order][keep]):
            rec["support"] = int(s)
        return out


__all__ = ["MultiScaleProposer", "merge_hierarchy", "proposal_prior", "support"]
