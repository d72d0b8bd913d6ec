"""The kNN graph is as accurate as asked: an approximate graph raises its probe until its recall,
checked here against exact FAISS on rows it did not measure itself, reaches `knn_recall_target`,
and every fit says what recall it got."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from lakelens.operators.hdbscan import PHDBSCAN
from lakelens.operators.hdbscan.knn import KnnGraph, SampleTruth, choose_probe, knn_graph, needed_probe


def _hard_blobs(n: int = 40_000, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Two overlapping isotropic Gaussians in 16 dimensions: true neighbours spread over many k-means cells."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((2, dim))
    centres[1, 0] = 3.0
    return (centres[rng.integers(0, 2, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def _exact_recall(data: np.ndarray, graph: KnnGraph, k: int, size: int = 500, seed: int = 12345) -> float:
    """recall@k of `graph` on rows drawn independently of the graph's own sample, against IndexFlatL2."""
    rows = np.random.default_rng(seed).choice(data.shape[0], size, replace=False)
    index = faiss.IndexFlatL2(data.shape[1])
    index.add(data)
    squared, _ = index.search(data[rows], k)
    radius = np.sqrt(np.maximum(squared[:, -1:], 0)) * (1 + 1e-4) + 1e-6  # float32 search, float64 graph
    return float((graph.distances[rows, :k] <= radius).mean())


@pytest.fixture(scope="module")
def hard():
    return _hard_blobs()


@pytest.fixture(scope="module")
def cell_graphs(hard):
    return {target: knn_graph(hard, 16, method="cells", recall_k=11, recall_target=target) for target in (0.8, 0.9)}


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_a_cell_graph_reaches_its_recall_target_on_rows_it_did_not_measure(hard, cell_graphs, target):
    graph = cell_graphs[target]
    measured = _exact_recall(hard, graph, 11)
    assert measured >= target
    assert graph.report.recall >= target and graph.report.recall_target == target
    assert abs(graph.report.recall - measured) < 0.02  # the estimate is a fair one


def test_a_higher_target_probes_more_cells_up_to_an_exact_search(cell_graphs):
    low, high = cell_graphs[0.8].report, cell_graphs[0.9].report
    assert low.method == "cells" and low.probe >= 6  # the least probe: the target only raises it
    # past half the cells in every pool (0.99 on these overlapping Gaussians) one flat search is cheaper
    assert (high.method == "exact" or high.probe > low.probe) and high.recall > low.recall


def test_a_fixed_probe_is_measured_not_adapted(hard):
    graph = knn_graph(hard, 16, method="cells", nprobe=1, recall_k=11, recall_target=0.99)
    assert graph.report.probe == 1
    assert graph.report.recall < 0.99  # one cell misses neighbours on this data, and the report says so
    assert abs(graph.report.recall - _exact_recall(hard, graph, 11)) < 0.03
    assert graph.report.core_error_mean > 0 and graph.report.core_error_max >= graph.report.core_error_mean


def test_an_ivf_index_raises_nprobe_until_the_target_holds(hard):
    graph = knn_graph(hard, 16, method="ivf", device="cpu", recall_k=11, recall_target=0.97)
    assert _exact_recall(hard, graph, 11) >= 0.97
    assert graph.report.method == "ivf" and graph.report.probe >= 1


def test_the_probe_needed_for_each_neighbour_is_its_cell_rank_from_the_home_cell():
    # two sampled rows, 4 cells; near[i] lists cells by distance from row i's home centroid
    near = np.array([[0, 1, 2, 3], [2, 3, 1, 0]])
    cell = np.array([0, 1, 2, 3, 3])  # point -> cell
    truth = SampleTruth(np.array([0, 2]), np.zeros((2, 3)), np.array([[0, 1, 4], [2, 3, 0]]))
    needed = needed_probe(near, cell, truth)
    assert needed.tolist() == [[1, 2, 4], [1, 2, 4]]
    assert choose_probe(needed, 0.6) == 2  # probe 2 finds 2 of 3 for both rows
    assert choose_probe(needed, 1.0) == 4
    assert choose_probe(needed, 0.5, least=3) == 3
    assert choose_probe(needed, 0.5, least=6) == 6  # the least probe holds even past the last rank needed


def test_a_fit_reports_its_graph_recall_exact_below_the_cell_threshold():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 8))
    model = PHDBSCAN(min_cluster_size=20, min_samples=5).fit(X)
    assert model.knn_recall_ == 1.0 and model.knn_report_.exact and model.knn_report_.recall_k == 6


def test_an_approximate_fit_reports_the_recall_it_measured(hard):
    model = PHDBSCAN(min_cluster_size=500, min_samples=10, knn_recall_target=0.75).fit(hard)
    report = model.knn_report_
    assert report.method == "cells" and report.recall_k == 11 and report.sample == 1000
    assert model.knn_recall_ == report.recall >= 0.75
    assert model.get_params()["knn_recall_target"] == 0.75


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "high", True])
def test_knn_recall_target_must_be_a_share_in_0_1(bad):
    with pytest.raises(ValueError, match="knn_recall_target"):
        PHDBSCAN(min_cluster_size=5, knn_recall_target=bad).fit(np.random.default_rng(0).standard_normal((50, 2)))


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_new_points_searched_through_the_cells_reach_the_recall_target_against_exact_faiss(hard, target):
    from lakelens.operators.hdbscan.knn import CellIndex, cell_query

    queries = _hard_blobs(4_000, seed=1)
    index = CellIndex.build(hard, seed=0)
    found = cell_query(index, queries, 11, recall_target=target, seed=3)
    exact = faiss.IndexFlatL2(hard.shape[1])
    exact.add(hard)
    squared, _ = exact.search(queries, 11)
    radius = np.sqrt(np.maximum(squared[:, -1:], 0)) * (1 + 1e-4) + 1e-6
    assert (found.distances <= radius).mean() >= target
    assert (np.diff(found.distances, axis=1) >= 0).all() and (found.indices < hard.shape[0]).all()


def test_a_fitted_models_predict_searches_the_cells_its_graph_was_built_from(hard):
    from lakelens.operators.hdbscan.knn import CellIndex

    model = PHDBSCAN(min_cluster_size=50, min_samples=10, knn_method="cells").fit(hard[:30_000])
    labels, _, _ = model.predict_with_scores(hard[30_000:31_000])
    assert isinstance(model._backend._index, CellIndex) and labels.shape == (1000,)


def test_rows_are_ordered_by_distance_then_index_as_a_lexsort_orders_them():
    from lakelens.operators.hdbscan.knn import ordered_rows

    rng = np.random.default_rng(3)
    distances = rng.integers(0, 4, (500, 12)).astype(np.float64)  # many ties
    distances[rng.random(distances.shape) < 0.05] = np.inf
    indices = rng.integers(-1, 50, (500, 12))
    order = np.lexsort((indices, distances), axis=-1)[:, :7]
    graph = ordered_rows(distances, indices, 7)
    np.testing.assert_array_equal(graph.distances, np.take_along_axis(distances, order, axis=1))
    np.testing.assert_array_equal(graph.indices, np.take_along_axis(indices, order, axis=1))


def test_a_search_that_overlaps_its_batches_returns_what_a_serial_search_returns(hard):
    from lakelens.operators.hdbscan.knn import build_index, search

    index = build_index(hard, method="ivf", device="cpu", nprobe=4)
    serial = search(index, hard, hard[:5000], 11, batch=1000)
    ahead = search(index, hard, hard[:5000], 11, batch=1000, overlap=True)
    np.testing.assert_array_equal(serial.indices, ahead.indices)
    np.testing.assert_array_equal(serial.distances, ahead.distances)


def test_ivf_lists_stay_small_on_a_gpu_and_never_under_faiss_training_minimum():
    from lakelens.operators.hdbscan.knn import GPU_MAX_LISTS, ivf_lists

    assert ivf_lists(1_000_000, gpu=False) == 800
    assert ivf_lists(100_000_000, gpu=False) == 4096
    assert ivf_lists(10_000_000, gpu=True) == 12_649  # ~790 rows a list
    assert 100_000_000 / ivf_lists(100_000_000, gpu=True) == 2500
    assert ivf_lists(10**10, gpu=True) == GPU_MAX_LISTS
    assert ivf_lists(2_000, gpu=True) == 2_000 // 39


@pytest.mark.parametrize("device", ["gpu", "CUDA", ""])
def test_an_unknown_device_is_an_error_naming_the_key(device):
    with pytest.raises(ValueError, match="device"):
        PHDBSCAN(min_cluster_size=5, device=device).fit(np.random.default_rng(0).random((50, 2)))


@pytest.mark.skipif(__import__("lakelens.operators.hdbscan.torch_cells", fromlist=["x"]).cuda_available(),
                    reason="a GPU is here")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error_not_a_silent_cpu_fit():
    with pytest.raises(RuntimeError, match="device='cuda'"):
        PHDBSCAN(min_cluster_size=5, device="cuda").fit(np.random.default_rng(0).random((50, 2)))
