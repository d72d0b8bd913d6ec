"""kNN graphs with FAISS: exact for small n, IVF cells for large n, on a GPU when one is present.

Rows always include the point itself. Distances are Euclidean, recomputed in float64 for the
returned pairs (GEMM-based search loses precision for close points), and each row is ordered by
(distance, index) so ties resolve the same way everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EXACT_MAX_N = 200_000


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
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        index.cp.seed = seed
        sample = data if n <= 64 * nlist else data[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
        index.train(sample)
        index.nprobe = nprobe or min(nlist, 16)
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
        dist = exact_distances(data, queries[lo:hi], idx)
        order = np.lexsort((idx, dist), axis=-1)
        distances[lo:hi] = np.take_along_axis(dist, order, axis=1)
        indices[lo:hi] = np.take_along_axis(idx, order, axis=1)
    return KnnGraph(distances, indices)


def exact_distances(data: np.ndarray, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Euclidean distances in float64 for (query row, idx) pairs; missing neighbours (-1) are inf."""
    missing = idx < 0
    safe = np.where(missing, 0, idx)
    diff = data[safe].astype(np.float64) - queries[:, None, :].astype(np.float64)
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    dist[missing] = np.inf
    return dist


def knn_graph(data: np.ndarray, k: int, method: str = "auto", device: str = "auto", nprobe: int | None = None,
              seed: int = 0) -> KnnGraph:
    """The kNN graph of `data` with itself, k including each point."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    k = min(k, data.shape[0])
    index = build_index(data, method=method, device=device, nprobe=nprobe, seed=seed)
    return search(index, data, data, k)


def merge_topk(parts: list[KnnGraph], k: int) -> KnnGraph:
    """Merge per-shard top-k results (indices already global) into the global top-k, ties by index."""
    distances = np.concatenate([p.distances for p in parts], axis=1)
    indices = np.concatenate([p.indices for p in parts], axis=1)
    order = np.lexsort((indices, distances), axis=-1)[:, :k]
    return KnnGraph(np.take_along_axis(distances, order, axis=1), np.take_along_axis(indices, order, axis=1))
