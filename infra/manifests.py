"""Reading commit manifests in bulk.

A run is published when its manifest lands at `runs/<job>/_commits/<partition>/<run_id>.<attempt>.json`.
Reading them one file at a time costs one request each on S3; here DuckDB reads every one in a
single glob (httpfs on S3), and Python parses the JSON.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import duckdb

from lakelens.infra.storage import Lake, sql_literal

COMMITS = "_commits"


def read_commit_manifests(lake: Lake, job: str | None = None, *,
                          con: duckdb.DuckDBPyConnection | None = None) -> list[dict[str, Any]]:
    """Every committed manifest of `job` (all jobs when None), oldest first by (committed_at, attempt_id).

    `con` reuses a connection that can already read the lake (the catalog's); otherwise one is opened.
    """
    pattern = lake.uri("runs", job or "*", COMMITS) + "/**/*.json"
    own = con is None
    con = lake.duckdb_connect() if own else con
    try:
        rows = con.execute(f"SELECT filename, content FROM read_text({sql_literal(pattern)})").fetchall()
    except duckdb.IOException as exc:
        # a glob that matches nothing is an error in DuckDB; here it is a lake with no commits yet
        if "No files found" in str(exc):
            return []
        raise
    finally:
        if own:
            con.close()
    manifests = [json.loads(content) for filename, content in rows if not _in_progress(filename)]
    return sorted(manifests, key=lambda m: (m["committed_at"], m["attempt_id"]))


def _in_progress(filename: str) -> bool:
    """Temporary files of an atomic write (the same rule as Lake.list_files)."""
    return PurePosixPath(filename).name.startswith((".", "_tmp"))
