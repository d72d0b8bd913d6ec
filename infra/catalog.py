"""The DuckDB catalog: views over the input tables and over published runs only.

- `events`, `transactions`: the raw inputs (Hive-partitioned by dt).
- `<table>`: for every result table, the latest published run of each partition.
- `<table>_all_runs`: every published run (the last attempt of each run id), carrying run_id.
- `runs`: one row per published run; `quarantine`: rejected rows of the visible runs.
- `cluster_reviews`: reviewers' verdicts (append-only, see infra/reviews.py).
- analyst views and macros over behaviour clusters: `flagged_clusters`, `cluster_members`, `rules`,
  `cluster_history`, `latest_reviews`, `rule_matches`, `apply_rule(rule_id)`.

`export_catalog` persists all of it into one DuckDB file analysts open without lakelens;
`rank_components` and `measure_rules` are the jobs' own queries over the lake.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from lakelens.infra.contracts import REVIEWS_DIR, REVIEWS_SCHEMA, TIMING_COLUMNS
from lakelens.infra.manifests import read_commit_manifests
from lakelens.infra.runs import latest_per_partition, latest_per_run_id
from lakelens.infra.storage import Lake, sql_literal

INPUT_TABLES = ("events", "transactions")


def open_catalog(lake: Lake, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the catalog's views defined."""
    con = lake.duckdb_connect(database)
    for table in INPUT_TABLES:
        if lake.list_files(table, suffix=".parquet"):
            try:
                con.execute(
                    f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet("
                    f"{sql_literal(lake.uri(table) + '/**/*.parquet')}, hive_partitioning = true, union_by_name = true)"
                )
            except duckdb.Error as exc:
                # one broken raw file must not take the result tables down with it
                warnings.warn(f"view {table!r} not created: {exc}", stacklevel=2)

    manifests = read_commit_manifests(lake, con=con)
    visible = latest_per_partition(manifests)
    every_run = latest_per_run_id(manifests)
    _create_runs_table(con, every_run, visible)

    for table in sorted({t for m in every_run for t in m["outputs"]}):
        _create_union_view(con, lake, table, _files_of(visible, table))
        _create_union_view(con, lake, f"{table}_all_runs", _files_of(every_run, table))

    _add_session_timing(con, lake)
    _create_reviews_view(con, lake)
    quarantine_files = [f for m in visible for q in m.get("quarantine", {}).values() for f in q["files"]]
    if quarantine_files:
        _create_union_view(con, lake, "quarantine", quarantine_files)
    _create_analyst_views(con)
    return con


def _add_session_timing(con, lake: Lake) -> None:
    """`transactions` also carries each transaction's session timing (the `timing_*` expert features, from the
    published embeddings), so a rule's `sql_predicate` that names them runs against `transactions` as it is."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if not {"transactions", "sequence_embeddings"} <= tables:
        return
    if not set(TIMING_COLUMNS) <= {r[0] for r in con.execute("DESCRIBE sequence_embeddings").fetchall()}:
        return
    con.execute(f"""CREATE OR REPLACE VIEW transactions AS
        SELECT t.*, {', '.join(f's.{c}' for c in TIMING_COLUMNS)}
        FROM read_parquet({sql_literal(lake.uri('transactions') + '/**/*.parquet')}, hive_partitioning = true,
                          union_by_name = true) t
        LEFT JOIN (SELECT transaction_id, {', '.join(TIMING_COLUMNS)} FROM sequence_embeddings) s USING (transaction_id)""")


def _create_reviews_view(con, lake: Lake) -> None:
    if lake.list_files(REVIEWS_DIR, suffix=".parquet"):
        con.execute(f"CREATE OR REPLACE VIEW cluster_reviews AS SELECT * EXCLUDE (dt) FROM read_parquet("
                    f"{sql_literal(lake.uri(REVIEWS_DIR) + '/**/*.parquet')}, hive_partitioning = true)")
    elif "behavior-clusters" in lake.list_dirs("runs"):
        # an empty table keeps the analyst views' shape the same before the first verdict
        con.register("_no_reviews", REVIEWS_SCHEMA.empty_table())
        con.execute("CREATE OR REPLACE TABLE cluster_reviews AS SELECT * FROM _no_reviews")
        con.unregister("_no_reviews")


def _create_drift_view(con) -> None:
    """Per published embed and behavior-clusters run: how far its data moved from the encoder's training data."""
    con.execute("""CREATE OR REPLACE VIEW drift AS
        SELECT run_id, job, partition, visible, committed_at,
               CAST(metrics->'drift'->>'oov_share' AS DOUBLE) AS oov_share,
               CAST(metrics->'drift'->'top_unseen_event_types' AS VARCHAR[]) AS top_unseen_event_types,
               CAST(metrics->'drift'->>'embedding_shift' AS DOUBLE) AS embedding_shift,
               CAST(metrics->'drift'->>'refused_share' AS DOUBLE) AS refused_share,
               CAST(metrics->'drift'->>'retrain_recommended' AS BOOLEAN) AS retrain_recommended,
               CAST(metrics->'drift'->'reasons' AS VARCHAR[]) AS reasons,
               metrics->'drift'->>'model' AS model
        FROM runs WHERE (metrics->'drift') IS NOT NULL ORDER BY partition, committed_at""")


def _create_analyst_views(con) -> None:
    """Views and macros over the behaviour-clustering tables, for analysts and reviewers."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "runs" in tables and con.execute("SELECT count(*) FROM runs WHERE (metrics->'drift') IS NOT NULL").fetchone()[0]:
        _create_drift_view(con)  # only lakes with embed or behaviour-clustering runs have drift to show
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
    cluster_columns = {r[0] for r in con.execute("DESCRIBE clusters").fetchall()}
    if "novelty" in cluster_columns:
        # new or fast-growing clusters, labelled or not: those with no labels cannot be flagged from risk
        con.execute("""CREATE OR REPLACE VIEW emerging_clusters AS
            SELECT r.partition, c.*, v.verdict AS latest_verdict
            FROM clusters c JOIN runs r USING (run_id) LEFT JOIN latest_reviews v USING (cluster_key)
            WHERE c.emerging ORDER BY c.novelty DESC, c.size DESC""")
    if "clusters_all_runs" in tables:
        con.execute("""CREATE OR REPLACE VIEW cluster_history AS
            SELECT r.partition, r.committed_at, c.* FROM clusters_all_runs c JOIN runs r USING (run_id)
            ORDER BY c.cluster_key, r.committed_at""")
    rules = con.execute("SELECT rule_id, sql_predicate FROM cluster_rules ORDER BY rule_id").fetchall()
    if "transactions" in tables and rules:
        # DuckDB cannot evaluate SQL held in a column, so each rule becomes one branch of a view;
        # branches whose constant rule_id differs from the argument are pruned by the planner
        branches = " UNION ALL ".join(
            f"SELECT {sql_literal(rule_id)} AS matched_rule, t.* FROM transactions t WHERE ({predicate})"
            for rule_id, predicate in rules)
        con.execute(f"CREATE OR REPLACE VIEW rule_matches AS {branches}")
        con.execute("CREATE OR REPLACE MACRO apply_rule(rid) AS TABLE "
                    "SELECT * EXCLUDE (matched_rule) FROM rule_matches WHERE matched_rule = rid")


def _files_of(manifests: list[dict[str, Any]], table: str) -> list[str]:
    return [f["path"] for m in manifests for f in m["outputs"].get(table, {}).get("files", [])]


def _create_union_view(con, lake: Lake, name: str, rel_paths: list[str]) -> None:
    if not rel_paths:
        return
    files = ", ".join(sql_literal(lake.uri(p)) for p in rel_paths)
    # run folders are named like Hive partitions (dt=...); the files' own columns must win over the path's
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{files}], union_by_name = true, "
                "hive_partitioning = false)")


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
            "metrics": json.dumps(m.get("metrics", {}), sort_keys=True, default=str),
        }
        for m in every_run
    ]
    schema = pa.schema(
        [("run_id", pa.string()), ("attempt_id", pa.string()), ("job", pa.string()), ("partition", pa.string()),
         ("status", pa.string()), ("visible", pa.bool_()), ("code_version", pa.string()),
         ("started_at", pa.string()), ("committed_at", pa.string()), ("params", pa.string()),
         ("input_rows", pa.string()), ("output_rows", pa.string()), ("quarantined_rows", pa.int64()),
         ("timings_s", pa.string()), ("metrics", pa.string())]
    )
    runs = pa.Table.from_pylist(rows, schema=schema)
    con.register("_runs_arrow", runs)
    con.execute(
        "CREATE OR REPLACE TABLE runs AS SELECT * REPLACE (CAST(started_at AS TIMESTAMPTZ) AS started_at, "
        "CAST(committed_at AS TIMESTAMPTZ) AS committed_at, CAST(params AS JSON) AS params, "
        "CAST(input_rows AS JSON) AS input_rows, CAST(output_rows AS JSON) AS output_rows, "
        "CAST(timings_s AS JSON) AS timings_s, CAST(metrics AS JSON) AS metrics) FROM _runs_arrow"
    )
    con.unregister("_runs_arrow")



def export_catalog(lake: Lake, out_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Persist the catalog (committed runs only) into a DuckDB file that opens with plain `duckdb.connect`.

    Views keep reading the lake live (absolute paths or s3:// URIs); `runs` and an empty
    `cluster_reviews` are stored tables. The lake's S3 secret is session-only and never written:
    readers of an S3 lake load httpfs and create their own secret. The file is built beside the
    target and renamed over it, so a reader sees the old export or the new one, never half of one.
    Returns a summary: path, views, tables, macros and the number of published runs.
    """
    if "://" in str(out_path):
        raise ValueError(f"export to a local file, not {out_path!r}; copy it to object storage afterwards")
    target = Path(out_path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        con = open_catalog(lake, str(tmp))
        try:
            summary = _describe_catalog(con)
            con.execute("CHECKPOINT")  # everything into the main file: no WAL to carry along
        finally:
            con.close()
        # a WAL left by an earlier writer of the old file must not be replayed onto the new one
        Path(f"{target}.wal").unlink(missing_ok=True)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)
    return {"path": str(target), **summary}


def _describe_catalog(con) -> dict[str, Any]:
    kinds: dict[str, list[str]] = {"VIEW": [], "BASE TABLE": []}
    for name, kind in con.execute("SELECT table_name, table_type FROM information_schema.tables "
                                  "WHERE table_schema = 'main' ORDER BY table_name").fetchall():
        kinds.setdefault(kind, []).append(name)
    macros = [r[0] for r in con.execute("SELECT DISTINCT function_name FROM duckdb_functions() WHERE NOT internal "
                                        "AND function_type IN ('macro', 'table_macro') ORDER BY 1").fetchall()]
    runs, visible = con.execute("SELECT count(*), count(*) FILTER (visible) FROM runs").fetchone()
    return {"views": kinds["VIEW"], "tables": kinds["BASE TABLE"], "macros": macros, "runs": runs,
            "visible_runs": visible}


def rank_components(lake: Lake, model_id: str, text_vectors: np.ndarray, empty_vectors: np.ndarray,
                    top: int) -> pa.Table:
    """Published components of `model_id` ranked by their similarity to a text, best first.

    `text_vectors[i]` embeds template i filled with the text, `empty_vectors[i]` the same template
    left empty; similarity is the mean over templates of cos(v, text) - cos(v, empty), the measure
    component labels use. Columns: layer, unit, label, label_score, clarity, similarity.
    """
    texts = np.asarray(text_vectors, dtype=np.float32)
    empties = np.asarray(empty_vectors, dtype=np.float32)
    if texts.ndim != 2 or texts.shape != empties.shape or not len(texts):
        raise ValueError(f"need one text and one empty vector per template; got {texts.shape} and {empties.shape}")
    n, dim = texts.shape
    terms = " + ".join(f"array_cosine_similarity(embedding::FLOAT[{dim}], ?::FLOAT[{dim}]) - "
                       f"array_cosine_similarity(embedding::FLOAT[{dim}], ?::FLOAT[{dim}])" for _ in range(n))
    vectors = [v for t, e in zip(texts, empties) for v in (t.tolist(), e.tolist())]
    con = open_catalog(lake)
    try:
        if not _has_table(con, "components"):
            raise LookupError(f"{lake.uri()} has no published semantic-lens components")
        return con.execute(f"""
            SELECT layer, unit, label, round(label_score, 4) AS label_score, round(clarity, 4) AS clarity,
                   ({terms}) / {n} AS similarity
            FROM components WHERE model_id = ? ORDER BY similarity DESC, layer, unit LIMIT ?""",
                           [*vectors, model_id, top]).to_arrow_table()
    finally:
        con.close()


def measure_rules(lake: Lake, transaction_paths: list[str], members_paths: list[str],
                  rules: list[tuple[str, str, str]], timing_paths: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Precision, coverage, support, fraud rate and lift of each rule, by DuckDB running its SQL over the lake.

    `transaction_paths`: the window's transaction files; `members_paths`: the run's `txn_clusters`
    files (transaction_id, cluster_key); both lake-relative, globs allowed. `rules`: (rule_id,
    cluster_key, sql_predicate). Over the window's transactions matched by the predicate:
    support = matches, precision = share of matches in the rule's cluster, coverage = share of
    the cluster matched, fraud_rate = fraud share of labelled matches, lift = fraud_rate over
    the base rate of the window's labelled transactions.
    """
    if not rules:
        return {}
    if not transaction_paths:
        raise ValueError("measure_rules needs the window's transaction files")
    con = lake.duckdb_connect()
    try:
        con.execute(f"CREATE VIEW transactions AS SELECT * FROM read_parquet({_uri_list(lake, transaction_paths)}, "
                    "union_by_name = true)")
        if timing_paths:  # rules may name the sessions' timing statistics (the `timing_*` expert features)
            con.execute(f"CREATE VIEW session_timing AS SELECT transaction_id, {', '.join(TIMING_COLUMNS)} "
                        f"FROM read_parquet({_uri_list(lake, timing_paths)}, union_by_name = true)")
            con.execute("ALTER VIEW transactions RENAME TO raw_transactions")
            con.execute("CREATE VIEW transactions AS SELECT t.*, s.* EXCLUDE (transaction_id) "
                        "FROM raw_transactions t LEFT JOIN session_timing s USING (transaction_id)")
        if members_paths:
            con.execute(f"CREATE VIEW members AS SELECT transaction_id, cluster_key FROM read_parquet("
                        f"{_uri_list(lake, members_paths)}, union_by_name = true)")
        else:
            con.execute("CREATE VIEW members AS SELECT NULL::VARCHAR AS transaction_id, "
                        "NULL::VARCHAR AS cluster_key WHERE false")
        base = con.execute("SELECT count(*) FILTER (label = 1) / greatest(count(label), 1) FROM transactions"
                           ).fetchone()[0]
        sizes = dict(con.execute("SELECT cluster_key, count(*) FROM members GROUP BY cluster_key").fetchall())
        # one scan for every rule: four filtered counts each
        aggregates = []
        for _, key, predicate in rules:
            where = f"({predicate})"
            aggregates += [f"count(*) FILTER (WHERE {where})",
                           f"count(*) FILTER (WHERE {where} AND m.cluster_key = {sql_literal(key)})",
                           f"count(t.label) FILTER (WHERE {where})",
                           f"count(*) FILTER (WHERE {where} AND t.label = 1)"]
        counts = con.execute(f"SELECT {', '.join(aggregates)} "
                             "FROM transactions t LEFT JOIN members m USING (transaction_id)").fetchone()
    finally:
        con.close()
    out: dict[str, dict[str, float]] = {}
    for i, (rule_id, key, _) in enumerate(rules):
        matched, in_cluster, labelled, fraud = counts[4 * i: 4 * i + 4]
        cluster_size = sizes.get(key, 0)
        rate = fraud / labelled if labelled else 0.0
        out[rule_id] = {"precision": in_cluster / matched if matched else 0.0,
                        "coverage": in_cluster / cluster_size if cluster_size else 0.0, "support": matched,
                        "fraud_rate": rate, "lift": rate / base if base else 0.0}
    return out


def event_type_counts(lake: Lake, sequence_paths: list[str]) -> dict[str, int]:
    """How often each event type occurs in the given sequences files (one DuckDB scan)."""
    if not sequence_paths:
        return {}
    con = lake.duckdb_connect()
    try:
        rows = con.execute(f"""SELECT event_type, count(*) FROM (
            SELECT unnest(event_types) AS event_type FROM read_parquet({_uri_list(lake, sequence_paths)},
                                                                       union_by_name = true))
            GROUP BY ALL""").fetchall()
    finally:
        con.close()
    return {str(t): int(c) for t, c in rows if t is not None}


def _uri_list(lake: Lake, rel_paths: list[str]) -> str:
    return "[" + ", ".join(sql_literal(lake.uri(p)) for p in rel_paths) + "]"


def _has_table(con, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
                            ).fetchone()[0])
