"""A lake of published behaviour-clustering results, written directly in the jobs' table formats.

The real pipeline (sequences -> encoder -> embed -> behavior-clusters) takes a long time on a
small machine. The review app (`lakelens serve`) only reads what the jobs publish, so its fast
tests and its load benchmark use this writer instead: input `transactions`, one `build-sequences`
run per day and `behavior-clusters` runs (`txn_clusters`, `clusters`, `cluster_rules`) in the
same schemas, published through the real job runner (infra/jobs.py), so manifests, commit
folders and the catalog are exactly the jobs'. Nothing here is used by the jobs themselves.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.config import LakelensConfig
from lakelens.infra.contracts import TIMESTAMP
from lakelens.infra.jobs import Job, run_job
from lakelens.infra.runs import Run, describe_inputs
from lakelens.infra.storage import Lake
from lakelens.operators.cluster_tables import CLUSTERS_SCHEMA, RULES_SCHEMA, TOP_EVENTS_TYPE, txn_clusters_schema
from lakelens.operators.sequences import SEQUENCE_SCHEMA
from lakelens.operators.timing import TIMING_COLUMNS, session_timing

EVENT_TYPES = ("home", "search", "product_view", "add_to_cart", "checkout_start", "address_change", "login",
               "password_reset", "coupon_apply", "payment_add", "visual_search", "support_chat")
PAYMENTS = np.array(["card", "wallet", "gift_card"])
EMBEDDING_DIM = 32
TOP_K = 5


def write_published_clusters(lake: Lake, transactions_per_day: int = 500, days: int = 3, clusters: int = 12,
                             runs: int = 2, events_per_sequence: int = 12, seed: int = 0,
                             start: date = date(2026, 1, 1), rows_per_file: int = 250_000) -> dict:
    """Write the world; returns {"days": [...], "partitions": [...], "flagged": [cluster_key, ...]}.

    Day k's transactions are `t{k:04d}-{i}`. Each of the last `runs` days gets a behavior-clusters
    run over the window of all days up to it (`runs` >= 1), so `cluster_history` has `runs` points
    per continuing cluster. Roughly a third of the clusters are flagged and carry two rules each.
    """
    rng = np.random.default_rng(seed)
    config = LakelensConfig()
    day_list = [start + timedelta(days=k) for k in range(days)]
    centres = rng.normal(size=(clusters, EMBEDDING_DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    fraud_rate = np.where(np.arange(clusters) % 3 == 0, rng.uniform(0.4, 0.8, clusters), rng.uniform(0.0, 0.06, clusters))
    tables: dict[date, pa.Table] = {}
    assignment: dict[date, np.ndarray] = {}
    for k, day in enumerate(day_list):
        table, cluster_of = _transactions(rng, k, day, transactions_per_day, clusters, fraud_rate)
        tables[day], assignment[day] = table, cluster_of
        for part, offset in enumerate(range(0, table.num_rows, rows_per_file)):
            lake.write_table(f"transactions/dt={day}/part-{part:05d}.parquet", table.slice(offset, rows_per_file))
        _publish_sequences(lake, config, day, table, rng, events_per_sequence, rows_per_file)
    flagged: list[str] = []
    partitions = []
    previous_sizes: dict[str, int] = {}
    for day in day_list[-runs:]:
        window = [d for d in day_list if d <= day]
        keys, sizes = _publish_clusters(lake, config, day, window, tables, assignment, centres, fraud_rate, rng,
                                        previous_sizes, rows_per_file)
        previous_sizes = sizes
        partitions.append(f"dt={day}")
        flagged = keys
    return {"days": [d.isoformat() for d in day_list], "partitions": partitions, "flagged": flagged}


def cluster_key_of(cluster: int) -> str:
    return "ck-" + hashlib.sha1(f"synthetic/{cluster}".encode()).hexdigest()[:10]


def _transactions(rng, k: int, day: date, n: int, clusters: int, fraud_rate: np.ndarray):
    cluster_of = rng.integers(-1, clusters, n)  # -1: noise
    risky = np.where(cluster_of >= 0, fraud_rate[np.clip(cluster_of, 0, None)], 0.02)
    is_fraud = rng.random(n) < risky
    labelled = rng.random(n) < 0.4
    label = np.where(labelled, is_fraud.astype(np.int8), -1)
    day_us = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1e6)
    ts = day_us + np.sort(rng.integers(0, 86_400 * 10**6, n))
    amount = np.where(is_fraud, rng.uniform(0.5, 6.0, n), rng.lognormal(3.5, 0.8, n)).round(2)
    table = pa.table({
        "transaction_id": pc.binary_join_element_wise(pa.scalar(f"t{k:04d}"), pc.cast(pa.array(np.arange(n)),
                                                                                      pa.string()), "-"),
        "user_id": pc.binary_join_element_wise(pa.scalar("u"), pc.cast(pa.array(rng.integers(0, max(n // 2, 1), n)),
                                                                       pa.string()), ""),
        "ts": pa.array(ts, TIMESTAMP),
        "amount": pa.array(amount, pa.float64()),
        "currency": pa.array(np.where(rng.random(n) < 0.1, "GBP", "EUR")),
        "status": pa.array(np.where(rng.random(n) < np.where(is_fraud, 0.5, 0.05), "declined", "approved")),
        "label": pa.array(np.where(label < 0, 0, label).astype(np.int8), pa.int8(), mask=label < 0),
        "account_age_days": pa.array(np.where(is_fraud, rng.uniform(0, 3, n), rng.uniform(5, 900, n)).round(2)),
        "txn_velocity_24h": pa.array(np.where(is_fraud, rng.integers(3, 12, n), rng.integers(0, 3, n)), pa.int64()),
        "amount_to_user_avg": pa.array(rng.lognormal(0, 0.5, n).round(3)),
        "is_new_device": pa.array(rng.random(n) < np.where(is_fraud, 0.7, 0.1)),
        "ip_country_mismatch": pa.array(rng.random(n) < np.where(is_fraud, 0.4, 0.05)),
        "payment_method": pa.array(PAYMENTS[rng.integers(0, 3, n)]),
        "hour_of_day": pa.array(((ts // 3_600_000_000) % 24).astype(np.int64)),
    })
    return table, cluster_of


def _publish_sequences(lake: Lake, config: LakelensConfig, day: date, txns: pa.Table, rng, length: int,
                       rows_per_file: int) -> None:
    n = txns.num_rows
    counts = rng.integers(max(length // 2, 1), length + 1, n).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    total = int(offsets[-1])
    row_of = np.repeat(np.arange(n), counts)
    position = np.arange(total) - offsets[row_of]
    gaps = rng.exponential(40.0, total).astype(np.float32)
    # seconds before the transaction: the events of a row end a little before it, in time order
    from_end = np.zeros(total, dtype=np.float64)
    cumulative = np.cumsum(gaps[::-1])[::-1]
    ends = cumulative[offsets[1:] - 1]
    from_end[:] = cumulative - ends[row_of] + rng.uniform(5, 60, n)[row_of]
    types = pa.array(EVENT_TYPES).take(pa.array(rng.integers(0, len(EVENT_TYPES), total)))
    event_ids = _suffixed(txns.column("transaction_id"), row_of, position)

    dwell = rng.integers(200, 30_000, total)
    log_gaps = np.log1p(np.where(position == 0, 0.0, gaps)).astype(np.float32)
    timing = session_timing(log_gaps, np.log1p(dwell / 1000.0), np.zeros(total, bool), offsets)

    def lists(values: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offsets), values)

    sequences = pa.table({
        "transaction_id": txns.column("transaction_id"), "user_id": txns.column("user_id"),
        "dt": pa.array([day.isoformat()] * n), "txn_ts": txns.column("ts"), "n_events": pa.array(counts),
        "n_events_in_window": pa.array(counts), "truncated": pa.array(np.zeros(n, bool)),
        "is_empty": pa.array(counts == 0),
        "event_ids": lists(event_ids), "event_types": lists(types),
        "log_gap_prev_s": lists(pa.array(log_gaps)),
        "log_time_to_txn_s": lists(pa.array(np.log1p(from_end).astype(np.float32))),
        "dwell_ms": lists(pa.array(dwell, pa.int64())),
        **{name: pa.array(timing[:, i]) for i, name in enumerate(TIMING_COLUMNS)},
    }, schema=SEQUENCE_SCHEMA)
    inputs = describe_inputs(lake, "transactions", [f"transactions/dt={day}"])

    def compute(run: Run) -> None:
        out = sequences.append_column("run_id", pa.array([run.run_id] * n))
        for part, offset in enumerate(range(0, n, rows_per_file)):
            run.write_table("sequences", out.slice(offset, rows_per_file), part=f"part-{part:05d}")

    run_job(lake, Job("build-sequences", f"dt={day}", {"synthetic": True, "max_len": length}, inputs, compute,
                      outputs={"sequences": SEQUENCE_SCHEMA.append(pa.field("run_id", pa.string()))}, uses_ray=False),
            config)


def _publish_clusters(lake, config, day, window, tables, assignment, centres, fraud_rate, rng, previous_sizes,
                      rows_per_file):
    txns = pa.concat_tables([tables[d] for d in window])
    cluster_of = np.concatenate([assignment[d] for d in window])
    dts = np.concatenate([[d.isoformat()] * tables[d].num_rows for d in window])
    n = txns.num_rows
    embedding = centres[np.clip(cluster_of, 0, None)] + rng.normal(0, 0.25, (n, EMBEDDING_DIM)).astype(np.float32)
    embedding[cluster_of < 0] = rng.normal(size=(int((cluster_of < 0).sum()), EMBEDDING_DIM))
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    positions = np.sort(rng.integers(0, 6, (n, TOP_K)), axis=1).astype(np.int32)
    weights = rng.dirichlet(np.ones(TOP_K), n).astype(np.float32)
    order = np.argsort(-weights, axis=1)
    weights = np.take_along_axis(weights, order, axis=1)
    positions = np.take_along_axis(positions, order, axis=1)
    flat_ids = _suffixed(txns.column("transaction_id"), np.repeat(np.arange(n), TOP_K), positions.ravel())
    top_events = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * TOP_K + 1, TOP_K, dtype=np.int32)),
        pa.StructArray.from_arrays([pa.array(positions.ravel()), flat_ids,
                                    pa.array(EVENT_TYPES).take(pa.array(rng.integers(0, 4, n * TOP_K))),
                                    pa.array(weights.ravel())],
                                   names=["position", "event_id", "event_type", "weight"])).cast(TOP_EVENTS_TYPE)
    keys = {c: cluster_key_of(c) for c in range(len(centres))}
    labels = np.asarray(txns.column("label").fill_null(-1).to_numpy(zero_copy_only=False), dtype=int)
    base = (labels == 1).sum() / max((labels >= 0).sum(), 1)
    declined = np.asarray(txns.column("status").to_numpy(zero_copy_only=False)) == "declined"
    amount = txns.column("amount").to_numpy()
    inputs = describe_inputs(lake, "transactions", [f"transactions/dt={d}" for d in window])
    sizes: dict[str, int] = {}
    flagged: list[str] = []

    def compute(run: Run) -> None:
        run_id = run.run_id
        members = pa.table({
            "transaction_id": txns.column("transaction_id"), "dt": pa.array(dts), "run_id": pa.array([run_id] * n),
            "cluster_key": pa.array([keys[c] for c in range(len(keys))] + [None]).take(
                pa.array(np.where(cluster_of >= 0, cluster_of, len(keys)))),
            "cluster_id": pa.array(cluster_of.astype(np.int64)),
            "probability": pa.array(np.where(cluster_of >= 0, rng.uniform(0.3, 1.0, n), 0.0)),
            "outlier_score": pa.array(rng.uniform(0, 1, n)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.ravel()), EMBEDDING_DIM),
            "top_events": top_events,
        }, schema=txn_clusters_schema(EMBEDDING_DIM))
        for part, offset in enumerate(range(0, n, rows_per_file)):
            run.write_table("txn_clusters", members.slice(offset, rows_per_file), part=f"part-{part:05d}")
        rows, rules = [], []
        for c, key in keys.items():
            mine = cluster_of == c
            size = int(mine.sum())
            lab = labels[mine]
            labelled, fraud = int((lab >= 0).sum()), int((lab == 1).sum())
            rate = fraud / labelled if labelled else 0.0
            lower = _wilson_lower(fraud, labelled)
            flag = bool(fraud_rate[c] > 0.3 and lower > 0.2)
            before = previous_sizes.get(key)
            status = "new" if before is None else "growing" if size > 1.1 * before else (
                "shrinking" if size < 0.9 * before else "stable")
            narrative = (f"{size:,} transactions ({size / n:.1%} of the window) whose labelled fraud rate is "
                         f"{rate:.0%} (at least {lower:.0%}), {rate / base if base else 0:.1f}x the base rate; "
                         f"their click-streams lean on {EVENT_TYPES[c % 4]} and {EVENT_TYPES[(c + 1) % 4]}.") if flag else ""
            rows.append({"run_id": run_id, "cluster_key": key, "cluster_id": c, "size": size, "labelled": labelled,
                         "fraud": fraud, "fraud_rate": rate, "fraud_rate_lower": lower,
                         "lift": rate / base if base else 0.0, "declined_share": float(declined[mine].mean()),
                         "amount": float(amount[mine].mean()), "persistence": float(rng.uniform(0.05, 0.5)),
                         "flagged": flag, "lineage_status": status, "previous_size": before,
                         "top_event_types": [EVENT_TYPES[c % 4], EVENT_TYPES[(c + 1) % 4]], "narrative": narrative,
                         # columns of the drift-aware job (ignored where the schema has none of them)
                         "novelty": float(rng.uniform(0.1, 1.0)) if before is None else float(rng.uniform(0, 0.2)),
                         "mean_outlier_score": float(rng.uniform(0, 0.5)), "distinctive_event_types": [],
                         "unseen_event_types": [], "emerging": status == "new" or (before and size > 1.5 * before)})
            sizes[key] = size
            if flag:
                flagged.append(key)
                for r, (sql, words) in enumerate([
                        ('"amount" <= 6.0 AND "txn_velocity_24h" > 2', "amount at most 6 and velocity above 2"),
                        ('"account_age_days" <= 3.0 AND "is_new_device"', "account younger than 3 days on a new device")],
                        start=1):
                    precision, coverage = float(rng.uniform(0.5, 0.95)), float(rng.uniform(0.3, 0.9))
                    rules.append({"run_id": run_id, "cluster_key": key, "rule_id": f"{key}-r{r}", "sql_predicate": sql,
                                  "description": words, "precision": precision, "coverage": coverage,
                                  "support": int(size * coverage / precision), "fraud_rate": rate,
                                  "lift": rate / base if base else 0.0,
                                  "narrative": f"{words}: {precision:.0%} of matches are in the cluster"})
        run.write_table("clusters", pa.Table.from_pylist(rows, schema=CLUSTERS_SCHEMA))
        run.write_table("cluster_rules", pa.Table.from_pylist(rules, schema=RULES_SCHEMA))

    params = {"date": day.isoformat(), "window": [d.isoformat() for d in window], "synthetic": True}
    run_job(lake, Job("behavior-clusters", f"dt={day}", params, inputs, compute, uses_ray=False,
                      outputs={"txn_clusters": txn_clusters_schema(EMBEDDING_DIM), "clusters": CLUSTERS_SCHEMA,
                               "cluster_rules": RULES_SCHEMA}), config)
    return sorted(flagged), sizes


def _suffixed(ids: pa.ChunkedArray | pa.Array, rows: np.ndarray, positions: np.ndarray) -> pa.Array:
    """`<transaction_id>-e<position>` for each (row, position): event ids, built in Arrow (millions at once)."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    return pc.binary_join_element_wise(ids.take(pa.array(rows)), pc.cast(pa.array(positions), pa.string()), "-e")


def _wilson_lower(successes: int, trials: int, z: float = 1.96) -> float:
    if trials == 0:
        return 0.0
    p = successes / trials
    centre = p + z * z / (2 * trials)
    margin = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return float(max((centre - margin) / (1 + z * z / trials), 0.0))
