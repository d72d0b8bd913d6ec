"""Event-type vocabulary learned from the data, with reserved ids for padding, unseen types and masking."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD, OOV, MASK = "<pad>", "<oov>", "<mask>"
RESERVED = (PAD, OOV, MASK)
PAD_ID, OOV_ID, MASK_ID = 0, 1, 2


@dataclass(frozen=True)
class EventVocabulary:
    """Token ids for event types: reserved ids first, then types by descending count, ties by name."""

    tokens: tuple[str, ...]

    @classmethod
    def learn(cls, counts: Counter[str] | dict[str, int], min_count: int = 1) -> "EventVocabulary":
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in RESERVED),
                      key=lambda t: (-counts[t], t))
        return cls(RESERVED + tuple(kept))

    @classmethod
    def from_json(cls, text: str) -> "EventVocabulary":
        tokens = tuple(json.loads(text)["tokens"])
        if tokens[: len(RESERVED)] != RESERVED:
            raise ValueError(f"not a lakelens vocabulary: it must start with {RESERVED}")
        return cls(tokens)

    def to_json(self) -> str:
        return json.dumps({"tokens": list(self.tokens)}, indent=1)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, event_types: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Ids for a flat array of event-type names; unseen or null types map to the OOV id."""
        ids = pc.index_in(event_types, value_set=pa.array(self.tokens, pa.string()))
        return ids.fill_null(OOV_ID).to_numpy(zero_copy_only=False).astype(np.int64)


def count_event_types(lists: Iterable[pa.Array | pa.ChunkedArray]) -> Counter[str]:
    """Counts of event types over list<string> columns (one per batch)."""
    counts: Counter[str] = Counter()
    for column in lists:
        flat = pc.list_flatten(column)
        for row in pc.value_counts(flat).to_pylist():
            if row["values"] is not None:
                counts[row["values"]] += row["counts"]
    return counts
