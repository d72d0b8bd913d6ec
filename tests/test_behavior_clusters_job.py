"""behavior-clusters end to end on the trained synthetic world: flags, rules, narratives and the quality bar."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from lakelens.infra.catalog import open_catalog
from lakelens.operators.features import ExpertFeatureSpec
from lakelens.operators.risk import RiskThresholds, cluster_risk, wilson_lower
from lakelens.operators.rules import Predicate, RuleSearch, candidate_predicates, induce_rules
from lakelens.pipelines.behavior_clusters import run_behavior_clusters
from lakelens.pipelines.synthetic_truth import measure_detection

from .conftest import ENCODER_CONFIG, TRAIN_DAYS

DAY = TRAIN_DAYS[-1]


def _config(**clusters):
    return dataclasses.replace(ENCODER_CONFIG, clusters=dataclasses.replace(ENCODER_CONFIG.clusters, **clusters))


@pytest.fixture(scope="module")
def clustered(trained_lake):
    lake, _, _ = trained_lake
    return lake, run_behavior_clusters(lake, DAY, _config())


# -- operators --

def test_wilson_lower_bound_is_below_the_rate_and_tightens_with_more_trials():
    assert wilson_lower(np.array([0]), np.array([0]))[0] == 0.0
    small, large = wilson_lower(np.array([2, 200]), np.array([2, 200]))
    assert small < large < 1.0 and small < 0.5


def test_cluster_risk_counts_labels_and_flags_by_thresholds():
    clusters = np.array([0] * 30 + [1] * 30 + [-1] * 40)
    label = np.array([1] * 10 + [-1] * 20 + [0] * 10 + [-1] * 20 + [0] * 30 + [1] * 2 + [-1] * 8)
    risk = cluster_risk(clusters, label, np.zeros(100, bool), np.ones(100), np.array([0.5, 0.2]),
                        RiskThresholds(min_size=20, min_labelled=3, min_fraud_rate_lower=0.5, min_lift=2.0))
    rows = {r["cluster_id"]: r for r in risk.to_pylist()}
    assert rows[0]["size"] == 30 and rows[0]["labelled"] == 10 and rows[0]["fraud"] == 10
    assert rows[0]["lift"] == pytest.approx(1.0 / (12 / 52))
    assert rows[0]["flagged"] and not rows[1]["flagged"]
    assert rows[1]["persistence"] == 0.2


def test_rule_sql_and_in_memory_masks_agree_row_for_row():
    import duckdb

    rng = np.random.default_rng(0)
    table = pa.table({"amount": rng.lognormal(3, 1, 500), "is_new_device": rng.random(500) < 0.2,
                      "payment_method": rng.choice(["card", "wallet", "gift_card"], 500)})
    table = table.set_column(0, "amount", pa.array(np.where(rng.random(500) < 0.05, None, table["amount"].to_numpy()),
                                                   pa.float64()))
    spec = ExpertFeatureSpec(numeric=("amount",), boolean=("is_new_device",), categorical=("payment_method",))
    con = duckdb.connect()
    con.register("transactions", table)
    for predicate in candidate_predicates(table, spec):
        in_sql = con.execute(f"SELECT count(*) FROM transactions WHERE {predicate.sql()}").fetchone()[0]
        assert in_sql == int(predicate.mask(table).sum()), predicate


def test_rule_search_recovers_a_planted_conjunction():
    rng = np.random.default_rng(1)
    n = 2000
    table = pa.table({"amount": rng.uniform(0, 100, n), "is_new_device": rng.random(n) < 0.3,
                      "payment_method": rng.choice(["card", "wallet"], n)})
    member = (table["amount"].to_numpy() > 80) & table["is_new_device"].to_numpy()
    spec = ExpertFeatureSpec(numeric=("amount",), boolean=("is_new_device",), categorical=("payment_method",))
    fits = induce_rules(table, member, candidate_predicates(table, spec), RuleSearch(max_rules=1))
    assert fits[0].precision >= 0.95 and fits[0].coverage >= 0.9
    assert {p.column for p in fits[0].rule.predicates} == {"amount", "is_new_device"}
    assert Predicate("amount", ">", 80.0).words() == "amount above 80"


# -- the job --

def test_flagged_clusters_catch_unlabelled_fraud_with_high_precision(clustered):
    lake, manifest = clustered
    detection = measure_detection(lake, manifest)
    print(f"\nhybrid: {detection.describe()}")
    assert detection.caught >= 0.8
    assert detection.precision >= 0.7


def test_hybrid_features_beat_expert_only_and_embedding_only(clustered):
    lake, manifest = clustered
    hybrid = measure_detection(lake, manifest)
    scores = {"hybrid": hybrid.caught * hybrid.precision}
    for name, weights in {"expert-only": {"embedding_weight": 0.0}, "embedding-only": {"expert_weight": 0.0}}.items():
        alone = measure_detection(lake, run_behavior_clusters(lake, DAY, _config(**weights)))
        print(f"\n{name}: {alone.describe()}")
        scores[name] = alone.caught * alone.precision
    assert scores["hybrid"] > scores["expert-only"] and scores["hybrid"] > scores["embedding-only"]


def test_every_rule_runs_in_duckdb_and_reproduces_its_published_metrics(clustered):
    lake, manifest = clustered
    con = open_catalog(lake)
    rules = con.execute("SELECT * FROM cluster_rules").to_arrow_table().to_pylist()
    assert rules
    window = ", ".join(f"'{d}'" for d in TRAIN_DAYS)
    for rule in rules:
        matched, in_cluster, labelled, fraud = con.execute(f"""
            SELECT count(*), count(*) FILTER (x.cluster_key = '{rule['cluster_key']}'), count(t.label),
                   count(*) FILTER (t.label = 1)
            FROM transactions t LEFT JOIN txn_clusters x USING (transaction_id)
            WHERE t.dt IN ({window}) AND ({rule['sql_predicate']})""").fetchone()
        assert matched == rule["support"]
        assert in_cluster / matched == pytest.approx(rule["precision"])
        assert (fraud / labelled if labelled else 0.0) == pytest.approx(rule["fraud_rate"])
        assert rule["narrative"].startswith("Transactions with ")


def test_flagged_clusters_carry_a_narrative_built_from_numbers_events_and_rules(clustered):
    lake, _ = clustered
    con = open_catalog(lake)
    rows = con.execute("SELECT size, fraud, top_event_types, narrative FROM clusters WHERE flagged").fetchall()
    assert rows
    for size, fraud, top_events, text in rows:
        assert f"{size:,} transactions" in text and f"{fraud:,} are confirmed fraud" in text
        assert top_events and top_events[0].replace("_", " ") in text
    unflagged = con.execute("SELECT count(*) FROM clusters WHERE NOT flagged AND narrative <> ''").fetchone()[0]
    assert unflagged == 0


def test_txn_clusters_cover_the_window_with_keys_and_scores(clustered):
    lake, manifest = clustered
    con = open_catalog(lake)
    n, keyed, noise_keyed, bad_prob = con.execute("""
        SELECT count(*), count(cluster_key), count(*) FILTER (cluster_id = -1 AND cluster_key IS NOT NULL),
               count(*) FILTER (probability < 0 OR probability > 1) FROM txn_clusters""").fetchone()
    assert n == manifest["metrics"]["load"]["transactions"] and noise_keyed == 0 and bad_prob == 0
    assert keyed == n - con.execute("SELECT count(*) FROM txn_clusters WHERE cluster_id = -1").fetchone()[0]
    assert set(manifest["timings_s"]) >= {"load", "features", "cluster", "risk", "rules"}


def test_rerunning_the_same_day_is_idempotent(clustered, capsys):
    lake, manifest = clustered
    again = run_behavior_clusters(lake, DAY, _config())
    assert again["run_id"] == manifest["run_id"] and again["attempt_id"] == manifest["attempt_id"]


def test_analyst_views_and_apply_rule_macro_return_what_the_tables_promise(clustered):
    lake, _ = clustered
    con = open_catalog(lake)
    flagged = con.execute("SELECT count(*) FROM flagged_clusters").fetchone()[0]
    assert flagged == con.execute("SELECT count(*) FROM clusters WHERE flagged").fetchone()[0] > 0
    members = con.execute("SELECT count(*) FROM cluster_members WHERE flagged").fetchone()[0]
    assert members == con.execute("SELECT sum(size) FROM flagged_clusters").fetchone()[0]
    window = ", ".join(f"'{d}'" for d in TRAIN_DAYS)
    for rule_id, support in con.execute("SELECT rule_id, support FROM rules").fetchall():
        applied = con.execute(f"SELECT count(*) FROM apply_rule('{rule_id}') WHERE dt IN ({window})").fetchone()[0]
        assert applied == support, rule_id
    assert con.execute("SELECT count(*) FROM cluster_history").fetchone()[0] >= flagged
