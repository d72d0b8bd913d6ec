"""The `lakelens` command.

Exit codes (schedulers script against them):
    0   success, including "already published; nothing to do"
    1   a run failed: the job raised while running; its attempt left a failure note and published nothing
    2   bad input or config: a missing partition or model, an unreadable file, an invalid config value
    64  usage error: an unknown command or flag, a missing or malformed argument
    130 interrupted
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from datetime import date
from typing import Any, Sequence

from lakelens.infra.config import ConfigError, LakelensConfig
from lakelens.infra.contracts import UnreadableInputError
from lakelens.infra.errors import InputError, failed_run_of
from lakelens.infra.storage import Lake
from lakelens.job_commands import JOB_COMMANDS, JobCommand, parse_day

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 64, 130
log = logging.getLogger("lakelens.cli")


class UsageParser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 so that it differs from bad input (2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _config(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> LakelensConfig:
    flags = {"ray.address": getattr(args, "ray_address", None), "ray.num_cpus": getattr(args, "num_cpus", None),
             **(overrides or {})}
    return LakelensConfig.load(getattr(args, "config", None), flags)


def _lake(args: argparse.Namespace, config: LakelensConfig | None = None) -> Lake:
    return Lake(getattr(args, "lake", None) or args.out, (config or _config(args)).storage)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# -- jobs -------------------------------------------------------------------------------------------

def cmd_run_job(args: argparse.Namespace) -> int:
    command: JobCommand = JOB_COMMANDS[args.job]
    config = _config(args, command.overrides(args))
    manifest = command.run(_lake(args, config), config, args)
    if args.json:
        _print_json(manifest)
    return EXIT_OK


def cmd_compare_models(args: argparse.Namespace) -> int:
    from lakelens.pipelines.compare_models import run_compare_models

    config = _config(args)
    lake = _lake(args, config)
    manifest = run_compare_models(lake, args.a, args.b, force=args.force, config=config)
    rows = lake.read_table(manifest["outputs"]["model_comparisons"]["files"][0]["path"]).to_pylist()
    if args.json:
        _print_json({"manifest": manifest, "concepts": rows})
        return EXIT_OK
    for status in ("shared", "only_a", "only_b"):
        concepts = [r["concept"] for r in rows if r["status"] == status]
        print(f"{status}: {', '.join(concepts) or '-'}")
    return EXIT_OK


# -- synthetic worlds ----------------------------------------------------------------------------------

def cmd_generate(args: argparse.Namespace) -> int:
    from lakelens.synthetic.generate import generate_world

    summary = generate_world(_lake(args), users=args.users, days=args.days, seed=args.seed, start=args.start,
                             workers=args.workers)
    rows = summary["rows"]
    print(f"generate: {rows['events']:,} events, {rows['transactions']:,} transactions "
          f"({rows['fraud_transactions']:,} planted fraud) in {summary['seconds']} s -> {args.out}")
    return EXIT_OK


def cmd_generate_week(args: argparse.Namespace) -> int:
    from lakelens.synthetic.week import generate_week

    summary = generate_week(_lake(args), users=args.users, seed=args.seed, start=args.start, workers=args.workers)
    per_day = ", ".join(f"{day[5:]} {n:,}" for day, n in summary["transactions_per_day"].items())
    print(f"generate-week: {summary['rows']['events']:,} events, {summary['rows']['transactions']:,} transactions "
          f"({per_day}) in {summary['seconds']} s -> {args.out}")
    return EXIT_OK


def cmd_generate_images(args: argparse.Namespace) -> int:
    from lakelens.synthetic.lens_world import generate_lens_world, lens_config_for_world

    lake = _lake(args)
    summary = generate_lens_world(lake, n=args.n, seed=args.seed, clip_epochs=args.clip_epochs)
    config_path = args.config_out or str(lake.uri("lens-world.toml"))
    import tomli_w

    world = lens_config_for_world()
    LakelensConfig.load(None, {f"lens.{k}": v for k, v in world.items()})  # what we write must load back
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(tomli_w.dumps({"lens": world}))
    print(f"generate-images: {summary['images']:,} images, tiny CNN (loss {summary['classifier_loss']:.3f}) and tiny "
          f"CLIP (loss {summary['clip_loss']:.3f}) trained in {summary['seconds']} s -> {args.out}; config {config_path}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Synthetic worlds only: score the visible behavior-clusters run of a day against truth/."""
    from lakelens.infra.runs import visible_run
    from lakelens.synthetic.truth import measure_detection

    lake = _lake(args)
    if not lake.list_files("truth/transactions", suffix=".parquet"):
        raise InputError(f"{lake.uri('truth')} has no ground truth: evaluate works on generated worlds only")
    run = visible_run(lake, "behavior-clusters", f"dt={args.date}")
    if run is None:
        raise InputError(f"no published behavior-clusters run for {args.date}")
    detection = measure_detection(lake, run)
    if args.json:
        _print_json({"run_id": run["run_id"], **vars(detection)})
    else:
        print("evaluate:", detection.describe())
    return EXIT_OK


# -- reviewers and analysts ----------------------------------------------------------------------------

def cmd_review(args: argparse.Namespace) -> int:
    from lakelens.infra.reviews import Review, record_review

    row = record_review(_lake(args), Review(args.cluster_key, args.verdict, args.reviewer, args.comment or "", args.run))
    if args.json:
        _print_json(row)
    else:
        print(f"review {row['review_id']}: {row['verdict']} on {row['cluster_key']} (run {row['run_id']}) "
              f"by {row['reviewer']}")
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    from lakelens.pipelines.search_components import search_components

    found = search_components(_lake(args), args.text, args.model, top=args.top).to_pylist()
    if args.json:
        _print_json(found)
        return EXIT_OK
    print(f"components of {args.model} closest to {args.text!r}:")
    for row in found:
        print(f"  {row['layer']}:{row['unit']:<4} similarity {row['similarity']:.3f}  label {row['label']!r} "
              f"({row['label_score']:+.3f}), clarity {row['clarity']:.2f}")
    return EXIT_OK


def cmd_sql(args: argparse.Namespace) -> int:
    from lakelens.infra.catalog import open_catalog

    con = open_catalog(_lake(args))
    if args.command is not None:
        import duckdb

        try:
            for statement in con.extract_statements(args.command):
                _print_result(con, statement.query, args)
        except duckdb.Error as exc:  # the user's SQL: a clear message, not a traceback
            raise InputError(f"SQL: {exc}") from exc
        return EXIT_OK
    views = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
    print("lakelens sql: statements end with ';' (or at the end of input); views:", ", ".join(views))
    for text in _statements_from(sys.stdin):
        try:
            for statement in con.extract_statements(text):
                _print_result(con, statement.query, args)
        except Exception as exc:  # noqa: BLE001 - an interactive shell reports and goes on
            print(f"error: {exc}", file=sys.stderr)
    return EXIT_OK


def _statements_from(stream) -> Any:
    """A terminal runs each statement when its line ends with ';'; piped input runs as a whole."""
    if not stream.isatty():
        text = stream.read()
        if text.strip():
            yield text
        return
    buffer = ""
    for line in stream:
        buffer += line
        if buffer.rstrip().endswith(";"):
            yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer


def _print_result(con, statement: str, args: argparse.Namespace) -> None:
    if args.raw:  # for shell scripts: tab-separated rows, no header
        relation = con.sql(statement)
        for row in (relation.fetchall() if relation is not None else []):
            print("\t".join("" if v is None else str(v) for v in row))
        return
    relation = con.sql(statement)
    if relation is None:  # statements such as CREATE or COPY return no relation
        return
    if args.format == "table":
        relation.show(max_width=200, max_rows=args.max_rows)
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(relation.columns)
        writer.writerows(relation.fetchall())
    else:
        columns = relation.columns
        _print_json([dict(zip(columns, row)) for row in relation.fetchall()])


def cmd_catalog_export(args: argparse.Namespace) -> int:
    from lakelens.infra.catalog import export_catalog

    summary = export_catalog(_lake(args), args.out)
    if args.json:
        _print_json(summary)
    else:
        print(f"catalog: wrote {args.out} ({summary.get('runs', 0)} published runs); "
              f"open it with duckdb.connect({args.out!r}, read_only=True)")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.json:
        _print_json(config.to_dict())
    else:
        print(config.to_toml(), end="")
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------------------

def _common(json_help: str | None = None) -> argparse.ArgumentParser:
    """Flags every command takes."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("logging")
    group.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log level (default: INFO); logs go to stderr")
    group.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text for people, json (one object per line) for schedulers and Kubernetes")
    if json_help:
        parent.add_argument("--json", action="store_true", help=json_help)
    return parent


def _lake_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", required=True, help="lake root: a path, file:// or s3://bucket/prefix")
    parser.add_argument("--config", help="TOML config file (see `lakelens config show`)")


def _ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-address", help="attach to a Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (ray.num_cpus)")


def _add(sub, name: str, help: str, fn, example: str = "", json_help: str | None = None) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help, parents=[_common(json_help)],
                            epilog=f"example:\n  {example}" if example else None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(fn=fn)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="lakelens", description="Explain behaviour and models at data-lake scale.",
                         epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lakelens {_version()}")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=UsageParser)

    run = sub.add_parser("run", help="run a job over the lake and publish its results",
                         description="Run a job over the lake and publish its results. "
                                     "`lakelens run JOB --help` shows the job's own flags.")
    jobs = run.add_subparsers(dest="job", required=True, metavar="JOB", parser_class=UsageParser)
    for command in JOB_COMMANDS.values():
        p = _add(jobs, command.name, command.summary, cmd_run_job, command.example,
                 json_help="print the published manifest as JSON")
        _lake_flags(p)
        command.add_arguments(p)
        p.add_argument("--force", action="store_true", help="recompute even if this exact run is published")
        _ray_flags(p)

    gen = _add(sub, "generate", "write a synthetic click-stream world with planted fraud", cmd_generate,
               "lakelens generate --out /tmp/lake --users 4000 --days 4 --seed 7")
    gen.add_argument("--out", required=True, help="lake root: a path or s3://bucket/prefix")
    gen.add_argument("--users", type=int, default=10_000, help="users in the world (default: 10000)")
    gen.add_argument("--days", type=int, default=3, help="days of transactions (default: 3)")
    gen.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical Parquet")
    gen.add_argument("--start", type=parse_day, default=date(2026, 1, 1), help="first transaction day (UTC)")
    gen.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    wk = _add(sub, "generate-week", "write a drifting week (app release, new fraud pattern, timing bot, sale) "
              "for testing daily runs", cmd_generate_week, "lakelens generate-week --out /tmp/week --users 4500 --seed 17")
    wk.add_argument("--out", required=True, help="lake root: a path or s3://bucket/prefix")
    wk.add_argument("--users", type=int, default=4500, help="users of the base world (default: 4500, ~1,700-2,500 "
                    "transactions a day)")
    wk.add_argument("--seed", type=int, default=17, help="the same seed gives byte-identical Parquet (default: 17)")
    wk.add_argument("--start", type=parse_day, default=date(2026, 1, 1), help="first day of the week (UTC)")
    wk.add_argument("--workers", type=int, default=1, help="processes, one per 20,000 users (default: 1)")

    gi = _add(sub, "generate-images", "synthetic image world + tiny CNN and tiny CLIP for the semantic lens",
              cmd_generate_images, "lakelens generate-images --out /tmp/lake --n 1600 --seed 5")
    gi.add_argument("--out", required=True, help="lake root")
    gi.add_argument("--n", type=int, default=2000, help="images (default: 2000)")
    gi.add_argument("--seed", type=int, default=0, help="the world's random seed (default: 0)")
    gi.add_argument("--clip-epochs", type=int, default=60, help="tiny CLIP training epochs (default: 60)")
    gi.add_argument("--config-out", help="where to write the [lens] config for this world (default: LAKE/lens-world.toml)")
    gi.add_argument("--config", help="TOML config file ([storage] for S3)")

    ev = _add(sub, "evaluate", "synthetic worlds: detection numbers of a day's clusters against truth/", cmd_evaluate,
              "lakelens evaluate --lake /tmp/lake --date 2026-01-03", json_help="print the numbers as JSON")
    _lake_flags(ev)
    ev.add_argument("--date", type=parse_day, required=True, help="the day of the behavior-clusters run")

    se = _add(sub, "search", "components of an analysed model whose concepts match a text", cmd_search,
              'lakelens search "striped" --lake LAKE --model tiny-cnn-world', json_help="print the rows as JSON")
    se.add_argument("text", help="a concept in words")
    _lake_flags(se)
    se.add_argument("--model", required=True, help="the model_id of a published semantic-lens run")
    se.add_argument("--top", type=int, default=10, help="how many components (default: 10)")

    cm = _add(sub, "compare-models", "shared and unique concepts of two analysed models (publishes model_comparisons)",
              cmd_compare_models, "lakelens compare-models --lake LAKE --a model-v1 --b model-v2",
              json_help="print the manifest and the concepts as JSON")
    _lake_flags(cm)
    cm.add_argument("--a", required=True, help="model_id of the first semantic-lens run")
    cm.add_argument("--b", required=True, help="model_id of the second")
    cm.add_argument("--force", action="store_true", help="recompute even if this comparison is published")

    rev = _add(sub, "review", "record a reviewer's verdict on a cluster (append-only)", cmd_review,
               "lakelens review --lake LAKE --cluster-key ck-0609f7658b --verdict fraud --reviewer ana",
               json_help="print the stored review as JSON")
    _lake_flags(rev)
    rev.add_argument("--cluster-key", required=True, help="a cluster_key from flagged_clusters")
    rev.add_argument("--verdict", required=True, help="fraud, legit or needs_more_info")
    rev.add_argument("--reviewer", required=True, help="who decided")
    rev.add_argument("--comment", help="why")
    rev.add_argument("--run", help="the run reviewed (default: the latest published run with this cluster)")

    sql = _add(sub, "sql", "DuckDB over the lake's catalog views", cmd_sql,
               'lakelens sql --lake LAKE -c "SELECT * FROM flagged_clusters; SELECT count(*) FROM runs"')
    _lake_flags(sql)
    sql.add_argument("-c", "--command", help="SQL to run (several statements separated by ';'); else read stdin")
    sql.add_argument("--format", default="table", choices=["table", "csv", "json"], help="output format (default: table)")
    sql.add_argument("--max-rows", type=int, default=40, help="rows shown per result in table format")
    sql.add_argument("--raw", action="store_true", help="print rows tab-separated without a header (for scripts)")

    catalog = sub.add_parser("catalog", help="the catalog as a file other tools open")
    catalog_sub = catalog.add_subparsers(dest="catalog_cmd", required=True, parser_class=UsageParser)
    export = _add(catalog_sub, "export", "write the catalog's views into a DuckDB file (committed runs only, no secrets)",
                  cmd_catalog_export, "lakelens catalog export --lake LAKE --out lake.duckdb",
                  json_help="print a summary as JSON")
    _lake_flags(export)
    export.add_argument("--out", required=True, help="the DuckDB file to write (replaced atomically)")

    config = sub.add_parser("config", help="the effective configuration")
    config_sub = config.add_subparsers(dest="config_cmd", required=True, parser_class=UsageParser)
    show = _add(config_sub, "show", "print the effective, validated config (defaults, then the file)", cmd_config_show,
                "lakelens config show --config job.toml", json_help="print it as JSON instead of TOML")
    show.add_argument("--config", help="TOML config file")

    from lakelens.submission import add_submission_commands  # `submit` and `jobs`: the Ray Jobs API
    add_submission_commands(sub)

    from lakelens.serve.commands import add_commands as add_serve_commands  # `serve` and `users`
    add_serve_commands(sub, _add, _lake_flags)
    return parser


def _version() -> str:
    from lakelens.infra.runs import code_version

    return code_version()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from lakelens.infra.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    if args.log_format == "json":
        # Ray's own INFO lines are plain text: keep a JSON log parseable line by line
        logging.getLogger("ray").setLevel(logging.WARNING)
    sys.exit(_exit_code(args))


def _exit_code(args: argparse.Namespace) -> int:
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes an exit code and a message
        bad_input = next((e for e in _chain(exc) if isinstance(e, (UnreadableInputError, InputError, ConfigError))), None)
        if bad_input is not None:
            _fail(bad_input)
            return EXIT_BAD_INPUT
        if failed_run_of(exc):
            cause = _chain(exc)[-1]
            log.error("run failed: %s (%s); see its failure note under runs/<job>/_failed/", failed_run_of(exc),
                      f"{type(cause).__name__}: {cause}", exc_info=exc)
            return EXIT_RUN_FAILED
        if isinstance(exc, (LookupError, FileNotFoundError, ValueError, ConnectionError)):
            _fail(exc)  # raised while checking the request, before any run began
            return EXIT_BAD_INPUT
        log.error("unexpected error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return EXIT_RUN_FAILED


def _fail(exc: BaseException) -> None:
    print(f"lakelens: error: {exc}", file=sys.stderr)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (Ray wraps task errors in its own types)."""
    chain = [exc]
    while True:
        nxt = getattr(chain[-1], "cause", None) or chain[-1].__cause__
        if nxt is None or any(nxt is seen for seen in chain):
            return chain
        chain.append(nxt)
