"""The `lakelens` command's interface, which schedulers and scripts rely on: help, exit codes, formats, config."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from lakelens.infra.runs import InputFile
from lakelens.infra.storage import Lake
from lakelens.job_commands import JOB_COMMANDS

LAKELENS = [str(Path(sys.executable).parent / "lakelens")]


def lakelens(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(LAKELENS + list(args), capture_output=True, text=True, input=stdin, timeout=120)


@pytest.fixture(scope="module")
def published_lake(tmp_path_factory) -> Lake:
    """A lake with one published run, written through the job runner (no Ray)."""
    from lakelens.infra.config import LakelensConfig
    from lakelens.infra.jobs import Job, run_job

    lake = Lake(tmp_path_factory.mktemp("cli") / "lake")
    schema = pa.schema([("k", pa.string()), ("v", pa.int64())])
    job = Job("demo-job", "dt=2026-01-01", {}, [InputFile("seed", "seed/a", 1, 1, 0)],
              lambda run: run.write_table("pairs", pa.table({"k": ["a", "b"], "v": [1, None]}, schema=schema)),
              outputs={"pairs": schema}, uses_ray=False)
    run_job(lake, job, LakelensConfig())
    return lake


@pytest.mark.parametrize("job", sorted(JOB_COMMANDS))
def test_each_job_has_its_own_help_with_only_its_flags_and_an_example(job):
    out = lakelens("run", job, "--help")
    assert out.returncode == 0 and "example:" in out.stdout and f"lakelens run {job}" in out.stdout
    own = {"build-sequences": "--lookback-hours", "train-encoder": "--dates", "embed": "--model",
           "behavior-clusters": "--window-days", "semantic-lens": "--vocabulary"}
    assert own[job] in out.stdout
    for other, flag in own.items():
        if other != job:
            assert not re.search(rf"{flag}(?![-\w])", out.stdout), f"{job} shows {other}'s {flag}"
    assert "--log-format" in out.stdout and "--log-level" in out.stdout


def test_every_flag_of_every_command_has_help():
    from lakelens.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{path} {name}")
            elif action.option_strings and action.dest not in ("help", "version"):
                yield path, action

    missing = [f"{path} {action.option_strings[0]}" for path, action in walk(build_parser(), "lakelens")
               if not action.help]
    assert missing == []


def test_the_version_names_the_package_version():
    out = lakelens("--version")
    assert out.returncode == 0 and out.stdout.startswith("lakelens 0.")


def test_exit_codes_tell_usage_errors_from_bad_input(tmp_path):
    assert lakelens("run", "no-such-job").returncode == 64
    assert lakelens("run", "build-sequences", "--lake", str(tmp_path)).returncode == 64  # --date missing
    assert lakelens("run", "build-sequences", "--lake", str(tmp_path), "--date", "yesterday").returncode == 64
    missing = lakelens("run", "build-sequences", "--lake", str(tmp_path), "--date", "2026-01-02")
    assert missing.returncode == 2 and "no transactions for 2026-01-02" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_wrong_config_value_names_the_file_and_the_key_and_nothing_runs(tmp_path):
    bad = tmp_path / "job.toml"
    bad.write_text('[clusters]\ncluster_selection_method = "bogus"\nmin_cluster_size = 2.7\n[lens]\nlayers = "block3"\n')
    out = lakelens("run", "behavior-clusters", "--lake", str(tmp_path / "lake"), "--date", "2026-01-03",
                   "--config", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    for key in ("clusters.cluster_selection_method", "clusters.min_cluster_size", "lens.layers"):
        assert f"{bad}: {key}" in out.stderr
    assert not (tmp_path / "lake").exists()


def test_config_show_prints_the_effective_config_as_toml_that_loads_back(tmp_path):
    from lakelens.infra.config import LakelensConfig

    mine = tmp_path / "job.toml"
    mine.write_text("[clusters]\nwindow_days = 5\n")
    out = lakelens("config", "show", "--config", str(mine))
    assert out.returncode == 0 and "window_days = 5" in out.stdout
    shown = tmp_path / "shown.toml"
    shown.write_text(out.stdout)
    assert LakelensConfig.load(shown) == LakelensConfig.load(mine)
    as_json = json.loads(lakelens("config", "show", "--json").stdout)
    assert as_json["clusters"]["window_days"] == 3


def test_sql_runs_several_statements_and_prints_table_csv_or_json(published_lake):
    lake = published_lake.root_uri
    query = "CREATE TABLE t AS SELECT * FROM pairs;\nSELECT k, v FROM t ORDER BY k; SELECT count(*) AS n FROM t"
    table = lakelens("sql", "--lake", lake, "-c", query)
    assert table.returncode == 0 and "│" in table.stdout and table.stdout.count("┌") == 2
    rows = list(csv.reader(io.StringIO(lakelens("sql", "--lake", lake, "--format", "csv", "-c",
                                                "SELECT k, v FROM pairs ORDER BY k").stdout)))
    assert rows == [["k", "v"], ["a", "1"], ["b", ""]]
    as_json = json.loads(lakelens("sql", "--lake", lake, "--format", "json", "-c", "SELECT k, v FROM pairs ORDER BY k").stdout)
    assert as_json == [{"k": "a", "v": 1}, {"k": "b", "v": None}]
    piped = lakelens("sql", "--lake", lake, stdin="SELECT 'x;y' AS s;\nSELECT\n  count(*) AS n\nFROM pairs\n")
    assert piped.returncode == 0 and "x;y" in piped.stdout and re.search(r"│\s+2 │", piped.stdout)


def test_catalog_export_writes_a_file_plain_duckdb_opens(published_lake, tmp_path):
    out = tmp_path / "catalog.duckdb"
    result = lakelens("catalog", "export", "--lake", published_lake.root_uri, "--out", str(out), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["runs"] == 1
    with duckdb.connect(str(out), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM pairs").fetchone() == (2,)
        assert con.execute("SELECT job FROM runs").fetchall() == [("demo-job",)]


def test_json_logs_are_one_object_per_line_with_the_job_and_stage(tmp_path):
    lake = tmp_path / "lake"
    assert lakelens("generate", "--out", str(lake), "--users", "30", "--days", "2", "--seed", "3",
                    "--workers", "1").returncode == 0
    out = lakelens("run", "build-sequences", "--lake", str(lake), "--date", "2030-01-01", "--log-format", "json")
    assert out.returncode == 2
    assert lakelens("run", "build-sequences", "--lake", str(lake), "--date", "2026-01-02",
                    "--log-level", "LOUD").returncode == 64
