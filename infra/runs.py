"""Run folders, manifests and publishing.

Each attempt of a job writes only under its own folder:

    runs/<job>/<partition>/<run_id>/<attempt_id>/tables/<table>/*.parquet
    runs/<job>/<partition>/<run_id>/<attempt_id>/quarantine/<table>/*.parquet

and becomes visible when its manifest lands in `runs/<job>/_commits/<partition>/`, the
attempt's last write. Readers list commits only, so a crashed attempt is never seen. The run
id is a hash of job, partition, params, code version and input files: re-running unchanged
work finds the commit and does nothing. Concurrent attempts never share a file; the one that
commits last is the one readers see.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
import traceback
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

import lakelens
from lakelens.infra.contracts import QUARANTINE_SCHEMA, UnreadableInputError
from lakelens.infra.errors import InputError
from lakelens.infra.manifests import COMMITS, read_commit_manifests
from lakelens.infra.storage import Lake

FAILURES = "_failed"
log = logging.getLogger("lakelens.runs")


@dataclass(frozen=True)
class InputFile:
    table: str
    path: str
    rows: int
    bytes: int
    mtime_ns: int


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    here = Path(lakelens.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{lakelens.__version__}+{sha}" if sha else lakelens.__version__


def describe_inputs(lake: Lake, table: str, rel_dirs: list[str]) -> list[InputFile]:
    """List input Parquet files with their row counts (from footers). An unreadable footer names its file."""
    files: list[InputFile] = []
    for rel_dir in rel_dirs:
        for entry in lake.list_files(rel_dir, suffix=".parquet"):
            try:
                rows = lake.parquet_metadata(entry.path).num_rows
            except Exception as exc:  # noqa: BLE001 - any failure to read the footer is the file's fault
                raise UnreadableInputError(lake.uri(entry.path), exc) from exc
            files.append(InputFile(table, entry.path, rows, entry.size, entry.mtime_ns))
    return files


@dataclass
class Run:
    lake: Lake
    job: str
    partition: str
    params: dict[str, Any]
    inputs: list[InputFile]
    run_id: str
    attempt_id: str = field(default_factory=lambda: f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}")
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return attempt_prefix(self.job, self.partition, self.run_id, self.attempt_id)

    def table_dir(self, table: str) -> str:
        return f"{self.prefix}/tables/{table}"

    def quarantine_dir(self, table: str) -> str:
        return f"{self.prefix}/quarantine/{table}"

    def write_quarantine(self, table: str, rows: pa.Table, part_name: str) -> None:
        """Write quarantined rows. Callers pass a deterministic part name so a retried task overwrites itself."""
        if rows.num_rows:
            rows = rows.cast(QUARANTINE_SCHEMA).append_column("run_id", pa.array([self.run_id] * rows.num_rows))
            self.lake.write_table(f"{self.quarantine_dir(table)}/{part_name}.parquet", rows)

    def write_task_metrics(self, stage: str, part_name: str, values: dict[str, int | float]) -> None:
        """Counters from inside distributed tasks; summed into the manifest at commit."""
        self.lake.write_json(f"{self.prefix}/_metrics/{stage}/{part_name}.json", values)

    def write_table(self, table: str, rows: pa.Table, part: str = "part-00000") -> str:
        """Write one Parquet part of an output table (driver-side results); returns its lake path."""
        path = f"{self.table_dir(table)}/{part}.parquet"
        self.lake.write_table(path, rows)
        return path

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage into the manifest; its log lines carry the stage name."""
        from lakelens.infra.logs import log_context

        start = time.perf_counter()
        with log_context(stage=name):
            log.info("%s: started", name)
            try:
                yield
            finally:
                self.timings[name] = round(time.perf_counter() - start, 3)
                log.info("%s: done in %.1f s", name, self.timings[name], extra={"elapsed_s": self.timings[name]})

    def commit(self, expected_tables: dict[str, pa.Schema] | None = None) -> dict[str, Any]:
        """Describe every output, then write the manifest: the attempt's last write."""
        for table, schema in (expected_tables or {}).items():
            if not self.lake.list_files(self.table_dir(table), suffix=".parquet"):
                # an empty result is still a result: readers must see zero rows, not a missing table
                self.lake.write_table(f"{self.table_dir(table)}/part-empty.parquet", schema.empty_table())
        manifest = {
            "run_id": self.run_id,
            "attempt_id": self.attempt_id,
            "job": self.job,
            "partition": self.partition,
            "params": self.params,
            "code_version": code_version(),
            "status": "published",
            "started_at": self.started_at,
            "inputs": [asdict(i) for i in self.inputs],
            "input_rows": _sum_rows(self.inputs),
            "outputs": self._describe_outputs(),
            "quarantine": self.quarantine_counts(),
            "metrics": {**self._sum_task_metrics(), **self.metrics},
            "timings_s": self.timings,
        }
        manifest["committed_at"] = datetime.now(timezone.utc).isoformat()
        self.lake.write_json(commit_path(self.job, self.partition, self.run_id, self.attempt_id), manifest)
        return manifest

    def record_failure(self, exc: BaseException) -> None:
        """Leave a failure note for operators. It is not a commit, so readers never see the attempt."""
        note = {
            "run_id": self.run_id,
            "attempt_id": self.attempt_id,
            "job": self.job,
            "partition": self.partition,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exception(exc),
            "failed_at": datetime.now(timezone.utc).isoformat(),
            "timings_s": self.timings,
        }
        try:
            self.lake.write_json(
                f"runs/{self.job}/{FAILURES}/{self.partition}/{self.run_id}.{self.attempt_id}.json", note
            )
        except Exception:  # noqa: BLE001 - the original error matters more than the note
            pass

    def _describe_outputs(self) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for table in self.lake.list_dirs(f"{self.prefix}/tables"):
            files = []
            schema = None
            for entry in self.lake.list_files(self.table_dir(table), suffix=".parquet"):
                meta = self.lake.parquet_metadata(entry.path)
                files.append({"path": entry.path, "rows": meta.num_rows, "bytes": entry.size})
                if schema is None or meta.num_rows:
                    schema = meta.schema.to_arrow_schema()
            outputs[table] = {
                "rows": sum(f["rows"] for f in files),
                "files": files,
                "schema": [{"name": f.name, "type": str(f.type)} for f in (schema or pa.schema([]))],
            }
        return outputs

    def quarantine_counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        for table in self.lake.list_dirs(f"{self.prefix}/quarantine"):
            files = self.lake.list_files(self.quarantine_dir(table), suffix=".parquet")
            by_reason: Counter[str] = Counter()
            for entry in files:
                reasons = self.lake.read_table(entry.path, columns=["reason"]).column("reason")
                for row in pc.value_counts(reasons).to_pylist():
                    by_reason[row["values"]] += row["counts"]
            counts[table] = {
                "rows": sum(by_reason.values()),
                "by_reason": dict(sorted(by_reason.items())),
                "files": [e.path for e in files],
            }
        return counts

    def _sum_task_metrics(self) -> dict[str, Any]:
        totals: dict[str, Any] = {}
        for stage in self.lake.list_dirs(f"{self.prefix}/_metrics"):
            summed: Counter[str] = Counter()
            for entry in self.lake.list_files(f"{self.prefix}/_metrics/{stage}", suffix=".json"):
                summed.update(self.lake.read_json(entry.path))
            totals[stage] = dict(sorted(summed.items()))
        return totals


def _sum_rows(inputs: list[InputFile]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for i in inputs:
        totals[i.table] += i.rows
    return dict(totals)


def attempt_prefix(job: str, partition: str, run_id: str, attempt_id: str) -> str:
    """The folder holding one attempt's tables, quarantine and state."""
    return f"runs/{job}/{partition}/{run_id}/{attempt_id}"


def manifest_prefix(manifest: dict[str, Any]) -> str:
    return attempt_prefix(manifest["job"], manifest["partition"], manifest["run_id"], manifest["attempt_id"])


def commit_path(job: str, partition: str, run_id: str, attempt_id: str) -> str:
    return f"runs/{job}/{COMMITS}/{partition}/{run_id}.{attempt_id}.json"


def fingerprint_hash(value: Any, length: int = 12) -> str:
    """A stable hex digest of JSON-able content: the one way run ids and model versions are derived."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def make_run_id(job: str, partition: str, params: dict[str, Any], inputs: list[InputFile]) -> str:
    fingerprint = {
        "job": job,
        "partition": partition,
        "params": params,
        "code": code_version(),
        "inputs": sorted((i.path, i.bytes, i.mtime_ns) for i in inputs),
    }
    return f"{job}-{partition.replace('=', '')}-{fingerprint_hash(fingerprint)}"


def published_manifests(lake: Lake, job: str | None = None) -> list[dict[str, Any]]:
    """Every committed attempt, oldest first (one DuckDB read over the commit folders)."""
    return read_commit_manifests(lake, job)


def latest_attempt(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return max(manifests, key=_commit_order)


def latest_per_partition(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run readers see for each (job, partition): the last one committed."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for m in sorted(manifests, key=_commit_order):
        latest[(m["job"], m["partition"])] = m
    return list(latest.values())


def latest_per_run_id(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for m in sorted(manifests, key=_commit_order):
        latest[m["run_id"]] = m
    return list(latest.values())


def _commit_order(m: dict[str, Any]) -> tuple[str, str]:
    return (m["committed_at"], m["attempt_id"])


def published_run(lake: Lake, job: str, run_id: str) -> dict[str, Any] | None:
    """The last committed attempt of `run_id`, or None when that exact work was never published."""
    attempts = [m for m in published_manifests(lake, job) if m["run_id"] == run_id]
    return latest_attempt(attempts) if attempts else None


def visible_runs(lake: Lake, job: str) -> dict[str, dict[str, Any]]:
    """The run readers see for each partition of `job`: partition -> its last committed manifest."""
    return {m["partition"]: m for m in latest_per_partition(published_manifests(lake, job))}


def visible_run(lake: Lake, job: str, partition: str) -> dict[str, Any] | None:
    """The one lookup of "the published output of job X for partition P"."""
    return visible_runs(lake, job).get(partition)


def output_files(manifest: dict[str, Any], table: str) -> list[InputFile]:
    """A published run's files of `table`, as inputs for a downstream job (paths name the attempt)."""
    output = manifest["outputs"].get(table)
    if output is None:
        raise InputError(f"published run {manifest['run_id']} of {manifest['job']} has no {table} table")
    return [InputFile(table, f["path"], f["rows"], f["bytes"], 0) for f in output["files"]]


def published_output(lake: Lake, job: str, partition: str, table: str) -> tuple[dict[str, Any], list[InputFile]]:
    """The visible run of `job` for `partition` and its `table` files."""
    manifest = visible_run(lake, job, partition)
    if manifest is None:
        raise InputError(f"no published {job} run for {partition} in {lake.uri('runs', job)}; "
                         f"run `lakelens run {job}` first")
    return manifest, output_files(manifest, table)
