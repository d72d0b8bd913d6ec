"""Detection quality of behavior-clusters on a synthetic world: hybrid vs embedding-only vs expert-only,
side by side in one run, with wall time and peak memory of each clustering run.

The measure: of the planted fraud that had no label, the share inside flagged clusters, and the
share of flagged-cluster members that are fraud.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from _common import PeakRSS, machine, stamp

from lakelens.infra.config import EncoderConfig, LakelensConfig, RayConfig
from lakelens.infra.storage import Lake
from lakelens.pipelines.behavior_clusters import run_behavior_clusters
from lakelens.pipelines.build_sequences import run_build_sequences
from lakelens.synthetic.generate import generate_world
from lakelens.synthetic.truth import measure_detection
from lakelens.pipelines.train_encoder import run_train_encoder

START = date(2026, 1, 1)
VARIANTS = {"hybrid": {}, "embedding-only": {"expert_weight": 0.0}, "expert-only": {"embedding_weight": 0.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lake", default=None, help="reuse a lake (kept afterwards) instead of a temporary one")
    args = parser.parse_args()
    root = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="lakelens-bench-"))
    lake = Lake(root)
    days = [START + timedelta(days=k) for k in range(args.days)]
    config = LakelensConfig(ray=RayConfig(show_progress=False), encoder=EncoderConfig(epochs=args.epochs))
    print(f"# detection_quality | {machine()} | {stamp()}")
    if not lake.list_files("transactions"):
        generate_world(lake, users=args.users, days=args.days, seed=9, start=START)
    for day in days:
        run_build_sequences(lake, day, config)
    run_train_encoder(lake, days, config)
    results = []
    for name, weights in VARIANTS.items():
        variant = dataclasses.replace(config, clusters=dataclasses.replace(config.clusters, **weights))
        with PeakRSS() as rss:
            began = time.perf_counter()
            manifest = run_behavior_clusters(lake, days[-1], variant, force=True)
            wall = time.perf_counter() - began
        detection = measure_detection(lake, manifest)
        results.append((name, detection, wall, rss.gib, manifest["timings_s"]))
    print(f"{'features':<16}{'caught':>8}{'precision':>11}{'flagged':>9}{'members':>9}{'wall_s':>8}{'peak_GiB':>10}")
    for name, d, wall, gib, _ in results:
        print(f"{name:<16}{d.caught:>8.1%}{d.precision:>11.1%}{d.flagged_clusters:>9}{d.flagged_members:>9}"
              f"{wall:>8.1f}{gib:>10.2f}")
    hybrid = results[0][1].caught * results[0][1].precision
    for name, d, *_ in results[1:]:
        other = d.caught * d.precision
        print(f"hybrid / {name} (caught x precision): {hybrid / other:.2f}" if other else f"{name}: nothing flagged")
    print(f"unlabelled planted fraud: {results[0][1].unlabelled_fraud:,} of {results[0][1].transactions:,} transactions; "
          f"stages (hybrid): {results[0][4]}")
    if not args.lake:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
