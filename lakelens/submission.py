"""`lakelens submit` and `lakelens jobs`: run jobs on a long-lived Ray cluster through the Ray Jobs API.

    lakelens submit behavior-clusters --address http://HEAD:8265 --lake s3://lake/prod --date 2026-01-03 --wait

submits `lakelens run behavior-clusters --lake s3://lake/prod --date 2026-01-03` as a Ray job. Its
submission id is deterministic: `lakelens-<job>-<partition>-<hash>`, the hash over the job's flags, the
lake and the effective config. Submitting the same thing again while that job is pending, running or
succeeded starts nothing and says so; a failed or stopped one runs again only with `--retry`, as
`<id>-a2`, `<id>-a3`, ...

What travels with the job: the config file (and a `--vocabulary` file) in the runtime environment's
working_dir, the S3 endpoint and region as environment variables. Credentials never travel: the
cluster's own environment (the S3 Secret on Kubernetes) provides them, and a config file that holds
any is refused. Token auth (`RAY_AUTH_MODE=token`) works as for every Ray client: the token comes from
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.

Exit codes follow `lakelens run`: with `--wait` (and `jobs logs --follow`) the command exits with the
job's own code (0 succeeded, 1 failed or stopped, 2 bad input or config, as the run exited).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from lakelens.infra.config import LakelensConfig
from lakelens.infra.errors import InputError
from lakelens.infra.runs import fingerprint_hash
from lakelens.job_commands import JOB_COMMANDS

log = logging.getLogger("lakelens.submit")

ID_PREFIX = "lakelens-"
ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # what `ray job` reads too
AGENT_WAIT_S = 120  # how long a submission waits for a freshly started head's job agent
SECRET_KEYS = ("access_key_id", "secret_access_key")
# flags whose value is a file on the submitting machine: it travels in the working_dir under this name
FILE_FLAGS = {"config": "lakelens-job.toml", "vocabulary": "lakelens-vocabulary.txt"}
# flags that shape the logs, not the work: passed on, left out of the submission id
LOG_FLAGS = {"log_level": "INFO", "log_format": "text"}

# the job flags of each `lakelens submit JOB` parser (the same as `lakelens run JOB`), in order
_JOB_ACTIONS: dict[str, list[argparse.Action]] = {}


# -- the plan: what one submission sends, computed without talking to Ray ------------------------------

@dataclass
class Submission:
    job: str
    partition: str
    base_id: str
    argv: list[str]  # `lakelens run JOB ...` as the cluster runs it
    files: dict[str, Path] = field(default_factory=dict)  # working_dir name -> local file
    env_vars: dict[str, str] = field(default_factory=dict)  # never credentials

    @property
    def entrypoint(self) -> str:
        return shlex.join(self.argv)

    def attempt_id(self, attempt: int) -> str:
        return self.base_id if attempt == 1 else f"{self.base_id}-a{attempt}"

    def metadata(self, attempt: int) -> dict[str, str]:
        return {"lakelens_job": self.job, "lakelens_partition": self.partition, "lakelens_base_id": self.base_id,
                "lakelens_attempt": str(attempt)}


def plan_submission(args: argparse.Namespace) -> Submission:
    """The submission for parsed `lakelens submit JOB ...` flags; raises InputError/ConfigError on bad input."""
    job = args.job
    command = JOB_COMMANDS[job]
    for name in FILE_FLAGS:
        value = getattr(args, name, None)
        if value is not None and not Path(value).is_file():
            raise InputError(f"--{name} {value}: no such file here; `lakelens submit` sends the file with the job")
    config = LakelensConfig.load(args.config, command.overrides(args))  # ConfigError names the file and key
    if args.config:
        _refuse_secrets(args.config, config)
    lake = _absolute_lake(args.lake)
    files: dict[str, Path] = {}
    argv, identity = ["lakelens", "run", job], []
    for action in _JOB_ACTIONS[job]:
        value = getattr(args, action.dest, None)
        if action.dest == "lake":
            value = lake
        if value is None or value is False or (value == action.default and not action.required):
            continue
        option = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001 - argparse has no public name for it
            argv.append(option)
            identity.append(option)
            continue
        if action.dest in FILE_FLAGS:
            local = Path(value)
            files[FILE_FLAGS[action.dest]] = local
            argv += [option, FILE_FLAGS[action.dest]]  # what the file says is in the effective config below
            continue
        argv += [option, _flag_text(value)]
        if not _sets_config(command, args, action.dest):  # a config flag counts through the effective config
            identity += [option, _flag_text(value)]
    for name, default in LOG_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None and value != default:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    env_vars = {}
    endpoint = args.s3_endpoint or config.storage.endpoint_url
    if endpoint:
        env_vars["AWS_ENDPOINT_URL"] = endpoint
    if config.storage.region:
        env_vars["AWS_REGION"] = config.storage.region
    partition = _partition(job, args, config)
    settings = config.to_dict()
    settings["storage"] = {k: v for k, v in settings["storage"].items() if k not in SECRET_KEYS}
    settings["ray"].pop("address", None)
    digest = fingerprint_hash({"job": job, "flags": identity, "config": settings, "env": env_vars}, length=10)
    base_id = f"{ID_PREFIX}{job}-{partition}-{digest}"
    return Submission(job, partition, base_id, argv, files, env_vars)


def _sets_config(command, args: argparse.Namespace, dest: str) -> bool:
    without = argparse.Namespace(**{**vars(args), dest: None})
    return command.overrides(without) != command.overrides(args)


def _refuse_secrets(path: str, config: LakelensConfig) -> None:
    found = [f"storage.{k}" for k in SECRET_KEYS if getattr(config.storage, k)]
    if found:
        raise InputError(f"{path}: {', '.join(found)} is set, and `lakelens submit` never sends credentials: the "
                         "cluster's environment provides them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from its S3 "
                         "Secret, see docs/deploy.md). Remove the key from the file you submit.")


def _absolute_lake(lake: str) -> str:
    """A local lake path as the cluster must see it: absolute (a job runs in its own working directory)."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", lake):
        return lake
    return str(Path(lake).expanduser().resolve())


def _flag_text(value: Any) -> str:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list) and value and all(isinstance(v, date) for v in value):
        ordinals = [v.toordinal() for v in value]
        if len(value) > 1 and ordinals == list(range(ordinals[0], ordinals[0] + len(value))):
            return f"{value[0].isoformat()}..{value[-1].isoformat()}"
        return ",".join(v.isoformat() for v in value)
    return str(value)


def _partition(job: str, args: argparse.Namespace, config: LakelensConfig) -> str:
    if getattr(args, "date", None):
        return f"dt={args.date.isoformat()}"
    if getattr(args, "dates", None):
        days = args.dates
        return f"dt={days[0].isoformat()}" + (f"..{days[-1].isoformat()}" if len(days) > 1 else "")
    if job == "semantic-lens":
        return "model=" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", config.lens.model_id or "unnamed")
    return "all"


# -- talking to the cluster ----------------------------------------------------------------------------

def connect(address: str):
    """A JobSubmissionClient, with plain answers for the two ways this goes wrong."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise InputError(
            f"the Ray cluster at {address} requires token authentication and refused this client: set "
            "RAY_AUTH_MODE=token and give the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
            f"~/.ray/auth_token). Ray said: {str(exc).splitlines()[0]}") from None
    except ConnectionError as exc:
        raise ConnectionError(f"cannot reach the Ray dashboard at {address} (the Jobs API, usually port 8265): "
                              f"{exc}") from None


def attempts_of(client, base_id: str) -> list[tuple[int, Any]]:
    """(attempt number, JobDetails) of every submission of this base id, oldest first.

    Asked one id at a time (base, base-a2, ...): a direct lookup, cheaper than listing a long-lived
    cluster's whole job history, and it never misses a job whose record is being rewritten."""
    found, attempt = [], 1
    while True:
        submission_id = base_id if attempt == 1 else f"{base_id}-a{attempt}"
        try:
            found.append((attempt, client.get_job_info(submission_id)))
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return found
            raise
        attempt += 1


def exit_code_of(details) -> int:
    """The job's status as an exit code of `lakelens run`: a failed run keeps its own code (1 or 2)."""
    from ray.job_submission import JobStatus

    if details.status == JobStatus.SUCCEEDED:
        return 0
    if details.status == JobStatus.FAILED:
        code = getattr(details, "driver_exit_code", None)
        return code if code in (1, 2, 64, 130) else 1
    if details.status == JobStatus.STOPPED:
        return 1
    return 0


def _status(details) -> str:
    return str(getattr(details.status, "value", details.status))


def _first_line(text: str | None) -> str:
    """A job's message in one line: the lakelens error it ended with when its logs hold one."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("lakelens: error:", "lakelens: interrupted")) or " run failed: " in line:
            return line
    return lines[0] if lines else ""


def _say(line: str, json_mode: bool = False) -> None:
    """A result line for whoever ran the command (stdout; stderr when stdout carries JSON) and the log."""
    print(line, file=sys.stderr if json_mode else sys.stdout, flush=True)
    log.info(line)


def _follow(client, submission_id: str, out) -> None:
    """Stream the job's logs until it ends."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()

    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # "WebSocket closed ..."
    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the stream can drop; the status poll below still finds the end
        log.warning("log stream of %s ended early: %s", submission_id, exc)


def _wait(client, submission_id: str, poll_s: float = 1.0):
    from ray.job_submission import JobStatus

    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while True:
        details = client.get_job_info(submission_id)
        if details.status in terminal:
            return details
        time.sleep(poll_s)


def _job_row(details) -> dict[str, Any]:
    meta = details.metadata or {}
    return {
        "submission_id": details.submission_id, "status": _status(details),
        "job": meta.get("lakelens_job"), "partition": meta.get("lakelens_partition"),
        "attempt": int(meta["lakelens_attempt"]) if meta.get("lakelens_attempt", "").isdigit() else None,
        "entrypoint": details.entrypoint, "message": _first_line(details.message),
        "driver_exit_code": getattr(details, "driver_exit_code", None),
        "start_time": _iso(details.start_time), "end_time": _iso(details.end_time),
    }


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


# -- the commands ----------------------------------------------------------------------------------------

def cmd_submit(args: argparse.Namespace) -> int:
    plan = plan_submission(args)  # bad flags, config or files fail here, before any request
    client = connect(args.address)
    attempts = attempts_of(client, plan.base_id)
    submission_id, details, submitted = None, None, False
    if attempts:
        number, latest = attempts[-1]
        status = _status(latest)
        if status in ("PENDING", "RUNNING"):
            _say(f"{latest.submission_id} is already {status}; not submitted again"
                 + ("; following it" if args.wait else ""), args.json)
            submission_id, details = latest.submission_id, latest
        elif status == "SUCCEEDED":
            _say(f"{latest.submission_id} already SUCCEEDED; nothing to do", args.json)
            submission_id, details = latest.submission_id, latest
        elif not args.retry:
            _say(f"{latest.submission_id} {status} ({_first_line(latest.message)}); not submitted again: --retry runs "
                 f"it again as {plan.attempt_id(number + 1)}", args.json)
            return _finish(args, plan, latest, submitted=False)
        else:
            submission_id = _submit(client, plan, number + 1, args)
            submitted = True
    else:
        submission_id = _submit(client, plan, 1, args)
        submitted = True
    if args.wait:
        if submitted or _status(details) in ("PENDING", "RUNNING"):
            _follow(client, submission_id, sys.stderr if args.json else sys.stdout)
        details = _wait(client, submission_id)
        _say(f"{submission_id}: {_status(details)}" + (f" ({_first_line(details.message)})"
                                                       if _status(details) != "SUCCEEDED" else ""), args.json)
        return _finish(args, plan, details, submitted)
    details = client.get_job_info(submission_id)
    return _finish(args, plan, details, submitted, code=0 if _status(details) in ("PENDING", "RUNNING") else None)


def _submit(client, plan: Submission, attempt: int, args: argparse.Namespace) -> str:
    submission_id = plan.attempt_id(attempt)
    runtime_env: dict[str, Any] = {}
    if plan.env_vars:
        runtime_env["env_vars"] = dict(plan.env_vars)
    with tempfile.TemporaryDirectory(prefix="lakelens-submit-") as folder:
        if plan.files:
            for name, local in plan.files.items():
                shutil.copyfile(local, Path(folder) / name)
            runtime_env["working_dir"] = folder
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                client.submit_job(entrypoint=plan.entrypoint, submission_id=submission_id,
                                  runtime_env=runtime_env or None, metadata=plan.metadata(attempt))
                break
            except RuntimeError as exc:
                if "already exists" in str(exc):
                    # another scheduler fired at the same moment: that submission is this one
                    _say(f"{submission_id} was submitted by someone else just now; not submitted again", args.json)
                    return submission_id
                if "No available agent" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise ConnectionError(f"the Ray cluster has no job agent to run {submission_id} after "
                                          f"{AGENT_WAIT_S} s (its dashboard agent did not start: see the head's "
                                          "dashboard_agent.log)") from None
                # a head that has just started answers before its job agent has registered
                log.info("the cluster's job agent is not up yet; submitting %s again in 2 s", submission_id)
                time.sleep(2)
    _say(f"submitted {submission_id}: {plan.entrypoint}", args.json)
    return submission_id


def _finish(args: argparse.Namespace, plan: Submission, details, submitted: bool, code: int | None = None) -> int:
    code = exit_code_of(details) if code is None else code
    if args.json:
        print(json.dumps({**_job_row(details), "submitted": submitted, "base_id": plan.base_id, "exit_code": code,
                          "address": args.address}, indent=2))
    return code


def cmd_jobs_list(args: argparse.Namespace) -> int:
    client = connect(args.address)
    rows = [_job_row(d) for d in client.list_jobs()
            if args.all or (d.submission_id or "").startswith(ID_PREFIX)]
    rows.sort(key=lambda r: r["start_time"] or "")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no {'' if args.all else 'lakelens '}jobs on {args.address}")
    for r in rows:
        print(f"{r['submission_id']:<72} {r['status']:<9} {r['start_time'] or '-':<25} {r['message'][:60]}")
    return 0


def _details(client, submission_id: str):
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc):
            raise InputError(f"no job {submission_id!r} on this cluster (`lakelens jobs list` shows them)") from None
        raise


def cmd_jobs_status(args: argparse.Namespace) -> int:
    client = connect(args.address)
    details = _details(client, args.id)
    row = {**_job_row(details), "runtime_env": details.runtime_env, "metadata": details.metadata}
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(f"{row['submission_id']}: {row['status']}" + (f" ({row['message']})" if row["message"] else ""))
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    client = connect(args.address)
    details = _details(client, args.id)
    code = 0
    if args.follow:  # streamed as it comes (to stderr under --json), then the job's exit code
        _follow(client, args.id, sys.stderr if args.json else sys.stdout)
        details = _wait(client, args.id)
        code = exit_code_of(details)
    if args.json:
        print(json.dumps({**_job_row(details), "logs": client.get_job_logs(args.id), "exit_code": code}, indent=2))
    elif not args.follow:
        sys.stdout.write(client.get_job_logs(args.id))
    return code


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    client = connect(args.address)
    details = _details(client, args.id)
    stopping = client.stop_job(args.id)
    if args.json:
        print(json.dumps({"submission_id": args.id, "stop_requested": stopping, "status": _status(details)}, indent=2))
    elif stopping:
        print(f"{args.id}: stop requested (was {_status(details)})")
    else:
        print(f"{args.id}: already {_status(details)}; nothing to stop")
    return 0


# -- the parsers (called once from lakelens.cli.build_parser) ----------------------------------------------

def _address_flag(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(ADDRESS_ENV)
    parser.add_argument("--address", default=default, required=default is None, metavar="http://HEAD:8265",
                        help=f"the Ray dashboard (Jobs API) of the cluster (default: ${ADDRESS_ENV})")


def add_submission_commands(sub) -> None:
    """`lakelens submit JOB ...` (one subcommand per registered job) and `lakelens jobs list|status|logs|stop`."""
    from lakelens.cli import UsageParser, _add, _lake_flags

    submit = sub.add_parser("submit", help="submit a job to a Ray cluster through the Ray Jobs API",
                            description="Submit `lakelens run JOB ...` to a Ray cluster through the Ray Jobs API, "
                                        "under a deterministic submission id: the same submission twice starts one "
                                        "job. `lakelens submit JOB --help` shows the job's own flags.")
    jobs = submit.add_subparsers(dest="job", required=True, metavar="JOB", parser_class=UsageParser)
    for command in JOB_COMMANDS.values():
        example = command.example.replace("lakelens run", "lakelens submit", 1) + " --address http://HEAD:8265 --wait"
        p = _add(jobs, command.name, f"submit: {command.summary}", cmd_submit, example,
                 json_help="print the submission (id, status, exit code) as JSON; job logs then go to stderr")
        before = len(p._actions)  # noqa: SLF001 - the job's flags are the actions added next
        _lake_flags(p)
        command.add_arguments(p)
        p.add_argument("--force", action="store_true", help="the run recomputes even if this exact run is published")
        _JOB_ACTIONS[command.name] = p._actions[before:]  # noqa: SLF001
        group = p.add_argument_group("submission")
        _address_flag(group)
        group.add_argument("--wait", action="store_true",
                           help="stream the job's logs until it ends and exit with its status (0, 1 or 2)")
        group.add_argument("--retry", action="store_true",
                           help="if this submission failed or was stopped, submit it again as the next attempt")
        group.add_argument("--s3-endpoint", help="S3 endpoint the job uses (default: [storage] endpoint_url of "
                                                 "--config; else the cluster's own AWS_ENDPOINT_URL)")

    jobs_cmd = sub.add_parser("jobs", help="the jobs on a Ray cluster: list, status, logs, stop")
    jobs_sub = jobs_cmd.add_subparsers(dest="jobs_cmd", required=True, parser_class=UsageParser)
    ls = _add(jobs_sub, "list", "the lakelens jobs submitted to the cluster, oldest first", cmd_jobs_list,
              "lakelens jobs list --address http://HEAD:8265", json_help="print them as JSON")
    _address_flag(ls)
    ls.add_argument("--all", action="store_true", help="every job on the cluster, not only lakelens submissions")
    st = _add(jobs_sub, "status", "a job's status and, when it failed, why", cmd_jobs_status,
              "lakelens jobs status lakelens-behavior-clusters-dt=2026-01-03-0123456789 --address http://HEAD:8265",
              json_help="print it as JSON")
    lg = _add(jobs_sub, "logs", "a job's logs", cmd_jobs_logs,
              "lakelens jobs logs lakelens-behavior-clusters-dt=2026-01-03-0123456789 --follow --address http://HEAD:8265",
              json_help="print the status and the whole log as JSON (with --follow: after streaming it to stderr)")
    lg.add_argument("--follow", action="store_true", help="stream until the job ends, then exit with its status")
    sp = _add(jobs_sub, "stop", "stop a pending or running job", cmd_jobs_stop,
              "lakelens jobs stop lakelens-behavior-clusters-dt=2026-01-03-0123456789 --address http://HEAD:8265",
              json_help="print the answer as JSON")
    for parser in (st, lg, sp):
        parser.add_argument("id", help="the submission id (`lakelens jobs list` shows them)")
        _address_flag(parser)
