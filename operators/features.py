"""Expert features as a numeric matrix: numeric columns scaled robustly, booleans as 0/1,
categoricals one-hot. No labels are involved; the scaling comes from the data itself.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class ExpertFeatureSpec:
    numeric: tuple[str, ...] = ("account_age_days", "txn_velocity_24h", "amount_to_user_avg", "amount", "hour_of_day")
    boolean: tuple[str, ...] = ("is_new_device", "ip_country_mismatch")
    categorical: tuple[str, ...] = ("payment_method",)
    # heavy-tailed columns are log-scaled before robust scaling
    log_scaled: tuple[str, ...] = ("account_age_days", "amount_to_user_avg", "amount", "txn_velocity_24h")


@dataclass
class ExpertFeatureEncoder:
    """Fitted once (median/IQR, category lists), then applied to any batch the same way."""

    spec: ExpertFeatureSpec = field(default_factory=ExpertFeatureSpec)
    centers: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, table: pa.Table) -> "ExpertFeatureEncoder":
        for name in self.spec.numeric:
            values = self._numeric(table, name)
            values = values[np.isfinite(values)]
            q25, q50, q75 = np.percentile(values, [25, 50, 75]) if values.size else (0.0, 0.0, 1.0)
            self.centers[name] = float(q50)
            self.scales[name] = float(q75 - q25) or float(np.std(values)) or 1.0
        for name in self.spec.categorical:
            self.categories[name] = sorted(v for v in pc.unique(table.column(name)).to_pylist() if v is not None)
        return self

    def transform(self, table: pa.Table) -> np.ndarray:
        blocks = []
        for name in self.spec.numeric:
            scaled = (self._numeric(table, name) - self.centers[name]) / self.scales[name]
            blocks.append(np.nan_to_num(scaled, nan=0.0)[:, None])
        for name in self.spec.boolean:
            blocks.append(pc.fill_null(table.column(name), False).to_numpy(zero_copy_only=False).astype(np.float64)[:, None])
        for name in self.spec.categorical:
            values = np.asarray(table.column(name).to_pylist(), dtype=object)
            blocks.append(np.stack([values == c for c in self.categories[name]], axis=1).astype(np.float64))
        return np.hstack(blocks).astype(np.float32) if blocks else np.zeros((table.num_rows, 0), np.float32)

    def to_dict(self) -> dict:
        """The fitted state as plain JSON, so a later run scales new rows exactly as this one did."""
        return {"spec": {k: list(v) for k, v in vars(self.spec).items()}, "centers": self.centers,
                "scales": self.scales, "categories": self.categories}

    @classmethod
    def from_dict(cls, state: dict) -> "ExpertFeatureEncoder":
        spec = ExpertFeatureSpec(**{k: tuple(v) for k, v in state["spec"].items()})
        return cls(spec, dict(state["centers"]), dict(state["scales"]), {k: list(v) for k, v in state["categories"].items()})

    @property
    def names(self) -> list[str]:
        return ([*self.spec.numeric, *self.spec.boolean]
                + [f"{n}={c}" for n in self.spec.categorical for c in self.categories.get(n, [])])

    def _numeric(self, table: pa.Table, name: str) -> np.ndarray:
        values = pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        return np.log1p(np.maximum(values, 0)) if name in self.spec.log_scaled else values


def hybrid_features(expert_matrix: np.ndarray, embedding: np.ndarray, expert_weight: float,
                    embedding_weight: float, clip: float = 3.0) -> np.ndarray:
    """Expert block (clipped at `clip` robust units, scaled to unit-ish norm) beside the weighted embedding.

    Clipping keeps one extreme amount from dominating distances; dividing by sqrt(columns) puts the
    block on the same footing as a unit embedding whatever the number of expert columns. A zero
    weight drops its block, which gives the expert-only and embedding-only baselines.
    """
    blocks = []
    if expert_weight > 0 and expert_matrix.shape[1]:
        block = np.clip(expert_matrix, -clip, clip) / np.sqrt(expert_matrix.shape[1])
        blocks.append(expert_weight * block)
    if embedding_weight > 0:
        blocks.append(embedding_weight * embedding)
    if not blocks:
        raise ValueError("hybrid features need a positive expert or embedding weight")
    return np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)


# the session-regularity statistics of operators/timing.py that set scripts apart from people; the
# gap autocorrelation is left out: with a handful of gaps it is mostly noise for people and bots alike
REGULARITY_COLUMNS = ("timing_log_gap_std", "timing_log_dwell_std", "timing_same_gap_share")
# a session whose log1p-second gaps (or dwells) spread less than this is paced like a machine
REGULAR_SPREAD = 0.3


def timing_block(regularity: np.ndarray) -> np.ndarray:
    """(n, 3) rows in [0, 1]: how irregular the gaps and dwells are, and the share of repeated gaps.

    People's spreads of log1p-seconds lie around 0.4-0.9 and rarely repeat a gap; a script that
    replays a flow at a constant pace has spreads near 0 and repeats nearly every gap. Spreads are
    saturated at `REGULAR_SPREAD`, so every person maps close to (1, 1, 0) and the block separates
    machine pacing from human pacing without spreading people apart by how erratic they are. No
    fitted state: a daily run that joins yesterday's clusters places a session as yesterday's did.
    """
    block = np.nan_to_num(np.asarray(regularity, dtype=np.float32), nan=0.0).copy()
    block[:, :2] = np.clip(block[:, :2] / REGULAR_SPREAD, 0.0, 1.0)
    block[:, 2] = np.clip(block[:, 2], 0.0, 1.0)
    return block


def unseen_signature(unseen: list[list[str]], dims: int = 16, max_share: float = 0.1) -> np.ndarray:
    """(n, dims) unit rows: which rarely seen, never-trained event types each transaction's session used.

    The encoder maps every event type it never saw to one token, so a new pattern built on new
    event types looks to it like whatever known flow it shares. Their identity is kept here instead:
    each type the encoder never saw and that appears in at most `max_share` of the window's
    transactions is hashed to a signed dimension. Types that nearly everyone uses (an app release
    renaming a step) are left out: they say nothing about who is unusual. Rows without such types are 0.
    """
    n = len(unseen)
    out = np.zeros((n, dims), dtype=np.float32)
    if n == 0:
        return out
    frequency: dict[str, int] = {}
    for types in unseen:
        for t in set(types or ()):
            frequency[t] = frequency.get(t, 0) + 1
    rare = {t for t, count in frequency.items() if count <= max_share * n}
    for row, types in enumerate(unseen):
        for t in set(types or ()) & rare:
            digest = zlib.crc32(t.encode())
            out[row, digest % dims] += 1.0 if (digest >> 16) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=out, where=norms > 0)
