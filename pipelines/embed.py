"""`lakelens run embed`: a day's sequences through the trained encoder, on Ray Data actors.

    sequences(dt=D) --validate--> SequenceEmbedder actors (model loaded once each; GPU when present)
        --> sequence_embeddings --> publish
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pyarrow.compute as pc

from lakelens.infra.config import LakelensConfig
from lakelens.infra.contracts import SEQUENCES
from lakelens.infra.lake_io import read_validated
from lakelens.infra.ray_runtime import init_ray
from lakelens.infra.runs import Run, begin_run, published_output
from lakelens.infra.storage import Lake
from lakelens.operators.encoder.checkpoint import load_encoder, resolve_version
from lakelens.operators.encoder.embedder import SequenceEmbedder, embedding_schema

JOB = "embed"
TABLE = "sequence_embeddings"
READ_COLUMNS = ["transaction_id", "user_id", "dt", "txn_ts", "n_events", "event_ids", "event_types",
                "log_gap_prev_s", "log_time_to_txn_s", "dwell_ms"]


def run_embed(lake: Lake, day: date, config: LakelensConfig, model_version: str = "latest",
              force: bool = False) -> dict[str, Any]:
    """Embed and publish the day's sequences; returns the manifest (an existing one if unchanged)."""
    name = config.encoder.model_name
    version = resolve_version(lake, name, model_version)
    card = load_encoder(lake, name, version).card  # fails early on a broken model, before any Ray work
    sequences_run, inputs = published_output(lake, "build-sequences", f"dt={day}", "sequences")
    params = {"date": day.isoformat(), "model": f"{name}/{version}", "max_len": card["config"]["max_len"],
              "top_events": config.embed.top_events}
    run, existing = begin_run(lake, JOB, f"dt={day}", params, inputs, force=force)
    if existing is not None:
        print(f"embed: {run.run_id} is already published (attempt {existing['attempt_id']}); nothing to do")
        return existing
    print(f"embed: run {run.run_id}: {sum(i.rows for i in inputs):,} sequences with {name}/{version}")
    try:
        init_ray(config.ray)
        return _execute(run, lake, config, name, version, params["max_len"], card, sequences_run)
    except BaseException as exc:
        run.record_failure(exc)
        raise


def _execute(run: Run, lake: Lake, config: LakelensConfig, name: str, version: str, max_len: int,
             card: dict[str, Any], sequences_run: dict[str, Any]) -> dict[str, Any]:
    import ray
    from ray.data import ActorPoolStrategy

    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = config.embed.actors or (gpus if gpus else max(1, cpus - 1))
    with run.stage("embed"):
        sequences = read_validated(run, SEQUENCES, run.inputs, columns=READ_COLUMNS)
        embeddings = sequences.map_batches(
            SequenceEmbedder,
            fn_constructor_kwargs={"lake": lake, "model_name": name, "model_version": version, "max_len": max_len,
                                   "top_k": config.embed.top_events, "run_id": run.run_id,
                                   "cpu_threads": max(1, cpus // actors)},
            compute=ActorPoolStrategy(size=actors),
            batch_size=config.embed.batch_size,
            batch_format="pyarrow",
            num_gpus=1 if gpus else 0,
            num_cpus=0 if gpus else 1,
        )  # Ray Data restarts a lost actor and retries its batches (tests/test_fault_tolerance.py)
        embeddings.write_parquet(lake.path(run.table_dir(TABLE)), filesystem=lake.fs)
    run.metrics["embed"] = {**_summarise(run), "actors": actors, "device": "cuda" if gpus else "cpu",
                            "upstream_truncated": sequences_run.get("metrics", {}).get("sequences", {}).get("truncated", 0),
                            "upstream_max_len": sequences_run["params"].get("max_len")}
    manifest = run.commit(expected_tables={TABLE: embedding_schema(card["architecture"]["embedding_dim"])})
    out = manifest["metrics"]["embed"]
    print(f"embed: published {manifest['outputs'][TABLE]['rows']:,} embeddings ({out['truncated_by_encoder']:,} "
          f"truncated to {max_len} events, {out['empty']:,} empty); quarantined "
          f"{sum(q['rows'] for q in manifest['quarantine'].values()):,}; timings {manifest['timings_s']}")
    return manifest


def _summarise(run: Run) -> dict[str, int]:
    totals = {"sequences": 0, "truncated_by_encoder": 0, "empty": 0}
    for entry in run.lake.list_files(run.table_dir(TABLE), suffix=".parquet"):
        t = run.lake.read_table(entry.path, columns=["truncated_by_encoder", "n_events_embedded"])
        totals["sequences"] += t.num_rows
        totals["truncated_by_encoder"] += int(pc.sum(t.column("truncated_by_encoder")).as_py() or 0)
        totals["empty"] += int(pc.sum(pc.equal(t.column("n_events_embedded"), 0)).as_py() or 0)
    return totals
