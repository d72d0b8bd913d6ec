"""The drop-in surface, stage by stage and against the peers on the same data: metrics, precomputed
dense and sparse distances, sparse features, soft clustering, tree objects, the selection options
hdbscan added (persistence, epsilon_max, alpha, match_reference_implementation), memory caching,
validity, estimator conventions, and the scikit-learn facade."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist, cityblock, pdist, squareform
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import kneighbors_graph

import hdbscan as reference
import lakelens.operators.hdbscan as ours
from lakelens.operators.hdbscan.mst import (
    JoinReport,
    connect_components,
    connect_components_by_rows,
    csr_spanning_forest,
)
from lakelens.operators.hdbscan.sklearn import HDBSCAN as SkHDBSCAN
from lakelens.operators.hdbscan.tree import labelling_at_cut, orient_from_first_point, simplify_hierarchy

warnings.filterwarnings("ignore", category=UserWarning)


def _blobs(n=600, seed=3, dim=2):
    X, _ = make_blobs(n, centers=4, n_features=dim, cluster_std=[0.5, 0.8, 1.0, 1.3], random_state=seed)
    return X.astype(np.float32).astype(np.float64)  # the values the FAISS path computes on


@pytest.fixture(scope="module")
def fitted():
    X = _blobs()
    ref = reference.HDBSCAN(min_cluster_size=15, prediction_data=True, gen_min_span_tree=True,
                            algorithm="generic").fit(X)
    got = ours.HDBSCAN(min_cluster_size=15, prediction_data=True, gen_min_span_tree=True).fit(X)
    return X, ref, got


# -- soft clustering and prediction ------------------------------------------------------------------

def test_prediction_and_soft_clustering_match_hdbscan(fitted):
    X, ref, got = fitted
    assert adjusted_rand_score(ref.labels_, got.labels_) > 0.99
    probe = np.vstack([X[:40] + 0.2, np.random.default_rng(0).uniform(-10, 10, (20, 2))])
    labels_ref, probs_ref = reference.approximate_predict(ref, probe)
    labels_got, probs_got = ours.approximate_predict(got, probe)
    assert np.array_equal(labels_ref, labels_got)  # the same numbering too: linkage sides as Prim's from point 0
    np.testing.assert_allclose(probs_got, probs_ref, atol=1e-5)
    np.testing.assert_allclose(ours.approximate_predict_scores(got, probe),
                               reference.approximate_predict_scores(ref, probe), atol=1e-5)
    np.testing.assert_allclose(ours.membership_vector(got, probe), reference.membership_vector(ref, probe), atol=1e-5)
    both = ref.labels_ == got.labels_
    np.testing.assert_allclose(ours.all_points_membership_vectors(got)[both],
                               reference.all_points_membership_vectors(ref)[both], atol=1e-3)
    for mine, theirs in zip(got.exemplars_, ref.exemplars_):
        assert np.array_equal(np.sort(mine, axis=0), np.sort(theirs, axis=0))
    # a training point given again scores its own GLOSH score
    np.testing.assert_allclose(ours.approximate_predict_scores(got, X), got.outlier_scores_, atol=1e-6)


def test_prediction_functions_refuse_without_prediction_data_and_on_wrong_dimensions():
    X = _blobs(300)
    model = ours.HDBSCAN(min_cluster_size=15).fit(X)
    with pytest.raises(ValueError, match="prediction data"):
        ours.approximate_predict_scores(model, X)
    model.generate_prediction_data()
    with pytest.raises(ValueError, match="dimension"):
        ours.approximate_predict(model, np.zeros((1, 3)))
    nothing = ours.HDBSCAN(min_cluster_size=len(X), prediction_data=True).fit(X)
    with pytest.warns(UserWarning, match="does not have any defined clusters"):
        assert (ours.approximate_predict(nothing, X[:3])[0] == -1).all()
    assert np.array_equal(ours.all_points_membership_vectors(nothing), np.zeros(len(X)))


# -- metrics, precomputed distances, sparse input ------------------------------------------------

@pytest.mark.parametrize("metric, kwargs", [
    ("manhattan", {}), ("chebyshev", {}), ("minkowski", {"p": 3}), ("seuclidean", {"V": np.array([1.0, 4.0])}),
    ("canberra", {}), ("cosine", {}), (cityblock, {}),
])
def test_metrics_agree_with_hdbscan(metric, kwargs):
    X = _blobs(500, seed=5) + 20.0  # away from the origin, for cosine and canberra
    ref = reference.HDBSCAN(min_cluster_size=15, metric=metric, algorithm="generic", **kwargs).fit(X)
    got = ours.HDBSCAN(min_cluster_size=15, metric=metric, **kwargs).fit(X)
    assert ref.labels_.max() >= 1
    assert adjusted_rand_score(ref.labels_, got.labels_) >= 0.95


def test_the_cosine_tree_holds_cosine_distances():
    X = _blobs(400, seed=2) + 10.0
    got = ours.HDBSCAN(min_cluster_size=10, metric="cosine", gen_min_span_tree=True).fit(X)
    full = squareform(pdist(X, "cosine"))
    core = np.sort(full, axis=1)[:, 10]
    mr = np.maximum(np.maximum(core[:, None], core[None, :]), full)
    np.fill_diagonal(mr, 0)
    assert got.minimum_spanning_tree_.to_numpy()[:, 2].sum() == pytest.approx(minimum_spanning_tree(mr).sum(),
                                                                                rel=1e-4)


PYNNDESCENT_CHECK = """
import numpy as np
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
import lakelens.operators.hdbscan as ours
X, _ = make_blobs(1500, centers=4, n_features=5, cluster_std=[0.5, 0.8, 1.0, 1.3], random_state=7)
exact = ours.HDBSCAN(min_cluster_size=25, metric="manhattan", knn_method="exact").fit(X)
approx = ours.HDBSCAN(min_cluster_size=25, metric="manhattan", knn_method="nndescent").fit(X)
assert approx._backend.algorithm == "nndescent"
print(adjusted_rand_score(exact.labels_, approx.labels_))
"""


@pytest.mark.slow  # pynndescent compiles with numba on first use (about 20 s)
def test_pynndescent_backend_agrees_with_the_exact_one():
    # in a fresh interpreter: after Ray Data or Ray Train patched builtins.print in this process,
    # numba cannot compile pynndescent (the backend then falls back to exact neighbours, with a warning)
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PYNNDESCENT_CHECK], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) >= 0.95


def test_precomputed_dense_matrix_gives_the_feature_clustering():
    X = _blobs(400, seed=4)
    D = squareform(pdist(X))
    on_features = ours.HDBSCAN(min_cluster_size=12).fit(X)
    on_distances = ours.HDBSCAN(min_cluster_size=12, metric="precomputed").fit(D)
    assert adjusted_rand_score(on_features.labels_, on_distances.labels_) == 1.0
    ref = reference.HDBSCAN(min_cluster_size=12, metric="precomputed").fit(D)
    assert adjusted_rand_score(ref.labels_, on_distances.labels_) >= 0.99
    with pytest.raises(ValueError):
        ours.HDBSCAN(metric="precomputed").fit(X)  # not square
    missing = D.copy()
    missing[0, 1:] = missing[1:, 0] = np.inf  # point 0 has no known distance: it joins at inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ours.HDBSCAN(min_cluster_size=12, metric="precomputed", gen_min_span_tree=True).fit(missing)
    assert model.labels_[0] == -1 and np.isinf(model.single_linkage_tree_.to_numpy()[-1, 2])


def test_a_precomputed_sparse_knn_graph_is_used_directly_as_the_peers_define_it():
    X = _blobs(500, seed=6)
    D = squareform(pdist(X))
    D[D >= np.percentile(D, 40)] = 0.0  # near pairs only, as the peers' own test builds it
    graph = sparse.csr_matrix(D)
    graph.eliminate_zeros()
    ref = reference.HDBSCAN(min_cluster_size=15, metric="precomputed").fit(graph)
    got = ours.HDBSCAN(min_cluster_size=15, metric="precomputed").fit(graph)
    assert adjusted_rand_score(ref.labels_, got.labels_) >= 0.99
    sk_ref = __import__("sklearn.cluster", fromlist=["HDBSCAN"]).HDBSCAN(min_cluster_size=15, metric="precomputed",
                                                                          copy=True).fit(graph)
    sk_got = SkHDBSCAN(min_cluster_size=15, metric="precomputed", copy=True).fit(graph)
    assert adjusted_rand_score(sk_ref.labels_, sk_got.labels_) >= 0.99
    # disconnected graphs are refused, with each peer's message
    two = sparse.block_diag([graph[:250, :250], graph[250:, 250:]]).tocsr()
    two.eliminate_zeros()
    with pytest.raises(ValueError, match="multiple connected components"):
        ours.HDBSCAN(metric="precomputed").fit(two)
    with pytest.raises(ValueError, match="cannot be performed on a disconnected graph"):
        SkHDBSCAN(metric="precomputed", copy=True).fit(two)


def test_the_csr_spanning_forest_is_the_minimum_spanning_forest():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    graph = kneighbors_graph(X, 6, mode="distance").tocsr()
    a, b, w = csr_spanning_forest(graph.indptr, graph.indices, graph.data, np.zeros(300))
    sym = graph.maximum(graph.T)
    assert w.sum() == pytest.approx(minimum_spanning_tree(sym).sum(), rel=1e-12)
    # inf weights still connect (a missing distance joins last, not never)
    a, b, w = csr_spanning_forest(np.array([0, 1, 2]), np.array([1, 0]), np.array([np.inf, np.inf]), np.zeros(2))
    assert a.size == 1 and np.isinf(w[0])


def test_joins_are_exact_under_any_metric_and_alpha():
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(0, 0.3, (120, 2)), rng.normal(0, 0.3, (100, 2)) + [30, 0],
                   rng.normal(0, 0.3, (80, 2)) + [0, 20]])
    D = cdist(X, X, "cityblock")
    core = np.sort(D, axis=1)[:, 5]
    island = np.repeat([0, 1, 2], [120, 100, 80])
    for alpha in (1.0, 1.7):
        full = np.maximum(np.maximum(core[:, None], core[None, :]), D / alpha)
        np.fill_diagonal(full, 0)
        expected = minimum_spanning_tree(full).sum()
        # each island's exact spanning tree: the joins must add exactly the lightest edges between islands
        inside = minimum_spanning_tree(np.where(island[:, None] == island[None, :], full, 0)).tocoo()
        forest = (inside.row.astype(np.int64), inside.col.astype(np.int64), inside.data)
        assert forest[0].size == len(X) - 3
        # scanning whole rows (any metric), and pruning by pivot cells (metrics with the triangle inequality)
        by_rows = connect_components_by_rows(lambda ids: D[ids], core, *forest, alpha=alpha)
        report = JoinReport()
        by_cells = connect_components(None, core, *forest, block=lambda r, c: D[np.ix_(r, c)], alpha=alpha,
                                      report=report)
        assert report.exact and report.components == 3
        for a, b, w in (by_rows, by_cells):
            assert a.size == len(X) - 1 and w.sum() == pytest.approx(expected, rel=1e-12)


def test_sparse_features_cluster_like_dense_ones():
    X = _blobs(400, seed=8)
    dense = ours.HDBSCAN(min_cluster_size=12).fit(X)
    assert np.array_equal(ours.HDBSCAN(min_cluster_size=12).fit(sparse.csr_matrix(X)).labels_, dense.labels_)
    manhattan = ours.HDBSCAN(min_cluster_size=12, metric="manhattan")
    assert np.array_equal(manhattan.fit(sparse.csr_matrix(X)).labels_, clone(manhattan).fit(X).labels_)


def test_rows_with_nan_are_noise_in_every_view(fitted):
    X = _blobs(300)
    X[[0, 5]] = np.nan
    model = ours.HDBSCAN(min_cluster_size=15, prediction_data=True, gen_min_span_tree=True).fit(X)
    assert (model.labels_[[0, 5]] == -1).all()
    assert model.condensed_tree_.to_numpy()["child"].max() < 2 * len(X)
    assert model.minimum_spanning_tree_.to_numpy().shape == (len(X) - 3, 3)
    assert len(ours.approximate_predict(model, X[1:4])[0]) == 3


# -- selection options and the tree stage --------------------------------------------------------

def test_persistence_epsilon_max_alpha_and_reference_mode_match_hdbscan():
    rng = np.random.RandomState(0)
    no_structure = rng.rand(150, 2)
    for options in ({"cluster_selection_persistence": 0.5}, {"cluster_selection_persistence": 0.1},
                    {"cluster_selection_epsilon_max": 0.1}, {"alpha": 1.5},
                    {"match_reference_implementation": True}):
        ref = reference.HDBSCAN(min_cluster_size=5, algorithm="generic", **options).fit(no_structure)
        got = ours.HDBSCAN(min_cluster_size=5, **options).fit(no_structure)
        assert adjusted_rand_score(ref.labels_, got.labels_) >= 0.9, options
    blobs, _ = make_blobs(n_samples=50, centers=[(1, 0), (-1, 0), (-1, 1), (1, 1)], cluster_std=0.2, random_state=42)
    for cap, expected in ((2.0, [0, 1]), (1.0, [-1, 0, 1, 2, 3])):
        labels = ours.HDBSCAN(cluster_selection_epsilon_max=cap, allow_single_cluster=True).fit(blobs).labels_
        assert np.unique(labels).tolist() == expected


def test_simplify_hierarchy_is_hdbscans():
    from hdbscan._hdbscan_tree import simplify_hierarchy as theirs

    X = np.random.RandomState(0).rand(300, 2)
    tree = ours.HDBSCAN(min_cluster_size=5).fit(X).condensed_tree_.to_numpy()
    for threshold in (0.05, 0.5, 2.0):
        expected = theirs(tree.astype([("parent", np.intp), ("child", np.intp), ("lambda_val", float),
                                       ("child_size", np.intp)]), threshold)
        got = simplify_hierarchy(tree, threshold)
        for name in ("parent", "child", "child_size"):
            assert np.array_equal(got[name], expected[name])
        np.testing.assert_allclose(got["lambda_val"], expected["lambda_val"])


def test_dbscan_cut_and_linkage_orientation():
    from hdbscan._hdbscan_tree import labelling_at_cut as theirs

    X = _blobs(400)
    linkage = reference.HDBSCAN(algorithm="generic").fit(X).single_linkage_tree_.to_numpy()
    for cut, size in ((0.2, 2), (0.5, 5), (1.0, 20)):
        assert np.array_equal(labelling_at_cut(linkage, cut, size), theirs(linkage, cut, size))
    near, far = orient_from_first_point(4, np.array([3, 2, 1]), np.array([2, 1, 0]))  # a path 0-1-2-3
    assert near.tolist() == [2, 1, 0] and far.tolist() == [3, 2, 1]


def test_tree_objects_export_and_plot(fitted):
    X, ref, got = fitted
    tree = got.condensed_tree_
    assert list(tree.to_pandas().columns) == ["parent", "child", "lambda_val", "child_size"]
    assert tree.to_networkx().number_of_nodes() == len(np.unique(np.concatenate([tree["parent"], tree["child"]])))
    assert tree.select_clusters() == sorted(got._selected_raw)
    assert tree.select_clusters("leaf") == sorted(set(tree.select_clusters("leaf")))
    linkage = got.single_linkage_tree_
    assert linkage.to_numpy().shape == (len(X) - 1, 4)
    assert list(linkage.to_pandas().columns) == ["parent", "left_child", "right_child", "distance", "size"]
    assert adjusted_rand_score(linkage.get_clusters(0.5, 5), got.dbscan_clustering(0.5)) == 1.0
    mst = got.minimum_spanning_tree_
    assert mst.to_pandas().shape == (len(X) - 1, 3) and mst.to_networkx().number_of_edges() == len(X) - 1
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for draw in (lambda: tree.plot(select_clusters=True, label_clusters=True), lambda: tree.plot(log_size=True),
                 lambda: linkage.plot(truncate_mode="lastp", p=10), lambda: mst.plot()):
        plt.figure()
        assert draw() is not None
        plt.close("all")


def test_validity_and_relative_validity_match_hdbscan():
    X = _blobs(400)
    ref = reference.HDBSCAN(min_cluster_size=15, gen_min_span_tree=True, algorithm="generic").fit(X)
    got = ours.HDBSCAN(min_cluster_size=15, gen_min_span_tree=True).fit(X)
    assert ours.validity_index(X, ref.labels_) == pytest.approx(reference.validity_index(X, ref.labels_), rel=1e-9)
    D = squareform(pdist(X))
    assert ours.validity_index(D, ref.labels_, metric="precomputed", d=2) == pytest.approx(
        reference.validity_index(D, ref.labels_, metric="precomputed", d=2), rel=1e-9)
    if np.array_equal(ref.labels_, got.labels_):
        assert got.relative_validity_ == pytest.approx(ref.relative_validity_, rel=1e-6)
    assert -1 <= got.relative_validity_ <= 1


def test_memory_caches_the_spanning_tree(tmp_path):
    X = _blobs(300)
    first = ours.HDBSCAN(min_cluster_size=10, memory=str(tmp_path)).fit(X)
    cached = ours.HDBSCAN(min_cluster_size=20, memory=str(tmp_path)).fit(X)
    assert any(tmp_path.rglob("output.pkl"))
    assert np.array_equal(cached.labels_, ours.HDBSCAN(min_cluster_size=20).fit(X).labels_)
    assert np.array_equal(first.labels_, ours.HDBSCAN(min_cluster_size=10).fit(X).labels_)


# -- estimator conventions -------------------------------------------------------------------------

def test_estimator_conventions_and_the_hdbscan_function():
    model = ours.HDBSCAN(min_cluster_size=7, metric="seuclidean", V=np.ones(2), knn_k=20)
    params = model.get_params()
    assert params["min_cluster_size"] == 7 and params["knn_k"] == 20 and "algorithm" in params
    twin = clone(model).set_params(min_cluster_size=9)
    assert twin.min_cluster_size == 9 and model.min_cluster_size == 7
    assert ours.PHDBSCAN is ours.HDBSCAN
    X = _blobs(300)
    labels, probabilities, persistence, condensed, linkage, mst = ours.hdbscan(X, min_cluster_size=15,
                                                                               gen_min_span_tree=True)
    assert np.array_equal(labels, ours.HDBSCAN(min_cluster_size=15).fit(X).labels_)
    assert condensed.dtype.names == ("parent", "child", "lambda_val", "child_size") and mst.shape == (299, 3)
    for bad in ({"min_cluster_size": 1}, {"alpha": -1}, {"metric": "imperial"}, {"leaf_size": 0},
                {"cluster_selection_epsilon_max": -1}, {"algorithm": "prims_kdtree", "metric": "cosine"}):
        with pytest.raises(ValueError):
            ours.hdbscan(X, **bad)
    with pytest.raises(TypeError):
        ours.HDBSCAN(metric="minkowski").fit(X)  # no p, as in hdbscan


def test_a_model_under_another_metric_round_trips_through_its_files():
    X = _blobs(300)
    model = ours.HDBSCAN(min_cluster_size=15, metric="manhattan").fit(X)
    loaded = ours.HDBSCAN.from_files(model.to_files())
    assert loaded.metric == "manhattan" and np.array_equal(loaded.labels_, model.labels_)
    for a, b in zip(loaded.predict_with_scores(X[:20] + 0.01), model.predict_with_scores(X[:20] + 0.01)):
        assert np.array_equal(a, b)


# -- the scikit-learn facade ------------------------------------------------------------------------

def test_the_scikit_learn_facade_matches_scikit_learn():
    from sklearn.cluster import HDBSCAN as Theirs

    X = _blobs(500, seed=9)
    X[3] = [np.inf, 1.0]
    X[4] = [np.nan, 1.0]
    for options in ({}, {"min_samples": 3}, {"min_samples": 1}, {"metric": "manhattan"},
                    {"cluster_selection_method": "leaf"}, {"allow_single_cluster": True}):
        theirs = Theirs(min_cluster_size=15, copy=True, **options).fit(X)
        mine = SkHDBSCAN(min_cluster_size=15, copy=True, **options).fit(X)
        assert adjusted_rand_score(theirs.labels_, mine.labels_) >= 0.95, options
    assert mine.labels_[3] == -2 and mine.labels_[4] == -3
    assert mine.probabilities_[3] == 0 and np.isnan(mine.probabilities_[4])
    centred = SkHDBSCAN(min_cluster_size=15, store_centers="both", copy=True).fit(X)
    assert centred.centroids_.shape == centred.medoids_.shape == (centred.labels_.max() + 1, 2)
    assert centred.dbscan_clustering(0.5)[3] == -2
    with pytest.raises(ValueError, match="min_cluster_size"):
        SkHDBSCAN(min_cluster_size=1, copy=True).fit(X)  # scikit-learn's parameter validation


def test_the_scikit_learn_facade_passes_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(SkHDBSCAN(copy=False), on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed
