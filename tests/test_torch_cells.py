"""The GPU's kNN graph (torch_cells.TorchCells), run here on torch's CPU device: the same cells, the
same recall-driven probe and the same row order as the CPU graph, and exact when every cell is probed."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from lakelens.operators.hdbscan.knn import CellIndex, cell_knn, exact_sample, knn_graph
from lakelens.operators.hdbscan.torch_cells import TorchCells, kmeans, nearest_centroid

torch = pytest.importorskip("torch")


def _blobs(n: int = 30_000, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-6, 6, (12, dim))
    return (centres[rng.integers(0, 12, n)] + rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    return _blobs()


@pytest.fixture(scope="module")
def cells(data):
    return TorchCells.build(data, cell_size=1000, seed=0, device="cpu")


def test_each_row_goes_to_its_nearest_centroid(data):
    rows = torch.from_numpy(data[:3000])
    centroids = torch.from_numpy(data[3000:3100])
    brute = ((data[:3000, None, :] - data[None, 3000:3100, :]) ** 2).sum(-1).argmin(1)
    assert (nearest_centroid(rows, centroids).numpy() == brute).mean() > 0.999  # float32 near-ties aside


def test_kmeans_centroids_are_the_means_of_their_cells(data):
    rows = torch.from_numpy(data[:5000])
    centroids = kmeans(rows, 20, 15, seed=0)
    assigned = nearest_centroid(rows, centroids).numpy()
    moved = [np.abs(data[:5000][assigned == c].mean(0) - centroids[c].numpy()).max()
             for c in range(20) if (assigned == c).any()]
    assert max(moved) < 0.05  # one more Lloyd step barely moves them


def test_cells_are_contiguous_ranges_of_the_stored_rows_in_cell_order(data, cells):
    np.testing.assert_array_equal(np.sort(cells.order.numpy()), np.arange(data.shape[0]))
    np.testing.assert_array_equal(cells.rows.numpy(), data[cells.order.numpy()])
    by_position = cells.cell[cells.order.numpy()]
    assert (np.diff(by_position) >= 0).all()
    np.testing.assert_array_equal(np.searchsorted(by_position, np.arange(cells.n_cells + 1)), cells.starts)


def test_each_cells_nearest_cell_is_itself(cells):
    near = cells.cells_by_distance(np.arange(cells.n_cells), 4)
    np.testing.assert_array_equal(near[:, 0], np.arange(cells.n_cells))


def test_the_exact_sample_is_the_cpu_exact_sample(data, cells):
    mine, theirs = cells.exact_sample(data, 11, 300, seed=0), exact_sample(data, 11, 300, seed=0)
    np.testing.assert_array_equal(mine.rows, theirs.rows)
    np.testing.assert_allclose(mine.distances, theirs.distances, rtol=1e-6)
    assert (mine.indices == theirs.indices).mean() > 0.99


def test_probing_every_cell_gives_the_exact_graph_in_the_cpu_order(data, cells):
    found = cells.search_all(11, cells.n_cells)
    exact = knn_graph(data, 11, method="exact", device="cpu")
    # both rank by float32 GEMM distances, so a near-tie at the k-th place may resolve either way
    np.testing.assert_allclose(found.distances, exact.distances, rtol=1e-5)
    assert (found.indices == exact.indices).mean() > 0.999
    assert (found.indices[:, 0] == np.arange(data.shape[0])).all()  # each row its own nearest


def test_a_torch_cell_graph_meets_its_recall_target_on_rows_it_did_not_measure(data):
    graph = cell_knn(data, 16, cell_size=1000, recall_k=11, recall_target=0.9, torch_device="cpu")
    assert graph.report.method == "cells" and graph.report.recall >= 0.9
    rows = np.random.default_rng(12345).choice(data.shape[0], 500, replace=False)
    index = faiss.IndexFlatL2(data.shape[1])
    index.add(data)
    squared, _ = index.search(data[rows], 11)
    radius = np.sqrt(np.maximum(squared[:, -1:], 0)) * (1 + 1e-4) + 1e-6
    assert float((graph.distances[rows, :11] <= radius).mean()) >= 0.88  # target minus sampling noise


def test_the_torch_and_cpu_cells_choose_probes_from_the_same_rule(data, cells):
    truth = exact_sample(data, 11, 500, seed=0)
    cpu = CellIndex.build(data, cell_size=1000, seed=0)
    torch_probe = cells.least_probe(truth, cells.cell[truth.rows], 0.9, 1)
    cpu_probe = cpu.least_probe(truth, cpu.cell[truth.rows], 0.9, 1)
    assert abs(torch_probe - cpu_probe) <= 2  # different k-means runs, the same rule
