import dataclasses

import numpy as np
import pytest
import torch

import textseg.grouping as grouping
from textseg.backbones import ColorXYFeatures
from textseg.config import GroupingConfig
from textseg.grouping import (Grouper, _lloyd_step, faiss_available, group_feature_map, group_feature_maps,
                              groups_to_pixels, groups_to_region_masks, kmeans, kmeans_batched, kmeans_plusplus_init,
                              kmeans_plusplus_init_batched, merge_small_groups, merge_small_groups_batched,
                              pad_region_masks)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def planted(seed=0, k=5, n_per=40, d=16, spread=0.05):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    truth = np.repeat(np.arange(k), n_per)
    x = centers[truth] + spread * rng.normal(size=(k * n_per, d))
    perm = rng.permutation(len(truth))
    return x[perm].astype(np.float32), truth[perm]


def same_partition(a, b):
    # identical up to renaming: the pairs (a, b) form a bijection
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss"))])
def test_kmeans_recovers_planted_clusters(backend):
    x, truth = planted()
    labels, centroids = kmeans(x, 5, iters=20, seed=0, backend=backend)
    assert same_partition(labels, truth)
    assert centroids.shape == (5, 16)
    # each centroid is the mean of its cluster
    for k in range(5):
        np.testing.assert_allclose(centroids[k], x[labels == k].mean(0), atol=1e-5)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("k", [4, 8, 16])
def test_faiss_and_torch_backends_agree(k):
    x = np.random.default_rng(1).normal(size=(784, 64)).astype(np.float32)
    a, ca = kmeans(x, k, iters=15, seed=3, backend="faiss")
    b, cb = kmeans(x, k, iters=15, seed=3, backend="torch")
    assert (a == b).all()
    np.testing.assert_allclose(ca, cb, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss"))])
def test_flat_colour_data_with_fewer_distinct_points_than_k(backend):
    """Three flat colours and k = 8: k drops to 3, no cluster is left empty, and faiss and torch agree exactly."""
    colours = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.2, 0.9]], dtype=np.float32)
    truth = np.repeat([0, 1, 2, 1], [50, 30, 20, 12])  # 112 points, only 3 distinct
    x = colours[truth]
    labels, centroids = kmeans(x, 8, iters=10, seed=0, backend=backend)
    assert centroids.shape == (3, 3) and sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert same_partition(labels, truth)
    np.testing.assert_allclose(np.sort(centroids, axis=0), np.sort(colours, axis=0), atol=1e-6)
    other, other_c = kmeans(x, 8, iters=10, seed=0, backend="torch")
    assert (labels == other).all() and np.allclose(centroids, other_c, atol=1e-6)


def test_torch_kmeans_matches_scikit_learn_lloyd():
    """scikit-learn's Lloyd k-means, started from the same k-means++ centroids, is an independent reference."""
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    x = np.random.default_rng(7).normal(size=(500, 12)).astype(np.float32)
    init = kmeans_plusplus_init(x, 6, seed=2)
    ref = sklearn_cluster.KMeans(6, init=init, n_init=1, max_iter=50, tol=0.0, algorithm="lloyd").fit(x)
    labels, centroids = kmeans(x, 6, iters=50, seed=2, backend="torch")
    assert (labels == ref.labels_).all()
    np.testing.assert_allclose(centroids, ref.cluster_centers_, atol=1e-4)


def test_kmeans_clamps_k_and_rejects_bad_input():
    labels, centroids = kmeans(np.eye(3, dtype=np.float32), 10)
    assert sorted(labels.tolist()) == [0, 1, 2] and centroids.shape == (3, 3)
    with pytest.raises(ValueError):
        kmeans(np.zeros((0, 4)), 2)
    with pytest.raises(ValueError, match="backend"):
        kmeans(np.eye(3), 2, backend="sklearn")


def test_merge_small_groups_reassigns_to_nearest_kept_group():
    x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [0.4]], dtype=np.float32)
    labels = np.array([3, 3, 3, 7, 7, 7, 9])  # group 9 has one point, nearest to group 3
    out = merge_small_groups(labels, x, min_size=2)
    assert out.tolist() == [0, 0, 0, 1, 1, 1, 0]


def test_groups_to_pixels_doubles_blocks_for_each_image():
    g = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 0]]])
    up = groups_to_pixels(g, (4, 4))
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    assert up.shape == (2, 4, 4) and torch.equal(up[0], expected)
    assert torch.equal(up[1], torch.tensor([[1] * 4, [1] * 4, [0] * 4, [0] * 4]))


def test_region_masks_from_exact_area_shares_on_a_coarser_grid():
    """A 4x4 backbone grid onto a 2x2 CLIP grid: each CLIP patch is 4 backbone cells."""
    g = torch.tensor([[[0, 0, 1, 1],
                       [0, 2, 1, 1],
                       [0, 0, 1, 3],
                       [0, 0, 3, 3]]])
    m = groups_to_region_masks(g, (2, 2))
    assert m.shape == (1, 4, 2, 2)
    assert m[0, 0].tolist() == [[True, False], [True, False]]  # 3/4 and 4/4 of the left patches
    assert m[0, 1].tolist() == [[False, True], [False, False]]  # 4/4 top right; only 1/4 of the bottom right
    assert m[0, 3].tolist() == [[False, False], [False, True]]  # 3/4 of the bottom right
    # group 2 covers a quarter of one patch, less than half of any: it keeps its best patch (top left) anyway
    assert m[0, 2].tolist() == [[True, False], [False, False]]


def test_region_masks_pad_images_with_fewer_groups():
    g = torch.stack([torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 1], [2, 2]])])
    m = groups_to_region_masks(g, (2, 2))
    assert m.shape == (2, 3, 2, 2)
    assert m[0, 0].all() and not m[0, 1:].any()  # one group; regions 1 and 2 are padding
    assert m[1].sum().item() == 4 and m[1, 2].tolist() == [[False, False], [True, True]]
    padded = pad_region_masks([m[0, :1], m[1]])
    assert torch.equal(padded, m)


def test_grouper_splits_two_colours_and_returns_both_grids():
    grouper = Grouper(ColorXYFeatures(patch_size=4), GroupingConfig(num_groups=2, min_group_frac=0.0,
                                                                    normalize=False), region_patch_size=8)
    images = torch.zeros(2, 3, 16, 32)
    images[:, 0, :, :16] = 1.0  # left half red
    images[1, 2] = 1.0           # second image: magenta | blue
    out = grouper(images)
    assert out.patch.shape == (2, 4, 8) and out.region_masks.shape == (2, 2, 2, 4) and out.pixels.shape == (2, 16, 32)
    for b in range(2):
        left, right = out.pixels[b, 0, 0], out.pixels[b, 0, -1]
        assert left != right and (out.pixels[b, :, :16] == left).all() and (out.pixels[b, :, 16:] == right).all()
        assert out.region_masks[b, left].tolist() == [[True, True, False, False]] * 2
    assert grouper(images, pixels=False).pixels is None
    assert grouper(images, pixel_size=(5, 7)).pixels.shape == (2, 5, 7)
    with pytest.raises(ValueError, match="multiple of the region patch size"):
        grouper(torch.zeros(1, 3, 12, 16))


def test_group_feature_map_splits_halves_and_xy_splits_identical_features():
    f = torch.zeros(4, 6, 3)
    f[:, :3, 0] = 1.0
    f[:, 3:, 1] = 1.0
    g = group_feature_map(f, GroupingConfig(num_groups=2, min_group_frac=0.0))
    assert (g[:, :3] == g[0, 0]).all() and (g[:, 3:] == g[0, 3]).all() and g[0, 0] != g[0, 3]
    # identical features everywhere: only position can separate the groups
    g = group_feature_map(torch.ones(1, 8, 3), GroupingConfig(num_groups=2, xy_weight=10.0, min_group_frac=0.0))
    row = g[0].tolist()
    changes = sum(a != b for a, b in zip(row, row[1:]))
    assert len(set(row)) == 2 and changes == 1  # two contiguous runs along x


# ---- batched grouping on the device (the same code on CPU, CUDA and meta tensors) ----

def three_structures(d=16):
    """Three 200-point sets of different structure: 5 planted clusters, 4 planted clusters, plain noise."""
    a, _ = planted(seed=0, k=5, n_per=40, d=d)
    b, _ = planted(seed=1, k=4, n_per=50, d=d, spread=0.2)
    c = np.random.default_rng(2).normal(size=(200, d)).astype(np.float32)
    return np.stack([a, b, c])


def per_image_groups(features, cfg):
    return np.stack([group_feature_map(f, cfg) for f in features])


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_batched_init_picks_the_points_of_the_host_init(seed):
    x = three_structures()
    centroids, live = kmeans_plusplus_init_batched(torch.from_numpy(x), 6, seed)
    assert centroids.shape == (3, 6, 16) and live.all()
    for i in range(3):  # the same numpy draws invert the same D² CDF: the very same points, bit for bit
        np.testing.assert_array_equal(centroids[i].numpy(), kmeans_plusplus_init(x[i], 6, seed))


@pytest.mark.parametrize("seed", range(6))
def test_batched_init_never_picks_a_point_twice_and_marks_the_slots_it_cannot_fill(seed):
    """{0, 0, 0, 5}: after one pick only the other value has D² > 0, so k = 2 takes both values; a third slot has
    nothing left to pick (all D² = 0) and is dead."""
    x = torch.tensor([[[0.0], [0.0], [0.0], [5.0]]])
    centroids, live = kmeans_plusplus_init_batched(x, 3, seed)
    assert sorted(centroids[0, :2, 0].tolist()) == [0.0, 5.0]
    assert live.tolist() == [[True, True, False]]


@pytest.mark.parametrize("k,iters,seed", [(5, 20, 0), (4, 10, 3), (8, 15, 1)])
def test_batched_kmeans_gives_the_per_image_torch_labels(k, iters, seed):
    x = three_structures()
    labels, centroids = kmeans_batched(torch.from_numpy(x), k, iters=iters, seed=seed)
    assert labels.shape == (3, 200) and labels.dtype == torch.int64 and centroids.shape == (3, k, 16)
    for i in range(3):
        ref_labels, ref_centroids = kmeans(x[i], k, iters=iters, seed=seed, backend="torch")
        np.testing.assert_array_equal(labels[i].numpy(), ref_labels)
        np.testing.assert_allclose(centroids[i].numpy(), ref_centroids, atol=1e-5)
    _, truth = planted(seed=0, k=5, n_per=40)
    if k == 5:
        assert same_partition(labels[0].numpy(), truth)


def test_lloyd_step_moves_to_means_and_empty_clusters_stay():
    """Worked by hand: image 0 has all three points nearest to 0.5 (10 is 9.5 from it, 10 from 20), so that centroid
    moves to their mean 11/3 and the other two, empty, stay at 100 and 20. Image 1 splits {0, 1} | {10}; its third
    slot is not allowed (dead) and keeps its value although it sits on a point."""
    x = torch.tensor([[[0.0], [1.0], [10.0]], [[0.0], [1.0], [10.0]]])
    c = torch.tensor([[[0.5], [100.0], [20.0]], [[0.0], [9.0], [10.0]]])
    allowed = torch.tensor([[True, True, True], [True, True, False]])
    out = _lloyd_step(x, c, allowed)
    np.testing.assert_allclose(out[:, :, 0].numpy(), [[11 / 3, 100.0, 20.0], [0.5, 10.0, 10.0]], rtol=1e-6)


def test_batched_kmeans_pads_an_image_with_fewer_distinct_points_than_k():
    """An image whose points are all equal gets one cluster (the other k-1 slots stay empty) and does not disturb
    the other images of its batch."""
    x = three_structures()
    x[1] = x[1, 7]
    labels, centroids = kmeans_batched(torch.from_numpy(x), 5, iters=10, seed=0)
    assert (labels[1] == 0).all()
    np.testing.assert_allclose(centroids[1, 0].numpy(), x[1, 7], rtol=1e-5)  # the mean of 200 copies of it
    alone, _ = kmeans_batched(torch.from_numpy(x[[0, 2]]), 5, iters=10, seed=0)
    assert torch.equal(labels[[0, 2]], alone)
    ref, _ = kmeans(x[1], 5, iters=10, seed=0, backend="torch")
    assert ref.tolist() == [0] * 200  # the host path drops k to 1 for it


def test_batched_kmeans_three_flat_colours_and_k_8():
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.2, 0.9]])
    truth = torch.from_numpy(np.repeat([0, 1, 2, 1], [50, 30, 20, 12]))
    labels, centroids = kmeans_batched(colours[truth][None], 8, iters=10, seed=0)
    assert same_partition(labels[0].numpy(), truth.numpy()) and len(labels.unique()) == 3
    ref, _ = kmeans(colours[truth].numpy(), 8, iters=10, seed=0, backend="torch")
    assert labels[0].tolist() == ref.tolist()  # the three live slots come first, as the host's k' = 3 clusters


def test_kmeans_batched_rejects_bad_input():
    with pytest.raises(ValueError, match="B, N, D"):
        kmeans_batched(torch.zeros(4, 3), 2)
    with pytest.raises(ValueError, match="B, N, D"):
        kmeans_batched(torch.zeros(2, 0, 3), 2)
    with pytest.raises(ValueError, match="k must be"):
        kmeans_batched(torch.zeros(2, 4, 3), 0)


def test_merge_small_groups_batched_by_hand():
    """Size 3. Image 0: group 9 (one point, nearest to group 3) goes to group 3. Image 1: every group is under the
    size, so only the largest stays (ids 1 and 5 tie at two points: the first, 1) and takes every point."""
    x = torch.tensor([[[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [0.4]],
                      [[0.0], [9.0], [9.1], [9.2], [4.0], [4.1], [3.0]]])
    labels = torch.tensor([[3, 3, 3, 7, 7, 7, 9], [0, 1, 1, 4, 5, 5, 2]])
    out = merge_small_groups_batched(labels, x, 3, k=10)
    assert out.tolist() == [[0, 0, 0, 1, 1, 1, 0], [0] * 7]
    for i in range(2):
        assert merge_small_groups(labels[i].numpy(), x[i].numpy(), 3).tolist() == out[i].tolist()
    # with size 1 it only renumbers, in the order of the ids
    assert merge_small_groups_batched(labels, x, 1).tolist() == [[0, 0, 0, 1, 1, 1, 2], [0, 1, 1, 3, 4, 4, 2]]


@pytest.mark.parametrize("min_size", [1, 5, 20, 60, 201])
def test_merge_small_groups_batched_matches_the_host_merge(min_size):
    x = three_structures(d=4)
    rng = np.random.default_rng(min_size)
    # uneven group sizes (some ids unused) so that each threshold drops a different set of groups
    labels = rng.choice(8, size=(3, 200), p=[0.3, 0.25, 0.2, 0.1, 0.08, 0.05, 0.02, 0.0])
    labels[2] = rng.choice([1, 6], size=200, p=[0.9, 0.1])
    out = merge_small_groups_batched(torch.from_numpy(labels), torch.from_numpy(x), min_size, k=8)
    for i in range(3):
        np.testing.assert_array_equal(out[i].numpy(), merge_small_groups(labels[i], x[i], min_size))


def feature_batches():
    g = torch.Generator().manual_seed(0)
    lab = torch.rand(4, 24, 24, 3, generator=g) * torch.tensor([100.0, 60.0, 60.0])
    flat = lab.clone()
    flat[1] = torch.tensor([50.0, 10.0, -20.0])  # one flat colour
    flat[2, :, :12] = torch.tensor([90.0, 0.0, 0.0])  # two flat halves
    flat[2, :, 12:] = torch.tensor([20.0, 40.0, 40.0])
    dino = torch.randn(3, 14, 14, 64, generator=g)
    dino[1] = dino[1, 0, 0]  # all features identical: k = 8 > 1 distinct point
    return [(lab, GroupingConfig(num_groups=8, xy_weight=0.5, normalize=False)),  # the workbench's settings
            (flat, GroupingConfig(num_groups=8, xy_weight=0.0, normalize=False, min_group_frac=0.2)),
            (dino, GroupingConfig(num_groups=8)),
            (dino, GroupingConfig(num_groups=1)),
            (dino, GroupingConfig(num_groups=8, min_group_frac=0.6, iters=5, seed=4)),
            (flat, GroupingConfig(num_groups=8, xy_weight=0.5, normalize=False))]


@pytest.mark.parametrize("case", range(5))
def test_group_feature_maps_batched_equals_the_per_image_path(case):
    features, cfg = feature_batches()[case]
    out = group_feature_maps(features, dataclasses.replace(cfg, backend="torch"))
    assert out.shape == features.shape[:3] and out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), per_image_groups(features, dataclasses.replace(cfg, backend="torch")))
    for groups in out:  # ids 0..K_i-1 per image
        assert groups.unique().tolist() == list(range(int(groups.max()) + 1))
    if cfg.num_groups == 1 or cfg.min_group_frac > 0.5:
        assert (out == 0).all()  # one region only
    if case == 1:  # no position weight: a flat image is one group, flat halves two
        assert (out[1] == 0).all()
        assert len(out[2, :, :12].unique()) == 1 and len(out[2, :, 12:].unique()) == 1 and out[2, 0, 0] != out[2, 0, 12]
    if case == 2:
        assert (out[0] < 8).all() and out[0].max() > 0 and (out[1] == 0).all()  # the identical-features image


def test_flat_colours_with_position_agree_up_to_ties():
    """Flat colour plus an (x, y) grid puts patches at exactly equal distances from two centroids, where float
    rounding (a different matmul) decides and k-means may then drift apart: the batched path agrees with the host
    on almost every patch and finds as many groups, and position alone splits the flat image into eight."""
    features, cfg = feature_batches()[5]
    out = group_feature_maps(features, dataclasses.replace(cfg, backend="torch"))
    ref = per_image_groups(features, dataclasses.replace(cfg, backend="torch"))
    assert (out.numpy() == ref).mean() > 0.99
    assert out.amax((1, 2)).tolist() == ref.max(axis=(1, 2)).tolist() == [7] * 4


def test_backend_choice_keeps_the_cpu_default_on_the_host(monkeypatch):
    features, cfg = feature_batches()[5]
    expected = per_image_groups(features, cfg)  # today's CPU default (faiss when installed)
    calls = []
    real = grouping.kmeans_batched
    monkeypatch.setattr(grouping, "kmeans_batched", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    for backend in ("auto", "faiss"):
        out = group_feature_maps(features, dataclasses.replace(cfg, backend=backend))
        np.testing.assert_array_equal(out.numpy(), expected if backend == "auto" else
                                      per_image_groups(features, dataclasses.replace(cfg, backend="faiss")))
    assert calls == []
    group_feature_maps(features, dataclasses.replace(cfg, backend="torch"))
    assert calls == [1]  # one call for the whole batch
    with pytest.raises(ValueError, match="B, h, w, C"):
        group_feature_maps(features[0], cfg)


def test_batched_grouping_takes_its_device_from_the_input_and_never_waits_for_it():
    """On the meta device every op runs but no value exists: any read of a value on the host (.item(), bool(),
    .cpu()) would raise, so the batched path queues its work without waiting for the device."""
    f = torch.empty(3, 6, 5, 32, device="meta")
    out = group_feature_maps(f, GroupingConfig(num_groups=4, xy_weight=0.5, min_group_frac=0.1, backend="torch"))
    assert out.device.type == "meta" and out.shape == (3, 6, 5) and out.dtype == torch.int64


def test_batched_kmeans_ignores_autocast():
    x = torch.from_numpy(three_structures())
    ref, _ = kmeans_batched(x, 5, iters=10, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        labels, centroids = kmeans_batched(x, 5, iters=10, seed=0)
    assert torch.equal(labels, ref) and centroids.dtype == torch.float32


def test_grouper_with_the_batched_backend_gives_the_host_groups():
    images = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    images[1] = 0.5
    cfg = GroupingConfig(num_groups=6, xy_weight=0.5, normalize=False)
    host = Grouper(ColorXYFeatures(patch_size=4), cfg, region_patch_size=8)(images)
    dev = Grouper(ColorXYFeatures(patch_size=4), dataclasses.replace(cfg, backend="torch"), region_patch_size=8)(images)
    assert torch.equal(host.patch, dev.patch) and torch.equal(host.region_masks, dev.region_masks)
    assert torch.equal(host.pixels, dev.pixels)


@pytest.mark.cuda
@needs_cuda
def test_cuda_batched_grouping_gives_the_cpu_groups_under_tf32_and_bf16_autocast():
    features, cfg = feature_batches()[2]
    features = torch.cat([features, torch.randn(29, 14, 14, 64, generator=torch.Generator().manual_seed(1))])
    cpu = group_feature_maps(features, dataclasses.replace(cfg, backend="torch"))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 matmuls, as a training step sets them
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            cuda = group_feature_maps(features.cuda(), cfg)  # auto on CUDA: the batched path
        assert torch.get_float32_matmul_precision() == "high"  # restored
    finally:
        torch.set_float32_matmul_precision(before)
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda.cpu(), cpu)
    again = group_feature_maps(features.cuda(), cfg)
    assert torch.equal(again.cpu(), cuda.cpu())  # deterministic on the device
