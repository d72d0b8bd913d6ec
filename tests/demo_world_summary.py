"""What the published tables of a lake hold, in a form that survives refactors: row counts and cluster keys.

Reads commit manifests and Parquet files directly (no catalog, no job code), so the same summary can be
taken from a lake written by any version of the jobs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

KEYED_TABLES = ("txn_clusters", "clusters", "cluster_rules")


def published_tables_summary(lake) -> dict[str, Any]:
    """Per visible (job, partition): each table's row count; for clustering tables, their cluster keys."""
    visible: dict[tuple[str, str], dict[str, Any]] = {}
    for job in lake.list_dirs("runs"):
        manifests = [lake.read_json(e.path) for e in lake.list_files(f"runs/{job}/_commits", suffix=".json")]
        for m in sorted(manifests, key=lambda m: (m["committed_at"], m["attempt_id"])):
            visible[(m["job"], m["partition"])] = m
    summary: dict[str, Any] = {}
    for (job, partition), m in sorted(visible.items()):
        tables: dict[str, Any] = {}
        for table, output in sorted(m["outputs"].items()):
            entry: dict[str, Any] = {"rows": output["rows"]}
            if table in KEYED_TABLES:
                import pyarrow as pa

                columns = {"txn_clusters": ["transaction_id", "cluster_key"], "clusters": ["cluster_key", "size"],
                           "cluster_rules": ["cluster_key", "rule_id"]}[table]
                parts = [lake.read_table(f["path"], columns=columns) for f in output["files"]]
                rows = pa.concat_tables(parts).to_pylist() if parts else []
                if table == "txn_clusters":
                    sizes = Counter(r["cluster_key"] or "noise" for r in rows)
                    pairs = "\n".join(sorted(f"{r['transaction_id']}\t{r['cluster_key']}" for r in rows))
                    entry["members_per_key"] = dict(sorted(sizes.items()))
                    entry["membership_sha1"] = hashlib.sha1(pairs.encode()).hexdigest()
                elif table == "clusters":
                    entry["sizes"] = dict(sorted((r["cluster_key"], r["size"]) for r in rows))
                else:
                    entry["rule_ids"] = sorted(r["rule_id"] for r in rows)
            tables[table] = entry
        summary[f"{job}/{partition}"] = tables
    return summary
