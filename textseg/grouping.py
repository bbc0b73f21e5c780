"""Grouping of patch features into spatially consistent regions by k-means.

Two paths give the same groups on the same seed (up to float rounding): a per-image host path (:func:`kmeans`,
numpy k-means++ seeding, then faiss or torch Lloyd steps) and a batched path that clusters a whole batch of maps in
one set of tensor ops on the features' device (:func:`kmeans_batched`, :func:`merge_small_groups_batched`).
:func:`group_feature_maps` picks one from the config's backend.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace

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


def _cdf_dtype(device: torch.device) -> torch.dtype:
    # numpy's choice() accumulates the probabilities in float64; devices without float64 (mps) fall back to float32
    return torch.float64 if device.type in ("cpu", "cuda", "meta") else torch.float32


@contextlib.contextmanager
def _exact_float32(device: torch.device):
    """Plain float32 arithmetic for k-means on any device: no autocast and no TF32 matmuls (cdist and the cluster
    sums are matmuls), so that a GPU gives the CPU's labels up to float rounding."""
    if device.type != "cuda":
        with torch.autocast("cpu", enabled=False) if device.type == "cpu" else contextlib.nullcontext():
            yield
        return
    matmul = torch.backends.cuda.matmul
    field = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"  # torch >= 2.9 : older
    before = getattr(matmul, field)
    setattr(matmul, field, "ieee" if field == "fp32_precision" else False)
    try:
        with torch.autocast("cuda", enabled=False):
            yield
    finally:
        setattr(matmul, field, before)


def _assign(x: torch.Tensor, centroids: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, D) points, (B, k, D) centroids → (B, N) index of the nearest centroid among the ``allowed`` (B, k).

    |c|² − 2 x·c orders the centroids as the distance does (|x|² is the same for all) and costs one matmul.
    """
    score = torch.baddbmm(centroids.pow(2).sum(-1).unsqueeze(1), x, centroids.transpose(1, 2), alpha=-2)
    if allowed is not None:
        score = score.masked_fill(~allowed.unsqueeze(1), float("inf"))
    return score.argmin(-1)


def _sq_dist_to(x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """(B, N) squared distances of (B, N, D) points to one (B, 1, D) point, from their differences (exactly 0 for
    equal points, as the host's seeding computes them) in one fused kernel."""
    return torch.cdist(x, point, compute_mode="donot_use_mm_for_euclid_dist").squeeze(2).square()


def _cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums (B, k, D) and counts (B, k) of (B, N, D) points under (B, N) labels.

    A one-hot matmul rather than scatter_add: on CUDA scatter_add sums with atomics in no fixed order, and the same
    image must give the same groups every time.
    """
    onehot = F.one_hot(labels, k).to(x.dtype).transpose(1, 2)  # (B, k, N)
    return onehot @ x, onehot.sum(2)


def kmeans_plusplus_init_batched(x: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding of every (N, D) point set of a (B, N, D) batch at once, on ``x``'s device.

    It draws the same random numbers as :func:`kmeans_plusplus_init` (a numpy generator seeded by ``seed``: one
    integer for the first pick, then one uniform per pick, the same for every image) and inverts the same D² CDF, so
    both pick the same points up to float rounding. Only those few numbers come from the host.

    Once an image's points all coincide with its centroids (fewer distinct points than k) its further slots are
    dead: they hold a duplicate point and :func:`kmeans_batched` never assigns to them, so they stay empty.

    Returns:
        centroids (B, k, D) and live (B, k) bool.
    """
    b, n, d = x.shape
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    cdf_dtype = _cdf_dtype(x.device)
    uniforms = torch.from_numpy(rng.random(k - 1)).to(device=x.device, dtype=cdf_dtype)
    uniforms = uniforms.view(k - 1, 1, 1).expand(k - 1, b, 1).contiguous()
    picks = torch.full((b, k), first, dtype=torch.long, device=x.device)
    live = torch.ones(b, k, dtype=torch.bool, device=x.device)
    d2 = _sq_dist_to(x, x[:, first : first + 1])  # (B, N) squared distance to the nearest centroid
    for i in range(1, k):
        total = d2.sum(1, keepdim=True)
        cdf = (d2 / total).to(cdf_dtype).cumsum(1)
        pick = torch.searchsorted(cdf / cdf[:, -1:], uniforms[i - 1], right=True).squeeze(1)
        alive = total.squeeze(1) > 0
        pick = torch.where(alive, pick.clamp_max(n - 1), i % n)  # a dead slot takes a point in order, as on the host
        picks[:, i], live[:, i] = pick, alive
        chosen = x.gather(1, pick.view(b, 1, 1).expand(b, 1, d))
        d2 = torch.minimum(d2, _sq_dist_to(x, chosen))
    return x.gather(1, picks.unsqueeze(2).expand(b, k, d)), live


def _lloyd_step(x: torch.Tensor, centroids: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """One Lloyd step: each centroid moves to the mean of its points; one with no point stays where it was."""
    sums, counts = _cluster_sums(x, _assign(x, centroids, allowed), centroids.shape[1])
    return torch.where(counts.unsqueeze(2) > 0, sums / counts.clamp_min(1).unsqueeze(2), centroids)


def kmeans_batched(x: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd k-means of a (B, N, D) batch of point sets in one set of tensor ops on ``x``'s device.

    Seeded as :func:`kmeans_plusplus_init_batched`, then ``iters`` Lloyd steps for every image; a cluster that gets
    no point keeps its previous centroid. Images with fewer than k distinct points keep k slots, the extra ones
    empty. On the same seed it gives the labels of :func:`kmeans` (backend ``torch``) image by image, up to float
    rounding.

    Returns:
        labels (B, N) int64 in 0..k-1 (not every id is used) and centroids (B, k, D) float32.
    """
    if x.ndim != 3 or x.shape[1] == 0:
        raise ValueError(f"kmeans_batched expects a non-empty (B, N, D) batch, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = x.detach().float()
    with _exact_float32(x.device):
        centroids, live = kmeans_plusplus_init_batched(x, int(k), seed)
        for _ in range(iters):
            centroids = _lloyd_step(x, centroids, live)
        return _assign(x, centroids, live), centroids


def merge_small_groups_batched(labels: torch.Tensor, x: torch.Tensor, min_size: int,
                               k: int | None = None) -> torch.Tensor:
    """:func:`merge_small_groups` for a (B, N) batch of labels of (B, N, D) points, on their device.

    Points of groups smaller than ``min_size`` go to the nearest mean of a kept group (the largest group is kept
    when none is big enough); each image's labels are then renumbered 0..K_i-1 in the order of the original ids.

    Args:
        k: labels are below this (k-means' k); by default the largest label + 1, which waits for the device.
    """
    k = int(labels.max()) + 1 if k is None else int(k)
    onehot = F.one_hot(labels, k).bool()  # (B, N, k)
    if min_size > 1:
        x = x.detach().float()
        with _exact_float32(x.device):
            sums, counts = _cluster_sums(x, labels, k)
            keep = counts >= min_size
            largest = F.one_hot(counts.argmax(1), k).bool()
            keep = torch.where(keep.any(1, keepdim=True), keep, largest)
            nearest = _assign(x, sums / counts.clamp_min(1).unsqueeze(2), keep)
        labels = torch.where(keep.gather(1, labels), labels, nearest)
        onehot = F.one_hot(labels, k).bool()
    rank = onehot.any(1).long().cumsum(1) - 1  # (B, k): new id of each present old id
    return rank.gather(1, labels)


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


def _points(features: torch.Tensor, cfg: GroupingConfig) -> torch.Tensor:
    """(B, h, w, C) feature maps → (B, h*w, D) float32 points to cluster: L2-normalised features as ``cfg`` says,
    then the weighted (x, y) position in [0, 1] when ``xy_weight`` > 0."""
    b, h, w, _ = features.shape
    x = features.float().reshape(b, h * w, -1)
    if cfg.normalize:
        x = F.normalize(x, dim=-1)
    if cfg.xy_weight > 0:
        ys, xs = torch.meshgrid(torch.linspace(0, 1, h, device=x.device), torch.linspace(0, 1, w, device=x.device),
                                indexing="ij")
        xy = cfg.xy_weight * torch.stack([xs, ys], -1).reshape(1, h * w, 2)
        x = torch.cat([x, xy.expand(b, -1, -1)], -1)
    return x


def _min_group_size(cfg: GroupingConfig, n: int) -> int:
    return max(1, int(np.ceil(cfg.min_group_frac * n)))  # with 1, merging only renumbers


def group_feature_map(features: torch.Tensor | np.ndarray, cfg: GroupingConfig) -> np.ndarray:
    """Group one (h, w, C) feature map into an (h, w) map of group ids 0..K'-1 on the host (:func:`kmeans`)."""
    f = torch.as_tensor(features).detach().cpu()
    if f.ndim != 3:
        raise ValueError(f"expected an (h, w, C) feature map, got shape {tuple(f.shape)}")
    h, w, _ = f.shape
    xn = _points(f[None], cfg)[0].numpy()
    labels, _ = kmeans(xn, cfg.num_groups, iters=cfg.iters, seed=cfg.seed, backend=cfg.backend)
    return merge_small_groups(labels, xn, _min_group_size(cfg, h * w)).reshape(h, w)


def group_feature_maps(features: torch.Tensor, cfg: GroupingConfig) -> torch.Tensor:
    """Group a (B, h, w, C) batch of feature maps into (B, h, w) int64 group ids 0..K_i-1, on the features' device.

    The backend picks the path: ``torch`` clusters the whole batch at once on the features' device
    (:func:`kmeans_batched`); ``faiss`` groups image by image on the host (:func:`group_feature_map`); ``auto`` is
    the batched path for CUDA features and the host path otherwise (faiss when installed). Both give the same groups
    on the same seed up to float rounding.
    """
    if features.ndim != 4:
        raise ValueError(f"expected a (B, h, w, C) batch of feature maps, got shape {tuple(features.shape)}")
    b, h, w, _ = features.shape
    batched = cfg.backend == "torch" or (cfg.backend == "auto" and features.is_cuda)
    if not batched:
        host = features.detach().float().cpu()
        return torch.stack([torch.from_numpy(group_feature_map(f, cfg)) for f in host]).to(features.device)
    x = _points(features.detach(), cfg)
    labels, _ = kmeans_batched(x, cfg.num_groups, iters=cfg.iters, seed=cfg.seed)
    return merge_small_groups_batched(labels, x, _min_group_size(cfg, h * w), k=cfg.num_groups).view(b, h, w)


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
    return masks_to_region_masks(_one_hot(groups, k), grid)


def masks_to_region_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, K, H, W) masks (bool or {0, 1}) → (B, K, gh, gw) bool region masks on a patch grid.

    A patch belongs to a mask that covers at least half of it; a non-empty mask that covers no patch that much
    keeps the patch where its share is largest, so it has at least one patch. Empty masks stay empty.
    """
    onehot = masks.float()
    shrink = grid[0] <= onehot.shape[2] and grid[1] <= onehot.shape[3]
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
    """Groups images into regions: a frozen feature backbone, then k-means (:func:`group_feature_maps`).

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
                pixel_size: tuple[int, int] | None = None, num_groups: int | None = None,
                features: torch.Tensor | None = None) -> Groups:
        """Group a (B, 3, H, W) batch in [0, 1] (H, W multiples of :attr:`patch_size`).

        Args:
            images: the batch, on the backbone's device.
            pixels: also return pixel-level group maps.
            pixel_size: size of the pixel maps; defaults to (H, W).
            num_groups: k of k-means for this call; None: the configured ``num_groups``.
            features: the backbone's (B, h, w, C) output for ``images`` when the caller has it already (several
                groupings of one batch run the backbone once).
        """
        h, w = images.shape[-2:]
        if h % self.region_patch_size or w % self.region_patch_size:
            raise ValueError(f"image size {(h, w)} is not a multiple of the region patch size {self.region_patch_size}")
        cfg = self.config if num_groups is None else replace(self.config, num_groups=num_groups)
        patch = group_feature_maps(self.backbone(images) if features is None else features, cfg)
        grid = (h // self.region_patch_size, w // self.region_patch_size)
        out = Groups(patch=patch, region_masks=groups_to_region_masks(patch, grid))
        if pixels:
            out.pixels = groups_to_pixels(patch, pixel_size or (h, w))
        return out
