"""Behaviour encoder: training time per epoch per 1M sequences, and embed throughput end to end
through Ray Data (read -> validate -> embed on actors -> write -> publish), plus the quality bars.

There is no peer package for this model; the pure-operator throughput (no Ray) is printed beside
the pipeline's so the pipeline's own overhead is visible.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from _common import PeakRSS, machine, stamp

from lakelens.infra.catalog import open_catalog
from lakelens.infra.config import EncoderConfig, LakelensConfig, RayConfig
from lakelens.infra.storage import Lake
from lakelens.infra.model_store import ModelStore
from lakelens.operators.encoder.checkpoint import LoadedEncoder
from lakelens.operators.encoder.embedder import SequenceEmbedder
from lakelens.pipelines.build_sequences import run_build_sequences
from lakelens.pipelines.embed import run_embed
from lakelens.synthetic.truth import measure_encoder_quality
from lakelens.synthetic.generate import generate_world
from lakelens.pipelines.train_encoder import run_train_encoder

START = date(2026, 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=150_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--train-sequences", type=int, default=40_000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--embed-users", type=int, default=600_000,
                        help="users of a second, larger world for the embed throughput (the trained model is copied over)")
    parser.add_argument("--lake", default=None, help="reuse a lake (kept afterwards) instead of a temporary one")
    args = parser.parse_args()
    root = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="lakelens-bench-"))
    lake = Lake(root)
    days = [START + timedelta(days=k) for k in range(args.days)]
    config = LakelensConfig(ray=RayConfig(show_progress=False),
                            encoder=EncoderConfig(max_train_sequences=args.train_sequences, epochs=args.epochs))
    print(f"# embed_throughput | {machine()} | {stamp()}")
    if not lake.list_files("transactions"):
        generate_world(lake, users=args.users, days=args.days, seed=5, start=START)
    for day in days:
        run_build_sequences(lake, day, config)

    with PeakRSS() as rss:
        card = run_train_encoder(lake, days, config)
    history = card["history"]
    per_epoch = [h["seconds"] - (history[i - 1]["seconds"] if i else 0) for i, h in enumerate(history)]
    epoch_s = sorted(per_epoch)[len(per_epoch) // 2]
    n_train = card["data"]["train_sequences"]
    print(f"train: {n_train:,} sequences x {len(history)} epochs on {card['workers']} {card['device']} workers; "
          f"median epoch {epoch_s:.1f}s -> {epoch_s / n_train * 1e6 / 60:.1f} min per epoch per 1M sequences; "
          f"whole job {sum(card['timings_s'].values()):.1f}s of stages {card['timings_s']}; peak_rss={rss.gib:.2f}GiB")

    # throughput on a realistic day size: a bigger world, the same model files copied into its lake
    big = Lake(root / "throughput")
    if not big.list_files("transactions"):
        generate_world(big, users=args.embed_users, days=2, seed=6, start=START)
    run_build_sequences(big, days[1], config)
    model_files = lake.list_files(f"models/{config.encoder.model_name}/{card['version']}")
    for entry in sorted(model_files, key=lambda e: e.path.endswith("model.json")):  # the card last, as a commit
        big.write_bytes(entry.path, lake.read_bytes(entry.path))
    for label in ("cold", "warm"):
        with PeakRSS() as rss:
            began = time.perf_counter()
            manifest = run_embed(big, days[1], config, force=True)
            wall = time.perf_counter() - began
        rows = manifest["outputs"]["sequence_embeddings"]["rows"]
        stage = manifest["timings_s"]["embed"]
        print(f"embed {label}: {rows:,} sequences, wall {wall:.1f}s, embed stage {stage:.1f}s -> "
              f"{rows / stage:,.0f} sequences/s (stage), {rows / wall:,.0f} sequences/s (wall); "
              f"actors={manifest['metrics']['embed']['actors']} peak_rss={rss.gib:.2f}GiB")

    # the operator alone, in this process: the ceiling the pipeline can approach
    con = open_catalog(lake)
    sample = con.execute(f"SELECT * FROM sequences WHERE dt = '{days[-1]}' LIMIT 40000").to_arrow_table()
    model = ModelStore(lake).load(config.encoder.model_name, card["version"], LoadedEncoder)
    embedder = SequenceEmbedder(model, max_len=config.encoder.max_len)
    embedder(sample.slice(0, 512))
    began = time.perf_counter()
    for lo in range(0, sample.num_rows, config.embed.batch_size):
        embedder(sample.slice(lo, config.embed.batch_size))
    seconds = time.perf_counter() - began
    print(f"operator only ({embedder.device}, 1 process): {sample.num_rows / seconds:,.0f} sequences/s")

    for day in days[:-1]:
        run_embed(lake, day, config)
    print("quality:", measure_encoder_quality(lake, card).describe())
    if not args.lake:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
