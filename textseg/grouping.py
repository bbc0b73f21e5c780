"""Per-image grouping of patch features into spatially consistent regions by k-means."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_log = logging.getLogger(__name__)


def faiss_available() -> bool:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every import at INFO
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def kmeans_plusplus_init(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (D² sampling) with a seeded generator; returns (k, D) initial centroids."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    centroids = np.empty((k, x.shape[1]), dtype=np.float32)
    centroids[0] = x[rng.integers(n)]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for i in range(1, k):
        total = float(d2.sum())
        # All remaining points coincide with a centroid: any choice is as good; take them in order.
        idx = int(rng.choice(n, p=d2 / total)) if total > 0 else i % n
        centroids[i] = x[idx]
        d2 = np.minimum(d2, ((x - centroids[i]) ** 2).sum(1))
    return centroids


def _kmeans_torch(x: np.ndarray, init: np.ndarray, iters: int) -> np.ndarray:
    xt = torch.from_numpy(x)
    c = torch.from_numpy(init.copy())
    k = c.shape[0]
    for _ in range(iters):
        assign = torch.cdist(xt, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, xt)
        counts = torch.bincount(assign, minlength=k).to(xt.dtype)
        nonempty = counts > 0
        c[nonempty] = sums[nonempty] / counts[nonempty, None]
    return c.numpy()


def _kmeans_faiss(x: np.ndarray, init: np.ndarray, iters: int, seed: int) -> np.ndarray:
    import faiss

    k, d = init.shape
    use_gpu = faiss.get_num_gpus() > 0 if hasattr(faiss, "get_num_gpus") else False
    km = faiss.Kmeans(d, k, niter=iters, seed=seed, verbose=False, gpu=use_gpu,
                      min_points_per_centroid=1, max_points_per_centroid=max(1, x.shape[0]))
    km.train(x, init_centroids=init)
    return np.asarray(km.centroids, dtype=np.float32)


def kmeans(x: np.ndarray | torch.Tensor, k: int, *, iters: int = 20, seed: int = 0,
           backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Lloyd k-means from a seeded k-means++ start.

    Both backends start from the same centroids and run the same number of Lloyd steps, so on the same seed they
    agree (up to float rounding) unless a cluster empties, which faiss refills by splitting and torch leaves as is.

    Args:
        x: (N, D) points.
        k: number of clusters; reduced to N when there are fewer points.
        iters: Lloyd iterations.
        seed: seed of the k-means++ initialisation.
        backend: ``"faiss"`` (GPU index when faiss sees a GPU), ``"torch"``, or ``"auto"`` (faiss if installed).

    Returns:
        labels (N,) int64 and centroids (k, D) float32.
    """
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans expects a non-empty (N, D) array, got shape {x.shape}")
    k = max(1, min(int(k), x.shape[0]))
    if backend == "auto":
        backend = "faiss" if faiss_available() else "torch"
    init = kmeans_plusplus_init(x, k, seed)
    if backend == "faiss":
        centroids = _kmeans_faiss(x, init, iters, seed)
    elif backend == "torch":
        centroids = _kmeans_torch(x, init, iters)
    else:
        raise ValueError(f"unknown k-means backend {backend!r} (use 'auto', 'faiss' or 'torch')")
    labels = torch.cdist(torch.from_numpy(x), torch.from_numpy(centroids)).argmin(1).numpy()
    return labels.astype(np.int64), centroids


def merge_small_groups(labels: np.ndarray, x: np.ndarray, min_size: int) -> np.ndarray:
    """Reassign the points of groups smaller than ``min_size`` to the nearest centroid of a kept group.

    Returns labels renumbered to 0..K'-1, keeping the order of the original ids.
    """
    ids, counts = np.unique(labels, return_counts=True)
    keep = ids[counts >= min_size]
    if len(keep) == 0:  # every group is tiny: keep the largest one only
        keep = ids[[int(np.argmax(counts))]]
    if len(keep) < len(ids):
        centroids = np.stack([x[labels == i].mean(0) for i in keep])
        small = ~np.isin(labels, keep)
        nearest = torch.cdist(torch.from_numpy(x[small]), torch.from_numpy(centroids)).argmin(1).numpy()
        labels = labels.copy()
        labels[small] = keep[nearest]
    remap = np.full(labels.max() + 1, -1, dtype=np.int64)
    remap[np.unique(labels)] = np.arange(len(np.unique(labels)))
    return remap[labels]


def upsample_groups(groups: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Upsample an (h, w) group map to (H, W) pixels: bilinear on the one-hot maps, then argmax (smooth borders)."""
    g = torch.as_tensor(np.asarray(groups), dtype=torch.long)
    k = int(g.max()) + 1
    onehot = F.one_hot(g, k).permute(2, 0, 1)[None].float()
    up = F.interpolate(onehot, size=size, mode="bilinear", align_corners=False)
    return up[0].argmax(0).numpy()


@dataclass
class GroupingConfig:
    """Settings of per-image k-means grouping.

    Attributes:
        num_groups: k of k-means.
        xy_weight: weight of the (x, y) position in [0, 1] appended to the L2-normalised features; 0 disables it.
        min_group_frac: groups with fewer than this share of the patches are merged into their nearest group.
        iters: Lloyd iterations.
        seed: k-means++ seed (the same image gives the same groups).
        backend: k-means backend, see :func:`kmeans`.
        normalize: L2-normalise features before clustering (cosine geometry, as for DINO features).
    """

    num_groups: int = 8
    xy_weight: float = 0.0
    min_group_frac: float = 0.01
    iters: int = 20
    seed: int = 0
    backend: str = "auto"
    normalize: bool = True


def group_feature_map(features: torch.Tensor | np.ndarray, cfg: GroupingConfig) -> np.ndarray:
    """Group one (h, w, C) feature map into an (h, w) map of group ids 0..K'-1."""
    f = torch.as_tensor(features).float()
    if f.ndim != 3:
        raise ValueError(f"expected an (h, w, C) feature map, got shape {tuple(f.shape)}")
    h, w, _ = f.shape
    x = f.reshape(h * w, -1)
    if cfg.normalize:
        x = F.normalize(x, dim=1)
    if cfg.xy_weight > 0:
        ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        x = torch.cat([x, cfg.xy_weight * torch.stack([xs, ys], -1).reshape(h * w, 2)], 1)
    xn = x.numpy()
    labels, _ = kmeans(xn, cfg.num_groups, iters=cfg.iters, seed=cfg.seed, backend=cfg.backend)
    min_size = int(np.ceil(cfg.min_group_frac * h * w))
    labels = merge_small_groups(labels, xn, max(1, min_size))  # with min_size 1 this only renumbers
    return labels.reshape(h, w)
