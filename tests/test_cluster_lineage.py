"""Incremental assignment and cluster lineage, operator by operator, on small arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lakelens.operators.assignment import KeyedModel, assign_to_chain, cluster_noise
from lakelens.operators.hdbscan import PHDBSCAN
from lakelens.operators.lineage import (
    LineageParams, centroids, lineage_status, match_clusters, member_overlap,
)


def _blob(center, n, rng, spread=0.2):
    return np.asarray(center, dtype=np.float64) + rng.normal(0, spread, (n, 2))


def test_member_overlap_is_jaccard_over_the_transactions_both_runs_clustered():
    previous_ids = pa.array(["a", "b", "c", "d", "e", "old"])
    previous_keys = pa.array(["k1", "k1", "k1", "k2", None, "k2"])
    current_ids = pa.array(["a", "b", "c", "d", "e", "new"])
    current_labels = np.array([0, 0, 1, 1, 1, 0])
    overlap = member_overlap(previous_ids, previous_keys, current_ids, current_labels)
    # shared and clustered before: a,b,c (k1), d (k2); now: a,b (0), c,d,e (1)
    assert overlap[("k1", 0)] == 2 / 3
    assert overlap[("k1", 1)] == 1 / (3 + 3 - 1)
    assert overlap[("k2", 1)] == 1 / 3
    assert ("k2", 0) not in overlap


def test_matching_is_one_to_one_best_overlap_first_with_a_centroid_fallback():
    overlap = {("k1", 0): 0.9, ("k1", 1): 0.5, ("k2", 1): 0.4, ("k3", 2): 0.1}
    previous = {"k1": np.zeros(2), "k2": np.ones(2), "k3": np.array([5.0, 5.0]), "k4": np.array([9.0, 9.0])}
    current = {0: np.zeros(2), 1: np.ones(2), 2: np.array([5.0, 5.0]), 3: np.array([9.05, 9.0])}
    matched = match_clusters(overlap, previous, current, LineageParams(min_member_overlap=0.3, max_centroid_distance=0.2))
    # label 1 loses k1 to label 0 and continues k2; label 2 shares members below the bar, so it is new
    # even though its centroid sits on k3's; label 3 shares no members and is matched by centroid
    assert matched == {0: "k1", 1: "k2", 3: "k4"}


def test_lineage_status_follows_the_size_change_within_the_tolerance():
    assert lineage_status(None, 10, 0.1) == "new"
    assert lineage_status(100, 111, 0.1) == "growing"
    assert lineage_status(100, 105, 0.1) == "stable"
    assert lineage_status(100, 89, 0.1) == "shrinking"


def test_centroids_are_member_means_and_ignore_noise():
    features = np.array([[0.0, 0.0], [2.0, 2.0], [10.0, 10.0], [100.0, 100.0]])
    means = centroids(features, np.array([0, 0, 1, -1]))
    assert np.allclose(means[0], [1.0, 1.0]) and np.allclose(means[1], [10.0, 10.0]) and set(means) == {0, 1}


def test_new_points_join_known_clusters_and_an_emerging_blob_becomes_a_new_cluster():
    rng = np.random.default_rng(3)
    base = np.vstack([_blob((0, 0), 200, rng), _blob((6, 0), 200, rng)])
    model = PHDBSCAN(min_cluster_size=20, min_samples=5).fit(base)
    keys = {label: f"key-{label}" for label in range(int(model.labels_.max()) + 1)}
    assert len(keys) == 2
    known = np.vstack([_blob((0, 0), 50, rng), _blob((6, 0), 50, rng)])
    emerging = _blob((0, 8), 60, rng, spread=0.15)
    scattered = rng.uniform((-10, 12), (12, 30), (150, 2))  # the usual noise around an emerging pattern
    points = np.vstack([known, emerging, scattered])
    assignment = assign_to_chain(points, [KeyedModel(model, keys)])
    near_first = model.approximate_predict(known[:1])[0][0]
    assert (assignment.keys[:50] == keys[near_first]).mean() >= 0.9
    assert assignment.noise[100:160].all()  # far from every known cluster

    found = cluster_noise(points, assignment, PHDBSCAN(min_cluster_size=20, min_samples=5), 20,
                          lambda rows, labels: {int(c): f"emerging-{c}" for c in np.unique(labels[labels >= 0])})
    assert found is not None
    blob_key = max(set(found.keys.values()), key=lambda k: (assignment.keys[100:160] == k).sum())
    assert (assignment.keys[100:160] == blob_key).mean() >= 0.9
    assert (assignment.keys[160:] == blob_key).mean() <= 0.1
    assert blob_key in assignment.persistence
    # the next day, points from the emerging blob are offered to it through the chain
    tomorrow = assign_to_chain(_blob((0, 8), 20, rng, spread=0.15), [KeyedModel(model, keys), found])
    assert (tomorrow.keys == blob_key).mean() >= 0.9


def test_a_noise_pool_smaller_than_a_cluster_is_left_alone():
    rng = np.random.default_rng(4)
    model = PHDBSCAN(min_cluster_size=20).fit(np.vstack([_blob((0, 0), 100, rng), _blob((4, 0), 100, rng)]))
    assignment = assign_to_chain(_blob((9, 9), 5, rng), [KeyedModel(model, {0: "k0", 1: "k1"})])
    assert cluster_noise(_blob((9, 9), 5, rng), assignment, PHDBSCAN(min_cluster_size=20), 20,
                         lambda rows, labels: {}) is None
    assert assignment.noise.all()


def test_a_model_fitted_within_the_base_models_rows_reuses_its_search_and_assigns_exactly_the_same():
    rng = np.random.default_rng(5)
    window = np.vstack([_blob((0, 0), 300, rng), _blob((6, 0), 300, rng), _blob((0, 8), 30, rng, spread=0.15),
                        rng.uniform((-10, -10), (16, 20), (200, 2))])
    base = PHDBSCAN(min_cluster_size=40, min_samples=10).fit(window)
    keys = {label: f"base-{label}" for label in range(int(base.labels_.max()) + 1)}
    owned = assign_to_chain(window, [KeyedModel(base, keys)])
    owned.keys[:] = np.array([keys.get(int(c)) for c in base.labels_], dtype=object)
    found = cluster_noise(window, owned, PHDBSCAN(min_cluster_size=20, min_samples=5), 20,
                          lambda rows, labels: {int(c): f"pool-{c}" for c in np.unique(labels)}, features_model=0)
    assert found is not None and found.within is not None and found.within[0] == 0
    assert 0 < found.within[1].size < window.shape[0]  # the pool and its context: a subset of the base rows

    today = np.vstack([_blob((0, 0), 40, rng), _blob((0, 8), 20, rng, spread=0.15),
                       rng.uniform((-10, -10), (16, 20), (60, 2))])
    shared = assign_to_chain(today, [KeyedModel(base, keys), found])
    searched = assign_to_chain(today, [KeyedModel(base, keys), KeyedModel(found.model, found.keys)])
    assert shared.reused_searches > 0 and searched.reused_searches == 0
    assert shared.keys.tolist() == searched.keys.tolist()
    np.testing.assert_array_equal(shared.probabilities, searched.probabilities)
    np.testing.assert_array_equal(shared.outlier_scores, searched.outlier_scores)
    assert any(k in found.keys.values() for k in shared.keys)  # the second model did take points


def test_a_model_that_searches_exactly_never_takes_its_neighbours_from_an_approximate_search():
    from lakelens.operators.assignment import Searched, chain_neighbours

    rng = np.random.default_rng(11)
    window = np.vstack([_blob((0, 0), 200, rng), _blob((6, 0), 200, rng)])
    rows = np.arange(0, 400, 2)
    model = PHDBSCAN(min_cluster_size=20, min_samples=5).fit(window[rows])  # 200 rows: a flat, exact search
    need = model.gate_neighbours
    todo = np.arange(30)
    points = rng.normal(0, 1, (30, 2))
    # an earlier search over the whole window that covers every point (its neighbours: the subset's rows)
    subset_d, subset_i = model.kneighbors(points, need)
    earlier = Searched(todo, subset_d + 1.0, rows[subset_i], exact=False)  # wrong distances, so a reuse would show
    link = KeyedModel(model, {0: "a"}, within=(0, rows))

    searched = chain_neighbours(points, todo, link, [earlier])
    assert searched.reused == 0 and searched.exact
    np.testing.assert_array_equal(searched.distances, subset_d)
    reused = chain_neighbours(points, todo, link, [Searched(todo, subset_d, rows[subset_i], exact=True)])
    assert reused.reused == todo.size and reused.exact
    np.testing.assert_array_equal(reused.indices, subset_i)


def test_neighbours_among_a_subset_keep_the_search_order_and_flag_points_the_search_cannot_serve():
    from lakelens.operators.assignment import Searched, neighbours_among

    # two points searched, 4 neighbours each among training rows 0..5; the subset holds rows 1, 3, 4, 5
    source = Searched(np.array([2, 7]), np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]),
                      np.array([[3, 0, 5, 2], [0, 2, 1, 4]]), exact=True)
    distances, indices, complete = neighbours_among(source, np.array([2, 7]), np.array([1, 3, 4, 5]), need=2)
    assert complete.tolist() == [True, True]
    assert indices.tolist() == [[1, 3], [0, 2]]  # positions in the subset: row 3 -> 1, row 5 -> 3, row 1 -> 0 ...
    assert distances.tolist() == [[0.1, 0.3], [0.7, 0.8]]
    _, _, complete = neighbours_among(source, np.array([7]), np.array([1, 3, 4, 5]), need=3)
    assert complete.tolist() == [False]  # only two of its four neighbours are in the subset: search it
