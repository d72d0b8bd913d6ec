"""Session-level timing: how regular the session that leads to a transaction is.

People hesitate: their dwell times and the gaps between clicks spread widely and do not repeat.
A script replaying a human flow may copy the median pacing, but not the irregularity. These
statistics describe the trailing session of a sequence (its events after the last gap longer than
`SESSION_BREAK_S`), so they are properties of the whole session, not of single events.

    timing_log_gap_std     spread of log1p(gap seconds) between the session's events
    timing_log_dwell_std   spread of log1p(dwell seconds) of the session's events
    timing_same_gap_share  share of consecutive gaps within 5 % of each other
    timing_gap_autocorr    lag-1 autocorrelation of the log gaps (0 when there are fewer than 3)
"""

from __future__ import annotations

import numpy as np

from lakelens.infra.contracts import TIMING_COLUMNS

__all__ = ["TIMING_COLUMNS", "session_timing"]
SESSION_BREAK_S = 1800.0
SAME_GAP = np.log1p(0.05)  # two gaps within 5 % of each other have log1p-gaps about this close


def session_timing(log_gaps: np.ndarray, log_dwell: np.ndarray, dwell_missing: np.ndarray,
                   offsets: np.ndarray) -> np.ndarray:
    """(n, 4) float32, one row per sequence, from the flat per-event arrays of `n` sequences.

    `log_gaps` holds log1p(seconds since the previous event) (its first event's is ignored),
    `log_dwell` log1p(dwell seconds), `offsets` the n + 1 list offsets into the flat arrays.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = offsets.size - 1
    out = np.zeros((n, len(TIMING_COLUMNS)), dtype=np.float32)
    total = int(offsets[-1] - offsets[0])
    if n == 0 or total == 0:
        return out
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(n), lengths)
    position = np.arange(total) - np.repeat(offsets[:-1] - offsets[0], lengths)
    gaps = np.asarray(log_gaps[offsets[0]:offsets[-1]], dtype=np.float64)
    # the trailing session starts at the last event preceded by a long break
    breaks = (position > 0) & (gaps > np.log1p(SESSION_BREAK_S))
    session_start = np.zeros(n, dtype=np.int64)
    np.maximum.at(session_start, row[breaks], position[breaks])
    in_session = position >= session_start[row]
    # gaps inside the session: every session event but its first
    gap_rows = in_session & (position > session_start[row])
    out[:, 0] = _segment_std(gaps[gap_rows], row[gap_rows], n)
    dwell = np.asarray(log_dwell[offsets[0]:offsets[-1]], dtype=np.float64)
    dwell_rows = in_session & ~np.asarray(dwell_missing[offsets[0]:offsets[-1]], dtype=bool)
    out[:, 1] = _segment_std(dwell[dwell_rows], row[dwell_rows], n)
    # consecutive gap pairs inside the session
    pair = gap_rows[1:] & gap_rows[:-1] & (row[1:] == row[:-1])
    first, second, owner = gaps[:-1][pair], gaps[1:][pair], row[1:][pair]
    pairs = np.bincount(owner, minlength=n)
    same = np.bincount(owner, weights=(np.abs(first - second) <= SAME_GAP).astype(np.float64), minlength=n)
    out[:, 2] = np.where(pairs > 0, same / np.maximum(pairs, 1), 0.0)
    out[:, 3] = _segment_autocorr(first, second, owner, n)
    return out


def _segment_std(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    count = np.bincount(owner, minlength=n)
    mean = np.bincount(owner, weights=values, minlength=n) / np.maximum(count, 1)
    var = np.bincount(owner, weights=(values - mean[owner]) ** 2, minlength=n) / np.maximum(count, 1)
    return np.where(count > 1, np.sqrt(var), 0.0)


def _segment_autocorr(first: np.ndarray, second: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Pearson correlation of (gap_t, gap_t+1) pairs per sequence; 0 with fewer than 2 pairs or no spread."""
    count = np.bincount(owner, minlength=n).astype(np.float64)
    safe = np.maximum(count, 1)
    mean_a = np.bincount(owner, weights=first, minlength=n) / safe
    mean_b = np.bincount(owner, weights=second, minlength=n) / safe
    da, db = first - mean_a[owner], second - mean_b[owner]
    cov = np.bincount(owner, weights=da * db, minlength=n)
    var_a = np.bincount(owner, weights=da * da, minlength=n)
    var_b = np.bincount(owner, weights=db * db, minlength=n)
    denom = np.sqrt(var_a * var_b)
    return np.where((count >= 2) & (denom > 1e-12), cov / np.where(denom > 1e-12, denom, 1.0), 0.0)
