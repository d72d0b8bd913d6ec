"""PHDBSCAN: HDBSCAN over a FAISS kNN graph, with the `hdbscan` library's parameters and outputs.

    data -> knn graph -> core distances -> MST (+ exact component joins) -> single linkage
         -> condensed tree -> EOM/leaf selection -> labels, probabilities, GLOSH, persistence
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from lakelens.operators.hdbscan import knn as knn_mod
from lakelens.operators.hdbscan.mst import (
    JoinReport,
    connect_components,
    core_distances,
    knn_spanning_forest,
)
from lakelens.operators.hdbscan.tree import (
    CONDENSED_DTYPE,
    ClusterTree,
    cluster_deaths,
    cluster_persistence,
    condense_tree,
    glosh_scores,
    label_points,
    membership_probabilities,
    select_clusters,
    selected_owner,
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
    metric: str = "euclidean"  # or "cosine" (rows are L2-normalised)
    knn_k: int | None = None  # neighbours in the graph, self included; default max(min_samples + 1, 16)
    knn_method: str = "auto"  # exact, ivf, hnsw or auto (exact up to 200k points)
    device: str = "auto"  # cpu, cuda or auto
    nprobe: int | None = None
    seed: int = 0
    # distance evaluations allowed per component join before it stops certifying exactness
    join_pair_budget: float = 5e7
    max_cluster_size: int = 0  # EOM never selects a larger cluster (0: no limit), as in hdbscan

    @property
    def samples(self) -> int:
        return self.min_samples or self.min_cluster_size

    def check(self) -> None:
        if self.min_cluster_size < 2:
            raise ValueError(f"min_cluster_size must be >= 2, got {self.min_cluster_size}")
        if self.min_samples is not None and self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")
        if self.cluster_selection_epsilon < 0:
            raise ValueError("cluster_selection_epsilon must be >= 0")
        if self.metric not in ("euclidean", "cosine"):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {self.metric!r}")


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


def prepare_data(X, metric: str = "euclidean") -> np.ndarray:
    """float32 C-contiguous rows; a clear error for NaN/inf rows; cosine becomes euclidean on the sphere."""
    data = np.asarray(X)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-d array of shape (n_samples, n_features), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"expected numeric data, got dtype {data.dtype}")
    bad = ~np.isfinite(data).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{rows.size} rows contain NaN or inf (first at row {rows[0]}); drop or impute them")
    data = np.ascontiguousarray(data, dtype=np.float32)
    if metric == "cosine":
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
    tree = condense_tree(linkage, params.min_cluster_size)
    ct = ClusterTree.from_condensed(tree)  # derived once, read by every step below
    log_step(log, "condensed tree", started, rows=tree.size, clusters=ct.parent_of.size)
    started = time.perf_counter()
    selected = select_clusters(tree, params.cluster_selection_method, params.allow_single_cluster,
                               params.cluster_selection_epsilon, ct=ct, max_cluster_size=params.max_cluster_size)
    labels = label_points(tree, selected, n, params.allow_single_cluster, params.cluster_selection_epsilon, ct=ct)
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


def fit_hdbscan(data: np.ndarray, params: HDBSCANParams, graph: knn_mod.KnnGraph | None = None) -> HDBSCANResult:
    """Cluster prepared data (see prepare_data); pass `graph` to reuse a kNN graph."""
    params.check()
    n = data.shape[0]
    if n < 2:
        return _trivial(n)
    timings: dict[str, float] = {}
    samples = min(params.samples, n - 1)
    fit_started = started = time.perf_counter()
    if graph is None:
        k = min(n, max(samples + 1, params.knn_k or 16))
        log.debug("knn graph: started, points=%d dim=%d k=%d", n, data.shape[1], k)
        graph = knn_mod.knn_graph(data, k, method=params.knn_method, device=params.device, nprobe=params.nprobe,
                                  seed=params.seed)
        log_step(log, "knn graph", started, points=n, dim=data.shape[1], k=graph.indices.shape[1])
    timings["knn"] = time.perf_counter() - started
    started = step_started = time.perf_counter()
    core = core_distances(graph, samples)
    log_step(log, "core distances", step_started, points=n, min_samples=samples)
    step_started = time.perf_counter()
    a, b, w = knn_spanning_forest(graph, core)
    log_step(log, "spanning forest", step_started, edges=a.size, components=n - a.size)
    a, b, w, joins = join_forest(data, core, a, b, w, params)
    timings["mst"] = time.perf_counter() - started
    started = time.perf_counter()
    result = hdbscan_from_mst(n, a, b, w, core, params)
    timings["tree"] = time.perf_counter() - started
    result.timings = timings
    result.joins = joins
    log_step(log, "hdbscan fit", fit_started, points=n, clusters=len(result.selected_clusters),
             noise=int((result.labels < 0).sum()))
    return result


def _trivial(n: int) -> HDBSCANResult:
    return HDBSCANResult(np.full(n, -1), np.zeros(n), np.zeros(n), np.empty(0, CONDENSED_DTYPE),
                         np.empty((0, 4)), [], np.zeros(0), np.zeros(n))


class PHDBSCAN:
    """Drop-in for `hdbscan.HDBSCAN` on Euclidean (or cosine) data, built on FAISS kNN graphs."""

    def __init__(self, min_cluster_size: int = 5, min_samples: int | None = None,
                 cluster_selection_method: str = "eom", cluster_selection_epsilon: float = 0.0,
                 allow_single_cluster: bool = False, metric: str = "euclidean", knn_k: int | None = None,
                 knn_method: str = "auto", device: str = "auto", nprobe: int | None = None, seed: int = 0,
                 join_pair_budget: float = 5e7, max_cluster_size: int = 0) -> None:
        self.params = HDBSCANParams(min_cluster_size, min_samples, cluster_selection_method,
                                    cluster_selection_epsilon, allow_single_cluster, metric, knn_k, knn_method,
                                    device, nprobe, seed, join_pair_budget, max_cluster_size)

    def fit(self, X, graph: knn_mod.KnnGraph | None = None) -> "PHDBSCAN":
        data = prepare_data(X, self.params.metric)
        self.result_ = fit_hdbscan(data, self.params, graph)
        self._data = data
        self._index = None
        return self

    def fit_predict(self, X) -> np.ndarray:
        return self.fit(X).labels_

    # the hdbscan library's attribute names
    labels_ = property(lambda self: self.result_.labels)
    probabilities_ = property(lambda self: self.result_.probabilities)
    outlier_scores_ = property(lambda self: self.result_.outlier_scores)
    cluster_persistence_ = property(lambda self: self.result_.cluster_persistence)
    condensed_tree_ = property(lambda self: self.result_.condensed_tree)
    single_linkage_tree_ = property(lambda self: self.result_.single_linkage)

    def approximate_predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Labels and probabilities for new points without re-clustering (hdbscan's approximate_predict)."""
        labels, probabilities, _ = self.predict_with_scores(X)
        return labels, probabilities

    def predict_with_scores(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, membership probabilities and GLOSH outlier scores for new points.

        A new point joins the tree beside its nearest training point by mutual reachability, at the
        density level 1/distance; that is hdbscan's approximate_predict and approximate_predict_scores.
        """
        points = prepare_data(X, self.params.metric)
        count = points.shape[0]
        result = self.result_
        tree = result.condensed_tree
        if tree.size == 0 or count == 0:
            return np.full(count, -1), np.zeros(count), np.ones(count)
        neighbour, lam = self._nearest_by_reachability(points)
        ct = ClusterTree.from_condensed(tree)
        owner = selected_owner(ct, result.selected_clusters)
        point_rows = tree[tree["child"] < ct.root]
        leaves_from = np.empty(self._data.shape[0], dtype=np.int64)
        leaves_from[point_rows["child"]] = point_rows["parent"]
        deaths = cluster_deaths(tree, ct.root, ct.parent_of.size)
        subtree_max = deaths.copy()
        for idx in range(ct.parent_of.size - 1, 0, -1):  # children before parents
            parent = ct.parent_of[idx] - ct.root
            subtree_max[parent] = max(subtree_max[parent], subtree_max[idx])
        labels = np.full(count, -1, dtype=np.int64)
        probs = np.zeros(count)
        scores = np.zeros(count)
        for i in range(count):
            cluster = leaves_from[neighbour[i]]
            # the new point joins where its density level says: climb while the cluster was born denser
            while cluster != ct.root and ct.birth[cluster - ct.root] > lam[i]:
                cluster = ct.parent_of[cluster - ct.root]
            top = subtree_max[cluster - ct.root]
            if np.isfinite(top) and top > 0 and np.isfinite(lam[i]):
                scores[i] = max(0.0, (top - lam[i]) / top)
            label = owner[cluster - ct.root]
            if label < 0:
                continue
            labels[i] = label
            max_lambda = deaths[result.selected_clusters[label] - ct.root]
            probs[i] = 1.0 if not np.isfinite(max_lambda) or max_lambda == 0 else min(lam[i], max_lambda) / max_lambda
        return labels, probs, scores

    def _nearest_by_reachability(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per new point: the training point nearest by mutual reachability, and 1 / that distance."""
        n_train = self._data.shape[0]
        samples = min(self.params.samples, n_train - 1)
        if self._index is None:
            self._index = knn_mod.build_index(self._data, method=self.params.knn_method, device=self.params.device,
                                              nprobe=self.params.nprobe, seed=self.params.seed)
        graph = knn_mod.search(self._index, self._data, points, min(n_train, 2 * samples))
        core_new = graph.distances[:, min(samples, graph.distances.shape[1]) - 1]
        mr = np.maximum(np.maximum(core_new[:, None], self.result_.core_distances[graph.indices]), graph.distances)
        best = np.argmin(mr, axis=1)
        rows = np.arange(points.shape[0])
        with np.errstate(divide="ignore"):
            return graph.indices[rows, best], 1.0 / mr[rows, best]

    # -- persistence: named bytes, so operators never see storage (infra/model_store.py moves them) --

    def to_files(self) -> dict[str, bytes]:
        """The fitted model as model.json (params, sizes) and arrays.npz (arrays and training points)."""
        r = self.result_
        arrays = {
            "data": self._data, "labels": r.labels, "probabilities": r.probabilities,
            "outlier_scores": r.outlier_scores, "condensed_tree": r.condensed_tree,
            "single_linkage": r.single_linkage, "core_distances": r.core_distances,
            "cluster_persistence": r.cluster_persistence,
            "selected_clusters": np.asarray(r.selected_clusters, dtype=np.int64),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        meta = {"kind": "phdbscan", "params": asdict(self.params),
                "n": int(self._data.shape[0]), "dim": int(self._data.shape[1])}
        # the bytes Lake.write_json wrote, so folders saved before to_files existed load unchanged
        return {MODEL_FILE: json.dumps(meta, indent=2, sort_keys=True, default=str).encode(),
                ARRAYS_FILE: buffer.getvalue()}

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> "PHDBSCAN":
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
        model = cls(**meta["params"])
        try:
            arrays = np.load(io.BytesIO(files[ARRAYS_FILE]))
            names = arrays.files  # a .npy, not an .npz, has none
        except (ValueError, OSError, AttributeError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a pHDBSCAN model: {ARRAYS_FILE} is not an npz archive ({exc})") from None
        absent = [name for name in _ARRAY_NAMES if name not in names]
        if absent:
            raise ValueError(f"not a complete pHDBSCAN model: {ARRAYS_FILE} lacks {', '.join(absent)}")
        model._data = arrays["data"]
        model._index = None
        model.result_ = HDBSCANResult(
            labels=arrays["labels"], probabilities=arrays["probabilities"], outlier_scores=arrays["outlier_scores"],
            condensed_tree=arrays["condensed_tree"], single_linkage=arrays["single_linkage"],
            selected_clusters=[int(c) for c in arrays["selected_clusters"]],
            cluster_persistence=arrays["cluster_persistence"], core_distances=arrays["core_distances"],
        )
        return model
