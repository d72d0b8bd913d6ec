"""Core distances, mutual reachability, and the minimum spanning tree over a kNN graph.

A kNN graph is often disconnected. Components are joined Borůvka-style by their exact lightest
outgoing edge under mutual reachability over *all* points (not only kNN pairs), found with
FAISS searches over the points outside each component and certified by a lower bound, never
by arbitrary links.

Edges are totally ordered by (weight, min endpoint, max endpoint) so ties resolve identically
in single-node and sharded runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

from lakelens.operators.hdbscan.knn import KnnGraph, build_index, search


def core_distances(graph: KnnGraph, min_samples: int) -> np.ndarray:
    """Distance to the min_samples-th neighbour other than the point itself (the hdbscan library's convention)."""
    k = graph.distances.shape[1]
    if min_samples >= k:
        raise ValueError(f"min_samples={min_samples} needs a kNN graph with k > min_samples (self included), got k={k}")
    return graph.distances[:, min_samples].copy()


def knn_edges(graph: KnnGraph, core: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Undirected mutual-reachability edges (a < b) of the kNN graph, deduplicated, in edge order.

    The explicit edge set that `knn_spanning_forest` walks implicitly; Kruskal over it is the
    reference the Borůvka forest is tested against.

    `rows` gives the global point ids of the graph's rows, as one shard does; a row's edges are
    dropped when the other end lists it too and owns the edge (smaller id), so shards agree.
    """
    sources = np.arange(graph.indices.shape[0], dtype=np.int64) if rows is None else rows.astype(np.int64)
    full = graph.indices if rows is None else None
    lo, hi, d = _unique_pairs(sources, graph.indices, graph.distances,
                              full if full is not None else np.empty((0, 0), np.int64))
    w = np.maximum(np.maximum(core[lo], core[hi]), d)
    order = edge_order(lo, hi, w, core.size)
    return lo[order], hi[order], w[order]


def edge_order(lo: np.ndarray, hi: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """Permutation into edge order (weight, min endpoint, max endpoint); lo <= hi, ids < n."""
    return np.lexsort((lo.astype(np.int64) * np.int64(n) + hi, w))


@njit(cache=True)
def _unique_pairs(sources: np.ndarray, indices: np.ndarray, distances: np.ndarray, full: np.ndarray):
    """Each undirected pair once. With the full graph, (a, b) seen from a > b is skipped when b lists a."""
    n_rows, k = indices.shape
    lo = np.empty(n_rows * k, dtype=np.int64)
    hi = np.empty(n_rows * k, dtype=np.int64)
    d = np.empty(n_rows * k, dtype=np.float64)
    count = 0
    for r in range(n_rows):
        a = sources[r]
        for j in range(k):
            b = indices[r, j]
            if b < 0 or b == a:
                continue
            if a > b and full.shape[0] > 0:
                listed = False
                for t in range(k):
                    if full[b, t] == a:
                        listed = True
                        break
                if listed:
                    continue
            lo[count] = min(a, b)
            hi[count] = max(a, b)
            d[count] = distances[r, j]
            count += 1
    return lo[:count], hi[:count], d[:count]


@njit(cache=True)
def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@njit(cache=True)
def _union(parent: np.ndarray, a: int, b: int) -> bool:
    """Joins the sets of a and b (the smaller root wins, for a deterministic forest); False if already one."""
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra == rb:
        return False
    if ra < rb:
        parent[rb] = ra
    else:
        parent[ra] = rb
    return True


@njit(cache=True)
def _kruskal(n: int, a: np.ndarray, b: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Indices of the edges (already in edge order) that join two components; updates `parent`."""
    chosen = np.empty(a.size, dtype=np.int64)
    count = 0
    for e in range(a.size):
        if _union(parent, a[e], b[e]):
            chosen[count] = e
            count += 1
            if count == n - 1:
                break
    return chosen[:count]


def minimum_spanning_forest(n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Kruskal in edge order; returns the forest's edges (still in edge order)."""
    order = edge_order(np.minimum(a, b), np.maximum(a, b), w, n)
    a, b, w = a[order], b[order], w[order]
    chosen = _kruskal(n, a.astype(np.int64), b.astype(np.int64), np.arange(n, dtype=np.int64))
    return a[chosen], b[chosen], w[chosen]


def knn_spanning_forest(graph: KnnGraph, core: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """The minimum spanning forest of the kNN graph under mutual reachability, in edge order.

    Borůvka straight over the graph's rows: no edge list is materialised, deduplicated or sorted
    (at 1M points x 51 neighbours that list is 44M edges, and sorting it cost more than the rest of
    the stage). Edges compare by (weight, min endpoint, max endpoint), a strict total order, so the
    forest is the one Kruskal over `knn_edges` gives. `rows` gives the global ids of the graph's
    rows, as one shard does; ids index `core`.
    """
    n_rows, k = graph.indices.shape
    indptr = np.arange(0, n_rows * k + 1, k, dtype=np.int64)
    return csr_spanning_forest(indptr, graph.indices.reshape(-1), graph.distances.reshape(-1), core, rows)


def csr_spanning_forest(indptr: np.ndarray, indices: np.ndarray, distances: np.ndarray, core: np.ndarray,
                        rows: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """`knn_spanning_forest` over a graph in CSR form (rows of any length), e.g. a precomputed sparse
    distance matrix, which is a kNN graph already. Entries may be directed and may weigh inf."""
    n_rows = indptr.size - 1
    sources = np.arange(n_rows, dtype=np.int64) if rows is None else rows.astype(np.int64)
    a, b, w = _boruvka(sources, np.ascontiguousarray(indptr, dtype=np.int64),
                       np.ascontiguousarray(indices, dtype=np.int64), np.ascontiguousarray(distances, dtype=np.float64),
                       np.ascontiguousarray(core, np.float64))
    order = edge_order(a, b, w, core.size)
    return a[order], b[order], w[order]


@njit(cache=True)
def _lighter(w1: float, lo1: int, hi1: int, w2: float, lo2: int, hi2: int) -> bool:
    if lo2 < 0:  # nothing found yet: any edge, even one of weight inf, is lighter
        return True
    if w1 != w2:
        return w1 < w2
    if lo1 != lo2:
        return lo1 < lo2
    return hi1 < hi2


@njit(cache=True)
def _boruvka(sources: np.ndarray, indptr: np.ndarray, indices: np.ndarray, distances: np.ndarray, core: np.ndarray):
    n = core.size
    n_rows = sources.size
    parent = np.arange(n)
    comp = np.arange(n)
    live = np.ones(n_rows, dtype=np.bool_)  # rows with a neighbour outside their component
    best_w = np.full(n, np.inf)
    best_lo = np.full(n, -1)
    best_hi = np.full(n, -1)
    out_a = np.empty(max(n - 1, 0), dtype=np.int64)
    out_b = np.empty(max(n - 1, 0), dtype=np.int64)
    out_w = np.empty(max(n - 1, 0), dtype=np.float64)
    count = 0
    while True:
        for r in range(n_rows):
            if not live[r]:
                continue
            i = sources[r]
            ci = comp[i]
            outside = False
            for t in range(indptr[r], indptr[r + 1]):
                j = indices[t]
                if j < 0 or j == i:
                    continue
                cj = comp[j]
                if ci == cj:
                    continue
                outside = True
                w = max(max(core[i], core[j]), distances[t])
                lo = min(i, j)
                hi = max(i, j)
                if _lighter(w, lo, hi, best_w[ci], best_lo[ci], best_hi[ci]):
                    best_w[ci], best_lo[ci], best_hi[ci] = w, lo, hi
                if _lighter(w, lo, hi, best_w[cj], best_lo[cj], best_hi[cj]):
                    best_w[cj], best_lo[cj], best_hi[cj] = w, lo, hi
            if not outside:
                live[r] = False  # components only grow: this row stays inside for good
        added = 0
        for c in range(n):
            if best_lo[c] < 0:
                continue
            if _union(parent, best_lo[c], best_hi[c]):
                out_a[count], out_b[count], out_w[count] = best_lo[c], best_hi[c], best_w[c]
                count += 1
                added += 1
            best_w[c], best_lo[c], best_hi[c] = np.inf, -1, -1
        if added == 0:
            break
        for i in range(n):
            comp[i] = _find(parent, i)
    return out_a[:count], out_b[:count], out_w[:count]


def component_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    parent = np.arange(n, dtype=np.int64)
    _kruskal(n, a.astype(np.int64), b.astype(np.int64), parent)
    _, labels = np.unique(_all_roots(parent), return_inverse=True)
    return labels


@njit(cache=True)
def _all_roots(parent: np.ndarray) -> np.ndarray:
    out = np.empty(parent.size, dtype=np.int64)
    for i in range(parent.size):
        out[i] = _find(parent, i)
    return out


@dataclass(frozen=True)
class CoarseCells:
    """k-means cells over the data: centroids, each point's cell, and its distance to the centroid.

    They give cheap lower bounds |m - centroid| - radius on distances to whole cells of points.
    """

    centroids: np.ndarray
    cell: np.ndarray
    to_centroid: np.ndarray

    @classmethod
    def build(cls, data: np.ndarray, seed: int = 0) -> "CoarseCells":
        import faiss

        n, dim = data.shape
        count = int(min(256, max(1, n // 64)))
        kmeans = faiss.Kmeans(dim, count, niter=10, seed=seed, verbose=False)
        sample = data if n <= 256 * count else data[np.random.default_rng(seed).choice(n, 256 * count, replace=False)]
        kmeans.train(sample)
        _, cell = kmeans.index.search(data, 1)
        cell = cell[:, 0]
        centroids = kmeans.centroids.astype(np.float64)
        to_centroid = np.empty(n, dtype=np.float64)
        for lo in range(0, n, 1 << 18):  # in chunks: a float64 copy of all rows is 3.8 GB at 10M x 48
            hi = min(n, lo + (1 << 18))
            to_centroid[lo:hi] = np.linalg.norm(data[lo:hi].astype(np.float64) - centroids[cell[lo:hi]], axis=1)
        return cls(centroids, cell, to_centroid)

    def distances_from(self, data: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Euclidean distances from data[rows] to every centroid, shape (len(rows), cells)."""
        points = data[rows].astype(np.float64)
        return np.sqrt(np.maximum(
            (points ** 2).sum(1)[:, None] + (self.centroids ** 2).sum(1)[None, :] - 2 * points @ self.centroids.T, 0))


@dataclass(frozen=True)
class PivotCells(CoarseCells):
    """Cells around pivot points for any metric with the triangle inequality: d(m, o) >=
    d(m, pivot_j) - r_j for o in cell j, the bound CoarseCells gives in euclidean space.

    `block(rows_a, rows_b)` returns exact distances between training rows."""

    pivots: np.ndarray = None
    block: Callable[[np.ndarray, np.ndarray], np.ndarray] = None

    @classmethod
    def build_for(cls, block: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int, seed: int = 0) -> "PivotCells":
        count = int(min(256, max(1, n // 64)))
        pivots = np.sort(np.random.default_rng(seed).choice(n, count, replace=False))
        cell = np.empty(n, dtype=np.int64)
        to_pivot = np.empty(n, dtype=np.float64)
        step = max(1, (1 << 22) // count)
        for lo in range(0, n, step):
            rows = np.arange(lo, min(n, lo + step))
            d = np.asarray(block(rows, pivots), dtype=np.float64)
            cell[rows] = d.argmin(axis=1)
            to_pivot[rows] = d[np.arange(rows.size), cell[rows]]
        return cls(np.zeros((count, 0)), cell, to_pivot, pivots, block)

    def distances_from(self, data, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.block(rows, self.pivots), dtype=np.float64)


@dataclass
class JoinReport:
    """How the components were joined: rounds, and how many joins were certified exact."""

    components: int = 1
    rounds: int = 0
    certified: int = 0
    budgeted: int = 0

    @property
    def exact(self) -> bool:
        return self.budgeted == 0


def connect_components(data: np.ndarray | None, core: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray,
                       start_k: int = 16, seed: int = 0, pair_budget: float = 5e7,
                       report: JoinReport | None = None, block: Callable | None = None,
                       alpha: float = 1.0) -> tuple[np.ndarray, ...]:
    """Add the lightest mutual-reachability edges between components until one remains (Borůvka).

    A join is exact and certified while its candidate search (members that could still win x
    the outside points they could reach) stays under `pair_budget` distance evaluations; past
    that, the members with the best cell bounds are searched within the budget and the join is
    counted as budgeted in `report`.

    Euclidean rows (`data`) use k-means cells and FAISS searches. Any other metric with the
    triangle inequality passes `block(rows_a, rows_b)` (exact distances between training rows;
    `data` may be None): pivot cells give the bounds and blocks of exact distances the search,
    weights max(core_m, core_o, d / alpha).
    """
    n = core.size
    labels = component_labels(n, a, b)
    report = report if report is not None else JoinReport()
    report.components = int(labels.max()) + 1
    if block is None:
        data = np.ascontiguousarray(data, dtype=np.float32)
        cells = CoarseCells.build(data, seed) if labels.max() > 0 else None
        search = lambda queries, pool, best: _search_edges(data, core, queries, pool, start_k, best)  # noqa: E731
    else:
        cells = PivotCells.build_for(block, n, seed) if labels.max() > 0 else None
        search = lambda queries, pool, best: _search_block(block, core, alpha, queries, pool, best)  # noqa: E731
    while labels.max() > 0:
        sizes = np.bincount(labels)
        report.rounds += 1
        # every component but the largest: each edge found is still the lightest out of its
        # component (so it is in the tree), each round still merges every other component, and
        # the largest, often nearly all the points, was the costliest search by far
        largest = int(np.argmax(sizes))
        outcomes = [_lightest_edge_out(data, core, labels, np.flatnonzero(labels == comp), cells, pair_budget, search,
                                       alpha)
                    for comp in range(sizes.size) if comp != largest]
        best = np.array([edge for edge, _ in outcomes])
        certified = sum(exact for _, exact in outcomes)
        report.certified += certified
        report.budgeted += len(outcomes) - certified
        # each component's lightest outgoing edge belongs to the spanning tree
        cand = np.unique(best, axis=0)
        a, b, w = minimum_spanning_forest(
            n, np.concatenate([a, cand[:, 1].astype(np.int64)]), np.concatenate([b, cand[:, 2].astype(np.int64)]),
            np.concatenate([w, cand[:, 0]]),
        )
        labels = component_labels(n, a, b)
    return a, b, w


def _lightest_edge_out(data: np.ndarray | None, core: np.ndarray, labels: np.ndarray, members: np.ndarray,
                       cells: CoarseCells, pair_budget: float, search: Callable,
                       alpha: float = 1.0) -> tuple[tuple[float, float, float], bool]:
    """min over m in members, o outside their component of max(core[m], core[o], |m - o|), with endpoints.

    1. Cell bounds: a member m cannot beat U through cell j if max(core[m], |m - c_j| - r_j) > U,
       with r_j the radius of the cell's outside points.
    2. An exact search from the most promising members gives a real edge, hence U.
    3. Only members and cells that could still tie or beat U are searched exactly, doubling k
       while the k-th distance (a bound on every unseen pair) could still tie or beat the best.
    """
    own = labels[members[0]]
    outside = labels != own
    n_cells = cells.centroids.shape[0]
    radius = np.full(n_cells, -np.inf)
    np.maximum.at(radius, cells.cell[outside], cells.to_centroid[outside])
    usable = np.isfinite(radius)
    to_cells = cells.distances_from(data, members)
    gap = to_cells - radius[None, :] if alpha == 1.0 else (to_cells - radius[None, :]) / alpha
    bound = np.where(usable[None, :], np.maximum(core[members][:, None], gap), np.inf)
    member_bound = bound.min(axis=1)

    seeds = np.argsort(member_bound, kind="stable")[:8]
    first_cells = np.unique(bound[seeds].argmin(axis=1))
    best = search(members[seeds], np.flatnonzero(outside & np.isin(cells.cell, first_cells)), (np.inf, np.inf, np.inf))
    if not np.isfinite(best[0]):  # the seeds' cells held no outside point: widen to everything outside
        best = search(members[seeds], np.flatnonzero(outside), best)
    # members grouped by their own cell search only the outside cells the group can still reach
    home = cells.cell[members]
    group_bound = np.full(n_cells, np.inf)
    np.minimum.at(group_bound, home, member_bound)
    outside_per_cell = np.bincount(cells.cell[outside], minlength=n_cells)
    spent, exact = 0.0, True
    for group in np.argsort(group_bound, kind="stable"):
        if group_bound[group] > best[0]:
            break
        in_group = np.flatnonzero((home == group) & (member_bound <= best[0]))
        reach = usable & (bound[in_group] <= best[0]).any(axis=0)
        cost = float(in_group.size) * float(outside_per_cell[reach].sum())
        if spent + cost > pair_budget:
            # over budget: the group's most promising members against their own best cells only
            exact = False
            room = max(pair_budget - spent, 0.0)
            keep = in_group[np.argsort(member_bound[in_group], kind="stable")]
            nearest = np.argsort(bound[keep[:1]][0])[:4]
            reach = np.zeros(n_cells, dtype=bool)
            reach[nearest] = usable[nearest]
            per_member = max(float(outside_per_cell[reach].sum()), 1.0)
            in_group = keep[: max(1, int(room / per_member))]
            if room <= 0:
                break
            cost = float(in_group.size) * per_member
        pool = np.flatnonzero(outside & reach[cells.cell])
        best = search(members[in_group], pool, best)
        spent += cost
    return best, exact


def _search_edges(data: np.ndarray, core: np.ndarray, queries: np.ndarray, pool: np.ndarray, k: int,
                  best: tuple[float, float, float]) -> tuple[float, float, float]:
    """Lightest mutual-reachability edge between `queries` and `pool` (exact), improving on `best`."""
    if queries.size == 0 or pool.size == 0:
        return best
    stored = data[pool]
    index = build_index(stored, method="exact", device="cpu")
    k = min(k, pool.size)
    pending = queries
    while pending.size:
        found = search(index, stored, data[pending], k)
        nbr = pool[found.indices]
        weight = np.maximum(np.maximum(core[pending][:, None], core[nbr]), found.distances)
        lo = np.minimum(pending[:, None], nbr).ravel()
        hi = np.maximum(pending[:, None], nbr).ravel()
        top = np.lexsort((hi, lo, weight.ravel()))[0]
        best = min(best, (float(weight.ravel()[top]), float(lo[top]), float(hi[top])))
        if k >= pool.size:
            break
        still = np.maximum(core[pending], found.distances[:, -1]) <= best[0]
        pending = pending[still]
        k = min(2 * k, pool.size)
    return best


def _search_block(block: Callable, core: np.ndarray, alpha: float, queries: np.ndarray, pool: np.ndarray,
                  best: tuple[float, float, float], cells: int = 1 << 22) -> tuple[float, float, float]:
    """`_search_edges` for any metric: exact blocks of distances between `queries` and `pool`."""
    if queries.size == 0 or pool.size == 0:
        return best
    step = max(1, cells // pool.size)
    for lo in range(0, queries.size, step):
        q = queries[lo:lo + step]
        d = np.asarray(block(q, pool), dtype=np.float64)
        if alpha != 1.0:
            d = d / alpha
        weight = np.maximum(np.maximum(core[q][:, None], core[pool][None, :]), d)
        weight[np.isnan(weight)] = np.inf
        top = weight.min()
        if top > best[0]:
            continue
        rows_at, cols_at = np.nonzero(weight == top)
        lo_end, hi_end = np.minimum(q[rows_at], pool[cols_at]), np.maximum(q[rows_at], pool[cols_at])
        pick = np.lexsort((hi_end, lo_end))[0]
        best = min(best, (float(top), float(lo_end[pick]), float(hi_end[pick])))
    return best


def connect_components_by_rows(rows: Callable[[np.ndarray], np.ndarray], core: np.ndarray, a: np.ndarray,
                               b: np.ndarray, w: np.ndarray, alpha: float = 1.0, block: int = 1 << 22,
                               report: JoinReport | None = None) -> tuple[np.ndarray, ...]:
    """`connect_components` for any metric: `rows(ids)` gives the exact distances from those points to
    every point, shape (len(ids), n) (a precomputed matrix's rows, or pairwise distances under a metric).

    Borůvka rounds as in `connect_components`: every component but the largest finds its lightest
    mutual-reachability edge max(core_m, core_o, d(m, o) / alpha) to any outside point, exactly,
    by scanning its members' rows (in blocks of about `block` distances). A component whose every
    outside distance is inf (a precomputed matrix with missing distances) joins by an inf edge.
    Cost per round: (points outside the largest component) x n distance evaluations.
    """
    n = core.size
    labels = component_labels(n, a, b)
    report = report if report is not None else JoinReport()
    report.components = int(labels.max()) + 1
    while labels.max() > 0:
        sizes = np.bincount(labels)
        report.rounds += 1
        largest = int(np.argmax(sizes))
        found = []
        for comp in range(sizes.size):
            if comp == largest:
                continue
            members = np.flatnonzero(labels == comp)
            outside = labels != comp
            best = (np.inf, np.inf, np.inf)
            step = max(1, block // max(n, 1))
            for lo in range(0, members.size, step):
                chunk = members[lo:lo + step]
                d = np.asarray(rows(chunk), dtype=np.float64)
                if alpha != 1.0:
                    d = d / alpha
                weight = np.maximum(np.maximum(core[chunk][:, None], core[None, :]), d)
                weight[np.isnan(weight)] = np.inf
                weight[:, ~outside] = np.inf
                top = weight.min()
                rows_at, cols_at = np.nonzero((weight == top) & outside[None, :])
                m, o = chunk[rows_at], cols_at
                lo_end, hi_end = np.minimum(m, o), np.maximum(m, o)
                pick = np.lexsort((hi_end, lo_end))[0]
                best = min(best, (float(top), float(lo_end[pick]), float(hi_end[pick])))
            found.append(best)
            report.certified += 1
        cand = np.unique(np.array(found), axis=0)
        a, b, w = minimum_spanning_forest(
            n, np.concatenate([a, cand[:, 1].astype(np.int64)]), np.concatenate([b, cand[:, 2].astype(np.int64)]),
            np.concatenate([w, cand[:, 0]]))
        labels = component_labels(n, a, b)
    return a, b, w
