import numpy as np
import pytest
import torch

from textseg.grouping import (GroupingConfig, faiss_available, group_feature_map, kmeans, merge_small_groups,
                              upsample_groups)


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


def test_upsample_groups_doubles_blocks():
    g = np.array([[0, 1], [2, 2]])
    up = upsample_groups(g, (4, 4))
    expected = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    assert (up == expected).all()


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
