"""Input table contracts and row-level validation.

A contract says which columns a table must have, their types, and which values are allowed.
Validation splits a batch into rows cast to the contract's types and rows that break it;
the latter carry the reason, the source file and the raw record so nothing is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TIMESTAMP = pa.timestamp("us", tz="UTC")

# Provenance columns the reader adds so that "first occurrence" is deterministic across files.
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"

QUARANTINE_SCHEMA = pa.schema(
    [
        ("table", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("reason", pa.string()),
        ("record", pa.string()),  # the raw row as JSON: types may be exactly what was wrong
    ]
)


class UnreadableInputError(RuntimeError):
    """A whole input file could not be read; the run must fail and name it."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(f"cannot read input file {path}: {type(cause).__name__}: {cause}")
        self.path = path


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool = True
    non_negative: bool = False
    allowed: tuple[object, ...] | None = None
    # for list columns: every element must be finite / the list must be as long as this column's
    finite_elements: bool = False
    aligned_with: str | None = None


@dataclass(frozen=True)
class Validated:
    valid: pa.Table
    valid_positions: np.ndarray  # row numbers of `valid` within the input batch
    quarantined: pa.Table


@dataclass(frozen=True)
class TableContract:
    name: str
    key: str
    columns: tuple[Column, ...]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    def validate(self, batch: pa.Table, source_file: str, first_row: int = 0, keep_extra: bool = True) -> Validated:
        """Cast `batch` to the contract; each broken row goes to quarantine with its first failing reason."""
        n = batch.num_rows
        reason_of_row = np.full(n, -1, dtype=np.int32)
        reasons: list[str] = []

        def flag(mask: np.ndarray, reason: str) -> None:
            fresh = mask & (reason_of_row < 0)
            if fresh.any():
                reasons.append(reason)
                reason_of_row[fresh] = len(reasons) - 1

        cast_columns: dict[str, pa.Array] = {}
        for col in self.columns:
            if col.name not in batch.column_names:
                if not col.nullable:
                    flag(np.ones(n, dtype=bool), f"missing_column:{col.name}")
                cast_columns[col.name] = pa.nulls(n, col.type)
                continue
            values, wrong = _cast(batch.column(col.name), col.type)
            flag(wrong, f"wrong_type:{col.name}")
            is_null = values.is_null().to_numpy(zero_copy_only=False) & ~wrong
            if not col.nullable:
                flag(is_null, f"null:{col.name}")
            if pa.types.is_floating(col.type):
                flag(~is_null & ~wrong & ~_filled(pc.is_finite(values), True), f"not_finite:{col.name}")
            if col.non_negative:
                flag(_filled(pc.less(values, pa.scalar(0).cast(col.type)), False), f"negative:{col.name}")
            if col.finite_elements:
                flag(_any_element_not_finite(values), f"not_finite:{col.name}")
            if col.aligned_with is not None and col.aligned_with in batch.column_names:
                other = _as_array(batch.column(col.aligned_with))
                flag(_filled(pc.not_equal(pc.list_value_length(values), pc.list_value_length(other)), False),
                     f"misaligned:{col.name}")
            if col.allowed is not None:
                inside = _filled(pc.is_in(values, value_set=pa.array(col.allowed, type=col.type)), True)
                flag(~inside & ~is_null, f"bad_value:{col.name}")
            cast_columns[col.name] = values

        ok = reason_of_row < 0
        contract_names = {c.name for c in self.columns}
        extra = [name for name in batch.column_names if name not in contract_names] if keep_extra else []
        arrays = [cast_columns[c.name] for c in self.columns] + [batch.column(name) for name in extra]
        names = [c.name for c in self.columns] + extra
        full = pa.Table.from_arrays([_as_array(a) for a in arrays], names=names)
        valid = full.filter(pa.array(ok)) if not ok.all() else full

        bad_idx = np.flatnonzero(~ok)
        quarantined = quarantine_rows(
            table=self.name,
            source_file=source_file,
            source_rows=bad_idx + first_row,
            reasons=[reasons[i] for i in reason_of_row[bad_idx]],
            records=batch.take(pa.array(bad_idx, type=pa.int64())).to_pylist() if len(bad_idx) else [],
        )
        return Validated(valid=valid, valid_positions=np.flatnonzero(ok), quarantined=quarantined)


def quarantine_rows(
    table: str, source_file: str | list[str], source_rows, reasons: list[str], records: list[dict]
) -> pa.Table:
    """Build quarantine rows; `source_file` may be one path or one per row."""
    n = len(reasons)
    files = source_file if isinstance(source_file, list) else [source_file] * n
    return pa.table(
        {
            "table": pa.array([table] * n, pa.string()),
            "source_file": pa.array(files, pa.string()),
            "source_row": pa.array(np.asarray(source_rows, dtype=np.int64)),
            "reason": pa.array(reasons, pa.string()),
            "record": pa.array([json.dumps(r, default=str, sort_keys=True) for r in records], pa.string()),
        },
        schema=QUARANTINE_SCHEMA,
    )


def split_duplicates(table: pa.Table, key: str) -> tuple[pa.Table, pa.Table]:
    """Keep the first row per key, ordered by source file and row; return (firsts, repeats)."""
    if table.num_rows == 0:
        return table, table
    order = table.sort_by([(key, "ascending"), (SOURCE_FILE, "ascending"), (SOURCE_ROW, "ascending")])
    keys = order.column(key).to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return order.filter(pa.array(first)), order.filter(pa.array(~first))


def _cast(column: pa.ChunkedArray | pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast safely; values that cannot be cast become null and are marked wrong."""
    array = _as_array(column)
    n = len(array)
    if array.type == target:
        return array, np.zeros(n, dtype=bool)
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(array.type) and array.type.tz is None:
        # naive timestamps are taken as UTC
        array = pc.assume_timezone(array, "UTC")
    try:
        return array.cast(target, safe=True), np.zeros(n, dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    parse_time = pa.types.is_timestamp(target) and pa.types.is_string(array.type)
    out: list[object] = []
    wrong = np.zeros(n, dtype=bool)
    for i, value in enumerate(array.to_pylist()):
        if value is None:
            out.append(None)
            continue
        try:
            out.append(_parse_utc(value) if parse_time else pa.array([value]).cast(target, safe=True)[0].as_py())
        except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            out.append(None)
            wrong[i] = True
    return pa.array(out, type=target), wrong


def _parse_utc(text: str) -> datetime:
    """ISO 8601 text; a time without a zone is taken as UTC."""
    parsed = datetime.fromisoformat(text.strip())
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def _filled(mask: pa.Array | pa.ChunkedArray, null_as: bool) -> np.ndarray:
    return _as_array(mask).fill_null(null_as).to_numpy(zero_copy_only=False).astype(bool)


def _any_element_not_finite(values: pa.Array) -> np.ndarray:
    """Per row of a list<float> array: does any element fail is_finite (NaN, inf or null)?"""
    flat = pc.list_flatten(values)
    bad = ~_filled(pc.is_finite(flat), False)
    rows = pc.list_parent_indices(values).to_numpy(zero_copy_only=False)
    return np.bincount(rows[bad], minlength=len(values)) > 0


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


EVENTS = TableContract(
    name="events",
    key="event_id",
    columns=(
        Column("event_id", pa.string(), nullable=False),
        Column("user_id", pa.string(), nullable=False),
        Column("session_id", pa.string()),
        Column("ts", TIMESTAMP, nullable=False),
        Column("event_type", pa.string(), nullable=False),
        Column("dwell_ms", pa.int64(), non_negative=True),
    ),
)

TRANSACTIONS = TableContract(
    name="transactions",
    key="transaction_id",
    columns=(
        Column("transaction_id", pa.string(), nullable=False),
        Column("user_id", pa.string(), nullable=False),
        Column("ts", TIMESTAMP, nullable=False),
        Column("amount", pa.float64(), nullable=False, non_negative=True),
        Column("currency", pa.string()),
        Column("status", pa.string(), allowed=("approved", "declined")),
        Column("label", pa.int8(), allowed=(0, 1)),
    ),
)

# Sequences are our own output, but the encoder still checks them: a NaN time feature must be
# quarantined, not fed to a model.
SEQUENCES = TableContract(
    name="sequences",
    key="transaction_id",
    columns=(
        Column("transaction_id", pa.string(), nullable=False),
        Column("user_id", pa.string(), nullable=False),
        Column("dt", pa.string(), nullable=False),
        Column("txn_ts", TIMESTAMP, nullable=False),
        Column("n_events", pa.int32(), nullable=False, non_negative=True),
        Column("event_ids", pa.list_(pa.string()), nullable=False, aligned_with="event_types"),
        Column("event_types", pa.list_(pa.string()), nullable=False),
        Column("log_gap_prev_s", pa.list_(pa.float32()), nullable=False, finite_elements=True,
               aligned_with="event_types"),
        Column("log_time_to_txn_s", pa.list_(pa.float32()), nullable=False, finite_elements=True,
               aligned_with="event_types"),
        Column("dwell_ms", pa.list_(pa.int64()), nullable=False, aligned_with="event_types"),
    ),
)

# An image dataset for the semantic lens; whether the bytes decode is checked where they are decoded.
IMAGES = TableContract(
    name="images",
    key="sample_id",
    columns=(
        Column("sample_id", pa.string(), nullable=False),
        Column("image", pa.binary(), nullable=False),
        Column("label", pa.int64()),
    ),
)

# the session-timing statistics sequences and embeddings carry (computed by operators/timing.py);
# the `timing_*` expert features and the rules that name them read these columns
TIMING_COLUMNS = ("timing_log_gap_std", "timing_log_dwell_std", "timing_same_gap_share", "timing_gap_autocorr")

CONTRACTS = {c.name: c for c in (EVENTS, TRANSACTIONS, SEQUENCES, IMAGES)}

# Reviewers' verdicts (written by infra/reviews.py, read by infra/catalog.py). They live here,
# not in reviews.py, so the catalog can read them without importing the module that imports it.
REVIEWS_DIR = "reviews/cluster_reviews"
VERDICTS = ("fraud", "legit", "needs_more_info")
REVIEWS_SCHEMA = pa.schema([
    ("review_id", pa.string()), ("cluster_key", pa.string()), ("run_id", pa.string()), ("verdict", pa.string()),
    ("reviewer", pa.string()), ("reviewed_at", TIMESTAMP), ("comment", pa.string()),
])
