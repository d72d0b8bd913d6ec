"""The build-sequences job on a real local Ray, against lakes on local disk and on S3."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from lakelens.infra.catalog import open_catalog
from lakelens.infra.config import LakelensConfig, RayConfig
from lakelens.infra.contracts import UnreadableInputError
from lakelens.infra.jobs import begin_attempt, execute_attempt
from lakelens.infra.runs import COMMITS, describe_inputs
from lakelens.infra.storage import Lake
from lakelens.pipelines import build_sequences as job

from .conftest import TEST_DAY

CONFIG = LakelensConfig(ray=RayConfig(show_progress=False))
ORACLE = """
    WITH ev AS (SELECT DISTINCT event_id, user_id, ts FROM events),
         tx AS (SELECT transaction_id, user_id, ts FROM transactions WHERE dt = DATE '{day}')
    SELECT tx.transaction_id, count(ev.event_id) AS n
    FROM tx LEFT JOIN ev ON ev.user_id = tx.user_id AND ev.ts BETWEEN tx.ts - INTERVAL 24 HOUR AND tx.ts
    GROUP BY 1
"""


def _visible_counts(lake: Lake) -> dict[str, int]:
    con = open_catalog(lake)
    return dict(con.execute("SELECT transaction_id, n_events_in_window FROM sequences").fetchall())


def test_job_publishes_one_sequence_per_transaction_matching_an_sql_oracle(small_world, ray_local):
    manifest = job.run_build_sequences(small_world, TEST_DAY, CONFIG)
    con = open_catalog(small_world)
    expected = dict(con.execute(ORACLE.format(day=TEST_DAY)).fetchall())
    assert _visible_counts(small_world) == expected
    # events that arrived late, in the next day's partition, are part of the windows
    late = con.execute(
        f"SELECT count(*) FROM events WHERE dt = DATE '{TEST_DAY}' + 1 AND ts < TIMESTAMPTZ '{TEST_DAY} 23:59:59+00'"
    ).fetchone()[0]
    assert late > 0
    assert manifest["outputs"]["sequences"]["rows"] == len(expected)
    assert manifest["quarantine"] == {}
    assert manifest["input_rows"]["transactions"] == len(expected)
    assert manifest["metrics"]["events"]["duplicates_collapsed"] > 0  # the world redelivers some events
    assert {"transactions", "sequences"} <= set(manifest["timings_s"])
    lists = con.execute("SELECT bool_and(len(event_types) = n_events AND n_events <= 64) FROM sequences").fetchone()
    assert lists == (True,)


def _bad_transactions(lake: Lake) -> None:
    good = lake.read_table(lake.list_files(f"transactions/dt={TEST_DAY}")[0].path)
    existing_id = good.column("transaction_id")[0].as_py()
    rows = {
        "transaction_id": [None, None, "bad-neg-1", "bad-neg-2", "bad-neg-3", "bad-ts", existing_id, "dup-in-file",
                           "dup-in-file", "bad-status", "ok-extra"],
        "user_id": ["u1"] * 11,
        "ts": ["2026-01-02T10:00:00Z"] * 5 + ["yesterday-ish"] + ["2026-01-02T11:00:00Z"] * 5,
        "amount": [1.0, 2.0, -1.0, -0.01, -100.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
        "currency": ["EUR"] * 11,
        "status": ["approved"] * 9 + ["refunded", "approved"],
        "label": pa.array([None] * 11, pa.int8()),
    }
    lake.write_table(f"transactions/dt={TEST_DAY}/part-zz-bad.parquet", pa.table(rows))
    events = pa.table({
        "event_id": ["bad-e1", "bad-e2", "bad-e3"], "user_id": [None, None, "u1"], "session_id": [None] * 3,
        "ts": pa.array([datetime(2026, 1, 2, 9, tzinfo=timezone.utc)] * 3, pa.timestamp("us", tz="UTC")),
        "event_type": ["home", "home", None], "dwell_ms": pa.array([1, 2, 3], pa.int64()),
    })
    lake.write_table(f"events/dt={TEST_DAY}/part-zz-bad.parquet", events)


def test_contract_breaking_rows_are_quarantined_with_exact_counts(tmp_path, ray_local):
    from lakelens.synthetic.generate import generate_world

    lake = Lake(tmp_path / "lake")
    generate_world(lake, users=300, days=2, seed=5, workers=1)
    _bad_transactions(lake)
    manifest = job.run_build_sequences(lake, TEST_DAY, CONFIG)
    assert manifest["quarantine"]["transactions"]["by_reason"] == {
        "null:transaction_id": 2, "negative:amount": 3, "wrong_type:ts": 1, "duplicate:transaction_id": 2,
        "bad_value:status": 1,
    }
    assert manifest["quarantine"]["events"]["by_reason"] == {"null:user_id": 2, "null:event_type": 1}
    con = open_catalog(lake)
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (12,)
    sources = {r[0] for r in con.execute("SELECT DISTINCT source_file FROM quarantine WHERE reason <> 'duplicate:transaction_id'").fetchall()}
    assert all(s.endswith("part-zz-bad.parquet") for s in sources)
    # every input row is accounted for: published, quarantined, or a duplicate of a published one
    published = manifest["outputs"]["sequences"]["rows"]
    assert published + manifest["quarantine"]["transactions"]["rows"] == manifest["input_rows"]["transactions"]
    assert con.execute("SELECT count(*) FROM sequences WHERE transaction_id = 'ok-extra'").fetchone() == (1,)


def test_an_unreadable_file_fails_the_run_with_an_error_naming_it(tmp_path, ray_local):
    from lakelens.synthetic.generate import generate_world

    lake = Lake(tmp_path / "lake")
    generate_world(lake, users=50, days=2, seed=5, workers=1)
    lake.write_bytes(f"events/dt={TEST_DAY}/part-corrupt.parquet", b"this is not parquet at all")
    with pytest.raises(UnreadableInputError, match="part-corrupt.parquet"):
        job.run_build_sequences(lake, TEST_DAY, CONFIG)
    assert not lake.list_files(f"runs/{job.JOB}/{COMMITS}")


def test_a_crash_before_publish_leaves_nothing_visible_and_a_rerun_publishes_once(
    small_world, ray_local, monkeypatch
):
    def crash(run):
        raise RuntimeError("worker lost before publish")

    monkeypatch.setattr(job, "_summarise", crash)
    with pytest.raises(RuntimeError, match="before publish"):
        job.run_build_sequences(small_world, TEST_DAY, CONFIG)
    con = open_catalog(small_world)
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert "sequences" not in {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    staged = [e for e in small_world.list_files(f"runs/{job.JOB}") if "/tables/" in e.path]
    assert staged, "the crashed attempt did write data; it must stay invisible"
    assert small_world.list_files(f"runs/{job.JOB}/_failed")

    monkeypatch.undo()
    manifest = job.run_build_sequences(small_world, TEST_DAY, CONFIG)
    counts = open_catalog(small_world).execute("SELECT count(*), count(DISTINCT transaction_id) FROM sequences").fetchone()
    assert counts == (manifest["outputs"]["sequences"]["rows"],) * 2


def test_rerunning_the_same_day_is_idempotent(tmp_path, ray_local):
    from lakelens.synthetic.generate import generate_world

    lake = Lake(tmp_path / "lake")
    generate_world(lake, users=200, days=2, seed=3, workers=1)
    first = job.run_build_sequences(lake, TEST_DAY, CONFIG)
    again = job.run_build_sequences(lake, TEST_DAY, CONFIG)
    assert again["attempt_id"] == first["attempt_id"]
    assert len(lake.list_files(f"runs/{job.JOB}/{COMMITS}")) == 1

    forced = job.run_build_sequences(lake, TEST_DAY, CONFIG, force=True)
    assert forced["run_id"] == first["run_id"] and forced["attempt_id"] != first["attempt_id"]
    con = open_catalog(lake)
    rows = first["outputs"]["sequences"]["rows"]
    assert con.execute("SELECT count(*) FROM sequences").fetchone() == (rows,)
    assert con.execute("SELECT count(*) FROM sequences_all_runs").fetchone() == (rows,)
    assert con.execute("SELECT attempt_id FROM runs WHERE visible").fetchone() == (forced["attempt_id"],)


def test_concurrent_attempts_never_mix_and_the_later_commit_wins(tmp_path, ray_local):
    from lakelens.synthetic.generate import generate_world

    lake = Lake(tmp_path / "lake")
    generate_world(lake, users=200, days=2, seed=4, workers=1)
    inputs = describe_inputs(lake, "transactions", [f"transactions/dt={TEST_DAY}"])
    inputs += describe_inputs(lake, "events", [f"events/dt={d}" for d in ("2026-01-01", "2026-01-02", "2026-01-03")])
    params = {"concurrency": "test"}
    # both attempts start before either commits, so neither can see the other
    planned = dataclasses.replace(job.plan_build_sequences(lake, TEST_DAY, CONFIG), params=params, inputs=inputs)
    run_a, seen_a = begin_attempt(lake, planned)
    run_b, seen_b = begin_attempt(lake, planned)
    assert seen_a is None and seen_b is None and run_a.attempt_id != run_b.attempt_id
    manifest_b = execute_attempt(run_b, planned)
    manifest_a = execute_attempt(run_a, planned)

    files_a = {f["path"] for f in manifest_a["outputs"]["sequences"]["files"]}
    files_b = {f["path"] for f in manifest_b["outputs"]["sequences"]["files"]}
    assert files_a.isdisjoint(files_b)
    con = open_catalog(lake)
    assert con.execute("SELECT attempt_id FROM runs WHERE visible").fetchall() == [(run_a.attempt_id,)]
    rows = manifest_a["outputs"]["sequences"]["rows"]
    assert rows == manifest_b["outputs"]["sequences"]["rows"]
    assert con.execute("SELECT count(*) FROM sequences").fetchone() == (rows,)
