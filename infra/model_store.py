"""One model store: trained models in the lake, and model state inside runs.

    models/<name>/<version>/    the model's files, then model.json (its card), written last: a
                                version without a card is an unfinished save and is ignored
    <run folder>/state/<name>/  a model a run publishes with itself (the clustering chain)

Models serialise themselves to named bytes (`to_files()`) and back (`from_files(files, card=...)`);
the store only moves those bytes, so operators never see storage. Weights given by path (the
lens's models and foundation models) are read from the lake or a local file through `read_weights`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Protocol, TypeVar

from lakelens.infra.errors import InputError
from lakelens.infra.storage import Lake

MODELS = "models"
CARD = "model.json"


class ModelNotFoundError(InputError, FileNotFoundError):
    pass


class Storable(Protocol):
    def to_files(self) -> dict[str, bytes]: ...


T = TypeVar("T")


def model_dir(name: str, version: str) -> str:
    return f"{MODELS}/{name}/{version}"


class ModelStore:
    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    # -- versioned models: models/<name>/<version>/ -------------------------------------------------

    def save(self, name: str, version: str, model: Storable, card: dict[str, Any]) -> dict[str, Any]:
        """Write the model's files, then its card (the commit); returns the card as stored."""
        folder = model_dir(name, version)
        for file_name, data in model.to_files().items():
            self.lake.write_bytes(f"{folder}/{file_name}", data)
        describe = getattr(model, "describe", None)
        full = {**card, **(describe() if describe else {}), "name": name, "version": version,
                "saved_at": datetime.now(timezone.utc).isoformat()}
        self.lake.write_json(f"{folder}/{CARD}", full)
        return full

    def exists(self, name: str, version: str) -> bool:
        return self.lake.exists(f"{model_dir(name, version)}/{CARD}")

    def card(self, name: str, version: str = "latest") -> dict[str, Any]:
        return self.lake.read_json(f"{model_dir(name, self.resolve_version(name, version))}/{CARD}")

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        """Cards of the committed versions, oldest first."""
        cards = [self.lake.read_json(f"{model_dir(name, v)}/{CARD}") for v in self.lake.list_dirs(f"{MODELS}/{name}")
                 if self.exists(name, v)]
        return sorted(cards, key=lambda c: (c["saved_at"], c["version"]))

    def resolve_version(self, name: str, version: str) -> str:
        """`latest` or an explicit version, checked to exist."""
        if version != "latest":
            if not self.exists(name, version):
                known = [c["version"] for c in self.list_versions(name)]
                raise ModelNotFoundError(f"no model {name}/{version} in {self.lake.uri(MODELS)}; "
                                         f"versions: {', '.join(known) or 'none (run train-encoder)'}")
            return version
        cards = self.list_versions(name)
        if not cards:
            raise ModelNotFoundError(f"no trained model {name!r} in {self.lake.uri(MODELS)}; "
                                     "run `lakelens run train-encoder`")
        return cards[-1]["version"]

    def load(self, name: str, version: str, kind: type[T], **kwargs: Any) -> T:
        """`kind.from_files(files, card=card, **kwargs)` over the stored version."""
        version = self.resolve_version(name, version)
        folder = model_dir(name, version)
        card = self.lake.read_json(f"{folder}/{CARD}")
        files = self._read_folder(folder, exclude=CARD)
        return kind.from_files(files, card=card, where=self.lake.uri(folder), **kwargs)  # type: ignore[attr-defined]

    # -- model state inside a run -------------------------------------------------------------------

    def save_state(self, folder: str, model: Storable) -> str:
        for file_name, data in model.to_files().items():
            self.lake.write_bytes(f"{folder}/{file_name}", data)
        return folder

    def load_state(self, folder: str, kind: type[T]) -> T:
        return kind.from_files(self._read_folder(folder))  # type: ignore[attr-defined]

    def _read_folder(self, folder: str, exclude: str = "") -> Mapping[str, bytes]:
        entries = self.lake.list_files(folder)
        if not entries:
            raise ModelNotFoundError(f"no model files under {self.lake.uri(folder)}")
        return {e.path.rsplit("/", 1)[-1]: self.lake.read_bytes(e.path) for e in entries
                if e.path.rsplit("/", 1)[-1] != exclude}

    # -- weights by path ---------------------------------------------------------------------------

    def read_weights(self, path: str) -> bytes:
        """Weights or files by path: a path inside the lake, else a local file. Never a hub download."""
        if not path:
            raise InputError("a weights path is required")
        if Path(path).is_absolute() and Path(path).exists():
            return Path(path).read_bytes()
        if self.lake.exists(path):
            return self.lake.read_bytes(path)
        raise ModelNotFoundError(f"{path} is neither a local file nor in the lake {self.lake.uri()}")

    def local_copy(self, path: str) -> str:
        """A local file path for libraries that only open paths (open_clip)."""
        if Path(path).is_absolute() and Path(path).exists():
            return path
        if not path or not self.lake.exists(path):
            self.read_weights(path)  # raises the clear error
        info = self.lake.fs.get_file_info(self.lake.path(path))
        # keyed by size and modification time too: weights replaced at the same path must not hit a stale copy
        version = f"{self.lake.uri(path)}|{info.size}|{info.mtime_ns}"
        target = Path(tempfile.gettempdir()) / "lakelens-weights" / hashlib.sha1(version.encode()).hexdigest()
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(self.read_weights(path))
            tmp.replace(target)
        return str(target)
