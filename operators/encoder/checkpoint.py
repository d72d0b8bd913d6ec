"""A trained encoder as files: the weights, the vocabulary they were trained with, and a card.

    weights.pt        torch state dict (loads on CPU or GPU)
    vocabulary.json   the event-type vocabulary the weights were trained with
    reference.npy     embeddings of held-out training sequences: the reference drift is measured against
    model.json        the model card (written by the model store, last)

`LoadedEncoder.to_files()` and `LoadedEncoder.from_files(files, card)` are the whole format; the
model store in infra/ puts the files in the lake. Weights that disagree with their vocabulary or
card fail with a clear error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from lakelens.operators.encoder.model import EncoderArchitecture, TimeAttentionBiLSTM
from lakelens.operators.encoder.vocabulary import EventVocabulary

WEIGHTS, VOCABULARY, REFERENCE = "weights.pt", "vocabulary.json", "reference.npy"


class ModelMismatchError(ValueError):
    """Weights, vocabulary and card of one version disagree."""


@dataclass
class LoadedEncoder:
    encoder: TimeAttentionBiLSTM
    vocabulary: EventVocabulary
    card: dict[str, Any] = field(default_factory=dict)
    reference: np.ndarray | None = None  # (m, embedding_dim) held-out embeddings; None in older models

    @property
    def version(self) -> str:
        return self.card["version"]

    def to_files(self) -> dict[str, bytes]:
        if self.encoder.config.vocab_size != len(self.vocabulary):
            raise ModelMismatchError(f"encoder has {self.encoder.config.vocab_size} token rows, "
                                     f"vocabulary {len(self.vocabulary)}")
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}, buffer)
        files = {WEIGHTS: buffer.getvalue(), VOCABULARY: self.vocabulary.to_json().encode()}
        if self.reference is not None:
            reference = io.BytesIO()
            np.save(reference, np.asarray(self.reference, dtype=np.float32))
            files[REFERENCE] = reference.getvalue()
        return files

    def describe(self) -> dict[str, Any]:
        """What the card must say for the files to load back: architecture and vocabulary fingerprint."""
        return {"architecture": self.encoder.config.to_dict(),
                "vocabulary": {"size": len(self.vocabulary), "fingerprint": self.vocabulary.fingerprint}}

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], card: dict[str, Any], where: str = "",
                   device: str | torch.device = "cpu") -> "LoadedEncoder":
        missing = {WEIGHTS, VOCABULARY} - set(files)
        if missing:
            raise ModelMismatchError(f"{where}: missing {', '.join(sorted(missing))}")
        vocabulary = EventVocabulary.from_json(files[VOCABULARY].decode())
        if vocabulary.fingerprint != card["vocabulary"]["fingerprint"] or len(vocabulary) != card["vocabulary"]["size"]:
            raise ModelMismatchError(f"{where}: vocabulary.json is not the vocabulary these weights were trained with "
                                     f"(fingerprint {vocabulary.fingerprint}, card says {card['vocabulary']['fingerprint']})")
        state = torch.load(io.BytesIO(files[WEIGHTS]), map_location="cpu", weights_only=True)
        rows = state["tokens.weight"].shape[0]
        if rows != len(vocabulary):
            raise ModelMismatchError(f"{where}: weights have {rows} event-type rows, vocabulary has {len(vocabulary)}")
        encoder = TimeAttentionBiLSTM(EncoderArchitecture(**card["architecture"]))
        encoder.load_state_dict(state)
        reference = np.load(io.BytesIO(files[REFERENCE])) if REFERENCE in files else None
        return cls(encoder.to(device).eval(), vocabulary, card, reference)
