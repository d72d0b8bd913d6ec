"""pHDBSCAN sharded over Ray actors, for data beyond one machine's index.

    shard actors (one FAISS index each, GPU actors when Ray has GPUs)
      -> every query batch fans out to all shards, top-k merged        (kNN graph)
      -> each actor: spanning forest of the edges whose source rows it owns
      -> driver: Kruskal over the union of forests (= the MST of all edges), component joins,
         condensing and selection

The union of per-partition minimum spanning forests contains the MST of the whole edge set
(an edge dropped by a partition is the heaviest on a cycle there), and edges share one total
order, so on the same kNN graph the labels equal the single-node ones exactly.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from lakelens.operators.hdbscan.knn import KnnGraph, build_index, merge_topk, search
from lakelens.operators.hdbscan.model import (
    HDBSCANParams, HDBSCANResult, fit_hdbscan, hdbscan_from_mst, join_forest, log_step,
)
from lakelens.operators.hdbscan.mst import (
    core_distances,
    knn_spanning_forest,
    minimum_spanning_forest,
)

log = logging.getLogger(__name__)
PROGRESS_LINES = 20  # kNN batch progress lines per fit, at most


class ShardIndex:
    """One shard: its rows' index, searchable with any queries, plus its rows' spanning forest."""

    def __init__(self, shard: np.ndarray, offset: int, method: str, device: str, seed: int) -> None:
        self.shard = np.ascontiguousarray(shard, dtype=np.float32)
        self.offset = offset
        self.index = build_index(self.shard, method=method, device=device, seed=seed)

    def search(self, queries: np.ndarray, k: int) -> KnnGraph:
        found = search(self.index, self.shard, queries, min(k, self.shard.shape[0]))
        return KnnGraph(found.distances, found.indices + self.offset)

    def spanning_forest(self, graph_rows: KnnGraph, core: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
        rows = np.arange(self.offset, self.offset + graph_rows.indices.shape[0])
        return knn_spanning_forest(graph_rows, core, rows=rows)


def fit_sharded(data: np.ndarray, params: HDBSCANParams, num_shards: int, graph: KnnGraph | None = None,
                batch: int = 65_536) -> HDBSCANResult:
    """Like fit_hdbscan, with the index, searches and spanning forests spread over Ray actors."""
    import ray

    params.check()
    n = data.shape[0]
    if n < 2 or num_shards <= 1:
        return fit_hdbscan(data, params, graph)
    samples = min(params.samples, n - 1)
    bounds = np.linspace(0, n, num_shards + 1).astype(np.int64)
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0) >= num_shards
    # every shard must be resident at once (each query fans out to all), so ask for a fair share
    cpu_share = min(1.0, resources.get("CPU", 1) / num_shards)
    actor = ray.remote(num_cpus=0 if gpus else cpu_share, num_gpus=1 if gpus else 0)(ShardIndex)
    device = "cuda" if gpus else "cpu"
    method = "exact" if params.knn_method == "auto" and n <= 200_000 else params.knn_method
    method = "ivf" if method in ("auto", "cells") else method  # each shard holds a FAISS index
    fit_started = time.perf_counter()
    log.info("sharded fit: %d points over %d %s shards (%s)", n, num_shards, device, method,
             extra={"sizes": {"points": n, "shards": num_shards}})
    shards = [actor.remote(data[lo:hi], int(lo), method, device, params.seed) for lo, hi in zip(bounds, bounds[1:])]
    try:
        if graph is None:
            started = time.perf_counter()
            k = min(n, max(samples + 1, params.knn_k or 16))
            parts = []
            total = -(-n // batch)
            every = max(1, total // PROGRESS_LINES)
            for lo in range(0, n, batch):
                queries = ray.put(data[lo:lo + batch])
                parts.append(merge_topk(ray.get([s.search.remote(queries, k) for s in shards]), k))
                if len(parts) % every == 0 or len(parts) == total:
                    log.info("knn batches: %d/%d", len(parts), total,
                             extra={"step": "knn batches", "progress": {"done": len(parts), "total": total},
                                    "elapsed_s": round(time.perf_counter() - started, 3)})
            graph = KnnGraph(np.concatenate([p.distances for p in parts]), np.concatenate([p.indices for p in parts]))
            log_step(log, "knn graph", started, points=n, k=k, shards=num_shards)
        started = time.perf_counter()
        core = core_distances(graph, samples)
        log_step(log, "core distances", started, points=n, min_samples=samples)
        started = time.perf_counter()
        core_ref = ray.put(core)
        forests = ray.get([
            s.spanning_forest.remote(KnnGraph(graph.distances[lo:hi], graph.indices[lo:hi]), core_ref, n)
            for s, lo, hi in zip(shards, bounds, bounds[1:])
        ])
        log_step(log, "shard forests", started, shards=num_shards, edges=sum(f[0].size for f in forests))
    finally:
        for s in shards:
            ray.kill(s)
    started = time.perf_counter()
    a, b, w = minimum_spanning_forest(n, *(np.concatenate(parts) for parts in zip(*forests)))
    log_step(log, "spanning forest", started, edges=a.size, components=n - a.size)
    a, b, w, joins = join_forest(data, core, a, b, w, params)
    result = hdbscan_from_mst(n, a, b, w, core, params)
    result.joins = joins
    log_step(log, "sharded fit", fit_started, points=n, clusters=len(result.selected_clusters),
             noise=int((result.labels < 0).sum()))
    return result
