"""The engine: HDBSCAN over a kNN graph, and `HDBSCAN`, the estimator with the `hdbscan` library's
parameters, attributes and semantics (`PHDBSCAN` is the same class).

    rows -> kNN graph (backends.py: FAISS, scikit-learn, pynndescent, a precomputed matrix)
         -> core distances -> spanning forest (+ exact component joins)         (mst.py)
         -> single linkage -> condensed tree -> EOM/leaf selection
         -> labels, probabilities, GLOSH, persistence                          (tree.py)

A precomputed sparse distance matrix is a kNN graph already: its rows feed the spanning forest as
they are. Rows with NaN or inf are left out and come back as noise, as in the peers.
"""

from __future__ import annotations

import io
import json
import logging
import math
import numbers
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np
from numba import njit
from sklearn.base import BaseEstimator, ClusterMixin

from lakelens.operators.hdbscan import knn as knn_mod
from lakelens.operators.hdbscan.backends import (
    FaissBackend,
    MetricBackend,
    PrecomputedBackend,
    canonical_metric,
    make_backend,
    pairwise_kwargs,
    valid_metric_names,
)
from lakelens.operators.hdbscan.mst import (
    JoinReport,
    connect_components,
    connect_components_by_rows,
    core_distances,
    csr_spanning_forest,
    knn_spanning_forest,
)
from lakelens.operators.hdbscan.tree import (
    CONDENSED_DTYPE,
    ClusterTree,
    cluster_persistence,
    condense_tree,
    glosh_scores,
    label_points,
    labelling_at_cut,
    membership_probabilities,
    remap_condensed_tree,
    remap_single_linkage,
    select_clusters,
    simplify_hierarchy,
    single_linkage,
)

log = logging.getLogger(__name__)

MODEL_FILE, ARRAYS_FILE = "model.json", "arrays.npz"
_ARRAY_NAMES = ("data", "labels", "probabilities", "outlier_scores", "condensed_tree", "single_linkage",
                "core_distances", "cluster_persistence", "selected_clusters")


def log_step(logger: logging.Logger, step: str, started: float, **sizes: int) -> float:
    """One INFO line for a finished fit stage, with elapsed_s and sizes as structured fields; returns seconds."""
    elapsed = time.perf_counter() - started
    if logger.isEnabledFor(logging.INFO):
        sizes = {k: int(v) for k, v in sizes.items()}
        logger.info("%s: %.2f s, %s", step, elapsed, " ".join(f"{k}={v}" for k, v in sizes.items()),
                    extra={"step": step, "elapsed_s": round(elapsed, 3), "sizes": sizes})
    return elapsed


def join_forest(data: np.ndarray, core: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray,
                params: HDBSCANParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, JoinReport]:
    """Join a spanning forest's components into one tree (a no-op when it already spans every point)."""
    joins = JoinReport()
    if a.size < data.shape[0] - 1:
        started = time.perf_counter()
        a, b, w = connect_components(data, core, a, b, w, seed=params.seed, pair_budget=params.join_pair_budget,
                                     report=joins)
        log_step(log, "component joins", started, components=joins.components, rounds=joins.rounds,
                 certified=joins.certified, budgeted=joins.budgeted)
    return a, b, w, joins


@dataclass
class HDBSCANParams:
    min_cluster_size: int = 5
    min_samples: int | None = None  # defaults to min_cluster_size, as in hdbscan
    cluster_selection_method: str = "eom"
    cluster_selection_epsilon: float = 0.0
    allow_single_cluster: bool = False
    metric: str = "euclidean"  # the backend's canonical metric name (see backends.py)
    knn_k: int | None = None  # neighbours in the graph, self included; default max(min_samples + 1, 16)
    knn_method: str = "auto"  # exact, kdtree, ivf, hnsw, cells, nndescent or auto
    device: str = "auto"  # cpu, cuda or auto
    nprobe: int | None = None  # a fixed probe; None adapts it to knn_recall_target
    # an approximate graph probes until recall@(min_samples + 1), measured on a sample, reaches this
    knn_recall_target: float | None = 0.95
    seed: int = 0
    # distance evaluations allowed per component join before it stops certifying exactness
    join_pair_budget: float = 5e7
    max_cluster_size: int = 0  # EOM never selects a larger cluster (0: no limit), as in hdbscan
    alpha: float = 1.0  # robust single linkage: mutual reachability max(core_a, core_b, d / alpha)
    cluster_selection_persistence: float = 0.0  # clusters less persistent than this merge away
    cluster_selection_epsilon_max: float = math.inf  # EOM never selects a cluster born above this distance
    match_reference_implementation: bool = False  # the Java reference's min_samples, size and labelling

    @property
    def samples(self) -> int:
        """Neighbours (other than the point) behind a core distance."""
        base = self.min_cluster_size if self.min_samples is None else self.min_samples
        return max(base - 1, 1) if self.match_reference_implementation else base

    @property
    def cluster_size(self) -> int:
        return self.min_cluster_size + 1 if self.match_reference_implementation else self.min_cluster_size

    def check(self) -> None:
        if self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {self.min_cluster_size}")
        if self.min_samples is not None and self.min_samples < 0:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")
        if self.cluster_selection_epsilon < 0:
            raise ValueError("cluster_selection_epsilon must be >= 0")
        if self.cluster_selection_persistence < 0:
            raise ValueError("cluster_selection_persistence must be >= 0")
        if self.cluster_selection_epsilon_max < self.cluster_selection_epsilon:
            raise ValueError("cluster_selection_epsilon_max must be >= cluster_selection_epsilon")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        target = self.knn_recall_target
        if target is not None and (isinstance(target, bool) or not isinstance(target, numbers.Real)
                                   or not 0 < target <= 1):
            raise ValueError(f"knn_recall_target must be a number in (0, 1] or None, got {target!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if self.cluster_selection_method not in ("eom", "leaf"):
            raise ValueError(f"cluster_selection_method must be 'eom' or 'leaf', got {self.cluster_selection_method!r}")


@dataclass
class HDBSCANResult:
    labels: np.ndarray
    probabilities: np.ndarray
    outlier_scores: np.ndarray
    condensed_tree: np.ndarray
    single_linkage: np.ndarray
    selected_clusters: list[int]
    cluster_persistence: np.ndarray
    core_distances: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    joins: JoinReport = field(default_factory=JoinReport)  # how kNN-graph components were joined
    spanning_tree: np.ndarray | None = None  # (n - 1, 3) rows (a, b, weight), when asked for
    knn: knn_mod.KnnReport | None = None  # the graph's measured recall (None: a graph the caller gave)
    knn_graph: knn_mod.KnnGraph | None = None  # the graph itself, when the fit was asked to keep it


def prepare_data(X, metric: str = "euclidean", check_finite: bool = True) -> np.ndarray:
    """float32 C-contiguous rows; a clear error for NaN/inf rows; cosine becomes euclidean on the sphere."""
    data = np.asarray(X)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-d array of shape (n_samples, n_features), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"expected numeric data, got dtype {data.dtype}")
    bad = ~np.isfinite(data).all(axis=1) if check_finite else np.zeros(0, dtype=bool)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{rows.size} rows contain NaN or inf (first at row {rows[0]}); drop or impute them")
    data = np.ascontiguousarray(data, dtype=np.float32)
    if metric in ("cosine", "arccos"):
        norms = np.linalg.norm(data, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"{int((norms == 0).sum())} rows are all zero; cosine distance is undefined for them")
        data = np.ascontiguousarray(data / norms, dtype=np.float32)
    return data


def hdbscan_from_mst(n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray, core: np.ndarray,
                     params: HDBSCANParams) -> HDBSCANResult:
    """Everything after the spanning tree; pure and shared by single-node and sharded fits."""
    started = time.perf_counter()
    linkage = single_linkage(n, a, b, w)
    log_step(log, "single linkage", started, merges=linkage.shape[0])
    started = time.perf_counter()
    tree = condense_tree(linkage, params.cluster_size)
    if params.cluster_selection_persistence > 0 and tree.size:
        tree = simplify_hierarchy(tree, params.cluster_selection_persistence)
    ct = ClusterTree.from_condensed(tree)  # derived once, read by every step below
    log_step(log, "condensed tree", started, rows=tree.size, clusters=ct.parent_of.size)
    started = time.perf_counter()
    selected = select_clusters(tree, params.cluster_selection_method, params.allow_single_cluster,
                               params.cluster_selection_epsilon, ct=ct, max_cluster_size=params.max_cluster_size,
                               cluster_selection_epsilon_max=params.cluster_selection_epsilon_max)
    labels = label_points(tree, selected, n, params.allow_single_cluster, params.cluster_selection_epsilon, ct=ct,
                          match_reference_implementation=params.match_reference_implementation)
    result = HDBSCANResult(
        labels=labels,
        probabilities=membership_probabilities(tree, selected, labels, ct=ct),
        outlier_scores=glosh_scores(tree, n, ct=ct),
        condensed_tree=tree,
        single_linkage=linkage,
        selected_clusters=selected,
        cluster_persistence=cluster_persistence(tree, selected, ct=ct),
        core_distances=core,
    )
    log_step(log, "selection", started, selected=len(selected), noise=int((labels < 0).sum()))
    return result


@dataclass
class SpanningTree:
    """The spanning-tree stage's output: core distances and n - 1 mutual-reachability edges, in the metric."""

    core: np.ndarray
    a: np.ndarray
    b: np.ndarray
    w: np.ndarray
    joins: JoinReport = field(default_factory=JoinReport)
    timings: dict[str, float] = field(default_factory=dict)
    knn: knn_mod.KnnReport | None = None
    graph: knn_mod.KnnGraph | None = None  # the kNN graph it was built from (kept only when asked, see _finish)


def spanning_tree(backend, params: HDBSCANParams, graph: knn_mod.KnnGraph | None = None) -> SpanningTree:
    """kNN graph, core distances, spanning forest and exact joins over any backend (see backends.py).

    FAISS backends with alpha = 1 build the tree on chord distances and join with FAISS searches
    (`connect_components`); every other case scales the graph by 1 / alpha and joins by scanning
    exact distance rows (`connect_components_by_rows`)."""
    n = backend.n
    samples = min(params.samples, n - 1)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if graph is None:
        k = min(n, max(samples + 1, params.knn_k or 16))
        dim = backend.data.shape[1] if hasattr(backend, "data") else n
        log.debug("knn graph: started, points=%d dim=%d k=%d", n, dim, k)
        graph = backend.knn(k, recall_k=samples + 1)
        log_step(log, "knn graph", started, points=n, dim=dim, k=graph.indices.shape[1])
        if graph.report is not None and not graph.report.exact:
            r = graph.report
            log.info("knn graph: %s, probe %s, recall@%d %.4f on %d sampled rows (target %s), core distance error "
                     "mean %.4f max %.4f", r.method, r.probe, r.recall_k, r.recall, r.sample, r.recall_target,
                     r.core_error_mean, r.core_error_max)
    timings["knn"] = time.perf_counter() - started
    started = step_started = time.perf_counter()
    native_core = core_distances(graph, samples)
    timings["core"] = log_step(log, "core distances", step_started, points=n, min_samples=samples)
    step_started = time.perf_counter()
    if backend.kind == "faiss" and params.alpha == 1.0:
        a, b, w = knn_spanning_forest(graph, native_core)
        timings["forest"] = log_step(log, "spanning forest", step_started, edges=a.size, components=n - a.size)
        step_started = time.perf_counter()
        a, b, w, joins = join_forest(backend.data, native_core, a, b, w, params)
        timings["joins"] = time.perf_counter() - step_started
        # a monotone map from chord to metric distances keeps the tree; only the weights change
        core, w = backend.to_metric(native_core), backend.to_metric(w)
    else:
        core = backend.to_metric(native_core)
        distances = backend.to_metric(graph.distances)
        if params.alpha != 1.0:
            distances = distances / params.alpha
        a, b, w = knn_spanning_forest(knn_mod.KnnGraph(distances, graph.indices), core)
        timings["forest"] = log_step(log, "spanning forest", step_started, edges=a.size, components=n - a.size)
        joins = JoinReport()
        step_started = time.perf_counter()
        if a.size < n - 1:
            step_started = time.perf_counter()
            if backend.kind == "faiss" and backend.metric == "euclidean":  # d / alpha is the distance of rows / alpha
                a, b, w = connect_components(backend.data / np.float32(params.alpha), core, a, b, w, seed=params.seed,
                                             pair_budget=params.join_pair_budget, report=joins)
            elif backend.triangle:  # pivot cells bound the distances; exact blocks search the rest
                a, b, w = connect_components(None, core, a, b, w, seed=params.seed, pair_budget=params.join_pair_budget,
                                             report=joins, block=backend.block, alpha=params.alpha)
            else:  # no triangle inequality to prune with: scan exact distance rows
                a, b, w = connect_components_by_rows(backend.rows, core, a, b, w, alpha=params.alpha, report=joins)
            log_step(log, "component joins", step_started, components=joins.components, rounds=joins.rounds,
                     certified=joins.certified, budgeted=joins.budgeted)
        timings["joins"] = time.perf_counter() - step_started
    timings["mst"] = time.perf_counter() - started  # core distances, forest and joins together
    return SpanningTree(core, a, b, w, joins, timings, graph.report, graph)


class DisconnectedGraphError(ValueError):
    """A precomputed sparse distance matrix whose graph has more than one connected component."""

    def __init__(self, components: int) -> None:
        self.components = components
        super().__init__(f"the sparse distance matrix has {components} connected components; HDBSCAN needs one "
                         "(cluster each component on its own)")


@njit(cache=True)
def _row_kth(indptr: np.ndarray, data: np.ndarray, rank: int) -> np.ndarray:
    """Per CSR row, its rank-th smallest stored value (0-based), inf when the row holds fewer."""
    n = indptr.size - 1
    out = np.empty(n)
    for i in range(n):
        row = data[indptr[i]:indptr[i + 1]]
        if rank < 0:
            out[i] = 0.0
        elif rank < row.size:
            out[i] = np.sort(row)[rank]
        else:
            out[i] = np.inf
    return out


def sparse_graph_tree(matrix, params: HDBSCANParams, core_rank: int | None = None,
                      max_distance: float = 0.0) -> SpanningTree:
    """The spanning tree of a precomputed sparse distance matrix, used directly as the kNN graph.

    As in the peers, a point's core distance is its `core_rank`-th smallest stored distance
    (default min_samples - 1; inf when it has fewer), edges weigh max(core_a, core_b, d / alpha),
    and an infinite weight becomes `max_distance` when that is > 0. A graph of several connected
    components raises `DisconnectedGraphError`.
    """
    started = time.perf_counter()
    csr = matrix.tocsr()
    n = csr.shape[0]
    samples = min(params.samples, n - 1)
    rank = samples - 1 if core_rank is None else core_rank
    data = np.asarray(csr.data, dtype=np.float64)
    indptr, indices = csr.indptr.astype(np.int64), csr.indices.astype(np.int64)
    core = _row_kth(indptr, data, int(rank))
    rows = np.repeat(np.arange(n), np.diff(indptr))
    weight = np.maximum(np.maximum(core[rows], core[indices]), data / params.alpha)
    if max_distance > 0:
        weight[~np.isfinite(weight)] = max_distance
    a, b, w = csr_spanning_forest(indptr, indices, weight, np.zeros(n))
    log_step(log, "spanning forest", started, edges=a.size, components=n - a.size)
    if a.size < n - 1:
        raise DisconnectedGraphError(n - a.size)
    return SpanningTree(core, a, b, w, JoinReport(), {"mst": time.perf_counter() - started})


def fit_backend(backend, params: HDBSCANParams, graph: knn_mod.KnnGraph | None = None,
                keep_spanning_tree: bool = False) -> HDBSCANResult:
    """Cluster the rows a backend holds (see backends.py); pass `graph` to reuse a kNN graph."""
    params.check()
    n = backend.n
    if n < 2:
        return _trivial(n)
    fit_started = time.perf_counter()
    tree = spanning_tree(backend, params, graph)
    return _finish(n, tree, params, fit_started, keep_spanning_tree)


def _finish(n: int, tree: SpanningTree, params: HDBSCANParams, fit_started: float,
            keep_spanning_tree: bool, keep_graph: bool = False) -> HDBSCANResult:
    started = time.perf_counter()
    result = hdbscan_from_mst(n, tree.a, tree.b, tree.w, tree.core, params)
    result.timings = {**tree.timings, "tree": time.perf_counter() - started}
    result.joins = tree.joins
    result.knn = tree.knn
    result.knn_graph = tree.graph if keep_graph else None
    if keep_spanning_tree:
        result.spanning_tree = np.column_stack([tree.a, tree.b, tree.w]).astype(np.float64)
    log_step(log, "hdbscan fit", fit_started, points=n, clusters=len(result.selected_clusters),
             noise=int((result.labels < 0).sum()))
    return result


def fit_hdbscan(data: np.ndarray, params: HDBSCANParams, graph: knn_mod.KnnGraph | None = None,
                keep_spanning_tree: bool = False) -> HDBSCANResult:
    """Cluster prepared data (see prepare_data) under euclidean or cosine distance with FAISS;
    pass `graph` to reuse a kNN graph."""
    backend = FaissBackend(data, params.metric, params.knn_method, params.device, params.nprobe, params.seed,
                           params.knn_recall_target)
    return fit_backend(backend, params, graph, keep_spanning_tree)


def _trivial(n: int) -> HDBSCANResult:
    return HDBSCANResult(np.full(n, -1), np.zeros(n), np.zeros(n), np.empty(0, CONDENSED_DTYPE),
                         np.empty((0, 4)), [], np.zeros(0), np.zeros(n))


def _fit_input(kind: str, X, metric, metric_kwargs: dict[str, Any], params: HDBSCANParams, algorithm: str,
               leaf_size: int, n_jobs: int | None, core_rank: int | None, max_distance: float,
               keep_spanning_tree: bool, graph=None, keep_graph: bool = False):
    """Backend, spanning tree and clusters for one input; module-level so `memory` can cache it."""
    fit_started = time.perf_counter()
    params.check()
    n = X.shape[0]
    if kind == "sparse_graph":
        if n < 2:
            return None, _trivial(n)
        tree = sparse_graph_tree(X, params, core_rank=core_rank, max_distance=max_distance)
        return None, _finish(n, tree, params, fit_started, keep_spanning_tree)
    if kind == "precomputed":
        backend = PrecomputedBackend(np.asarray(X, dtype=np.float64))
    else:
        backend = make_backend(X, metric, metric_kwargs, algorithm=algorithm, knn_method=params.knn_method,
                               device=params.device, nprobe=params.nprobe, seed=params.seed, leaf_size=leaf_size,
                               n_jobs=n_jobs, prepare=_prepare_finite, recall_target=params.knn_recall_target)
    if n < 2:
        return backend, _trivial(n)
    tree = spanning_tree(backend, params, graph)
    return backend, _finish(n, tree, params, fit_started, keep_spanning_tree, keep_graph)


def _prepare_finite(X, metric: str) -> np.ndarray:
    """prepare_data for rows already known finite (fit leaves the others out first)."""
    return prepare_data(X, metric, check_finite=False)


def _spanning_stage(kind, X, metric, metric_kwargs, params, algorithm, leaf_size, n_jobs, core_rank, max_distance):
    """The cacheable part of a fit (what `memory` stores): everything up to the spanning tree."""
    n = X.shape[0]
    if kind == "sparse_graph":
        return None, sparse_graph_tree(X, params, core_rank=core_rank, max_distance=max_distance)
    if kind == "precomputed":
        backend = PrecomputedBackend(np.asarray(X, dtype=np.float64))
    else:
        backend = make_backend(X, metric, metric_kwargs, algorithm=algorithm, knn_method=params.knn_method,
                               device=params.device, nprobe=params.nprobe, seed=params.seed, leaf_size=leaf_size,
                               n_jobs=n_jobs, prepare=_prepare_finite, recall_target=params.knn_recall_target)
    tree = spanning_tree(backend, params) if n >= 2 else None
    if tree is not None:
        tree.graph = None  # `memory` caches this stage: not n x k arrays nobody asked for
    return backend, tree


# -- the hdbscan library's estimator ----------------------------------------------------------------

KDTREE_VALID_METRICS = ["euclidean", "l2", "minkowski", "p", "manhattan", "cityblock", "l1", "chebyshev", "infinity"]
BALLTREE_VALID_METRICS = KDTREE_VALID_METRICS + [
    "braycurtis", "canberra", "dice", "hamming", "haversine", "jaccard", "mahalanobis", "rogerstanimoto",
    "russellrao", "seuclidean", "sokalmichener", "sokalsneath"]
FAST_METRICS = KDTREE_VALID_METRICS + BALLTREE_VALID_METRICS + ["cosine", "arccos"]
ALGORITHMS = {"best": "auto", "generic": "brute", "prims_kdtree": "kd_tree", "prims_balltree": "ball_tree",
              "boruvka_kdtree": "kd_tree", "boruvka_balltree": "ball_tree"}
# the engine's own knobs, after the hdbscan library's parameters
ENGINE_PARAMS = ("knn_k", "knn_method", "device", "nprobe", "seed", "join_pair_budget", "knn_recall_target")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_hdbscan_params(min_cluster_size, min_samples, alpha, cluster_selection_epsilon,
                         cluster_selection_persistence, cluster_selection_epsilon_max, leaf_size, metric, p,
                         algorithm, cluster_selection_method, max_cluster_size=0) -> None:
    """The hdbscan library's argument checks (ValueError, or TypeError where it raises one)."""
    samples = min_cluster_size if min_samples is None else min_samples
    if not _is_int(samples) or not _is_int(min_cluster_size):
        raise ValueError("Min samples and min cluster size must be integers!")
    if samples <= 0 or min_cluster_size <= 0:
        raise ValueError("Min samples and Min cluster size must be positive integers")
    if min_cluster_size == 1:
        raise ValueError("Min cluster size must be greater than one")
    if not _is_real(cluster_selection_epsilon) or cluster_selection_epsilon < 0:
        raise ValueError("Epsilon must be a float value greater than or equal to 0!")
    if not _is_real(cluster_selection_persistence) or cluster_selection_persistence < 0:
        raise ValueError("Persistence must be a float value greater than or equal to 0!")
    if not _is_real(alpha) or alpha <= 0:
        raise ValueError("Alpha must be a positive float value greater than 0!")
    if not _is_int(leaf_size) or leaf_size < 1:
        raise ValueError("Leaf size must be greater than 0!")
    if not _is_int(max_cluster_size) or max_cluster_size < 0:
        raise ValueError("max_cluster_size must be a non-negative integer (0: no limit)")
    if metric is None or (not callable(metric) and metric not in valid_metric_names()):
        raise ValueError(f"Unrecognized metric {metric!r}: use a metric scikit-learn's pairwise_distances accepts, "
                         "a callable, or 'precomputed'")
    if metric == "minkowski":
        if p is None:
            raise TypeError("Minkowski metric given but no p value supplied!")
        if p < 0:
            raise ValueError("Minkowski metric with negative p value is not defined!")
    if not _is_real(cluster_selection_epsilon_max) or cluster_selection_epsilon_max < cluster_selection_epsilon:
        raise ValueError("Cluster selection epsilon max must be greater than epsilon!")
    if cluster_selection_method not in ("eom", "leaf"):
        raise ValueError(f"Invalid Cluster Selection Method: {cluster_selection_method}\n"
                         'Should be one of: "eom", "leaf"\n')
    if algorithm not in ALGORITHMS:
        raise TypeError(f"Unknown algorithm type {algorithm} specified")
    tree = ALGORITHMS[algorithm]
    if metric == "precomputed" and algorithm not in ("best", "generic"):
        raise ValueError(f"Cannot use a precomputed distance matrix with algorithm {algorithm!r}; use 'generic'")
    if algorithm == "prims_kdtree" and metric not in KDTREE_VALID_METRICS:
        raise ValueError("Cannot use Prim's with KDTree for this metric!")
    if tree == "ball_tree" or algorithm == "boruvka_kdtree":
        if metric not in BALLTREE_VALID_METRICS:
            raise ValueError(f"Cannot use {algorithm} for this metric!")


def check_input(X, metric: Any):
    """('features' | 'precomputed' | 'sparse_graph', array-or-CSR) with the peers' input checks."""
    from scipy import sparse as sp
    from sklearn.utils import check_array

    if isinstance(X, str) or X is None:
        raise ValueError(f"expected a 2-d array of shape (n_samples, n_features), got {X!r}")
    if metric == "precomputed":
        if sp.issparse(X):
            return "sparse_graph", check_array(X, accept_sparse="csr")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] != X.shape[1]:
            raise ValueError(f"a precomputed distance matrix must be square, got shape {X.shape}")
        tmp = np.where(np.isinf(X), 1.0, X) if np.issubdtype(X.dtype, np.number) else X
        check_array(tmp)  # NaN is an error; inf marks a missing distance
        return "precomputed", np.asarray(X, dtype=np.float64)
    if not sp.issparse(X):
        X = np.asarray(X) if not hasattr(X, "__array__") else X
        if np.ndim(X) != 2:
            raise ValueError(f"expected a 2-d array of shape (n_samples, n_features), got shape {np.shape(X)}")
    dtype = None if sp.issparse(X) else "numeric"
    try:
        X = check_array(X, accept_sparse="csr", ensure_all_finite=False, dtype=dtype)
    except TypeError:  # scikit-learn < 1.6 names it force_all_finite
        X = check_array(X, accept_sparse="csr", force_all_finite=False, dtype=dtype)
    return "features", X


def finite_rows(X) -> np.ndarray | None:
    """Indices of the rows holding only finite values, or None when every row does."""
    from scipy import sparse as sp

    if sp.issparse(X):
        X = X.tocsr()
        bad_entries = ~np.isfinite(X.data)
        if not bad_entries.any():
            return None
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[bad_entries]
        keep = np.ones(X.shape[0], dtype=bool)
        keep[rows] = False
        return np.flatnonzero(keep)
    finite = np.isfinite(X).all(axis=1)
    return None if finite.all() else np.flatnonzero(finite)


class HDBSCAN(ClusterMixin, BaseEstimator):
    """HDBSCAN over kNN graphs, a drop-in for `hdbscan.HDBSCAN`: its parameters, attributes, tree
    objects and prediction functions (see `lakelens.operators.hdbscan`), with the kNN-graph engine
    underneath. `algorithm`, `leaf_size`, `approx_min_span_tree` and `core_dist_n_jobs` are hints:
    the engine maps them to its own kNN backends (docs/phdbscan.md). The last six parameters are
    the engine's (kNN graph size and method, device, seed, join budget); extra keyword arguments
    go to the metric, as in hdbscan.
    """

    def __init__(self, min_cluster_size=5, min_samples=None, cluster_selection_epsilon=0.0,
                 cluster_selection_persistence=0.0, max_cluster_size=0, metric="euclidean", alpha=1.0, p=None,
                 algorithm="best", leaf_size=40, memory=None, approx_min_span_tree=True, gen_min_span_tree=False,
                 core_dist_n_jobs=4, cluster_selection_method="eom", allow_single_cluster=False,
                 prediction_data=False, branch_detection_data=False, match_reference_implementation=False,
                 cluster_selection_epsilon_max=float("inf"), knn_k=None, knn_method="auto", device="auto",
                 nprobe=None, seed=0, join_pair_budget=5e7, knn_recall_target=0.95, **kwargs):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_epsilon = cluster_selection_epsilon
        self.cluster_selection_persistence = cluster_selection_persistence
        self.max_cluster_size = max_cluster_size
        self.metric = metric
        self.alpha = alpha
        self.p = p
        self.algorithm = algorithm
        self.leaf_size = leaf_size
        self.memory = memory
        self.approx_min_span_tree = approx_min_span_tree
        self.gen_min_span_tree = gen_min_span_tree
        self.core_dist_n_jobs = core_dist_n_jobs
        self.cluster_selection_method = cluster_selection_method
        self.allow_single_cluster = allow_single_cluster
        self.prediction_data = prediction_data
        self.branch_detection_data = branch_detection_data
        self.match_reference_implementation = match_reference_implementation
        self.cluster_selection_epsilon_max = cluster_selection_epsilon_max
        self.knn_k = knn_k
        self.knn_method = knn_method
        self.device = device
        self.nprobe = nprobe
        self.seed = seed
        self.join_pair_budget = join_pair_budget
        self.knn_recall_target = knn_recall_target
        self._metric_kwargs = kwargs
        self._prediction_data = None
        self._relative_validity = None

    # -- parameters -------------------------------------------------------------------------------

    @property
    def params(self) -> HDBSCANParams:
        """The engine's parameters (what to_files stores)."""
        return HDBSCANParams(
            min_cluster_size=self.min_cluster_size, min_samples=self.min_samples,
            cluster_selection_method=self.cluster_selection_method,
            cluster_selection_epsilon=float(self.cluster_selection_epsilon),
            allow_single_cluster=bool(self.allow_single_cluster), metric=self._canonical_metric(),
            knn_k=self.knn_k, knn_method=self.knn_method, device=self.device, nprobe=self.nprobe, seed=self.seed,
            join_pair_budget=self.join_pair_budget, knn_recall_target=self.knn_recall_target,
            max_cluster_size=self.max_cluster_size or 0,
            alpha=float(self.alpha), cluster_selection_persistence=float(self.cluster_selection_persistence),
            cluster_selection_epsilon_max=float(self.cluster_selection_epsilon_max),
            match_reference_implementation=bool(self.match_reference_implementation))

    def _metric_params(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self._metric_kwargs.items() if k != "max_dist"}
        if self.metric in ("minkowski", "p") and self.p is not None:
            kwargs["p"] = self.p
        return kwargs

    def _canonical_metric(self):
        if self.metric == "precomputed":
            return "precomputed"
        return canonical_metric(self.metric, self._metric_params())

    def _check_params(self) -> None:
        check_hdbscan_params(self.min_cluster_size, self.min_samples, self.alpha, self.cluster_selection_epsilon,
                             self.cluster_selection_persistence, self.cluster_selection_epsilon_max, self.leaf_size,
                             self.metric, self.p, self.algorithm, self.cluster_selection_method,
                             self.max_cluster_size)

    def set_params(self, **params):
        extra = {k: params.pop(k) for k in list(params) if k not in self.get_params(deep=False)}
        self._metric_kwargs.update(extra)  # hdbscan's **kwargs go to the metric
        return super().set_params(**params)

    # -- fit -----------------------------------------------------------------------------------------

    def fit(self, X, y=None, graph: knn_mod.KnnGraph | None = None, keep_graph: bool = False) -> "HDBSCAN":
        """Cluster `X`: feature rows (dense or sparse), or distances with metric='precomputed'
        (a dense matrix, inf for missing, or a sparse kNN graph). Rows with NaN or inf are noise.
        `graph` reuses a kNN graph of X (FAISS metrics); `keep_graph` keeps the graph the fit built as
        `knn_graph_` (rows: the finite rows of X, nearest first, each row itself included), else None."""
        if isinstance(y, knn_mod.KnnGraph):  # the older positional form fit(X, graph)
            graph, y = y, None
        self._check_params()
        kind, X = check_input(X, self.metric)
        self._fit_checked(kind, X, graph=graph, keep_graph=keep_graph)
        return self

    def _fit_checked(self, kind: str, X, graph=None, min_samples_offset: int = 0, core_rank: int | None = None,
                     max_distance: float | None = None, algorithm: str | None = None, n_jobs: int | None = None,
                     on_disconnected: str | None = None, keep_graph: bool = False) -> None:
        """The fit shared with the scikit-learn facade (which shifts min_samples by one)."""
        params = self.params
        if min_samples_offset and params.min_samples is not None:
            params.min_samples = params.min_samples + min_samples_offset
        elif min_samples_offset:
            params.min_samples = params.min_cluster_size + min_samples_offset
        params.check()
        n_raw = X.shape[0]
        keep = finite_rows(X) if kind == "features" else None
        clean = X[keep] if keep is not None else X
        metric = self._canonical_metric()
        algorithm = algorithm or ALGORITHMS.get(self.algorithm, "auto")
        n_jobs = n_jobs if n_jobs is not None else (self.core_dist_n_jobs if _is_int(self.core_dist_n_jobs) else None)
        n_jobs = None if n_jobs is not None and n_jobs < -1 else n_jobs
        max_distance = float(self._metric_kwargs.get("max_dist", 0.0)) if max_distance is None else max_distance
        keep_tree = bool(self.gen_min_span_tree or self.branch_detection_data)
        if self.branch_detection_data:
            warnings.warn("branch_detection_data is accepted but not generated: hdbscan.branches is not part of "
                          "the engine (see docs/phdbscan.md)", UserWarning)
        try:
            from sklearn.utils.validation import check_memory

            memory = check_memory(self.memory)
            if getattr(memory, "location", None) is not None and graph is None:
                backend, tree = memory.cache(_spanning_stage)(kind, clean, metric, self._metric_params(), params,
                                                              algorithm, self.leaf_size, n_jobs, core_rank,
                                                              max_distance)
                result = _trivial(clean.shape[0]) if tree is None else \
                    _finish(clean.shape[0], tree, params, time.perf_counter(), keep_tree)
            else:
                backend, result = _fit_input(kind, clean, metric, self._metric_params(), params, algorithm,
                                             self.leaf_size, n_jobs, core_rank, max_distance, keep_tree, graph,
                                             keep_graph)
        except DisconnectedGraphError as exc:
            if on_disconnected:
                raise ValueError(on_disconnected.format(components=exc.components)) from None
            raise ValueError("Sparse distance matrix has multiple connected components!\nThat is, there exist "
                             "groups of points that are completely disjoint -- there are no distance relations "
                             "connecting them\nRun hdbscan on each component.") from None
        if result.single_linkage.size and np.isinf(result.single_linkage[:, 2]).any():
            warnings.warn("The minimum spanning tree contains edge weights with value infinity. Potentially, you "
                          "are missing too many distances in the initial distance matrix for the given "
                          "neighborhood size.", UserWarning)
        self.result_ = result
        self.knn_graph_ = result.knn_graph
        self._backend = backend
        self._kind = kind
        self._finite_rows = keep
        self._raw_data = X if kind == "features" else None
        self._n_raw = n_raw
        self._prediction_data = None
        self._relative_validity = None
        self.n_features_in_ = X.shape[1]
        self._publish()
        if self.prediction_data:
            self.generate_prediction_data()

    def _publish(self) -> None:
        """Public attributes (all rows) from the engine's result (finite rows)."""
        r, keep = self.result_, getattr(self, "_finite_rows", None)
        n_raw = getattr(self, "_n_raw", r.labels.size)
        if keep is None or keep.size == n_raw:
            self.labels_ = r.labels
            self.probabilities_ = r.probabilities
            self.outlier_scores_ = r.outlier_scores
            self._condensed_tree = r.condensed_tree
            self._single_linkage_tree = r.single_linkage
            self._selected_raw = list(r.selected_clusters)
            mst = r.spanning_tree
        else:
            self.labels_ = np.full(n_raw, -1, dtype=np.int64)
            self.labels_[keep] = r.labels
            self.probabilities_ = np.zeros(n_raw)
            self.probabilities_[keep] = r.probabilities
            if r.condensed_tree.size:
                self._condensed_tree = remap_condensed_tree(r.condensed_tree, keep, n_raw)
                self._single_linkage_tree = remap_single_linkage(r.single_linkage, keep, n_raw)
                self.outlier_scores_ = glosh_scores(self._condensed_tree, n_raw)
            else:
                self._condensed_tree, self._single_linkage_tree = r.condensed_tree, r.single_linkage
                self.outlier_scores_ = np.zeros(n_raw)
            shift = n_raw - keep.size
            self._selected_raw = [c + shift for c in r.selected_clusters]
            mst = None
            if r.spanning_tree is not None:
                mst = r.spanning_tree.copy()
                mst[:, 0], mst[:, 1] = keep[mst[:, 0].astype(np.int64)], keep[mst[:, 1].astype(np.int64)]
        self.cluster_persistence_ = r.cluster_persistence
        self._min_spanning_tree = mst

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    @property
    def knn_report_(self) -> knn_mod.KnnReport | None:
        """How the fit's kNN graph was built and what it is worth (see knn.KnnReport); None when
        the graph came from the caller (a sparse precomputed matrix, or `graph=`)."""
        self._require_fit("kNN graph")
        return self.result_.knn

    @property
    def knn_recall_(self) -> float | None:
        """The kNN graph's recall@(min_samples + 1): 1.0 when exact, else measured on a sample."""
        report = self.knn_report_
        return None if report is None else report.recall

    # -- the hdbscan library's attributes ----------------------------------------------------------

    @property
    def condensed_tree_(self):
        from lakelens.operators.hdbscan.plots import CondensedTree

        self._require_fit("condensed tree")
        return CondensedTree(self._condensed_tree, self.labels_, selected=self._selected_raw)

    @property
    def single_linkage_tree_(self):
        from lakelens.operators.hdbscan.plots import SingleLinkageTree

        self._require_fit("single linkage tree")
        return SingleLinkageTree(self._single_linkage_tree)

    @property
    def minimum_spanning_tree_(self):
        from lakelens.operators.hdbscan.plots import MinimumSpanningTree

        self._require_fit("minimum spanning tree")
        if self._min_spanning_tree is None:
            raise AttributeError("No minimum spanning tree was generated: fit with gen_min_span_tree=True")
        if self._raw_data is None:
            warnings.warn("No raw data is available; this may be due to using a precomputed metric matrix. "
                          "No minimum spanning tree will be provided without raw data.")
            return None
        return MinimumSpanningTree(self._min_spanning_tree, self._raw_data)

    def _require_fit(self, what: str) -> None:
        if not hasattr(self, "result_"):
            raise AttributeError(f"No {what} was generated; try running fit first.")

    @property
    def prediction_data_(self):
        if getattr(self, "_prediction_data", None) is None:
            raise AttributeError("No prediction data was generated")
        return self._prediction_data

    @prediction_data_.setter
    def prediction_data_(self, value):
        self._prediction_data = value

    def generate_prediction_data(self) -> None:
        """Cache what approximate_predict, membership vectors and exemplars need (hdbscan's semantics)."""
        from lakelens.operators.hdbscan.prediction import PredictionData

        self._require_fit("model")
        if self._backend is None or self._kind == "precomputed":
            warnings.warn("Cannot generate prediction data for non-vector space inputs -- access to the source "
                          "data rather than mere distances is required!")
            return
        self._prediction_data = PredictionData.from_model(self)

    @property
    def exemplars_(self):
        if getattr(self, "_prediction_data", None) is None:
            self.generate_prediction_data()
        if getattr(self, "_prediction_data", None) is None:
            raise AttributeError("Currently exemplars require the use of vector input data with a suitable metric.")
        return self._prediction_data.exemplars

    @property
    def relative_validity_(self) -> float:
        from lakelens.operators.hdbscan.validity import relative_validity

        if getattr(self, "_relative_validity", None) is None:
            if self._min_spanning_tree is None:
                raise AttributeError("Minimum spanning tree not present. Either HDBSCAN object was created with "
                                     "gen_min_span_tree=False or the tree was not generated in spite of it owing "
                                     "to internal optimization criteria.")
            self._relative_validity = relative_validity(self._min_spanning_tree, self.labels_)
        return self._relative_validity

    def weighted_cluster_centroid(self, cluster_id: int) -> np.ndarray:
        """The membership-weighted mean of a cluster's points (assumes a euclidean space)."""
        self._require_fit("model")
        if cluster_id < 0:
            raise ValueError(f"Cannot calculate weighted centroid for {cluster_id} cluster since it is a noise cluster")
        mask = self.labels_ == cluster_id
        data = self._vectors(mask)
        return np.average(data, weights=self.probabilities_[mask], axis=0)

    def weighted_cluster_medoid(self, cluster_id: int) -> np.ndarray:
        """The cluster's point with the least membership-weighted distance to the others (in the metric)."""
        self._require_fit("model")
        if cluster_id < 0:
            raise ValueError(f"Cannot calculate weighted medoid for {cluster_id} cluster since it is a noise cluster")
        mask = self.labels_ == cluster_id
        data = self._vectors(mask)
        distances = self._pairwise(data, data) * self.probabilities_[mask]
        return data[np.argmin(distances.sum(axis=1))]

    def _vectors(self, mask: np.ndarray):
        if self._raw_data is None:
            raise ValueError("no vectors: the model was fitted on precomputed distances")
        data = self._raw_data[mask]
        return data.toarray() if hasattr(data, "toarray") else np.asarray(data, dtype=np.float64)

    def _pairwise(self, a, b) -> np.ndarray:
        """Distances under the fitted metric (for medoids, exemplars, validity)."""
        from sklearn.metrics import pairwise_distances

        metric = self._canonical_metric()
        if metric == "arccos":
            return np.arccos(np.clip(1.0 - pairwise_distances(a, b, metric="cosine"), -1.0, 1.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pairwise_distances(a, b, metric=metric,
                                      **({} if callable(metric) else pairwise_kwargs(metric, self._metric_params())))

    def dbscan_clustering(self, cut_distance: float, min_cluster_size: int = 5) -> np.ndarray:
        """DBSCAN* labels at `cut_distance`: a flat cut through the single-linkage tree."""
        self._require_fit("single linkage tree")
        return labelling_at_cut(self._single_linkage_tree, cut_distance, min_cluster_size)

    # -- new points ----------------------------------------------------------------------------------

    def approximate_predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Labels and probabilities for new points without re-clustering (hdbscan's approximate_predict)."""
        from lakelens.operators.hdbscan.prediction import approximate_predict

        if getattr(self, "_prediction_data", None) is None:
            self.generate_prediction_data()
        return approximate_predict(self, X)

    def predict_with_scores(self, X, neighbours: tuple[np.ndarray, np.ndarray] | None = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, membership probabilities and GLOSH outlier scores for new points.

        A new point joins the tree beside its nearest training point by mutual reachability, at the
        density level 1/distance (the behaviour-clusters job's gate; see prediction.py). `neighbours`:
        the points' `gate_neighbours` nearest training rows, when the caller already searched them.
        """
        from lakelens.operators.hdbscan.prediction import predict_with_scores

        return predict_with_scores(self, X, neighbours)

    @property
    def gate_neighbours(self) -> int:
        """How many nearest training rows `predict_with_scores` reads per new point."""
        from lakelens.operators.hdbscan.prediction import gate_neighbour_count

        return gate_neighbour_count(self)

    @property
    def searches_exactly(self) -> bool:
        """Whether new points' nearest training rows are found exactly (a flat index), not approximated."""
        return bool(self._backend.exact_queries)

    def kneighbors(self, X, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, training-row indices) of each row of X's nearest training rows, nearest first."""
        from lakelens.operators.hdbscan.prediction import training_neighbours

        return training_neighbours(self, X, n_neighbors)

    # -- persistence: named bytes, so operators never see storage (infra/model_store.py moves them) --

    def to_files(self) -> dict[str, bytes]:
        """The fitted model as model.json (params, sizes) and arrays.npz (arrays and training points)."""
        if self._kind != "features" or self._finite_rows is not None or not hasattr(self._backend, "data") \
                or hasattr(self._backend.data, "tocsr"):
            raise ValueError("to_files saves models fitted on dense, finite feature rows only")
        r = self.result_
        data = self._backend.data
        arrays = {
            "data": data, "labels": r.labels, "probabilities": r.probabilities,
            "outlier_scores": r.outlier_scores, "condensed_tree": r.condensed_tree,
            "single_linkage": r.single_linkage, "core_distances": r.core_distances,
            "cluster_persistence": r.cluster_persistence,
            "selected_clusters": np.asarray(r.selected_clusters, dtype=np.int64),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        params = asdict(self.params)
        if self.metric != params["metric"] and not callable(self.metric):
            params["metric"] = self.metric
        meta = {"kind": "phdbscan", "params": params, "n": int(data.shape[0]), "dim": int(data.shape[1])}
        metric_kwargs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self._metric_params().items()}
        if metric_kwargs:
            meta["metric_kwargs"] = metric_kwargs
        # the bytes Lake.write_json wrote, so folders saved before to_files existed load unchanged
        return {MODEL_FILE: json.dumps(meta, indent=2, sort_keys=True, default=str).encode(),
                ARRAYS_FILE: buffer.getvalue()}

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> "HDBSCAN":
        """The model to_files wrote; ValueError when the files do not hold a pHDBSCAN model."""
        missing = [name for name in (MODEL_FILE, ARRAYS_FILE) if name not in files]
        if missing:
            raise ValueError(f"not a pHDBSCAN model: no {' or '.join(missing)} among the files "
                             f"({', '.join(sorted(files)) or 'none'})")
        try:
            meta = json.loads(files[MODEL_FILE])
        except ValueError as exc:
            raise ValueError(f"not a pHDBSCAN model: {MODEL_FILE} is not JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("kind") != "phdbscan":
            kind = meta.get("kind") if isinstance(meta, dict) else None
            raise ValueError(f"not a pHDBSCAN model: {MODEL_FILE} has kind {kind!r}, expected 'phdbscan'")
        if not isinstance(meta.get("params"), dict):
            raise ValueError(f"not a complete pHDBSCAN model: {MODEL_FILE} has no params")
        known = {f.name for f in fields(HDBSCANParams)}
        model = cls(**{k: v for k, v in meta["params"].items() if k in known}, **meta.get("metric_kwargs", {}))
        try:
            arrays = np.load(io.BytesIO(files[ARRAYS_FILE]))
            names = arrays.files  # a .npy, not an .npz, has none
        except (ValueError, OSError, AttributeError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a pHDBSCAN model: {ARRAYS_FILE} is not an npz archive ({exc})") from None
        absent = [name for name in _ARRAY_NAMES if name not in names]
        if absent:
            raise ValueError(f"not a complete pHDBSCAN model: {ARRAYS_FILE} lacks {', '.join(absent)}")
        data = arrays["data"]
        metric = model._canonical_metric()
        if isinstance(metric, str) and metric in ("euclidean", "cosine", "arccos"):
            backend = FaissBackend(data, metric, model.knn_method, model.device, model.nprobe, model.seed,
                                   model.knn_recall_target)
        else:
            backend = MetricBackend(data, metric, model._metric_params(), seed=model.seed)
        model.result_ = HDBSCANResult(
            labels=arrays["labels"], probabilities=arrays["probabilities"], outlier_scores=arrays["outlier_scores"],
            condensed_tree=arrays["condensed_tree"], single_linkage=arrays["single_linkage"],
            selected_clusters=[int(c) for c in arrays["selected_clusters"]],
            cluster_persistence=arrays["cluster_persistence"], core_distances=arrays["core_distances"],
        )
        model._backend, model._kind, model._finite_rows = backend, "features", None
        model._raw_data, model._n_raw, model.n_features_in_ = data, data.shape[0], data.shape[1]
        model._prediction_data, model._relative_validity = None, None
        model._publish()
        return model


PHDBSCAN = HDBSCAN  # the name the jobs use


def hdbscan(X, min_cluster_size=5, min_samples=None, alpha=1.0, cluster_selection_epsilon=0.0,
            cluster_selection_persistence=0.0, max_cluster_size=0, metric="minkowski", p=2, leaf_size=40,
            algorithm="best", memory=None, approx_min_span_tree=True, gen_min_span_tree=False,
            core_dist_n_jobs=4, cluster_selection_method="eom", allow_single_cluster=False,
            match_reference_implementation=False, cluster_selection_epsilon_max=float("inf"), **kwargs):
    """The hdbscan library's function: (labels, probabilities, cluster_persistence, condensed_tree,
    single_linkage_tree, min_spanning_tree) as arrays (the last None unless gen_min_span_tree)."""
    model = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, alpha=alpha,
                    cluster_selection_epsilon=cluster_selection_epsilon,
                    cluster_selection_persistence=cluster_selection_persistence, max_cluster_size=max_cluster_size,
                    metric=metric, p=p, leaf_size=leaf_size, algorithm=algorithm, memory=memory,
                    approx_min_span_tree=approx_min_span_tree, gen_min_span_tree=gen_min_span_tree,
                    core_dist_n_jobs=core_dist_n_jobs, cluster_selection_method=cluster_selection_method,
                    allow_single_cluster=allow_single_cluster,
                    match_reference_implementation=match_reference_implementation,
                    cluster_selection_epsilon_max=cluster_selection_epsilon_max, **kwargs).fit(X)
    return (model.labels_, model.probabilities_, model.cluster_persistence_, model._condensed_tree,
            model._single_linkage_tree, model._min_spanning_tree)
