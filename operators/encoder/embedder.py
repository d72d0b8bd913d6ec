"""Batch inference: sequence rows in, embeddings plus the most-attended events out.

`SequenceEmbedder` wraps a loaded encoder (on the GPU when there is one); each call maps one
Arrow batch. The embed job's Ray Data actor builds one per actor, so the model loads once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from lakelens.operators.encoder.batching import pad_sequences
from lakelens.operators.encoder.checkpoint import LoadedEncoder
from lakelens.operators.encoder.vocabulary import OOV_ID
from lakelens.operators.timing import TIMING_COLUMNS

TOP_EVENT = pa.struct([("position", pa.int32()), ("event_id", pa.string()), ("event_type", pa.string()),
                       ("weight", pa.float32())])
PASSTHROUGH = ["transaction_id", "user_id", "dt", "txn_ts", "n_events", "run_id"]


def embedding_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("transaction_id", pa.string()),
        ("user_id", pa.string()),
        ("dt", pa.string()),
        ("txn_ts", pa.timestamp("us", tz="UTC")),
        ("n_events", pa.int32()),
        ("n_events_embedded", pa.int32()),
        ("truncated_by_encoder", pa.bool_()),
        ("embedding", pa.list_(pa.float32(), dim)),
        ("top_events", pa.list_(TOP_EVENT)),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        # the session's timing regularity (operators/timing.py), as the encoder read it: optional expert features
        *[(name, pa.float32()) for name in TIMING_COLUMNS],
        ("unseen_event_types", pa.list_(pa.string())),  # distinct event types of the sequence the encoder never saw
    ])


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SequenceEmbedder:
    def __init__(self, model: LoadedEncoder, max_len: int, top_k: int = 5, run_id: str = "") -> None:
        self.device = next(model.encoder.parameters()).device
        self.model = model
        self.max_len = max_len
        self.top_k = top_k
        self.run_id = run_id
        self.schema = embedding_schema(self.model.encoder.config.embedding_dim)

    @torch.inference_mode()
    def __call__(self, batch: pa.Table) -> pa.Table:
        padded = pad_sequences(batch, self.model.vocabulary, self.max_len)
        out = self.model.encoder(torch.from_numpy(padded.tokens).to(self.device),
                                 torch.from_numpy(padded.times).to(self.device),
                                 torch.from_numpy(padded.lengths).to(self.device))
        embedding = out.embedding.float().cpu().numpy()
        attention = out.attention.float().cpu().numpy()
        n, dim = embedding.shape
        columns = {
            "transaction_id": batch.column("transaction_id"),
            "user_id": batch.column("user_id"),
            "dt": batch.column("dt"),
            "txn_ts": batch.column("txn_ts"),
            "n_events": batch.column("n_events"),
            "n_events_embedded": pa.array(padded.lengths.astype(np.int32)),
            "truncated_by_encoder": pa.array(padded.truncated),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.reshape(-1)), dim),
            "top_events": self._top_events(batch, padded.lengths, padded.start, attention),
            "model_version": pa.array([self.model.version] * n, pa.string()),
            "run_id": pa.array([self.run_id] * n, pa.string()),
            **{name: pa.array(padded.session[:, i]) for i, name in enumerate(TIMING_COLUMNS)},
            "unseen_event_types": self._unseen(batch),
        }
        return pa.table(columns, schema=self.schema)

    def _unseen(self, batch: pa.Table) -> pa.Array:
        """Per sequence, its distinct event types outside the encoder's vocabulary, in first-seen order."""
        types = batch.column("event_types").combine_chunks()
        unknown = self.model.vocabulary.encode(types.values) == OOV_ID
        row = pc.list_parent_indices(types).to_numpy()[unknown]
        names = types.values.filter(pa.array(unknown)).to_pylist()
        found: list[list[str]] = [[] for _ in range(len(types))]
        for r, name in zip(row, names):
            if name is not None and name not in found[r]:
                found[r].append(name)
        return pa.array(found, pa.list_(pa.string()))

    def _top_events(self, batch: pa.Table, lengths: np.ndarray, start: np.ndarray, attention: np.ndarray) -> pa.Array:
        """The k most-attended events of each sequence, heaviest first (ties: the later event)."""
        n, width = attention.shape
        k = min(self.top_k, width)
        # reverse positions so that a stable sort prefers later (nearer the transaction) events on ties
        ranked = np.where(np.arange(width)[None, :] < lengths[:, None], attention, -1.0)
        order = np.argsort(-ranked[:, ::-1], axis=1, kind="stable")[:, :k]
        position = width - 1 - order
        count = np.minimum(lengths, k)
        keep = np.arange(k)[None, :] < count[:, None]
        row = np.repeat(np.arange(n), count)
        pos = position[keep]
        weight = attention[row, pos]
        types = batch.column("event_types").combine_chunks()
        ids = batch.column("event_ids").combine_chunks()
        flat_index = types.offsets.to_numpy()[:-1][row] + start[row] + pos
        offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int32)
        structs = pa.StructArray.from_arrays(
            [pa.array((start[row] + pos).astype(np.int32)),
             pc.take(ids.values, pa.array(flat_index, pa.int64())),
             pc.take(types.values, pa.array(flat_index, pa.int64())),
             pa.array(weight.astype(np.float32))],
            fields=list(TOP_EVENT),
        )
        return pa.ListArray.from_arrays(pa.array(offsets), structs)
