"""Encoder checkpoints in the lake: `models/<name>/<version>/`.

    weights.pt        torch state dict (loads on CPU or GPU)
    vocabulary.json   the event-type vocabulary the weights were trained with
    model.json        the model card: architecture, training params, metrics, data seen;
                      written last, so a version without it is an unfinished save and is ignored

`load_encoder(lake, name, version)` is the one way to get a trained encoder; `version` may be
"latest". A missing version or weights that disagree with their vocabulary fail with a clear error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from lakelens.infra.storage import Lake
from lakelens.operators.encoder.model import EncoderArchitecture, TimeAttentionBiLSTM
from lakelens.operators.encoder.vocabulary import EventVocabulary

MODELS = "models"
CARD, WEIGHTS, VOCABULARY = "model.json", "weights.pt", "vocabulary.json"


class ModelNotFoundError(FileNotFoundError):
    pass


class ModelMismatchError(ValueError):
    """Weights, vocabulary and card of one version disagree."""


@dataclass
class LoadedEncoder:
    encoder: TimeAttentionBiLSTM
    vocabulary: EventVocabulary
    card: dict[str, Any]

    @property
    def version(self) -> str:
        return self.card["version"]


def model_dir(name: str, version: str) -> str:
    return f"{MODELS}/{name}/{version}"


def save_encoder(lake: Lake, name: str, version: str, encoder: TimeAttentionBiLSTM, vocabulary: EventVocabulary,
                 card: dict[str, Any]) -> dict[str, Any]:
    """Write weights and vocabulary, then the card (the commit)."""
    if encoder.config.vocab_size != len(vocabulary):
        raise ModelMismatchError(f"encoder has {encoder.config.vocab_size} token rows, vocabulary {len(vocabulary)}")
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in encoder.state_dict().items()}, buffer)
    folder = model_dir(name, version)
    lake.write_bytes(f"{folder}/{WEIGHTS}", buffer.getvalue())
    lake.write_bytes(f"{folder}/{VOCABULARY}", vocabulary.to_json().encode())
    full = {**card, "name": name, "version": version, "architecture": encoder.config.to_dict(),
            "vocabulary": {"size": len(vocabulary), "fingerprint": vocabulary.fingerprint},
            "saved_at": datetime.now(timezone.utc).isoformat()}
    lake.write_json(f"{folder}/{CARD}", full)
    return full


def list_versions(lake: Lake, name: str) -> list[dict[str, Any]]:
    """Cards of the committed versions, oldest first."""
    cards = [lake.read_json(f"{model_dir(name, v)}/{CARD}") for v in lake.list_dirs(f"{MODELS}/{name}")
             if lake.exists(f"{model_dir(name, v)}/{CARD}")]
    return sorted(cards, key=lambda c: (c["saved_at"], c["version"]))


def resolve_version(lake: Lake, name: str, version: str) -> str:
    if version != "latest":
        if not lake.exists(f"{model_dir(name, version)}/{CARD}"):
            known = [c["version"] for c in list_versions(lake, name)]
            raise ModelNotFoundError(f"no model {name}/{version} in {lake.uri(MODELS)}; "
                                     f"versions: {', '.join(known) or 'none (run train-encoder)'}")
        return version
    cards = list_versions(lake, name)
    if not cards:
        raise ModelNotFoundError(f"no trained model {name!r} in {lake.uri(MODELS)}; run `lakelens run train-encoder`")
    return cards[-1]["version"]


def load_encoder(lake: Lake, name: str, version: str = "latest", device: str | torch.device = "cpu") -> LoadedEncoder:
    version = resolve_version(lake, name, version)
    folder = model_dir(name, version)
    card = lake.read_json(f"{folder}/{CARD}")
    vocabulary = EventVocabulary.from_json(lake.read_bytes(f"{folder}/{VOCABULARY}").decode())
    if vocabulary.fingerprint != card["vocabulary"]["fingerprint"] or len(vocabulary) != card["vocabulary"]["size"]:
        raise ModelMismatchError(f"{lake.uri(folder)}: vocabulary.json is not the vocabulary these weights were trained with "
                                 f"(fingerprint {vocabulary.fingerprint}, card says {card['vocabulary']['fingerprint']})")
    config = EncoderArchitecture(**card["architecture"])
    state = torch.load(io.BytesIO(lake.read_bytes(f"{folder}/{WEIGHTS}")), map_location="cpu", weights_only=True)
    rows = state["tokens.weight"].shape[0]
    if rows != len(vocabulary):
        raise ModelMismatchError(f"{lake.uri(folder)}: weights have {rows} event-type rows, vocabulary has {len(vocabulary)}")
    encoder = TimeAttentionBiLSTM(config)
    encoder.load_state_dict(state)
    return LoadedEncoder(encoder.to(device).eval(), vocabulary, card)
