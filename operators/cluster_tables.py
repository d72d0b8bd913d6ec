"""The behaviour-clusters job's result tables, assembled from arrays: schemas, keys and rows."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.operators.lineage import GONE, lineage_status
from lakelens.operators.narratives import cluster_narrative

TOP_EVENTS_TYPE = pa.list_(pa.struct([("position", pa.int32()), ("event_id", pa.string()),
                                      ("event_type", pa.string()), ("weight", pa.float32())]))
CLUSTERS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("cluster_key", pa.string()), ("cluster_id", pa.int64()), ("size", pa.int64()),
    ("labelled", pa.int64()), ("fraud", pa.int64()), ("fraud_rate", pa.float64()), ("fraud_rate_lower", pa.float64()),
    ("lift", pa.float64()), ("declined_share", pa.float64()), ("amount", pa.float64()), ("persistence", pa.float64()),
    ("flagged", pa.bool_()), ("lineage_status", pa.string()), ("previous_size", pa.int64()),
    ("top_event_types", pa.list_(pa.string())), ("narrative", pa.string()),
    # novelty: distance from the cluster's centroid to the nearest cluster of the previous run (null: none)
    ("novelty", pa.float64()), ("mean_outlier_score", pa.float64()),
    ("distinctive_event_types", pa.list_(pa.string())),  # over-represented among its members' attended events
    ("unseen_event_types", pa.list_(pa.string())),  # attended events whose type the encoder never saw
    ("emerging", pa.bool_()),  # new, or grown fast: shown to reviewers even without labels
])
RULES_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("cluster_key", pa.string()), ("rule_id", pa.string()), ("sql_predicate", pa.string()),
    ("description", pa.string()), ("precision", pa.float64()), ("coverage", pa.float64()), ("support", pa.int64()),
    ("fraud_rate", pa.float64()), ("lift", pa.float64()), ("narrative", pa.string()),
])


def txn_clusters_schema(embedding_dim: int) -> pa.Schema:
    """Per transaction of the window; the embedding is as wide as the encoder's (its model card says)."""
    return pa.schema([
        ("transaction_id", pa.string()), ("dt", pa.string()), ("run_id", pa.string()), ("cluster_key", pa.string()),
        ("cluster_id", pa.int64()), ("probability", pa.float64()), ("outlier_score", pa.float64()),
        ("embedding", pa.list_(pa.float32(), embedding_dim)), ("top_events", TOP_EVENTS_TYPE),
    ])


def cluster_keys(transaction_ids: pa.Array | pa.ChunkedArray, labels: np.ndarray, partition: str) -> dict[int, str]:
    """A key per cluster from its smallest member id: the same clustering gives the same keys."""
    firsts = pa.table({"cluster": labels, "transaction_id": transaction_ids}).filter(
        pa.array(labels >= 0)).group_by("cluster").aggregate([("transaction_id", "min")])
    return {int(c): "ck-" + hashlib.sha1(f"{partition}/{first}".encode()).hexdigest()[:10]
            for c, first in zip(firsts["cluster"].to_pylist(), firsts["transaction_id_min"].to_pylist())}


def top_event_types(top_events: pa.ChunkedArray | pa.Array, labels: np.ndarray, k: int = 3) -> dict[int, list[str]]:
    """Per cluster, the event types with the most attention weight summed over its members."""
    tops = top_events.combine_chunks() if isinstance(top_events, pa.ChunkedArray) else top_events
    flat = pc.list_flatten(tops)
    if len(flat) == 0:
        return {}
    owner = labels[pc.list_parent_indices(tops).to_numpy()]
    sums = pa.table({"cluster": owner, "event_type": flat.field("event_type"), "weight": flat.field("weight")}).filter(
        pa.array(owner >= 0)).group_by(["cluster", "event_type"]).aggregate([("weight", "sum")])
    ranked = sums.sort_by([("cluster", "ascending"), ("weight_sum", "descending"), ("event_type", "ascending")])
    out: dict[int, list[str]] = {}
    for cluster, event_type in zip(ranked["cluster"].to_pylist(), ranked["event_type"].to_pylist()):
        chosen = out.setdefault(int(cluster), [])
        if len(chosen) < k:
            chosen.append(event_type)
    return out


def distinctive_event_types(top_events: pa.ChunkedArray | pa.Array, labels: np.ndarray, k: int = 3,
                            min_lift: float = 2.0, min_count: int = 3) -> dict[int, list[str]]:
    """Per cluster, the attended event types most over-represented against the whole window (by lift)."""
    tops = top_events.combine_chunks() if isinstance(top_events, pa.ChunkedArray) else top_events
    flat = pc.list_flatten(tops)
    if len(flat) == 0:
        return {}
    owner = labels[pc.list_parent_indices(tops).to_numpy()]
    types = flat.field("event_type").to_numpy(zero_copy_only=False).astype(str)
    names, type_id = np.unique(types, return_inverse=True)
    overall = np.bincount(type_id, minlength=len(names)) / len(type_id)
    out: dict[int, list[str]] = {}
    for cluster in np.unique(owner[owner >= 0]):
        mine = type_id[owner == cluster]
        counts = np.bincount(mine, minlength=len(names))
        lift = (counts / max(len(mine), 1)) / np.maximum(overall, 1e-12)
        ranked = [j for j in np.lexsort((names, -lift)) if counts[j] >= min_count and lift[j] >= min_lift]
        out[int(cluster)] = [str(names[j]) for j in ranked[:k]]
    return out


def unseen_event_types(top_events: pa.ChunkedArray | pa.Array, labels: np.ndarray, known: set[str],
                       k: int = 5) -> dict[int, list[str]]:
    """Per cluster, its members' attended event types that are not in `known` (the encoder's vocabulary)."""
    tops = top_events.combine_chunks() if isinstance(top_events, pa.ChunkedArray) else top_events
    flat = pc.list_flatten(tops)
    if len(flat) == 0:
        return {}
    owner = labels[pc.list_parent_indices(tops).to_numpy()]
    out: dict[int, list[str]] = {}
    for cluster, event_type in zip(owner, flat.field("event_type").to_pylist()):
        if cluster >= 0 and event_type not in known:
            found = out.setdefault(int(cluster), [])
            if event_type not in found and len(found) < k:
                found.append(event_type)
    return out


def clusters_table(run_id: str, risk: pa.Table, keys: dict[int, str], labels: np.ndarray, top_events: pa.ChunkedArray,
                   rules: pa.Table, previous_sizes: dict[str, int], size_tolerance: float,
                   novelty: dict[int, float] | None = None, outlier_scores: np.ndarray | None = None,
                   known_event_types: set[str] | None = None, emerging_growth: float = 1.5) -> pa.Table:
    """One row per cluster of this run, plus a `gone` row for each of the previous run's that did not continue.

    A cluster is `emerging` when it is new in this run after an earlier run existed, or grew at least
    `emerging_growth` times; emerging and flagged clusters get a narrative.
    """
    rule_rows = rules.to_pylist()
    tops = top_event_types(top_events, labels)
    distinctive = distinctive_event_types(top_events, labels)
    unseen = unseen_event_types(top_events, labels, known_event_types) if known_event_types else {}
    novelty = novelty or {}
    total = len(labels)
    had_previous = bool(previous_sizes)
    rows = []
    for r in risk.to_pylist():
        cluster, key = r["cluster_id"], keys[r["cluster_id"]]
        top = tops.get(cluster, [])
        mine = [x for x in rule_rows if x["cluster_key"] == key]
        before = previous_sizes.get(key)
        status = lineage_status(before, r["size"], size_tolerance)
        emerging = had_previous and (before is None or r["size"] >= emerging_growth * max(before, 1))
        described = {"distinctive": distinctive.get(cluster, []), "unseen": unseen.get(cluster, []),
                     "novelty": novelty.get(cluster)}
        rows.append({"run_id": run_id, "cluster_key": key, **r, "lineage_status": status, "previous_size": before,
                     "top_event_types": top,
                     "narrative": (cluster_narrative(r, total, top, mine, status, before, **described)
                                   if r["flagged"] or emerging else ""),
                     "novelty": described["novelty"],
                     "mean_outlier_score": (float(outlier_scores[labels == cluster].mean())
                                            if outlier_scores is not None else None),
                     "distinctive_event_types": described["distinctive"], "unseen_event_types": described["unseen"],
                     "emerging": emerging})
    continuing = set(keys.values())
    for key, before in sorted(previous_sizes.items()):
        if key not in continuing:
            rows.append({"run_id": run_id, "cluster_key": key, "cluster_id": None, "size": 0, "labelled": 0,
                         "fraud": 0, "fraud_rate": 0.0, "fraud_rate_lower": 0.0, "lift": 0.0, "declined_share": 0.0,
                         "amount": 0.0, "persistence": 0.0, "flagged": False, "lineage_status": GONE,
                         "previous_size": before, "top_event_types": [], "narrative": "", "novelty": None,
                         "mean_outlier_score": None, "distinctive_event_types": [], "unseen_event_types": [],
                         "emerging": False})
    return pa.Table.from_pylist(rows, schema=CLUSTERS_SCHEMA)


def rules_table(run_id: str, found: list[dict[str, Any]], measured: dict[str, dict[str, float]]) -> pa.Table:
    """`found`: {cluster_key, rule_id, rule} per rule; `measured`: each rule's metrics by rule_id."""
    from lakelens.operators.narratives import rule_narrative

    return pa.Table.from_pylist([{
        "run_id": run_id, "cluster_key": r["cluster_key"], "rule_id": r["rule_id"], "sql_predicate": r["rule"].sql(),
        "description": r["rule"].words(), **measured[r["rule_id"]],
        "narrative": rule_narrative(r["rule"].words(), measured[r["rule_id"]]),
    } for r in found], schema=RULES_SCHEMA)
