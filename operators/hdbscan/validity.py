"""Density-based cluster validity (DBCV, Moulavi et al. 2014): `validity_index` as the hdbscan
library defines it, and `relative_validity`, its fast approximation over the mutual-reachability
minimum spanning tree (`HDBSCAN.relative_validity_`)."""

from __future__ import annotations

import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist


def all_points_core_distance(distances: np.ndarray, d: float) -> np.ndarray:
    """DBCV's core distance of each point within its cluster: (mean of (1/dist)^d)^(-1/d)."""
    inverse = np.zeros_like(distances)
    nonzero = distances != 0
    inverse[nonzero] = (1.0 / distances[nonzero]) ** d
    result = inverse.sum(axis=1) / max(distances.shape[0] - 1, 1)
    if result.sum() == 0:
        return np.zeros(distances.shape[0])
    with np.errstate(divide="ignore"):
        return result ** (-1.0 / d)


def _cluster_distances(X, labels, cluster, metric, d, **kwargs):
    members = labels == cluster
    if metric == "precomputed":
        distances = np.asarray(X)[members][:, members]
    else:
        from sklearn.metrics import pairwise_distances

        distances = pairwise_distances(X[members], metric=metric, **kwargs)
        d = X.shape[1]
    core = all_points_core_distance(distances.copy(), d)
    return np.maximum(distances, np.maximum(core[:, None], core[None, :])), core, distances


def _internal_tree(mr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The MST of one cluster's mutual reachability: its internal nodes (degree > 1) and the edges among them."""
    n = mr.shape[0]
    if n == 1:
        return np.array([0]), np.array([[0, 0, 0.0]])
    dense = mr.copy()
    # zero weights would vanish from scipy's sparse MST: lift them to the smallest positive float
    dense[dense == 0] = np.finfo(np.float64).tiny
    np.fill_diagonal(dense, 0.0)
    tree = minimum_spanning_tree(dense).tocoo()
    edges = np.column_stack([tree.row, tree.col, tree.data]).astype(np.float64)
    edges[edges[:, 2] == np.finfo(np.float64).tiny, 2] = 0.0
    degree = np.bincount(edges[:, :2].astype(np.intp).ravel(), minlength=n)
    vertices = np.flatnonzero(degree > 1)
    if vertices.size == 0:
        vertices = np.array([0])
    inside = np.isin(edges[:, 0], vertices) & np.isin(edges[:, 1], vertices)
    return vertices, (edges[inside] if inside.any() else edges)


def validity_index(X, labels, metric="euclidean", d=None, per_cluster_scores=False, mst_raw_dist=False,
                   verbose=False, **kwd_args):
    """DBCV of a clustering in [-1, 1] (higher is better), as hdbscan.validity.validity_index.

    With metric='precomputed', X is a distance matrix and `d` (the data's dimension) is required."""
    if metric == "precomputed" and d is None:
        raise ValueError("If metric is precomputed a d value must be provided!")
    labels = np.asarray(labels)
    X = np.asarray(X) if metric == "precomputed" else np.asarray(X, dtype=np.float64)
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    core, nodes, sparseness = {}, {}, {}
    for c in range(n_clusters):
        if not (labels == c).any():
            continue
        mr, core[c], raw = _cluster_distances(X, labels, c, metric, d, **kwd_args)
        nodes[c], edges = _internal_tree(raw if mst_raw_dist else mr)
        sparseness[c] = edges[:, 2].max()
    separation = np.full((n_clusters, n_clusters), np.inf)
    for i in core:
        for j in core:
            if j <= i:
                continue
            if metric == "precomputed":
                block = X[labels == i][:, labels == j][nodes[i]][:, nodes[j]]
            else:
                block = cdist(X[labels == i][nodes[i]], X[labels == j][nodes[j]], metric, **kwd_args)
            if not mst_raw_dist:
                block = np.maximum(block, np.maximum(core[i][nodes[i]][:, None], core[j][nodes[j]][None, :]))
            separation[i, j] = separation[j, i] = block.min()
    scores = np.zeros(n_clusters)
    total = 0.0
    for c in core:
        nearest = separation[c].min()
        denominator = max(nearest, sparseness[c])
        scores[c] = (nearest - sparseness[c]) / denominator if denominator > 0 else 0.0
        if verbose:
            print(f"Minimum density separation: {nearest}\nDensity sparseness: {sparseness[c]}")
        total += (labels == c).sum() / float(labels.size) * scores[c]
    return (total, scores) if per_cluster_scores else total


def relative_validity(mst: np.ndarray, labels: np.ndarray) -> float:
    """DBCV over the mutual-reachability MST's edges instead of per-cluster all-points MSTs
    (hdbscan's relative_validity_): comparable across parameters of one data set, not across data."""
    labels = np.asarray(labels)
    sizes = np.bincount(np.where(labels < 0, -1, labels) + 1)
    cluster_size = sizes[1:]
    total = sizes.sum()
    n_clusters = cluster_size.size
    sparseness = np.zeros(n_clusters)
    separation = np.full(n_clusters, np.inf)
    a, b, w = mst[:, 0].astype(np.intp), mst[:, 1].astype(np.intp), mst[:, 2]
    la, lb = labels[a], labels[b]
    max_distance = w.max() if w.size else 0.0
    both_noise, one_noise = (la < 0) & (lb < 0), (la < 0) ^ (lb < 0)
    neither = ~both_noise & ~one_noise
    min_outlier_sep = w[one_noise].min() if one_noise.any() else np.inf
    same, different = neither & (la == lb), neither & (la != lb)
    np.maximum.at(sparseness, la[same], w[same])
    np.minimum.at(separation, la[different], w[different])
    np.minimum.at(separation, lb[different], w[different])
    min_outlier_sep = max_distance if min_outlier_sep == np.inf else min_outlier_sep
    separation[separation == np.inf] = 2 * (max_distance if n_clusters > 1 else min_outlier_sep)
    denominator = np.maximum(separation, sparseness)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(denominator > 0, (separation - sparseness) / denominator, 0.0)
    return float(np.sum(cluster_size * score / total)) if total else 0.0
