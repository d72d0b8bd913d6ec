"""Unsupervised-quality measures for embeddings, used by tests, benchmarks and the training report."""

from __future__ import annotations

import numpy as np


def knn_purity(points: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each point's k nearest neighbours (itself excluded) that share its label."""
    import faiss

    x = np.ascontiguousarray(points, dtype=np.float32)
    if len(x) <= k:
        raise ValueError(f"kNN purity needs more than k={k} points, got {len(x)}")
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, neighbours = index.search(x, k + 1)
    # drop each point itself; with exact duplicates it may not come first, so remove it by id
    own = neighbours == np.arange(len(x))[:, None]
    keep = np.where(own.any(axis=1, keepdims=True), ~own, np.arange(k + 1)[None, :] < k)
    picked = neighbours[keep].reshape(len(x), k)
    labels = np.asarray(labels)
    return float((labels[picked] == labels[:, None]).mean())


def top_k_hit_rate(attention: list[np.ndarray], event_types: list[list[str]], targets: set[str], k: int = 3) -> float:
    """Share of sequences whose k most-attended events include one of `targets`."""
    hits = []
    for weights, types in zip(attention, event_types):
        top = np.argsort(-np.asarray(weights), kind="stable")[:k]
        hits.append(any(types[i] in targets for i in top))
    return float(np.mean(hits)) if hits else float("nan")
