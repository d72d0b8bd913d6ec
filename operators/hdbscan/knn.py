"""kNN graphs with FAISS: exact for small n, IVF cells for large n, on a GPU when one is present.

Rows always include the point itself. Distances are Euclidean, recomputed in float64 for the
returned pairs (GEMM-based search loses precision for close points), and each row is ordered by
(distance, index) so ties resolve the same way everywhere.

Approximate graphs meet a recall target: a sample of rows is searched exactly, and the probe
count (cells, IVF lists, HNSW's efSearch) rises until the sample's recall@`recall_k` reaches
`recall_target`. Every graph carries a `KnnReport` of what it measured.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

# flat search costs n^2 d: beyond this IVF cells (measured in bench/RESULTS.md) win
EXACT_MAX_N = 20_000
# up to this many dimensions a kd-tree gives the exact graph for less than the cells' approximate
# one (50k x 8: 0.8-1.5 CPU-s against 4.9; at 24 dims it loses on blobs, bench/RESULTS.md)
KDTREE_MAX_DIM = 10
# rows searched exactly to measure an approximate graph's recall (its standard error is ~0.007 at 0.95)
RECALL_SAMPLE = 1000
# the cells' least probe: the target only raises it. Fewer cells leave the graph in many more
# components, and the exact joins between them cost more than the search saved (50k x 8 blobs:
# probe 1 met recall 0.976 but the joins took 13.7 s against a 2.6 s graph, bench/RESULTS.md)
DEFAULT_PROBE = 6
# FAISS's GPU IVF scans every probed list for every query, so on a GPU the lists stay small (a few
# thousand rows at 100M) and the coarse quantizer, a GEMM there, grows instead
GPU_MAX_LISTS = 65_536
# the largest probe (and k) FAISS's GPU selection takes
GPU_MAX_PROBE = 2048
# queries per GPU search call: large enough that a call's fixed cost is small beside its scan
GPU_SEARCH_BATCH = 1 << 17


@dataclass(frozen=True)
class KnnReport:
    """What a kNN graph is worth: its recall@`recall_k` and core-distance error, measured on a sample.

    `recall` is 1.0 for an exact graph. For an approximate one it is the fraction of the sampled
    rows' true `recall_k` nearest neighbours (self included) the graph holds, counted by distance
    so ties do not matter; `core_error_mean`/`core_error_max` compare the sampled rows' distance to
    their (recall_k - 1)-th neighbour with the exact one (relative, >= 0)."""

    method: str
    k: int
    recall_k: int
    recall: float = 1.0
    recall_target: float | None = None
    probe: int | None = None  # cells / IVF lists / efSearch the graph used
    cells: int | None = None
    sample: int = 0  # rows measured (0: exact, nothing to measure)
    core_error_mean: float = 0.0
    core_error_max: float = 0.0
    seconds_measuring: float = 0.0

    @property
    def exact(self) -> bool:
        return self.sample == 0


@dataclass(frozen=True)
class KnnGraph:
    distances: np.ndarray  # (n, k) float64, ascending per row
    indices: np.ndarray  # (n, k) int64
    report: KnnReport | None = None  # None for graphs assembled elsewhere (shards, callers)


def faiss_gpu_available() -> bool:
    """Whether the installed FAISS can search on a GPU here (PyPI's faiss-cpu cannot)."""
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except ImportError:
        return False


_GPU_RESOURCES = None


def gpu_resources():
    """The process's one FAISS GPU resource object (its scratch memory is reused by every index and search)."""
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        import faiss

        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def ivf_lists(n: int, gpu: bool) -> int:
    """IVF lists for n rows: about 0.8 sqrt(n), at most 4096, on CPU; about 4 sqrt(n), at most
    GPU_MAX_LISTS, on a GPU, where each query's scan of its probed lists is the cost, not the
    quantizer. Never fewer than ~39 rows a list (FAISS's training minimum)."""
    scale, cap = (4.0, GPU_MAX_LISTS) if gpu else (0.8, 4096)
    return int(min(max(16, scale * math.sqrt(n)), cap, n // 39 or 1))


def build_index(data: np.ndarray, method: str = "auto", device: str = "auto", nlist: int | None = None,
                nprobe: int | None = None, seed: int = 0):
    """A FAISS index over `data` (float32). `method`: exact, ivf, hnsw or auto; `device`: cpu, cuda or
    auto. On a GPU the IVF cells are trained there too (k-means at 40k lists is hours on a CPU)."""
    import faiss

    n, dim = data.shape
    method = ("exact" if n <= EXACT_MAX_N else "ivf") if method == "auto" else method
    gpu = _faiss_gpu(device) and method != "hnsw"
    if method == "exact":
        index = faiss.IndexFlatL2(dim)
    elif method == "ivf":
        nlist = nlist or ivf_lists(n, gpu)
        index = _trained_ivf(data, nlist, seed, gpu)
        index.nprobe = nprobe or min(nlist, 16 if n <= 300_000 else 8)
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(64, nprobe or 64)
    else:
        raise ValueError(f"unknown kNN method {method!r}; use exact, ivf, hnsw or auto")
    if gpu:
        index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
    index.add(data)
    return index


def _trained_ivf(data: np.ndarray, nlist: int, seed: int, gpu: bool):
    """An empty IVF-flat index whose cells are k-means centroids of (a sample of) `data`."""
    import faiss

    n, dim = data.shape
    sample = data if n <= 64 * nlist else data[np.random.default_rng(seed).choice(n, 64 * nlist, replace=False)]
    if not gpu:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist, faiss.METRIC_L2)
        index.cp.seed = seed
        index.train(sample)
        return index
    kmeans = faiss.Kmeans(dim, nlist, niter=10, seed=seed, gpu=True, max_points_per_centroid=64)
    kmeans.train(np.ascontiguousarray(sample))
    quantizer = faiss.IndexFlatL2(dim)
    quantizer.add(kmeans.centroids)
    return faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)


def search(index, data: np.ndarray, queries: np.ndarray, k: int, batch: int = 16_384,
           overlap: bool = False) -> KnnGraph:
    """k nearest rows of `data` (held by `index`) for each query, exact distances, deterministic order.

    With `overlap` (a GPU index) the next batch's search runs while this one's distances are redone
    on the CPU; FAISS releases the GIL. On a CPU index both would fight for the same cores."""
    n_q = queries.shape[0]
    distances = np.empty((n_q, k), dtype=np.float64)
    indices = np.empty((n_q, k), dtype=np.int64)
    starts = list(range(0, n_q, batch))

    def find(lo: int) -> np.ndarray:
        return index.search(np.ascontiguousarray(queries[lo:lo + batch], dtype=np.float32), int(k))[1]

    with ThreadPoolExecutor(max_workers=1) as ahead:
        pending = ahead.submit(find, starts[0]) if overlap and starts else None
        for at, lo in enumerate(starts):
            if pending is not None:
                idx = pending.result()
                pending = ahead.submit(find, starts[at + 1]) if at + 1 < len(starts) else None
            else:
                idx = find(lo)
            hi = min(n_q, lo + batch)
            ordered = ordered_rows(exact_distances(data, queries[lo:hi], idx), idx, k)
            distances[lo:hi], indices[lo:hi] = ordered.distances, ordered.indices
    return KnnGraph(distances, indices)


def ordered_rows(distances: np.ndarray, indices: np.ndarray, k: int) -> KnnGraph:
    """Each row's first k entries by (distance, index): the one tie order used everywhere."""
    d = np.array(distances, dtype=np.float64, order="C")
    i = np.array(indices, dtype=np.int64, order="C")
    _sort_rows(d, i)
    return KnnGraph(np.ascontiguousarray(d[:, :k]), np.ascontiguousarray(i[:, :k]))


@njit(parallel=True, cache=True)
def _sort_rows(distances: np.ndarray, indices: np.ndarray) -> None:
    """Sorts each row in place by (distance, index). Insertion sort: rows arrive nearly in order (a
    search's own order, its distances redone in float64), so this is about one pass per row."""
    width = distances.shape[1]
    for r in prange(distances.shape[0]):
        for j in range(1, width):
            d, i = distances[r, j], indices[r, j]
            t = j
            while t > 0 and (distances[r, t - 1] > d or (distances[r, t - 1] == d and indices[r, t - 1] > i)):
                distances[r, t] = distances[r, t - 1]
                indices[r, t] = indices[r, t - 1]
                t -= 1
            distances[r, t] = d
            indices[r, t] = i


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
              seed: int = 0, recall_k: int | None = None, recall_target: float | None = 0.95,
              sample: int = RECALL_SAMPLE) -> KnnGraph:
    """The kNN graph of `data` with itself, k including each point, with a `KnnReport`.

    `cells` (the default beyond EXACT_MAX_N on CPU) partitions the points with k-means and lets
    each cell search, by blockwise GEMM, the points of the `nprobe` cells nearest to it;
    `ivf`/`hnsw` use FAISS's own approximate indexes. Without `nprobe`, an approximate method
    raises its probe until recall@`recall_k` (default k) on a sample reaches `recall_target`;
    with `nprobe` (or a target of None) the probe is fixed and the recall only measured.
    """
    data = np.ascontiguousarray(data, dtype=np.float32)
    n = data.shape[0]
    k = min(k, n)
    recall_k = min(recall_k or k, k)
    method = graph_method(n, data.shape[1], method, device)
    if method == "kdtree":
        return KnnGraph(*_rows(kdtree_knn(data, k)), KnnReport("kdtree", k, recall_k))
    if method == "cells":
        return cell_knn(data, k, probe=nprobe, seed=seed, recall_k=recall_k, recall_target=recall_target,
                        sample=sample, torch_device="cuda" if _use_gpu(device) else None)
    gpu = _faiss_gpu(device) and method != "hnsw"
    batch = GPU_SEARCH_BATCH if gpu else 16_384
    index = build_index(data, method=method, device=device, nprobe=nprobe, seed=seed)
    if method == "exact":
        return KnnGraph(*_rows(search(index, data, data, k, batch, overlap=gpu)), KnnReport("exact", k, recall_k))
    started = time.perf_counter()
    truth = exact_sample(data, recall_k, sample, seed, gpu=gpu)
    probe = _probe(index)
    limit = 4096 if method == "hnsw" else min(index.nlist, GPU_MAX_PROBE) if gpu else index.nlist
    while True:  # a sample's recall at this probe; raise it until the target holds
        found = search(index, data, data[truth.rows], k)
        recall, low = sample_recall(found.distances, truth)
        if nprobe is not None or recall_target is None or low >= recall_target or probe >= limit:
            break
        probe = min(limit, probe * 2)
        _set_probe(index, probe)
    measuring = time.perf_counter() - started
    graph = search(index, data, data, k, batch, overlap=gpu)
    report = _report(method, k, graph, truth, recall_target, probe, getattr(index, "nlist", None), measuring)
    return KnnGraph(graph.distances, graph.indices, report)


def graph_method(n: int, dim: int, method: str = "auto", device: str = "auto") -> str:
    """What `auto` means for n rows of dim columns: exact, kdtree or cells (on the GPU when there is one)."""
    if method != "auto":
        return method
    if n <= EXACT_MAX_N:
        return "exact"
    return "cells" if _use_gpu(device) or dim > KDTREE_MAX_DIM else "kdtree"


def kdtree_knn(data: np.ndarray, k: int) -> KnnGraph:
    """The exact graph by scikit-learn's kd-tree (all cores), distances redone in float64 and rows
    ordered as `search` orders them."""
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=k, algorithm="kd_tree", n_jobs=-1).fit(data).kneighbors(data)
    idx = idx.astype(np.int64)
    return ordered_rows(exact_distances(data, data, idx), idx, k)


def _rows(graph: KnnGraph) -> tuple[np.ndarray, np.ndarray]:
    return graph.distances, graph.indices


def _probe(index) -> int:
    hnsw = getattr(index, "hnsw", None)
    return int(hnsw.efSearch) if hnsw is not None else int(index.nprobe)


def _set_probe(index, probe: int) -> None:
    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = int(probe)
    else:
        index.nprobe = int(probe)


def _use_gpu(device: str) -> bool:
    """Whether `device` (cpu, cuda or auto) puts the kNN graph on a CUDA GPU; cuda without one is an error."""
    from lakelens.operators.hdbscan.torch_cells import cuda_available

    if device == "cuda" and not cuda_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA GPU here; use device='auto' or 'cpu'")
    return device == "cuda" or (device == "auto" and cuda_available())


def _faiss_gpu(device: str) -> bool:
    """Whether FAISS's own indexes (flat, IVF) go on the GPU: where `device` allows and FAISS can."""
    return device != "cpu" and _use_gpu(device) and faiss_gpu_available()


@dataclass(frozen=True)
class SampleTruth:
    """Exact neighbours of sampled rows: ids (n_sample,), distances and indices (n_sample, recall_k)."""

    rows: np.ndarray
    distances: np.ndarray
    indices: np.ndarray


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """The rows (sorted) whose exact neighbours measure a graph's recall."""
    return np.sort(np.random.default_rng(seed + 7919).choice(n, min(size, n), replace=False))


def exact_sample(data: np.ndarray, k: int, size: int = RECALL_SAMPLE, seed: int = 0, gpu: bool = False,
                 queries: np.ndarray | None = None) -> SampleTruth:
    """`size` rows drawn at random and their exact k nearest rows of `data` (self included), by brute force.
    The rows are drawn from `queries` when given (new points), else from `data` itself."""
    import faiss

    source = data if queries is None else queries
    rows = sample_rows(source.shape[0], size, seed)
    queries = np.ascontiguousarray(source[rows])
    if gpu:
        _, idx = faiss.knn_gpu(gpu_resources(), queries, data, int(k))
    else:
        _, idx = faiss.knn(queries, data, int(k))
    exact = ordered_rows(exact_distances(data, queries, idx), idx, k)
    return SampleTruth(rows, exact.distances, exact.indices)


def sample_recall(distances: np.ndarray, truth: SampleTruth) -> tuple[float, float]:
    """(recall, its lower bound two standard errors down) of graph rows for the sampled rows.

    A graph neighbour counts when it is no farther than the true k-th neighbour, so a tie with a
    true neighbour counts as finding it."""
    k = truth.distances.shape[1]
    radius = truth.distances[:, -1:] * (1 + 1e-6) + 1e-12
    per_row = (distances[:, :k] <= radius).sum(axis=1) / k
    mean = float(per_row.mean())
    return mean, mean - 2.0 * float(per_row.std()) / math.sqrt(per_row.size)


def core_error(distances: np.ndarray, truth: SampleTruth) -> np.ndarray:
    """Relative error of the sampled rows' distance to their (recall_k - 1)-th neighbour (>= 0)."""
    k = truth.distances.shape[1]
    true = truth.distances[:, k - 1]
    found = distances[:, k - 1]
    return np.where(true > 0, found / np.where(true > 0, true, 1.0) - 1.0, np.where(found > 0, np.inf, 0.0))


def _report(method: str, k: int, graph: KnnGraph, truth: SampleTruth, target: float | None, probe: int | None,
            cells: int | None, measuring: float) -> KnnReport:
    rows = graph.distances[truth.rows]
    recall, _ = sample_recall(rows, truth)
    err = core_error(rows, truth)
    return KnnReport(method, k, truth.distances.shape[1], recall, target, probe, cells, int(truth.rows.size),
                     float(err.mean()), float(err.max()), measuring)


def needed_probe(near: np.ndarray, cell: np.ndarray, truth: SampleTruth) -> np.ndarray:
    """For each sampled row and true neighbour, the probe at which the cell search finds it: one plus
    the rank of the neighbour's cell among the cells nearest the row's home cell (`near` holds,
    per sampled row, every cell id in order of its centroid's distance from the home centroid)."""
    n_cells = near.shape[1]
    rank = np.empty_like(near)
    np.put_along_axis(rank, near, np.broadcast_to(np.arange(n_cells), near.shape), axis=1)
    return np.take_along_axis(rank, cell[truth.indices], axis=1) + 1


def choose_probe(needed: np.ndarray, target: float, least: int = 1) -> int:
    """The least probe (>= `least`) whose sampled recall, two standard errors down, reaches `target`."""
    k = needed.shape[1]
    for probe in range(max(1, least), int(needed.max()) + 1):
        per_row = (needed <= probe).sum(axis=1) / k
        if per_row.mean() - 2.0 * per_row.std() / math.sqrt(per_row.size) >= target:
            return probe
    return max(least, int(needed.max()))


@dataclass
class CellIndex:
    """k-means cells over stored rows: a query searches, by blockwise GEMM, the rows of the `probe`
    cells whose centroids are nearest its own cell's (its home: the nearest centroid)."""

    data: np.ndarray
    centroids: np.ndarray
    cell: np.ndarray  # each stored row's cell
    _quantizer: object
    _order: np.ndarray
    _starts: np.ndarray

    @classmethod
    def build(cls, data: np.ndarray, cell_size: int = 2000, seed: int = 0) -> "CellIndex":
        import faiss

        n, dim = data.shape
        n_cells = max(1, int(round(n / cell_size)))
        kmeans = faiss.Kmeans(dim, n_cells, niter=12, seed=seed, verbose=False)
        training = data if n <= 128 * n_cells else data[np.random.default_rng(seed).choice(n, 128 * n_cells,
                                                                                            replace=False)]
        kmeans.train(training)
        _, cell = kmeans.index.search(data, 1)
        cell = cell[:, 0]
        order = np.argsort(cell, kind="stable")
        return cls(data, kmeans.centroids, cell, kmeans.index, order, np.searchsorted(cell[order], np.arange(n_cells + 1)))

    @property
    def n_cells(self) -> int:
        return self.centroids.shape[0]

    def home(self, queries: np.ndarray) -> np.ndarray:
        return self._quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), 1)[1][:, 0]

    def cells_by_distance(self, cells: np.ndarray, count: int | None = None) -> np.ndarray:
        """Per given cell, the `count` (default all) cells nearest its centroid, nearest first."""
        return self._quantizer.search(self.centroids[cells], count or self.n_cells)[1]

    def least_probe(self, truth: "SampleTruth", home: np.ndarray, target: float, least: int) -> int:
        """The least probe meeting `target` for sampled queries whose exact neighbours are `truth`."""
        return choose_probe(needed_probe(self.cells_by_distance(home), self.cell, truth), target,
                            min(least, self.n_cells))

    def exact_sample(self, data: np.ndarray, k: int, size: int, seed: int) -> SampleTruth:
        return exact_sample(data, k, size, seed)

    def search_all(self, k: int, probe: int) -> KnnGraph:
        """The stored rows' own kNN graph: each cell's rows among its `probe` nearest cells' rows."""
        return self.search(self.data, k, probe, home=self.cell)

    def search(self, queries: np.ndarray, k: int, probe: int, home: np.ndarray | None = None) -> KnnGraph:
        """k nearest stored rows of each query among its home cell's `probe` nearest cells."""
        n = self.data.shape[0]
        home = self.home(queries) if home is None else home
        near = self.cells_by_distance(np.arange(self.n_cells), min(probe, self.n_cells))
        distances = np.empty((queries.shape[0], k), dtype=np.float64)
        indices = np.empty((queries.shape[0], k), dtype=np.int64)
        by_home = np.argsort(home, kind="stable")
        bounds = np.searchsorted(home[by_home], np.arange(self.n_cells + 1))
        for c in range(self.n_cells):
            mine = by_home[bounds[c]:bounds[c + 1]]
            if mine.size == 0:
                continue
            pool = np.concatenate([self._order[self._starts[j]:self._starts[j + 1]] for j in near[c] if j >= 0])
            if pool.size < k:  # tiny neighbourhoods fall back to every row
                pool = np.arange(n)
            found = _block_search(self.data[pool], queries[mine], k)
            distances[mine] = found.distances
            indices[mine] = pool[found.indices]
        return KnnGraph(distances, indices)


def cell_knn(data: np.ndarray, k: int, cell_size: int = 2000, probe: int | None = None, seed: int = 0,
             recall_k: int | None = None, recall_target: float | None = 0.95, sample: int = RECALL_SAMPLE,
             torch_device: str | None = None) -> KnnGraph:
    """kNN by k-means cells: each cell's points search the union of the `probe` cells nearest its centroid.
    `CellIndex` searches on the CPU; with `torch_device` (cuda), `TorchCells` searches there.

    Without `probe`, the probe is the least that meets `recall_target` on a sample: a true neighbour
    is found exactly when its cell is among the probed ones, so one exact search of the sample gives
    the recall at every probe before any cell is searched. Past half the points per pool a flat
    exact search is cheaper, and is used."""
    n = data.shape[0]
    recall_k = min(recall_k or k, k)
    if torch_device is None:
        index = CellIndex.build(data, cell_size, seed)
    else:
        from lakelens.operators.hdbscan.torch_cells import TorchCells

        index = TorchCells.build(data, cell_size, seed, device=torch_device)
    started = time.perf_counter()
    truth = index.exact_sample(data, recall_k, sample, seed)
    if probe is None and recall_target is not None:
        probe = index.least_probe(truth, index.cell[truth.rows], recall_target, DEFAULT_PROBE)
    probe = min(index.n_cells, probe or DEFAULT_PROBE)
    measuring = time.perf_counter() - started
    if probe * n / index.n_cells >= n / 2:  # the pools would hold most points: one flat search is cheaper
        graph = _flat(data, k) if torch_device is None else index.search_all(k, index.n_cells)
        return KnnGraph(graph.distances, graph.indices, KnnReport("exact", k, recall_k, recall_target=recall_target,
                                                                  seconds_measuring=measuring))
    graph = index.search_all(k, probe)
    return KnnGraph(graph.distances, graph.indices,
                    _report("cells", k, graph, truth, recall_target, probe, index.n_cells, measuring))


def cell_query(index: CellIndex, queries: np.ndarray, k: int, recall_target: float | None = 0.95,
               probe: int | None = None, sample: int = RECALL_SAMPLE, seed: int = 0) -> KnnGraph:
    """k nearest stored rows of new points through `index`: at `probe`, or else at the least probe that
    meets `recall_target` on a sample of the queries (searched exactly), as `cell_knn` chooses it for the
    stored rows."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, m = index.data.shape[0], queries.shape[0]
    k = min(k, n)
    home = index.home(queries)
    if probe is None and recall_target is not None and m:
        truth = exact_sample(index.data, k, sample, seed, queries=queries)
        probe = index.least_probe(truth, home[truth.rows], recall_target, DEFAULT_PROBE)
    probe = min(index.n_cells, probe or DEFAULT_PROBE)
    if probe * n / index.n_cells >= n / 2:
        return _block_search(index.data, queries, k)
    return index.search(queries, k, probe, home=home)


def _block_search(stored: np.ndarray, queries: np.ndarray, k: int, cells: int = 1 << 24) -> KnnGraph:
    """Exact k nearest of `queries` among `stored`, ordered as `search`: BLAS products in blocks of
    about `cells` entries and a fused top-k pass (cheaper than FAISS's heaps for small k)."""
    stored_sq = np.einsum("ij,ij->i", stored, stored)
    distances = np.empty((queries.shape[0], k), dtype=np.float64)
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    step = max(1, cells // max(stored.shape[0], 1))
    best_d = np.empty((min(step, queries.shape[0]), k), dtype=np.float32)
    for lo in range(0, queries.shape[0], step):
        chunk = queries[lo:lo + step]
        idx = np.empty((chunk.shape[0], k), dtype=np.int64)
        _top_k(chunk @ stored.T, np.einsum("ij,ij->i", chunk, chunk), stored_sq, best_d[:chunk.shape[0]], idx)
        found = ordered_rows(exact_distances(stored, chunk, idx), idx, k)
        distances[lo:lo + step], indices[lo:lo + step] = found.distances, found.indices
    return KnnGraph(distances, indices)


@njit(parallel=True, cache=True)
def _top_k(dot: np.ndarray, query_sq: np.ndarray, stored_sq: np.ndarray, best_d: np.ndarray,
           best_i: np.ndarray) -> None:
    """Per row, the k smallest |q|^2 + |s|^2 - 2 q.s by insertion into a sorted list. Entries go
    in chunks of 32: a chunk whose least value cannot beat the current k-th is skipped after one
    vectorisable pass, which is what most chunks are once the list fills."""
    k = best_i.shape[1]
    m = dot.shape[1]
    for i in prange(dot.shape[0]):
        for t in range(k):
            best_d[i, t] = np.inf
            best_i[i, t] = -1
        worst = np.inf
        base = query_sq[i]
        buf = np.empty(32, dtype=np.float32)
        for lo in range(0, m, 32):
            hi = min(m, lo + 32)
            least = np.inf
            for j in range(lo, hi):
                d = base + stored_sq[j] - 2.0 * dot[i, j]
                buf[j - lo] = d
                least = min(least, d)
            if least >= worst:
                continue
            for j in range(lo, hi):
                d = buf[j - lo]
                if d < worst:
                    t = k - 1
                    while t > 0 and best_d[i, t - 1] > d:
                        best_d[i, t] = best_d[i, t - 1]
                        best_i[i, t] = best_i[i, t - 1]
                        t -= 1
                    best_d[i, t] = d
                    best_i[i, t] = j
                    worst = best_d[i, k - 1]


def _flat(data: np.ndarray, k: int, batch: int = 16_384) -> KnnGraph:
    distances = np.empty((data.shape[0], k), dtype=np.float64)
    indices = np.empty((data.shape[0], k), dtype=np.int64)
    for lo in range(0, data.shape[0], batch):
        found = _block_search(data, data[lo:lo + batch], k)
        distances[lo:lo + batch], indices[lo:lo + batch] = found.distances, found.indices
    return KnnGraph(distances, indices)


def merge_topk(parts: list[KnnGraph], k: int) -> KnnGraph:
    """Merge per-shard top-k results (indices already global) into the global top-k, ties by index."""
    return ordered_rows(np.concatenate([p.distances for p in parts], axis=1),
                         np.concatenate([p.indices for p in parts], axis=1), k)
