"""The clustering state a behaviour-clusters run leaves for the next day's run, inside its own folder.

    <attempt>/state/state.json      fingerprint, base day of the last full re-cluster, expert scaling,
                                    the model chain (each model's folder and its labels' keys)
    <attempt>/state/centroids.npz   each cluster key's centroid in feature space
    <attempt>/state/model-*/        the chain's pHDBSCAN models (through the model store)

It is written before the manifest, so it is published with the run or not at all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa

from lakelens.infra.model_store import ModelStore, Storable
from lakelens.infra.runs import Run, manifest_prefix, visible_runs
from lakelens.infra.storage import Lake


@dataclass
class PreviousRun:
    """The latest published run before this day, and the clustering state it left (None before state existed)."""

    manifest: dict[str, Any]
    state: dict[str, Any] | None

    @property
    def day(self) -> date:
        return date.fromisoformat(self.manifest["partition"].removeprefix("dt="))

    def table(self, lake: Lake, table: str, columns: list[str]) -> pa.Table:
        files = self.manifest["outputs"][table]["files"]
        return pa.concat_tables([lake.read_table(f["path"], columns=columns) for f in files])


class ClusteringStateStore:
    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.models = ModelStore(lake)

    def previous_run(self, job: str, day: date) -> PreviousRun | None:
        earlier = [m for p, m in visible_runs(self.lake, job).items() if p < f"dt={day}"]
        if not earlier:
            return None
        manifest = max(earlier, key=lambda m: m["partition"])
        path = f"{manifest_prefix(manifest)}/state/state.json"
        return PreviousRun(manifest, self.lake.read_json(path) if self.lake.exists(path) else None)

    def save_model(self, run: Run, name: str, model: Storable, keys: dict[int, str],
                   within: tuple[int, np.ndarray] | None = None) -> dict[str, Any]:
        """A model of the chain, with its labels' keys: the reference that goes into state.json. `within`:
        (an earlier chain model, the rows of its training data this model was fitted on)."""
        folder = self.models.save_state(f"{run.prefix}/state/{name}", model)
        ref: dict[str, Any] = {"dir": folder, "keys": {str(c): k for c, k in keys.items()}}
        if within is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(within[1], dtype=np.int64))
            self.lake.write_bytes(f"{run.prefix}/state/{name}-rows.npy", buffer.getvalue())
            ref["within"] = {"model": int(within[0]), "rows": f"{run.prefix}/state/{name}-rows.npy"}
        return ref

    def load_chain(self, previous: PreviousRun,
                   kind: type) -> list[tuple[Any, dict[int, str], tuple[int, np.ndarray] | None]]:
        """Each chain model with its keys and, where saved, what it was fitted `within`."""
        chain = []
        for ref in previous.state["chain"]:
            within = ref.get("within")
            if within is not None:
                within = (int(within["model"]), np.load(io.BytesIO(self.lake.read_bytes(within["rows"]))))
            chain.append((self.models.load_state(ref["dir"], kind), {int(c): k for c, k in ref["keys"].items()},
                          within))
        return chain

    def save(self, run: Run, state: dict[str, Any], centroids: dict[str, np.ndarray], dim: int) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(list(centroids), dtype=str),
                 centroids=np.array(list(centroids.values())).reshape(len(centroids), dim))
        self.lake.write_bytes(f"{run.prefix}/state/centroids.npz", buffer.getvalue())
        self.lake.write_json(f"{run.prefix}/state/state.json", {**state, "centroids": f"{run.prefix}/state/centroids.npz"})

    def centroids(self, previous: PreviousRun) -> dict[str, np.ndarray]:
        if previous.state is None:
            return {}
        arrays = np.load(io.BytesIO(self.lake.read_bytes(previous.state["centroids"])))
        return dict(zip(arrays["keys"].tolist(), arrays["centroids"]))
