"""`lakelens run build-sequences`: each transaction of a day with its user's recent click-stream.

    transactions(dt=D) --validate--> dedupe by transaction_id --+
                                                                 +--> shuffle by user --> sequences --> publish
    events(dt=D-1..D+1) --validate--> keep users & time window --+
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.config import LakelensConfig, SequenceConfig
from lakelens.infra.contracts import EVENTS, SOURCE_FILE, SOURCE_ROW, TIMESTAMP, TRANSACTIONS, split_duplicates
from lakelens.infra.lake_io import collect_table, quarantine_duplicates, read_validated, stable_bucket
from lakelens.infra.errors import InputError
from lakelens.infra.jobs import Job, run_job
from lakelens.infra.runs import Run, describe_inputs
from lakelens.infra.storage import Lake
from lakelens.operators.sequences import SEQUENCE_SCHEMA, build_sequences

JOB = "build-sequences"
KIND_TRANSACTION, KIND_EVENT = 0, 1

# One schema for both sides of the shuffle, so a bucket sees its users' transactions and events together.
SHUFFLE_SCHEMA = pa.schema(
    [
        ("kind", pa.int8()),
        ("row_id", pa.string()),
        ("user_id", pa.string()),
        ("ts", TIMESTAMP),
        ("event_type", pa.string()),
        ("dwell_ms", pa.int64()),
        (SOURCE_FILE, pa.string()),
        (SOURCE_ROW, pa.int64()),
        ("_bucket", pa.int32()),
    ]
)


def plan_build_sequences(lake: Lake, day: date, config: LakelensConfig) -> Job:
    """The day's build-sequences run, declared: its transactions, the event days it reads, its params."""
    cfg = config.sequences
    lookback_days = math.ceil(cfg.lookback_hours / 24)
    event_days = [day + timedelta(days=k) for k in range(-lookback_days, cfg.late_arrival_days + 1)]
    inputs = describe_inputs(lake, "transactions", [f"transactions/dt={day}"])
    if not inputs:
        raise InputError(f"no transactions for {day} under {lake.uri('transactions', f'dt={day}')}")
    inputs += describe_inputs(lake, "events", [f"events/dt={d}" for d in event_days])
    params = {"date": day.isoformat(), "lookback_hours": cfg.lookback_hours, "max_len": cfg.max_len,
              "late_arrival_days": cfg.late_arrival_days, "event_partitions": [d.isoformat() for d in event_days]}
    return Job(JOB, f"dt={day}", params, inputs, compute=lambda run: _compute(run, day, cfg),
               outputs={"sequences": SEQUENCE_SCHEMA.append(pa.field("run_id", pa.string()))},
               describe=lambda m: f"{m['metrics']['sequences']['empty']:,} empty, "
                                  f"{m['metrics']['sequences']['truncated']:,} truncated")


def run_build_sequences(lake: Lake, day: date, config: LakelensConfig, force: bool = False) -> dict[str, Any]:
    """Build and publish the day's sequences; returns the published manifest (an existing one if unchanged)."""
    return run_job(lake, plan_build_sequences(lake, day, config), config, force)


def _compute(run: Run, day: date, cfg: SequenceConfig) -> None:
    import ray

    inputs = run.inputs
    event_rows = sum(i.rows for i in inputs if i.table == "events")
    num_buckets = cfg.num_buckets or max(2 * int(ray.cluster_resources().get("CPU", 2)), math.ceil(event_rows / 2e6))

    with run.stage("transactions"):
        txn_files = [i for i in inputs if i.table == "transactions"]
        txns = read_validated(run, TRANSACTIONS, txn_files, columns=["transaction_id", "user_id", "ts"])
        txns = quarantine_duplicates(txns, run, TRANSACTIONS, num_buckets).materialize()
        keys = collect_table(txns.select_columns(["user_id", "ts"]),
                             pa.schema([("user_id", pa.string()), ("ts", TIMESTAMP)]))
        n_txn = keys.num_rows
        users = pc.unique(keys.column("user_id").combine_chunks())
        ts_min, ts_max = pc.min_max(keys.column("ts")).values()

    with run.stage("sequences"):
        lookback_us = int(cfg.lookback_hours * 3600 * 1e6)
        window = (_micros(ts_min.as_py()) - lookback_us, _micros(ts_max.as_py()) + 1) if n_txn else (0, 0)
        event_files = [i for i in inputs if i.table == "events"]
        events = read_validated(
            run, EVENTS, event_files, columns=["event_id", "user_id", "ts", "event_type", "dwell_ms"],
            keep_users=ray.put(users), ts_range_us=window,
        )
        shuffled = txns.map_batches(_as_shuffle_rows, fn_kwargs={"kind": KIND_TRANSACTION, "buckets": num_buckets},
                                    batch_format="pyarrow").union(
            events.map_batches(_as_shuffle_rows, fn_kwargs={"kind": KIND_EVENT, "buckets": num_buckets},
                               batch_format="pyarrow"))
        sequences = shuffled.groupby("_bucket", num_partitions=num_buckets).map_groups(
            _bucket_sequences, batch_format="pyarrow",
            fn_kwargs={"run": run, "lookback_s": cfg.lookback_hours * 3600, "max_len": cfg.max_len, "dt": str(day)},
        )
        sequences.write_parquet(run.lake.path(run.table_dir("sequences")), filesystem=run.lake.fs)
    run.metrics["sequences"] = _summarise(run)


def _as_shuffle_rows(batch: pa.Table, kind: int, buckets: int) -> pa.Table:
    n = batch.num_rows
    is_event = kind == KIND_EVENT
    return pa.table(
        {
            "kind": pa.array(np.full(n, kind, np.int8)),
            "row_id": batch.column("event_id" if is_event else "transaction_id"),
            "user_id": batch.column("user_id"),
            "ts": batch.column("ts"),
            "event_type": batch.column("event_type") if is_event else pa.nulls(n, pa.string()),
            "dwell_ms": batch.column("dwell_ms") if is_event else pa.nulls(n, pa.int64()),
            SOURCE_FILE: batch.column(SOURCE_FILE),
            SOURCE_ROW: batch.column(SOURCE_ROW),
            "_bucket": pa.array(stable_bucket(batch.column("user_id"), buckets)),
        },
        schema=SHUFFLE_SCHEMA,
    )


def _bucket_sequences(group: pa.Table, run: Run, lookback_s: float, max_len: int, dt: str) -> pa.Table:
    is_event = pc.equal(group.column("kind"), KIND_EVENT)
    names = group.column_names
    events = group.filter(is_event).rename_columns(["event_id" if c == "row_id" else c for c in names])
    txns = group.filter(pc.invert(is_event)).rename_columns(["transaction_id" if c == "row_id" else c for c in names])
    # a repeated event_id is the same event delivered twice: keep one, count the rest
    events, repeats = split_duplicates(events, "event_id")
    bucket = int(group.column("_bucket")[0].as_py())
    run.write_task_metrics("events", f"bucket-{bucket:05d}", {"duplicates_collapsed": repeats.num_rows,
                                                             "rows_in_windows": events.num_rows})
    sequences = build_sequences(events, txns, lookback_s=lookback_s, max_len=max_len, dt=dt)
    return sequences.append_column("run_id", pa.array([run.run_id] * sequences.num_rows, pa.string()))


def _summarise(run: Run) -> dict[str, int]:
    totals = {"sequences": 0, "empty": 0, "truncated": 0, "events": 0}
    for entry in run.lake.list_files(run.table_dir("sequences"), suffix=".parquet"):
        t = run.lake.read_table(entry.path, columns=["is_empty", "truncated", "n_events"])
        totals["sequences"] += t.num_rows
        totals["empty"] += int(pc.sum(t.column("is_empty")).as_py() or 0)
        totals["truncated"] += int(pc.sum(t.column("truncated")).as_py() or 0)
        totals["events"] += int(pc.sum(t.column("n_events")).as_py() or 0)
    return totals


def _micros(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return int(value.timestamp() * 1_000_000)
    return int(pa.scalar(value, TIMESTAMP).cast(pa.int64()).as_py())
