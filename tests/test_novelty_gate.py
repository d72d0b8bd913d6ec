"""Incremental assignment: new points join existing clusters only when they fit them as members do."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lakelens.operators.assignment import KeyedModel, assign_to_chain, cluster_noise, member_score_limits
from lakelens.operators.cluster_tables import clusters_table, distinctive_event_types, unseen_event_types
from lakelens.operators.drift import DriftThresholds, embedding_shift, retrain_advice, vocabulary_drift
from lakelens.operators.hdbscan import PHDBSCAN


def _world(seed: int = 0):
    rng = np.random.default_rng(seed)
    loose = rng.normal(0, 1.0, (1500, 4))  # a big cluster born at a low density
    dense = rng.normal([8, 0, 0, 0], 0.3, (300, 4))
    emerging = rng.normal([3.6, 3.6, 0, 0], 0.08, (60, 4))  # tomorrow's pattern, beside the loose cluster
    return loose, dense, emerging, rng


def test_approximate_predict_alone_lets_the_loose_cluster_swallow_a_new_pattern_and_the_gate_refuses_it():
    loose, dense, emerging, rng = _world()
    model = PHDBSCAN(min_cluster_size=40, min_samples=10).fit(np.vstack([loose, dense]))
    keyed = KeyedModel(model, {int(c): f"ck-{c}" for c in np.unique(model.labels_) if c >= 0})
    labels, _, _ = model.predict_with_scores(emerging)
    assert (labels >= 0).mean() > 0.5  # the problem: most of the new pattern joins an existing cluster
    gated = assign_to_chain(emerging, [keyed], join_quantile=0.95)
    assert gated.noise.mean() >= 0.9 and gated.refused.sum() >= 0.4 * len(emerging)
    # points like the members still join
    typical = np.vstack([rng.normal(0, 1.0, (200, 4)), rng.normal([8, 0, 0, 0], 0.3, (100, 4))])
    kept = assign_to_chain(typical, [keyed], join_quantile=0.95)
    assert kept.noise.mean() <= 0.15


def test_a_lone_new_pattern_in_the_noise_pool_becomes_an_emerging_cluster_it_dominates():
    from lakelens.operators.assignment import Assignment

    loose, dense, emerging, rng = _world(1)
    window = np.vstack([loose, dense])
    model = PHDBSCAN(min_cluster_size=40, min_samples=10).fit(window)
    keyed = KeyedModel(model, {int(c): f"ck-{c}" for c in np.unique(model.labels_) if c >= 0})
    # the window as an incremental run sees it: yesterday's points keep their clusters, today's are offered
    scattered = rng.uniform(-12, 12, (200, 4))  # today's unremarkable rest
    today = np.vstack([emerging, scattered])
    offered = assign_to_chain(today, [keyed], join_quantile=0.95)
    carried_keys = np.array([keyed.keys.get(int(c)) for c in model.labels_], dtype=object)
    assignment = Assignment(np.concatenate([carried_keys, offered.keys]),
                            np.concatenate([model.probabilities_, offered.probabilities]),
                            np.concatenate([model.outlier_scores_, offered.outlier_scores]), dict(offered.persistence))
    features = np.vstack([window, today])
    found = cluster_noise(features, assignment, PHDBSCAN(min_cluster_size=25, min_samples=10), 25,
                          lambda rows, labels: {int(c): f"new-{c}" for c in np.unique(labels) if c >= 0})
    assert found is not None and all(key.startswith("new-") for key in found.keys.values())
    new_rows = np.arange(len(window), len(window) + len(emerging))
    keys = list(assignment.keys[new_rows])
    dominant = max(set(keys) - {None}, key=keys.count)
    assert dominant.startswith("new-") and keys.count(dominant) >= 0.8 * len(emerging)
    members = np.flatnonzero(assignment.keys == dominant)
    assert np.isin(members, new_rows).mean() >= 0.8  # the new pattern dominates its cluster
    clustered_before = np.array([k is not None for k in carried_keys])
    assert (carried_keys[clustered_before] == assignment.keys[: len(window)][clustered_before]).all()


def test_member_score_limits_are_quantiles_of_each_clusters_members_scores():
    loose, dense, _, _ = _world(2)
    model = PHDBSCAN(min_cluster_size=40, min_samples=10).fit(np.vstack([loose, dense]))
    limits = member_score_limits(model, 0.5)
    for label, limit in enumerate(limits):
        assert limit == np.quantile(model.outlier_scores_[model.labels_ == label], 0.5)


def test_vocabulary_drift_counts_unseen_event_types_most_frequent_first():
    drift = vocabulary_drift({"login": 80, "qr_login": 15, "wallet_link": 5}, ("<pad>", "<oov>", "<mask>", "login"))
    assert drift["oov_share"] == 0.2 and drift["top_unseen_event_types"] == ["qr_login", "wallet_link"]
    advice = retrain_advice({**drift, "embedding_shift": 1.1, "refused_share": 0.1}, DriftThresholds())
    assert len(advice) == 1 and "qr_login" in advice[0]


def test_embedding_shift_is_about_one_in_distribution_and_grows_when_data_moves():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (2000, 8))
    assert 0.85 < embedding_shift(reference, rng.normal(0, 1, (1000, 8))) < 1.15
    assert embedding_shift(reference, rng.normal(3, 1, (1000, 8))) > 1.5


def test_emerging_clusters_carry_novelty_distinctive_and_unseen_event_types_and_a_narrative():
    events = pa.array([[{"position": 0, "event_id": "e", "event_type": t, "weight": 1.0}] for t in
                       ["login"] * 10 + ["qr_login"] * 5 + ["login"] * 5],
                      pa.list_(pa.struct([("position", pa.int32()), ("event_id", pa.string()),
                                          ("event_type", pa.string()), ("weight", pa.float32())])))
    labels = np.array([0] * 10 + [1] * 10)
    assert distinctive_event_types(events, labels, min_count=3)[1] == ["qr_login"]
    assert unseen_event_types(events, labels, {"login"}) == {1: ["qr_login"]}
    risk = pa.Table.from_pylist([
        {"cluster_id": c, "size": 10, "labelled": 0, "fraud": 0, "fraud_rate": 0.0, "fraud_rate_lower": 0.0,
         "lift": 0.0, "declined_share": 0.0, "amount": 100.0, "persistence": 0.1, "flagged": False} for c in (0, 1)])
    table = clusters_table("r1", risk, {0: "ck-old", 1: "ck-new"}, labels, events, pa.table({"cluster_key": []}),
                           {"ck-old": 10}, 0.1, novelty={0: 0.01, 1: 0.8}, known_event_types={"login"})
    rows = {r["cluster_key"]: r for r in table.to_pylist()}
    assert rows["ck-new"]["emerging"] and not rows["ck-old"]["emerging"]
    assert rows["ck-new"]["novelty"] == 0.8 and rows["ck-new"]["unseen_event_types"] == ["qr_login"]
    assert "never saw" in rows["ck-new"]["narrative"] and "None of them is labelled" in rows["ck-new"]["narrative"]
    assert rows["ck-old"]["narrative"] == ""


def test_pure_fraud_clusters_are_flagged_even_where_labels_are_mostly_chargebacks():
    from lakelens.operators.risk import RiskThresholds, cluster_risk, required_lift

    # a window whose labels are 40 % fraud: no cluster can reach a lift of 3 (at most 2.5)
    clusters = np.array([0] * 100 + [1] * 100 + [2] * 100)
    label = np.full(300, -1)
    label[:40] = 1  # cluster 0: 40 labelled, all fraud
    label[100:130] = 0  # cluster 1: 30 labelled, all legit
    label[200:230] = 0
    risk = cluster_risk(clusters, label, np.zeros(300, bool), np.ones(300), np.ones(3), RiskThresholds())
    assert risk.column("flagged").to_pylist() == [True, False, False]
    assert required_lift(3.0, 0.4) == 1.75 and required_lift(3.0, 0.05) == 3.0


def test_pool_points_found_again_with_an_existing_clusters_members_join_that_cluster():
    from lakelens.operators.assignment import Assignment

    rng = np.random.default_rng(0)
    window = np.vstack([rng.normal(0, 0.3, (400, 4)), rng.normal([6, 0, 0, 0], 0.3, (400, 4))])
    model = PHDBSCAN(min_cluster_size=25, min_samples=10).fit(window)
    halo = rng.normal(0, 0.45, (40, 4))  # today's points of the first cluster's pattern, left as noise
    features = np.vstack([window, halo, rng.uniform(-12, 12, (300, 4))])
    carried = np.array([f"ck-{c}" if c >= 0 else None for c in model.labels_], dtype=object)
    for join in (True, False):
        assignment = Assignment(np.concatenate([carried, np.full(340, None, dtype=object)]), np.zeros(len(features)),
                                np.ones(len(features)), {})
        found = cluster_noise(features, assignment, PHDBSCAN(min_cluster_size=25, min_samples=5,
                                                             cluster_selection_method="leaf"), 25,
                              lambda rows, labels: {int(c): f"new-{c}" for c in np.unique(labels)}, join_existing=join)
        assert found is None  # nothing new here: the halo is the first cluster's, found again with its members
        joined = assignment.keys[len(window):len(window) + 40]
        assert all(k == carried[0] for k in joined) if join else all(k is None for k in joined)
        assert set(assignment.keys[len(window):]) <= set(carried) | {None}


def test_the_pool_is_clustered_at_a_finer_density_scale_by_default():
    import pydantic
    import pytest

    from lakelens.infra.config import ClusterConfig

    cfg = ClusterConfig()
    assert cfg.emerging_min_samples == 5 < cfg.min_samples and cfg.emerging_selection_method == "leaf"
    with pytest.raises(pydantic.ValidationError):
        ClusterConfig(emerging_min_samples=0)


def test_noise_in_a_clusters_fringe_joins_it_through_its_neighbours_and_noise_between_groups_stays_noise():
    from lakelens.operators.assignment import Assignment, PoolClusters, attach_to_neighbours

    rng = np.random.default_rng(3)
    members = rng.normal(0, 0.3, (200, 2))  # an existing cluster (the pool fit's context)
    others = rng.normal([6, 0], 0.3, (200, 2))  # another one
    angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    fringe = 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # noise on the first cluster's edge
    between = np.array([[3.0, 0.0], [3.0, 0.4]])  # noise as far from both
    lonely = rng.uniform(20, 30, (12, 2))  # noise among noise
    features = np.vstack([fringe, between, lonely, members, others])
    pool = 6 + 2 + 12
    model = PHDBSCAN(min_cluster_size=25, min_samples=5).fit(features)
    keys = np.array([None] * pool + ["a"] * 200 + ["b"] * 200, dtype=object)
    assignment = Assignment(keys.copy(), np.ones(len(features)), np.ones(len(features)), {})
    found = PoolClusters(model, np.arange(len(features)), np.arange(len(features)) < pool, [], {})

    joined = attach_to_neighbours(features, found, assignment, share=0.5, neighbours=5)

    assert list(joined) == list(range(6)) and assignment.attached == 6
    assert set(assignment.keys[:6]) == {"a"} and (assignment.probabilities[:6] == 0).all()
    assert all(k is None for k in assignment.keys[6:pool])
    assert list(assignment.keys[pool:]) == list(keys[pool:])  # members are never moved
    # the same answer from the fit's own kNN graph as from a second search
    model.fit(features, keep_graph=True)
    again = Assignment(keys.copy(), np.ones(len(features)), np.ones(len(features)), {})
    assert list(attach_to_neighbours(features, found, again, share=0.5, neighbours=5)) == list(joined)


def test_attach_share_zero_leaves_the_pools_noise_as_noise():
    from lakelens.infra.config import ClusterConfig

    assert ClusterConfig().attach_share == 0.5
    loose, dense, _, rng = _world()
    features = np.vstack([loose, dense, rng.uniform(-15, 15, (200, 4))])
    model = PHDBSCAN(min_cluster_size=25, min_samples=10).fit(features)
    carried = np.array([f"k{c}" if c >= 0 else None for c in model.labels_], dtype=object)
    left = {}
    for share in (0.0, 0.5):
        from lakelens.operators.assignment import Assignment

        assignment = Assignment(carried.copy(), np.zeros(len(features)), np.ones(len(features)), {})
        cluster_noise(features, assignment, PHDBSCAN(min_cluster_size=25, min_samples=5,
                                                     cluster_selection_method="leaf"), 25,
                      lambda rows, labels: {int(c): f"new-{c}" for c in np.unique(labels)}, attach_share=share)
        left[share] = int(assignment.noise.sum())
        assert (assignment.attached == 0) == (share == 0.0)
    assert left[0.5] < left[0.0]
