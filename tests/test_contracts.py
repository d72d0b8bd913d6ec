"""Rows that break the input contracts are quarantined with an exact reason; valid rows are cast."""

import json
from datetime import datetime, timezone

import pyarrow as pa

from lakelens.infra.contracts import EVENTS, SOURCE_FILE, SOURCE_ROW, TRANSACTIONS, split_duplicates

TS = datetime(2026, 1, 2, 12, tzinfo=timezone.utc)


def _txns(**overrides):
    base = {
        "transaction_id": ["t1", "t2", "t3", "t4"],
        "user_id": ["u1", "u2", "u3", "u4"],
        "ts": pa.array([TS] * 4, pa.timestamp("us", tz="UTC")),
        "amount": [10.0, 20.0, 30.0, 40.0],
        "currency": ["EUR"] * 4,
        "status": ["approved", "declined", "approved", "approved"],
        "label": pa.array([None, 1, 0, None], pa.int8()),
    }
    base.update(overrides)
    return pa.table(base)


def _reasons(result):
    return result.quarantined.column("reason").to_pylist()


def test_valid_rows_pass_unchanged():
    result = TRANSACTIONS.validate(_txns(), "f.parquet")
    assert result.valid.num_rows == 4 and result.quarantined.num_rows == 0
    assert result.valid.schema.field("ts").type == pa.timestamp("us", tz="UTC")


def test_null_ids_and_negative_amounts_are_quarantined_with_reason():
    table = _txns(transaction_id=["t1", None, "t3", "t4"], amount=[10.0, 20.0, -5.0, float("nan")])
    result = TRANSACTIONS.validate(table, "s3://lake/transactions/f.parquet", first_row=100)
    assert _reasons(result) == ["null:transaction_id", "negative:amount", "not_finite:amount"]
    assert result.quarantined.column("source_row").to_pylist() == [101, 102, 103]
    assert set(result.quarantined.column("source_file").to_pylist()) == {"s3://lake/transactions/f.parquet"}
    assert result.valid.column("transaction_id").to_pylist() == ["t1"]
    assert result.valid_positions.tolist() == [0]


def test_unparseable_and_null_timestamps_are_quarantined_and_strings_are_parsed():
    table = _txns(ts=["2026-01-02T10:00:00Z", "not a time", None, "2026-01-02 11:30:00"])
    result = TRANSACTIONS.validate(table, "f")
    assert _reasons(result) == ["wrong_type:ts", "null:ts"]
    assert [t.hour for t in result.valid.column("ts").to_pylist()] == [10, 11]


def test_wrong_types_are_quarantined_per_value_and_raw_record_is_kept():
    table = _txns(amount=["12.5", "twelve", "7", None])
    result = TRANSACTIONS.validate(table, "f")
    assert _reasons(result) == ["wrong_type:amount", "null:amount"]
    assert json.loads(result.quarantined.column("record")[0].as_py())["amount"] == "twelve"
    assert result.valid.column("amount").to_pylist() == [12.5, 7.0]


def test_values_outside_the_allowed_set_are_quarantined_but_null_labels_are_fine():
    table = _txns(status=["approved", "pending", "declined", "approved"], label=pa.array([None, 0, 2, 1], pa.int8()))
    result = TRANSACTIONS.validate(table, "f")
    assert _reasons(result) == ["bad_value:status", "bad_value:label"]
    assert result.valid.column("label").to_pylist() == [None, 1]


def test_a_missing_required_column_quarantines_every_row_and_optional_ones_become_null():
    events = pa.table({"event_id": ["e1", "e2"], "user_id": ["u1", "u1"], "event_type": ["home", "search"]})
    result = EVENTS.validate(events, "f")
    assert _reasons(result) == ["missing_column:ts", "missing_column:ts"]
    with_ts = events.append_column("ts", pa.array([TS, TS], pa.timestamp("us", tz="UTC")))
    ok = EVENTS.validate(with_ts, "f")
    assert ok.valid.num_rows == 2 and ok.valid.column("dwell_ms").null_count == 2


def test_extra_columns_are_allowed_and_naive_timestamps_are_taken_as_utc():
    table = _txns(ts=pa.array([datetime(2026, 1, 2, 9)] * 4, pa.timestamp("ms")))
    table = table.append_column("device_score", pa.array([0.1, 0.2, 0.3, 0.4]))
    result = TRANSACTIONS.validate(table, "f")
    assert "device_score" in result.valid.column_names
    assert result.valid.column("ts")[0].as_py() == datetime(2026, 1, 2, 9, tzinfo=timezone.utc)


def test_negative_dwell_and_fractional_integers_are_rejected():
    events = pa.table({
        "event_id": ["e1", "e2", "e3"], "user_id": ["u"] * 3, "session_id": [None] * 3,
        "ts": pa.array([TS] * 3, pa.timestamp("us", tz="UTC")), "event_type": ["a", "b", "c"],
        "dwell_ms": [-1.0, 2.5, 300.0],
    })
    assert _reasons(EVENTS.validate(events, "f")) == ["negative:dwell_ms", "wrong_type:dwell_ms"]


def test_duplicates_keep_the_first_occurrence_by_source_file_then_row():
    table = pa.table({
        "transaction_id": ["t1", "t1", "t2", "t1"],
        SOURCE_FILE: ["b.parquet", "a.parquet", "a.parquet", "a.parquet"],
        SOURCE_ROW: [0, 5, 1, 2],
    })
    firsts, repeats = split_duplicates(table, "transaction_id")
    assert firsts.to_pylist() == [
        {"transaction_id": "t1", SOURCE_FILE: "a.parquet", SOURCE_ROW: 2},
        {"transaction_id": "t2", SOURCE_FILE: "a.parquet", SOURCE_ROW: 1},
    ]
    assert repeats.num_rows == 2
