"""`lakelens run behavior-clusters`: find behaviour clusters in a window of days, flag the risky ones,
and explain each with SQL rules and a narrative.

    for each day in the window: sequences (build-sequences) -> embeddings (embed)      [reused when published]
    transactions(window) --validate--+
    sequence_embeddings(window) -----+--> hybrid features
        --> full:        pHDBSCAN over the window, clusters matched to the previous run (lineage)
            incremental: earlier assignments kept, new transactions -> pHDBSCAN predict,
                         noise -> pHDBSCAN again (emerging clusters)
        --> cluster risk --> flagged --> rules (beam search over expert-feature predicates)
        --> metrics by DuckDB over the lake --> narratives
        --> txn_clusters, clusters (with lineage status), cluster_rules, state --> publish

A run is incremental when the previous published run left clustering state with the same
features and settings and its full re-cluster is less than `full_every_days` old; `--full`
forces a full re-cluster. The state (expert scaling, the model chain, centroids) lives in the
run's folder, so it is published, or not, with the run.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.config import ClusterConfig, LakelensConfig
from lakelens.infra.contracts import SOURCE_FILE, SOURCE_ROW, TRANSACTIONS
from lakelens.infra.lake_io import collect_table, read_validated
from lakelens.infra.ray_runtime import init_ray
from lakelens.infra.runs import (
    InputFile, Run, begin_run, describe_inputs, latest_per_partition, manifest_prefix, published_manifests,
    published_output,
)
from lakelens.infra.storage import Lake
from lakelens.operators.assignment import Assignment, KeyedModel, assign_to_chain, cluster_noise
from lakelens.operators.features import ExpertFeatureEncoder, ExpertFeatureSpec, hybrid_features
from lakelens.operators.hdbscan import PHDBSCAN
from lakelens.operators.lineage import GONE, LineageParams, centroids, lineage_status, match_clusters, member_overlap
from lakelens.operators.risk import RiskThresholds, cluster_risk
from lakelens.operators.rules import RuleSearch, candidate_predicates, induce_rules
from lakelens.pipelines.build_sequences import run_build_sequences
from lakelens.pipelines.embed import TABLE as EMBEDDINGS, run_embed

JOB = "behavior-clusters"
FULL, INCREMENTAL = "full", "incremental"

TXN_CLUSTERS_SCHEMA = pa.schema([
    ("transaction_id", pa.string()), ("dt", pa.string()), ("run_id", pa.string()), ("cluster_key", pa.string()),
    ("cluster_id", pa.int64()), ("probability", pa.float64()), ("outlier_score", pa.float64()),
    ("embedding", pa.list_(pa.float32(), 32)),
    ("top_events", pa.list_(pa.struct([("position", pa.int32()), ("event_id", pa.string()),
                                       ("event_type", pa.string()), ("weight", pa.float32())]))),
])
CLUSTERS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("cluster_key", pa.string()), ("cluster_id", pa.int64()), ("size", pa.int64()),
    ("labelled", pa.int64()), ("fraud", pa.int64()), ("fraud_rate", pa.float64()), ("fraud_rate_lower", pa.float64()),
    ("lift", pa.float64()), ("declined_share", pa.float64()), ("amount", pa.float64()), ("persistence", pa.float64()),
    ("flagged", pa.bool_()), ("lineage_status", pa.string()), ("previous_size", pa.int64()),
    ("top_event_types", pa.list_(pa.string())), ("narrative", pa.string()),
])
RULES_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("cluster_key", pa.string()), ("rule_id", pa.string()), ("sql_predicate", pa.string()),
    ("description", pa.string()), ("precision", pa.float64()), ("coverage", pa.float64()), ("support", pa.int64()),
    ("fraud_rate", pa.float64()), ("lift", pa.float64()), ("narrative", pa.string()),
])


def spec_of(cfg: ClusterConfig) -> ExpertFeatureSpec:
    return ExpertFeatureSpec(numeric=tuple(cfg.expert_numeric), boolean=tuple(cfg.expert_boolean),
                             categorical=tuple(cfg.expert_categorical),
                             log_scaled=tuple(c for c in ExpertFeatureSpec().log_scaled if c in cfg.expert_numeric))


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


def previous_run(lake: Lake, day: date) -> PreviousRun | None:
    earlier = [m for m in latest_per_partition(published_manifests(lake, JOB)) if m["partition"] < f"dt={day}"]
    if not earlier:
        return None
    manifest = max(earlier, key=lambda m: m["partition"])
    state_path = f"{manifest_prefix(manifest)}/state/state.json"
    return PreviousRun(manifest, lake.read_json(state_path) if lake.exists(state_path) else None)


def clustering_fingerprint(cfg: ClusterConfig, model: str) -> str:
    """What must be unchanged for new transactions to join yesterday's clusters."""
    same = {"model": model, "spec": vars(spec_of(cfg)), "weights": [cfg.expert_weight, cfg.embedding_weight],
            "hdbscan": [cfg.min_cluster_size, cfg.min_samples, cfg.cluster_selection_method, cfg.max_cluster_share]}
    return hashlib.sha256(json.dumps(same, sort_keys=True, default=list).encode()).hexdigest()[:16]


def choose_mode(day: date, cfg: ClusterConfig, fingerprint: str, previous: PreviousRun | None,
                full: bool) -> tuple[str, str]:
    """(mode, reason): incremental only when yesterday's clusters still describe today's features."""
    if full:
        return FULL, "full re-cluster requested"
    if previous is None:
        return FULL, "no earlier published run"
    if previous.state is None:
        return FULL, f"earlier run {previous.manifest['run_id']} left no clustering state"
    if previous.state["fingerprint"] != fingerprint:
        return FULL, "the encoder, expert features or clustering settings changed since the last run"
    base_day = date.fromisoformat(previous.state["base_day"])
    if (day - base_day).days >= cfg.full_every_days:
        return FULL, f"scheduled: the last full re-cluster was on {base_day} (full_every_days={cfg.full_every_days})"
    return INCREMENTAL, f"continues {previous.manifest['run_id']} (full re-cluster on {base_day})"


def run_behavior_clusters(lake: Lake, day: date, config: LakelensConfig, force: bool = False,
                          full: bool = False) -> dict[str, Any]:
    cfg = config.clusters
    days = [day - timedelta(days=k) for k in range(cfg.window_days - 1, -1, -1)]
    init_ray(config.ray)
    embed_runs = []
    for d in days:  # upstream jobs are idempotent: published days are reused, missing ones computed
        run_build_sequences(lake, d, config)
        embed_runs.append(run_embed(lake, d, config))
    inputs: list[InputFile] = []
    for d in days:
        inputs += published_output(lake, "embed", f"dt={d}", EMBEDDINGS)[1]
    inputs += describe_inputs(lake, "transactions", [f"transactions/dt={d}" for d in days])
    model = embed_runs[-1]["params"]["model"]
    previous = previous_run(lake, day)
    fingerprint = clustering_fingerprint(cfg, model)
    mode, reason = choose_mode(day, cfg, fingerprint, previous, full)
    params = {"date": day.isoformat(), "window": [d.isoformat() for d in days], "clusters": vars(cfg).copy(),
              "model": model, "mode": mode,
              "previous_run": previous and f"{previous.manifest['run_id']}/{previous.manifest['attempt_id']}"}
    run, existing = begin_run(lake, JOB, f"dt={day}", params, inputs, force=force)
    if existing is not None:
        print(f"behavior-clusters: {run.run_id} is already published (attempt {existing['attempt_id']}); nothing to do")
        return existing
    run.metrics["mode"] = {"mode": mode, "reason": reason}
    print(f"behavior-clusters: {mode} run for {day}: {reason}")
    try:
        return _execute(run, lake, cfg, inputs, previous if mode == INCREMENTAL else None, previous, fingerprint)
    except BaseException as exc:
        run.record_failure(exc)
        raise


def _execute(run: Run, lake: Lake, cfg: ClusterConfig, inputs: list[InputFile], continues: PreviousRun | None,
             previous: PreviousRun | None, fingerprint: str) -> dict[str, Any]:
    spec = spec_of(cfg)
    with run.stage("load"):
        txn_files = [i for i in inputs if i.table == "transactions"]
        columns = ["transaction_id", "ts", "amount", "status", "label", *spec.numeric, *spec.boolean, *spec.categorical]
        columns = list(dict.fromkeys(columns))
        txns = collect_table(read_validated(run, TRANSACTIONS, txn_files, columns=columns),
                             pa.schema([])).drop_columns([SOURCE_FILE, SOURCE_ROW])
        emb_tables = [lake.read_table(i.path, columns=["transaction_id", "dt", "embedding", "top_events"])
                      for i in inputs if i.table == EMBEDDINGS]
        embeddings = pa.concat_tables(emb_tables).sort_by("transaction_id")
        # one row per transaction with both sides; a transaction without a sequence cannot be clustered
        keep = pc.is_in(txns.column("transaction_id"), value_set=embeddings.column("transaction_id"))
        txns = txns.filter(keep).sort_by("transaction_id")
        embeddings = embeddings.filter(pc.is_in(embeddings.column("transaction_id"), value_set=txns.column("transaction_id")))
        run.metrics["load"] = {"transactions": txns.num_rows, "without_embedding": int(pc.sum(pc.invert(keep)).as_py() or 0)}
    n = txns.num_rows
    if n < cfg.min_cluster_size:
        raise ValueError(f"only {n} transactions with embeddings in the window; need at least {cfg.min_cluster_size}")

    with run.stage("features"):
        encoder = (ExpertFeatureEncoder.from_dict(continues.state["encoder"]) if continues
                   else ExpertFeatureEncoder(spec).fit(txns))
        embedding = np.asarray(embeddings.column("embedding").combine_chunks().values, dtype=np.float32).reshape(n, -1)
        features = hybrid_features(encoder.transform(txns), embedding, cfg.expert_weight, cfg.embedding_weight)
    ids = txns.column("transaction_id")
    with run.stage("cluster"):
        if continues:
            assignment, chain = _cluster_incremental(run, lake, cfg, ids, features, continues)
        else:
            assignment, chain = _cluster_full(run, lake, cfg, ids, features, previous)
        cluster_keys = sorted({k for k in assignment.keys if k is not None})
        number = {key: i for i, key in enumerate(cluster_keys)}
        labels = np.array([number[k] if k is not None else -1 for k in assignment.keys], dtype=np.int64)
        keys = dict(enumerate(cluster_keys))
    with run.stage("risk"):
        label = pc.fill_null(pc.cast(txns.column("label"), pa.int64()), -1).to_numpy(zero_copy_only=False)
        declined = pc.equal(txns.column("status"), "declined").to_numpy(zero_copy_only=False)
        amount = pc.cast(txns.column("amount"), pa.float64()).to_numpy(zero_copy_only=False)
        thresholds = RiskThresholds(cfg.min_flag_size, cfg.min_labelled, cfg.min_fraud_rate_lower, cfg.min_lift)
        persistence = np.array([assignment.persistence.get(k, 0.0) for k in cluster_keys])
        risk = cluster_risk(labels, label, declined, amount, persistence, thresholds)
        txn_clusters = pa.table({
            "transaction_id": ids, "dt": embeddings.column("dt"),
            "run_id": pa.array([run.run_id] * n), "cluster_key": pa.array(assignment.keys.tolist(), pa.string()),
            "cluster_id": pa.array(labels), "probability": pa.array(assignment.probabilities),
            "outlier_score": pa.array(assignment.outlier_scores), "embedding": embeddings.column("embedding"),
            "top_events": embeddings.column("top_events"),
        }, schema=TXN_CLUSTERS_SCHEMA)
        lake.write_table(f"{run.table_dir('txn_clusters')}/part-00000.parquet", txn_clusters)

    with run.stage("rules"):
        rules = _rules(run, lake, cfg, txns, labels, risk, keys)
    previous_sizes = _previous_sizes(lake, previous)
    clusters = _clusters_table(run, cfg, risk, keys, labels, embeddings, rules, n, previous_sizes)
    lake.write_table(f"{run.table_dir('clusters')}/part-00000.parquet", clusters)
    lake.write_table(f"{run.table_dir('cluster_rules')}/part-00000.parquet", rules)
    _save_state(run, lake, fingerprint, encoder, chain, features, labels, keys,
                continues.state["base_day"] if continues else run.params["date"])
    statuses = pc.value_counts(clusters.column("lineage_status")).to_pylist()
    run.metrics["clusters"] = {"clusters": risk.num_rows, "flagged": int(pc.sum(risk.column("flagged")).as_py() or 0),
                               "noise_share": round(float((labels < 0).mean()), 4), "rules": rules.num_rows,
                               "lineage": {s["values"]: s["counts"] for s in statuses}}
    manifest = run.commit(expected_tables={"txn_clusters": TXN_CLUSTERS_SCHEMA, "clusters": CLUSTERS_SCHEMA,
                                           "cluster_rules": RULES_SCHEMA})
    m = manifest["metrics"]["clusters"]
    print(f"behavior-clusters: {n:,} transactions -> {m['clusters']} clusters ({m['noise_share']:.0%} noise), "
          f"{m['flagged']} flagged, {m['rules']} rules; lineage {m['lineage']}; timings {manifest['timings_s']}")
    return manifest


def _new_model(cfg: ClusterConfig, window_size: int) -> PHDBSCAN:
    max_size = max(cfg.min_cluster_size, int(cfg.max_cluster_share * window_size)) if cfg.max_cluster_share > 0 else 0
    return PHDBSCAN(min_cluster_size=cfg.min_cluster_size, min_samples=cfg.min_samples,
                    cluster_selection_method=cfg.cluster_selection_method, max_cluster_size=max_size)


def _lineage_params(cfg: ClusterConfig) -> LineageParams:
    return LineageParams(cfg.lineage_min_overlap, cfg.lineage_max_centroid_distance, cfg.lineage_size_tolerance)


def _cluster_full(run: Run, lake: Lake, cfg: ClusterConfig, ids: pa.ChunkedArray, features: np.ndarray,
                  previous: PreviousRun | None) -> tuple[Assignment, list[dict[str, Any]]]:
    """pHDBSCAN over the whole window; clusters that continue the previous run's keep their keys."""
    model = _new_model(cfg, features.shape[0]).fit(features)
    labels = model.labels_
    keys = _cluster_keys(ids, labels, run.partition)
    if previous is not None:
        before = previous.table(lake, "txn_clusters", ["transaction_id", "cluster_key"])
        overlap = member_overlap(before.column("transaction_id"), before.column("cluster_key"), ids, labels)
        keys.update(match_clusters(overlap, _previous_centroids(lake, previous), centroids(features, labels),
                                   _lineage_params(cfg)))
    run.metrics["assignment"] = {"reclustered": int(features.shape[0]), "clusters": len(keys)}
    link = _save_model(run, lake, "model-base", model, keys)
    assignment = Assignment(np.array([keys.get(int(c)) for c in labels], dtype=object), model.probabilities_,
                            model.outlier_scores_, {k: float(model.cluster_persistence_[c]) for c, k in keys.items()})
    return assignment, [link]


def _cluster_incremental(run: Run, lake: Lake, cfg: ClusterConfig, ids: pa.ChunkedArray, features: np.ndarray,
                         continues: PreviousRun) -> tuple[Assignment, list[dict[str, Any]]]:
    """Earlier assignments stay; new transactions go through the model chain; noise is clustered again."""
    chain_refs = list(continues.state["chain"])
    chain = [KeyedModel(PHDBSCAN.load(lake, ref["dir"]), {int(c): k for c, k in ref["keys"].items()})
             for ref in chain_refs]
    before = continues.table(lake, "txn_clusters", ["transaction_id", "cluster_key", "probability", "outlier_score"])
    position = pc.index_in(ids, value_set=before.column("transaction_id")).to_numpy(zero_copy_only=False)
    carried = ~np.isnan(position.astype(np.float64))
    at = position[carried].astype(np.int64)
    n = features.shape[0]
    keys = np.full(n, None, dtype=object)
    probabilities, outlier_scores = np.zeros(n), np.ones(n)
    keys[carried] = np.array(before.column("cluster_key").to_pylist(), dtype=object)[at]
    probabilities[carried] = before.column("probability").to_numpy()[at]
    outlier_scores[carried] = before.column("outlier_score").to_numpy()[at]
    new = np.flatnonzero(~carried)
    predicted = assign_to_chain(features[new], chain)
    keys[new], probabilities[new], outlier_scores[new] = predicted.keys, predicted.probabilities, predicted.outlier_scores
    assignment = Assignment(keys, probabilities, outlier_scores, predicted.persistence)
    pool = int(assignment.noise.sum())
    emerging = cluster_noise(features, assignment, _new_model(cfg, n), cfg.min_cluster_size,
                             lambda rows, labels: _cluster_keys(ids.take(pa.array(rows)), labels, run.partition))
    if emerging is not None:
        chain_refs.append(_save_model(run, lake, "model-emerging", emerging.model, emerging.keys))
    run.metrics["assignment"] = {
        "carried": int(carried.sum()), "new": int(new.size), "joined_existing": int((~predicted.noise).sum()),
        "noise_pool": pool, "emerging_clusters": len(emerging.keys) if emerging else 0,
        "emerging_members": pool - int(assignment.noise.sum()),
    }
    return assignment, chain_refs


def _save_model(run: Run, lake: Lake, name: str, model: PHDBSCAN, keys: dict[int, str]) -> dict[str, Any]:
    directory = f"{run.prefix}/state/{name}"
    model.save(lake, directory)
    return {"dir": directory, "keys": {str(c): k for c, k in keys.items()}}


def _save_state(run: Run, lake: Lake, fingerprint: str, encoder: ExpertFeatureEncoder, chain: list[dict[str, Any]],
                features: np.ndarray, labels: np.ndarray, keys: dict[int, str], base_day: str) -> None:
    """What the next day's run needs to continue this one; written before the manifest, so published with it."""
    means = centroids(features, labels)
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array([keys[c] for c in means], dtype=str),
             centroids=np.array([means[c] for c in means]).reshape(len(means), features.shape[1]))
    lake.write_bytes(f"{run.prefix}/state/centroids.npz", buffer.getvalue())
    lake.write_json(f"{run.prefix}/state/state.json", {
        "fingerprint": fingerprint, "base_day": base_day, "encoder": encoder.to_dict(), "chain": chain,
        "centroids": f"{run.prefix}/state/centroids.npz"})


def _previous_centroids(lake: Lake, previous: PreviousRun) -> dict[str, np.ndarray]:
    if previous.state is None:
        return {}
    arrays = np.load(io.BytesIO(lake.read_bytes(previous.state["centroids"])))
    return dict(zip(arrays["keys"].tolist(), arrays["centroids"]))


def _previous_sizes(lake: Lake, previous: PreviousRun | None) -> dict[str, int]:
    if previous is None:
        return {}
    table = previous.table(lake, "clusters", ["cluster_key", "size", "lineage_status"]).to_pylist()
    return {r["cluster_key"]: r["size"] for r in table if r["lineage_status"] != GONE}


def _cluster_keys(transaction_ids: pa.Array, labels: np.ndarray, partition: str) -> dict[int, str]:
    """A key per cluster from its smallest member id: the same clustering gives the same keys."""
    firsts = pa.table({"cluster": labels, "transaction_id": transaction_ids}).filter(
        pa.array(labels >= 0)).group_by("cluster").aggregate([("transaction_id", "min")])
    return {int(c): "ck-" + hashlib.sha1(f"{partition}/{first}".encode()).hexdigest()[:10]
            for c, first in zip(firsts["cluster"].to_pylist(), firsts["transaction_id_min"].to_pylist())}


def _rules(run: Run, lake: Lake, cfg: ClusterConfig, txns: pa.Table, labels: np.ndarray, risk: pa.Table,
           keys: dict[int, str]) -> pa.Table:
    spec = spec_of(cfg)
    candidates = candidate_predicates(txns, spec)
    search = RuleSearch(max_conditions=cfg.max_conditions, max_rules=cfg.max_rules)
    rows = []
    flagged = [int(c) for c, f in zip(risk.column("cluster_id").to_pylist(), risk.column("flagged").to_pylist()) if f]
    for cluster in flagged:
        for number, fit in enumerate(induce_rules(txns, labels == cluster, candidates, search)):
            rows.append({"cluster_key": keys[cluster], "rule_id": f"{keys[cluster]}-r{number + 1}", "fit": fit})
    if not rows:
        return RULES_SCHEMA.empty_table()
    measured = _measure_rules_in_duckdb(run, lake, rows)
    return pa.Table.from_pylist([{
        "run_id": run.run_id, "cluster_key": r["cluster_key"], "rule_id": r["rule_id"],
        "sql_predicate": r["fit"].rule.sql(), "description": r["fit"].rule.words(), **measured[r["rule_id"]],
        "narrative": rule_narrative(r["fit"].rule.words(), measured[r["rule_id"]]),
    } for r in rows], schema=RULES_SCHEMA)


def rule_narrative(description: str, m: dict[str, float]) -> str:
    return (f"Transactions with {description}: {m['support']:,} in the window, {m['precision']:.0%} of them in this "
            f"cluster, covering {m['coverage']:.0%} of it; labelled fraud rate {m['fraud_rate']:.0%} "
            f"({m['lift']:.1f}x the base rate).")


def _measure_rules_in_duckdb(run: Run, lake: Lake, rows: list[dict]) -> dict[str, dict[str, float]]:
    """Precision, coverage, support, fraud rate and lift of each rule, by DuckDB running its SQL over the lake."""
    con = lake.duckdb_connect()
    window = [i.path for i in run.inputs if i.table == "transactions"]
    files = ", ".join("'" + lake.uri(p).replace("'", "''") + "'" for p in window)
    members = lake.uri(run.table_dir("txn_clusters")) + "/*.parquet"
    con.execute(f"CREATE VIEW transactions AS SELECT * FROM read_parquet([{files}], union_by_name = true)")
    con.execute(f"CREATE VIEW members AS SELECT transaction_id, cluster_key FROM read_parquet('{members}')")
    base = con.execute("SELECT count(*) FILTER (label = 1) / greatest(count(label), 1) FROM transactions").fetchone()[0]
    out = {}
    for r in rows:
        key = r["cluster_key"]
        matched, in_cluster, labelled, fraud, cluster_size = con.execute(f"""
            SELECT count(*), count(*) FILTER (m.cluster_key = ?), count(t.label), count(*) FILTER (t.label = 1),
                   (SELECT count(*) FROM members WHERE cluster_key = ?)
            FROM transactions t LEFT JOIN members m USING (transaction_id)
            WHERE {r['fit'].rule.sql()}""", [key, key]).fetchone()
        rate = fraud / labelled if labelled else 0.0
        out[r["rule_id"]] = {"precision": in_cluster / matched if matched else 0.0,
                             "coverage": in_cluster / cluster_size if cluster_size else 0.0, "support": matched,
                             "fraud_rate": rate, "lift": rate / base if base else 0.0}
    return out


def _top_event_types(embeddings: pa.Table, labels: np.ndarray, k: int = 3) -> dict[int, list[str]]:
    """Per cluster, the event types with the most attention weight summed over its members."""
    tops = embeddings.column("top_events").combine_chunks()
    flat = pc.list_flatten(tops)
    if len(flat) == 0:
        return {}
    owner = labels[pc.list_parent_indices(tops).to_numpy()]
    sums = pa.table({"cluster": owner, "event_type": flat.field("event_type"), "weight": flat.field("weight")}).filter(
        pa.array(owner >= 0)).group_by(["cluster", "event_type"]).aggregate([("weight", "sum")])
    ranked = sums.sort_by([("cluster", "ascending"), ("weight_sum", "descending"), ("event_type", "ascending")])
    out: dict[int, list[str]] = {}
    for cluster, event_type in zip(ranked["cluster"].to_pylist(), ranked["event_type"].to_pylist()):
        chosen = out.setdefault(int(cluster), [])
        if len(chosen) < k:
            chosen.append(event_type)
    return out


def _clusters_table(run: Run, cfg: ClusterConfig, risk: pa.Table, keys: dict[int, str], labels: np.ndarray,
                    embeddings: pa.Table, rules: pa.Table, n: int, previous_sizes: dict[str, int]) -> pa.Table:
    """One row per cluster of this run, plus a `gone` row for each of the previous run's that did not continue."""
    rule_rows = rules.to_pylist()
    top_events = _top_event_types(embeddings, labels)
    rows = []
    for r in risk.to_pylist():
        cluster, key = r["cluster_id"], keys[r["cluster_id"]]
        top = top_events.get(cluster, [])
        mine = [x for x in rule_rows if x["cluster_key"] == key]
        before = previous_sizes.get(key)
        status = lineage_status(before, r["size"], cfg.lineage_size_tolerance)
        rows.append({"run_id": run.run_id, "cluster_key": key, **r, "lineage_status": status, "previous_size": before,
                     "top_event_types": top,
                     "narrative": narrative(r, n, top, mine, status, before) if r["flagged"] else ""})
    continuing = set(keys.values())
    for key, before in sorted(previous_sizes.items()):
        if key not in continuing:
            rows.append({"run_id": run.run_id, "cluster_key": key, "cluster_id": None, "size": 0, "labelled": 0,
                         "fraud": 0, "fraud_rate": 0.0, "fraud_rate_lower": 0.0, "lift": 0.0, "declined_share": 0.0,
                         "amount": 0.0, "persistence": 0.0, "flagged": False, "lineage_status": GONE,
                         "previous_size": before, "top_event_types": [], "narrative": ""})
    return pa.Table.from_pylist(rows, schema=CLUSTERS_SCHEMA)


def narrative(risk: dict[str, Any], total: int, top_events: list[str], rules: list[dict[str, Any]],
              status: str, previous_size: int | None) -> str:
    """Plain words for a reviewer, from the cluster's numbers, its typical events and its rules."""
    parts = [
        f"{risk['size']:,} transactions ({risk['size'] / max(total, 1):.1%} of the window) behave alike.",
        f"Of the {risk['labelled']:,} already labelled, {risk['fraud']:,} are confirmed fraud "
        f"({risk['fraud_rate']:.0%}; at least {risk['fraud_rate_lower']:.0%} at 95% confidence, "
        f"{risk['lift']:.1f}x the window's rate).",
        f"{risk['declined_share']:.0%} were declined; together they moved {risk['amount']:,.2f}.",
    ]
    if top_events:
        parts.append("Their click-streams are dominated by " + ", ".join(e.replace("_", " ") for e in top_events) + ".")
    if rules:
        best = max(rules, key=lambda x: x["precision"])
        parts.append(f"Most of them can be found with: {best['description']} "
                     f"(matches {best['support']:,}, {best['precision']:.0%} of them in this cluster, "
                     f"{best['coverage']:.0%} of the cluster).")
    if previous_size is None:
        parts.append("The cluster is new in this run.")
    else:
        parts.append(f"It continues a cluster of {previous_size:,} in the previous run ({status}).")
    return " ".join(parts)
