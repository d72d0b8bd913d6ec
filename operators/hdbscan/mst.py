"""Core distances, mutual reachability, and the minimum spanning tree over a kNN graph.

A kNN graph is often disconnected. Components are joined Borůvka-style by their exact lightest
outgoing edge under mutual reachability over *all* points (not only kNN pairs), found with
FAISS searches over the points outside each component and certified by a lower bound, never
by arbitrary links.

Edges are totally ordered by (weight, min endpoint, max endpoint) so ties resolve identically
in single-node and sharded runs.
"""

from __future__ import annotations

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

    `rows` restricts to the graph rows given (global point ids), as one shard does.
    """
    sources = np.arange(graph.indices.shape[0]) if rows is None else rows
    a = np.repeat(sources, graph.indices.shape[1])
    b = graph.indices.reshape(-1)
    d = graph.distances.reshape(-1)
    keep = (b >= 0) & (a != b)
    a, b, d = a[keep], b[keep], d[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    w = np.maximum(np.maximum(core[lo], core[hi]), d)
    order = np.lexsort((hi, lo, w))
    lo, hi, w = lo[order], hi[order], w[order]
    first = np.ones(lo.size, dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    # the same pair seen from both ends has the same weight, so dropping repeats keeps the order
    return lo[first], hi[first], w[first]


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
def _kruskal(n: int, a: np.ndarray, b: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Indices of the edges (already in edge order) that join two components; updates `parent`."""
    chosen = np.empty(a.size, dtype=np.int64)
    count = 0
    for e in range(a.size):
        ra = _find(parent, a[e])
        rb = _find(parent, b[e])
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
            chosen[count] = e
            count += 1
            if count == n - 1:
                break
    return chosen[:count]


def minimum_spanning_forest(n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Kruskal over edges in edge order; returns the forest's edges (still in edge order)."""
    order = np.lexsort((b, a, w))
    a, b, w = a[order], b[order], w[order]
    chosen = _kruskal(n, a.astype(np.int64), b.astype(np.int64), np.arange(n, dtype=np.int64))
    return a[chosen], b[chosen], w[chosen]


def component_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    parent = np.arange(n, dtype=np.int64)
    _kruskal(n, a.astype(np.int64), b.astype(np.int64), parent)
    roots = np.array([_find(parent, i) for i in range(n)]) if n < 1000 else _all_roots(parent)
    _, labels = np.unique(roots, return_inverse=True)
    return labels


@njit(cache=True)
def _all_roots(parent: np.ndarray) -> np.ndarray:
    out = np.empty(parent.size, dtype=np.int64)
    for i in range(parent.size):
        out[i] = _find(parent, i)
    return out


def connect_components(data: np.ndarray, core: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray,
                       start_k: int = 16, small_component: int = 2048) -> tuple[np.ndarray, ...]:
    """Add the exact lightest mutual-reachability edges between components until one remains.

    A small component searches one shared index of all points with k = its size + start_k, so
    it always sees outside points; a large one searches an index of the points outside it.
    """
    n = data.shape[0]
    data = np.ascontiguousarray(data, dtype=np.float32)
    labels = component_labels(n, a, b)
    while labels.max() > 0:
        sizes = np.bincount(labels)
        everyone = None
        best = np.full((sizes.size, 3), np.inf)  # weight, lo, hi per component
        for comp in range(sizes.size):
            members = np.flatnonzero(labels == comp)
            if sizes[comp] <= small_component:
                everyone = everyone if everyone is not None else build_index(data, method="exact", device="cpu")
                best[comp] = _lightest_edge_out(data, core, labels, members, everyone, None, sizes[comp] + start_k)
            else:
                others = np.flatnonzero(labels != comp)
                outside = build_index(data[others], method="exact", device="cpu")
                best[comp] = _lightest_edge_out(data, core, labels, members, outside, others, start_k)
        # Borůvka: each component's lightest outgoing edge belongs to the spanning tree
        cand = np.unique(best, axis=0)
        a, b, w = minimum_spanning_forest(
            n, np.concatenate([a, cand[:, 1].astype(np.int64)]), np.concatenate([b, cand[:, 2].astype(np.int64)]),
            np.concatenate([w, cand[:, 0]]),
        )
        labels = component_labels(n, a, b)
    return a, b, w


def _lightest_edge_out(data: np.ndarray, core: np.ndarray, labels: np.ndarray, members: np.ndarray, index,
                       index_ids: np.ndarray | None, k: int) -> tuple[float, float, float]:
    """min over m in members, o outside their component of max(core[m], core[o], |m - o|), with endpoints.

    Members keep searching with doubling k while the k-th distance (a lower bound on every pair
    not yet seen, as is core[m]) could still beat or tie the best edge found.
    """
    pool = index.ntotal
    own = labels[members[0]]
    best = (np.inf, np.inf, np.inf)
    pending = members
    k = min(k, pool)
    stored = data if index_ids is None else data[index_ids]
    while pending.size:
        found = search(index, stored, data[pending], k)
        nbr = found.indices if index_ids is None else index_ids[found.indices]
        outside = labels[nbr] != own
        weight = np.where(outside, np.maximum(np.maximum(core[pending][:, None], core[nbr]), found.distances), np.inf)
        lo = np.minimum(pending[:, None], nbr).ravel()
        hi = np.maximum(pending[:, None], nbr).ravel()
        top = np.lexsort((hi, lo, weight.ravel()))[0]
        if np.isfinite(weight.ravel()[top]):
            best = min(best, (float(weight.ravel()[top]), float(lo[top]), float(hi[top])))
        if k >= pool:
            break
        bound = np.maximum(core[pending], found.distances[:, -1])
        pending = pending[bound <= best[0]]
        k = min(2 * k, pool)
    return best
