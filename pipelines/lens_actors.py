"""The semantic-lens job's Ray Data stages: one stateful callable per model-bound stage, loaded once per actor.

    ComponentStatsActor   decode, one forward + one LRP backward per batch, streaming top-k and class relevance,
                          the audited classes' per-sample channel relevances
    ExampleCropper        each concept example cropped to its component's channel-conditioned (CRP) heatmap
    FoundationEmbedder    each view's embedding in the foundation model's space
"""

from __future__ import annotations

import hashlib
import pickle
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.config import LensConfig
from lakelens.infra.contracts import SOURCE_FILE, SOURCE_ROW, quarantine_rows
from lakelens.infra.devices import actor_device
from lakelens.infra.model_store import ModelStore
from lakelens.infra.storage import Lake
from lakelens.operators.lens.components import ComponentRecorder
from lakelens.operators.lens.preprocess import ModelInput
from lakelens.operators.lens.semantics import VIEWS_SCHEMA


def sample_key(sample_id: str) -> int:
    """A stable non-negative int per sample id: the top-k's tie-break and index."""
    return int.from_bytes(hashlib.sha1(sample_id.encode()).digest()[:8], "big") >> 1


def _setup(setup: Any) -> dict[str, Any]:
    """Constructor arguments travel through the object store (`ray.put`), not inside the pickled actor."""
    import ray

    return ray.get(setup) if isinstance(setup, ray.ObjectRef) else setup


def use_threads(threads: int) -> None:
    """Ray starts actors with OMP_NUM_THREADS=1; the model gets the cores the actor was sized for."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def _recorder(lake: Lake, cfg: LensConfig, use_gpu: bool) -> tuple[ComponentRecorder, ModelInput, str]:
    """The model with its weights, on the actor's GPU when it was given one, wrapped for relevance passes,
    and its input transform."""
    from lakelens.operators.lens.models import create_model
    from lakelens.operators.lens.preprocess import model_input

    device = actor_device("lens.device", use_gpu)
    model = create_model(cfg.architecture, cfg.num_classes, ModelStore(lake).read_weights(cfg.weights))
    inputs = model_input(cfg.preprocess, model, cfg.image_size)
    return ComponentRecorder(model.to(device), cfg.layers, cfg.num_classes, cfg.top_k, cfg.composite, cfg.target,
                             cfg.relevance), inputs, device


DECODE_PARTS = 4  # stage 1 decodes part k + 1 of a batch while the model computes part k


def _labels(batch: pa.Table) -> np.ndarray:
    return pc.fill_null(batch.column("label"), -1).to_numpy(zero_copy_only=False).astype(np.int64)


class ComponentStatsActor:
    """Loads the model once; each batch returns its own `ComponentStats`, pickled, for an exact merge, and
    the channel relevances of its samples whose relevance started at an audited class (`SampleRelevance`).

    `setup` (usually an object-store reference) holds lake, cfg, run, use_gpu, threads, audited (class indices).
    """

    def __init__(self, setup: Any) -> None:
        args = _setup(setup)
        use_threads(args["threads"])
        self.recorder, self.inputs, self.device = _recorder(args["lake"], args["cfg"], args["use_gpu"])
        self.cfg, self.run, self.audited = args["cfg"], args["run"], np.asarray(sorted(args["audited"]), dtype=np.int64)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from lakelens.operators.lens.semantics import SampleRelevance

        self.recorder.stats = None
        samples, reasons = SampleRelevance(), []
        labels = _labels(batch)
        for rows, views, undecodable in self._decoded_ahead(batch):
            reasons += undecodable
            if not rows:
                continue
            ids = batch.column("sample_id").take(pa.array(rows)).to_pylist()
            x = self.inputs.tensor(np.stack(views)).to(self.device)
            with torch.enable_grad():
                target, relevance = self.recorder.record(x, np.array([sample_key(s) for s in ids]), ids, labels[rows])
            audited = np.flatnonzero(np.isin(target, self.audited))
            if len(audited):
                samples.add([ids[i] for i in audited], target[audited], {n: r[audited] for n, r in relevance.items()})
        self._quarantine(batch, reasons)
        return pa.table({"stats": pa.array([pickle.dumps((self.recorder.stats, samples))], pa.binary())})

    def _decoded_ahead(self, batch: pa.Table) -> Iterator[tuple[list[int], list[np.ndarray], list[tuple[int, str]]]]:
        """The batch in DECODE_PARTS parts, each decoded and resized on a thread while the model computes the
        part before it (PIL and torch release the GIL), so decoding overlaps the model's compute. Yields each
        part's decoded rows, their views, and its undecodable rows with their reasons."""
        from concurrent.futures import ThreadPoolExecutor

        data = batch.column("image").to_pylist()
        size = max(1, -(-len(data) // DECODE_PARTS))
        parts = [range(start, min(start + size, len(data))) for start in range(0, len(data), size)]

        def decode(part: range) -> tuple[list[int], list[np.ndarray], list[tuple[int, str]]]:
            rows, views, undecodable = [], [], []
            for i in part:
                try:
                    views.append(self.inputs.view(data[i]))
                    rows.append(i)
                except ValueError as exc:
                    undecodable.append((i, f"undecodable:image ({exc})"[:200]))
            return rows, views, undecodable

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = [pool.submit(decode, part) for part in parts[:1]]
            for k in range(len(parts)):
                if k + 1 < len(parts):
                    pending.append(pool.submit(decode, parts[k + 1]))
                yield pending[k].result()

    def _quarantine(self, batch: pa.Table, reasons: list[tuple[int, str]]) -> None:
        if not reasons:
            return
        rows = [i for i, _ in reasons]
        bad = batch.take(pa.array(rows))
        records = bad.drop_columns(["image", SOURCE_FILE, SOURCE_ROW]).to_pylist()
        table = quarantine_rows("images", bad.column(SOURCE_FILE).to_pylist(), bad.column(SOURCE_ROW).to_numpy(),
                                [r for _, r in reasons], records)
        part = hashlib.sha1(",".join(bad.column("sample_id").to_pylist()).encode()).hexdigest()[:16]
        self.run.write_quarantine("images", table, f"undecodable-{part}")


class ExampleCropper:
    """Loads the model once; crops each concept example to the region its component's relevance points at.

    `wanted[sample_id]` lists the (layer, unit) components the sample is an example of; every pair
    gets its own channel-conditioned heatmap (CRP), computed for many pairs per backward pass.
    """

    def __init__(self, setup: Any) -> None:
        args = _setup(setup)  # lake, cfg, wanted, use_gpu, threads
        use_threads(args["threads"])
        self.recorder, self.inputs, self.device = _recorder(args["lake"], args["cfg"], args["use_gpu"])
        self.cfg, self.wanted = args["cfg"], args["wanted"]

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from lakelens.operators.lens.crops import crop_resized, relevant_box
        from lakelens.operators.lens.codec import encode_png

        cfg = self.cfg
        ids = batch.column("sample_id").to_pylist()
        images = [self.inputs.view(d) for d in batch.column("image").to_pylist()]
        labels = _labels(batch)
        pairs = [(i, layer, unit) for i, s in enumerate(ids) for layer, unit in self.wanted.get(s, [])]
        rows = []
        for start in range(0, len(pairs), cfg.batch_size):
            chunk = pairs[start:start + cfg.batch_size]
            for layer in dict.fromkeys(p[1] for p in chunk):
                mine = [p for p in chunk if p[1] == layer]
                rows_of = np.array([p[0] for p in mine])
                x = self.inputs.tensor(np.stack([images[i] for i in rows_of])).to(self.device)
                with torch.enable_grad():
                    heatmaps = self.recorder.channel_heatmaps(x, layer, np.array([p[2] for p in mine]), labels[rows_of])
                for (i, _, unit), heatmap in zip(mine, heatmaps):
                    box = relevant_box(heatmap, cfg.crop_threshold, cfg.crop_min_side, cfg.crop_context)
                    crop = crop_resized(images[i], box, images[i].shape[0])
                    rows.append({"sample_id": ids[i], "image": encode_png(crop), "layer": layer, "unit": unit,
                                 "crop_box": list(box)})
        return pa.Table.from_pylist(rows, schema=VIEWS_SCHEMA)


class FoundationEmbedder:
    """Loads the foundation model once; adds each row's image embedding."""

    def __init__(self, setup: Any) -> None:
        from lakelens.operators.lens.foundation import load_foundation

        args = _setup(setup)  # lake, cfg, use_gpu, threads
        use_threads(args["threads"])
        cfg = args["cfg"]
        device = actor_device("lens.device", args["use_gpu"])
        self.foundation = load_foundation(cfg.foundation, ModelStore(args["lake"]).local_copy(cfg.foundation_weights),
                                          device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lakelens.operators.lens.codec import decode_image

        images = np.stack([decode_image(d) for d in batch.column("image").to_pylist()])
        vectors = self.foundation.embed_images(images).astype(np.float32)
        return batch.append_column("embedding",
                                   pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]))


def only_samples(batch: pa.Table, wanted: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch.column("sample_id"), value_set=wanted))


def whole_images(batch: pa.Table) -> pa.Table:
    """Views that are the whole image: no component yet (they serve every component they are an example of)."""
    n = batch.num_rows
    return pa.table({"sample_id": batch.column("sample_id"), "image": batch.column("image"),
                     "layer": pa.nulls(n, pa.string()), "unit": pa.nulls(n, pa.int64()),
                     "crop_box": pa.nulls(n, pa.list_(pa.int32(), 4))}, schema=VIEWS_SCHEMA)
