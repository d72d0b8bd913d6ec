"""Reviewers' verdicts on clusters: an append-only table beside the job outputs.

Each verdict is its own Parquet file, written atomically and never rewritten, so two reviewers
saving at once cannot lose each other's work and the full history stays queryable. The latest
verdict per cluster key is what the catalog's `flagged_clusters` view shows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from lakelens.infra.catalog import open_catalog
from lakelens.infra.contracts import REVIEWS_DIR, REVIEWS_SCHEMA, VERDICTS
from lakelens.infra.storage import Lake

__all__ = ["REVIEWS_DIR", "REVIEWS_SCHEMA", "VERDICTS", "Review", "record_review"]


@dataclass(frozen=True)
class Review:
    cluster_key: str
    verdict: str
    reviewer: str
    comment: str = ""
    run_id: str | None = None  # the run the reviewer looked at; default: the latest published one


def record_review(lake: Lake, review: Review) -> dict:
    """Validate and append one verdict; returns the stored row."""
    if review.verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}; got {review.verdict!r}")
    if not review.reviewer.strip():
        raise ValueError("a review needs the reviewer's name")
    run_id = _published_run_of(lake, review.cluster_key, review.run_id)
    now = datetime.now(timezone.utc)
    row = {"review_id": f"{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}", "cluster_key": review.cluster_key,
           "run_id": run_id, "verdict": review.verdict, "reviewer": review.reviewer.strip(), "reviewed_at": now,
           "comment": review.comment}
    lake.write_table(f"{REVIEWS_DIR}/dt={now:%Y-%m-%d}/{row['review_id']}.parquet",
                     pa.Table.from_pylist([row], schema=REVIEWS_SCHEMA))
    return row


def _published_run_of(lake: Lake, cluster_key: str, run_id: str | None) -> str:
    con = open_catalog(lake)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "clusters_all_runs" not in tables:
        raise LookupError(f"{lake.uri()} has no published behavior-clusters run to review")
    rows = con.execute("""SELECT c.run_id FROM clusters_all_runs c JOIN runs r USING (run_id)
                          WHERE c.cluster_key = ? AND (? IS NULL OR c.run_id = ?)
                          ORDER BY r.committed_at DESC LIMIT 1""", [cluster_key, run_id, run_id]).fetchall()
    if not rows:
        where = f" in run {run_id}" if run_id else ""
        raise LookupError(f"no published cluster {cluster_key!r}{where}; see `SELECT cluster_key FROM flagged_clusters`")
    return rows[0][0]
