"""How fast `lakelens generate` writes a world (target: 10M events in <= 2 min on 2 cores)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import PeakRSS, machine, stamp

from lakelens.infra.storage import Lake
from lakelens.synthetic.generate import generate_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--out", default=None, help="lake root (default: a temporary folder, removed after)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lakelens-bench-"))
    print(f"# generate_speed | {machine()} | {stamp()}")
    with PeakRSS() as rss:
        began = time.perf_counter()
        summary = generate_world(Lake(out), users=args.users, days=args.days, seed=1)
        seconds = time.perf_counter() - began
    rows = summary["rows"]
    print(f"users={args.users:,} days={args.days} events={rows['events']:,} transactions={rows['transactions']:,} "
          f"fraud={rows['fraud_transactions']:,}")
    print(f"wall={seconds:.1f}s events/s={rows['events'] / seconds:,.0f} peak_rss={rss.gib:.2f}GiB "
          f"target_10M_events_in_120s={'met' if rows['events'] / seconds >= 10e6 / 120 else 'missed'}")
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
