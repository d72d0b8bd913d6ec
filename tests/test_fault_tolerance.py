"""Runs that lose a worker or their driver, on a multi-node `ray start` cluster, and the same job on S3.

A lost Ray worker is replaced and its batches retried inside the run; a lost driver leaves an
unpublished attempt that no reader sees, and running the command again publishes exactly one
copy of every row.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from lakelens.infra.runs import published_manifests
from lakelens.infra.storage import Lake

from .conftest import SPARE_DAY, TRAIN_DAYS

LAKELENS = [str(Path(sys.executable).parent / "lakelens")]
DAY = TRAIN_DAYS[-1]
# the trained world's settings (tests/conftest.py ENCODER_CONFIG), so upstream runs are reused
CONFIG_TOML = "[ray]\nshow_progress = false\n[encoder]\nepochs = 30\n"


@pytest.fixture(scope="module")
def world(trained_lake, tmp_path_factory):
    """A private copy of the trained world, so killed runs cannot disturb other tests."""
    source, _, _ = trained_lake
    root = tmp_path_factory.mktemp("fault") / "lake"
    shutil.copytree(source.root_uri, root)
    config = root.parent / "lakelens.toml"
    config.write_text(CONFIG_TOML)
    return Lake(root), config


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    # a session of its own, so killing the driver does not touch pytest
    return subprocess.Popen(LAKELENS + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout_s: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, out[-4000:]
    return out


def _processes_named(fragment: str) -> list[tuple[int, str]]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in title:
                found.append((int(pid), title.strip()))
    return found


def _wait_for(condition, what: str, timeout_s: float = 300, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def test_a_killed_embed_worker_is_replaced_and_no_row_is_lost_or_duplicated(world, ray_cluster, tmp_path):
    lake, config = world
    small_batches = tmp_path / "small-batches.toml"
    small_batches.write_text(CONFIG_TOML + "[embed]\nbatch_size = 32\n")  # many batches: the kill lands mid-run
    proc = _start(["run", "embed", "--lake", lake.root_uri, "--date", str(SPARE_DAY), "--force",
                   "--config", str(small_batches)], ray_cluster)
    busy = _wait_for(lambda: [p for p in _processes_named("SequenceEmbedder") if p[1].endswith(".submit")],
                     "an embed actor to process a batch", proc=proc)
    os.kill(busy[0][0], signal.SIGKILL)
    out = _finish(proc)
    assert "A worker died or was killed" in out  # Ray saw the loss and the run went on
    manifest = max((m for m in published_manifests(lake, "embed") if m["partition"] == f"dt={SPARE_DAY}"),
                   key=lambda m: m["committed_at"])
    con = lake.duckdb_connect()
    files = "[" + ", ".join(f"'{lake.uri(f['path'])}'" for f in manifest["outputs"]["sequence_embeddings"]["files"]) + "]"
    rows, distinct = con.execute(f"SELECT count(*), count(DISTINCT transaction_id) FROM read_parquet({files})").fetchone()
    sequences = manifest["input_rows"]["sequences"] - sum(q["rows"] for q in manifest["quarantine"].values())
    assert rows == distinct == sequences > 0


def test_a_killed_driver_publishes_nothing_and_the_rerun_publishes_every_row_once(world, ray_cluster):
    lake, config = world
    args = ["run", "behavior-clusters", "--lake", lake.root_uri, "--date", str(DAY), "--window-days", "2",
            "--config", str(config)]
    before = {(m["run_id"], m["attempt_id"]) for m in published_manifests(lake)}
    embed_runs_before = {m["run_id"] for m in published_manifests(lake, "embed")}
    partition = Path(lake.root_uri, "runs", "behavior-clusters", f"dt={DAY}")
    earlier = set(partition.glob("*/*/state/model-base/model.json"))  # the copied world's own runs
    proc = _start(args, ray_cluster)
    staged = _wait_for(lambda: [p for p in partition.glob("*/*/state/model-base/model.json") if p not in earlier],
                       "the run to stage its clustering", proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    attempt = staged[0].parents[2]
    assert {(m["run_id"], m["attempt_id"]) for m in published_manifests(lake)} == before

    _finish(_start(args, ray_cluster))
    runs = [m for m in published_manifests(lake) if (m["run_id"], m["attempt_id"]) not in before]
    assert [m["job"] for m in runs] == ["behavior-clusters"] and runs[0]["attempt_id"] != attempt.name
    assert runs[0]["run_id"] == attempt.parent.name  # the same work, published once by the re-run
    # the upstream days published before the kill were reused, not recomputed
    assert {m["run_id"] for m in published_manifests(lake, "embed")} == embed_runs_before
    con = lake.duckdb_connect()
    files = "[" + ", ".join(f"'{lake.uri(f['path'])}'" for f in runs[0]["outputs"]["txn_clusters"]["files"]) + "]"
    rows, distinct = con.execute(f"SELECT count(*), count(DISTINCT transaction_id) FROM read_parquet({files})").fetchone()
    assert rows == distinct == runs[0]["metrics"]["load"]["transactions"] > 0
    assert all(str(attempt.relative_to(lake.root_uri)) not in f["path"]
               for f in runs[0]["outputs"]["txn_clusters"]["files"])


def test_the_same_job_runs_unchanged_on_the_cluster_against_the_s3_lake(world, ray_cluster, s3_env, s3_storage):
    lake, config = world
    args = ["--date", str(DAY), "--window-days", "2", "--config", str(config)]

    def two_day_runs(lk: Lake) -> list[dict]:
        return [m for m in published_manifests(lk, "behavior-clusters")
                if m["partition"] == f"dt={DAY}" and m["params"]["clusters"]["window_days"] == 2]

    local = two_day_runs(lake)
    if not local:  # the driver-kill test publishes it; alone, this test computes the reference itself
        _finish(_start(["run", "behavior-clusters", "--lake", lake.root_uri, *args], ray_cluster))
        local = two_day_runs(lake)
    remote = Lake(f"s3://lake/cluster-run-{uuid.uuid4().hex[:8]}", s3_storage)
    pafs.copy_files(lake.root_uri, remote.path(), source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=remote.fs)
    out = _finish(_start(["run", "behavior-clusters", "--lake", remote.root_uri, *args, "--force"],
                         {**ray_cluster, **{k: v for k, v in s3_env.items() if k.startswith("AWS")}}))
    assert "behavior-clusters:" in out
    on_s3 = max(two_day_runs(remote), key=lambda m: m["committed_at"])

    def assignments(lk: Lake, manifest) -> set[tuple[str, str | None]]:
        files = manifest["outputs"]["txn_clusters"]["files"]
        return {(r["transaction_id"], r["cluster_key"]) for f in files
                for r in lk.read_table(f["path"], columns=["transaction_id", "cluster_key"]).to_pylist()}

    assert assignments(remote, on_s3) == assignments(lake, local[0])
