"""pHDBSCAN agrees with the hdbscan library, predicts new points, round-trips through files, logs its stages,
and rejects bad input clearly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import adjusted_rand_score

import hdbscan
from lakelens.operators.hdbscan import PHDBSCAN
from lakelens.operators.hdbscan.knn import knn_graph, merge_topk, search, build_index
from lakelens.operators.hdbscan.mst import (
    JoinReport,
    connect_components,
    core_distances,
    knn_edges,
    knn_spanning_forest,
    minimum_spanning_forest,
)
from lakelens.operators.hdbscan.tree import condense_tree, select_clusters, single_linkage


def _blobs_with_noise(n=3000, dim=2, seed=0):
    X, _ = make_blobs(n_samples=n, centers=6, n_features=dim, cluster_std=[0.4, 0.8, 1.2, 0.6, 1.6, 1.0],
                      random_state=seed)
    noise = np.random.default_rng(seed).uniform(X.min(0) - 2, X.max(0) + 2, size=(n // 15, dim))
    return np.vstack([X, noise])


def _moons(seed=0):
    X, _ = make_moons(n_samples=2000, noise=0.06, random_state=seed)
    return X


def _high_dim(seed=0):
    X, _ = make_blobs(n_samples=3000, centers=8, n_features=64, cluster_std=2.5, random_state=seed)
    return X


def _heavy_duplicates(seed=0):
    rng = np.random.default_rng(seed)
    base, _ = make_blobs(n_samples=600, centers=4, random_state=seed)
    return np.vstack([base, base[rng.integers(0, 600, 1400)]])


CASES = {
    "blobs_varying_density_with_noise": (_blobs_with_noise, 25),
    "moons": (_moons, 20),
    "64_dimensions": (_high_dim, 30),
    "heavy_duplicates": (_heavy_duplicates, 30),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_labels_and_outlier_scores_agree_with_hdbscan_on_an_exact_knn_graph(case):
    make, min_cluster_size = CASES[case]
    X = make()
    reference = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, approx_min_span_tree=False).fit(X)
    ours = PHDBSCAN(min_cluster_size=min_cluster_size, knn_method="exact").fit(X)
    assert reference.labels_.max() >= 1, "the case must have structure to compare"
    assert adjusted_rand_score(reference.labels_, ours.labels_) >= 0.95
    assert spearmanr(reference.outlier_scores_, ours.outlier_scores_).correlation >= 0.9


def test_cluster_persistence_matches_hdbscan():
    X = _blobs_with_noise(seed=3)
    reference = hdbscan.HDBSCAN(min_cluster_size=25, approx_min_span_tree=False).fit(X)
    ours = PHDBSCAN(min_cluster_size=25).fit(X)
    np.testing.assert_allclose(np.sort(ours.cluster_persistence_), np.sort(reference.cluster_persistence_),
                               atol=5e-3)


def _canonical(tree: np.ndarray, n: int) -> list[tuple]:
    """The condensed tree with clusters named by their smallest member point, so numbering cannot differ."""
    root = int(tree["parent"].min())
    smallest = {}
    for row in sorted(tree, key=lambda r: -r["parent"]):  # children have larger ids than parents
        child = int(row["child"])
        value = child if child < n else smallest[child]
        smallest[int(row["parent"])] = min(smallest.get(int(row["parent"]), n), value)
    name = lambda c: ("point", c) if c < n else ("cluster", smallest[c])  # noqa: E731
    return sorted((name(int(r["parent"])), name(int(r["child"])), int(r["child_size"]), float(r["lambda_val"]))
                  for r in tree if int(r["parent"]) >= root)


def _small_case(seed):
    X, _ = make_blobs(n_samples=300, centers=3, cluster_std=[0.5, 1.0, 1.5], random_state=seed)
    # the operator computes on float32 rows; hdbscan gets the same values
    X = X.astype(np.float32).astype(np.float64)
    reference = hdbscan.HDBSCAN(min_cluster_size=10, approx_min_span_tree=False).fit(X)
    return X, reference, PHDBSCAN(min_cluster_size=10, knn_k=len(X)).fit(X)


# Equal mutual-reachability weights (a point whose core distance sets several edges) make the
# spanning tree non-unique; the order in which equal merges are taken can then move a point across
# a split, so exact equality is asked of cases whose splits no tie decides (seeds 2, 4 and 8 of
# this generator have such ties and are covered by the next test).
@pytest.mark.parametrize("seed", [1, 3, 5, 6, 7])
def test_condensed_tree_matches_hdbscan_exactly_on_small_cases(seed):
    X, reference, ours = _small_case(seed)
    # identical up to how clusters are numbered (which depends on left/right order in the linkage)
    got = _canonical(ours.condensed_tree_, len(X))
    expected = _canonical(reference.condensed_tree_._raw_tree, len(X))
    assert [row[:3] for row in got] == [row[:3] for row in expected]
    np.testing.assert_allclose([row[3] for row in got], [row[3] for row in expected], rtol=1e-5)
    assert adjusted_rand_score(reference.labels_, ours.labels_) == 1.0


@pytest.mark.parametrize("seed", [2, 4, 8])
def test_with_tied_weights_the_hierarchy_matches_hdbscan_up_to_the_order_of_equal_merges(seed):
    X, reference, ours = _small_case(seed)
    heights = np.sort(reference.single_linkage_tree_.to_numpy()[:, 2])
    assert (np.diff(heights) == 0).any()  # the case has ties
    assert np.array_equal(np.sort(ours.single_linkage_tree_[:, 2]), heights)  # the same merge heights
    ref_tree, our_tree = reference.condensed_tree_._raw_tree, ours.condensed_tree_
    splits = lambda t: np.sort(t[t["child"] >= len(X)]["lambda_val"])  # noqa: E731
    np.testing.assert_allclose(splits(our_tree), splits(ref_tree), rtol=1e-9)
    assert ours.labels_.max() == reference.labels_.max()
    assert adjusted_rand_score(reference.labels_, ours.labels_) >= 0.99


def test_selection_options_match_hdbscan():
    X = _blobs_with_noise(1500, seed=4)
    for options in ({"cluster_selection_method": "leaf"}, {"cluster_selection_epsilon": 1.5},
                    {"min_samples": 5}, {"cluster_selection_method": "leaf", "cluster_selection_epsilon": 0.8}):
        reference = hdbscan.HDBSCAN(min_cluster_size=20, approx_min_span_tree=False, **options).fit(X)
        ours = PHDBSCAN(min_cluster_size=20, knn_method="exact", **options).fit(X)
        assert adjusted_rand_score(reference.labels_, ours.labels_) >= 0.95, options


def test_max_cluster_size_splits_a_dominant_cluster_like_hdbscan():
    # one wide mass holding two tight groups, beside a small separate blob
    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(0, 3.0, (1200, 2)), rng.normal([1.5, 1.5], 0.2, (120, 2)),
                   rng.normal([-1.5, -1.5], 0.2, (120, 2)), rng.normal([30, 30], 0.5, (200, 2))])
    unlimited = PHDBSCAN(min_cluster_size=40, knn_method="exact").fit(X)
    capped = PHDBSCAN(min_cluster_size=40, knn_method="exact", max_cluster_size=600).fit(X)
    reference = hdbscan.HDBSCAN(min_cluster_size=40, approx_min_span_tree=False, max_cluster_size=600).fit(X)
    assert np.bincount(capped.labels_[capped.labels_ >= 0]).max() <= 600
    assert capped.labels_.max() > unlimited.labels_.max()
    assert adjusted_rand_score(reference.labels_, capped.labels_) >= 0.95


def test_allow_single_cluster_labels_the_root_cluster_like_hdbscan():
    for X in (make_blobs(n_samples=500, centers=1, random_state=0)[0], _moons(seed=1)):
        reference = hdbscan.HDBSCAN(min_cluster_size=20, allow_single_cluster=True, approx_min_span_tree=False).fit(X)
        ours = PHDBSCAN(min_cluster_size=20, allow_single_cluster=True).fit(X)
        assert adjusted_rand_score(reference.labels_, ours.labels_) >= 0.95


def test_same_input_gives_same_labels_including_ties():
    X = _heavy_duplicates(seed=5)
    first = PHDBSCAN(min_cluster_size=15).fit(X)
    second = PHDBSCAN(min_cluster_size=15).fit(X.copy())
    assert np.array_equal(first.labels_, second.labels_)
    assert np.array_equal(first.condensed_tree_, second.condensed_tree_)


@pytest.mark.parametrize("make", [_heavy_duplicates, _moons, _blobs_with_noise])
def test_boruvka_over_the_knn_rows_gives_the_forest_kruskal_gives_over_the_sorted_edge_list(make):
    X = make()[0] if isinstance(make(), tuple) else make()
    X = np.asarray(X, dtype=np.float32)
    graph = knn_graph(X, 8)
    core = core_distances(graph, 5)
    expected = minimum_spanning_forest(len(X), *knn_edges(graph, core))
    got = knn_spanning_forest(graph, core)
    for e, g in zip(expected, got):
        assert np.array_equal(e, g)
    # one shard's rows (global ids) give that shard's forest the same way
    rows = np.arange(100, 400)
    shard = type(graph)(graph.distances[rows], graph.indices[rows])
    expected = minimum_spanning_forest(len(X), *knn_edges(shard, core, rows=rows))
    got = knn_spanning_forest(shard, core, rows=rows)
    for e, g in zip(expected, got):
        assert np.array_equal(e, g)


def test_a_disconnected_knn_graph_is_joined_by_the_exact_lightest_mutual_reachability_edges():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.3, (200, 2)), rng.normal(0, 0.3, (200, 2)) + [40, 0],
                   rng.normal(0, 0.3, (150, 2)) + [0, 25]]).astype(np.float32)
    graph = knn_graph(X, 8)
    core = core_distances(graph, 5)
    a, b, w = minimum_spanning_forest(len(X), *knn_edges(graph, core))
    assert a.size < len(X) - 1  # three islands
    report = JoinReport()
    a, b, w = connect_components(X, core, a, b, w, report=report)
    assert a.size == len(X) - 1 and report.exact and report.components == 3
    # the exact MST of the complete mutual-reachability graph has the same total weight
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    dist = cdist(X.astype(np.float64), X.astype(np.float64))
    full = np.maximum(np.maximum(core[:, None], core[None, :]), dist)
    np.fill_diagonal(full, 0)
    assert w.sum() == pytest.approx(minimum_spanning_tree(full).sum(), rel=1e-9)


def test_sharded_topk_merge_equals_one_index_search():
    X = np.random.default_rng(1).normal(size=(2000, 16)).astype(np.float32)
    whole = knn_graph(X, 10)
    parts = []
    for lo, hi in ((0, 700), (700, 1500), (1500, 2000)):
        found = search(build_index(X[lo:hi], method="exact", device="cpu"), X[lo:hi], X, 10)
        parts.append(type(found)(found.distances, found.indices + lo))
    merged = merge_topk(parts, 10)
    assert np.array_equal(merged.indices, whole.indices)


def test_approximate_predict_puts_training_points_back_in_their_clusters():
    X = _blobs_with_noise(2000, seed=6)
    model = PHDBSCAN(min_cluster_size=25).fit(X)
    members = np.flatnonzero(model.probabilities_ > 0.5)
    rng = np.random.default_rng(0)
    jitter = X[members] + rng.normal(0, 1e-3, X[members].shape)
    labels, probs = model.approximate_predict(jitter)
    assert (labels == model.labels_[members]).mean() >= 0.97
    far = np.full((3, 2), 1e4)
    far_labels, far_probs = model.approximate_predict(far)
    assert (far_labels == -1).all() and (far_probs == 0).all()
    assert ((probs >= 0) & (probs <= 1)).all()


def test_predicted_outlier_scores_agree_with_hdbscan_approximate_predict_scores():
    import hdbscan
    from hdbscan.prediction import approximate_predict_scores
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(3000, centers=5, cluster_std=[0.5, 1, 1.5, 0.8, 2], random_state=3)
    rng = np.random.default_rng(0)
    probe = np.vstack([X[:300] + rng.normal(0, 0.3, (300, 2)), rng.uniform(-15, 15, (100, 2))])
    reference = hdbscan.HDBSCAN(min_cluster_size=25, min_samples=10, prediction_data=True).fit(X)
    labels, probs, scores = PHDBSCAN(min_cluster_size=25, min_samples=10).fit(X).predict_with_scores(probe)
    assert np.corrcoef(approximate_predict_scores(reference, probe), scores)[0, 1] >= 0.95
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[300:].mean() > scores[:300].mean()


def test_a_fitted_model_round_trips_through_its_files():
    X = _blobs_with_noise(800, seed=7)
    model = PHDBSCAN(min_cluster_size=20).fit(X)
    files = model.to_files()
    assert sorted(files) == ["arrays.npz", "model.json"]
    loaded = PHDBSCAN.from_files({name: bytes(data) for name, data in files.items()})
    assert np.array_equal(loaded.labels_, model.labels_)
    probe = X[:50] + 1e-4
    assert np.array_equal(loaded.approximate_predict(probe)[0], model.approximate_predict(probe)[0])


def test_files_that_are_not_a_phdbscan_model_are_a_clear_error():
    files = PHDBSCAN(min_cluster_size=5).fit(np.random.default_rng(0).normal(size=(60, 2))).to_files()
    with pytest.raises(ValueError, match="not a pHDBSCAN model: no arrays.npz"):
        PHDBSCAN.from_files({"model.json": files["model.json"]})
    with pytest.raises(ValueError, match="kind 'encoder'"):
        PHDBSCAN.from_files({**files, "model.json": b'{"kind": "encoder"}'})
    with pytest.raises(ValueError, match="arrays.npz is not an npz archive"):
        PHDBSCAN.from_files({**files, "arrays.npz": b"weights"})


def test_fit_stages_log_elapsed_seconds_and_sizes(caplog):
    with caplog.at_level("INFO", logger="lakelens.operators.hdbscan"):
        PHDBSCAN(min_cluster_size=20).fit(_blobs_with_noise(600, seed=2))
    steps = {r.step: r for r in caplog.records if hasattr(r, "step")}
    assert {"knn graph", "core distances", "spanning forest", "single linkage", "condensed tree", "selection",
            "hdbscan fit"} <= set(steps)
    assert all(r.elapsed_s >= 0 and r.levelname == "INFO" for r in steps.values())
    assert steps["knn graph"].sizes["points"] == 640 and steps["hdbscan fit"].sizes["clusters"] >= 2


def test_rows_with_nan_or_inf_are_noise_and_leave_the_others_unchanged_as_in_the_peers():
    X = _blobs_with_noise(600, seed=2)
    bad = [3, 50, 51, 7]
    dirty = X.copy()
    dirty[[3, 50, 51]] = np.nan
    dirty[7, 1] = np.inf
    model = PHDBSCAN(min_cluster_size=20).fit(dirty)
    clean_rows = np.setdiff1d(np.arange(len(X)), bad)
    clean = PHDBSCAN(min_cluster_size=20).fit(X[clean_rows])
    assert (model.labels_[bad] == -1).all() and (model.probabilities_[bad] == 0).all()
    assert (model.outlier_scores_[bad] == 1).all()
    assert np.array_equal(model.labels_[clean_rows], clean.labels_)
    # the trees hold every row: the left-out ones leave the root at lambda 0 / join at distance inf
    tree = model.condensed_tree_.to_numpy()
    assert set(tree["child"][tree["lambda_val"] == 0]) >= set(bad)
    assert np.isinf(model.single_linkage_tree_.to_numpy()[-len(bad):, 2]).all()
    # new points must still be finite
    with pytest.raises(ValueError, match=r"1 rows contain NaN or inf \(first at row 0\)"):
        model.predict_with_scores(dirty[[3]])


def test_edge_cases_work_or_fail_clearly():
    rng = np.random.default_rng(0)
    tiny = rng.normal(size=(4, 2))
    assert (PHDBSCAN(min_cluster_size=10).fit(tiny).labels_ == -1).all()  # n < min_cluster_size: all noise
    assert (PHDBSCAN(min_cluster_size=5).fit(rng.normal(size=(1, 2))).labels_ == -1).all()
    same = np.ones((50, 3))
    labels = PHDBSCAN(min_cluster_size=5, allow_single_cluster=True).fit(same).labels_
    assert len(set(labels)) == 1  # all identical points end up together
    X = _blobs_with_noise(300, seed=2)
    big_k = PHDBSCAN(min_cluster_size=10, knn_k=10_000).fit(X)  # k >= n is clamped
    exact = PHDBSCAN(min_cluster_size=10, knn_k=len(X)).fit(X)
    assert np.array_equal(big_k.labels_, exact.labels_)
    as16 = PHDBSCAN(min_cluster_size=10).fit(X.astype(np.float16)).labels_
    as64 = PHDBSCAN(min_cluster_size=10).fit(X.astype(np.float64)).labels_
    assert adjusted_rand_score(as16, as64) > 0.9
    with pytest.raises(ValueError, match="2-d array"):
        PHDBSCAN().fit(np.zeros(10))
    with pytest.raises(ValueError, match="Min cluster size must be greater than one"):  # hdbscan's messages
        PHDBSCAN(min_cluster_size=1).fit(X)
    with pytest.raises(ValueError, match="Invalid Cluster Selection Method"):
        PHDBSCAN(cluster_selection_method="best").fit(X)


def test_cosine_metric_clusters_directions():
    rng = np.random.default_rng(0)
    directions = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    X = np.vstack([d * rng.uniform(1, 50, (200, 1)) + rng.normal(0, 0.02, (200, 3)) * 50 for d in directions])
    labels = PHDBSCAN(min_cluster_size=20, metric="cosine").fit(X).labels_
    truth = np.repeat([0, 1, 2], 200)
    assert adjusted_rand_score(truth, labels) > 0.9


def test_tree_stages_compose_from_pure_functions():
    X = _blobs_with_noise(400, seed=8).astype(np.float32)
    graph = knn_graph(X, 16)
    core = core_distances(graph, 10)
    a, b, w = connect_components(X, core, *minimum_spanning_forest(len(X), *knn_edges(graph, core)))
    tree = condense_tree(single_linkage(len(X), a, b, w), 10)
    assert tree["child_size"][tree["parent"] == tree["parent"].min()].sum() == len(X)
    assert select_clusters(tree) == sorted(select_clusters(tree))


def test_sharded_mode_on_ray_gives_exactly_the_single_node_labels(ray_local):
    from lakelens.operators.hdbscan import HDBSCANParams, fit_hdbscan, prepare_data
    from lakelens.operators.hdbscan.sharded import fit_sharded

    X = prepare_data(_blobs_with_noise(3000, dim=8, seed=9))
    params = HDBSCANParams(min_cluster_size=25, min_samples=10, knn_k=20)
    graph = knn_graph(X, 20, method="exact")
    single = fit_hdbscan(X, params, graph=graph)
    on_same_graph = fit_sharded(X, params, num_shards=3, graph=graph)
    assert np.array_equal(single.labels, on_same_graph.labels)
    assert np.array_equal(single.condensed_tree, on_same_graph.condensed_tree)
    # with its own fan-out kNN search (exact shards, tie-free data) the graph and labels match too
    end_to_end = fit_sharded(X, HDBSCANParams(min_cluster_size=25, min_samples=10, knn_k=20, knn_method="exact"),
                             num_shards=4)
    assert np.array_equal(single.labels, end_to_end.labels)
    np.testing.assert_allclose(single.outlier_scores, end_to_end.outlier_scores)
