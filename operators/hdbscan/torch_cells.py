"""The kNN graph's k-means cells (knn.CellIndex) searched with PyTorch: on a CUDA GPU when one is
present, and on the CPU in the tests (the same code, on torch's CPU device).

The stored rows sit on the device in cell order, so a cell's candidates (the rows of the `probe`
cells nearest its centroid) are a few contiguous ranges; each cell's rows search them with one GEMM
and a top-k. Distances of the pairs found are then redone in float64 on the device and each row is
ordered by (distance, index), as knn.search orders rows, so only the finished graph crosses to the
host. The probe is chosen as the CPU cells choose it (knn.choose_probe over an exact sample).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from lakelens.operators.hdbscan.knn import (
    KnnGraph,
    SampleTruth,
    choose_probe,
    exact_distances,
    needed_probe,
    ordered_rows,
    sample_rows,
)

# entries of one distance block (float32): 1 GiB keeps the GPU's scratch small beside the data
BLOCK_ENTRIES = 1 << 28
# rows whose float64 distances are redone at once: (rows, k, dim) float64 stays ~1 GiB at k 16, dim 64
EXACT_CHUNK = 1 << 17


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU. torch is imported only where an NVIDIA driver is visible, so a
    CPU machine's fit does not pay torch's import."""
    if not any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/proc/driver/nvidia/version")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def nearest_centroid(rows: Any, centroids: Any) -> Any:
    """Each row's nearest centroid (a long tensor), by GEMM in blocks of BLOCK_ENTRIES."""
    import torch

    c_sq = (centroids * centroids).sum(1)
    out = torch.empty(rows.shape[0], dtype=torch.long, device=rows.device)
    step = max(1, BLOCK_ENTRIES // centroids.shape[0])
    for lo in range(0, rows.shape[0], step):
        # |r|^2 is the same for every centroid of a row: the argmin needs only |c|^2 - 2 r.c
        out[lo:lo + step] = torch.addmm(c_sq[None, :], rows[lo:lo + step], centroids.T, alpha=-2.0).argmin(1)
    return out


def kmeans(rows: Any, count: int, iterations: int, seed: int) -> Any:
    """Lloyd's k-means from `count` distinct rows drawn at random; an emptied cell keeps its centroid."""
    import torch

    start = np.sort(np.random.default_rng(seed).choice(rows.shape[0], count, replace=False))
    centroids = rows[torch.from_numpy(start).to(rows.device)].clone()
    for _ in range(iterations):
        assigned = nearest_centroid(rows, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assigned, rows)
        counts = torch.bincount(assigned, minlength=count)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].to(rows.dtype)
    return centroids


@dataclass
class TorchCells:
    """k-means cells over stored rows, held on a torch device in cell order."""

    rows: Any  # (n, dim) float32 tensor, the stored rows in cell order
    order: Any  # (n,) long tensor: the stored row (original id) at each position
    starts: np.ndarray  # (cells + 1,) each cell's first position
    centroids: Any  # (cells, dim) float32 tensor
    cell: np.ndarray  # (n,) each stored row's cell, by original id

    @classmethod
    def build(cls, data: np.ndarray, cell_size: int = 2000, seed: int = 0, device: str = "cuda",
              iterations: int = 12) -> "TorchCells":
        import torch

        n = data.shape[0]
        n_cells = max(1, int(round(n / cell_size)))
        rows = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(device)
        training = rows if n <= 64 * n_cells else rows[torch.from_numpy(
            np.sort(np.random.default_rng(seed).choice(n, 64 * n_cells, replace=False))).to(device)]
        centroids = kmeans(training, n_cells, iterations, seed)
        del training
        cell = nearest_centroid(rows, centroids)
        cell_sorted, order = torch.sort(cell, stable=True)
        rows = rows[order]
        starts = torch.searchsorted(cell_sorted, torch.arange(n_cells + 1, device=device)).cpu().numpy()
        return cls(rows, order, starts, centroids, cell.cpu().numpy())

    @property
    def n_cells(self) -> int:
        return self.centroids.shape[0]

    def cells_by_distance(self, cells: np.ndarray, count: int | None = None) -> np.ndarray:
        """Per given cell, the `count` (default all) cells nearest its centroid, nearest first, itself first."""
        import torch

        count = min(count or self.n_cells, self.n_cells)
        c_sq = (self.centroids * self.centroids).sum(1)
        wanted = torch.from_numpy(np.asarray(cells, dtype=np.int64)).to(self.centroids.device)
        out = np.empty((wanted.shape[0], count), dtype=np.int64)
        step = max(1, BLOCK_ENTRIES // self.n_cells)
        for lo in range(0, wanted.shape[0], step):
            mine = wanted[lo:lo + step]
            d = torch.addmm(c_sq[None, :], self.centroids[mine], self.centroids.T, alpha=-2.0)
            d.scatter_(1, mine[:, None], float("-inf"))  # rounding must not put another cell before itself
            nearest = (torch.topk(d, count, dim=1, largest=False, sorted=True).indices if count < self.n_cells
                       else torch.argsort(d, dim=1, stable=True))
            out[lo:lo + step] = nearest.cpu().numpy()
        return out

    def least_probe(self, truth: SampleTruth, home: np.ndarray, target: float, least: int) -> int:
        """The least probe meeting `target` for sampled rows whose exact neighbours are `truth`."""
        return choose_probe(needed_probe(self.cells_by_distance(home), self.cell, truth), target,
                            min(least, self.n_cells))

    def exact_sample(self, data: np.ndarray, k: int, size: int, seed: int) -> SampleTruth:
        """The rows knn.exact_sample draws, with their exact k nearest stored rows, by brute force here."""
        import torch

        rows = sample_rows(data.shape[0], size, seed)
        queries = torch.from_numpy(np.ascontiguousarray(data[rows], dtype=np.float32)).to(self.rows.device)
        k = min(k, self.rows.shape[0])
        best_d = torch.full((rows.size, k), float("inf"), device=self.rows.device)
        best_p = torch.zeros((rows.size, k), dtype=torch.long, device=self.rows.device)
        step = max(k, BLOCK_ENTRIES // max(rows.size, 1))
        for lo in range(0, self.rows.shape[0], step):
            block = self.rows[lo:lo + step]
            d = torch.addmm((block * block).sum(1)[None, :], queries, block.T, alpha=-2.0)
            top = torch.topk(d, min(k, block.shape[0]), dim=1, largest=False)
            merged_d = torch.cat([best_d, top.values], 1)
            merged_p = torch.cat([best_p, top.indices + lo], 1)
            keep = torch.topk(merged_d, k, dim=1, largest=False).indices
            best_d, best_p = merged_d.gather(1, keep), merged_p.gather(1, keep)
        idx = self.order[best_p].cpu().numpy()
        exact = ordered_rows(exact_distances(data, data[rows], idx), idx, k)
        return SampleTruth(rows, exact.distances, exact.indices)

    def _candidates(self, cells: np.ndarray) -> Any:
        """Positions of every row of the given cells, as one long tensor on the device."""
        import torch

        first, last = self.starts[cells], self.starts[cells + 1]
        lengths = last - first
        offsets = np.cumsum(lengths) - lengths
        positions = np.repeat(first - offsets, lengths) + np.arange(int(lengths.sum()))
        return torch.from_numpy(positions).to(self.rows.device)

    def search_all(self, k: int, probe: int) -> KnnGraph:
        """The stored rows' own kNN graph: each cell's rows among its `probe` nearest cells' rows."""
        import torch

        n, device = self.rows.shape[0], self.rows.device
        k = min(k, n)
        near = self.cells_by_distance(np.arange(self.n_cells), min(probe, self.n_cells))
        squares = (self.rows * self.rows).sum(1)
        found = torch.empty((n, k), dtype=torch.long, device=device)  # neighbour positions, by position
        everyone = None
        for c in range(self.n_cells):
            lo, hi = int(self.starts[c]), int(self.starts[c + 1])
            if hi == lo:
                continue
            pool = self._candidates(near[c])
            if pool.shape[0] < k:  # tiny neighbourhoods fall back to every row
                pool = everyone = torch.arange(n, device=device) if everyone is None else everyone
            pool_rows, pool_sq = self.rows[pool], squares[pool]
            step = max(1, BLOCK_ENTRIES // pool.shape[0])
            for q in range(lo, hi, step):
                d = torch.addmm(pool_sq[None, :], self.rows[q:min(hi, q + step)], pool_rows.T, alpha=-2.0)
                found[q:min(hi, q + step)] = pool[torch.topk(d, k, dim=1, largest=False, sorted=False).indices]
        return self._finished(found)

    def _finished(self, found: Any) -> KnnGraph:
        """Positions found per position -> the graph by original id: float64 distances, rows ordered by
        (distance, index)."""
        import torch

        n, k = found.shape
        distances = np.empty((n, k), dtype=np.float64)
        indices = np.empty((n, k), dtype=np.int64)
        for lo in range(0, n, EXACT_CHUNK):
            hi = min(n, lo + EXACT_CHUNK)
            here = found[lo:hi]
            gap = self.rows[here].double() - self.rows[lo:hi, None, :].double()
            d = (gap * gap).sum(-1).sqrt()
            ids = self.order[here]
            ids, by_id = torch.sort(ids, dim=1)  # ties in distance then resolve by index, as everywhere
            d, by_distance = torch.sort(d.gather(1, by_id), dim=1, stable=True)
            ids = ids.gather(1, by_distance)
            owners = self.order[lo:hi].cpu().numpy()
            distances[owners], indices[owners] = d.cpu().numpy(), ids.cpu().numpy()
        return KnnGraph(distances, indices)
