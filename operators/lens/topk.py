"""Exact streaming top-k per component, mergeable across actors.

Each actor folds its batches into a (k, components) table of the best scores and the sample
that scored them; tables from many actors merge into the global top-k exactly, because the
global top k of a component is always among the union of every actor's top k. Ties break by
sample position, so the result does not depend on batch or actor order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TopK:
    """Per component (column): scores in descending order and the global sample index of each."""

    scores: np.ndarray  # (k, components) float64, -inf where fewer than k samples were seen
    samples: np.ndarray  # (k, components) int64, -1 where empty

    @classmethod
    def empty(cls, k: int, components: int) -> "TopK":
        return cls(np.full((k, components), -np.inf), np.full((k, components), -1, dtype=np.int64))

    @property
    def k(self) -> int:
        return self.scores.shape[0]

    def update(self, scores: np.ndarray, sample_index: np.ndarray) -> "TopK":
        """Fold in a batch: `scores` (batch, components) for the samples `sample_index` (batch,)."""
        batch = np.broadcast_to(np.asarray(sample_index, dtype=np.int64)[:, None], scores.shape)
        return self._select(np.vstack([self.scores, scores.astype(np.float64)]), np.vstack([self.samples, batch]))

    def merge(self, other: "TopK") -> "TopK":
        return self._select(np.vstack([self.scores, other.scores]), np.vstack([self.samples, other.samples]))

    def _select(self, scores: np.ndarray, samples: np.ndarray) -> "TopK":
        # order by score descending, then by sample index ascending (empty slots, -1, sort last)
        tiebreak = np.where(samples < 0, np.iinfo(np.int64).max, samples)
        order = np.lexsort((tiebreak, -scores), axis=0)[: self.k]
        return TopK(np.take_along_axis(scores, order, axis=0), np.take_along_axis(samples, order, axis=0))
