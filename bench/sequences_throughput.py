"""build-sequences throughput through Ray Data (read -> validate -> shuffle -> build -> write), cold and warm.

Cold includes Ray start-up, as a scheduled run pays it; warm re-runs the same day (forced) in the same process.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from _common import PeakRSS, machine, stamp

from lakelens.infra.config import LakelensConfig, RayConfig
from lakelens.infra.storage import Lake
from lakelens.pipelines.build_sequences import run_build_sequences
from lakelens.synthetic.generate import generate_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--lake", default=None, help="reuse a generated lake instead of a temporary one")
    args = parser.parse_args()
    root = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="lakelens-bench-"))
    lake = Lake(root)
    if not lake.list_files("transactions"):
        generate_world(lake, users=args.users, days=args.days, seed=1)
    day = date(2026, 1, 2)
    config = LakelensConfig(ray=RayConfig(show_progress=False))
    print(f"# sequences_throughput | {machine()} | {stamp()}")
    for label, force in (("cold", True), ("warm", True)):
        with PeakRSS() as rss:
            began = time.perf_counter()
            manifest = run_build_sequences(lake, day, config, force=force)
            seconds = time.perf_counter() - began
        events_read = manifest["input_rows"]["events"]
        in_windows = manifest["metrics"]["events"]["rows_in_windows"]
        sequences = manifest["outputs"]["sequences"]["rows"]
        print(f"{label}: wall={seconds:.1f}s input_events={events_read:,} events_in_windows={in_windows:,} "
              f"sequences={sequences:,} events/s={events_read / seconds:,.0f} sequences/s={sequences / seconds:,.0f} "
              f"peak_rss={rss.gib:.2f}GiB stages={manifest['timings_s']}")
    if not args.lake:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
