"""Behaviour sequences: for each transaction, the user's events in a lookback window before it.

Pure functions over Arrow tables; the build-sequences pipeline calls them once per user bucket.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.contracts import TIMESTAMP
from lakelens.operators.timing import TIMING_COLUMNS, session_timing

SEQUENCE_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("user_id", pa.string()),
        ("dt", pa.string()),
        ("txn_ts", TIMESTAMP),
        ("n_events", pa.int32()),  # events kept (<= max_len)
        ("n_events_in_window", pa.int32()),  # events in the lookback window before truncation
        ("truncated", pa.bool_()),
        ("is_empty", pa.bool_()),
        ("event_ids", pa.list_(pa.string())),
        ("event_types", pa.list_(pa.string())),
        ("log_gap_prev_s", pa.list_(pa.float32())),  # log1p(seconds since the previous event in the sequence)
        ("log_time_to_txn_s", pa.list_(pa.float32())),  # log1p(seconds from the event to the transaction)
        ("dwell_ms", pa.list_(pa.int64())),
        # the regularity of the session leading to the transaction (operators/timing.py)
        *[(name, pa.float32()) for name in TIMING_COLUMNS],
    ]
)


def build_sequences(
    events: pa.Table, transactions: pa.Table, lookback_s: float, max_len: int, dt: str
) -> pa.Table:
    """One row per transaction: its user's events with `txn_ts - lookback <= ts <= txn_ts`, last `max_len` kept.

    `events` needs event_id, user_id, ts, event_type, dwell_ms and must hold one row per event_id;
    `transactions` needs transaction_id, user_id, ts.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    n_txn = transactions.num_rows
    if n_txn == 0:
        return SEQUENCE_SCHEMA.empty_table()

    users = pc.unique(pa.concat_arrays([_flat(transactions, "user_id"), _flat(events, "user_id")]))
    ev_user = pc.index_in(_flat(events, "user_id"), value_set=users).to_numpy(zero_copy_only=False).astype(np.int64)
    tx_user = pc.index_in(_flat(transactions, "user_id"), value_set=users).to_numpy(zero_copy_only=False).astype(np.int64)
    ev_ts = _micros(events)
    tx_ts = _micros(transactions)
    lookback_us = int(round(lookback_s * 1e6))

    # time order within each user, event_id breaking ties so the result is deterministic
    order = np.lexsort((_flat(events, "event_id").to_numpy(zero_copy_only=False), ev_ts, ev_user))
    ev_user, ev_ts = ev_user[order], ev_ts[order]

    t0 = min(ev_ts.min() if ev_ts.size else tx_ts.min(), tx_ts.min() - lookback_us)
    span = max(ev_ts.max() if ev_ts.size else 0, tx_ts.max()) - t0 + 1
    if (len(users) + 1) * span >= 2**62:
        raise OverflowError("bucket spans too many users x time; use more buckets")
    ev_key = ev_user * span + (ev_ts - t0)
    hi = np.searchsorted(ev_key, tx_user * span + (tx_ts - t0), side="right")
    lo = np.searchsorted(ev_key, tx_user * span + (tx_ts - lookback_us - t0), side="left")
    in_window = hi - lo
    start = np.maximum(lo, hi - max_len)
    length = hi - start

    offsets = np.zeros(n_txn + 1, dtype=np.int32)
    np.cumsum(length, out=offsets[1:])
    total = int(offsets[-1])
    first_in_seq = np.repeat(offsets[:-1], length)
    idx = np.arange(total) - first_in_seq + np.repeat(start, length)  # positions in sorted events
    take = order[idx]

    gap_prev = np.zeros(total, dtype=np.float64)
    not_first = np.arange(total) != first_in_seq
    gap_prev[not_first] = (ev_ts[idx][not_first] - ev_ts[idx - 1][not_first]) / 1e6
    to_txn = (np.repeat(tx_ts, length) - ev_ts[idx]) / 1e6

    take_arr = pa.array(take, pa.int64())
    log_gap = np.log1p(gap_prev).astype(np.float32)
    dwell = _flat(events, "dwell_ms").take(take_arr)
    dwell_s = np.maximum(pc.fill_null(dwell, 0).to_numpy(zero_copy_only=False).astype(np.float64), 0) / 1000.0
    timing = session_timing(log_gap, np.log1p(dwell_s), dwell.is_null().to_numpy(zero_copy_only=False), offsets)
    list_of = lambda values: pa.ListArray.from_arrays(pa.array(offsets), values)  # noqa: E731
    return pa.table(
        {
            "transaction_id": _flat(transactions, "transaction_id"),
            "user_id": _flat(transactions, "user_id"),
            "dt": pa.array([dt] * n_txn, pa.string()),
            "txn_ts": pa.array(tx_ts, TIMESTAMP),
            "n_events": pa.array(length.astype(np.int32)),
            "n_events_in_window": pa.array(in_window.astype(np.int32)),
            "truncated": pa.array(in_window > max_len),
            "is_empty": pa.array(length == 0),
            "event_ids": list_of(_flat(events, "event_id").take(take_arr)),
            "event_types": list_of(_flat(events, "event_type").take(take_arr)),
            "log_gap_prev_s": list_of(pa.array(log_gap)),
            "log_time_to_txn_s": list_of(pa.array(np.log1p(np.maximum(to_txn, 0)).astype(np.float32))),
            "dwell_ms": list_of(dwell),
            **{name: pa.array(timing[:, i]) for i, name in enumerate(TIMING_COLUMNS)},
        },
        schema=SEQUENCE_SCHEMA,
    )


def _flat(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _micros(table: pa.Table) -> np.ndarray:
    return pc.cast(_flat(table, "ts"), pa.int64()).to_numpy(zero_copy_only=False)
