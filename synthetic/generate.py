"""`lakelens generate`: write a synthetic world into a lake, one chunk of users at a time.

Events are partitioned by the day they *arrive*, so late events land in the next day's
partition; rows inside a file are shuffled, so arrival order is not time order.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.storage import Lake
from lakelens.synthetic.clickstream import DAY_US, WorldParams, generate_chunk

EPOCH = date(1970, 1, 1)


def generate_world(
    lake: Lake, users: int, days: int, seed: int, start: date = date(2026, 1, 1), workers: int | None = None,
    chunk_users: int = 20_000,
) -> dict:
    """Generate the world; returns a summary with row counts and timing."""
    lake.ensure_root()
    params = WorldParams(seed=seed, start_day_us=(start - EPOCH).days * DAY_US, days=days, chunk_users=chunk_users)
    chunks = [(c, min(chunk_users, users - c * chunk_users)) for c in range(math.ceil(users / chunk_users))]
    began = time.perf_counter()
    totals = {"events": 0, "transactions": 0, "fraud_transactions": 0}
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    jobs = [(lake, params, c, n) for c, n in chunks]
    if workers == 1:
        results = map(_write_chunk, jobs)
    else:
        # spawn, not fork: the caller may already run threads (Ray, BLAS) that fork would copy mid-flight
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_write_chunk, jobs)
    for done, counts in enumerate(results, start=1):
        for key, value in counts.items():
            totals[key] += value
        print(f"  generate: chunk {done}/{len(chunks)}: {totals['events']:,} events, "
              f"{totals['transactions']:,} transactions so far", flush=True)
    if workers > 1:
        pool.shutdown()
    summary = {
        "params": {**asdict(params), "users": users, "start": start.isoformat()},
        "rows": totals,
        "seconds": round(time.perf_counter() - began, 2),
        "generated_at": datetime.now(timezone.utc).isoformat(),
    }
    lake.write_json("truth/_world.json", summary)
    return summary


def _write_chunk(job: tuple[Lake, WorldParams, int, int]) -> dict[str, int]:
    lake, params, chunk, n_users = job
    world = generate_chunk(params, chunk, n_users)
    part = f"part-{chunk:05d}.parquet"
    rng = np.random.default_rng([params.seed, chunk, 1])

    events = world["events"]
    arrival_day = pc.divide(world["events_arrival_us"], DAY_US).to_numpy()
    _write_by_day(lake, "events", events, arrival_day, part, rng)
    txns = world["transactions"]
    txn_day = pc.divide(pc.cast(txns.column("ts"), pa.int64()), DAY_US).to_numpy()
    _write_by_day(lake, "transactions", txns, txn_day, part, rng)
    _write_by_day(lake, "truth/transactions", world["truth_transactions"], txn_day, part, rng=None)
    lake.write_table(f"truth/users/{part}", world["truth_users"])
    return {
        "events": events.num_rows,
        "transactions": txns.num_rows,
        "fraud_transactions": int(pc.sum(world["truth_transactions"].column("is_fraud")).as_py() or 0),
    }


def _write_by_day(lake: Lake, table: str, rows: pa.Table, day_number: np.ndarray, part: str, rng) -> None:
    for day in np.unique(day_number):
        chosen = np.flatnonzero(day_number == day)
        if rng is not None:
            chosen = rng.permutation(chosen)  # arrival order is not time order
        dt = (EPOCH + timedelta(days=int(day))).isoformat()
        lake.write_table(f"{table}/dt={dt}/{part}", rows.take(pa.array(chosen)), row_group_size=256_000)
