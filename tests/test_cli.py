"""The `lakelens` command as a user runs it: generate, run, sql, on local disk and on S3."""

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

LAKELENS = [str(Path(sys.executable).parent / "lakelens")]


def _run(args, env=None, check=True):
    result = subprocess.run(LAKELENS + args, capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"lakelens {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def test_generate_run_and_query_an_s3_lake_with_standard_aws_environment(s3_env):
    lake = f"s3://lake/cli-{uuid.uuid4().hex[:8]}"
    _run(["generate", "--out", lake, "--users", "150", "--days", "2", "--seed", "1"], env=s3_env)
    out = _run(["run", "build-sequences", "--lake", lake, "--date", "2026-01-02", "--num-cpus", "2"], env=s3_env)
    assert "published" in out.stdout
    again = _run(["run", "build-sequences", "--lake", lake, "--date", "2026-01-02"], env=s3_env)
    assert "nothing to do" in again.stdout
    query = _run(["sql", "--lake", lake, "-c",
                  "SELECT (SELECT count(*) FROM sequences) = (SELECT count(*) FROM transactions WHERE dt = DATE '2026-01-02') AS ok"],
                 env=s3_env)
    assert "true" in query.stdout


def test_sql_lists_views_and_unreadable_input_is_a_clear_error(tmp_path):
    lake = tmp_path / "lake"
    _run(["generate", "--out", str(lake), "--users", "50", "--days", "2", "--seed", "2"])
    (lake / "transactions" / "dt=2026-01-02" / "part-broken.parquet").write_bytes(b"PAR1 garbage")
    failed = _run(["run", "build-sequences", "--lake", str(lake), "--date", "2026-01-02"], check=False)
    assert failed.returncode == 2
    assert "part-broken.parquet" in failed.stderr and "Traceback" not in failed.stderr
    missing = _run(["run", "build-sequences", "--lake", str(lake), "--date", "2030-01-01"], check=False)
    assert missing.returncode == 2 and "no transactions for 2030-01-01" in missing.stderr
    shell = subprocess.run(LAKELENS + ["sql", "--lake", str(lake)], input="SELECT count(*) AS n FROM events\n",
                           capture_output=True, text=True, timeout=120)
    assert "views: events" in shell.stdout and "│" in shell.stdout
    assert "view 'transactions' not created" in shell.stderr and "part-broken.parquet" in shell.stderr
    raw = _run(["sql", "--lake", str(lake), "--raw", "-c", "SELECT 'a' AS x, NULL AS y UNION ALL SELECT 'b', 2"])
    assert raw.stdout == "a\t\nb\t2\n"
    statement = _run(["sql", "--lake", str(lake), "-c", "CREATE TABLE scratch AS SELECT 1 AS one"])
    assert statement.returncode == 0 and "Traceback" not in statement.stderr


def test_the_job_attaches_to_a_running_ray_cluster_through_ray_address(tmp_path, ray_cluster):
    lake = tmp_path / "lake"
    _run(["generate", "--out", str(lake), "--users", "60", "--days", "2", "--seed", "4"])
    out = _run(["run", "build-sequences", "--lake", str(lake), "--date", "2026-01-02"], env=ray_cluster)
    assert "published" in out.stdout
