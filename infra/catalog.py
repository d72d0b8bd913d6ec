"""The DuckDB catalog: views over the input tables and over published runs only.

- `events`, `transactions`: the raw inputs (Hive-partitioned by dt).
- `<table>`: for every result table, the latest published run of each partition.
- `<table>_all_runs`: every published run (the last attempt of each run id), carrying run_id.
- `runs`: one row per published run; `quarantine`: rejected rows of the visible runs.
- `cluster_reviews`: reviewers' verdicts (append-only, see infra/reviews.py).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import duckdb

import pyarrow as pa

from lakelens.infra.runs import latest_per_partition, latest_per_run_id, published_manifests
from lakelens.infra.storage import Lake

INPUT_TABLES = ("events", "transactions")


def open_catalog(lake: Lake, database: str = ":memory:"):
    """A DuckDB connection with the catalog's views defined."""
    con = lake.duckdb_connect(database)
    for table in INPUT_TABLES:
        if lake.list_files(table, suffix=".parquet"):
            try:
                con.execute(
                    f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet("
                    f"{_sql_str(lake.uri(table) + '/**/*.parquet')}, hive_partitioning = true, union_by_name = true)"
                )
            except duckdb.Error as exc:
                # one broken raw file must not take the result tables down with it
                warnings.warn(f"view {table!r} not created: {exc}", stacklevel=2)

    manifests = published_manifests(lake)
    visible = latest_per_partition(manifests)
    every_run = latest_per_run_id(manifests)
    _create_runs_table(con, every_run, visible)

    for table in sorted({t for m in every_run for t in m["outputs"]}):
        _create_union_view(con, lake, table, _files_of(visible, table))
        _create_union_view(con, lake, f"{table}_all_runs", _files_of(every_run, table))

    _create_reviews_view(con, lake)
    quarantine_files = [f for m in visible for q in m.get("quarantine", {}).values() for f in q["files"]]
    if quarantine_files:
        _create_union_view(con, lake, "quarantine", quarantine_files)
    _create_analyst_views(con)
    return con


def _create_reviews_view(con, lake: Lake) -> None:
    from lakelens.infra.reviews import REVIEWS_DIR, REVIEWS_SCHEMA

    if lake.list_files(REVIEWS_DIR, suffix=".parquet"):
        con.execute(f"CREATE OR REPLACE VIEW cluster_reviews AS SELECT * EXCLUDE (dt) FROM read_parquet("
                    f"{_sql_str(lake.uri(REVIEWS_DIR) + '/**/*.parquet')}, hive_partitioning = true)")
    elif "behavior-clusters" in lake.list_dirs("runs"):
        # an empty table keeps the analyst views' shape the same before the first verdict
        con.register("_no_reviews", REVIEWS_SCHEMA.empty_table())
        con.execute("CREATE OR REPLACE TABLE cluster_reviews AS SELECT * FROM _no_reviews")
        con.unregister("_no_reviews")


def _create_analyst_views(con) -> None:
    """Views and macros over the behaviour-clustering tables, for analysts and reviewers."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if not {"clusters", "txn_clusters", "cluster_rules", "runs"} <= tables:
        return
    con.execute("""CREATE OR REPLACE VIEW latest_reviews AS
        SELECT * FROM cluster_reviews QUALIFY row_number() OVER (
            PARTITION BY cluster_key ORDER BY reviewed_at DESC, review_id DESC) = 1""")
    con.execute("""CREATE OR REPLACE VIEW flagged_clusters AS
        SELECT r.partition, c.*, v.verdict AS latest_verdict, v.reviewer AS latest_reviewer,
               v.reviewed_at AS latest_reviewed_at
        FROM clusters c JOIN runs r USING (run_id) LEFT JOIN latest_reviews v USING (cluster_key)
        WHERE c.flagged ORDER BY c.fraud_rate_lower DESC, c.size DESC""")
    con.execute("""CREATE OR REPLACE VIEW cluster_members AS
        SELECT x.run_id, x.cluster_key, c.flagged, x.probability, x.outlier_score, x.top_events, t.*
        FROM txn_clusters x JOIN clusters c USING (run_id, cluster_key)
        JOIN transactions t USING (transaction_id)""")
    con.execute("""CREATE OR REPLACE VIEW rules AS
        SELECT r.*, c.size AS cluster_size, c.fraud_rate_lower AS cluster_fraud_rate_lower
        FROM cluster_rules r JOIN clusters c USING (run_id, cluster_key) ORDER BY r.rule_id""")
    if "clusters_all_runs" in tables:
        con.execute("""CREATE OR REPLACE VIEW cluster_history AS
            SELECT r.partition, r.committed_at, c.* FROM clusters_all_runs c JOIN runs r USING (run_id)
            ORDER BY c.cluster_key, r.committed_at""")
    rules = con.execute("SELECT rule_id, sql_predicate FROM cluster_rules ORDER BY rule_id").fetchall()
    if "transactions" in tables and rules:
        # DuckDB cannot evaluate SQL held in a column, so each rule becomes one branch of a view;
        # branches whose constant rule_id differs from the argument are pruned by the planner
        branches = " UNION ALL ".join(
            f"SELECT {_sql_str(rule_id)} AS matched_rule, t.* FROM transactions t WHERE ({predicate})"
            for rule_id, predicate in rules)
        con.execute(f"CREATE OR REPLACE VIEW rule_matches AS {branches}")
        con.execute("CREATE OR REPLACE MACRO apply_rule(rid) AS TABLE "
                    "SELECT * EXCLUDE (matched_rule) FROM rule_matches WHERE matched_rule = rid")


def _files_of(manifests: list[dict[str, Any]], table: str) -> list[str]:
    return [f["path"] for m in manifests for f in m["outputs"].get(table, {}).get("files", [])]


def _create_union_view(con, lake: Lake, name: str, rel_paths: list[str]) -> None:
    if not rel_paths:
        return
    files = ", ".join(_sql_str(lake.uri(p)) for p in rel_paths)
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{files}], union_by_name = true)")


def _create_runs_table(con, every_run: list[dict[str, Any]], visible: list[dict[str, Any]]) -> None:
    visible_ids = {(m["run_id"], m["attempt_id"]) for m in visible}
    rows = [
        {
            "run_id": m["run_id"],
            "attempt_id": m["attempt_id"],
            "job": m["job"],
            "partition": m["partition"],
            "status": m["status"],
            "visible": (m["run_id"], m["attempt_id"]) in visible_ids,
            "code_version": m["code_version"],
            "started_at": m["started_at"],
            "committed_at": m["committed_at"],
            "params": json.dumps(m["params"], sort_keys=True),
            "input_rows": json.dumps(m["input_rows"], sort_keys=True),
            "output_rows": json.dumps({t: o["rows"] for t, o in m["outputs"].items()}, sort_keys=True),
            "quarantined_rows": sum(q["rows"] for q in m.get("quarantine", {}).values()),
            "timings_s": json.dumps(m["timings_s"], sort_keys=True),
        }
        for m in every_run
    ]
    schema = pa.schema(
        [("run_id", pa.string()), ("attempt_id", pa.string()), ("job", pa.string()), ("partition", pa.string()),
         ("status", pa.string()), ("visible", pa.bool_()), ("code_version", pa.string()),
         ("started_at", pa.string()), ("committed_at", pa.string()), ("params", pa.string()),
         ("input_rows", pa.string()), ("output_rows", pa.string()), ("quarantined_rows", pa.int64()),
         ("timings_s", pa.string())]
    )
    runs = pa.Table.from_pylist(rows, schema=schema)
    con.register("_runs_arrow", runs)
    con.execute(
        "CREATE OR REPLACE TABLE runs AS SELECT * REPLACE (CAST(started_at AS TIMESTAMPTZ) AS started_at, "
        "CAST(committed_at AS TIMESTAMPTZ) AS committed_at, CAST(params AS JSON) AS params, "
        "CAST(input_rows AS JSON) AS input_rows, CAST(output_rows AS JSON) AS output_rows, "
        "CAST(timings_s AS JSON) AS timings_s) FROM _runs_arrow"
    )
    con.unregister("_runs_arrow")


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
