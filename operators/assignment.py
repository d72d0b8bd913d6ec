"""Daily incremental clustering: new points join existing clusters through pHDBSCAN predict, and
what stays noise is clustered again so that emerging patterns surface without a full re-cluster.

The models form a chain: the base model of the last full re-cluster, then one model per later
run that found clusters among the noise. A point is offered to each model in order.
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

    @property
    def noise(self) -> np.ndarray:
        return np.array([k is None for k in self.keys], dtype=bool)


def assign_to_chain(features: np.ndarray, chain: list[KeyedModel]) -> Assignment:
    """Offer every point to each model in turn; the first model that does not call it noise keeps it."""
    n = features.shape[0]
    keys = np.full(n, None, dtype=object)
    probabilities = np.zeros(n)
    outlier_scores = np.ones(n)
    persistence: dict[str, float] = {}
    todo = np.arange(n)
    for link in chain:
        persistence.update({key: float(link.model.cluster_persistence_[label]) for label, key in link.keys.items()})
        if todo.size == 0:
            continue
        labels, probs, scores = link.model.predict_with_scores(features[todo])
        joined = labels >= 0
        rows = todo[joined]
        keys[rows] = [link.keys[int(label)] for label in labels[joined]]
        probabilities[rows] = probs[joined]
        outlier_scores[rows] = scores[joined]
        todo = todo[~joined]
        # noise stays as outlying as the least surprised model found it
        outlier_scores[todo] = np.minimum(outlier_scores[todo], scores[~joined])
    return Assignment(keys, probabilities, outlier_scores, persistence)


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
