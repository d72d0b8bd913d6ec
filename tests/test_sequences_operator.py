"""build_sequences: the events of a user's lookback window, in time order, truncated to the last max_len."""

import math
from datetime import datetime, timedelta, timezone

import pyarrow as pa

from lakelens.operators.sequences import SEQUENCE_SCHEMA, build_sequences

T0 = datetime(2026, 1, 2, 12, tzinfo=timezone.utc)
TS = pa.timestamp("us", tz="UTC")


def _events(rows):
    """rows: (event_id, user_id, seconds relative to T0, type, dwell)"""
    return pa.table({
        "event_id": pa.array([r[0] for r in rows], pa.string()),
        "user_id": pa.array([r[1] for r in rows], pa.string()),
        "ts": pa.array([T0 + timedelta(seconds=r[2]) for r in rows], TS),
        "event_type": pa.array([r[3] for r in rows], pa.string()),
        "dwell_ms": pa.array([r[4] for r in rows], pa.int64()),
    })


def _txns(rows):
    return pa.table({
        "transaction_id": pa.array([r[0] for r in rows], pa.string()),
        "user_id": pa.array([r[1] for r in rows], pa.string()),
        "ts": pa.array([T0 + timedelta(seconds=r[2]) for r in rows], TS),
    })


def test_window_is_inclusive_and_other_users_and_later_events_are_excluded():
    events = _events([
        ("e_old", "u1", -86_400 - 1, "too_old", 1),
        ("e_edge", "u1", -86_400, "edge", 2),
        ("e_mid", "u1", -60, "mid", None),
        ("e_at", "u1", 0, "at_txn", 4),
        ("e_after", "u1", 1, "after", 5),
        ("e_other", "u2", -10, "other_user", 6),
    ])
    out = build_sequences(events, _txns([("t1", "u1", 0)]), lookback_s=86_400, max_len=10, dt="2026-01-02")
    row = out.to_pylist()[0]
    assert row["event_types"] == ["edge", "mid", "at_txn"]
    assert row["event_ids"] == ["e_edge", "e_mid", "e_at"]
    assert row["dwell_ms"] == [2, None, 4]
    assert row["n_events"] == 3 and not row["truncated"] and not row["is_empty"]


def test_out_of_order_input_is_sorted_by_time_and_time_features_are_log_seconds():
    events = _events([("c", "u1", -10, "third", 1), ("a", "u1", -100, "first", 1), ("b", "u1", -40, "second", 1)])
    row = build_sequences(events, _txns([("t", "u1", 0)]), 3600, 10, "d").to_pylist()[0]
    assert row["event_types"] == ["first", "second", "third"]
    assert [round(x, 4) for x in row["log_gap_prev_s"]] == [0.0, round(math.log1p(60), 4), round(math.log1p(30), 4)]
    assert [round(x, 4) for x in row["log_time_to_txn_s"]] == [round(math.log1p(s), 4) for s in (100, 40, 10)]


def test_long_histories_keep_the_most_recent_max_len_events_and_say_so():
    events = _events([(f"e{i:02d}", "u1", -100 + i, f"type{i}", i) for i in range(30)])
    row = build_sequences(events, _txns([("t", "u1", 0)]), 3600, 5, "d").to_pylist()[0]
    assert row["event_ids"] == ["e25", "e26", "e27", "e28", "e29"]
    assert row["n_events"] == 5 and row["n_events_in_window"] == 30 and row["truncated"]


def test_users_without_events_get_an_empty_flagged_sequence():
    events = _events([("e1", "u1", -5, "home", 1)])
    out = build_sequences(events, _txns([("t1", "u1", 0), ("t2", "nobody", 0)]), 3600, 5, "d").to_pylist()
    empty = next(r for r in out if r["transaction_id"] == "t2")
    assert empty["is_empty"] and empty["n_events"] == 0 and empty["event_types"] == []
    none_at_all = build_sequences(_events([]), _txns([("t", "u", 0)]), 3600, 5, "d")
    assert none_at_all.column("is_empty").to_pylist() == [True]


def test_each_transaction_of_a_user_gets_its_own_window_and_ties_break_by_event_id():
    events = _events([("b", "u1", -5, "x", 1), ("a", "u1", -5, "y", 1), ("c", "u1", 50, "z", 1)])
    out = build_sequences(events, _txns([("t1", "u1", 0), ("t2", "u1", 60)]), 3600, 10, "d").to_pylist()
    by_id = {r["transaction_id"]: r for r in out}
    assert by_id["t1"]["event_ids"] == ["a", "b"]
    assert by_id["t2"]["event_ids"] == ["a", "b", "c"]


def test_output_has_the_published_schema_even_when_empty():
    out = build_sequences(_events([]), _txns([]), 3600, 5, "d")
    assert out.schema == SEQUENCE_SCHEMA and out.num_rows == 0
