"""pHDBSCAN sharded over Ray actors, for data beyond one machine's index and memory.

Two entry points:

- `fit_sharded(data, ...)`: the driver holds the rows and the kNN graph; the index, searches and
  spanning forests are spread over actors (spreads the compute, not the memory).
- `fit_sharded_blocks(readers, ...)`: the rows never reach the driver. Each shard actor reads its
  own block (a picklable zero-argument callable: infra/feature_blocks.py reads Parquet from the
  lake) and

      builds its index                                     (knn.build_index)
      -> fan-out kNN: its rows' query batches go to every shard, the per-shard top-k come back
         shard to shard (the driver only routes object refs) and are merged on the owner;
         the owner keeps its rows' kNN lists
      -> core distances of its rows (the merged top-k), neighbours' cores asked of their owners
      -> the spanning forest of the edges its rows own
      -> component joins: per Borůvka round, for its rows, the lightest mutual-reachability edge
         to a point of another component, answered by every shard for its own points

  Only core distances (8 B/point), forests (24 B/edge) and join candidates (one per component)
  travel to the driver, which runs Kruskal over forests + joins and `hdbscan_from_mst`.

The union of per-partition minimum spanning forests contains the MST of the whole edge set
(an edge dropped by a partition is the heaviest on a cycle there), edges share one total order
(weight, min id, max id), and joins find each component's exact lightest outgoing edge as
`mst.connect_components` does, so on the same (exact) kNN graph the labels equal the single-node
ones exactly.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from lakelens.operators.hdbscan.knn import KnnGraph, build_index, merge_topk, search
from lakelens.operators.hdbscan.model import (
    HDBSCANParams, HDBSCANResult, fit_hdbscan, hdbscan_from_mst, join_forest, log_step,
)
from lakelens.operators.hdbscan.mst import (
    JoinReport,
    component_labels,
    core_distances,
    knn_spanning_forest,
    minimum_spanning_forest,
)
from lakelens.operators.memory_plan import MemoryCap

log = logging.getLogger(__name__)
PROGRESS_LINES = 20  # kNN batch progress lines per fit, at most
EXACT_SHARDED_MAX_N = 200_000  # `auto` searches exactly up to here, IVF beyond
JOIN_SEEDS = 4  # members per component and shard searched first, for an upper bound that prunes the rest
FILTER_MAX_SAME = 64  # join searches drop up to this many same-component hits, else search through a bitmap


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


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
    method = "exact" if params.knn_method == "auto" and n <= EXACT_SHARDED_MAX_N else params.knn_method
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


# -- the storage-fed sharded fit ---------------------------------------------------------------------------

Reader = Callable[[], np.ndarray]


@dataclass
class ShardStats:
    """What one shard actor measured: rows, per-stage seconds, its process's peak RSS and where it ran."""

    shard: int
    rows: int
    node: str
    seconds: dict[str, float]
    peak_rss_bytes: int
    counts: dict[str, int] = field(default_factory=dict)  # e.g. rows searched for component joins

    def rate(self, stage: str) -> float:
        """Points per second this shard processed in `stage` (its own rows)."""
        s = self.seconds.get(stage, 0.0)
        return self.rows / s if s > 0 else float("inf")


@dataclass
class ShardedReport:
    """The sharded fit's measurements: driver stages and peak RSS, each shard's, the joins."""

    points: int
    shards: int
    k: int
    method: str
    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    driver_peak_rss_bytes: int = 0
    driver_cap_bytes: int | None = None
    shard_stats: list[ShardStats] = field(default_factory=list)
    forest_edges: int = 0  # edges the shards' forests sent to the driver, all together
    largest_forest: int = 0  # edges of the largest one (the driver holds one at a time)
    joins: JoinReport = field(default_factory=JoinReport)


def forest_of_rows(rows: np.ndarray, graph: KnnGraph, core_of_ids: Callable[[np.ndarray], np.ndarray]
                   ) -> tuple[np.ndarray, ...]:
    """The minimum spanning forest of the mutual-reachability edges of some rows' kNN lists, in edge order.

    Ids are compacted to the rows and their neighbours (np.unique keeps their order, so the edge
    order, hence the forest, is the one global ids give) so that no array spans all n points;
    `core_of_ids(ids)` gives the core distances of sorted global ids."""
    indices = graph.indices
    ids = np.unique(np.concatenate([rows, indices[indices >= 0]]))
    local = np.where(indices >= 0, np.searchsorted(ids, indices), -1)
    a, b, w = knn_spanning_forest(KnnGraph(graph.distances, local), core_of_ids(ids), rows=np.searchsorted(ids, rows))
    return ids[a], ids[b], w


def lighter_edges(w1: np.ndarray, lo1: np.ndarray, hi1: np.ndarray, w2: np.ndarray, lo2: np.ndarray,
                  hi2: np.ndarray) -> np.ndarray:
    """Where edge 1 comes before edge 2 in edge order (weight, min id, max id); -1 ids mean none found."""
    before = (w1 < w2) | ((w1 == w2) & ((lo1 < lo2) | ((lo1 == lo2) & (hi1 < hi2))))
    return (lo1 >= 0) & (before | (lo2 < 0))


def lightest_per_label(labels: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each label present (with an edge found), its lightest edge in edge order: (labels, w, lo, hi)."""
    found = lo >= 0
    labels, w, lo, hi = labels[found], w[found], lo[found], hi[found]
    order = np.lexsort((hi, lo, w, labels))
    labels, w, lo, hi = labels[order], w[order], lo[order], hi[order]
    first = np.ones(labels.size, dtype=bool)
    first[1:] = labels[1:] != labels[:-1]
    return labels[first], w[first], lo[first], hi[first]


class BlockShard:
    """A shard actor: its rows (read by itself), their index, kNN lists, core distances and forest."""

    def __init__(self, reader: Reader, shard: int) -> None:
        started = time.perf_counter()
        self.shard = shard
        self.rows = np.ascontiguousarray(reader(), dtype=np.float32)
        self.seconds = {"read": time.perf_counter() - started}
        self.counts: dict[str, int] = {}
        self.index = self.join_index = None

    def size(self) -> int:
        return int(self.rows.shape[0])

    def place(self, offset: int, bounds: np.ndarray) -> None:
        """Its global row offset, and every shard's [start, end) ids (to route neighbour lookups)."""
        self.offset, self.bounds = int(offset), np.asarray(bounds, dtype=np.int64)
        self.ids = np.arange(self.offset, self.offset + self.size(), dtype=np.int64)

    def build(self, method: str, device: str, seed: int) -> None:
        started = time.perf_counter()
        self.method, self.device = method, device
        self.index = build_index(self.rows, method=method, device=device, seed=seed)
        self.seconds["index"] = time.perf_counter() - started

    def query_rows(self, lo: int, hi: int) -> np.ndarray:
        """A batch of its own rows (it goes to the object store, and from there to every shard)."""
        return self.rows[lo:hi]

    def search(self, queries: np.ndarray, k: int) -> KnnGraph:
        started = time.perf_counter()
        found = search(self.index, self.rows, queries, min(k, self.size()))
        self.seconds["search"] = self.seconds.get("search", 0.0) + time.perf_counter() - started
        return KnnGraph(found.distances, found.indices + self.offset)

    def keep_knn(self, lo: int, k: int, *parts: KnnGraph) -> int:
        """Merge every shard's top-k for its rows [lo, lo + batch) into their kNN lists."""
        started = time.perf_counter()
        merged = merge_topk(list(parts), k)
        if not hasattr(self, "distances"):
            self.distances = np.full((self.size(), k), np.inf)
            self.indices = np.full((self.size(), k), -1, dtype=np.int64)
        hi = lo + merged.indices.shape[0]
        self.distances[lo:hi], self.indices[lo:hi] = merged.distances, merged.indices
        self.seconds["merge"] = self.seconds.get("merge", 0.0) + time.perf_counter() - started
        return hi - lo

    def core(self, samples: int) -> np.ndarray:
        self.core_own = core_distances(KnnGraph(self.distances, self.indices), samples)
        return self.core_own

    def neighbour_requests(self) -> list[np.ndarray]:
        """Per shard, the ids of its points this shard's kNN lists name (their core distances are needed)."""
        ids = np.unique(self.indices[self.indices >= 0])
        owner = np.searchsorted(self.bounds, ids, side="right") - 1
        return [np.empty(0, np.int64) if s == self.shard else ids[owner == s] for s in range(self.bounds.size - 1)]

    def cores_of(self, ids: np.ndarray) -> np.ndarray:
        return self.core_own[ids - self.offset]

    def forest(self, *answers: np.ndarray) -> tuple[np.ndarray, ...]:
        """Its rows' spanning forest, given the core distances of the neighbours other shards own."""
        started = time.perf_counter()
        requests = self.neighbour_requests()
        requests[self.shard] = self.ids
        answers = list(answers)
        answers[self.shard] = self.core_own
        known = np.concatenate(requests)
        cores = np.concatenate(answers)
        order = np.argsort(known, kind="stable")
        known, cores = known[order], cores[order]

        def core_of_ids(ids: np.ndarray) -> np.ndarray:
            return cores[np.searchsorted(known, ids)]

        forest = forest_of_rows(self.ids, KnnGraph(self.distances, self.indices), core_of_ids)
        self.seconds["forest"] = time.perf_counter() - started
        # the lower bound on any edge out of a row's component: every point off its (exact) kNN
        # list is at least as far as the list's last finite entry, and every list entry is inside
        finite = np.where(np.isfinite(self.distances), self.distances, -np.inf).max(axis=1)
        self.join_bound = np.maximum(self.core_own, finite)
        return forest

    # -- component joins ---------------------------------------------------------------------------

    def set_labels(self, labels: np.ndarray) -> None:
        """Its rows' component labels for this join round."""
        self.labels = np.asarray(labels, dtype=np.int64)

    def sample(self, count: int, seed: int) -> np.ndarray:
        """Some of its rows, for the driver to train the join cells' centroids on."""
        rng = np.random.default_rng(seed + self.shard)
        return self.rows[np.sort(rng.choice(self.size(), min(count, self.size()), replace=False))]

    def set_cells(self, centroids: np.ndarray) -> None:
        """Assign its rows to the join cells: cell id and float64 distance to the centroid."""
        started = time.perf_counter()
        self.centroids = np.asarray(centroids, dtype=np.float64)
        self.cell = np.empty(self.size(), dtype=np.int64)
        self.to_centroid = np.empty(self.size())
        for lo in range(0, self.size(), 1 << 16):
            to_cells = _distances_to(self.rows[lo:lo + (1 << 16)], self.centroids)
            self.cell[lo:lo + (1 << 16)] = to_cells.argmin(axis=1)
            self.to_centroid[lo:lo + (1 << 16)] = to_cells.min(axis=1)
        self.seconds["joins"] = self.seconds.get("joins", 0.0) + time.perf_counter() - started

    def cell_radii(self) -> tuple[np.ndarray, ...]:
        """Per cell: the largest distance of its rows here to the centroid, that row's component,
        and the largest over rows of any other component (-inf where none)."""
        cells = self.centroids.shape[0]
        top = np.full(cells, -np.inf)
        np.maximum.at(top, self.cell, self.to_centroid)
        at_top = self.to_centroid == top[self.cell]
        top_label = np.full(cells, -1, dtype=np.int64)
        top_label[self.cell[at_top]] = self.labels[at_top]
        second = np.full(cells, -np.inf)
        other = self.labels != top_label[self.cell]
        np.maximum.at(second, self.cell[other], self.to_centroid[other])
        return top, top_label, second

    def join_queries(self, largest: int, upper: np.ndarray | None,
                     radii: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Its rows that may own their component's lightest outgoing edge: not in the largest
        component; with `upper` (an edge weight per component, or None for the seeding pass) only
        rows whose lower bound does not exceed it, else the JOIN_SEEDS lowest-bound rows per component.

        A row's lower bound is the larger of its kNN bound and its cell bound: any point o of
        another component in cell j is at least |row - c_j| - r_j away, r_j the largest distance
        to c_j of such points (`radii`: merged over shards by `merge_radii`)."""
        rows = np.flatnonzero(self.labels != largest)
        if upper is None:
            self.cell_bound = np.full(self.size(), np.inf)
            top, top_label, second = radii
            for lo in range(0, rows.size, 1 << 14):
                chunk = rows[lo:lo + (1 << 14)]
                own = self.labels[chunk]
                radius = np.where(top_label[None, :] == own[:, None], second[None, :], top[None, :])
                gap = _distances_to(self.rows[chunk], self.centroids) - radius
                self.cell_bound[chunk] = np.where(np.isfinite(radius), gap, np.inf).min(axis=1)
        bound = np.maximum(self.join_bound[rows], self.cell_bound[rows])
        if upper is None:
            order = np.lexsort((bound, self.labels[rows]))
            rows = rows[order]
            starts = np.flatnonzero(np.r_[True, self.labels[rows][1:] != self.labels[rows][:-1]])
            rank = np.arange(rows.size) - np.repeat(starts, np.diff(np.r_[starts, rows.size]))
            rows = np.sort(rows[rank < JOIN_SEEDS])
        else:
            rows = rows[bound <= upper[self.labels[rows]]]
            rows = rows[~np.isin(rows, self.seeds)]
        if upper is None:
            self.seeds = rows
        self.pending = rows
        self.counts["join queries"] = self.counts.get("join queries", 0) + int(rows.size)
        limit = np.full(rows.size, np.inf) if upper is None else upper[self.labels[rows]]
        return self.rows[rows], self.ids[rows], self.core_own[rows], self.labels[rows], limit

    def nearest_outside(self, queries: tuple[np.ndarray, ...], k: int) -> tuple[np.ndarray, ...]:
        """For each query (rows, ids, cores, labels), its lightest mutual-reachability edge to a point
        of this shard in another component: (w, lo, hi), lo = -1 where none. Exact: searches widen
        while the k-th distance could still tie or beat the best edge found."""
        started = time.perf_counter()
        rows, ids, core, labels, limit = queries
        out_w = np.full(ids.size, np.inf)
        out_lo = np.full(ids.size, -1, dtype=np.int64)
        out_hi = np.full(ids.size, -1, dtype=np.int64)
        index = self._join_index()
        top, top_label, second = self.cell_radii()
        for label in np.unique(labels):
            q = np.flatnonzero(labels == label)
            same = self.labels == label
            upper = float(limit[q].max())
            if np.isfinite(upper):
                # only cells whose points could still tie or beat the component's best edge
                radius = np.where(top_label == label, second, top)
                gap = _distances_to(rows[q], self.centroids) - radius[None, :]
                reach = np.isfinite(radius) & (gap <= upper).any(axis=0)
                allowed = ~same & reach[self.cell]
            else:
                allowed = ~same
            outside = int(allowed.sum())
            if outside == 0:
                continue
            same_count = int(same.sum())
            if same_count <= FILTER_MAX_SAME and not np.isfinite(upper):
                found = self._outside_by_filter(index, rows[q], ids[q], core[q], same, k + same_count, outside)
            else:
                found = self._outside_by_bitmap(index, rows[q], ids[q], core[q], allowed, k, outside)
            out_w[q], out_lo[q], out_hi[q] = found
        self.seconds["joins"] = self.seconds.get("joins", 0.0) + time.perf_counter() - started
        return out_w, out_lo, out_hi

    def _join_index(self):
        """An exact index over its rows: the kNN index when exact on CPU, an exhaustive IVF probe,
        else a flat copy (GPU and HNSW indexes take no selectors)."""
        if self.join_index is None:
            import faiss

            if self.method == "exact" and self.device == "cpu":
                self.join_index = self.index
            elif self.method == "ivf" and self.device == "cpu":
                self.index.nprobe = self.index.nlist
                self.join_index = self.index
            else:
                self.join_index = faiss.IndexFlatL2(self.rows.shape[1])
                self.join_index.add(self.rows)
        return self.join_index

    def _outside_by_filter(self, index, rows, ids, core, same, k, outside) -> tuple[np.ndarray, ...]:
        """Search unrestricted and drop this component's points: for queries whose component has few here."""
        best = (np.full(ids.size, np.inf), np.full(ids.size, -1, np.int64), np.full(ids.size, -1, np.int64))
        pending = np.arange(ids.size)
        k = min(k, self.size())
        while pending.size:
            found = search(index, self.rows, rows[pending], k)
            local = np.where(found.indices >= 0, found.indices, 0)
            valid = (found.indices >= 0) & ~same[local]
            self._improve(best, pending, ids[pending], core[pending], local, found.distances, valid)
            if k >= self.size():
                break
            bound = np.maximum(core[pending], found.distances[:, -1])
            pending = pending[bound <= best[0][pending]]
            k = min(2 * k, self.size())
        return best

    def _outside_by_bitmap(self, index, rows, ids, core, allowed, k, outside) -> tuple[np.ndarray, ...]:
        """Search only points outside the component, through a FAISS bitmap selector."""
        import faiss

        bits = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(allowed.size, faiss.swig_ptr(bits))
        params = (faiss.SearchParametersIVF(sel=selector, nprobe=index.nlist) if hasattr(index, "nlist")
                  else faiss.SearchParameters(sel=selector))
        best = (np.full(ids.size, np.inf), np.full(ids.size, -1, np.int64), np.full(ids.size, -1, np.int64))
        pending = np.arange(ids.size)
        k = min(k, outside)
        while pending.size:
            _, idx = index.search(np.ascontiguousarray(rows[pending]), int(k), params=params)
            from lakelens.operators.hdbscan.knn import exact_distances

            distances = exact_distances(self.rows, rows[pending], idx)
            local = np.where(idx >= 0, idx, 0)
            self._improve(best, pending, ids[pending], core[pending], local, distances, idx >= 0)
            if k >= outside:
                break
            bound = np.maximum(core[pending], np.where(idx[:, -1] >= 0, distances[:, -1], np.inf))
            pending = pending[bound <= best[0][pending]]
            k = min(2 * k, outside)
        return best

    def _improve(self, best, pending, ids, core, local, distances, valid) -> None:
        """Fold each pending query's valid candidates into its best edge, in edge order."""
        other = self.ids[local]
        weight = np.where(valid, np.maximum(np.maximum(core[:, None], self.core_own[local]), distances), np.inf)
        lo = np.where(valid, np.minimum(ids[:, None], other), np.iinfo(np.int64).max)
        hi = np.where(valid, np.maximum(ids[:, None], other), np.iinfo(np.int64).max)
        pick = np.lexsort((hi, lo, weight), axis=-1)[:, 0]
        at = np.arange(pending.size)
        w, l, h = weight[at, pick], lo[at, pick], hi[at, pick]
        l = np.where(valid[at, pick], l, -1)
        h = np.where(l >= 0, h, -1)
        better = lighter_edges(w, l, h, best[0][pending], best[1][pending], best[2][pending])
        target = pending[better]
        best[0][target], best[1][target], best[2][target] = w[better], l[better], h[better]

    def lightest_out(self, *answers: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Merge every shard's answer for its pending rows; per component, the lightest edge found."""
        rows = self.pending
        w = np.full(rows.size, np.inf)
        lo = np.full(rows.size, -1, dtype=np.int64)
        hi = np.full(rows.size, -1, dtype=np.int64)
        for aw, alo, ahi in answers:
            better = lighter_edges(aw, alo, ahi, w, lo, hi)
            w[better], lo[better], hi[better] = aw[better], alo[better], ahi[better]
        return lightest_per_label(self.labels[rows], w, lo, hi)

    def stats(self) -> ShardStats:
        import ray

        return ShardStats(self.shard, self.size(), ray.get_runtime_context().get_node_id()[:12],
                          {k: round(v, 3) for k, v in self.seconds.items()}, peak_rss_bytes(), dict(self.counts))


def _distances_to(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Euclidean distances (float64) from rows to every centroid."""
    points = rows.astype(np.float64)
    return np.sqrt(np.maximum((points ** 2).sum(1)[:, None] + (centroids ** 2).sum(1)[None, :]
                              - 2 * points @ centroids.T, 0))


def merge_radii(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Merge the shards' `cell_radii`: per cell the largest radius, its component, and the largest
    radius of any other component (a shard whose top is that component gives its own second)."""
    tops = np.stack([p[0] for p in parts])
    labels = np.stack([p[1] for p in parts])
    seconds = np.stack([p[2] for p in parts])
    winner = tops.argmax(axis=0)
    cells = np.arange(tops.shape[1])
    top, top_label = tops[winner, cells], labels[winner, cells]
    others = np.where(labels == top_label[None, :], seconds, tops)
    return top, top_label, others.max(axis=0)


def shard_placement(num_shards: int, device: str = "auto") -> tuple[str, dict]:
    """The device the shard actors use and their Ray resource options: one GPU each when the
    cluster has a GPU per shard (and `device` allows), else a fair share of the CPUs."""
    import ray

    resources = ray.cluster_resources()
    gpus = device != "cpu" and resources.get("GPU", 0) >= num_shards
    if device == "cuda" and not gpus:
        raise ValueError(f"device='cuda' but the Ray cluster has {resources.get('GPU', 0):.0f} GPUs for "
                         f"{num_shards} shards")
    if gpus:
        return "cuda", {"num_cpus": 0, "num_gpus": 1}
    # every shard must be resident at once (each query fans out to all), so ask for a fair share
    return "cpu", {"num_cpus": min(1.0, resources.get("CPU", 1) / num_shards), "num_gpus": 0}


def fit_sharded_blocks(readers: Sequence[Reader], params: HDBSCANParams, *, batch: int = 65_536,
                       shard_memory_bytes: int | None = None, driver_cap_bytes: int | None = None,
                       keep_actors: bool = False) -> tuple[HDBSCANResult, ShardedReport]:
    """pHDBSCAN over rows that stay on the shard actors: shard s holds the rows `readers[s]()`
    returns, and labels come back in the readers' order (shard 0's rows first).

    `shard_memory_bytes` reserves Ray's `memory` resource per actor (a memory_plan estimate), so
    Ray places no more shards on a node than its memory holds. `driver_cap_bytes` runs the driver
    side under a `MemoryCap`: past it the fit fails fast with DriverMemoryExceeded."""
    import ray

    params.check()
    if len(readers) < 1:
        raise ValueError("fit_sharded_blocks needs at least one reader")
    with MemoryCap(driver_cap_bytes, what="the sharded fit's driver") as cap:
        result, report = _fit_blocks(ray, list(readers), params, batch, shard_memory_bytes)
    report.driver_peak_rss_bytes = cap.peak
    report.driver_cap_bytes = driver_cap_bytes
    return result, report


def _fit_blocks(ray, readers: list[Reader], params: HDBSCANParams, batch: int,
                shard_memory_bytes: int | None) -> tuple[HDBSCANResult, ShardedReport]:
    fit_started = time.perf_counter()
    S = len(readers)
    device, options = shard_placement(S, params.device)
    if shard_memory_bytes:
        options["memory"] = int(shard_memory_bytes)
    actor = ray.remote(**options, scheduling_strategy="SPREAD")(BlockShard)
    shards = [actor.remote(reader, s) for s, reader in enumerate(readers)]
    try:
        started = time.perf_counter()
        sizes = np.array(ray.get([s.size.remote() for s in shards]), dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        n = int(bounds[-1])
        seconds = {"read": time.perf_counter() - started}
        samples = min(params.samples, max(n - 1, 1))
        k = min(n, max(samples + 1, params.knn_k or 16))
        method = "exact" if params.knn_method == "auto" and n <= EXACT_SHARDED_MAX_N else params.knn_method
        method = "ivf" if method in ("auto", "cells") else method
        report = ShardedReport(n, S, k, method, device)
        log.info("sharded fit from blocks: %d points over %d %s shards (%s, k=%d)", n, S, device, method, k,
                 extra={"sizes": {"points": n, "shards": S}})
        if n < 2:
            raise ValueError(f"a sharded fit needs at least 2 points, got {n}")
        ray.get([s.place.remote(int(lo), bounds) for s, lo in zip(shards, bounds)])
        started = time.perf_counter()
        ray.get([s.build.remote(method, device, params.seed) for s in shards])
        seconds["index"] = log_step(log, "shard indexes", started, shards=S)

        started = time.perf_counter()
        _fan_out_knn(ray, shards, sizes, k, batch)
        seconds["knn"] = log_step(log, "knn graph", started, points=n, k=k, shards=S)

        started = time.perf_counter()
        core = np.concatenate(ray.get([s.core.remote(samples) for s in shards]))
        requests = [s.neighbour_requests.options(num_returns=S).remote() for s in shards]
        if S == 1:
            requests = [[r] for r in requests]
        # every lookup is queued before any forest, so no actor's forest waits behind another's
        answers = [[shards[j].cores_of.remote(requests[i][j]) for j in range(S)] for i in range(S)]
        pending = [shards[i].forest.remote(*answers[i]) for i in range(S)]
        # one forest at a time, folded into the running one: the driver holds at most n - 1 edges plus
        # one shard's forest (which spans its rows and their foreign neighbours), whatever S is
        a, b, w = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            fa, fb, fw = ray.get(ready[0])
            report.forest_edges += int(fa.size)
            report.largest_forest = max(report.largest_forest, int(fa.size))
            a, b, w = minimum_spanning_forest(n, np.concatenate([a, fa]), np.concatenate([b, fb]),
                                              np.concatenate([w, fw]))
            del fa, fb, fw
        seconds["forest"] = log_step(log, "spanning forest", started, edges=a.size, components=n - a.size)

        started = time.perf_counter()
        a, b, w = _join_components(ray, shards, bounds, core, a, b, w, k, report.joins, params.seed)
        seconds["joins"] = time.perf_counter() - started
        if report.joins.components > 1:
            log_step(log, "component joins", started, components=report.joins.components,
                     rounds=report.joins.rounds, certified=report.joins.certified)
        report.shard_stats = ray.get([s.stats.remote() for s in shards])
    finally:
        for s in shards:
            ray.kill(s)
    started = time.perf_counter()
    result = hdbscan_from_mst(n, a, b, w, core, params)
    result.joins = report.joins
    seconds["tree"] = time.perf_counter() - started
    seconds["total"] = log_step(log, "sharded fit", fit_started, points=n, clusters=len(result.selected_clusters),
                                noise=int((result.labels < 0).sum()))
    result.timings = dict(seconds)
    report.seconds = seconds
    return result, report


def _fan_out_knn(ray, shards: list, sizes: np.ndarray, k: int, batch: int) -> None:
    """Every shard's rows, batch by batch, searched by every shard and merged on the owner. The
    driver holds object refs only. Actors run calls in submission order, so each round's merges
    are queued after the next round's searches (a merge waits on other shards' searches), and at
    most two rounds are in flight."""
    rounds = [[(i, lo) for i in range(len(shards)) if lo < sizes[i]] for lo in range(0, int(sizes.max()), batch)]
    total = sum(len(r) for r in rounds)
    every = max(1, total // PROGRESS_LINES)
    started = time.perf_counter()
    waiting, merging, done = [], [], 0
    for round_ in rounds + [[]]:
        searched = []
        for i, lo in round_:
            queries = shards[i].query_rows.remote(lo, min(int(sizes[i]), lo + batch))
            searched.append((i, lo, [s.search.remote(queries, k) for s in shards]))
        merging.append([shards[i].keep_knn.remote(lo, k, *parts) for i, lo, parts in waiting])
        waiting = searched
        while len(merging) > 1:
            finished = ray.get(merging.pop(0))
            done += len(finished)
            if finished and done % every < len(finished):
                log.info("knn batches: %d/%d", done, total,
                         extra={"step": "knn batches", "progress": {"done": done, "total": total},
                                "elapsed_s": round(time.perf_counter() - started, 3)})
    for refs in merging:
        ray.get(refs)


def _place_cells(ray, shards: list, n: int, seed: int) -> None:
    """k-means cells for the join bounds (as mst.CoarseCells), trained on the driver from a small
    sample the shards send (256 rows per cell at most, all shards together)."""
    import faiss

    cells = int(min(256, max(1, n // 64)))
    per_shard = -(-256 * cells // len(shards))
    sample = np.concatenate(ray.get([s.sample.remote(per_shard, seed) for s in shards]))
    kmeans = faiss.Kmeans(sample.shape[1], cells, niter=10, seed=seed, verbose=False)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    centroids = ray.put(kmeans.centroids.astype(np.float64))
    ray.get([s.set_cells.remote(centroids) for s in shards])


def _join_components(ray, shards: list, bounds: np.ndarray, core: np.ndarray, a: np.ndarray, b: np.ndarray,
                     w: np.ndarray, k: int, report: JoinReport, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Borůvka rounds as in mst.connect_components, with every search on the shards: each round,
    every component but the largest gets its exact lightest mutual-reachability edge to any other
    point. A seeding pass (a few rows per component) gives an upper bound per component that
    prunes rows whose own lower bound already exceeds it."""
    n = core.size
    labels = component_labels(n, a, b)
    report.components = int(labels.max()) + 1
    if labels.max() > 0:
        _place_cells(ray, shards, n, seed)
    while labels.max() > 0:
        report.rounds += 1
        sizes = np.bincount(labels)
        largest = int(np.argmax(sizes))
        ray.get([s.set_labels.remote(labels[lo:hi]) for s, lo, hi in zip(shards, bounds, bounds[1:])])
        radii = ray.put(merge_radii(ray.get([s.cell_radii.remote() for s in shards])))
        comps = sizes.size
        best = (np.full(comps, np.inf), np.full(comps, -1, np.int64), np.full(comps, -1, np.int64))
        for upper in (None, best[0]):
            upper_ref = None if upper is None else ray.put(upper)
            queries = [s.join_queries.remote(largest, upper_ref, radii) for s in shards]
            answers = [[s.nearest_outside.remote(queries[i], k) for s in shards] for i in range(len(shards))]
            found = ray.get([shards[i].lightest_out.remote(*answers[i]) for i in range(len(shards))])
            for comp, cw, clo, chi in found:
                better = lighter_edges(cw, clo, chi, best[0][comp], best[1][comp], best[2][comp])
                target = comp[better]
                best[0][target], best[1][target], best[2][target] = cw[better], clo[better], chi[better]
        joined = best[1] >= 0
        missing = np.setdiff1d(np.flatnonzero(np.arange(comps) != largest), np.flatnonzero(joined))
        if missing.size:
            raise RuntimeError(f"component joins found no outgoing edge for {missing.size} components")
        report.certified += int(joined.sum())
        cand = np.unique(np.column_stack([best[0][joined], best[1][joined], best[2][joined]]), axis=0)
        a, b, w = minimum_spanning_forest(n, np.concatenate([a, cand[:, 1].astype(np.int64)]),
                                          np.concatenate([b, cand[:, 2].astype(np.int64)]),
                                          np.concatenate([w, cand[:, 0]]))
        labels = component_labels(n, a, b)
    return a, b, w


def cluster_node_memory() -> list[int]:
    """Each alive Ray node's `memory` resource in bytes (what `ray start --memory` gave it), for the plan."""
    import ray

    return [int(node["Resources"].get("memory", 0)) for node in ray.nodes()
            if node.get("Alive") and node["Resources"].get("CPU", 0) + node["Resources"].get("GPU", 0) > 0]
