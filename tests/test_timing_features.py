"""The session-regularity block of the clustering features (operators/features.timing_block)."""

from __future__ import annotations

import numpy as np

from lakelens.operators.features import REGULAR_SPREAD, timing_block
from lakelens.operators.hdbscan import PHDBSCAN


def test_every_person_maps_near_one_corner_and_a_constant_pace_script_to_the_opposite_one():
    people = np.array([[0.45, 0.6, 0.05], [0.9, 1.4, 0.0], [2.5, 0.5, 0.1]])
    script = np.array([[0.01, 0.012, 1.0]])
    block = timing_block(np.vstack([people, script]))
    assert np.allclose(block[:3, :2], 1.0)  # spreads saturate: how erratic a person is does not matter
    assert np.all(block[3, :2] < 0.05) and block[3, 2] == 1.0
    assert np.linalg.norm(block[3] - block[:3], axis=1).min() > 1.3


def test_spreads_below_the_regular_spread_scale_linearly_and_missing_values_read_as_zero():
    block = timing_block(np.array([[REGULAR_SPREAD / 2, np.nan, 1.7]], dtype=np.float32))
    assert np.allclose(block, [[0.5, 0.0, 1.0]])


def test_with_the_block_a_script_replaying_a_human_flow_clusters_apart_from_the_humans():
    rng = np.random.default_rng(3)
    flow, other_flow = rng.normal(size=(2, 1, 8))  # the copied flow, and people who shop another way
    humans = np.vstack([flow + 0.15 * rng.normal(size=(200, 8)), other_flow + 0.15 * rng.normal(size=(200, 8))])
    bots = flow + 0.15 * rng.normal(size=(80, 8))
    timing = np.vstack([np.column_stack([rng.uniform(0.4, 0.9, 400), rng.uniform(0.4, 1.0, 400), rng.uniform(0, 0.2, 400)]),
                        np.column_stack([rng.uniform(0, 0.02, 80), rng.uniform(0, 0.03, 80), rng.uniform(0.9, 1, 80)])])
    without = PHDBSCAN(min_cluster_size=25, min_samples=10).fit(np.vstack([humans, bots])).labels_
    features = np.hstack([np.vstack([humans, bots]), timing_block(timing)])
    labels = PHDBSCAN(min_cluster_size=25, min_samples=10).fit(features).labels_
    assert len(set(without[400:]) & set(without[:400]) - {-1}) >= 1  # alone, the flow mixes them
    bot_clusters = set(labels[400:]) - {-1}
    assert bot_clusters and not bot_clusters & set(labels[:400])
    assert (labels[400:] >= 0).mean() >= 0.9
