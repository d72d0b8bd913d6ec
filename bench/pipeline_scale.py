"""behavior-clusters end to end at scale: about 1M transactions in the window, tens of millions of events.

Setup, not timed as the job: generate the world, build day 1's sequences and train a small
encoder on them (the daily job uses an encoder trained earlier). Timed: one scheduled run as a
user starts it, a fresh `lakelens run behavior-clusters` process with a cold local Ray, which
builds sequences and embeddings for every day of the window, clusters, scores risk, induces rules
and publishes. Then the next day's incremental run, then a forced full re-cluster of that same day
(its sequences and embeddings already published), so both clustering paths compare side by side. Each run's stage timings come from the
manifests; peak memory covers the driver and all Ray processes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from _common import PeakRSS, machine, stamp

from lakelens.infra.runs import visible_run
from lakelens.infra.storage import Lake
from lakelens.synthetic.truth import measure_detection

START = date(2026, 1, 1)
LAKELENS = [str(Path(sys.executable).parent / "lakelens")]


def lakelens(*args: str) -> float:
    began = time.perf_counter()
    subprocess.run(LAKELENS + list(args), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def visible(lake: Lake, job: str, day: date) -> dict:
    return visible_run(lake, job, f"dt={day}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=850_000, help="about 1M transactions over a 3-day window")
    parser.add_argument("--train-sequences", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lake", default=None, help="reuse a lake (kept afterwards) instead of a temporary one")
    args = parser.parse_args()
    root = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="lakelens-scale-"))
    lake = Lake(root)
    config = root.parent / f"{root.name}.toml"
    config.write_text(f"[ray]\nshow_progress = false\n[encoder]\nmax_train_sequences = {args.train_sequences}\n"
                      f"epochs = {args.epochs}\n")
    train_day, window, next_day = START, [START + timedelta(days=k) for k in (1, 2, 3)], START + timedelta(days=4)
    print(f"# pipeline_scale | {machine()} | {stamp()}")
    setup = {}
    if not lake.list_files("transactions"):
        setup["generate"] = lakelens("generate", "--out", str(root), "--users", str(args.users), "--days", "5",
                                     "--seed", "11", "--start", str(START))
    setup["build-sequences (training day)"] = lakelens("run", "build-sequences", "--lake", str(root), "--date",
                                                       str(train_day), "--config", str(config))
    setup["train-encoder"] = lakelens("run", "train-encoder", "--lake", str(root), "--dates", str(train_day),
                                      "--config", str(config))
    for name, seconds in setup.items():
        print(f"setup {name}: {seconds:.1f} s")

    runs = (("full (cold, window of 3 new days)", window[-1], []), ("incremental (next day)", next_day, []),
            ("full re-cluster of the next day (warm: its sequences and embeddings exist)", next_day, ["--full"]))
    walls: dict[str, float] = {}
    for label, day, flags in runs:
        with PeakRSS() as rss:
            wall = lakelens("run", "behavior-clusters", "--lake", str(root), "--date", str(day), "--config", str(config),
                            *flags)
        walls[label] = wall
        manifest = visible(lake, "behavior-clusters", day)
        days = manifest["params"]["window"]
        print(f"\n## behavior-clusters {day}: {label}")
        print(f"wall {wall:.1f} s ({wall / 60:.1f} min), peak RSS {rss.gib:.2f} GiB, mode {manifest['params']['mode']}")
        con = lake.duckdb_connect()
        events = sum(con.execute(f"SELECT count(*) FROM read_parquet('{lake.uri('events', f'dt={d}')}/*.parquet')")
                     .fetchone()[0] for d in days)
        print(f"  window {days[0]}..{days[-1]}: {events:,} events")
        for d in days:
            seq = visible(lake, "build-sequences", date.fromisoformat(d))
            emb = visible(lake, "embed", date.fromisoformat(d))
            print(f"  {d}: build-sequences {sum(seq['timings_s'].values()):.1f} s "
                  f"({seq['input_rows'].get('events', 0):,} events read, {seq['outputs']['sequences']['rows']:,} sequences), "
                  f"embed {sum(emb['timings_s'].values()):.1f} s")
        print(f"  clustering stages: {manifest['timings_s']}")
        print(f"  transactions {manifest['metrics']['load']['transactions']:,}; assignment {manifest['metrics']['assignment']}; "
              f"clusters {manifest['metrics']['clusters']}")
        print(f"  detection: {measure_detection(lake, manifest).describe()}")
    cold, incremental, warm_full = walls.values()
    print(f"\nincremental / cold full: {incremental / cold:.2f}; incremental / warm full of the same day: "
          f"{incremental / warm_full:.2f}")


if __name__ == "__main__":
    main()
