"""`lakelens run train-encoder`: the behaviour encoder, trained without labels on Ray Train.

    sequences(dates) --validate--> sample by transaction hash --> split by user hash --> materialise
        --> vocabulary (train split) --> TorchTrainer(N workers, DDP) --> best epoch --> models/<name>/<version>/

Only the sequences table is read: fraud labels never reach training. The version is a hash of
the inputs, the parameters and the code, so re-running unchanged training reuses the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from lakelens.infra.config import EncoderConfig, LakelensConfig
from lakelens.infra.contracts import SEQUENCES
from lakelens.infra.lake_io import collect_table, read_validated, stable_bucket
from lakelens.infra.errors import InputError
from lakelens.infra.jobs import Job, run_job
from lakelens.infra.model_store import ModelStore, model_dir
from lakelens.infra.runs import InputFile, Run, code_version, fingerprint_hash, published_output
from lakelens.infra.storage import Lake
from lakelens.operators.encoder.checkpoint import LoadedEncoder
from lakelens.operators.encoder.model import create_encoder, encoder_architecture
from lakelens.operators.encoder.objective import ObjectiveParams
from lakelens.operators.encoder.training import TrainingParams
from lakelens.operators.encoder.vocabulary import EventVocabulary, count_event_types

JOB = "train-encoder"
TRAIN_COLUMNS = ["transaction_id", "user_id", "event_types", "log_gap_prev_s", "log_time_to_txn_s", "dwell_ms"]
TRAIN_SCHEMA = pa.schema([SEQUENCES.schema.field(c) for c in TRAIN_COLUMNS] + [pa.field("split", pa.string())])
HASH_BUCKETS = 1_000_000
log = logging.getLogger(__name__)


def training_params(cfg: EncoderConfig) -> TrainingParams:
    return TrainingParams(
        epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, patience=cfg.patience,
        seed=cfg.seed,
        objective=ObjectiveParams(temperature=cfg.temperature, mask_prob=cfg.mask_prob, oov_prob=cfg.oov_prob,
                                  composition_weight=cfg.composition_weight),
    )


def plan_train_encoder(lake: Lake, days: list[date], config: LakelensConfig) -> Job:
    """Training on the published sequences of `days`, declared; its run id is the model version."""
    cfg = config.encoder
    if not days:
        raise InputError("train-encoder needs at least one --dates day")
    days = sorted(set(days))
    inputs: list[InputFile] = []
    for day in days:
        inputs += published_output(lake, "build-sequences", f"dt={day}", "sequences")[1]
    version = _version(cfg, inputs)
    return Job(JOB, f"model={cfg.model_name}", dataclasses.asdict(cfg), inputs,
               compute=lambda run: _train(run, cfg, version, days, config.drift.reference_sample), run_id=version,
               describe=lambda m: f"model {cfg.model_name}/{version}: best epoch {m['metrics']['model']['best_epoch']}"
                                  f" of {m['metrics']['model']['epochs_run']}, held-out loss "
                                  f"{m['metrics']['model']['best_valid_loss']:.4f}")


def run_train_encoder(lake: Lake, days: list[date], config: LakelensConfig, force: bool = False) -> dict[str, Any]:
    """Train (or find already trained) the encoder on the published sequences of `days`; returns its model card."""
    job = plan_train_encoder(lake, days, config)
    run_job(lake, job, config, force)
    return ModelStore(lake).card(config.encoder.model_name, job.run_id)


def _train(run: Run, cfg: EncoderConfig, version: str, days: list[date], reference_size: int) -> None:
    import ray.train
    from ray.data.expressions import col
    from ray.train.torch import TorchTrainer

    lake, inputs = run.lake, run.inputs
    total_rows = sum(i.rows for i in inputs)
    keep_below = min(HASH_BUCKETS, int(HASH_BUCKETS * cfg.max_train_sequences / max(total_rows, 1)) + 1)
    with run.stage("sample"):
        sample = read_validated(run, SEQUENCES, inputs, columns=TRAIN_COLUMNS).map_batches(
            _sample_and_split, batch_format="pyarrow",
            fn_kwargs={"keep_below": keep_below, "valid_fraction": cfg.valid_fraction}).materialize()
        train_ds = sample.filter(expr=col("split") == "train").materialize()
        valid_ds = sample.filter(expr=col("split") == "valid").materialize()
        counts = count_event_types(b["event_types"] for b in train_ds.iter_batches(batch_format="pyarrow"))
        vocabulary = EventVocabulary.learn(counts, min_count=cfg.min_event_count)
        n_train, n_valid = train_ds.count(), valid_ds.count()
    log.info("%s training and %s held-out sequences from %s; vocabulary %d (%d event types seen)",
             f"{n_train:,}", f"{n_valid:,}", f"{total_rows:,}", len(vocabulary), len(counts))
    if n_train == 0 or n_valid < 2:
        raise InputError(f"too few sequences to train on ({n_train} train, {n_valid} held out)")

    gpus = _gpus()
    use_gpu = gpus > 0
    # one GPU per worker: asking for more workers than GPUs would wait forever for resources
    workers = min(cfg.num_workers, gpus) if use_gpu else cfg.num_workers
    architecture = encoder_architecture(cfg.architecture, len(vocabulary))
    loop_config = {"architecture": dataclasses.asdict(architecture), "params": dataclasses.asdict(training_params(cfg)),
                   "vocabulary": vocabulary.to_json(), "max_len": cfg.max_len, "use_gpu": use_gpu}
    with run.stage("train"):
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            datasets={"train": train_ds, "valid": valid_ds},
            # every worker sees the whole sample and keeps its hash share: shards are the same in every run
            dataset_config=ray.train.DataConfig(datasets_to_split=[]),
            run_config=ray.train.RunConfig(name=f"{cfg.model_name}-{version}", storage_path=lake.path("runs", JOB, "_ray_train"),
                                           storage_filesystem=lake.fs),
        )
        result = trainer.fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        import torch

        state = torch.load(os.path.join(folder, "weights.pt"), map_location="cpu", weights_only=True)
        with open(os.path.join(folder, "training.json")) as handle:
            report = json.load(handle)
    encoder = create_encoder(architecture)
    encoder.load_state_dict(state)
    with run.stage("reference"):
        reference = reference_embeddings(encoder.eval(), vocabulary, valid_ds, cfg.max_len, reference_size)
    card = {
        "job": JOB,
        "code_version": code_version(),
        "trained_at": datetime.now(timezone.utc).isoformat(),
        "config": dataclasses.asdict(cfg),
        "objective": "contrastive views (NT-Xent) + masked event prediction + composition; no labels",
        "data": {"dates": [d.isoformat() for d in days], "input_files": [dataclasses.asdict(i) for i in inputs],
                 "input_rows": total_rows, "train_sequences": n_train, "valid_sequences": n_valid,
                 "quarantine": run.quarantine_counts(), "event_types_seen": len(counts),
                 "out_of_vocabulary_types": sorted(t for t, c in counts.items() if c < cfg.min_event_count)},
        "metrics": {k: report[k] for k in ("best_epoch", "best_valid_loss", "epochs_run", "seconds",
                                           "sequences_per_second")},
        "history": report["history"],
        "timings_s": run.timings,
        "device": "cuda" if use_gpu else "cpu",
        "workers": workers,
    }
    # the model's own commit (its card) lands before the run's manifest names it
    card["drift_reference"] = {"sequences": int(reference.shape[0]), "source": "held-out users"}
    ModelStore(lake).save(cfg.model_name, version, LoadedEncoder(encoder, vocabulary, reference=reference), card)
    run.metrics["model"] = {"name": cfg.model_name, "version": version, "dir": model_dir(cfg.model_name, version),
                            **card["metrics"]}


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: collect this worker's share of the sample, then the shared training loop."""
    import ray.train
    import torch

    from lakelens.operators.encoder.batching import pad_sequences
    from lakelens.operators.encoder.model import EncoderArchitecture
    from lakelens.operators.encoder.training import fit_encoder

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if loop_config["use_gpu"] else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    vocabulary = EventVocabulary.from_json(loop_config["vocabulary"])
    shards = {name: _worker_share(ray.train.get_dataset_shard(name), rank, world) for name in ("train", "valid")}
    padded = {name: pad_sequences(table, vocabulary, loop_config["max_len"]) for name, table in shards.items()}
    params_dict = dict(loop_config["params"])
    params = TrainingParams(**{**params_dict, "objective": ObjectiveParams(**params_dict["objective"])})
    encoder = create_encoder(EncoderArchitecture(**loop_config["architecture"]), seed=params.seed)
    result = fit_encoder(encoder, padded["train"], padded["valid"], params, device=device,
                         on_epoch=lambda record: ray.train.report(record))
    report = {"best_epoch": result.best_epoch, "best_valid_loss": result.best_valid_loss,
              "epochs_run": len(result.history), "seconds": result.seconds, "history": result.history,
              "sequences_per_second": round(result.train_sequences * len(result.history) / max(result.seconds, 1e-9), 1)}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            torch.save({k: v.cpu() for k, v in result.state_dict.items()}, os.path.join(folder, "weights.pt"))
            with open(os.path.join(folder, "training.json"), "w") as handle:
                json.dump(report, handle)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"best_valid_loss": result.best_valid_loss}, checkpoint=checkpoint)


def reference_embeddings(encoder, vocabulary: EventVocabulary, valid_ds, max_len: int, size: int) -> np.ndarray:
    """Embeddings of up to `size` held-out sequences (by transaction id): the drift reference stored with the model."""
    import torch

    from lakelens.operators.encoder.batching import pad_sequences

    table = collect_table(valid_ds, TRAIN_SCHEMA).sort_by("transaction_id").slice(0, size)
    padded = pad_sequences(table, vocabulary, max_len)
    with torch.inference_mode():
        out = encoder(*(torch.from_numpy(a) for a in (padded.tokens, padded.times, padded.lengths)))
    return out.embedding.numpy().astype(np.float32)


def _worker_share(shard, rank: int, world: int) -> pa.Table:
    """This worker's rows, by a hash of transaction_id, in transaction_id order (independent of block order)."""
    table = collect_table(shard, TRAIN_SCHEMA)
    mine = stable_bucket(table.column("transaction_id"), world) == rank
    return table.filter(pa.array(mine)).sort_by("transaction_id")


def _sample_and_split(batch: pa.Table, keep_below: int, valid_fraction: float) -> pa.Table:
    keep = stable_bucket(batch.column("transaction_id"), HASH_BUCKETS) < keep_below
    batch = batch.filter(pa.array(keep))
    held_out = held_out_users(batch.column("user_id"), valid_fraction)
    return batch.select(TRAIN_COLUMNS).append_column("split", pa.array(np.where(held_out, "valid", "train")))


def held_out_users(user_ids: pa.Array | pa.ChunkedArray, valid_fraction: float) -> np.ndarray:
    """Which users the encoder never trained on (the same rule as the split above)."""
    return stable_bucket(user_ids, HASH_BUCKETS) < int(valid_fraction * HASH_BUCKETS)


def _version(cfg: EncoderConfig, inputs: list[InputFile]) -> str:
    fingerprint = {"config": dataclasses.asdict(cfg), "code": code_version(),
                   "inputs": sorted((i.path, i.bytes) for i in inputs)}
    return f"v-{fingerprint_hash(fingerprint)}"


def _gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
