"""The training loop: seeded, early-stopped on held-out sequences, data-parallel when torch.distributed is up.

It is plain torch over in-memory arrays, so it runs in a test without Ray; the train-encoder
pipeline calls it inside Ray Train workers, where each worker holds its shard of the sample.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from lakelens.operators.encoder.batching import PaddedSequences
from lakelens.operators.encoder.model import TimeAttentionBiLSTM
from lakelens.operators.encoder.objective import ObjectiveParams, Pretraining, augment, composition_targets

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainingParams:
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 4  # epochs without a better validation loss before stopping
    min_delta: float = 1e-3
    seed: int = 0
    objective: ObjectiveParams = field(default_factory=ObjectiveParams)


@dataclass
class TrainingResult:
    state_dict: dict[str, torch.Tensor]  # the encoder at its best validation epoch
    best_epoch: int
    best_valid_loss: float
    history: list[dict[str, float]]
    seconds: float
    train_sequences: int  # over all workers
    valid_sequences: int


def fit_encoder(
    encoder: TimeAttentionBiLSTM,
    train: PaddedSequences,
    valid: PaddedSequences,
    params: TrainingParams,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainingResult:
    """Train `encoder` in place on this worker's shard; every worker returns the same result."""
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    device = torch.device(device)
    torch.manual_seed(params.seed)
    model = Pretraining(encoder, params.objective).to(device)
    wrapped = model
    if distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)

    n_train = _all_reduce(float(len(train)), "max", distributed, device)
    n_total_train = _all_reduce(float(len(train)), "sum", distributed, device)
    n_total_valid = _all_reduce(float(len(valid)), "sum", distributed, device)
    if n_total_train == 0 or n_total_valid == 0:
        raise ValueError(f"training needs sequences in both splits (train {n_total_train:.0f}, valid {n_total_valid:.0f})")
    # every worker takes the same number of steps, or data-parallel gradient exchange would hang
    steps = max(1, math.ceil(n_train / params.batch_size))
    rng = np.random.default_rng([params.seed, rank])
    generator = torch.Generator(device=device).manual_seed(params.seed * 1000 + rank)

    best = (math.inf, -1, copy.deepcopy(encoder.state_dict()))
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(params.epochs):
        model.train()
        order = _epoch_order(len(train), steps * params.batch_size, rng)
        sums = {"loss": 0.0, "contrastive": 0.0, "masked_event": 0.0, "composition": 0.0}
        for step in range(steps):
            rows = order[step * params.batch_size:(step + 1) * params.batch_size]
            losses = wrapped(*_views(train.take(rows), encoder.config.vocab_size, params.objective, generator, device))
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            for key in sums:
                sums[key] += float(losses[key].detach())
        valid_loss = _validation_loss(model, valid, params, device, distributed)
        record = {"epoch": epoch, "valid_loss": valid_loss, "seconds": round(time.perf_counter() - started, 3),
                  **{f"train_{k}": _all_reduce(v / steps, "sum", distributed, device) / _world(distributed)
                     for k, v in sums.items()}}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        improved = valid_loss < best[0] - params.min_delta
        if improved:
            best = (valid_loss, epoch, copy.deepcopy(encoder.state_dict()))
        if rank == 0:  # workers agree on every number here; one line per epoch, not one per worker
            _log_epoch(record, params.epochs, best[0], best[1])
        if not improved and epoch - best[1] >= params.patience:
            if rank == 0:
                log.info("early stop after epoch %d/%d: best epoch %d", epoch + 1, params.epochs, best[1] + 1,
                         extra={"progress": {"done": epoch + 1, "total": params.epochs}})
            break
    encoder.load_state_dict(best[2])
    return TrainingResult(best[2], best[1], best[0], history, round(time.perf_counter() - started, 3),
                          int(n_total_train), int(n_total_valid))


def _log_epoch(record: dict[str, float], epochs: int, best_loss: float, best_epoch: int) -> None:
    done = int(record["epoch"]) + 1
    log.info("epoch %d/%d: train loss %.4f, valid loss %.4f, best %.4f (epoch %d)", done, epochs,
             record["train_loss"], record["valid_loss"], best_loss, best_epoch + 1,
             extra={"progress": {"done": done, "total": epochs}, "elapsed_s": record["seconds"],
                    "metrics": {"train_loss": record["train_loss"], "valid_loss": record["valid_loss"],
                                "best_valid_loss": best_loss, "best_epoch": best_epoch}})  # 0-based, as in history


@torch.no_grad()
def _validation_loss(model: Pretraining, valid: PaddedSequences, params: TrainingParams, device: torch.device,
                     distributed: bool) -> float:
    """Mean loss over fixed views of the held-out split, so epochs compare like for like."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(params.seed + 7919)
    total, count = 0.0, 0.0
    for lo in range(0, len(valid), params.batch_size):
        rows = np.arange(lo, min(lo + params.batch_size, len(valid)))
        if len(rows) < 2:
            continue  # a contrastive batch needs negatives
        losses = model(*_views(valid.take(rows), model.encoder.config.vocab_size, params.objective, generator, device))
        total += float(losses["loss"]) * len(rows)
        count += len(rows)
    return _all_reduce(total, "sum", distributed, device) / max(_all_reduce(count, "sum", distributed, device), 1.0)


def _views(batch: PaddedSequences, vocab_size: int, objective: ObjectiveParams, generator: torch.Generator,
           device: torch.device):
    tokens = torch.from_numpy(batch.tokens).to(device)
    times = torch.from_numpy(batch.times).to(device)
    lengths = torch.from_numpy(batch.lengths).to(device)
    session = torch.from_numpy(batch.session).to(device)
    return (augment(tokens, times, lengths, objective, generator),
            augment(tokens, times, lengths, objective, generator),
            composition_targets(tokens, times, lengths, vocab_size, objective.recent_s, session))


def _epoch_order(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A shuffled pass over n rows, wrapped around to `size` rows."""
    reps = math.ceil(size / max(n, 1))
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:size]


def _world(distributed: bool) -> int:
    return dist.get_world_size() if distributed else 1


def _all_reduce(value: float, op: str, distributed: bool, device: torch.device) -> float:
    if not distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return float(tensor.item())
