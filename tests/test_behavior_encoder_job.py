"""train-encoder and embed on a real local Ray, on a synthetic world, with the issue's quality bars."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pyarrow as pa
import pytest
import torch

from lakelens.infra.catalog import open_catalog
from lakelens.infra.runs import published_output
from lakelens.infra.model_store import ModelStore, model_dir
from lakelens.operators.encoder.checkpoint import LoadedEncoder
from lakelens.pipelines.embed import TABLE, run_embed
from lakelens.synthetic.truth import EncoderQuality, measure_encoder_quality
from lakelens.pipelines.train_encoder import run_train_encoder

from .conftest import ENCODER_CONFIG as CONFIG, SPARE_DAY, TRAIN_DAYS


@pytest.fixture(scope="module")
def quality(trained_lake) -> EncoderQuality:
    lake, card, _ = trained_lake
    return measure_encoder_quality(lake, card)


def test_training_records_its_data_and_metrics_and_uses_no_labels(trained_lake):
    lake, card, _ = trained_lake
    assert card["data"]["dates"] == [d.isoformat() for d in TRAIN_DAYS]
    assert {f["table"] for f in card["data"]["input_files"]} == {"sequences"}
    assert card["data"]["train_sequences"] > 3000 and card["data"]["valid_sequences"] > 500
    assert card["metrics"]["best_epoch"] >= 0 and card["history"]
    assert card["workers"] == 2 and card["device"] == "cpu"
    assert card["architecture"]["embedding_dim"] == 32
    for name in ("weights.pt", "vocabulary.json", "model.json"):
        assert lake.exists(f"{model_dir(card['name'], card['version'])}/{name}")


def test_retraining_unchanged_inputs_reuses_the_published_model(trained_lake, capsys):
    lake, card, _ = trained_lake
    again = run_train_encoder(lake, TRAIN_DAYS, CONFIG)
    assert again["version"] == card["version"] and again["saved_at"] == card["saved_at"]
    assert "nothing to do" in capsys.readouterr().out


def test_embeddings_separate_behaviour_archetypes_better_than_expert_features_on_held_out_users(quality):
    print(f"\n{quality.describe()}")
    assert quality.classes >= 8  # legit archetypes and fraud MOs are both present
    assert quality.embedding_purity >= 0.9
    assert quality.embedding_purity > quality.expert_purity


def test_attention_points_at_the_credential_changes_of_account_takeovers(quality):
    assert quality.ato_sequences >= 30
    assert quality.ato_top3_hit_rate >= 0.8


def test_embed_publishes_one_row_per_sequence_with_the_model_version(trained_lake):
    lake, card, manifests = trained_lake
    for day, manifest in zip(TRAIN_DAYS, manifests):
        _, files = published_output(lake, "build-sequences", f"dt={day}", "sequences")
        assert manifest["outputs"][TABLE]["rows"] == sum(f.rows for f in files)
        assert manifest["params"]["model"] == f"{card['name']}/{card['version']}"
        assert manifest["metrics"]["embed"]["truncated_by_encoder"] == 0
        schema = {c["name"]: c["type"] for c in manifest["outputs"][TABLE]["schema"]}
        assert schema["embedding"] == "fixed_size_list<element: float>[32]"
    con = open_catalog(lake)
    versions = con.execute(f"SELECT DISTINCT model_version FROM {TABLE}").fetchall()
    assert versions == [(card["version"],)]


def test_embed_truncates_to_a_shorter_encoder_window_and_says_so_in_the_manifest(trained_lake, tmp_path):
    lake, card, _ = trained_lake
    loaded = ModelStore(lake).load(card["name"], card["version"], LoadedEncoder)
    # the same weights published under a model trained to read at most 8 events
    short = {**{k: v for k, v in card.items() if k not in {"name", "version", "architecture", "vocabulary"}},
             "config": {**card["config"], "max_len": 8}}
    ModelStore(lake).save("short-encoder", "v-short", LoadedEncoder(loaded.encoder, loaded.vocabulary), short)
    config = dataclasses.replace(CONFIG, encoder=dataclasses.replace(CONFIG.encoder, model_name="short-encoder"))
    manifest = run_embed(lake, SPARE_DAY, config, model_version="v-short")
    metrics = manifest["metrics"]["embed"]
    con = open_catalog(lake)
    longer = con.execute(f"SELECT count(*) FROM sequences WHERE dt = '{SPARE_DAY}' AND n_events > 8").fetchone()[0]
    assert metrics["truncated_by_encoder"] == longer > 0
    embedded = con.execute(f"SELECT max(n_events_embedded) FROM {TABLE} WHERE dt = '{SPARE_DAY}'").fetchone()[0]
    assert embedded == 8


def test_nan_time_features_are_quarantined_by_embed_and_the_rest_published(trained_lake):
    lake, card, _ = trained_lake
    day = SPARE_DAY
    manifest, files = published_output(lake, "build-sequences", f"dt={day}", "sequences")
    target = files[0].path
    table = lake.read_table(target)
    gaps = table.column("log_gap_prev_s").to_pylist()
    broken_row = next(i for i, g in enumerate(gaps) if len(g) > 1)
    gaps[broken_row][1] = float("nan")
    table = table.set_column(table.schema.get_field_index("log_gap_prev_s"), "log_gap_prev_s",
                             pa.array(gaps, pa.list_(pa.float32())))
    lake.write_table(target, table)
    # the run id comes from the published manifest, which is unchanged: force a new attempt
    out = run_embed(lake, day, CONFIG, force=True)
    assert out["quarantine"]["sequences"]["by_reason"] == {"not_finite:log_gap_prev_s": 1}
    assert out["outputs"][TABLE]["rows"] == sum(f.rows for f in files) - 1


def test_cli_reports_an_unknown_model_version_clearly(trained_lake):
    lake, _, _ = trained_lake
    proc = subprocess.run([sys.executable, "-m", "lakelens", "run", "embed", "--lake", lake.root_uri,
                           "--date", str(TRAIN_DAYS[0]), "--model", "v-missing"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no model behavior-encoder/v-missing" in proc.stderr and "Traceback" not in proc.stderr


def test_ray_train_with_the_same_seed_is_reproducible(trained_lake):
    lake, _, _ = trained_lake
    tiny = dataclasses.replace(CONFIG, encoder=dataclasses.replace(
        CONFIG.encoder, model_name="tiny", architecture="bilstm-tiny", epochs=2, max_train_sequences=1500))
    first = run_train_encoder(lake, TRAIN_DAYS[:1], tiny)
    second = run_train_encoder(lake, TRAIN_DAYS[:1], tiny, force=True)
    a = ModelStore(lake).load("tiny", first["version"], LoadedEncoder).encoder.state_dict()
    b = ModelStore(lake).load("tiny", second["version"], LoadedEncoder).encoder.state_dict()
    assert first["version"] == second["version"] and second["saved_at"] > first["saved_at"]
    assert all(torch.equal(a[k], b[k]) for k in a)
