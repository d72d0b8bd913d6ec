"""New points and soft clustering over a fitted model, with the hdbscan library's definitions:
`approximate_predict`, `approximate_predict_scores`, `membership_vector`,
`all_points_membership_vectors`, and the `PredictionData` they read (`prediction_data=True`).

A new point attaches to the condensed tree beside the training point nearest to it by mutual
reachability, at lambda = 1 / that distance. Two conventions share that step:

- the hdbscan library's (the module functions): the new point's core distance is its
  (min_samples + 1)-th nearest training point, training core distances count the point itself
  (as hdbscan's PredictionData does), a point at distance 0 from a training point takes that
  point's lambda, and probabilities are relative to the selected cluster's own largest lambda;
- the behaviour-clusters job's gate (`predict_with_scores`, unchanged since it shipped): the
  new point's core distance is its min_samples-th nearest training point and training core
  distances are the fit's.

Neighbours come from the model's kNN backend (FAISS, scikit-learn or pynndescent), so every metric
the model was fitted with works; models fitted on precomputed distances have no vectors to search.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from lakelens.operators.hdbscan.tree import ClusterTree, cluster_deaths, selected_owner

DBL_MAX = np.finfo(np.double).max


def _points(model, X) -> np.ndarray:
    """New points in the form the model's backend searches (prepared like the training rows)."""
    from lakelens.operators.hdbscan.model import prepare_data

    backend = model._backend
    if backend is None or backend.kind == "precomputed":
        raise ValueError("a model fitted on precomputed distances cannot place new points: it has no vectors")
    if hasattr(X, "toarray"):
        X = X.toarray()
    if backend.kind == "faiss":
        return prepare_data(X, "cosine" if backend.metric in ("cosine", "arccos") else "euclidean")
    points = np.asarray(X, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"expected a 2-d array of shape (n_samples, n_features), got shape {points.shape}")
    return points


def _neighbours(model, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(metric distances, training-row indices) of each point's k nearest training rows."""
    graph = model._backend.query(points, min(k, model._backend.n))
    return model._backend.to_metric(graph.distances), graph.indices


def training_neighbours(model, X, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted model's k nearest training rows of each row of X (the same search `predict` uses)."""
    return _neighbours(model, _points(model, X), k)


# -- the behaviour-clusters job's convention ----------------------------------------------------------

def _gate_samples(model) -> int:
    """The gate's min_samples: a new point's core distance is its distance to this many-th training row."""
    return max(min(model.params.samples, model._backend.n - 1), 1)


def gate_neighbour_count(model) -> int:
    """How many nearest training rows `predict_with_scores` reads per new point."""
    return min(model._backend.n, 2 * _gate_samples(model))


def predict_with_scores(model, X, neighbours: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, membership probabilities and GLOSH outlier scores for new points (the job's gate).

    `neighbours`, when given, are the points' (metric distances, training-row indices) of their
    `gate_neighbour_count(model)` nearest training rows, nearest first: found by a search the
    caller already ran (`assign_to_chain` shares one search between models with shared rows)."""
    points = _points(model, X)
    count = points.shape[0]
    result = model.result_
    tree = result.condensed_tree
    if tree.size == 0 or count == 0:
        return np.full(count, -1), np.zeros(count), np.ones(count)
    n_train = model._backend.n
    samples = _gate_samples(model)
    need = gate_neighbour_count(model)
    if neighbours is None:
        dist, idx = _neighbours(model, points, need)
    else:
        dist, idx = neighbours
        if dist.shape != (count, need) or idx.shape != (count, need):
            raise ValueError(f"neighbours must be ({count}, {need}) arrays of distances and training rows, "
                             f"got {dist.shape} and {idx.shape}")
    core_new = dist[:, min(samples, dist.shape[1]) - 1]
    mr = np.maximum(np.maximum(core_new[:, None], result.core_distances[idx]), dist)
    best = np.argmin(mr, axis=1)
    rows = np.arange(count)
    with np.errstate(divide="ignore"):
        neighbour, lam = idx[rows, best], 1.0 / mr[rows, best]
    ct = ClusterTree.from_condensed(tree)
    owner = selected_owner(ct, result.selected_clusters)
    point_rows = tree[tree["child"] < ct.root]
    leaves_from = np.empty(n_train, dtype=np.int64)
    leaves_from[point_rows["child"]] = point_rows["parent"]
    deaths = cluster_deaths(tree, ct.root, ct.parent_of.size)
    subtree_max = deaths.copy()
    for i in range(ct.parent_of.size - 1, 0, -1):  # children before parents
        parent = ct.parent_of[i] - ct.root
        subtree_max[parent] = max(subtree_max[parent], subtree_max[i])
    labels = np.full(count, -1, dtype=np.int64)
    probs = np.zeros(count)
    scores = np.zeros(count)
    for i in range(count):
        cluster = leaves_from[neighbour[i]]
        # the new point joins where its density level says: climb while the cluster was born denser
        while cluster != ct.root and ct.birth[cluster - ct.root] > lam[i]:
            cluster = ct.parent_of[cluster - ct.root]
        top = subtree_max[cluster - ct.root]
        if np.isfinite(top) and top > 0 and np.isfinite(lam[i]):
            scores[i] = max(0.0, (top - lam[i]) / top)
        label = owner[cluster - ct.root]
        if label < 0:
            continue
        labels[i] = label
        max_lambda = deaths[result.selected_clusters[label] - ct.root]
        probs[i] = 1.0 if not np.isfinite(max_lambda) or max_lambda == 0 else min(lam[i], max_lambda) / max_lambda
    return labels, probs, scores


# -- the hdbscan library's convention -------------------------------------------------------------

@dataclass
class PredictionData:
    """What hdbscan's prediction functions read, built once per fitted model."""

    raw_data: np.ndarray  # the training rows (all of them, as given)
    core_distances: np.ndarray  # per backend row: distance to its min_samples-th nearest, itself included
    min_samples: int
    tree: np.ndarray  # the raw condensed tree
    selected: list[int]
    cluster_tree: np.ndarray
    cluster_map: dict[int, int]
    max_lambdas: dict[int, float]
    leaf_max_lambdas: dict[int, float]
    exemplars: list[np.ndarray]
    to_raw: np.ndarray | None  # backend row -> raw row, when rows with NaN/inf were left out
    parent_of: dict[int, tuple[int, float]] = field(default_factory=dict)  # cluster -> (parent, birth lambda)
    row_of_point: np.ndarray | None = None

    @classmethod
    def from_model(cls, model) -> "PredictionData":
        tree = model._condensed_tree
        raw = model._raw_data
        raw = raw.toarray() if hasattr(raw, "toarray") else np.asarray(raw, dtype=np.float64)
        backend = model._backend
        min_samples = model.min_samples or model.min_cluster_size
        train = backend.data.toarray() if hasattr(backend.data, "toarray") else backend.data
        dist, _ = _neighbours(model, train, min_samples)
        core = dist[:, -1].copy()
        selected = sorted(model._selected_raw)
        cluster_tree = tree[tree["child_size"] > 1]
        group_max = _group_max(tree)
        cluster_map = {c: i for i, c in enumerate(selected)}
        max_lambdas: dict[int, float] = {}
        exemplars = []
        children = _children(cluster_tree)
        for c in selected:
            max_lambdas[c] = group_max.get(c, 0.0)
            for sub in _below(children, c):
                cluster_map[sub] = cluster_map[c]
                max_lambdas[sub] = max_lambdas[c]
            parts = []
            for leaf in _leaves(children, c):
                rows = tree[tree["parent"] == leaf]
                rows = rows[(rows["lambda_val"] == group_max.get(leaf, 0.0)) & (rows["child_size"] == 1)]
                parts.append(rows["child"])
            points = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            exemplars.append(raw[points])
        row_of_point = np.full(raw.shape[0], 0, dtype=np.int64)
        is_point = tree["child_size"] == 1
        row_of_point[tree["child"][is_point]] = np.flatnonzero(is_point)
        parent_of = {int(r["child"]): (int(r["parent"]), float(r["lambda_val"])) for r in cluster_tree}
        return cls(raw, core, min_samples, tree, selected, cluster_tree, cluster_map, max_lambdas, group_max,
                   exemplars, model._finite_rows, parent_of, row_of_point)

    def raw_index(self, backend_rows: np.ndarray) -> np.ndarray:
        return backend_rows if self.to_raw is None else self.to_raw[backend_rows]


def _group_max(tree: np.ndarray) -> dict[int, float]:
    """Per parent: the largest lambda among its rows."""
    if tree.size == 0:
        return {}
    parents, inverse = np.unique(tree["parent"], return_inverse=True)
    best = np.full(parents.size, -np.inf)
    np.maximum.at(best, inverse, tree["lambda_val"])
    return {int(p): float(v) for p, v in zip(parents, best)}


def _children(cluster_tree: np.ndarray) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for parent, child in zip(cluster_tree["parent"], cluster_tree["child"]):
        out.setdefault(int(parent), []).append(int(child))
    return out


def _below(children: dict[int, list[int]], cluster: int) -> list[int]:
    out, todo = [], [cluster]
    while todo:
        out.extend(todo)
        todo = [c for t in todo for c in children.get(t, [])]
    return out


def _leaves(children: dict[int, list[int]], cluster: int) -> list[int]:
    kids = children.get(cluster, [])
    return [cluster] if not kids else [leaf for kid in kids for leaf in _leaves(children, kid)]


def _prediction_data(clusterer) -> PredictionData:
    try:
        return clusterer.prediction_data_
    except AttributeError:
        raise ValueError("Clusterer does not have prediction data! Try fitting with prediction_data=True set, "
                         "or run generate_prediction_data on the clusterer") from None


def _checked_points(clusterer, points_to_predict, data: PredictionData) -> np.ndarray:
    points = np.asarray(points_to_predict.toarray() if hasattr(points_to_predict, "toarray") else points_to_predict)
    if points.ndim != 2 or points.shape[1] != data.raw_data.shape[1]:
        raise ValueError("New points dimension does not match fit data!")
    return points


def _neighbour_and_lambda(clusterer, data: PredictionData, points: np.ndarray):
    """hdbscan's _find_neighbor_and_lambda for every point: (nearest by mutual reachability as a raw
    row, lambda, distances to the 2 * min_samples nearest training rows)."""
    k = 2 * data.min_samples
    dist, idx = _neighbours(clusterer, _points(clusterer, points), k)
    at = min(data.min_samples, dist.shape[1] - 1)
    mr = np.maximum(np.maximum(data.core_distances[idx], dist[:, at][:, None]), dist)
    best = np.argmin(mr, axis=1)
    rows = np.arange(points.shape[0])
    m = mr[rows, best]
    with np.errstate(divide="ignore"):
        lam = np.where(m > 0.0, 1.0 / np.where(m > 0, m, 1.0), DBL_MAX)
    return data.raw_index(idx[rows, best]), lam, dist


def approximate_predict(clusterer, points_to_predict, return_connecting_points: bool = False):
    """Labels and membership probabilities of new points, as hdbscan.approximate_predict."""
    data = _prediction_data(clusterer)
    points = _checked_points(clusterer, points_to_predict, data)
    count = points.shape[0]
    if data.cluster_tree.shape[0] == 0:
        warnings.warn("Clusterer does not have any defined clusters, new data will be automatically predicted as "
                      "noise.")
        labels, probs = -np.ones(count, dtype=np.int32), np.zeros(count, dtype=np.float32)
        return (labels, probs, -np.ones(count, dtype=np.int32)) if return_connecting_points else (labels, probs)
    labels = np.empty(count, dtype=np.int32)
    probs = np.empty(count, dtype=np.float64)
    neighbour, lam, _ = _neighbour_and_lambda(clusterer, data, points)
    root = int(data.tree["parent"].min())
    for i in range(count):
        row = data.tree[data.row_of_point[neighbour[i]]]
        cluster = int(row["parent"])
        if row["lambda_val"] > lam[i]:
            while cluster > root:
                entry = data.parent_of.get(cluster)
                if entry is None or not entry[1] >= lam[i]:
                    break
                cluster = entry[0]
        label = data.cluster_map.get(cluster, -1)
        labels[i] = label
        if label >= 0:
            top = data.max_lambdas[cluster]
            probs[i] = min(top, lam[i]) / top if top > 0 else 1.0
        else:
            probs[i] = 0.0
    if return_connecting_points:
        return labels, probs, neighbour.astype(np.int32)
    return labels, probs


def approximate_predict_scores(clusterer, points_to_predict) -> np.ndarray:
    """GLOSH outlier scores of new points, as hdbscan.approximate_predict_scores (a training point
    given again scores its own outlier_scores_)."""
    data = _prediction_data(clusterer)
    points = _checked_points(clusterer, points_to_predict, data)
    count = points.shape[0]
    if data.cluster_tree.shape[0] == 0:
        warnings.warn("Clusterer does not have any defined clusters, new data will be automatically predicted as "
                      "outliers.")
        return np.ones(count, dtype=np.int32)
    tree = data.tree
    max_lambdas = dict(data.leaf_max_lambdas)
    for n in range(tree.shape[0] - 1, -1, -1):  # children before parents
        cluster, parent = int(tree["child"][n]), int(tree["parent"][n])
        if cluster in max_lambdas and max_lambdas[cluster] > max_lambdas[parent]:
            max_lambdas[parent] = max_lambdas[cluster]
    neighbour, lam, dist = _neighbour_and_lambda(clusterer, data, points)
    scores = np.empty(count, dtype=np.float64)
    for i in range(count):
        row = tree[data.row_of_point[neighbour[i]]]
        lambda_ = row["lambda_val"] if dist[i].min() == 0 else lam[i]
        top = max_lambdas[int(row["parent"])]
        scores[i] = (top - lambda_) / top if top > 0.0 else 0.0
    return scores


def _merge_heights(data: PredictionData, point_cluster: int, point_lambda: float, clusters: np.ndarray) -> np.ndarray:
    """Per selected cluster: the lambda at which the point's cluster merges with it (hdbscan's merge_height)."""
    out = np.empty(clusters.size)
    for i, target in enumerate(clusters):
        left, right = point_cluster, int(target)
        took_left = took_right = False
        last = left
        while left != right:
            if left > right:
                took_left, last = True, left
                left = data.parent_of[left][0]
            else:
                took_right, last = True, right
                right = data.parent_of[right][0]
        out[i] = data.parent_of[last][1] if took_left and took_right else point_lambda
    return out


def _distance_vectors(clusterer, data: PredictionData, points: np.ndarray) -> np.ndarray:
    """Per point and cluster: 1 / distance to the cluster's nearest exemplar, normalised to sum 1."""
    nearest = np.column_stack([clusterer._pairwise(points, ex).min(axis=1) if len(ex) else np.full(len(points), np.inf)
                               for ex in data.exemplars])
    with np.errstate(divide="ignore"):
        inverse = np.where(nearest != 0, 1.0 / np.where(nearest != 0, nearest, 1.0), DBL_MAX / nearest.shape[1])
    return inverse / inverse.sum(axis=1, keepdims=True)


def membership_vector(clusterer, points_to_predict) -> np.ndarray:
    """Soft membership of new points in every selected cluster, as hdbscan.membership_vector."""
    data = _prediction_data(clusterer)
    points = _checked_points(clusterer, points_to_predict, data).astype(np.float64)
    clusters = np.array(sorted(data.selected), dtype=np.intp)
    result = np.empty((points.shape[0], clusters.size))
    if clusters.size == 0 or points.shape[0] == 0:
        return result
    neighbour, lam, _ = _neighbour_and_lambda(clusterer, data, points)
    distance_vecs = _distance_vectors(clusterer, data, points)
    for i in range(points.shape[0]):
        row = data.tree[data.row_of_point[neighbour[i]]]
        lambda_ = min(lam[i], row["lambda_val"])
        point_cluster = int(row["parent"])
        heights = _merge_heights(data, point_cluster, lambda_, clusters)
        top = data.leaf_max_lambdas[point_cluster]
        denominator = top - heights
        scores = top / np.where(denominator <= 0, 1e-8, denominator)
        outlier_vec = np.exp(scores - np.nanmax(scores))
        outlier_vec /= outlier_vec.sum()
        result[i] = distance_vecs[i] ** 0.5 * outlier_vec ** 2.0
        result[i] /= result[i].sum()
        nearest = clusters[heights.argmax()]
        result[i] *= heights.max() / (max(lambda_, data.leaf_max_lambdas[int(nearest)]) + 1e-8)
    return result


def all_points_membership_vectors(clusterer) -> np.ndarray:
    """Soft membership of every training point in every selected cluster, as hdbscan's function."""
    data = _prediction_data(clusterer)
    clusters = np.array(sorted(data.selected), dtype=np.intp)
    n = data.raw_data.shape[0]
    if clusters.size == 0:
        return np.zeros(n)
    finite = np.isfinite(data.raw_data).all(axis=1)
    distance_vecs = np.zeros((n, clusters.size))
    distance_vecs[finite] = _distance_vectors(clusterer, data, data.raw_data[finite])
    per_cluster = np.zeros((n, clusters.size))
    in_cluster = np.zeros(n)
    point_rows = data.tree[data.tree["child_size"] == 1]
    for row in point_rows:
        point, point_cluster, point_lambda = int(row["child"]), int(row["parent"]), float(row["lambda_val"])
        heights = _merge_heights(data, point_cluster, point_lambda, clusters)
        top = data.leaf_max_lambdas[point_cluster] + 1e-8
        with np.errstate(divide="ignore"):
            per_cluster[point] = np.exp(-(top / heights))
        in_cluster[point] = heights.max() / max(data.leaf_max_lambdas[int(clusters[heights.argmax()])], point_lambda)
    outlier_vecs = np.exp(per_cluster - np.nanmax(per_cluster))
    outlier_vecs /= outlier_vecs.sum(axis=1, keepdims=True)
    result = distance_vecs * outlier_vecs
    with np.errstate(invalid="ignore"):
        result /= result.sum(axis=1, keepdims=True)
    result *= in_cluster[:, None]
    return np.nan_to_num(result)
