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
        "encoder.epochs": getattr(args, "epochs", None),
        "clusters.window_days": getattr(args, "window_days", None),
        "encoder.num_workers": getattr(args, "workers", None),
        "lens.model_id": getattr(args, "model_id", None),
        "lens.layers": _split(getattr(args, "layers", None)),
        "lens.vocabulary": _vocabulary(getattr(args, "vocabulary", None)),
    }
    return LakelensConfig.load(getattr(args, "config", None), overrides)


def _split(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _vocabulary(path: str | None) -> list[str] | None:
    """One concept label per line of a file."""
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


def cmd_generate_images(args: argparse.Namespace) -> int:
    from lakelens.pipelines.lens_world import generate_lens_world, lens_config_for_world

    lake = Lake(args.out, _config(args).storage)
    summary = generate_lens_world(lake, n=args.n, seed=args.seed, clip_epochs=args.clip_epochs)
    config_path = args.config_out or str(lake.uri("lens-world.toml"))
    with open(config_path, "w", encoding="utf-8") as handle:
        handle.write(_toml({"lens": lens_config_for_world()}))
    print(f"generate-images: {summary['images']:,} images, tiny CNN (loss {summary['classifier_loss']:.3f}) and tiny "
          f"CLIP (loss {summary['clip_loss']:.3f}) trained in {summary['seconds']} s -> {args.out}; config {config_path}")
    return 0


def _toml(sections: dict) -> str:
    def value(v) -> str:
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f'"{k}" = {value(x)}' for k, x in v.items()) + "}"
        raise TypeError(type(v))

    lines = []
    for name, body in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def cmd_search(args: argparse.Namespace) -> int:
    from lakelens.pipelines.semantic_lens import search_components

    lake = Lake(args.lake, _config(args).storage)
    found = search_components(lake, args.text, args.model, top=args.top)
    print(f"components of {args.model} closest to {args.text!r}:")
    for row in found.to_pylist():
        print(f"  {row['layer']}:{row['unit']:<4} similarity {row['similarity']:.3f}  label {row['label']!r} "
              f"({row['label_score']:+.3f}), clarity {row['clarity']:.2f}")
    return 0


def cmd_compare_models(args: argparse.Namespace) -> int:
    from lakelens.pipelines.semantic_lens import run_compare_models

    lake = Lake(args.lake, _config(args).storage)
    manifest = run_compare_models(lake, args.a, args.b, force=args.force)
    table = lake.read_table(manifest["outputs"]["model_comparisons"]["files"][0]["path"]).to_pylist()
    for status in ("shared", "only_a", "only_b"):
        concepts = [r["concept"] for r in table if r["status"] == status]
        print(f"{status}: {', '.join(concepts) or '-'}")
    return 0


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


def _day(args: argparse.Namespace) -> date:
    if not args.date:
        raise ValueError(f"`lakelens run {args.job}` needs --date YYYY-MM-DD")
    return date.fromisoformat(args.date)


def _days(text: str | None) -> list[date]:
    """`D1,D2,...` or an inclusive range `D1..D2`."""
    if not text:
        raise ValueError("`lakelens run train-encoder` needs --dates D1,D2,... or D1..D2")
    if ".." in text:
        first, last = (date.fromisoformat(part) for part in text.split("..", 1))
        if last < first:
            raise ValueError(f"--dates range {text} ends before it starts")
        return [date.fromordinal(d) for d in range(first.toordinal(), last.toordinal() + 1)]
    return [date.fromisoformat(part.strip()) for part in text.split(",") if part.strip()]


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    lake = Lake(args.lake, config.storage)
    if args.job == "build-sequences":
        from lakelens.pipelines.build_sequences import run_build_sequences

        manifest = run_build_sequences(lake, _day(args), config, force=args.force)
    elif args.job == "train-encoder":
        from lakelens.pipelines.train_encoder import run_train_encoder

        manifest = run_train_encoder(lake, _days(args.dates), config, force=args.force)
    elif args.job == "embed":
        from lakelens.pipelines.embed import run_embed

        manifest = run_embed(lake, _day(args), config, model_version=args.model, force=args.force)
    elif args.job == "semantic-lens":
        from lakelens.pipelines.semantic_lens import run_semantic_lens

        manifest = run_semantic_lens(lake, args.dataset, config, force=args.force)
    elif args.job == "behavior-clusters":
        from lakelens.pipelines.behavior_clusters import run_behavior_clusters

        manifest = run_behavior_clusters(lake, _day(args), config, force=args.force, full=args.full)
    else:  # argparse restricts the choices
        raise AssertionError(args.job)
    if args.json:
        print(json.dumps(manifest, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Synthetic worlds only: score the visible behavior-clusters run of a day against truth/."""
    from lakelens.infra.runs import latest_per_partition, published_manifests
    from lakelens.pipelines.synthetic_truth import measure_detection

    lake = Lake(args.lake, _config(args).storage)
    if not lake.list_files("truth/transactions", suffix=".parquet"):
        raise FileNotFoundError(f"{lake.uri('truth')} has no ground truth: evaluate works on generated worlds only")
    runs = [m for m in latest_per_partition(published_manifests(lake, "behavior-clusters"))
            if m["partition"] == f"dt={args.date}"]
    if not runs:
        raise FileNotFoundError(f"no published behavior-clusters run for {args.date}")
    print("evaluate:", measure_detection(lake, runs[0]).describe())
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from lakelens.infra.reviews import Review, record_review

    lake = Lake(args.lake, _config(args).storage)
    row = record_review(lake, Review(args.cluster_key, args.verdict, args.reviewer, args.comment or "", args.run))
    print(f"review {row['review_id']}: {row['verdict']} on {row['cluster_key']} (run {row['run_id']}) by {row['reviewer']}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from lakelens.infra.catalog import open_catalog

    con = open_catalog(Lake(args.lake, _config(args).storage))

    def run(statement: str) -> None:
        if args.raw:  # for shell scripts: tab-separated rows, no header
            for row in con.execute(statement).fetchall():
                print("\t".join("" if v is None else str(v) for v in row))
            return
        result = con.sql(statement)
        if result is not None:  # statements such as CREATE or COPY return no relation
            result.show(max_width=200, max_rows=args.max_rows)

    if args.command:
        run(args.command)
        return 0
    print("lakelens sql: one statement per line; views:", ", ".join(
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()))
    for line in sys.stdin:
        if line.strip():
            try:
                run(line)
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
    run.add_argument("job", choices=["build-sequences", "train-encoder", "embed", "behavior-clusters", "semantic-lens"])
    run.add_argument("--lake", required=True)
    run.add_argument("--date", help="the day to process, YYYY-MM-DD (build-sequences, embed)")
    run.add_argument("--dates", help="train-encoder: days whose sequences to train on, D1,D2 or D1..D2")
    run.add_argument("--model", default="latest", help="embed: encoder version in models/<name>/ (default: latest)")
    run.add_argument("--window-days", type=int, help="behavior-clusters: days of transactions clustered together")
    run.add_argument("--epochs", type=int, help="train-encoder: at most this many epochs")
    run.add_argument("--workers", type=int, help="train-encoder: Ray Train workers")
    run.add_argument("--config", help="TOML file with [storage], [ray], [sequences], [encoder], [embed] sections")
    run.add_argument("--lookback-hours", type=float)
    run.add_argument("--max-len", type=int)
    run.add_argument("--ray-address", help="attach to a Ray cluster (default: RAY_ADDRESS, else local)")
    run.add_argument("--num-cpus", type=int, help="CPUs for a local Ray")
    run.add_argument("--dataset", default="images", help="semantic-lens: folder of image Parquet in the lake")
    run.add_argument("--model-id", help="semantic-lens: the model's name in the result tables")
    run.add_argument("--layers", help="semantic-lens: layers to analyse, comma-separated")
    run.add_argument("--vocabulary", help="semantic-lens: a file with one concept label per line")
    run.add_argument("--force", action="store_true", help="recompute even if this exact run is published")
    run.add_argument("--full", action="store_true",
                     help="behavior-clusters: re-cluster the whole window instead of continuing the previous run")
    run.add_argument("--json", action="store_true", help="print the manifest")
    run.set_defaults(fn=cmd_run)

    ev = sub.add_parser("evaluate", help="synthetic worlds: detection numbers of a day's clusters against truth/")
    ev.add_argument("--lake", required=True)
    ev.add_argument("--date", required=True)
    ev.add_argument("--config")
    ev.set_defaults(fn=cmd_evaluate)

    gi = sub.add_parser("generate-images", help="synthetic image world + tiny CNN and tiny CLIP for the semantic lens")
    gi.add_argument("--out", required=True)
    gi.add_argument("--n", type=int, default=2000)
    gi.add_argument("--seed", type=int, default=0)
    gi.add_argument("--clip-epochs", type=int, default=60)
    gi.add_argument("--config-out", help="where to write the [lens] config for this world (default: LAKE/lens-world.toml)")
    gi.add_argument("--config")
    gi.set_defaults(fn=cmd_generate_images)

    se = sub.add_parser("search", help="components of a model whose concepts match a text")
    se.add_argument("text")
    se.add_argument("--lake", required=True)
    se.add_argument("--model", required=True, help="the model_id of a published semantic-lens run")
    se.add_argument("--top", type=int, default=10)
    se.add_argument("--config")
    se.set_defaults(fn=cmd_search)

    cm = sub.add_parser("compare-models", help="shared and unique concepts of two analysed models")
    cm.add_argument("--lake", required=True)
    cm.add_argument("--a", required=True, help="model_id of the first semantic-lens run")
    cm.add_argument("--b", required=True, help="model_id of the second")
    cm.add_argument("--force", action="store_true")
    cm.add_argument("--config")
    cm.set_defaults(fn=cmd_compare_models)

    rev = sub.add_parser("review", help="record a reviewer's verdict on a cluster (append-only)")
    rev.add_argument("--lake", required=True)
    rev.add_argument("--cluster-key", required=True)
    rev.add_argument("--verdict", required=True, help="fraud, legit or needs_more_info")
    rev.add_argument("--reviewer", required=True)
    rev.add_argument("--comment")
    rev.add_argument("--run", help="the run reviewed (default: the latest published run with this cluster)")
    rev.add_argument("--config")
    rev.set_defaults(fn=cmd_review)

    sql = sub.add_parser("sql", help="DuckDB over the lake's catalog views")
    sql.add_argument("--lake", required=True)
    sql.add_argument("--config")
    sql.add_argument("-c", "--command", help="run one query and exit")
    sql.add_argument("--max-rows", type=int, default=40)
    sql.add_argument("--raw", action="store_true", help="print rows tab-separated without a header (for scripts)")
    sql.set_defaults(fn=cmd_sql)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except UnreadableInputError as exc:
        print(f"lakelens: error: {exc}", file=sys.stderr)
        code = 2
    except (LookupError, FileNotFoundError, ValueError, ConnectionError) as exc:
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
