"""The job runner: what every job gets without writing it (idempotence, failure notes, commits, catalog refresh)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from lakelens.infra.config import CatalogConfig, LakelensConfig
from lakelens.infra.errors import failed_run_of
from lakelens.infra.jobs import Job, run_job
from lakelens.infra.runs import InputFile, published_manifests, visible_run
from lakelens.infra.storage import Lake

SCHEMA = pa.schema([("x", pa.int64())])


def _job(calls: list[str], rows: int = 3, fail: bool = False, params: dict | None = None) -> Job:
    def compute(run):
        calls.append(run.attempt_id)
        with run.stage("count"):
            if fail:
                raise RuntimeError("disk on fire")
            run.write_table("numbers", pa.table({"x": list(range(rows))}, schema=SCHEMA))
        run.metrics["numbers"] = rows

    return Job("count-job", "dt=2026-01-01", params or {"rows": rows}, [InputFile("seed", "seed/a", 1, 1, 0)],
               compute, outputs={"numbers": SCHEMA, "always_there": SCHEMA}, uses_ray=False)


def test_a_job_publishes_its_tables_timings_and_metrics_and_a_rerun_does_nothing(lake, capsys):
    calls: list[str] = []
    manifest = run_job(lake, _job(calls), LakelensConfig())
    assert manifest["outputs"]["numbers"]["rows"] == 3 and manifest["metrics"]["numbers"] == 3
    assert "count" in manifest["timings_s"] and manifest["status"] == "published"
    again = run_job(lake, _job(calls), LakelensConfig())
    assert again["attempt_id"] == manifest["attempt_id"] and len(calls) == 1
    assert "nothing to do" in capsys.readouterr().out
    forced = run_job(lake, _job(calls), LakelensConfig(), force=True)
    assert forced["run_id"] == manifest["run_id"] and forced["attempt_id"] != manifest["attempt_id"]
    assert visible_run(lake, "count-job", "dt=2026-01-01")["attempt_id"] == forced["attempt_id"]


def test_a_declared_output_without_rows_is_published_as_an_empty_table(lake):
    manifest = run_job(lake, _job([]), LakelensConfig())
    assert manifest["outputs"]["always_there"]["rows"] == 0
    assert [f["name"] for f in manifest["outputs"]["always_there"]["schema"]] == ["x"]


def test_a_failed_compute_publishes_nothing_leaves_a_note_and_names_the_attempt(lake):
    with pytest.raises(RuntimeError, match="disk on fire") as caught:
        run_job(lake, _job([], fail=True), LakelensConfig())
    assert failed_run_of(caught.value).startswith("count-job count-job-dt2026-01-01-")
    assert published_manifests(lake, "count-job") == []
    notes = lake.list_files("runs/count-job/_failed", suffix=".json")
    assert len(notes) == 1 and "disk on fire" in lake.read_json(notes[0].path)["error"]
    assert run_job(lake, _job([]), LakelensConfig())["status"] == "published"  # the next attempt is clean


def test_different_params_are_a_different_run(tmp_path):
    lake = Lake(tmp_path / "lake")
    a = run_job(lake, _job([], params={"rows": 3}), LakelensConfig())
    b = run_job(lake, _job([], params={"rows": 3, "other": True}), LakelensConfig())
    assert a["run_id"] != b["run_id"]


def test_a_configured_catalog_export_is_refreshed_after_every_publish(tmp_path):
    lake = Lake(tmp_path / "lake")
    out = tmp_path / "catalog.duckdb"
    config = LakelensConfig(catalog=CatalogConfig(export=str(out)))
    run_job(lake, _job([], rows=2), config)
    with duckdb.connect(str(out), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM numbers").fetchone() == (2,)
    run_job(lake, _job([], rows=5), config)
    with duckdb.connect(str(out), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM numbers").fetchone() == (5,)
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (2,)
