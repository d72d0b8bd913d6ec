"""Drift: how far today's data has moved from what the encoder was trained on, and whether to retrain.

    vocabulary_drift   the share of today's events whose type the encoder never saw, and which they are
    embedding_shift    mean distance from today's embeddings to their k nearest neighbours in a stored
                       sample of the training data's (held-out) embeddings, over the same distance
                       among the reference points themselves: about 1 when today looks like training,
                       larger as today's behaviour moves into regions the encoder never saw
    retrain_advice     the thresholds a scheduled job acts on
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from lakelens.operators.encoder.vocabulary import RESERVED


def vocabulary_drift(event_counts: Mapping[str, int], known: tuple[str, ...], top: int = 10) -> dict[str, Any]:
    """Counts of today's event types against the encoder's vocabulary (`known`: its tokens)."""
    vocabulary = set(known) - set(RESERVED)
    total = int(sum(event_counts.values()))
    unseen = sorted(((t, int(c)) for t, c in event_counts.items() if t not in vocabulary), key=lambda x: (-x[1], x[0]))
    oov = sum(c for _, c in unseen)
    return {"events": total, "oov_events": oov, "oov_share": oov / total if total else 0.0,
            "top_unseen_event_types": [t for t, _ in unseen[:top]]}


def embedding_shift(reference: np.ndarray, sample: np.ndarray, k: int = 10) -> float:
    """Mean kNN distance of `sample` to `reference`, over the reference's own leave-one-out kNN distance."""
    reference = np.asarray(reference, dtype=np.float32)
    sample = np.asarray(sample, dtype=np.float32)
    if reference.shape[0] <= k or sample.shape[0] == 0:
        return float("nan")
    k = min(k, reference.shape[0] - 1)
    within = _knn_mean_distance(reference, reference, k + 1, skip_self=True)
    today = _knn_mean_distance(sample, reference, k, skip_self=False)
    return float(today / within) if within > 0 else float("nan")


def _knn_mean_distance(queries: np.ndarray, points: np.ndarray, k: int, skip_self: bool) -> float:
    means = []
    for start in range(0, queries.shape[0], 1024):  # bounded memory: 1024 x reference distances at a time
        block = queries[start:start + 1024]
        squared = (block ** 2).sum(1)[:, None] + (points ** 2).sum(1)[None, :] - 2 * block @ points.T
        nearest = np.sqrt(np.maximum(np.partition(squared, k - 1, axis=1)[:, :k], 0))
        nearest.sort(axis=1)
        means.append((nearest[:, 1:] if skip_self else nearest).mean(1))
    return float(np.concatenate(means).mean())


@dataclass(frozen=True)
class DriftThresholds:
    max_oov_share: float = 0.05
    max_embedding_shift: float = 1.5
    max_refused_share: float = 0.3


def retrain_advice(drift: Mapping[str, Any], thresholds: DriftThresholds) -> list[str]:
    """Why a retrain is recommended (empty: it is not)."""
    reasons = []
    if drift.get("oov_share", 0.0) > thresholds.max_oov_share:
        reasons.append(f"{drift['oov_share']:.1%} of events have types the encoder never saw "
                       f"(> {thresholds.max_oov_share:.0%}): {', '.join(drift.get('top_unseen_event_types', [])[:5])}")
    shift = drift.get("embedding_shift")
    if shift is not None and np.isfinite(shift) and shift > thresholds.max_embedding_shift:
        reasons.append(f"embeddings moved {shift:.2f}x away from the training reference (> {thresholds.max_embedding_shift})")
    refused = drift.get("refused_share")
    if refused is not None and refused > thresholds.max_refused_share:
        reasons.append(f"{refused:.0%} of new transactions fit no existing cluster (> {thresholds.max_refused_share:.0%})")
    return reasons
