"""The job runner: every job is declared once and supplies only its compute.

    job = Job(name, partition, params, inputs, outputs, compute)
    manifest = run_job(lake, job, config, force=False)

The runner owns the rest, the same way for every job:
- the run id (a hash of job, partition, params, code version and input files) and the idempotent
  "already published?" check: unchanged work returns the published manifest and does nothing;
- the attempt: its folder, Ray start-up, stage timings, structured logs carrying job, run id and stage;
- failure: a note under `runs/<job>/_failed/`, nothing visible, the error re-raised, tagged with the attempt;
- the commit: every declared output table exists (empty when there were no rows), then the manifest;
- after publishing: refreshing an exported catalog file when the config names one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa

from lakelens.infra.config import LakelensConfig
from lakelens.infra.errors import mark_failed_run
from lakelens.infra.logs import log_context
from lakelens.infra.runs import InputFile, Run, make_run_id, published_run
from lakelens.infra.storage import Lake

log = logging.getLogger("lakelens.jobs")


@dataclass(frozen=True)
class Job:
    """One run of a job, declared: what it reads, what it is asked, what it publishes, and how it computes."""

    name: str
    partition: str
    params: dict[str, Any]
    inputs: list[InputFile]
    compute: Callable[[Run], None]  # writes the output tables through the run; sets run.metrics
    outputs: dict[str, pa.Schema] = field(default_factory=dict)  # tables every published run has
    run_id: str | None = None  # default: derived from the declaration (see make_run_id)
    uses_ray: bool = True
    describe: Callable[[dict[str, Any]], str] | None = None  # one line about a published manifest


def begin_attempt(lake: Lake, job: Job, force: bool = False) -> tuple[Run, dict[str, Any] | None]:
    """A new attempt of the job and, unless forced, the manifest of the same work already published."""
    run_id = job.run_id or make_run_id(job.name, job.partition, job.params, job.inputs)
    run = Run(lake=lake, job=job.name, partition=job.partition, params=job.params, inputs=job.inputs, run_id=run_id)
    return run, (None if force else published_run(lake, job.name, run_id))


def execute_attempt(run: Run, job: Job) -> dict[str, Any]:
    """Compute and commit one attempt; on any error leave a failure note, publish nothing, and re-raise."""
    try:
        job.compute(run)
        return run.commit(expected_tables=job.outputs)
    except BaseException as exc:
        run.record_failure(exc)
        mark_failed_run(exc, run.job, run.run_id, run.attempt_id)
        log.error("%s: attempt %s of %s failed: %s: %s", run.job, run.attempt_id, run.run_id,
                  type(exc).__name__, exc)
        raise


def run_job(lake: Lake, job: Job, config: LakelensConfig, force: bool = False) -> dict[str, Any]:
    """Run `job` unless the same work is published; returns the published manifest."""
    run, existing = begin_attempt(lake, job, force)
    with log_context(job=job.name, run_id=run.run_id):
        if existing is not None:
            say(f"{job.name}: {run.run_id} is already published (attempt {existing['attempt_id']}); nothing to do")
            return existing
        with log_context(attempt_id=run.attempt_id):
            rows = sum(i.rows for i in job.inputs)
            log.info("%s: run %s, attempt %s: %s input rows from %s files", job.name, run.run_id, run.attempt_id,
                     f"{rows:,}", len(job.inputs))
            if job.uses_ray:
                from lakelens.infra.ray_runtime import init_ray

                init_ray(config.ray)
            manifest = execute_attempt(run, job)
            outputs = ", ".join(f"{t} {o['rows']:,} rows" for t, o in sorted(manifest["outputs"].items()))
            quarantined = sum(q["rows"] for q in manifest["quarantine"].values())
            say(f"{job.name}: published {run.run_id} ({outputs or 'no tables'}; quarantined {quarantined:,}; "
                f"timings {manifest['timings_s']})" + (f"; {job.describe(manifest)}" if job.describe else ""))
            if config.catalog.export:
                from lakelens.infra.catalog import export_catalog

                export_catalog(lake, config.catalog.export)
                log.info("catalog refreshed at %s", config.catalog.export)
    return manifest


def say(line: str) -> None:
    """A job's result: printed for whoever ran it (stdout) and logged for schedulers."""
    print(line, flush=True)
    log.info(line)
