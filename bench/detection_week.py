"""Daily behaviour-cluster runs over a drifting week, as production runs them: incremental, day after day.

    synthetic week (synthetic/week.py): an app release renames events on day 4, a sale shifts legitimate
    habits on days 6-7, a timing bot copies quick buyers' flow but not their irregularity all week, and a
    new fraud pattern with its own event types and no labels appears on day 6
    encoder trained once on days 1-3; then behavior-clusters --window-days 3 each day from day 3 to day 7,
    the default (incremental) run in one lake and a full re-cluster of the same day in a copy, side by side

Per day: recall of unlabelled fraud in flagged clusters, recall "surfaced" (in flagged or emerging clusters:
what reaches reviewers, since a pattern with no labels can only be shown, not flagged from risk) and
precision of flagged members, overall and per modus operandi (printed recall/surfaced where they differ); whether the new pattern surfaced as a new cluster it dominates; key stability per pattern
(the share of its members that the previous run clustered and that keep the same key); the drift figures;
the clustering run's own time, incremental beside full. Prints a table; `--json` writes every number.

    python bench/detection_week.py [--users 4500] [--seed 17] [--epochs 30] [--json bench/out/week.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, stamp  # noqa: E402

from lakelens.infra.config import ClusterConfig, EncoderConfig, LakelensConfig, RayConfig  # noqa: E402
from lakelens.infra.storage import Lake  # noqa: E402

START = date(2026, 1, 1)
FRAUD_BARS = 0.9


def week_config(epochs: int) -> LakelensConfig:
    return LakelensConfig(ray=RayConfig(show_progress=False), encoder=EncoderConfig(epochs=epochs),
                          clusters=ClusterConfig(window_days=3))


def run_week(root: Path, users: int, seed: int, epochs: int, with_full: bool = True) -> list[dict[str, Any]]:
    """Generate the week, train once, then run every day incrementally (and fully in a copy); one record per day."""
    from lakelens.pipelines.behavior_clusters import run_behavior_clusters
    from lakelens.pipelines.build_sequences import run_build_sequences
    from lakelens.pipelines.train_encoder import run_train_encoder
    from lakelens.synthetic.week import generate_week, measure_week_detection

    config = week_config(epochs)
    lake = Lake(root / "daily")
    if not lake.list_files("transactions"):  # a kept lake is reused: its generation and training are published
        generate_week(lake, users=users, seed=seed, start=START)
    train_days = [START + timedelta(days=k) for k in range(3)]
    for day in train_days:
        run_build_sequences(lake, day, config)
    run_train_encoder(lake, train_days, config)
    full_lake = None
    if with_full:
        shutil.rmtree(root / "full", ignore_errors=True)
        shutil.copytree(lake.root_uri, root / "full")
        full_lake = Lake(root / "full")
    records, previous_keys, fraud_mo = [], None, _fraud_mo(lake)
    for offset in range(2, 7):
        day = START + timedelta(days=offset)
        began = time.perf_counter()
        daily = run_behavior_clusters(lake, day, config)
        record: dict[str, Any] = {"day": offset + 1, "date": day.isoformat(), "wall_s": round(time.perf_counter() - began, 1),
                                  "mode": daily["metrics"]["mode"]["mode"], "cluster_s": _cluster_seconds(daily),
                                  "assignment": daily["metrics"].get("assignment", {}),
                                  "drift": daily["metrics"].get("drift", {}),
                                  "detection": measure_week_detection(lake, daily)}
        keys = _member_keys(lake, daily)
        record["key_stability"] = _key_stability(previous_keys, keys, fraud_mo)
        previous_keys = keys
        if full_lake is not None:
            full = run_behavior_clusters(full_lake, day, config, full=True)
            record["full"] = {"cluster_s": _cluster_seconds(full), "detection": measure_week_detection(full_lake, full),
                              "flagged_agreement": _flagged_agreement(lake, daily, full_lake, full)}
        records.append(record)
        print(_line(record), flush=True)
    return records


def _cluster_seconds(manifest: dict[str, Any]) -> float:
    return round(sum(manifest["timings_s"].values()), 2)


def _member_keys(lake: Lake, manifest: dict[str, Any]) -> dict[str, str | None]:
    import pyarrow as pa

    parts = [lake.read_table(f["path"], columns=["transaction_id", "cluster_key"])
             for f in manifest["outputs"]["txn_clusters"]["files"]]
    table = pa.concat_tables(parts)
    return dict(zip(table.column("transaction_id").to_pylist(), table.column("cluster_key").to_pylist()))


def _fraud_mo(lake: Lake) -> dict[str, str]:
    """transaction_id -> modus operandi of every planted fraud transaction (from truth/)."""
    con = lake.duckdb_connect()
    rows = con.execute(f"SELECT transaction_id, mo FROM read_parquet('{lake.uri('truth', 'transactions')}/**/*.parquet',"
                       " union_by_name = true) WHERE is_fraud").fetchall()
    return dict(rows)


def _key_stability(before: dict | None, now: dict, fraud_mo: dict[str, str]) -> dict[str, float | None]:
    """Per fraud pattern: of its members that both runs clustered, the share that kept yesterday's key."""
    if before is None:
        return {}
    shared: dict[str, list[bool]] = {}
    for transaction_id, mo in fraud_mo.items():
        if before.get(transaction_id) and now.get(transaction_id):
            shared.setdefault(mo, []).append(before[transaction_id] == now[transaction_id])
    return {mo: sum(kept) / len(kept) for mo, kept in sorted(shared.items())}


def _flagged_agreement(lake_a: Lake, run_a: dict, lake_b: Lake, run_b: dict) -> float:
    """Jaccard of the transactions inside flagged clusters of the two runs."""
    def flagged(lake: Lake, manifest: dict) -> set[str]:
        con = lake.duckdb_connect()
        members = "[" + ", ".join(f"'{lake.uri(f['path'])}'" for f in manifest["outputs"]["txn_clusters"]["files"]) + "]"
        clusters = "[" + ", ".join(f"'{lake.uri(f['path'])}'" for f in manifest["outputs"]["clusters"]["files"]) + "]"
        return {r[0] for r in con.execute(f"""SELECT x.transaction_id FROM read_parquet({members}) x
                 JOIN read_parquet({clusters}) c USING (cluster_key) WHERE c.flagged""").fetchall()}

    a, b = flagged(lake_a, run_a), flagged(lake_b, run_b)
    return len(a & b) / len(a | b) if a | b else 1.0


def _line(r: dict[str, Any]) -> str:
    o = r["detection"]["overall"]
    mos = ", ".join(f"{mo} {m['recall']:.2f}" + (f"/{m['surfaced_recall']:.2f}" if m["surfaced_recall"] != m["recall"] else "")
                    for mo, m in sorted(r["detection"]["per_mo"].items()) if m["recall"] is not None and m["unlabelled_fraud"])
    new = r["detection"]["new_pattern"]
    new_text = (f"new pattern {new['dominant_share']:.0%} in {new['dominant_cluster']} (purity "
                f"{new['dominant_purity']:.0%}, {new['dominant_lineage_status']})" if new["dominant_cluster"]
                else f"new pattern: {new['transactions']} transactions, none clustered" if new["transactions"]
                else "no new pattern")
    full = r.get("full", {})
    full_text = (f"; full: recall {full['detection']['overall']['recall']:.3f} precision "
                 f"{full['detection']['overall']['precision']:.3f}, {full['cluster_s']} s, flagged agreement "
                 f"{full['flagged_agreement']:.2f}" if full else "")
    drift = r["drift"]
    return (f"day {r['day']} {r['mode']:<11} recall {o['recall']:.3f} (surfaced {o['surfaced_recall']:.3f}) "
            f"precision {o['precision']:.3f} [{mos}]; "
            f"{new_text}; stability {({k: round(v, 2) for k, v in r['key_stability'].items() if v is not None})}; "
            f"drift oov {drift.get('oov_share', 0):.3f} shift {drift.get('embedding_shift') or 0:.2f} refused "
            f"{drift.get('refused_share') or 0:.2f} retrain {drift.get('retrain_recommended')}; "
            f"cluster {r['cluster_s']} s{full_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4500)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--no-full", action="store_true", help="skip the full re-cluster beside each daily run")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--keep", help="build the lakes in this folder and keep them (default: a temporary one); "
                        "a folder kept earlier is reused: its generated week and trained encoder stay")
    args = parser.parse_args()
    print(f"detection_week: {stamp()} on {machine()}; users {args.users}, seed {args.seed}, epochs {args.epochs}")
    if args.keep:
        records = run_week(Path(args.keep), args.users, args.seed, args.epochs, with_full=not args.no_full)
    else:
        with tempfile.TemporaryDirectory(prefix="lakelens-week-") as folder:
            records = run_week(Path(folder), args.users, args.seed, args.epochs, with_full=not args.no_full)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=1, default=str))


if __name__ == "__main__":
    main()
