"""`lakelens run behavior-clusters`: find behaviour clusters in a window of days, flag the risky ones,
and explain each with SQL rules and a narrative.

    for each day in the window: sequences (build-sequences) -> embeddings (embed)      [reused when published]
    transactions(window) --validate--+
    sequence_embeddings(window) -----+--> hybrid features
        --> full:        pHDBSCAN over the window, its noise -> pHDBSCAN again (finer), clusters matched to the
                         previous run (lineage)
            incremental: earlier assignments kept, new transactions -> pHDBSCAN predict,
                         noise -> pHDBSCAN again, finer (emerging clusters, or joins to existing ones)
        --> cluster risk --> flagged --> rules (beam search over expert-feature predicates)
        --> rule metrics by DuckDB over the lake --> narratives
        --> txn_clusters, clusters (with lineage status), cluster_rules, clustering state --> publish

A run is incremental when the previous published run left clustering state with the same
features and settings and its full re-cluster is less than `full_every_days` old; `--full`
forces a full re-cluster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.catalog import measure_rules
from lakelens.infra.clustering_state import ClusteringStateStore, PreviousRun
from lakelens.infra.config import ClusterConfig, LakelensConfig
from lakelens.infra.contracts import SOURCE_FILE, SOURCE_ROW, TRANSACTIONS
from lakelens.infra.errors import InputError
from lakelens.infra.jobs import Job, run_job
from lakelens.infra.lake_io import collect_table, read_validated
from lakelens.infra.model_store import ModelStore
from lakelens.infra.runs import InputFile, Run, describe_inputs, fingerprint_hash, published_output
from lakelens.infra.storage import Lake
from lakelens.operators.assignment import Assignment, KeyedModel, assign_to_chain, cluster_noise
from lakelens.operators.cluster_tables import (
    CLUSTERS_SCHEMA, RULES_SCHEMA, cluster_keys, clusters_table, rules_table, txn_clusters_schema,
)
from lakelens.operators.encoder.checkpoint import LoadedEncoder
from lakelens.operators.features import (
    REGULARITY_COLUMNS, ExpertFeatureEncoder, ExpertFeatureSpec, hybrid_features, timing_block, unseen_signature,
)
from lakelens.infra.feature_blocks import write_feature_blocks
from lakelens.operators.hdbscan import PHDBSCAN
from lakelens.operators.hdbscan.sharded import cluster_node_memory, fit_sharded_blocks
from lakelens.operators.memory_plan import GiB, MemoryCap, MemoryPlanError, plan_fit, single_node_peak
from lakelens.operators.lineage import GONE, LineageParams, centroids, match_clusters, member_overlap
from lakelens.operators.risk import RiskThresholds, cluster_risk
from lakelens.operators.rules import RuleSearch, candidate_predicates, induce_rules
from lakelens.operators.timing import TIMING_COLUMNS
from lakelens.pipelines.build_sequences import run_build_sequences
from lakelens.pipelines.embed import TABLE as EMBEDDINGS, run_embed, with_advice

JOB = "behavior-clusters"
FULL, INCREMENTAL = "full", "incremental"
log = logging.getLogger(__name__)

__all__ = ["JOB", "FULL", "INCREMENTAL", "PreviousRun", "choose_mode", "plan_behavior_clusters",
           "run_behavior_clusters"]


def spec_of(cfg: ClusterConfig) -> ExpertFeatureSpec:
    return ExpertFeatureSpec(numeric=tuple(cfg.expert_numeric), boolean=tuple(cfg.expert_boolean),
                             categorical=tuple(cfg.expert_categorical),
                             log_scaled=tuple(c for c in ExpertFeatureSpec().log_scaled if c in cfg.expert_numeric))


def clustering_fingerprint(cfg: ClusterConfig, model: str) -> str:
    """What must be unchanged for new transactions to join yesterday's clusters."""
    return fingerprint_hash({"model": model, "spec": vars(spec_of(cfg)), "weights": [cfg.expert_weight,
                             cfg.embedding_weight, cfg.unseen_weight, cfg.timing_weight], "hdbscan": [cfg.min_cluster_size, cfg.min_samples,
                                                                cfg.cluster_selection_method, cfg.max_cluster_share]},
                            length=16)


def choose_mode(day: date, cfg: ClusterConfig, fingerprint: str, previous: PreviousRun | None,
                full: bool) -> tuple[str, str]:
    """(mode, reason): incremental only when yesterday's clusters still describe today's features."""
    if full:
        return FULL, "full re-cluster requested"
    if previous is None:
        return FULL, "no earlier published run"
    if previous.state is None:
        return FULL, f"earlier run {previous.manifest['run_id']} left no clustering state"
    if previous.state.get("chain") == []:
        return FULL, (f"earlier run {previous.manifest['run_id']} was sharded: its model stayed with the shards, "
                      "so new transactions cannot be predicted into its clusters")
    if previous.state["fingerprint"] != fingerprint:
        return FULL, "the encoder, expert features or clustering settings changed since the last run"
    base_day = date.fromisoformat(previous.state["base_day"])
    if (day - base_day).days >= cfg.full_every_days:
        return FULL, f"scheduled: the last full re-cluster was on {base_day} (full_every_days={cfg.full_every_days})"
    return INCREMENTAL, f"continues {previous.manifest['run_id']} (full re-cluster on {base_day})"


def plan_behavior_clusters(lake: Lake, day: date, config: LakelensConfig, full: bool = False) -> Job:
    """Runs (or reuses) every upstream day of the window, then declares the clustering run."""
    cfg = config.clusters
    days = [day - timedelta(days=k) for k in range(cfg.window_days - 1, -1, -1)]
    embed_runs = []
    for d in days:  # upstream jobs are idempotent: published days are reused, missing ones computed
        run_build_sequences(lake, d, config)
        embed_runs.append(run_embed(lake, d, config))
    inputs: list[InputFile] = []
    for d in days:
        inputs += published_output(lake, "embed", f"dt={d}", EMBEDDINGS)[1]
    inputs += describe_inputs(lake, "transactions", [f"transactions/dt={d}" for d in days])
    model = embed_runs[-1]["params"]["model"]
    name, version = model.split("/", 1)
    encoder = ModelStore(lake).load(name, version, LoadedEncoder)
    embedding_dim = encoder.card["architecture"]["embedding_dim"]
    states = ClusteringStateStore(lake)
    previous = states.previous_run(JOB, day)
    fingerprint = clustering_fingerprint(cfg, model)
    mode, reason = choose_mode(day, cfg, fingerprint, previous, full)
    # where the fit runs does not change its labels, so it is not part of the run's identity
    clusters = {k: v for k, v in vars(cfg).items() if k not in ("shards", "shard_above", "driver_memory_gb")}
    params = {"date": day.isoformat(), "window": [d.isoformat() for d in days], "clusters": clusters,
              "model": model, "mode": mode,
              "previous_run": previous and f"{previous.manifest['run_id']}/{previous.manifest['attempt_id']}"}

    def compute(run: Run) -> None:
        run.metrics["mode"] = {"mode": mode, "reason": reason}
        log.info("%s run for %s: %s", mode, day, reason)
        ClusteringRun(run, cfg, states, fingerprint, previous, continues=mode == INCREMENTAL,
                      embedding_dim=embedding_dim, known_event_types=set(encoder.vocabulary.tokens)).compute()
        # the day's drift: the embed run's measures, and how many new transactions fit no cluster
        assignment = run.metrics["assignment"]
        refused = assignment.get("refused_by_gate", 0) / assignment["new"] if assignment.get("new") else None
        run.metrics["drift"] = with_advice({**{k: v for k, v in embed_runs[-1]["metrics"].get("drift", {}).items()
                                               if k not in ("retrain_recommended", "reasons")},
                                            "refused_share": refused}, config.drift)

    def describe(m: dict[str, Any]) -> str:
        c = m["metrics"]["clusters"]
        return (f"{m['metrics']['mode']['mode']}: {c['clusters']} clusters ({c['noise_share']:.0%} noise), "
                f"{c['flagged']} flagged, {c['rules']} rules; lineage {c['lineage']}")

    return Job(JOB, f"dt={day}", params, inputs, compute, describe=describe,
               outputs={"txn_clusters": txn_clusters_schema(embedding_dim), "clusters": CLUSTERS_SCHEMA,
                        "cluster_rules": RULES_SCHEMA})


def run_behavior_clusters(lake: Lake, day: date, config: LakelensConfig, force: bool = False,
                          full: bool = False) -> dict[str, Any]:
    return run_job(lake, plan_behavior_clusters(lake, day, config, full), config, force)


@dataclass(frozen=True)
class FitOutcome:
    """Per point of the window: its cluster (-1 noise), membership probability and GLOSH score; per cluster
    its persistence."""

    labels: np.ndarray
    probabilities: np.ndarray
    outlier_scores: np.ndarray
    persistence: np.ndarray


@dataclass
class ClusteringRun:
    """One attempt's compute: load the window, build features, cluster, score, explain, publish tables."""

    run: Run
    cfg: ClusterConfig
    states: ClusteringStateStore
    fingerprint: str
    previous: PreviousRun | None
    continues: bool
    embedding_dim: int
    known_event_types: set[str]

    def compute(self) -> None:
        run, cfg = self.run, self.cfg
        txns, embeddings = self._load()
        with run.stage("features"):
            encoder = (ExpertFeatureEncoder.from_dict(self.previous.state["encoder"]) if self.continues
                       else ExpertFeatureEncoder(spec_of(cfg)).fit(txns))
            embedding = np.asarray(embeddings.column("embedding").combine_chunks().values,
                                   dtype=np.float32).reshape(txns.num_rows, -1)
            features = hybrid_features(encoder.transform(txns), embedding, cfg.expert_weight, cfg.embedding_weight)
            if cfg.unseen_weight > 0:  # new event types the encoder cannot tell apart (operators/features.py)
                signature = unseen_signature(embeddings.column("unseen_event_types").to_pylist())
                features = np.hstack([features, cfg.unseen_weight * signature]).astype(np.float32)
            if cfg.timing_weight > 0:  # how regular each session is: scripts apart from people
                regularity = np.stack([embeddings.column(c).to_numpy() for c in REGULARITY_COLUMNS], axis=1)
                features = np.hstack([features, cfg.timing_weight * timing_block(regularity)]).astype(np.float32)
        ids = txns.column("transaction_id")
        with run.stage("cluster"):
            assignment, chain = (self._cluster_incremental(ids, features) if self.continues
                                 else self._cluster_full(ids, features))
            keys = dict(enumerate(sorted({k for k in assignment.keys if k is not None})))
            number = {key: i for i, key in keys.items()}
            labels = np.array([number[k] if k is not None else -1 for k in assignment.keys], dtype=np.int64)
        with run.stage("risk"):
            risk = self._risk(txns, labels, assignment, keys)
            run.write_table("txn_clusters", pa.table({
                "transaction_id": ids, "dt": embeddings.column("dt"), "run_id": pa.array([run.run_id] * len(labels)),
                "cluster_key": pa.array(assignment.keys.tolist(), pa.string()), "cluster_id": pa.array(labels),
                "probability": pa.array(assignment.probabilities), "outlier_score": pa.array(assignment.outlier_scores),
                "embedding": embeddings.column("embedding"), "top_events": embeddings.column("top_events"),
            }, schema=txn_clusters_schema(self.embedding_dim)))
        with run.stage("rules"):
            rules = self._rules(txns, labels, risk, keys)
        means = centroids(features, labels)
        clusters = clusters_table(run.run_id, risk, keys, labels, embeddings.column("top_events"), rules,
                                  self._previous_sizes(), cfg.lineage_size_tolerance, self._novelty(means),
                                  assignment.outlier_scores, self.known_event_types, cfg.emerging_growth)
        run.write_table("clusters", clusters)
        run.write_table("cluster_rules", rules)
        self.states.save(run, {"fingerprint": self.fingerprint, "encoder": encoder.to_dict(), "chain": chain,
                               "base_day": self.previous.state["base_day"] if self.continues else run.params["date"]},
                         {keys[c]: v for c, v in means.items()}, features.shape[1])
        statuses = pc.value_counts(clusters.column("lineage_status")).to_pylist()
        run.metrics["clusters"] = {"clusters": risk.num_rows, "flagged": int(pc.sum(risk.column("flagged")).as_py() or 0),
                                   "noise_share": round(float((labels < 0).mean()), 4), "rules": rules.num_rows,
                                   "lineage": {s["values"]: s["counts"] for s in statuses}}

    def _load(self) -> tuple[pa.Table, pa.Table]:
        """The window's valid transactions and their embeddings, one row each, in transaction_id order."""
        run, spec = self.run, spec_of(self.cfg)
        with run.stage("load"):
            txn_files = [i for i in run.inputs if i.table == "transactions"]
            timing = [c for c in spec.numeric if c in TIMING_COLUMNS]  # from the sequences, not the transactions
            columns = list(dict.fromkeys(["transaction_id", "ts", "amount", "status", "label", *spec.numeric,
                                          *spec.boolean, *spec.categorical]))
            columns = [c for c in columns if c not in timing]
            txns = collect_table(read_validated(run, TRANSACTIONS, txn_files, columns=columns),
                                 pa.schema([])).drop_columns([SOURCE_FILE, SOURCE_ROW])
            embeddings = pa.concat_tables([
                run.lake.read_table(i.path, columns=["transaction_id", "dt", "embedding", "top_events",
                                                     "unseen_event_types", *TIMING_COLUMNS])
                for i in run.inputs if i.table == EMBEDDINGS]).sort_by("transaction_id")
            # a transaction without a sequence cannot be clustered
            keep = pc.is_in(txns.column("transaction_id"), value_set=embeddings.column("transaction_id"))
            txns = txns.filter(keep).sort_by("transaction_id")
            embeddings = embeddings.filter(pc.is_in(embeddings.column("transaction_id"),
                                                    value_set=txns.column("transaction_id")))
            for name in timing:  # both tables are in transaction_id order, one row each
                txns = txns.append_column(name, embeddings.column(name))
            run.metrics["load"] = {"transactions": txns.num_rows,
                                   "without_embedding": int(pc.sum(pc.invert(keep)).as_py() or 0)}
        if txns.num_rows < self.cfg.min_cluster_size:
            raise InputError(f"only {txns.num_rows} transactions with embeddings in the window; "
                             f"need at least {self.cfg.min_cluster_size}")
        return txns, embeddings

    def _new_model(self, window_size: int, selection: str | None = None, min_samples: int | None = None) -> PHDBSCAN:
        cfg = self.cfg
        max_size = max(cfg.min_cluster_size, int(cfg.max_cluster_share * window_size)) if cfg.max_cluster_share > 0 else 0
        return PHDBSCAN(min_cluster_size=cfg.min_cluster_size, min_samples=min_samples or cfg.min_samples,
                        cluster_selection_method=selection or cfg.cluster_selection_method, max_cluster_size=max_size)

    def _pool_model(self, window_size: int) -> PHDBSCAN:
        """The noise pool's re-cluster: leaf selection at the finer density scale (operators/assignment.py)."""
        return self._new_model(window_size, self.cfg.emerging_selection_method,
                               min(self.cfg.emerging_min_samples, self.cfg.min_samples))

    def _shards(self, window_size: int) -> int:
        """`clusters.shards`, or one shard per `shard_above` points of the window."""
        return self.cfg.shards or -(-window_size // self.cfg.shard_above)

    def _fit(self, features: np.ndarray) -> tuple[PHDBSCAN | None, FitOutcome]:
        """pHDBSCAN over the window: on the driver, or over Ray shard actors that read their rows from the
        run's staging area (the model then stays with the shards: no chain for incremental runs)."""
        cfg, run = self.cfg, self.run
        n, dim = features.shape
        model = self._new_model(n)
        shards = self._shards(n)
        cap = int(cfg.driver_memory_gb * GiB) or None
        k = max((model.min_samples or model.min_cluster_size) + 1, model.knn_k or 16)
        if shards <= 1:
            if cap is not None and single_node_peak(n, dim, k) > cap:
                raise InputError(f"a single-node fit of {n:,} points x {dim} dims needs about "
                                 f"{single_node_peak(n, dim, k) / GiB:.2f} GiB, over clusters.driver_memory_gb = "
                                 f"{cfg.driver_memory_gb}: set clusters.shards (or a lower clusters.shard_above), "
                                 "raise the cap, or shorten the window")
            with MemoryCap(cap, what="the behaviour-clusters driver"):
                model.fit(features)
            return model, FitOutcome(model.labels_, model.probabilities_, model.outlier_scores_,
                                     model.cluster_persistence_)
        if cap is not None:
            try:  # before anything runs: fail fast with what to change
                plan = plan_fit(n, dim, k, cap, cluster_node_memory(), shards=shards)
            except MemoryPlanError as exc:
                raise InputError(str(exc)) from None
            run.metrics["memory_plan"] = {"driver_peak_gib": round(plan.driver_peak / GiB, 3),
                                          "shard_peak_gib": round(plan.shard_peak / GiB, 3)}
        folder = f"{run.prefix}/staging/features"
        readers = write_feature_blocks(run.lake, folder, features, blocks=shards)
        result, report = fit_sharded_blocks(readers, model.params, driver_cap_bytes=cap)
        run.lake.delete_dir(folder)
        run.metrics["sharded"] = {"shards": shards, "device": report.device, "method": report.method,
                                  "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
                                  "driver_peak_rss_gib": round(report.driver_peak_rss_bytes / GiB, 3),
                                  "shard_peak_rss_gib": [round(s.peak_rss_bytes / GiB, 3) for s in report.shard_stats]}
        return None, FitOutcome(result.labels, result.probabilities, result.outlier_scores,
                                result.cluster_persistence)

    def _cluster_full(self, ids: pa.ChunkedArray, features: np.ndarray) -> tuple[Assignment, list[dict[str, Any]]]:
        """pHDBSCAN over the whole window; clusters that continue the previous run's keep their keys."""
        cfg, run = self.cfg, self.run
        model, fit = self._fit(features)
        fit, found, first, pool = self._cluster_own_noise(features, fit)
        labels = fit.labels
        keys = cluster_keys(ids, labels, run.partition)
        if self.previous is not None:
            before = self.previous.table(run.lake, "txn_clusters", ["transaction_id", "cluster_key"])
            overlap = member_overlap(before.column("transaction_id"), before.column("cluster_key"), ids, labels)
            keys.update(match_clusters(overlap, self.states.centroids(self.previous), centroids(features, labels),
                                       LineageParams(cfg.lineage_min_overlap, cfg.lineage_max_centroid_distance,
                                                     cfg.lineage_size_tolerance)))
        run.metrics["assignment"] = {"reclustered": int(features.shape[0]), "clusters": len(keys), **pool}
        assignment = Assignment(np.array([keys.get(int(c)) for c in labels], dtype=object), fit.probabilities,
                                fit.outlier_scores, {k: float(fit.persistence[c]) for c, k in keys.items()})
        if model is None:  # sharded: no model on the driver to predict with, so no chain to continue
            return assignment, []
        chain = [self.states.save_model(run, "model-base", model, {c: k for c, k in keys.items() if c < first})]
        emerging = {c: keys[label] for c, label in found.keys.items()} if found is not None else {}
        if emerging:
            chain.append(self.states.save_model(run, "model-emerging", found.model, emerging, found.within))
        return assignment, chain

    def _cluster_own_noise(self, features: np.ndarray,
                           fit: FitOutcome) -> tuple[FitOutcome, KeyedModel | None, int, dict[str, Any]]:
        """The full fit's noise clustered again as an incremental run's pool is (operators/assignment.py).

        Returns the fit with the pool's emerging clusters as labels after the fit's own (from the first
        label returned) and its joins, the pool's keyed model, and metrics. Skipped, with a warning, when
        the pool's fit would exceed the driver's memory cap."""
        cfg = self.cfg
        n, dim = features.shape
        pool, first = int((fit.labels < 0).sum()), int(fit.labels.max()) + 1
        model = self._pool_model(n)
        rows, k = pool + min(n - pool, pool), max(model.min_samples + 1, model.knn_k or 16)
        cap = int(cfg.driver_memory_gb * GiB) or None
        if cap is not None and single_node_peak(rows, dim, k) > cap:
            log.warning("the noise pool (%d points) stays noise: its re-cluster would exceed "
                        "clusters.driver_memory_gb = %s", pool, cfg.driver_memory_gb)
            return fit, None, first, {"noise_pool": pool, "pool_reclustered": False}
        owned = Assignment(np.array([int(c) if c >= 0 else None for c in fit.labels], dtype=object),
                           fit.probabilities.copy(), fit.outlier_scores.copy(),
                           {c: float(p) for c, p in enumerate(fit.persistence)})
        with MemoryCap(cap, what="the noise pool's re-cluster"):
            found = cluster_noise(features, owned, model, cfg.min_cluster_size,
                                  lambda rows, labels: {int(c): first + i for i, c in enumerate(np.unique(labels))},
                                  attach_share=cfg.attach_share, attach_neighbours=cfg.min_samples,
                                  features_model=0)  # the base model was fitted on `features`, row for row
        labels = np.array([-1 if c is None else c for c in owned.keys], dtype=np.int64)
        placed = pool - int((labels < 0).sum())
        in_emerging = int(np.isin(labels, list(found.keys.values())).sum()) if found else 0
        metrics = {"noise_pool": pool, "pool_reclustered": True, "emerging_clusters": len(found.keys) if found else 0,
                   "emerging_members": placed, "joined_from_pool": placed - in_emerging,
                   "attached_to_neighbours": owned.attached}
        persistence = np.array([owned.persistence.get(c, 0.0) for c in range(int(labels.max()) + 1)])
        return FitOutcome(labels, owned.probabilities, owned.outlier_scores, persistence), found, first, metrics

    def _cluster_incremental(self, ids: pa.ChunkedArray,
                             features: np.ndarray) -> tuple[Assignment, list[dict[str, Any]]]:
        """Earlier assignments stay; new transactions go through the model chain; noise is clustered again."""
        run, previous = self.run, self.previous
        chain_refs = list(previous.state["chain"])
        chain = [KeyedModel(*link) for link in self.states.load_chain(previous, PHDBSCAN)]
        before = previous.table(run.lake, "txn_clusters", ["transaction_id", "cluster_key", "probability",
                                                           "outlier_score"])
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
        predicted = assign_to_chain(features[new], chain, self.cfg.join_quantile)
        keys[new], probabilities[new], outlier_scores[new] = (predicted.keys, predicted.probabilities,
                                                               predicted.outlier_scores)
        assignment = Assignment(keys, probabilities, outlier_scores, predicted.persistence)
        pool = int(assignment.noise.sum())
        emerging = cluster_noise(features, assignment, self._pool_model(n), self.cfg.min_cluster_size,
                                 lambda rows, labels: cluster_keys(ids.take(pa.array(rows)), labels, run.partition),
                                 attach_share=self.cfg.attach_share, attach_neighbours=self.cfg.min_samples)
        if emerging is not None:
            chain_refs.append(self.states.save_model(run, "model-emerging", emerging.model, emerging.keys))
        emerging_sizes = ({key: int((keys == key).sum()) for key in emerging.keys.values()} if emerging else {})
        placed = pool - int(assignment.noise.sum())  # pool points the re-cluster placed: emerging, or joined
        run.metrics["assignment"] = {
            "carried": int(carried.sum()), "new": int(new.size), "joined_existing": int((~predicted.noise).sum()),
            "refused_by_gate": int(predicted.refused.sum()), "reused_searches": predicted.reused_searches,
            "noise_pool": pool,
            "emerging_clusters": len(emerging_sizes), "emerging_members": placed,
            "joined_from_pool": placed - sum(emerging_sizes.values()), "attached_to_neighbours": assignment.attached,
            "emerging_sizes": emerging_sizes,
        }
        log.info("incremental: %d new transactions, %d joined existing clusters, %d refused by the gate; "
                 "noise pool %d -> %d emerging clusters %s", new.size, int((~predicted.noise).sum()),
                 int(predicted.refused.sum()), pool, len(emerging_sizes), emerging_sizes)
        return assignment, chain_refs

    def _risk(self, txns: pa.Table, labels: np.ndarray, assignment: Assignment, keys: dict[int, str]) -> pa.Table:
        cfg = self.cfg
        label = pc.fill_null(pc.cast(txns.column("label"), pa.int64()), -1).to_numpy(zero_copy_only=False)
        declined = pc.equal(txns.column("status"), "declined").to_numpy(zero_copy_only=False)
        amount = pc.cast(txns.column("amount"), pa.float64()).to_numpy(zero_copy_only=False)
        thresholds = RiskThresholds(cfg.min_flag_size, cfg.min_labelled, cfg.min_fraud_rate_lower, cfg.min_lift)
        persistence = np.array([assignment.persistence.get(keys[c], 0.0) for c in range(len(keys))])
        return cluster_risk(labels, label, declined, amount, persistence, thresholds)

    def _rules(self, txns: pa.Table, labels: np.ndarray, risk: pa.Table, keys: dict[int, str]) -> pa.Table:
        """Rules for each flagged cluster, found in memory, then measured by DuckDB over the lake."""
        cfg, run = self.cfg, self.run
        candidates = candidate_predicates(txns, spec_of(cfg))
        search = RuleSearch(max_conditions=cfg.max_conditions, max_rules=cfg.max_rules)
        flagged = [int(c) for c, f in zip(risk.column("cluster_id").to_pylist(), risk.column("flagged").to_pylist()) if f]
        found = []
        for done, cluster in enumerate(flagged, start=1):
            for number, fit in enumerate(induce_rules(txns, labels == cluster, candidates, search)):
                found.append({"cluster_key": keys[cluster], "rule_id": f"{keys[cluster]}-r{number + 1}",
                              "rule": fit.rule})
            log.info("rules: %d/%d flagged clusters searched", done, len(flagged),
                     extra={"progress": {"done": done, "total": len(flagged)}})
        if not found:
            return RULES_SCHEMA.empty_table()
        measured = measure_rules(run.lake, [i.path for i in run.inputs if i.table == "transactions"],
                                 [e.path for e in run.lake.list_files(run.table_dir("txn_clusters"), suffix=".parquet")],
                                 [(r["rule_id"], r["cluster_key"], r["rule"].sql()) for r in found],
                                 timing_paths=[i.path for i in run.inputs if i.table == EMBEDDINGS])
        return rules_table(run.run_id, found, measured)

    def _novelty(self, means: dict[int, np.ndarray]) -> dict[int, float]:
        """Per cluster: the distance from its centroid to the nearest centroid of the previous run's clusters."""
        before = self.states.centroids(self.previous) if self.previous is not None else {}
        if not before:
            return {}
        previous = np.stack(list(before.values()))
        return {c: float(np.sqrt(((previous - v) ** 2).sum(1)).min()) for c, v in means.items()}

    def _previous_sizes(self) -> dict[str, int]:
        if self.previous is None:
            return {}
        table = self.previous.table(self.run.lake, "clusters", ["cluster_key", "size", "lineage_status"]).to_pylist()
        return {r["cluster_key"]: r["size"] for r in table if r["lineage_status"] != GONE}
