"""Cluster risk from partial labels: how much fraud a cluster holds, with honest uncertainty.

Most transactions have no label yet (chargebacks arrive late), so a cluster's fraud rate is
measured on its labelled members, with a Wilson lower bound so a small cluster with two
chargebacks does not outrank a large one with fifty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

NOISE = -1


@dataclass(frozen=True)
class RiskThresholds:
    """A cluster is flagged when all hold. Defaults suit daily windows of thousands of transactions."""

    min_size: int = 20
    min_labelled: int = 3
    min_fraud_rate_lower: float = 0.25  # Wilson lower bound of the fraud rate among labelled members
    # fraud rate over the window's base rate; capped at halfway to the largest lift the labels allow
    # (1 / base rate), since where confirmed labels are mostly chargebacks the base rate is high and
    # even a cluster of pure fraud cannot reach a fixed lift (see `required_lift`)
    min_lift: float = 3.0
    confidence_z: float = 1.96


def required_lift(min_lift: float, base_rate: float) -> float:
    """The lift a cluster must reach: `min_lift`, or halfway to 1 / base rate when that is lower."""
    if base_rate <= 0:
        return min_lift
    return min(min_lift, (1.0 + 1.0 / base_rate) / 2)


def wilson_lower(successes: np.ndarray, trials: np.ndarray, z: float = 1.96) -> np.ndarray:
    """Lower end of the Wilson score interval; 0 where there are no trials."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        centre = p + z * z / (2 * n)
        margin = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lower = (centre - margin) / (1 + z * z / n)
    return np.where(n > 0, np.clip(lower, 0, 1), 0.0)


RISK_SCHEMA = pa.schema([
    ("cluster_id", pa.int64()),
    ("size", pa.int64()),
    ("labelled", pa.int64()),
    ("fraud", pa.int64()),
    ("fraud_rate", pa.float64()),
    ("fraud_rate_lower", pa.float64()),
    ("lift", pa.float64()),
    ("declined_share", pa.float64()),
    ("amount", pa.float64()),
    ("persistence", pa.float64()),
    ("flagged", pa.bool_()),
])


def cluster_risk(cluster_ids: np.ndarray, label: np.ndarray, declined: np.ndarray, amount: np.ndarray,
                 persistence: np.ndarray, thresholds: RiskThresholds) -> pa.Table:
    """One row per cluster (noise excluded). `label`: 1 fraud, 0 legit, -1 unknown."""
    cluster_ids = np.asarray(cluster_ids)
    clusters = np.unique(cluster_ids[cluster_ids != NOISE])
    labelled_all = label >= 0
    base_rate = (label == 1).sum() / max(labelled_all.sum(), 1)
    index = np.searchsorted(clusters, cluster_ids)
    member = cluster_ids != NOISE

    def per_cluster(values: np.ndarray) -> np.ndarray:
        return np.bincount(index[member], weights=values[member].astype(np.float64), minlength=len(clusters))

    size = per_cluster(np.ones(len(cluster_ids)))
    labelled = per_cluster(labelled_all)
    fraud = per_cluster(label == 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(labelled > 0, fraud / labelled, 0.0)
        lift = np.where(base_rate > 0, rate / base_rate, 0.0)
    lower = wilson_lower(fraud, labelled, thresholds.confidence_z)
    flagged = ((size >= thresholds.min_size) & (labelled >= thresholds.min_labelled)
               & (lower >= thresholds.min_fraud_rate_lower) & (lift >= required_lift(thresholds.min_lift, base_rate)))
    return pa.table({
        "cluster_id": pa.array(clusters.astype(np.int64)),
        "size": pa.array(size.astype(np.int64)),
        "labelled": pa.array(labelled.astype(np.int64)),
        "fraud": pa.array(fraud.astype(np.int64)),
        "fraud_rate": pa.array(rate),
        "fraud_rate_lower": pa.array(lower),
        "lift": pa.array(lift),
        "declined_share": pa.array(per_cluster(declined) / np.maximum(size, 1)),
        "amount": pa.array(per_cluster(amount)),
        "persistence": pa.array(np.asarray(persistence, dtype=np.float64)[clusters] if len(clusters) else
                                np.zeros(0)),
        "flagged": pa.array(flagged),
    }, schema=RISK_SCHEMA)
