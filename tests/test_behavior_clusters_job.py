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
from lakelens.synthetic.truth import measure_detection

from .conftest import ENCODER_CONFIG, SPARE_DAY, TRAIN_DAYS

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


# -- daily incremental runs and lineage --

@pytest.fixture(scope="module")
def next_day(clustered):
    lake, _ = clustered
    # other tests here publish expert-only and embedding-only runs of DAY; make the hybrid one visible again
    day_run = run_behavior_clusters(lake, DAY, _config(), force=True)
    return lake, day_run, run_behavior_clusters(lake, SPARE_DAY, _config())


def _table(lake, manifest, table):
    return pa.concat_tables([lake.read_table(f["path"]) for f in manifest["outputs"][table]["files"]])


def test_the_next_day_continues_the_previous_run_keeping_its_assignments(next_day):
    lake, day_run, manifest = next_day
    assert manifest["params"]["mode"] == "incremental"
    assert manifest["params"]["previous_run"] == f"{day_run['run_id']}/{day_run['attempt_id']}"
    before = {r["transaction_id"]: r["cluster_key"] for r in _table(lake, day_run, "txn_clusters").to_pylist()}
    after = _table(lake, manifest, "txn_clusters").to_pylist()
    assert len({r["transaction_id"] for r in after}) == len(after)  # each transaction once
    carried = [r for r in after if r["transaction_id"] in before]
    moved_out_of_noise = [r for r in carried if before[r["transaction_id"]] is None and r["cluster_key"] is not None]
    assert all(r["cluster_key"] == before[r["transaction_id"]] for r in carried if before[r["transaction_id"]])
    assignment = manifest["metrics"]["assignment"]
    assert assignment["carried"] == len(carried)
    assert assignment["new"] == sum(1 for r in after if r["dt"] == str(SPARE_DAY))
    assert assignment["joined_existing"] > 0
    assert len(moved_out_of_noise) <= assignment["emerging_members"]


def test_an_incremental_day_still_meets_the_detection_bar(next_day):
    lake, _, manifest = next_day
    detection = measure_detection(lake, manifest)
    print(f"\nincremental: {detection.describe()}")
    assert detection.caught >= 0.8 and detection.precision >= 0.7


def test_lineage_statuses_compare_each_key_with_its_size_in_the_previous_run(next_day):
    lake, day_run, manifest = next_day
    sizes_before = {r["cluster_key"]: r["size"] for r in _table(lake, day_run, "clusters").to_pylist()}
    rows = _table(lake, manifest, "clusters").to_pylist()
    assert {r["lineage_status"] for r in rows} <= {"new", "growing", "stable", "shrinking", "gone"}
    for r in rows:
        assert r["previous_size"] == sizes_before.get(r["cluster_key"])
        if r["lineage_status"] == "gone":
            assert r["size"] == 0 and not r["flagged"] and r["cluster_key"] in sizes_before
        elif r["lineage_status"] == "new":
            assert r["cluster_key"] not in sizes_before
    continuing = [r for r in rows if r["lineage_status"] in ("growing", "stable", "shrinking")]
    assert len(continuing) >= len(sizes_before) // 2


def test_a_full_recluster_on_demand_keeps_the_keys_of_clusters_that_continue(next_day):
    lake, day_run, _ = next_day
    manifest = run_behavior_clusters(lake, SPARE_DAY, _config(), full=True)
    assert manifest["params"]["mode"] == "full" and manifest["metrics"]["mode"]["reason"] == "full re-cluster requested"
    before = _table(lake, day_run, "clusters").to_pylist()
    after = {r["cluster_key"]: r for r in _table(lake, manifest, "clusters").to_pylist()}
    kept = [r for r in before if after.get(r["cluster_key"], {}).get("lineage_status", "gone") != "gone"]
    assert len(kept) >= 0.6 * len(before)
    flagged_before = {r["cluster_key"] for r in before if r["flagged"]}
    assert flagged_before & {k for k, r in after.items() if r["flagged"]}
    assert measure_detection(lake, manifest).caught >= 0.8


def test_a_run_is_incremental_only_while_the_previous_state_still_applies():
    from lakelens.pipelines.behavior_clusters import FULL, INCREMENTAL, PreviousRun, choose_mode

    cfg = _config().clusters
    manifest = {"run_id": "behavior-clusters-dt2026-01-03-x", "partition": "dt=2026-01-03"}
    state = {"fingerprint": "f1", "base_day": "2026-01-01"}
    today = DAY.replace(day=4)
    assert choose_mode(today, cfg, "f1", PreviousRun(manifest, state), False)[0] == INCREMENTAL
    assert choose_mode(today, cfg, "f1", PreviousRun(manifest, state), True) == (FULL, "full re-cluster requested")
    assert choose_mode(today, cfg, "f1", None, False)[1] == "no earlier published run"
    assert "left no clustering state" in choose_mode(today, cfg, "f1", PreviousRun(manifest, None), False)[1]
    assert "changed" in choose_mode(today, cfg, "f2", PreviousRun(manifest, state), False)[1]
    weekly = dataclasses.replace(cfg, full_every_days=3)
    assert choose_mode(today, weekly, "f1", PreviousRun(manifest, state), False)[1].startswith("scheduled")


# -- reviewers' verdicts --

def test_reviews_are_appended_never_rewritten_and_the_latest_shows_on_flagged_clusters(clustered):
    from lakelens.infra.reviews import Review, record_review

    lake, _ = clustered
    key = open_catalog(lake).execute("SELECT cluster_key FROM flagged_clusters LIMIT 1").fetchone()[0]
    first = record_review(lake, Review(key, "fraud", "alice", "new-device ring"))
    second = record_review(lake, Review(key, "needs_more_info", "bob"))
    con = open_catalog(lake)
    history = con.execute("SELECT review_id, verdict, reviewer, comment FROM cluster_reviews WHERE cluster_key = ? "
                          "ORDER BY reviewed_at", [key]).fetchall()
    assert history[-2:] == [(first["review_id"], "fraud", "alice", "new-device ring"),
                            (second["review_id"], "needs_more_info", "bob", "")]
    latest = con.execute("SELECT DISTINCT latest_verdict, latest_reviewer FROM flagged_clusters WHERE cluster_key = ?",
                         [key]).fetchall()
    assert latest == [("needs_more_info", "bob")]


def test_a_review_of_an_unknown_cluster_or_with_an_unknown_verdict_is_refused(clustered):
    from lakelens.infra.reviews import Review, record_review

    lake, _ = clustered
    with pytest.raises(LookupError, match="no published cluster 'ck-missing'"):
        record_review(lake, Review("ck-missing", "fraud", "alice"))
    with pytest.raises(ValueError, match="verdict must be one of"):
        record_review(lake, Review("ck-missing", "maybe", "alice"))
    with pytest.raises(ValueError, match="reviewer"):
        record_review(lake, Review("ck-missing", "fraud", "  "))


def test_rule_search_on_a_large_table_samples_non_members_and_still_finds_the_rule():
    rng = np.random.default_rng(2)
    n = 300_000
    table = pa.table({"amount": rng.uniform(0, 100, n), "is_new_device": rng.random(n) < 0.3,
                      "payment_method": rng.choice(["card", "wallet"], n)})
    member = (table["amount"].to_numpy() > 95) & table["is_new_device"].to_numpy()
    spec = ExpertFeatureSpec(numeric=("amount",), boolean=("is_new_device",), categorical=("payment_method",))
    search = RuleSearch(max_rules=1, max_rows=20_000)
    fit = induce_rules(table, member, candidate_predicates(table, spec, quantiles=40), search)[0]
    assert {p.column for p in fit.rule.predicates} == {"amount", "is_new_device"}
    exact = fit.rule.predicates[0].mask(table) & fit.rule.predicates[1].mask(table)
    assert fit.support == pytest.approx(exact.sum(), rel=0.1)  # reweighted sample counts estimate the truth
    assert fit.precision == pytest.approx((exact & member).sum() / exact.sum(), abs=0.05)


# -- scale-out: the same job over Ray shard actors --

def test_a_sharded_fit_over_ray_actors_publishes_the_same_clusters_as_the_single_node_fit(clustered):
    lake, single = clustered
    sharded = run_behavior_clusters(lake, DAY, _config(shards=2), force=True, full=True)
    assert sharded["run_id"] == single["run_id"]  # where the fit runs is not part of what it computes
    assert sharded["metrics"]["sharded"]["shards"] == 2
    from lakelens.infra.runs import manifest_prefix

    assert not lake.list_files(f"{manifest_prefix(sharded)}/staging")  # the feature blocks are cleaned up

    def members(manifest):
        return _table(lake, manifest, "txn_clusters").select(["transaction_id", "cluster_key"]).sort_by("transaction_id")

    assert members(sharded).equals(members(single))
    flagged = lambda m: sorted(r["cluster_key"] for r in _table(lake, m, "clusters").to_pylist() if r["flagged"])  # noqa: E731
    assert flagged(sharded) == flagged(single)


def test_a_driver_memory_cap_too_small_for_the_window_fails_before_clustering_and_names_the_setting(clustered):
    from lakelens.infra.errors import InputError

    lake, _ = clustered
    with pytest.raises(InputError, match="clusters.driver_memory_gb"):
        run_behavior_clusters(lake, DAY, _config(driver_memory_gb=0.05), force=True, full=True)
