"""Arrow sequence rows -> padded arrays the encoder reads.

Rows come from the `sequences` table (list columns aligned per event, oldest first). The last
`max_len` events are kept: the ones nearest the transaction matter most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.operators.encoder.vocabulary import PAD_ID, EventVocabulary
from lakelens.operators.timing import TIMING_COLUMNS, session_timing

N_SESSION_FEATURES = len(TIMING_COLUMNS)

# log1p(seconds) reaches ~11.4 for a day; dividing keeps the inputs near unit scale
TIME_SCALE = 10.0
N_TIME_FEATURES = 4  # gap to previous, time to transaction, dwell, dwell missing
SEQUENCE_COLUMNS = ["event_types", "log_gap_prev_s", "log_time_to_txn_s", "dwell_ms"]


@dataclass
class PaddedSequences:
    """A batch of sequences, left-aligned and zero-padded to the longest one in the batch."""

    tokens: np.ndarray  # int64 (n, T)
    times: np.ndarray  # float32 (n, T, N_TIME_FEATURES)
    lengths: np.ndarray  # int64 (n,)
    start: np.ndarray  # int64 (n,): index of the first kept event in the original list
    truncated: np.ndarray  # bool (n,): events were dropped to fit max_len
    session: np.ndarray  # float32 (n, N_SESSION_FEATURES): the regularity of the kept events' last session

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, rows: np.ndarray) -> "PaddedSequences":
        width = max(int(self.lengths[rows].max(initial=0)), 1)
        return PaddedSequences(self.tokens[rows, :width], self.times[rows, :width], self.lengths[rows],
                               self.start[rows], self.truncated[rows], self.session[rows])


def pad_sequences(table: pa.Table, vocab: EventVocabulary, max_len: int) -> PaddedSequences:
    """Encode and pad the sequence columns of `table`. Raises on non-finite time features."""
    types = _flat_list(table, "event_types")
    offsets = types.offsets.to_numpy().astype(np.int64)
    full_len = np.diff(offsets)
    for name in SEQUENCE_COLUMNS[1:]:
        other = _flat_list(table, name)
        if not np.array_equal(np.diff(other.offsets.to_numpy()), full_len):
            raise ValueError(f"sequence column {name} is not aligned with event_types")
    lengths = np.minimum(full_len, max_len)
    start = full_len - lengths
    n, width = len(lengths), max(int(lengths.max(initial=0)), 1)

    # flat positions of the kept events and their slot in the padded matrix
    row = np.repeat(np.arange(n), lengths)
    slot = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    src = offsets[:-1][row] + start[row] + slot

    tokens = np.full((n, width), PAD_ID, dtype=np.int64)
    tokens[row, slot] = vocab.encode(types.values)[src] if src.size else []
    times = np.zeros((n, width, N_TIME_FEATURES), dtype=np.float32)
    gap = _values(table, "log_gap_prev_s")
    to_txn = _values(table, "log_time_to_txn_s")
    if not (np.isfinite(gap[src]).all() and np.isfinite(to_txn[src]).all()):
        raise ValueError("non-finite time features in sequences; the sequences contract should have quarantined them")
    dwell_col = _flat_list(table, "dwell_ms").values
    dwell = pc.fill_null(dwell_col, 0).to_numpy(zero_copy_only=False).astype(np.float64)
    dwell_missing = dwell_col.is_null().to_numpy(zero_copy_only=False)
    times[row, slot, 0] = gap[src] / TIME_SCALE
    times[row, slot, 1] = to_txn[src] / TIME_SCALE
    times[row, slot, 2] = np.log1p(np.maximum(dwell[src], 0) / 1000.0) / TIME_SCALE
    times[row, slot, 3] = dwell_missing[src]
    kept_offsets = np.concatenate([[0], np.cumsum(lengths)])
    session = session_timing(gap[src], np.log1p(np.maximum(dwell[src], 0) / 1000.0), dwell_missing[src], kept_offsets)
    return PaddedSequences(tokens, times, lengths.astype(np.int64), start.astype(np.int64), full_len > max_len, session)


def _flat_list(table: pa.Table, name: str) -> pa.ListArray:
    column = table.column(name)
    # offsets of a sliced list array index its full `.values`, so positions below stay absolute
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _values(table: pa.Table, name: str) -> np.ndarray:
    array = _flat_list(table, name)
    return array.values.to_numpy(zero_copy_only=False).astype(np.float64)
