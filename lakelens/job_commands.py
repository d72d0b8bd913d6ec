"""The registry of jobs the CLI runs: one `lakelens run <job>` subcommand each, with only its own flags.

A job command declares its flags (each with help), how they map onto config keys, an example, and
how to call the pipeline. `lakelens run <job> --help` is generated from this declaration.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable

from lakelens.infra.config import LakelensConfig
from lakelens.infra.errors import InputError
from lakelens.infra.storage import Lake


@dataclass(frozen=True)
class JobCommand:
    name: str
    summary: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Lake, LakelensConfig, argparse.Namespace], dict[str, Any]]  # the manifest (train-encoder: the card)
    overrides: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}  # flag -> dotted config key


JOB_COMMANDS: dict[str, JobCommand] = {}


def register(command: JobCommand) -> JobCommand:
    JOB_COMMANDS[command.name] = command
    return command


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def parse_days(text: str) -> list[date]:
    """`D1,D2,...` or an inclusive range `D1..D2`."""
    if ".." in text:
        first, last = (parse_day(part) for part in text.split("..", 1))
        if last < first:
            raise argparse.ArgumentTypeError(f"range {text} ends before it starts")
        return [date.fromordinal(d) for d in range(first.toordinal(), last.toordinal() + 1)]
    days = [parse_day(part.strip()) for part in text.split(",") if part.strip()]
    if not days:
        raise argparse.ArgumentTypeError("give at least one day")
    return days


def read_vocabulary(path: str | None) -> list[str] | None:
    """One concept label per line of a file (# starts a comment line)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    except OSError as exc:
        raise InputError(f"--vocabulary {path}: {exc.strerror}") from exc


def _date_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--date", type=parse_day, required=True, metavar="YYYY-MM-DD", help=what)


# -- the jobs ------------------------------------------------------------------------------------------

def _build_sequences_args(p: argparse.ArgumentParser) -> None:
    _date_flag(p, "the transaction day to build sequences for")
    p.add_argument("--lookback-hours", type=float, help="events this many hours before a transaction (sequences.lookback_hours)")
    p.add_argument("--max-len", type=int, help="keep the last this many events per sequence (sequences.max_len)")


def _run_build_sequences(lake: Lake, config: LakelensConfig, args: argparse.Namespace) -> dict[str, Any]:
    from lakelens.pipelines.build_sequences import run_build_sequences

    return run_build_sequences(lake, args.date, config, force=args.force)


register(JobCommand(
    "build-sequences", "each transaction of a day with its user's recent click-stream",
    "lakelens run build-sequences --lake s3://lake/prod --date 2026-01-02",
    _build_sequences_args, _run_build_sequences,
    lambda a: {"sequences.lookback_hours": a.lookback_hours, "sequences.max_len": a.max_len}))


def _train_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dates", type=parse_days, required=True, metavar="D1..D2",
                   help="days whose published sequences to train on: D1,D2,... or an inclusive range D1..D2")
    p.add_argument("--epochs", type=int, help="at most this many epochs (encoder.epochs)")
    p.add_argument("--workers", type=int, help="Ray Train data-parallel workers (encoder.num_workers)")


def _run_train_encoder(lake: Lake, config: LakelensConfig, args: argparse.Namespace) -> dict[str, Any]:
    from lakelens.pipelines.train_encoder import run_train_encoder

    return run_train_encoder(lake, args.dates, config, force=args.force)


register(JobCommand(
    "train-encoder", "train the behaviour encoder on published sequences, without labels (Ray Train)",
    "lakelens run train-encoder --lake LAKE --dates 2026-01-01..2026-01-03 --epochs 40",
    _train_encoder_args, _run_train_encoder,
    lambda a: {"encoder.epochs": a.epochs, "encoder.num_workers": a.workers}))


def _embed_args(p: argparse.ArgumentParser) -> None:
    _date_flag(p, "the day whose sequences to embed")
    p.add_argument("--model", default="latest", help="encoder version under models/<encoder.model_name>/ (default: latest)")


def _run_embed(lake: Lake, config: LakelensConfig, args: argparse.Namespace) -> dict[str, Any]:
    from lakelens.pipelines.embed import run_embed

    return run_embed(lake, args.date, config, model_version=args.model, force=args.force)


register(JobCommand(
    "embed", "embed a day's sequences with the trained encoder (Ray Data actors, GPU when present)",
    "lakelens run embed --lake LAKE --date 2026-01-02 --model latest",
    _embed_args, _run_embed))


def _behavior_clusters_args(p: argparse.ArgumentParser) -> None:
    _date_flag(p, "the last day of the window (a daily run clusters up to and including it)")
    p.add_argument("--window-days", type=int, help="days of transactions clustered together (clusters.window_days)")
    p.add_argument("--full", action="store_true",
                   help="re-cluster the whole window instead of continuing the previous run")


def _run_behavior_clusters(lake: Lake, config: LakelensConfig, args: argparse.Namespace) -> dict[str, Any]:
    from lakelens.pipelines.behavior_clusters import run_behavior_clusters

    return run_behavior_clusters(lake, args.date, config, force=args.force, full=args.full)


register(JobCommand(
    "behavior-clusters", "the main job: behaviour clusters of a window, risk flags, SQL rules and narratives",
    "lakelens run behavior-clusters --lake LAKE --date 2026-01-03 --window-days 3",
    _behavior_clusters_args, _run_behavior_clusters,
    lambda a: {"clusters.window_days": a.window_days}))


def _semantic_lens_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="images", help="folder of image Parquet in the lake (default: images)")
    p.add_argument("--model-id", help="the model's name in the result tables (lens.model_id)")
    p.add_argument("--layers", help="layers to analyse, comma-separated (lens.layers)")
    p.add_argument("--vocabulary", help="a file with one concept label per line (lens.vocabulary)")


def _run_semantic_lens(lake: Lake, config: LakelensConfig, args: argparse.Namespace) -> dict[str, Any]:
    from lakelens.pipelines.semantic_lens import run_semantic_lens

    return run_semantic_lens(lake, args.dataset, config, force=args.force)


register(JobCommand(
    "semantic-lens", "what each component of a vision model encodes (LRP/CRP relevances, CLIP projections)",
    "lakelens run semantic-lens --lake LAKE --dataset images --config LAKE/lens-world.toml",
    _semantic_lens_args, _run_semantic_lens,
    lambda a: {"lens.model_id": a.model_id,
               "lens.layers": [x.strip() for x in a.layers.split(",") if x.strip()] if a.layers else None,
               "lens.vocabulary": read_vocabulary(a.vocabulary)}))
