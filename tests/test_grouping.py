import numpy as np
import pytest
import torch

from textseg.backbones import ColorXYFeatures
from textseg.config import GroupingConfig
from textseg.grouping import (Grouper, faiss_available, group_feature_map, groups_to_pixels, groups_to_region_masks,
                              kmeans, kmeans_plusplus_init, merge_small_groups, pad_region_masks)


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
