"""Daily incremental clustering: new points join existing clusters only when they fit them as well
as the clusters' own members do; what stays noise is clustered again, so emerging patterns surface
as new clusters without a full re-cluster.

The models form a chain: the base model of the last full re-cluster, then one model per later
run that found clusters among the noise. A point is offered to each model in order.

The gate. pHDBSCAN's approximate predict (like hdbscan's) attaches a new point to the cluster of
its nearest training point at the point's own density level; a big, loose cluster born at a low
density then takes in whatever lands near it, however far it is from its members. So a predicted
point joins only when its outlier score (GLOSH, predicted) is no higher than the `join_quantile`
quantile of that cluster's members' own scores: it must sit as deep in the cluster as its members
do. Refused points go to the noise pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from lakelens.operators.hdbscan import PHDBSCAN


@dataclass
class KeyedModel:
    """A fitted pHDBSCAN model and the stable cluster key of each of its labels."""

    model: PHDBSCAN
    keys: dict[int, str]


@dataclass
class Assignment:
    keys: np.ndarray  # object array: cluster key, or None for noise
    probabilities: np.ndarray
    outlier_scores: np.ndarray
    persistence: dict[str, float]  # per key, from the model that owns it
    refused: np.ndarray | None = None  # bool: predicted into a cluster, but less typical than its members

    @property
    def noise(self) -> np.ndarray:
        return np.array([k is None for k in self.keys], dtype=bool)


def member_score_limits(model: PHDBSCAN, quantile: float) -> np.ndarray:
    """Per cluster label: the `quantile` of its training members' outlier scores (the gate's bar)."""
    labels, scores = model.labels_, model.outlier_scores_
    count = int(labels.max()) + 1 if labels.size else 0
    limits = np.zeros(count)
    for label in range(count):
        mine = scores[labels == label]
        limits[label] = np.quantile(mine, quantile) if mine.size else 0.0
    return limits


def assign_to_chain(features: np.ndarray, chain: list[KeyedModel], join_quantile: float = 1.0) -> Assignment:
    """Offer every point to each model in turn; the first model whose cluster it fits keeps it.

    A point predicted into a cluster but more outlying than `join_quantile` of the cluster's members
    is refused by that model (see the module's note) and offered to the next one.
    """
    n = features.shape[0]
    keys = np.full(n, None, dtype=object)
    probabilities = np.zeros(n)
    outlier_scores = np.ones(n)
    refused = np.zeros(n, dtype=bool)
    persistence: dict[str, float] = {}
    todo = np.arange(n)
    for link in chain:
        persistence.update({key: float(link.model.cluster_persistence_[label]) for label, key in link.keys.items()})
        if todo.size == 0:
            continue
        labels, probs, scores = link.model.predict_with_scores(features[todo])
        predicted = labels >= 0
        limits = member_score_limits(link.model, join_quantile)
        joined = predicted.copy()
        joined[predicted] = scores[predicted] <= limits[labels[predicted]]
        refused[todo[predicted & ~joined]] = True
        rows = todo[joined]
        keys[rows] = [link.keys[int(label)] for label in labels[joined]]
        probabilities[rows] = probs[joined]
        outlier_scores[rows] = scores[joined]
        todo = todo[~joined]
        # noise stays as outlying as the least surprised model found it
        outlier_scores[todo] = np.minimum(outlier_scores[todo], scores[~joined])
    refused &= np.array([k is None for k in keys], dtype=bool)  # a later model of the chain may have taken it
    return Assignment(keys, probabilities, outlier_scores, persistence, refused)


def cluster_noise(features: np.ndarray, assignment: Assignment, model: PHDBSCAN, min_points: int,
                  name_clusters: Callable[[np.ndarray, np.ndarray], dict[int, str]]) -> KeyedModel | None:
    """Fit `model` on the points still called noise; points in the clusters it finds join them (in place).

    `name_clusters(rows, labels)` gives each new label its key. Returns the keyed model when it
    found clusters, so later runs can offer points to it too. As in HDBSCAN without
    allow_single_cluster, a pool holding one pattern and nothing else yields no cluster; real
    noise pools hold the scattered rest of the window beside any emerging pattern.
    """
    pool = np.flatnonzero(assignment.noise)
    if pool.size < min_points:
        return None
    model.fit(features[pool])
    keys = name_clusters(pool, model.labels_)
    if not keys:
        return None
    joined = model.labels_ >= 0
    rows = pool[joined]
    assignment.keys[rows] = [keys[int(c)] for c in model.labels_[joined]]
    assignment.probabilities[rows] = model.probabilities_[joined]
    assignment.outlier_scores[rows] = model.outlier_scores_[joined]
    assignment.persistence.update({k: float(model.cluster_persistence_[c]) for c, k in keys.items()})
    return KeyedModel(model, keys)
