"""The `lakelens` command."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Sequence

from lakelens.infra.config import LakelensConfig
from lakelens.infra.contracts import UnreadableInputError
from lakelens.infra.storage import Lake


def _config(args: argparse.Namespace) -> LakelensConfig:
    overrides = {
        "sequences.lookback_hours": getattr(args, "lookback_hours", None),
        "sequences.max_len": getattr(args, "max_len", None),
        "ray.address": getattr(args, "ray_address", None),
        "ray.num_cpus": getattr(args, "num_cpus", None),
    }
    return LakelensConfig.load(getattr(args, "config", None), overrides)


def cmd_generate(args: argparse.Namespace) -> int:
    from lakelens.pipelines.generate import generate_world

    summary = generate_world(
        Lake(args.out), users=args.users, days=args.days, seed=args.seed,
        start=date.fromisoformat(args.start), workers=args.workers,
    )
    rows = summary["rows"]
    print(f"generate: {rows['events']:,} events, {rows['transactions']:,} transactions "
          f"({rows['fraud_transactions']:,} planted fraud) in {summary['seconds']} s -> {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    lake = Lake(args.lake, config.storage)
    if args.job == "build-sequences":
        from lakelens.pipelines.build_sequences import run_build_sequences

        manifest = run_build_sequences(lake, date.fromisoformat(args.date), config, force=args.force)
    else:  # argparse restricts the choices
        raise AssertionError(args.job)
    if args.json:
        print(json.dumps(manifest, indent=2, default=str))
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from lakelens.infra.catalog import open_catalog

    con = open_catalog(Lake(args.lake, _config(args).storage))
    if args.command:
        con.sql(args.command).show(max_width=200, max_rows=args.max_rows)
        return 0
    print("lakelens sql: one statement per line; views:", ", ".join(
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()))
    for line in sys.stdin:
        if line.strip():
            try:
                con.sql(line).show(max_width=200, max_rows=args.max_rows)
            except Exception as exc:  # noqa: BLE001 - an interactive shell reports and goes on
                print(f"error: {exc}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakelens", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    gen = sub.add_parser("generate", help="write a synthetic click-stream world with planted fraud")
    gen.add_argument("--out", required=True, help="lake root: a path or s3://bucket/prefix")
    gen.add_argument("--users", type=int, default=10_000)
    gen.add_argument("--days", type=int, default=3)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--start", default="2026-01-01", help="first transaction day (UTC)")
    gen.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    gen.set_defaults(fn=cmd_generate)

    run = sub.add_parser("run", help="run a job over the lake and publish its results")
    run.add_argument("job", choices=["build-sequences"])
    run.add_argument("--lake", required=True)
    run.add_argument("--date", required=True, help="the day to process, YYYY-MM-DD")
    run.add_argument("--config", help="TOML file with [storage], [ray], [sequences] sections")
    run.add_argument("--lookback-hours", type=float)
    run.add_argument("--max-len", type=int)
    run.add_argument("--ray-address", help="attach to a Ray cluster (default: RAY_ADDRESS, else local)")
    run.add_argument("--num-cpus", type=int, help="CPUs for a local Ray")
    run.add_argument("--force", action="store_true", help="recompute even if this exact run is published")
    run.add_argument("--json", action="store_true", help="print the manifest")
    run.set_defaults(fn=cmd_run)

    sql = sub.add_parser("sql", help="DuckDB over the lake's catalog views")
    sql.add_argument("--lake", required=True)
    sql.add_argument("--config")
    sql.add_argument("-c", "--command", help="run one query and exit")
    sql.add_argument("--max-rows", type=int, default=40)
    sql.set_defaults(fn=cmd_sql)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except UnreadableInputError as exc:
        print(f"lakelens: error: {exc}", file=sys.stderr)
        code = 2
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        print(f"lakelens: error: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:  # Ray wraps task errors; surface the cause named by our own error types
        cause = _root_cause(exc)
        if isinstance(cause, UnreadableInputError):
            print(f"lakelens: error: {cause}", file=sys.stderr)
            code = 2
        else:
            raise
    sys.exit(code)


def _root_cause(exc: BaseException) -> BaseException:
    seen = exc
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            return seen
        seen = nxt
