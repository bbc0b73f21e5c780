"""Per-image grouping of patch features into spatially consistent regions by k-means."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from textseg.config import GroupingConfig

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

    k is first reduced to the number of distinct points: more centroids than distinct points would leave clusters
    empty, which faiss refills by splitting and torch would not. Both backends then start from the same
    centroids and run the same number of Lloyd steps, so on the same seed they agree up to float rounding.

    Args:
        x: (N, D) points.
        k: number of clusters.
        iters: Lloyd iterations.
        seed: seed of the k-means++ initialisation.
        backend: ``"faiss"`` (GPU index when faiss sees a GPU), ``"torch"``, or ``"auto"`` (faiss if installed).

    Returns:
        labels (N,) int64 and centroids (k', D) float32, k' = min(k, distinct points).
    """
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans expects a non-empty (N, D) array, got shape {x.shape}")
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"unknown k-means backend {backend!r} (use 'auto', 'faiss' or 'torch')")
    k = max(1, min(int(k), len(np.unique(x, axis=0))))
    if backend == "auto":
        backend = "faiss" if faiss_available() else "torch"
    init = kmeans_plusplus_init(x, k, seed)
    centroids = _kmeans_faiss(x, init, iters, seed) if backend == "faiss" else _kmeans_torch(x, init, iters)
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


def _one_hot(groups: torch.Tensor, k: int) -> torch.Tensor:
    """(B, h, w) group ids → (B, k, h, w) float one-hot; ids < 0 (none) stay all zero."""
    return (groups.unsqueeze(1) == torch.arange(k, device=groups.device).view(1, k, 1, 1)).float()


def groups_to_pixels(groups: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample (B, h, w) patch group maps to (B, H, W) pixels: bilinear on the one-hot maps, then argmax, so that
    borders are smooth rather than blocky."""
    k = int(groups.max()) + 1
    up = F.interpolate(_one_hot(groups, k), size=size, mode="bilinear", align_corners=False)
    return up.argmax(1)


def groups_to_region_masks(groups: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) patch group maps → (B, K, gh, gw) bool region masks on another patch grid (the CLIP's).

    A patch of the target grid belongs to the region that covers at least half of it (exact area shares when one
    grid's patch is a multiple of the other's); a region that covers no patch that much keeps the patch where its
    share is largest, so every group of an image gets at least one patch. K is the most groups of any image;
    regions past an image's own count are all False (padding).
    """
    k = int(groups.max()) + 1
    onehot = _one_hot(groups, k)
    shrink = grid[0] <= groups.shape[1] and grid[1] <= groups.shape[2]
    share = F.interpolate(onehot, size=grid, mode="area") if shrink else \
        F.interpolate(onehot, size=grid, mode="bilinear", align_corners=False)
    masks = share >= 0.5
    present = onehot.flatten(2).any(2)  # (B, K)
    empty = present & ~masks.flatten(2).any(2)
    if bool(empty.any()):
        flat = masks.flatten(2)
        best = share.flatten(2).argmax(2)
        b, r = empty.nonzero(as_tuple=True)
        flat[b, r, best[b, r]] = True
        masks = flat.view_as(masks)
    return masks


def pad_region_masks(masks: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-image (K_i, gh, gw) masks into (B, K, gh, gw), K = max K_i; padding regions are all False."""
    k = max(m.shape[0] for m in masks)
    out = torch.zeros(len(masks), k, *masks[0].shape[1:], dtype=torch.bool, device=masks[0].device)
    for i, m in enumerate(masks):
        out[i, : m.shape[0]] = m
    return out


@dataclass
class Groups:
    """The grouping of a batch of images.

    Attributes:
        patch: (B, h, w) int64 group ids on the backbone's patch grid, 0..K_i - 1 per image.
        region_masks: (B, K, gh, gw) bool masks on the region (CLIP) grid; padding regions all False.
        pixels: (B, H, W) int64 group ids at pixel level, or None when not asked for.
    """

    patch: torch.Tensor
    region_masks: torch.Tensor
    pixels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.patch.shape[0]


class Grouper(nn.Module):
    """Groups images into regions: a frozen feature backbone, then per-image k-means.

    It holds only what grouping needs (the backbone and the k-means settings), so training can run it in data
    workers without the CLIP.

    Args:
        backbone: maps (B, 3, H, W) images in [0, 1] to (B, h, w, C) features (:mod:`textseg.backbones`).
        config: k-means settings.
        region_patch_size: patch side of the grid the region masks are made for (the CLIP's).
    """

    def __init__(self, backbone: nn.Module, config: GroupingConfig, region_patch_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.region_patch_size = int(region_patch_size)

    @property
    def patch_size(self) -> int:
        """Image sides must be multiples of this (both grids' patch sizes divide it)."""
        return int(np.lcm(self.backbone.patch_size, self.region_patch_size))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, *, pixels: bool = True,
                pixel_size: tuple[int, int] | None = None) -> Groups:
        """Group a (B, 3, H, W) batch in [0, 1] (H, W multiples of :attr:`patch_size`).

        Args:
            images: the batch, on the backbone's device.
            pixels: also return pixel-level group maps.
            pixel_size: size of the pixel maps; defaults to (H, W).
        """
        h, w = images.shape[-2:]
        if h % self.region_patch_size or w % self.region_patch_size:
            raise ValueError(f"image size {(h, w)} is not a multiple of the region patch size {self.region_patch_size}")
        feats = self.backbone(images).float().cpu()  # k-means runs on the host (faiss / numpy)
        patch = torch.stack([torch.from_numpy(group_feature_map(f, self.config)) for f in feats]).to(images.device)
        grid = (h // self.region_patch_size, w // self.region_patch_size)
        out = Groups(patch=patch, region_masks=groups_to_region_masks(patch, grid))
        if pixels:
            out.pixels = groups_to_pixels(patch, pixel_size or (h, w))
        return out
