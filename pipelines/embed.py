"""`lakelens run embed`: a day's sequences through the trained encoder, on Ray Data actors.

    sequences(dt=D) --validate--> SequenceEmbedderActor (model loaded once per actor; GPU when present)
        --> sequence_embeddings --> publish
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.catalog import event_type_counts
from lakelens.infra.config import DriftConfig, LakelensConfig
from lakelens.infra.contracts import SEQUENCES
from lakelens.infra.devices import actor_device, stage_gpus
from lakelens.infra.jobs import Job, run_job
from lakelens.infra.lake_io import read_validated
from lakelens.infra.model_store import ModelStore
from lakelens.infra.runs import Run, published_output
from lakelens.infra.storage import Lake
from lakelens.operators.encoder.checkpoint import LoadedEncoder
from lakelens.operators.drift import DriftThresholds, embedding_shift, retrain_advice, vocabulary_drift
from lakelens.operators.encoder.embedder import SequenceEmbedder, embedding_schema

JOB = "embed"
TABLE = "sequence_embeddings"
log = logging.getLogger(__name__)
READ_COLUMNS = ["transaction_id", "user_id", "dt", "txn_ts", "n_events", "event_ids", "event_types",
                "log_gap_prev_s", "log_time_to_txn_s", "dwell_ms"]


class SequenceEmbedderActor:
    """One Ray Data actor: loads the encoder once (on its GPU when it has one), then embeds batches."""

    def __init__(self, lake: Lake, model_name: str, model_version: str, max_len: int, top_k: int, run_id: str,
                 cpu_threads: int, use_gpu: bool = False) -> None:
        import torch

        device = actor_device("embed.device", use_gpu)
        if device == "cpu":
            # Ray pins OMP threads to the actor's CPU reservation; reading tasks leave the rest idle between batches
            torch.set_num_threads(cpu_threads)
        model = ModelStore(lake).load(model_name, model_version, LoadedEncoder, device=device)
        self.embedder = SequenceEmbedder(model, max_len=max_len, top_k=top_k, run_id=run_id)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.embedder(batch)


def plan_embed(lake: Lake, day: date, config: LakelensConfig, model_version: str = "latest") -> Job:
    name = config.encoder.model_name
    store = ModelStore(lake)
    version = store.resolve_version(name, model_version)
    model = store.load(name, version, LoadedEncoder)  # fails early on a broken model, before any Ray work
    card = model.card
    sequences_run, inputs = published_output(lake, "build-sequences", f"dt={day}", "sequences")
    params = {"date": day.isoformat(), "model": f"{name}/{version}", "max_len": card["config"]["max_len"],
              "top_events": config.embed.top_events}

    def compute(run: Run) -> None:
        _compute(run, config, name, version, params["max_len"], sequences_run)
        with run.stage("drift"):
            run.metrics["drift"] = measure_drift(run, model, config.drift)

    return Job(JOB, f"dt={day}", params, inputs, compute,
               outputs={TABLE: embedding_schema(card["architecture"]["embedding_dim"])},
               describe=lambda m: f"{m['metrics']['embed']['truncated_by_encoder']:,} truncated to "
                                  f"{params['max_len']} events, {m['metrics']['embed']['empty']:,} empty")


def run_embed(lake: Lake, day: date, config: LakelensConfig, model_version: str = "latest",
              force: bool = False) -> dict[str, Any]:
    """Embed and publish the day's sequences; returns the manifest (an existing one if unchanged)."""
    return run_job(lake, plan_embed(lake, day, config, model_version), config, force)


def _compute(run: Run, config: LakelensConfig, name: str, version: str, max_len: int,
             sequences_run: dict[str, Any]) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    gpus = stage_gpus("embed.device", config.embed.device, config.ray.gpu_wait_s)  # "cuda" and none: InputError
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = config.embed.actors or (gpus if gpus else max(1, cpus - 1))
    with run.stage("embed"):
        sequences = read_validated(run, SEQUENCES, run.inputs, columns=READ_COLUMNS)
        embeddings = sequences.map_batches(
            SequenceEmbedderActor,
            fn_constructor_kwargs={"lake": run.lake, "model_name": name, "model_version": version, "max_len": max_len,
                                   "top_k": config.embed.top_events, "run_id": run.run_id,
                                   "cpu_threads": max(1, cpus // actors), "use_gpu": gpus > 0},
            compute=ActorPoolStrategy(size=actors),
            batch_size=config.embed.batch_size,
            batch_format="pyarrow",
            num_gpus=1 if gpus else 0,
            num_cpus=0 if gpus else 1,
        )  # Ray Data restarts a lost actor and retries its batches (tests/test_fault_tolerance.py)
        embeddings.write_parquet(run.lake.path(run.table_dir(TABLE)), filesystem=run.lake.fs)
    run.metrics["embed"] = {**_summarise(run), "actors": actors, "device": "cuda" if gpus else "cpu",
                            "upstream_truncated": sequences_run.get("metrics", {}).get("sequences", {}).get("truncated", 0),
                            "upstream_max_len": sequences_run["params"].get("max_len")}


def measure_drift(run: Run, model: LoadedEncoder, thresholds: DriftConfig) -> dict[str, Any]:
    """Today's sequences and embeddings against the encoder's vocabulary and training reference."""
    drift = vocabulary_drift(event_type_counts(run.lake, [i.path for i in run.inputs]), model.vocabulary.tokens)
    sample = _embedding_sample(run, thresholds.reference_sample)
    drift["embedding_shift"] = (embedding_shift(model.reference, sample) if model.reference is not None
                                and len(sample) else None)
    drift["model"] = f"{model.card['name']}/{model.version}"
    return with_advice(drift, thresholds)


def with_advice(drift: dict[str, Any], thresholds: DriftConfig) -> dict[str, Any]:
    """Adds `retrain_recommended` and its reasons, and warns in the log when a retrain is due."""
    reasons = retrain_advice(drift, DriftThresholds(thresholds.max_oov_share, thresholds.max_embedding_shift,
                                                    thresholds.max_refused_share))
    if reasons:
        log.warning("drift: retrain recommended: %s", "; ".join(reasons), extra={"drift": drift})
    return {**drift, "retrain_recommended": bool(reasons), "reasons": reasons}


def _embedding_sample(run: Run, size: int) -> np.ndarray:
    """Up to `size` of today's embeddings, taken evenly from the published files."""
    parts, rows = [], 0
    for entry in run.lake.list_files(run.table_dir(TABLE), suffix=".parquet"):
        table = run.lake.read_table(entry.path, columns=["embedding"])
        parts.append(np.asarray(table.column("embedding").combine_chunks().values, dtype=np.float32)
                     .reshape(table.num_rows, -1))
        rows += table.num_rows
    if not rows:
        return np.zeros((0, 0), np.float32)
    every = np.concatenate(parts)
    return every[np.linspace(0, rows - 1, min(size, rows)).astype(np.int64)]


def _summarise(run: Run) -> dict[str, int]:
    totals = {"sequences": 0, "truncated_by_encoder": 0, "empty": 0}
    for entry in run.lake.list_files(run.table_dir(TABLE), suffix=".parquet"):
        t = run.lake.read_table(entry.path, columns=["truncated_by_encoder", "n_events_embedded"])
        totals["sequences"] += t.num_rows
        totals["truncated_by_encoder"] += int(pc.sum(t.column("truncated_by_encoder")).as_py() or 0)
        totals["empty"] += int(pc.sum(pc.equal(t.column("n_events_embedded"), 0)).as_py() or 0)
    return totals
