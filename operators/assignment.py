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

The noise pool. What no model took is clustered again at a finer density scale (the job's
`emerging_min_samples`, below `min_samples`): small, sparse patterns (tens of transactions, farther
apart than the big legitimate groups) dissolve into their surroundings when every core distance
reaches `min_samples` neighbours, and stand out with fewer. The full re-cluster does the same with
its own noise, so full and incremental runs find the same kinds of clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from lakelens.operators.hdbscan import PHDBSCAN


@dataclass
class KeyedModel:
    """A fitted pHDBSCAN model and the stable cluster key of each of its labels.

    `within` = (i, rows): the model was fitted on rows `rows` of the training data of the chain's i-th
    (earlier) model. New points then take their neighbours from that model's search, filtered to these
    rows, instead of a search of their own: a model of the chain holds up to a whole window."""

    model: PHDBSCAN
    keys: dict[int, str]
    within: tuple[int, np.ndarray] | None = None


@dataclass
class Assignment:
    keys: np.ndarray  # object array: cluster key, or None for noise
    probabilities: np.ndarray
    outlier_scores: np.ndarray
    persistence: dict[str, float]  # per key, from the model that owns it
    refused: np.ndarray | None = None  # bool: predicted into a cluster, but less typical than its members
    attached: int = 0  # noise points that joined a cluster through their neighbours (`attach_to_neighbours`)
    reused_searches: int = 0  # points offered to a chain model through an earlier model's search (`within`)

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
    searches: list[Searched | None] = []
    for link in chain:
        persistence.update({key: float(link.model.cluster_persistence_[label]) for label, key in link.keys.items()})
        if todo.size == 0:
            searches.append(None)
            continue
        searches.append(chain_neighbours(features, todo, link, searches))
        labels, probs, scores = link.model.predict_with_scores(features[todo], searches[-1].neighbours)
        # a model fitted on a noise pool keys only its emerging clusters; its other labels are not offers
        predicted = np.isin(labels, list(link.keys))
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
    return Assignment(keys, probabilities, outlier_scores, persistence, refused,
                      reused_searches=sum(s.reused for s in searches if s is not None))


@dataclass(frozen=True)
class Searched:
    """The nearest training rows a chain model read for the points (sorted indexes) offered to it."""

    points: np.ndarray
    distances: np.ndarray
    indices: np.ndarray
    exact: bool  # every point's true nearest rows (an exact search), not an approximation
    reused: int = 0  # points whose neighbours came from an earlier model's search

    @property
    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        return self.distances, self.indices


def chain_neighbours(features: np.ndarray, todo: np.ndarray, link: KeyedModel,
                     earlier: list[Searched | None]) -> Searched:
    """The `todo` points' nearest training rows of `link`'s model: from the search of the model it was fitted
    within, where that search holds enough of them, else by the model's own search. An approximate earlier
    search never stands in for an exact one of the model's own (a small pool within a large window)."""
    need = link.model.gate_neighbours
    exact = link.model.searches_exactly
    source = earlier[link.within[0]] if link.within is not None else None
    if source is None or source.indices.shape[1] < need or (exact and not source.exact):
        distances, indices = link.model.kneighbors(features[todo], need)
        return Searched(todo, distances, indices, exact)
    distances, indices, complete = neighbours_among(source, todo, link.within[1], need)
    missing = np.flatnonzero(~complete)
    if missing.size:
        distances[missing], indices[missing] = link.model.kneighbors(features[todo[missing]], need)
    return Searched(todo, distances, indices, source.exact and (exact or not missing.size),
                    reused=int(complete.sum()))


def neighbours_among(source: Searched, points: np.ndarray, rows: np.ndarray,
                     need: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`points`' (a subset of `source.points`) `need` nearest among `rows` of the searched model's training rows,
    as (distances, positions in `rows`, complete): complete where the earlier search held at least `need` of
    them, which are then its `need` nearest there as far as that search found them (exactly, when it was
    exact: it found everything nearer)."""
    at = np.searchsorted(source.points, points)
    position = np.full(int(max(rows.max(initial=-1), source.indices.max(initial=-1))) + 1, -1, dtype=np.int64)
    position[rows] = np.arange(rows.size)
    found = source.indices[at]
    mapped = np.where(found >= 0, position[np.maximum(found, 0)], -1)
    kept = mapped >= 0
    first = np.argsort(~kept, axis=1, kind="stable")[:, :need]  # kept entries first, in distance order
    distances = np.take_along_axis(source.distances[at], first, axis=1)
    indices = np.take_along_axis(mapped, first, axis=1)
    return distances, indices, kept.sum(axis=1) >= need


@dataclass
class PoolClusters:
    """A noise-pool re-cluster: `rows` (pool first, then context) index the features `model` was fitted on;
    `emerging` pool labels are new clusters; `joins[label]` is the existing owner whose members make up most
    of that pool label's context."""

    model: PHDBSCAN
    rows: np.ndarray
    from_pool: np.ndarray
    emerging: list[int]
    joins: dict[int, object]


def recluster_pool(features: np.ndarray, owner: np.ndarray, model: PHDBSCAN, min_points: int,
                   context_share: float = 1.0, keep_graph: bool = False) -> PoolClusters | None:
    """Fit `model` on the points whose `owner` is None (the pool), beside a sample of owned points as context.

    The context matters because HDBSCAN (without allow_single_cluster) never returns its root: a pool
    holding a single new pattern and scattered noise would yield no cluster at all. Among the owned points
    the pattern is one dense region of several. A cluster made at least half of pool points is emerging.
    One made mostly of context is an existing cluster found again: when more than half of its context
    members belong to one existing cluster, its pool points join that cluster (else they stay noise).
    They are members of a fitted cluster, as any cluster's members are; `assign_to_chain`'s gate is for
    predicted points, which attach at their own density level, below the cluster's birth.
    """
    noise = np.array([o is None for o in owner], dtype=bool)
    pool = np.flatnonzero(noise)
    if pool.size < min_points:
        return None
    assigned = np.flatnonzero(~noise)
    take = min(assigned.size, int(context_share * pool.size))
    context = assigned[np.linspace(0, assigned.size - 1, take).astype(np.int64)] if take else assigned[:0]
    rows = np.concatenate([pool, context])
    model.fit(features[rows], keep_graph=keep_graph)
    labels = model.labels_
    from_pool = np.arange(rows.size) < pool.size
    emerging, joins = [], {}
    for c in np.unique(labels[labels >= 0]):
        mine = labels == c
        if from_pool[mine].mean() >= 0.5:
            emerging.append(int(c))
            continue
        around = owner[rows[mine & ~from_pool]]
        names = around.astype(str)
        values, counts = np.unique(names, return_counts=True)
        if counts.max() * 2 > around.size:
            joins[int(c)] = around[np.flatnonzero(names == values[counts.argmax()])[0]]
    return PoolClusters(model, rows, from_pool, emerging, joins)


def cluster_noise(features: np.ndarray, assignment: Assignment, model: PHDBSCAN, min_points: int,
                  name_clusters: Callable[[np.ndarray, np.ndarray], dict[int, str]],
                  context_share: float = 1.0, join_existing: bool = True,
                  attach_share: float = 0.0, attach_neighbours: int = 10,
                  features_model: int | None = None) -> KeyedModel | None:
    """Re-cluster the points still called noise (`recluster_pool`); emerging clusters' points join them, and,
    with `join_existing`, pool points re-found with an existing cluster's members join that cluster (in place).
    With `attach_share` > 0, the pool points still noise after that go through `attach_to_neighbours`
    (over their `attach_neighbours` nearest rows).

    `name_clusters(rows, labels)` gives each emerging label its key (rows index `features`). Returns the keyed
    model when it found emerging clusters, so later runs can offer points to it too; `features_model`: the
    chain index of a model fitted on `features` itself, row for row (the full run's base model), which the
    returned model is then `within`.
    """
    found = recluster_pool(features, assignment.keys, model, min_points, context_share, keep_graph=attach_share > 0)
    if found is None:
        return None
    labels, rows = found.model.labels_, found.rows
    keys: dict[int, str] = {}
    if found.emerging:
        keep = np.isin(labels, found.emerging)
        keys = name_clusters(rows[keep], labels[keep])
    targets = {**(found.joins if join_existing else {}), **keys}
    joined = found.from_pool & np.isin(labels, list(targets))
    rows_joined = rows[joined]
    assignment.keys[rows_joined] = [targets[int(c)] for c in labels[joined]]
    assignment.probabilities[rows_joined] = model.probabilities_[joined]
    assignment.outlier_scores[rows_joined] = model.outlier_scores_[joined]
    assignment.persistence.update({k: float(model.cluster_persistence_[c]) for c, k in keys.items()})
    if attach_share > 0:
        attach_to_neighbours(features, found, assignment, attach_share, attach_neighbours)
        model.knn_graph_ = None  # n x k arrays; the model lives on in the chain
    if not keys:
        return None
    return KeyedModel(model, keys, within=None if features_model is None else (features_model, rows))


def attach_to_neighbours(features: np.ndarray, found: PoolClusters, assignment: Assignment,
                         share: float, neighbours: int) -> np.ndarray:
    """Pool points still noise join the cluster that holds at least `share` of their `neighbours` nearest
    fitted rows.

    HDBSCAN calls noise every point that left a cluster's branch before the selected cluster was born; with
    clusters capped in size (selection below the root) or `leaf` selection, that is the whole fringe of a
    group, not only points between groups. A point whose neighbourhood (its nearest rows of the pool
    fit: pool and context) is mostly one cluster's members sits in that cluster's fringe and
    joins it, with probability 0 and its outlier score kept; a point among noise or between clusters
    stays noise. Returns the rows (indexing `assignment`) that joined.
    """
    model = found.model
    still = np.flatnonzero(found.from_pool)
    still = still[np.array([k is None for k in assignment.keys[found.rows[still]]], dtype=bool)]
    k = min(neighbours, found.rows.size - 1)
    if still.size == 0 or k < 1:
        return still[:0]
    graph = getattr(model, "knn_graph_", None)
    if graph is not None and graph.indices.shape[1] > k:  # the fit's own graph: no second search
        nearest = graph.indices[still, :k + 1]
    else:
        _, nearest = model.kneighbors(features[found.rows[still]], k + 1)
    owners = assignment.keys[found.rows[_without_self(nearest, still, k)]]  # (points, k): a key or None
    keys = sorted({key for key in owners.ravel() if key is not None}, key=str)
    code = {key: c for c, key in enumerate(keys)}
    codes = np.fromiter((code.get(key, -1) for key in owners.ravel()), np.int64, owners.size).reshape(owners.shape)
    best, votes = majority(codes)
    joins = (best >= 0) & (votes >= share * k)
    rows = found.rows[still[joins]]
    assignment.keys[rows] = np.array(keys + [None], dtype=object)[best[joins]]
    assignment.probabilities[rows] = 0.0
    assignment.attached += rows.size
    return rows


def _without_self(neighbours: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(points, k + 1) neighbour rows of training rows `rows` -> their first k other rows."""
    others = neighbours != rows[:, None]
    others[others.sum(axis=1) > k, -1] = False  # self not found among them (ties): drop the farthest
    return neighbours[others].reshape(rows.size, k)


def majority(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a (points, k) array of non-negative codes (-1: none), the most frequent code and its count."""
    best = np.full(codes.shape[0], -1, dtype=np.int64)
    votes = np.zeros(codes.shape[0], dtype=np.int64)
    for column in range(codes.shape[1]):
        candidate = codes[:, column]
        count = (codes == candidate[:, None]).sum(axis=1)
        better = (candidate >= 0) & (count > votes)
        best[better], votes[better] = candidate[better], count[better]
    return best, votes
