"""Cluster lineage across runs: which of today's clusters continue which of yesterday's.

Two runs over sliding windows share most of their transactions, so a cluster that persists keeps
most of its members; that overlap (Jaccard over the shared transactions) is the main evidence.
Where a cluster shares no members with any earlier one (the shared days had none of its kind),
its centroid in feature space stands in. Matching is one-to-one and greedy, best pair first: a
split keeps the key on its larger share, a merge keeps one of the keys and the other is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

NEW, GROWING, STABLE, SHRINKING, GONE = "new", "growing", "stable", "shrinking", "gone"


@dataclass(frozen=True)
class LineageParams:
    min_member_overlap: float = 0.3  # Jaccard over shared transactions needed to continue a cluster
    max_centroid_distance: float = 0.25  # fallback when no members are shared, in feature units
    size_tolerance: float = 0.1  # relative size change still called stable


def member_overlap(previous_ids: pa.Array, previous_keys: pa.Array, current_ids: pa.Array,
                   current_labels: np.ndarray) -> dict[tuple[str, int], float]:
    """Jaccard of every (previous key, current label) pair over the transactions both runs clustered."""
    previous = pa.table({"transaction_id": previous_ids, "key": previous_keys})
    current = pa.table({"transaction_id": current_ids, "label": pa.array(np.asarray(current_labels, np.int64))})
    shared = previous.join(current, "transaction_id", join_type="inner")
    if shared.num_rows == 0:
        return {}
    keys = shared.column("key").to_numpy(zero_copy_only=False)
    labels = shared.column("label").to_numpy()
    clustered_before = np.array([k is not None for k in keys])
    both = clustered_before & (labels >= 0)
    pairs = pa.table({"key": keys[both], "label": labels[both]}).group_by(["key", "label"]).aggregate([("key", "count")])
    before = dict(zip(*np.unique(keys[clustered_before].astype(str), return_counts=True)))
    now = dict(zip(*np.unique(labels[labels >= 0], return_counts=True)))
    out = {}
    for key, label, inter in zip(pairs["key"].to_pylist(), pairs["label"].to_pylist(), pairs["key_count"].to_pylist()):
        out[(key, int(label))] = inter / (before[key] + now[label] - inter)
    return out


def match_clusters(overlap: dict[tuple[str, int], float], previous_centroids: dict[str, np.ndarray],
                   current_centroids: dict[int, np.ndarray], params: LineageParams) -> dict[int, str]:
    """Current label -> the previous key it continues; unmatched labels are absent (new clusters)."""
    matched: dict[int, str] = {}
    taken: set[str] = set()
    by_overlap = sorted(((score, key, label) for (key, label), score in overlap.items()
                         if score >= params.min_member_overlap), key=lambda x: (-x[0], x[1], x[2]))
    for _, key, label in by_overlap:
        if label not in matched and key not in taken:
            matched[label] = key
            taken.add(key)
    # only clusters with no shared members at all fall back to centroids
    has_members = {label for (_, label) in overlap}
    open_labels = [label for label in current_centroids if label not in matched and label not in has_members]
    open_keys = [key for key in previous_centroids if key not in taken]
    pairs = []
    for label in open_labels:
        for key in open_keys:
            distance = float(np.linalg.norm(current_centroids[label] - previous_centroids[key]))
            if distance <= params.max_centroid_distance:
                pairs.append((distance, key, label))
    for _, key, label in sorted(pairs):
        if label not in matched and key not in taken:
            matched[label] = key
            taken.add(key)
    return matched


def lineage_status(previous_size: int | None, size: int, tolerance: float) -> str:
    """new, growing, stable or shrinking, from the size a key had in the previous run."""
    if previous_size is None:
        return NEW
    if size > previous_size * (1 + tolerance):
        return GROWING
    if size < previous_size * (1 - tolerance):
        return SHRINKING
    return STABLE


def centroids(features: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """Mean feature vector of each cluster (noise excluded)."""
    member = labels >= 0
    if not member.any():
        return {}
    clusters, index = np.unique(labels[member], return_inverse=True)
    sums = np.zeros((clusters.size, features.shape[1]))
    np.add.at(sums, index, features[member])
    means = sums / np.bincount(index)[:, None]
    return {int(c): means[i] for i, c in enumerate(clusters)}
