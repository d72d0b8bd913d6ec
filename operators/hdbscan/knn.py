"""kNN graphs with FAISS: exact for small n, IVF cells for large n, on a GPU when one is present.

Rows always include the point itself. Distances are Euclidean, recomputed in float64 for the
returned pairs (GEMM-based search loses precision for close points), and each row is ordered by
(distance, index) so ties resolve the same way everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

# flat search costs n^2 d: beyond this IVF cells (measured in bench/RESULTS.md) win
EXACT_MAX_N = 20_000


@dataclass(frozen=True)
class KnnGraph:
    distances: np.ndarray  # (n, k) float64, ascending per row
    indices: np.ndarray  # (n, k) int64


def gpu_available() -> bool:
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except ImportError:
        return False


def build_index(data: np.ndarray, method: str = "auto", device: str = "auto", nlist: int | None = None,
                nprobe: int | None = None, seed: int = 0):
    """A FAISS index over `data` (float32). `method`: exact, ivf or auto; `device`: cpu, cuda or auto."""
    import faiss

    n, dim = data.shape
    method = ("exact" if n <= EXACT_MAX_N else "ivf") if method == "auto" else method
    if method == "exact":
        index = faiss.IndexFlatL2(dim)
    elif method == "ivf":
        nlist = nlist or int(min(max(16, 0.8 * math.sqrt(n)), 4096, n // 39 or 1))
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        index.cp.seed = seed
        sample = data if n <= 64 * nlist else data[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
        index.train(sample)
        index.nprobe = nprobe or min(nlist, 16 if n <= 300_000 else 8)
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(64, nprobe or 64)
    else:
        raise ValueError(f"unknown kNN method {method!r}; use exact, ivf, hnsw or auto")
    if (device == "cuda" or (device == "auto" and gpu_available())) and method != "hnsw":
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(data)
    return index


def search(index, data: np.ndarray, queries: np.ndarray, k: int, batch: int = 16_384) -> KnnGraph:
    """k nearest rows of `data` (held by `index`) for each query, exact distances, deterministic order."""
    n_q = queries.shape[0]
    distances = np.empty((n_q, k), dtype=np.float64)
    indices = np.empty((n_q, k), dtype=np.int64)
    for lo in range(0, n_q, batch):
        hi = min(n_q, lo + batch)
        _, idx = index.search(np.ascontiguousarray(queries[lo:hi], dtype=np.float32), int(k))
        ordered = _ordered_rows(exact_distances(data, queries[lo:hi], idx), idx, k)
        distances[lo:hi], indices[lo:hi] = ordered.distances, ordered.indices
    return KnnGraph(distances, indices)


def _ordered_rows(distances: np.ndarray, indices: np.ndarray, k: int) -> KnnGraph:
    """Each row's first k entries by (distance, index): the one tie order used everywhere."""
    order = np.lexsort((indices, distances), axis=-1)[:, :k]
    return KnnGraph(np.take_along_axis(distances, order, axis=1), np.take_along_axis(indices, order, axis=1))


def exact_distances(data: np.ndarray, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Euclidean distances in float64 for (query row, idx) pairs; missing neighbours (-1) are inf."""
    out = np.empty(idx.shape, dtype=np.float64)
    _pair_distances(np.ascontiguousarray(data, dtype=np.float32), np.ascontiguousarray(queries, dtype=np.float32),
                    np.ascontiguousarray(idx, dtype=np.int64), out)
    return out


@njit(parallel=True, cache=True)
def _pair_distances(data: np.ndarray, queries: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    for i in prange(idx.shape[0]):
        for j in range(idx.shape[1]):
            target = idx[i, j]
            if target < 0:
                out[i, j] = np.inf
                continue
            total = 0.0
            for c in range(queries.shape[1]):
                diff = np.float64(data[target, c]) - np.float64(queries[i, c])
                total += diff * diff
            out[i, j] = np.sqrt(total)


def knn_graph(data: np.ndarray, k: int, method: str = "auto", device: str = "auto", nprobe: int | None = None,
              seed: int = 0) -> KnnGraph:
    """The kNN graph of `data` with itself, k including each point.

    `cells` (the default beyond EXACT_MAX_N on CPU) partitions the points with k-means and lets
    each cell search, by blockwise GEMM, the points of the `nprobe` cells nearest to it;
    `ivf`/`hnsw` use FAISS's own approximate indexes.
    """
    data = np.ascontiguousarray(data, dtype=np.float32)
    n = data.shape[0]
    k = min(k, n)
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_N else ("ivf" if _use_gpu(device) else "cells")
    if method == "cells":
        return cell_knn(data, k, probe=nprobe, seed=seed)
    index = build_index(data, method=method, device=device, nprobe=nprobe, seed=seed)
    return search(index, data, data, k)


def _use_gpu(device: str) -> bool:
    return device == "cuda" or (device == "auto" and gpu_available())


def cell_knn(data: np.ndarray, k: int, cell_size: int = 2000, probe: int | None = None, seed: int = 0) -> KnnGraph:
    """kNN by k-means cells: each cell's points search the union of the `probe` cells nearest its centroid."""
    import faiss

    n, dim = data.shape
    n_cells = max(1, int(round(n / cell_size)))
    probe = min(n_cells, probe or 6)
    kmeans = faiss.Kmeans(dim, n_cells, niter=12, seed=seed, verbose=False)
    sample = data if n <= 128 * n_cells else data[np.random.default_rng(seed).choice(n, 128 * n_cells, replace=False)]
    kmeans.train(sample)
    _, cell = kmeans.index.search(data, 1)
    cell = cell[:, 0]
    _, near = kmeans.index.search(kmeans.centroids, probe)
    order = np.argsort(cell, kind="stable")
    starts = np.searchsorted(cell[order], np.arange(n_cells + 1))
    distances = np.empty((n, k), dtype=np.float64)
    indices = np.empty((n, k), dtype=np.int64)
    for c in range(n_cells):
        members = order[starts[c]:starts[c + 1]]
        if members.size == 0:
            continue
        pool = np.concatenate([order[starts[j]:starts[j + 1]] for j in near[c] if j >= 0])
        if pool.size < k:  # tiny neighbourhoods fall back to every point
            pool = np.arange(n)
        block = faiss.IndexFlatL2(dim)
        block.add(data[pool])
        found = search(block, data[pool], data[members], k)
        distances[members] = found.distances
        indices[members] = pool[found.indices]
    return KnnGraph(distances, indices)


def merge_topk(parts: list[KnnGraph], k: int) -> KnnGraph:
    """Merge per-shard top-k results (indices already global) into the global top-k, ties by index."""
    return _ordered_rows(np.concatenate([p.distances for p in parts], axis=1),
                         np.concatenate([p.indices for p in parts], axis=1), k)
