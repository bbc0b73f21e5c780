"""Connected components, region adjacency and small-component merging of label maps (numpy only)."""

from __future__ import annotations

import numpy as np
import torch


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


__all__ = ["connected_components", "merge_small_components", "region_adjacency"]
