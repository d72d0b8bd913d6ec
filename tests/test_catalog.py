"""The catalog: committed runs only, one bulk read of the manifests, an exported file analysts open with plain DuckDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from lakelens.infra.catalog import export_catalog, measure_rules, open_catalog, rank_components
from lakelens.infra.contracts import quarantine_rows
from lakelens.infra.manifests import read_commit_manifests
from lakelens.infra.reviews import Review, record_review
from lakelens.infra.runs import Run
from lakelens.infra.storage import Lake, sql_literal

from .conftest import S3_KEY, S3_SECRET

DAY = "dt=2026-01-02"
TS = datetime(2026, 1, 2, 12, tzinfo=timezone.utc)

# counted in the live catalog and in the exported file; every view, table and macro of the catalog
COUNTS = [
    "SELECT count(*) FROM runs", "SELECT count(*) FROM runs WHERE visible", "SELECT count(*) FROM transactions",
    "SELECT count(*) FROM clusters", "SELECT count(*) FROM clusters_all_runs", "SELECT count(*) FROM txn_clusters",
    "SELECT count(*) FROM cluster_rules", "SELECT count(*) FROM quarantine", "SELECT count(*) FROM cluster_reviews",
    "SELECT count(*) FROM latest_reviews", "SELECT count(*) FROM flagged_clusters",
    "SELECT count(*) FROM flagged_clusters WHERE latest_verdict = 'fraud'", "SELECT count(*) FROM cluster_members",
    "SELECT count(*) FROM rules", "SELECT count(*) FROM cluster_history", "SELECT count(*) FROM rule_matches",
    "SELECT count(*) FROM apply_rule('ck-a-r1')",
]

# what an analyst runs: only duckdb is imported, never lakelens
READER = r"""
import json, sys
import duckdb
db, queries, setup = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
con = duckdb.connect(db, read_only=True)
for statement in setup:
    con.execute(statement)
answers = {q: con.execute(q).fetchone()[0] for q in queries}
assert not [m for m in sys.modules if m.startswith("lakelens")]
print(json.dumps(answers))
"""


def _read_in_plain_duckdb(path: Path, queries: list[str], setup: list[str] = ()) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the reader brings its own secret
    out = subprocess.run([sys.executable, "-c", READER, str(path), json.dumps(queries), json.dumps(list(setup))],
                         capture_output=True, text=True, timeout=120, cwd=path.parent, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _reader_setup(lake: Lake) -> list[str]:
    """For an S3 lake: what the docs tell readers to run (httpfs and their own secret)."""
    if lake.scheme != "s3":
        return []
    import duckdb_extension_httpfs

    root = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    endpoint = lake.storage.endpoint_url.split("://", 1)[1]
    return [f"LOAD {sql_literal(str(sorted(root.glob('*.duckdb_extension'))[0]))}",
            f"CREATE SECRET reader (TYPE s3, KEY_ID {sql_literal(S3_KEY)}, SECRET {sql_literal(S3_SECRET)}, "
            f"ENDPOINT {sql_literal(endpoint)}, URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')"]


# -- tiny lakes, built by hand --------------------------------------------------------------------


def _publish(lake: Lake, job: str, partition: str, tables: dict[str, pa.Table]) -> dict:
    """One committed attempt of `job` holding `tables`."""
    run = Run(lake=lake, job=job, partition=partition, params={"k": 1}, inputs=[],
              run_id=f"{job}-{partition.replace('=', '')}-{uuid.uuid4().hex[:12]}")
    for name, table in tables.items():
        lake.write_table(f"{run.table_dir(name)}/part-00000.parquet", table)
    return run.commit()


def _cluster_tables(run_tag: str, sizes: dict[str, int], flagged: set[str], members: dict[str, str],
                    rules: dict[str, str]) -> dict[str, pa.Table]:
    """clusters, txn_clusters and cluster_rules with the columns the analyst views use (run_id added on publish)."""
    keys = list(sizes)
    return {
        "clusters": pa.table({"cluster_key": keys, "size": [sizes[k] for k in keys],
                              "flagged": [k in flagged for k in keys],
                              "fraud_rate_lower": [0.5 if k in flagged else 0.0 for k in keys],
                              "tag": [run_tag] * len(keys)}),
        "txn_clusters": pa.table({"transaction_id": list(members), "cluster_key": list(members.values()),
                                  "probability": [0.9] * len(members), "outlier_score": [0.1] * len(members),
                                  "top_events": [["login"]] * len(members)}),
        "cluster_rules": pa.table({"cluster_key": [r.rsplit("-r", 1)[0] for r in rules], "rule_id": list(rules),
                                   "sql_predicate": list(rules.values())},
                                  schema=pa.schema([("cluster_key", pa.string()), ("rule_id", pa.string()),
                                                    ("sql_predicate", pa.string())])),
    }


def _publish_clusters(lake: Lake, partition: str, tables: dict[str, pa.Table],
                      quarantine: pa.Table | None = None) -> dict:
    """A committed behavior-clusters run; its tables' run_id column names it, as the job's do."""
    run = Run(lake=lake, job="behavior-clusters", partition=partition, params={}, inputs=[],
              run_id=f"behavior-clusters-{partition.replace('=', '')}-{uuid.uuid4().hex[:12]}")
    for name, table in tables.items():
        table = table.append_column("run_id", pa.array([run.run_id] * table.num_rows, pa.string()))
        lake.write_table(f"{run.table_dir(name)}/part-00000.parquet", table)
    if quarantine is not None:
        run.write_quarantine("transactions", quarantine, "part-00000")
    return run.commit()


TRANSACTIONS = pa.table({
    "transaction_id": [f"t{i}" for i in range(1, 9)],
    "user_id": ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"],
    "ts": pa.array([TS] * 8, pa.timestamp("us", tz="UTC")),
    "amount": [100.0, 80.0, 60.0, 20.0, 10.0, 5.0, 90.0, 15.0],
    "label": pa.array([1, 0, None, 1, 0, None, 1, 0], pa.int8()),
})


@pytest.fixture
def cluster_lake(lake: Lake) -> Lake:
    """Transactions, two committed runs of one day (the second visible), a verdict and a quarantined row."""
    lake.ensure_root()
    lake.write_table(f"transactions/{DAY}/part-0.parquet", TRANSACTIONS)
    _publish_clusters(lake, DAY, _cluster_tables("old", {"ck-a": 3, "ck-b": 2}, {"ck-a"},
                                                 {"t1": "ck-a", "t2": "ck-a", "t3": "ck-b"}, {}))
    bad = quarantine_rows(table="transactions", source_file="raw.json", source_rows=[4], reasons=["null:user_id"],
                          records=[{"transaction_id": "t9"}])
    _publish_clusters(lake, DAY, _cluster_tables(
        "new", {"ck-a": 3, "ck-b": 2, "ck-c": 1}, {"ck-a", "ck-c"},
        {"t1": "ck-a", "t2": "ck-a", "t4": "ck-a", "t3": "ck-b", "t5": "ck-b", "t7": "ck-c"},
        {"ck-a-r1": '"amount" > 50', "ck-c-r1": '"amount" > 85'}), quarantine=bad)
    record_review(lake, Review(cluster_key="ck-a", verdict="fraud", reviewer="ana"))
    return lake


def _counts(con) -> dict:
    return {q: con.execute(q).fetchone()[0] for q in COUNTS}


# -- exporting ---------------------------------------------------------------------------------------


def test_exported_file_opens_in_plain_duckdb_and_answers_like_the_catalog(cluster_lake, tmp_path):
    live = _counts(open_catalog(cluster_lake))
    assert live["SELECT count(*) FROM runs"] == 2 and live["SELECT count(*) FROM clusters"] == 3
    assert live["SELECT count(*) FROM clusters_all_runs"] == 5 and live["SELECT count(*) FROM quarantine"] == 1
    assert live["SELECT count(*) FROM flagged_clusters WHERE latest_verdict = 'fraud'"] == 1

    summary = export_catalog(cluster_lake, str(tmp_path / "out" / "catalog.duckdb"))
    assert summary["path"] == str(tmp_path / "out" / "catalog.duckdb") and summary["runs"] == 2
    assert {"clusters", "flagged_clusters", "cluster_members", "rules", "rule_matches"} <= set(summary["views"])
    assert {"runs"} <= set(summary["tables"]) and summary["macros"] == ["apply_rule"]
    assert _read_in_plain_duckdb(Path(summary["path"]), COUNTS, _reader_setup(cluster_lake)) == live


def test_only_committed_runs_appear_in_catalog_and_export(cluster_lake, tmp_path):
    before = _counts(open_catalog(cluster_lake))
    # an attempt that wrote its tables and crashed before its manifest: invisible
    crashed = Run(lake=cluster_lake, job="behavior-clusters", partition="dt=2026-01-03", params={}, inputs=[],
                  run_id="behavior-clusters-dt20260103-crashed")
    for name, table in _cluster_tables("crashed", {"ck-z": 9}, {"ck-z"}, {"t8": "ck-z"},
                                       {"ck-z-r1": "TRUE"}).items():
        table = table.append_column("run_id", pa.array([crashed.run_id] * table.num_rows))
        cluster_lake.write_table(f"{crashed.table_dir(name)}/part-00000.parquet", table)
    # and an attempt of a job that never committed anything at all
    cluster_lake.write_table("runs/never-committed/dt=2026-01-02/r/a/tables/things/part-0.parquet",
                             pa.table({"x": [1, 2]}))
    con = open_catalog(cluster_lake)
    assert _counts(con) == before
    assert con.execute("SELECT count(*) FROM runs WHERE run_id LIKE '%crashed%' OR job = 'never-committed'"
                       ).fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'things'").fetchone()[0] == 0

    path = Path(export_catalog(cluster_lake, str(tmp_path / "catalog.duckdb"))["path"])
    assert _read_in_plain_duckdb(path, COUNTS, _reader_setup(cluster_lake)) == before


def test_re_export_overwrites_atomically(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.ensure_root()
    _publish(lake, "embed", DAY, {"embeddings": pa.table({"transaction_id": ["t1"]})})
    out = tmp_path / "exports" / "catalog.duckdb"
    assert export_catalog(lake, str(out))["runs"] == 1

    reader = duckdb.connect(str(out), read_only=True)  # an analyst has the old export open
    _publish(lake, "embed", "dt=2026-01-03", {"embeddings": pa.table({"transaction_id": ["t2", "t3"]})})
    assert export_catalog(lake, str(out))["runs"] == 2
    # the open reader keeps its whole old file; nothing half-written or temporary is left beside the new one
    assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    reader.close()
    assert sorted(p.name for p in out.parent.iterdir()) == ["catalog.duckdb"]
    assert _read_in_plain_duckdb(out, ["SELECT count(*) FROM runs", "SELECT count(*) FROM embeddings"]) == {
        "SELECT count(*) FROM runs": 2, "SELECT count(*) FROM embeddings": 3}


def test_export_refuses_an_object_store_target(tmp_path):
    with pytest.raises(ValueError, match="local file"):
        export_catalog(Lake(tmp_path / "lake"), "s3://bucket/catalog.duckdb")


def test_s3_export_holds_no_secret_and_a_reader_with_its_own_secret_queries_it(s3_storage, tmp_path):
    lake = Lake(f"s3://lake/export-secret-{uuid.uuid4().hex[:8]}", s3_storage)
    lake.ensure_root()
    lake.write_table(f"transactions/{DAY}/part-0.parquet", TRANSACTIONS)
    _publish(lake, "embed", DAY, {"embeddings": pa.table({"transaction_id": ["t1", "t2"]})})
    out = tmp_path / "catalog.duckdb"
    export_catalog(lake, str(out))

    secrets = lake.duckdb_connect().execute("SELECT name, persistent, storage FROM duckdb_secrets()").fetchall()
    assert secrets == [("lake_s3", False, "memory")]  # session-only: never written anywhere
    data = out.read_bytes()
    assert S3_SECRET.encode() not in data and S3_SECRET.encode("utf-16-le") not in data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.duckdb"]  # no WAL that could hold it either
    queries = ["SELECT count(*) FROM runs", "SELECT count(*) FROM embeddings", "SELECT count(*) FROM transactions"]
    assert _read_in_plain_duckdb(out, queries, _reader_setup(lake)) == dict(zip(queries, [1, 2, 8]))


# -- reading manifests ---------------------------------------------------------------------------


def test_read_commit_manifests_equals_reading_every_commit_file_and_ignores_tmp_files(lake):
    lake.ensure_root()
    _publish(lake, "embed", DAY, {"embeddings": pa.table({"x": [1]})})
    _publish(lake, "embed", DAY, {"embeddings": pa.table({"x": [2]})})
    _publish(lake, "build-sequences", "dt=2026-01-03", {"sequences": pa.table({"x": [3]})})
    # in-progress writes and failure notes are not commits
    lake.write_bytes(f"runs/embed/_commits/{DAY}/_tmp-{uuid.uuid4().hex}.json", b"{half a manif")
    lake.write_bytes(f"runs/embed/_commits/{DAY}/.partial.json", b"{half a manif")
    lake.write_json(f"runs/embed/_failed/{DAY}/r.a.json", {"status": "failed"})

    one_by_one = sorted(
        (lake.read_json(e.path) for job in lake.list_dirs("runs")
         for e in lake.list_files(f"runs/{job}/_commits", suffix=".json")),
        key=lambda m: (m["committed_at"], m["attempt_id"]))
    assert len(one_by_one) == 3
    assert read_commit_manifests(lake) == one_by_one
    assert read_commit_manifests(lake, "embed") == [m for m in one_by_one if m["job"] == "embed"]
    assert read_commit_manifests(lake, "no-such-job") == []


def test_read_commit_manifests_of_an_empty_lake_is_empty(lake):
    assert read_commit_manifests(lake) == []  # not even a root yet
    lake.ensure_root()
    lake.write_table("runs/embed/dt=2026-01-02/r/a/tables/t/part-0.parquet", pa.table({"x": [1]}))
    assert read_commit_manifests(lake) == []
    assert open_catalog(lake).execute("SELECT count(*) FROM runs").fetchone()[0] == 0


# -- the jobs' queries ---------------------------------------------------------------------------


def test_measure_rules_gives_hand_computed_numbers(lake):
    lake.ensure_root()
    lake.write_table("w/dt=2026-01-01/part-0.parquet", TRANSACTIONS.slice(0, 4))
    lake.write_table("w/dt=2026-01-02/part-0.parquet", TRANSACTIONS.slice(4))
    lake.write_table("m/part-0.parquet", pa.table({"transaction_id": ["t1", "t2", "t4", "t3", "t5"],
                                                   "cluster_key": ["A", "A", "A", "B", "B"]}))
    rules = [("r1", "A", '"amount" > 50'), ("r2", "B", "amount < 50"), ("r3", "A", "amount > 1000")]
    got = measure_rules(lake, ["w/dt=2026-01-01/part-0.parquet", "w/dt=2026-01-02/part-0.parquet"],
                        ["m/*.parquet"], rules)
    # base rate: 3 fraud of 6 labelled = 0.5
    # r1 matches t1 t2 t3 t7: 2 in A (size 3); labelled t1 t2 t7, fraud t1 t7
    assert got["r1"] == pytest.approx({"precision": 0.5, "coverage": 2 / 3, "support": 4, "fraud_rate": 2 / 3,
                                       "lift": 4 / 3})
    # r2 matches t4 t5 t6 t8: 1 in B (size 2); labelled t4 t5 t8, fraud t4
    assert got["r2"] == pytest.approx({"precision": 0.25, "coverage": 0.5, "support": 4, "fraud_rate": 1 / 3,
                                       "lift": 2 / 3})
    assert got["r3"] == {"precision": 0.0, "coverage": 0.0, "support": 0, "fraud_rate": 0.0, "lift": 0.0}
    assert measure_rules(lake, ["w/dt=2026-01-01/part-0.parquet"], ["m/*.parquet"], []) == {}


def test_rank_components_ranks_by_mean_cosine_gain_over_templates(tmp_path):
    lake = Lake(tmp_path / "lake")
    lake.ensure_root()
    embeddings = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)

    def components(model: str, vectors: np.ndarray) -> pa.Table:
        n = len(vectors)
        return pa.table({"model_id": [model] * n, "layer": ["l1"] * n, "unit": list(range(n)),
                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 3),
                         "label": [f"c{i}" for i in range(n)], "label_score": [0.123456] * n,
                         "clarity": [0.5] * n})

    _publish(lake, "semantic-lens", "model=m1", {"components": components("m1", embeddings)})
    _publish(lake, "semantic-lens", "model=m2", {"components": components("m2", embeddings[:1])})
    texts = np.array([[0, 1, 0], [0.2, 1, 0]], dtype=np.float32)
    empties = np.array([[0, 0, 1], [0, 0.1, 1]], dtype=np.float32)
    got = rank_components(lake, "m1", texts, empties, top=3)
    assert got.column_names == ["layer", "unit", "label", "label_score", "clarity", "similarity"]

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    expected = [np.mean([cos(v, t) - cos(v, e) for t, e in zip(texts, empties)]) for v in embeddings]
    order = np.argsort(-np.array(expected), kind="stable")[:3]
    assert got.column("unit").to_pylist() == order.tolist()
    assert got.column("similarity").to_pylist() == pytest.approx([expected[i] for i in order], abs=1e-5)
    assert got.column("label_score").to_pylist() == [0.1235] * 3
    with pytest.raises(ValueError):
        rank_components(lake, "m1", texts, empties[:1], top=3)


def test_catalog_does_not_import_reviews():
    code = "import sys, lakelens.infra.catalog; assert 'lakelens.infra.reviews' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_result_tables_own_dt_column_is_not_replaced_by_the_run_folders_partition(tmp_path):
    import pyarrow as pa

    from lakelens.infra.config import LakelensConfig
    from lakelens.infra.jobs import Job, run_job
    from lakelens.infra.runs import InputFile

    lake = Lake(tmp_path / "lake")
    schema = pa.schema([("transaction_id", pa.string()), ("dt", pa.string())])
    rows = pa.table({"transaction_id": ["a", "b"], "dt": ["2026-01-01", "2026-01-03"]}, schema=schema)
    run_job(lake, Job("window-job", "dt=2026-01-03", {}, [InputFile("seed", "seed/a", 1, 1, 0)],
                      lambda run: run.write_table("per_transaction", rows), outputs={"per_transaction": schema},
                      uses_ray=False), LakelensConfig())
    con = open_catalog(lake)
    assert con.execute("SELECT dt FROM per_transaction ORDER BY transaction_id").fetchall() == [
        ("2026-01-01",), ("2026-01-03",)]
