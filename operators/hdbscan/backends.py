"""kNN backends, one per kind of distance: the stage that turns input rows into a kNN graph.

- FAISS (knn.py) for euclidean, cosine and arccos: cosine and arccos search the L2-normalised rows,
  whose euclidean (chord) distance c maps monotonically to the metric: cosine = c^2 / 2,
  arccos = 2 asin(c / 2). Spanning trees and component joins run on chord distances and edge
  weights are mapped at the end, which gives the same tree (a monotone map keeps the edge order).
- scikit-learn's `NearestNeighbors` for any other metric it knows, metric parameters (`p`, `V`,
  ...) and callables, up to `EXACT_MAX_N` points (exact; kd-tree, ball tree or brute force).
- pynndescent beyond that, for the metrics it shares with scikit-learn (approximate, like the
  FAISS cells).
- a precomputed dense distance matrix: its rows.

Every backend gives the same three things: `knn(k)`, the graph of the training rows with
themselves (rows ordered by (distance, index)); `query(points, k)`, neighbours of new points
among the training rows; `rows(ids)`, exact distances from some training rows to all of them
(what component joins scan). Precomputed *sparse* matrices need no backend: they are a kNN graph
already (see model.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from lakelens.operators.hdbscan import knn as knn_mod
from lakelens.operators.hdbscan.knn import KnnGraph

# exact scikit-learn neighbours up to this many points; pynndescent beyond (measured in docs/phdbscan.md)
EXACT_MAX_N = 20_000
# sparse feature matrices with euclidean/cosine are densified for FAISS up to this many cells
DENSIFY_MAX_CELLS = 50_000_000

FAISS_METRICS = {"euclidean", "l2", "cosine", "arccos"}
# metrics with the triangle inequality: component joins may bound distances through pivot cells
TRIANGLE_METRICS = {"euclidean", "manhattan", "chebyshev", "minkowski", "seuclidean", "mahalanobis", "canberra",
                    "haversine", "hamming", "jaccard", "arccos"}
ALIASES = {"l2": "euclidean", "l1": "manhattan", "cityblock": "manhattan", "infinity": "chebyshev", "p": "minkowski"}
# scikit-learn metric name -> pynndescent's, for the metrics whose parameters mean the same in both
NNDESCENT_METRICS = {
    "euclidean": "euclidean", "manhattan": "manhattan", "chebyshev": "chebyshev", "minkowski": "minkowski",
    "canberra": "canberra", "braycurtis": "braycurtis", "correlation": "correlation", "hamming": "hamming",
    "jaccard": "jaccard", "dice": "dice", "haversine": "haversine", "seuclidean": "seuclidean",
    "sqeuclidean": "sqeuclidean", "russellrao": "russellrao", "rogerstanimoto": "rogerstanimoto",
    "sokalsneath": "sokalsneath", "sokalmichener": "sokalmichener", "yule": "yule", "matching": "matching",
}


def valid_metric_names() -> set[str]:
    """Every metric name the peers accept for feature data (plus 'precomputed')."""
    from sklearn.metrics.pairwise import _VALID_METRICS
    from sklearn.neighbors import BallTree, KDTree

    return set(_VALID_METRICS) | set(KDTree.valid_metrics) | set(BallTree.valid_metrics) | \
        {"precomputed", "arccos", "cosine", "sokalmichener"} - {"pyfunc"}


def canonical_metric(metric: Any, kwargs: dict[str, Any]) -> Any:
    """The metric's canonical name (aliases resolved; minkowski with p=2 is euclidean); callables as they are."""
    if callable(metric):
        return metric
    name = ALIASES.get(metric, metric)
    if name == "minkowski" and float(kwargs.get("p", 2)) == 2.0:
        return "euclidean"
    return name


@dataclass
class FaissBackend:
    """Euclidean kNN with FAISS over float32 rows (normalised for cosine/arccos)."""

    data: np.ndarray  # prepared float32 rows
    metric: str = "euclidean"
    method: str = "auto"
    device: str = "auto"
    nprobe: int | None = None
    seed: int = 0
    recall_target: float | None = 0.95  # see knn.knn_graph
    _index: Any = field(default=None, repr=False)

    kind = "faiss"

    @property
    def n(self) -> int:
        return self.data.shape[0]

    def to_metric(self, chord: np.ndarray) -> np.ndarray:
        """Chord (FAISS) distances to the metric's distances."""
        if self.metric == "cosine":
            return chord * chord / 2.0
        if self.metric == "arccos":
            return 2.0 * np.arcsin(np.minimum(chord / 2.0, 1.0))
        return chord

    def from_metric(self, dist: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            return np.sqrt(np.maximum(2.0 * dist, 0.0))
        if self.metric == "arccos":
            return 2.0 * np.sin(np.minimum(dist, np.pi) / 2.0)
        return dist

    def knn(self, k: int, recall_k: int | None = None) -> KnnGraph:
        """Chord distances: spanning trees are built on them and mapped with `to_metric` at the end."""
        return knn_mod.knn_graph(self.data, k, method=self.method, device=self.device, nprobe=self.nprobe,
                                 seed=self.seed, recall_k=recall_k, recall_target=self.recall_target)

    @property
    def exact_queries(self) -> bool:
        """Whether `query` finds new points' true nearest rows (a flat index), not an approximation."""
        return knn_mod.graph_method(self.n, self.data.shape[1], self.method, self.device) == "exact"

    def query(self, points: np.ndarray, k: int) -> KnnGraph:
        """New points' k nearest rows, by the method the graph used: cells search as the fit's graph did."""
        cells = knn_mod.graph_method(self.n, self.data.shape[1], self.method, self.device) == "cells"
        if self._index is None:
            self._index = (knn_mod.CellIndex.build(self.data, seed=self.seed) if cells else
                           knn_mod.build_index(self.data, method=self.method, device=self.device, nprobe=self.nprobe,
                                               seed=self.seed))
        if cells:
            return knn_mod.cell_query(self._index, points, min(k, self.n), self.recall_target, self.nprobe,
                                      seed=self.seed)
        return knn_mod.search(self._index, self.data, points, min(k, self.n))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.to_metric(_euclidean(self.data[ids], self.data))

    def block(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        return self.to_metric(_euclidean(self.data[rows_a], self.data[rows_b]))

    @property
    def triangle(self) -> bool:
        return self.metric in ("euclidean", "arccos")

    def pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.to_metric(_euclidean(a, b))


def _euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    sq = (a64 ** 2).sum(1)[:, None] + (b64 ** 2).sum(1)[None, :] - 2.0 * a64 @ b64.T
    return np.sqrt(np.maximum(sq, 0.0))


@dataclass
class MetricBackend:
    """Any metric scikit-learn knows (names with their parameters, callables), exact with
    `NearestNeighbors` or approximate with pynndescent; rows may be dense or sparse."""

    data: Any  # float64 rows, dense or CSR
    metric: Any
    metric_kwargs: dict[str, Any] = field(default_factory=dict)
    algorithm: str = "auto"  # NearestNeighbors' algorithm, or "nndescent"
    leaf_size: int = 40
    n_jobs: int | None = None
    seed: int = 0
    _nn: Any = field(default=None, repr=False)

    kind = "metric"

    @property
    def n(self) -> int:
        return self.data.shape[0]

    def to_metric(self, dist: np.ndarray) -> np.ndarray:
        return dist

    from_metric = to_metric

    def _neighbours(self, k: int):
        if self.algorithm == "nndescent":
            from pynndescent import NNDescent

            name = NNDESCENT_METRICS.get(self.metric, self.metric)
            index = NNDescent(self.data, metric=name, metric_kwds=self.metric_kwargs or None,
                              n_neighbors=max(k, 2), random_state=self.seed, n_jobs=None,
                              low_memory=True, compressed=False)
            return index
        from sklearn.neighbors import NearestNeighbors

        params = dict(self.metric_kwargs)
        p = params.pop("p", None) if self.metric in ("minkowski",) else None
        return NearestNeighbors(n_neighbors=k, metric=self.metric, p=p if p is not None else 2,
                                metric_params=params or None, algorithm=self.algorithm, leaf_size=self.leaf_size,
                                n_jobs=self.n_jobs).fit(self.data)

    def knn(self, k: int, recall_k: int | None = None) -> KnnGraph:
        k = min(k, self.n)
        recall_k = min(recall_k or k, k)
        if self.algorithm == "nndescent":
            try:
                index = self._neighbours(k)
            except Exception as exc:  # noqa: BLE001 - numba cannot compile pynndescent in this process
                if type(exc).__module__.split(".")[0] != "numba":
                    raise
                # e.g. after Ray Data or Ray Train patched builtins.print in this process (numba types print)
                warnings.warn(f"pynndescent failed to compile in this process ({type(exc).__name__}); "
                              "using scikit-learn's exact NearestNeighbors instead", RuntimeWarning)
                self.algorithm = "auto"
                return self.knn(k, recall_k)
            self._nn = index
            idx, dist = index.neighbor_graph
            graph = _ordered_with_self(np.asarray(dist[:, :k], dtype=np.float64), np.asarray(idx[:, :k], np.int64), k)
            return KnnGraph(graph.distances, graph.indices, self._measure(graph, k, recall_k))
        self._nn = self._neighbours(k)
        dist, idx = self._nn.kneighbors(self.data, k)
        graph = _ordered_with_self(dist.astype(np.float64), idx.astype(np.int64), k)
        return KnnGraph(graph.distances, graph.indices, knn_mod.KnnReport("exact", k, recall_k))

    def _measure(self, graph: KnnGraph, k: int, recall_k: int, size: int = knn_mod.RECALL_SAMPLE) -> knn_mod.KnnReport:
        """pynndescent's graph is approximate: its recall against exact distance rows of a sample."""
        rows = np.sort(np.random.default_rng(self.seed + 7919).choice(self.n, min(size, self.n), replace=False))
        truth = np.empty((rows.size, recall_k))
        step = max(1, (1 << 22) // self.n)
        for lo in range(0, rows.size, step):
            d = self.rows(rows[lo:lo + step])
            truth[lo:lo + step] = np.sort(np.partition(d, recall_k - 1, axis=1)[:, :recall_k], axis=1)
        sample = knn_mod.SampleTruth(rows, truth, np.zeros(truth.shape, dtype=np.int64))
        recall, _ = knn_mod.sample_recall(graph.distances[rows], sample)
        err = knn_mod.core_error(graph.distances[rows], sample)
        return knn_mod.KnnReport("nndescent", k, recall_k, recall, None, None, None, int(rows.size),
                                 float(err.mean()), float(err.max()))

    @property
    def exact_queries(self) -> bool:
        return self.algorithm != "nndescent"

    def query(self, points, k: int) -> KnnGraph:
        k = min(k, self.n)
        if self._nn is None:
            self._nn = self._neighbours(k)
        if self.algorithm == "nndescent":
            self._nn.prepare()
            idx, dist = self._nn.query(points, k=k)
        else:
            dist, idx = self._nn.kneighbors(points, k)
        return knn_mod.ordered_rows(np.asarray(dist, np.float64), np.asarray(idx, np.int64), k)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.pairwise(self.data[ids], self.data)

    def block(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        return self.pairwise(self.data[rows_a], self.data[rows_b])

    @property
    def triangle(self) -> bool:
        """Whether the metric obeys the triangle inequality (then joins can prune by pivot cells)."""
        if callable(self.metric) or self.metric not in TRIANGLE_METRICS:
            return False
        return self.metric != "minkowski" or float(self.metric_kwargs.get("p", 2)) >= 1

    def pairwise(self, a, b) -> np.ndarray:
        from sklearn.metrics import pairwise_distances

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # boolean metrics on float data: scikit-learn's conversion warning
            return pairwise_distances(a, b, metric=self.metric, **pairwise_kwargs(self.metric, self.metric_kwargs))


def pairwise_kwargs(metric, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Metric parameters as pairwise_distances wants them between two sets (mahalanobis takes VI, not V)."""
    if metric == "mahalanobis" and "V" in kwargs and "VI" not in kwargs:
        kwargs = {k: v for k, v in kwargs.items() if k != "V"} | {"VI": np.linalg.inv(np.asarray(kwargs["V"]))}
    return dict(kwargs)


def _ordered_with_self(dist: np.ndarray, idx: np.ndarray, k: int) -> KnnGraph:
    """Rows by (distance, index), each row's own point first (it may tie with duplicates)."""
    graph = knn_mod.ordered_rows(dist, idx, k)
    own = np.arange(idx.shape[0])
    first = graph.indices[:, 0] != own
    if first.any():  # a duplicate came first: swap the point itself to the front at distance 0
        for i in np.flatnonzero(first):
            row = graph.indices[i]
            where = np.flatnonzero(row == i)
            if where.size and graph.distances[i, where[0]] == graph.distances[i, 0]:
                row[[0, where[0]]] = row[[where[0], 0]]
    return graph


@dataclass
class PrecomputedBackend:
    """A dense precomputed distance matrix (inf marks a missing distance). The diagonal counts as
    given, as the peers count it."""

    matrix: np.ndarray

    kind = "precomputed"

    @property
    def n(self) -> int:
        return self.matrix.shape[0]

    def to_metric(self, dist: np.ndarray) -> np.ndarray:
        return dist

    from_metric = to_metric

    def knn(self, k: int, recall_k: int | None = None) -> KnnGraph:
        k = min(k, self.n)
        d = self.matrix
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < self.n else np.tile(np.arange(self.n), (self.n, 1))
        # ties at the k-th distance: argpartition may pick any of them; take whole rows for small n
        if k < self.n and self.n <= 4096:
            part = np.tile(np.arange(self.n), (self.n, 1))
        dist = np.take_along_axis(d, part, axis=1).astype(np.float64)
        graph = knn_mod.ordered_rows(dist, part.astype(np.int64), k)
        return KnnGraph(graph.distances, graph.indices, knn_mod.KnnReport("exact", k, min(recall_k or k, k)))

    exact_queries = True  # nothing to approximate; `query` refuses new points

    def query(self, points, k: int) -> KnnGraph:
        raise ValueError("a model fitted on precomputed distances cannot place new points: it has no vectors")

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix[ids], dtype=np.float64)

    def block(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix[np.ix_(rows_a, rows_b)], dtype=np.float64)

    triangle = False  # nothing is known about a matrix's distances

    def pairwise(self, a, b) -> np.ndarray:
        raise ValueError("no vectors: the model was fitted on precomputed distances")


def choose_algorithm(metric: Any, n: int, hint: str, knn_method: str, sparse: bool) -> str:
    """NearestNeighbors' algorithm (kd_tree, ball_tree, brute, auto) or 'nndescent' for one fit."""
    if knn_method == "nndescent":
        return "nndescent"
    if knn_method in ("auto",) and n > EXACT_MAX_N and hint in ("auto",) and \
            ((not callable(metric) and metric in NNDESCENT_METRICS) or hasattr(metric, "py_func")):
        try:
            import pynndescent  # noqa: F401

            return "nndescent"
        except ImportError:  # pragma: no cover - a runtime dependency
            pass
    if sparse:
        return "brute"
    return hint if hint in ("kd_tree", "ball_tree", "brute") else "auto"


def make_backend(X, metric: Any, metric_kwargs: dict[str, Any], *, algorithm: str = "auto", knn_method: str = "auto",
                 device: str = "auto", nprobe: int | None = None, seed: int = 0, leaf_size: int = 40,
                 n_jobs: int | None = None, prepare: Callable[[np.ndarray, str], np.ndarray] | None = None,
                 recall_target: float | None = 0.95):
    """The backend for feature rows `X` (dense array or CSR) under `metric` (canonical, see canonical_metric)."""
    from scipy import sparse as sp

    is_sparse = sp.issparse(X)
    n = X.shape[0]
    if not callable(metric) and metric in FAISS_METRICS and knn_method != "nndescent":
        if not is_sparse or n * X.shape[1] <= DENSIFY_MAX_CELLS:
            dense = X.toarray() if is_sparse else X
            data = prepare(dense, "cosine" if metric in ("cosine", "arccos") else "euclidean")
            method = knn_method if knn_method in ("auto", "exact", "ivf", "hnsw", "cells", "kdtree") else "auto"
            return FaissBackend(data, metric, method, device, nprobe, seed, recall_target)
    chosen = choose_algorithm(metric, n, algorithm, knn_method, is_sparse)
    data = X.tocsr().astype(np.float64) if is_sparse else np.ascontiguousarray(X, dtype=np.float64)
    return MetricBackend(data, metric, dict(metric_kwargs), chosen, leaf_size, n_jobs, seed)
