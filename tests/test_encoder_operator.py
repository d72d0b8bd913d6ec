"""The sequence encoder as plain functions and modules: no Ray, no lake jobs."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from lakelens.infra.contracts import SEQUENCES
from lakelens.operators.encoder.batching import pad_sequences
from lakelens.infra.model_store import ModelNotFoundError, ModelStore, model_dir
from lakelens.operators.encoder.checkpoint import LoadedEncoder, ModelMismatchError
from lakelens.operators.encoder.embedder import SequenceEmbedder
from lakelens.operators.encoder.model import create_encoder, encoder_architecture
from lakelens.operators.encoder.objective import ObjectiveParams, augment, nt_xent
from lakelens.operators.encoder.quality import knn_purity, top_k_hit_rate
from lakelens.operators.encoder.training import TrainingParams, fit_encoder
from lakelens.operators.encoder.vocabulary import MASK_ID, OOV_ID, PAD_ID, EventVocabulary, count_event_types
from lakelens.operators.features import ExpertFeatureEncoder, ExpertFeatureSpec
from lakelens.operators.sequences import SEQUENCE_SCHEMA
from lakelens.operators.timing import TIMING_COLUMNS


def sequences_table(rows: list[list[str]], seed: int = 0) -> pa.Table:
    """Sequence rows with the given event types and plausible times (one minute apart, ending at the txn)."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    gaps, to_txn, dwell, ids = [], [], [], []
    for r, types in enumerate(rows):
        k = len(types)
        g = rng.uniform(5, 120, k)
        g[:1] = 0
        gaps.append(np.log1p(g).astype(np.float32).tolist())
        to_txn.append(np.log1p(np.cumsum(g[::-1])[::-1] + 10).astype(np.float32).tolist())
        dwell.append([int(x) if i % 5 else None for i, x in enumerate(rng.integers(100, 9000, k))])
        ids.append([f"e{r}-{i}" for i in range(k)])
    return pa.table({
        "transaction_id": [f"t{i}" for i in range(n)],
        "user_id": [f"u{i}" for i in range(n)],
        "dt": ["2026-01-02"] * n,
        "txn_ts": pa.array([0] * n, pa.timestamp("us", tz="UTC")),
        "n_events": pa.array([len(r) for r in rows], pa.int32()),
        "n_events_in_window": pa.array([len(r) for r in rows], pa.int32()),
        "truncated": [False] * n,
        "is_empty": [len(r) == 0 for r in rows],
        "event_ids": ids,
        "event_types": rows,
        "log_gap_prev_s": pa.array(gaps, pa.list_(pa.float32())),
        "log_time_to_txn_s": pa.array(to_txn, pa.list_(pa.float32())),
        "dwell_ms": pa.array(dwell, pa.list_(pa.int64())),
        **{name: pa.array([0.0] * n, pa.float32()) for name in TIMING_COLUMNS},  # what pad_sequences recomputes
    }, schema=SEQUENCE_SCHEMA)


VOCAB = EventVocabulary.learn({"view_item": 10, "search": 10, "login": 3, "add_card": 3, "place_order": 5})


def tiny_encoder(vocab: EventVocabulary = VOCAB, seed: int = 0):
    return create_encoder(encoder_architecture("bilstm-tiny", len(vocab)), seed=seed).eval()


def encode(encoder, table: pa.Table, max_len: int = 64):
    padded = pad_sequences(table, VOCAB, max_len)
    with torch.no_grad():
        return padded, encoder(torch.from_numpy(padded.tokens), torch.from_numpy(padded.times),
                               torch.from_numpy(padded.lengths))


# -- vocabulary --

def test_vocabulary_reserves_ids_and_orders_types_by_count_then_name():
    vocab = EventVocabulary.learn({"b": 5, "a": 5, "c": 9, "rare": 1}, min_count=2)
    assert vocab.tokens[:3] == ("<pad>", "<oov>", "<mask>")
    assert vocab.tokens[3:] == ("c", "a", "b")


def test_unseen_and_rare_event_types_map_to_the_out_of_vocabulary_id():
    vocab = EventVocabulary.learn({"a": 5, "rare": 1}, min_count=2)
    ids = vocab.encode(pa.array(["a", "rare", "visual_search", None]))
    assert ids.tolist() == [3, OOV_ID, OOV_ID, OOV_ID]


def test_vocabulary_round_trips_through_json_with_the_same_fingerprint():
    again = EventVocabulary.from_json(VOCAB.to_json())
    assert again == VOCAB and again.fingerprint == VOCAB.fingerprint


def test_event_type_counts_cover_every_list_element():
    counts = count_event_types([pa.array([["a", "b"], [], ["a"]])])
    assert counts == {"a": 2, "b": 1}


# -- batching --

def test_padding_keeps_the_latest_events_and_marks_truncation():
    table = sequences_table([["search", "view_item", "login", "add_card"], ["search"], []])
    padded = pad_sequences(table, VOCAB, max_len=2)
    assert padded.lengths.tolist() == [2, 1, 0]
    assert padded.truncated.tolist() == [True, False, False]
    assert padded.start.tolist() == [2, 0, 0]
    assert [VOCAB.tokens[i] for i in padded.tokens[0]] == ["login", "add_card"]
    assert padded.tokens[1, 1] == PAD_ID and (padded.times[1, 1] == 0).all()


def test_padding_a_sliced_table_reads_the_slice_rows():
    table = sequences_table([["search"], ["login", "add_card"], ["place_order"]])
    padded = pad_sequences(table.slice(1, 2), VOCAB, 8)
    assert [VOCAB.tokens[i] for i in padded.tokens[0, :2]] == ["login", "add_card"]
    assert VOCAB.tokens[padded.tokens[1, 0]] == "place_order"


def test_padding_rejects_non_finite_time_features():
    table = sequences_table([["search", "login"]])
    table = table.set_column(table.schema.get_field_index("log_gap_prev_s"), "log_gap_prev_s",
                             pa.array([[0.0, float("nan")]], pa.list_(pa.float32())))
    with pytest.raises(ValueError, match="non-finite"):
        pad_sequences(table, VOCAB, 8)


def test_sequences_contract_quarantines_nan_time_features_and_misaligned_lists():
    table = sequences_table([["search", "login"], ["search"], ["login"]])
    gaps = pa.array([[0.0, float("nan")], [0.0], [0.0]], pa.list_(pa.float32()))
    table = table.set_column(table.schema.get_field_index("log_gap_prev_s"), "log_gap_prev_s", gaps)
    dwell = pa.array([[1, 2], [1], [1, 2]], pa.list_(pa.int64()))
    table = table.set_column(table.schema.get_field_index("dwell_ms"), "dwell_ms", dwell)
    checked = SEQUENCES.validate(table, "file.parquet")
    assert checked.valid.column("transaction_id").to_pylist() == ["t1"]
    assert checked.quarantined.column("reason").to_pylist() == ["not_finite:log_gap_prev_s", "misaligned:dwell_ms"]


# -- model --

def test_attention_is_a_distribution_over_real_events_and_zero_on_padding_and_empty_rows():
    padded, out = encode(tiny_encoder(), sequences_table([["search", "view_item", "login"], ["login"], []]))
    assert torch.allclose(out.attention[:2].sum(1), torch.ones(2))
    assert (out.attention[1, 1:] == 0).all() and (out.attention[2] == 0).all()
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(3))


def test_a_sequence_embeds_the_same_whatever_else_is_in_its_batch():
    encoder = tiny_encoder()
    alone = encode(encoder, sequences_table([["search", "login"]]))[1]
    with_longer = encode(encoder, sequences_table([["search", "login"], ["view_item"] * 30]))[1]
    assert torch.allclose(alone.embedding[0], with_longer.embedding[0], atol=1e-6)
    assert torch.allclose(alone.attention[0, :2], with_longer.attention[0, :2], atol=1e-6)


def test_default_architecture_embeds_in_32_dimensions():
    encoder = create_encoder(encoder_architecture("bilstm-32", len(VOCAB)))
    assert encoder.config.embedding_dim == 32


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown encoder architecture"):
        encoder_architecture("transformer-xl", 10)


# -- objective and training --

def test_augmented_views_crop_within_the_sequence_and_mask_only_real_events():
    padded = pad_sequences(sequences_table([["search"] * 10, ["login"] * 3, []]), VOCAB, 64)
    view = augment(torch.from_numpy(padded.tokens), torch.from_numpy(padded.times), torch.from_numpy(padded.lengths),
                   ObjectiveParams(mask_prob=0.5, min_crop=0.6), torch.Generator().manual_seed(0))
    assert (view.lengths <= torch.from_numpy(padded.lengths)).all()
    assert view.lengths[0] >= 6 and view.lengths[2] == 0
    beyond = torch.arange(view.tokens.shape[1])[None, :] >= view.lengths[:, None]
    assert (view.tokens[beyond] == PAD_ID).all() and not view.masked[beyond].any()
    assert (view.tokens[view.masked] == MASK_ID).all()


def test_contrastive_loss_is_lower_when_views_match():
    a = torch.nn.functional.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    shuffled = a[torch.randperm(16, generator=torch.Generator().manual_seed(2))]
    assert nt_xent(a, a, 0.5) < nt_xent(a, shuffled, 0.5)


def _training_data():
    rng = np.random.default_rng(0)
    patterns = [["search", "view_item", "place_order"], ["login", "add_card", "place_order"]]
    rows = [list(rng.choice(patterns[i % 2], size=rng.integers(3, 9))) for i in range(160)]
    return pad_sequences(sequences_table(rows), VOCAB, 16), np.arange(160) % 2


def test_training_with_the_same_seed_gives_the_same_weights():
    data, _ = _training_data()
    params = TrainingParams(epochs=2, batch_size=32, seed=3)
    first = fit_encoder(tiny_encoder(seed=3).train(), data.take(np.arange(120)), data.take(np.arange(120, 160)), params)
    second = fit_encoder(tiny_encoder(seed=3).train(), data.take(np.arange(120)), data.take(np.arange(120, 160)), params)
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert first.history == [{**h, "seconds": first.history[i]["seconds"]} for i, h in enumerate(second.history)]


def test_training_stops_early_and_keeps_the_best_epoch():
    data, labels = _training_data()
    params = TrainingParams(epochs=60, batch_size=32, patience=2, min_delta=10.0)  # nothing counts as better
    result = fit_encoder(tiny_encoder().train(), data.take(np.arange(120)), data.take(np.arange(120, 160)), params)
    assert result.best_epoch == 0 and len(result.history) == 3


def test_training_separates_two_planted_patterns():
    data, labels = _training_data()
    encoder = create_encoder(encoder_architecture("bilstm-32", len(VOCAB)), seed=0)
    fit_encoder(encoder, data.take(np.arange(120)), data.take(np.arange(120, 160)),
                TrainingParams(epochs=8, batch_size=32, learning_rate=4e-3))
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.from_numpy(data.tokens), torch.from_numpy(data.times), torch.from_numpy(data.lengths))
    assert knn_purity(out.embedding.numpy(), labels, k=10) >= 0.95


# -- quality measures --

def test_knn_purity_is_one_for_separated_groups_and_near_chance_for_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    separated = rng.normal(size=(100, 4)) + labels[:, None] * 20
    assert knn_purity(separated, labels) == 1.0
    assert abs(knn_purity(rng.normal(size=(100, 4)), labels) - 0.5) < 0.15


def test_top_k_hit_rate_counts_sequences_whose_heaviest_events_include_a_target():
    attention = [np.array([0.1, 0.7, 0.2]), np.array([0.5, 0.3, 0.2])]
    types = [["a", "login", "b"], ["a", "b", "login"]]
    assert top_k_hit_rate(attention, types, {"login"}, k=1) == 0.5
    assert top_k_hit_rate(attention, types, {"login"}, k=3) == 1.0


def test_expert_features_scale_numbers_robustly_and_one_hot_categories():
    table = pa.table({"amount": [10.0, 20.0, 30.0, 40.0, 1e6], "flag": [True, False, None, True, False],
                      "kind": ["card", "wallet", "card", None, "card"]})
    enc = ExpertFeatureEncoder(ExpertFeatureSpec(numeric=("amount",), boolean=("flag",), categorical=("kind",),
                                                 log_scaled=())).fit(table)
    x = enc.transform(table)
    assert enc.names == ["amount", "flag", "kind=card", "kind=wallet"]
    assert x.shape == (5, 4) and x[2, 0] == 0.0  # the median row sits at zero
    assert x[1, 0] == -0.5  # (20 - 30) / IQR 20: the outlier does not stretch the scale
    assert x[:, 1].tolist() == [1, 0, 0, 1, 0] and x[3, 2:].tolist() == [0, 0]


# -- checkpoints and the embedder --

def test_a_saved_encoder_loads_back_with_identical_outputs(lake):
    encoder = tiny_encoder(seed=5)
    ModelStore(lake).save("enc", "v1", LoadedEncoder(encoder, VOCAB), {"config": {"max_len": 8}})
    loaded = ModelStore(lake).load("enc", "latest", LoadedEncoder)
    table = sequences_table([["search", "login", "add_card"]])
    assert loaded.version == "v1" and loaded.vocabulary == VOCAB
    assert torch.equal(encode(encoder, table)[1].embedding, encode(loaded.encoder, table)[1].embedding)


def test_an_unknown_model_version_is_a_clear_error_listing_known_ones(tmp_path):
    from lakelens.infra.storage import Lake

    lake = Lake(tmp_path)
    with pytest.raises(ModelNotFoundError, match="run `lakelens run train-encoder`"):
        ModelStore(lake).resolve_version("enc", "latest")
    ModelStore(lake).save("enc", "v1", LoadedEncoder(tiny_encoder(), VOCAB), {})
    with pytest.raises(ModelNotFoundError, match="versions: v1"):
        ModelStore(lake).load("enc", "v9", LoadedEncoder)


def test_weights_paired_with_another_vocabulary_are_refused(tmp_path):
    from lakelens.infra.storage import Lake

    lake = Lake(tmp_path)
    ModelStore(lake).save("enc", "v1", LoadedEncoder(tiny_encoder(), VOCAB), {})
    other = EventVocabulary.learn({"x": 1})
    lake.write_bytes(f"{model_dir('enc', 'v1')}/vocabulary.json", other.to_json().encode())
    with pytest.raises(ModelMismatchError, match="not the vocabulary"):
        ModelStore(lake).load("enc", "v1", LoadedEncoder)


def test_embedder_returns_unit_embeddings_and_the_most_attended_events_heaviest_first(tmp_path):
    from lakelens.infra.storage import Lake

    lake = Lake(tmp_path)
    ModelStore(lake).save("enc", "v1", LoadedEncoder(tiny_encoder(), VOCAB), {})
    embedder = SequenceEmbedder(ModelStore(lake).load("enc", "v1", LoadedEncoder), max_len=3, top_k=2, run_id="r1")
    table = sequences_table([["search", "view_item", "login", "add_card"], ["place_order"], []])
    out = embedder(table)
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    vectors = np.array(out.column("embedding").to_pylist())
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert out.column("truncated_by_encoder").to_pylist() == [True, False, False]
    top = out.column("top_events").to_pylist()
    assert [len(t) for t in top] == [2, 1, 0]
    weights = [e["weight"] for e in top[0]]
    assert weights == sorted(weights, reverse=True)
    for event in top[0]:  # positions index the full stored list; truncation dropped position 0
        assert event["position"] >= 1
        assert event["event_id"] == f"e0-{event['position']}"
        assert event["event_type"] == table.column("event_types")[0].as_py()[event["position"]]
    assert top[1][0] == {"position": 0, "event_id": "e1-0", "event_type": "place_order", "weight": 1.0}
    assert math.isclose(sum(e["weight"] for e in top[0]) <= 1.0 + 1e-6, True)


# -- session timing --

def test_session_timing_tells_a_constant_pace_from_a_human_one_and_ignores_earlier_sessions():
    from lakelens.operators.timing import session_timing

    human = [0, 5, 30, 2, 60, 9]
    bot = [0, 10, 10.1, 10, 9.95, 10]
    earlier_then_bot = [0, 3, 250, 4000, 10, 10, 10]  # a long break: only the last session counts
    gaps = np.log1p(np.array(human + bot + earlier_then_bot, dtype=np.float64))
    dwell = np.log1p(np.array([1, 5, .2, 9, .3, 4] + [2, 2, 2.01, 1.99, 2, 2] + [9, .1, 3, 2, 2, 2, 2]))
    offsets = np.array([0, 6, 12, 12, 19])
    stats = session_timing(gaps, dwell, np.zeros(gaps.size, bool), offsets)
    gap_std, dwell_std, same_gap, _ = stats.T
    assert gap_std[1] < 0.01 < 0.5 < gap_std[0] and dwell_std[1] < 0.01 < 0.5 < dwell_std[0]
    assert same_gap[1] == 1.0 and same_gap[0] == 0.0
    assert stats[2].tolist() == [0, 0, 0, 0]  # an empty sequence
    assert gap_std[3] < 0.01 and same_gap[3] == 1.0


def test_pretraining_asks_the_embedding_to_predict_the_sessions_timing_regularity():
    from lakelens.operators.encoder.objective import composition_targets

    padded = pad_sequences(sequences_table([["search", "view_item", "add_card", "place_order"]] * 2), VOCAB, 8)
    session = torch.from_numpy(np.array([[1.0, 0.8, 0.0, -0.3], [0.0, 0.0, 1.0, 0.0]], np.float32))
    targets = composition_targets(torch.from_numpy(padded.tokens), torch.from_numpy(padded.times),
                                  torch.from_numpy(padded.lengths), len(VOCAB), 1800.0, session)
    assert targets.shape == (2, 2 * len(VOCAB) + 1 + 4)
    assert torch.equal(targets[:, -4:], session)
