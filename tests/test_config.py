"""The job configuration: strict types, choices and bounds, errors that name the file and the key."""

import dataclasses
import re
import typing

import pytest
from pydantic import ValidationError

from lakelens.infra.config import (
    CatalogConfig, ClusterConfig, ConfigError, LakelensConfig, LensConfig, RayConfig, SequenceConfig,
)

EVERY_SECTION = """
[storage]
endpoint_url = "http://localhost:8333"
region = "eu-west-1"
access_key_id = "key"
secret_access_key = "secret"

[ray]
address = "ray://head:10001"
num_cpus = 4
show_progress = false
shuffle_strategy = "hash_shuffle"
worker_log_level = "WARNING"

[sequences]
lookback_hours = 12.5
max_len = 32
num_buckets = 8
late_arrival_days = 0

[encoder]
model_name = "short-encoder"
architecture = "bilstm-tiny"
epochs = 2
batch_size = 64
learning_rate = 1e-3
valid_fraction = 0.25

[embed]
batch_size = 32
actors = 2
top_events = 3

[clusters]
window_days = 2
expert_numeric = ["amount"]
expert_weight = 0.0
min_cluster_size = 2
min_samples = 1
cluster_selection_method = "leaf"
max_cluster_share = 0.0
full_every_days = 0

[lens]
model_id = "tiny-cnn-world"
num_classes = 2
class_names = ["triangle", "square"]
layers = ["block2", "block3"]
vocabulary = ["triangle", "corner marker"]
examples_mode = "activation"
composite = "gradient"
target = "label"
crop_context = 1.0
expected = { triangle = ["triangle"] }
spurious = { triangle = ["corner marker"] }

[catalog]
export = "catalog.duckdb"
"""


def _write(tmp_path, text: str, name: str = "job.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _load_error(path: str) -> str:
    with pytest.raises(ConfigError) as caught:
        LakelensConfig.load(path)
    return str(caught.value)


def test_the_defaults_are_a_valid_config():
    config = LakelensConfig()
    assert LakelensConfig.load() == config
    assert config.catalog == CatalogConfig(export="")  # the catalog export is off unless asked for


def test_a_file_setting_every_section_loads_with_its_values(tmp_path):
    config = LakelensConfig.load(_write(tmp_path, EVERY_SECTION))
    assert config.storage.region == "eu-west-1" and config.ray.num_cpus == 4
    assert config.ray.shuffle_strategy == "hash_shuffle" and config.sequences.lookback_hours == 12.5
    assert config.encoder.epochs == 2 and config.embed.top_events == 3
    assert config.clusters.cluster_selection_method == "leaf" and config.clusters.expert_numeric == ["amount"]
    assert config.lens.layers == ["block2", "block3"] and config.lens.expected == {"triangle": ["triangle"]}
    assert config.catalog.export == "catalog.duckdb"
    # keys the file leaves out keep their defaults
    assert config.encoder.max_len == 64 and config.clusters.min_lift == 3.0


def test_a_float_for_an_int_is_an_error_naming_the_file_and_the_key_not_a_truncation(tmp_path):
    path = _write(tmp_path, "[clusters]\nmin_cluster_size = 2.7\n")
    assert _load_error(path) == f"{path}: clusters.min_cluster_size = 2.7: Input should be a valid integer"


def test_a_choice_outside_its_list_is_an_error_naming_the_file_the_key_and_the_choices(tmp_path):
    path = _write(tmp_path, '[clusters]\ncluster_selection_method = "bogus"\n')
    message = _load_error(path)
    assert message.startswith(f"{path}: clusters.cluster_selection_method = 'bogus'")
    assert "'eom' or 'leaf'" in message


def test_a_string_for_a_list_is_an_error_naming_the_file_and_the_key(tmp_path):
    path = _write(tmp_path, '[lens]\nlayers = "block3"\n')
    assert _load_error(path) == f"{path}: lens.layers = 'block3': Input should be a valid list"


def test_a_string_for_a_number_is_an_error_not_a_conversion(tmp_path):
    path = _write(tmp_path, '[sequences]\nmax_len = "32"\n')
    assert f"{path}: sequences.max_len = '32'" in _load_error(path)


def test_an_out_of_bounds_value_is_an_error_saying_the_bound(tmp_path):
    path = _write(tmp_path, "[clusters]\nmin_cluster_size = 1\n")
    assert _load_error(path) == (f"{path}: clusters.min_cluster_size = 1: "
                                 "Input should be greater than or equal to 2")
    share = _write(tmp_path, "[clusters]\nmax_cluster_share = 1.5\n", "share.toml")
    assert "clusters.max_cluster_share = 1.5: Input should be less than or equal to 1" in _load_error(share)


def test_several_wrong_keys_are_reported_together(tmp_path):
    path = _write(tmp_path, '[clusters]\nmin_cluster_size = 2.7\ncluster_selection_method = "bogus"\n'
                            '[lens]\nlayers = "block3"\nexpected = { triangle = [3] }\n')
    with pytest.raises(ConfigError) as caught:
        LakelensConfig.load(path)
    keys = [line.split(" = ")[0] for line in caught.value.problems]
    assert keys == [f"{path}: clusters.min_cluster_size", f"{path}: clusters.cluster_selection_method",
                    f"{path}: lens.layers", f"{path}: lens.expected.triangle.0"]


def test_an_unknown_key_is_an_error_naming_the_file_and_listing_the_valid_keys(tmp_path):
    path = _write(tmp_path, "[sequences]\nmax_length = 32\n")
    message = _load_error(path)
    assert message.startswith(f"{path}: unknown config key 'sequences.max_length'")
    assert all(name in message for name in ("lookback_hours", "max_len", "num_buckets", "late_arrival_days"))


def test_an_unknown_section_is_an_error_listing_the_sections(tmp_path):
    path = _write(tmp_path, "[sequence]\nmax_len = 32\n")
    message = _load_error(path)
    assert message.startswith(f"{path}: unknown config key 'sequence'") and "'sequences'" in message


def test_a_section_that_is_not_a_table_is_an_error_naming_the_file_and_the_section(tmp_path):
    path = _write(tmp_path, "clusters = 3\n")
    assert _load_error(path).startswith(f"{path}: clusters = 3: a section must be a table")


def test_a_wrong_override_is_an_error_naming_flags_and_the_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        LakelensConfig.load(None, {"clusters.window_days": 0})
    assert str(caught.value) == "flags: clusters.window_days = 0: Input should be greater than or equal to 1"
    with pytest.raises(ConfigError, match=r"^flags: unknown config key 'clusters.window'"):
        LakelensConfig.load(None, {"clusters.window": 3})


def test_an_override_wins_over_the_file_and_none_overrides_are_skipped(tmp_path):
    path = _write(tmp_path, "[sequences]\nmax_len = 16\nlookback_hours = 6.0\n")
    config = LakelensConfig.load(path, {"sequences.max_len": 32, "sequences.lookback_hours": None})
    assert config.sequences == SequenceConfig(max_len=32, lookback_hours=6.0)


def test_a_wrong_file_fails_before_any_override_is_applied(tmp_path):
    path = _write(tmp_path, "[sequences]\nmax_len = 0\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: sequences.max_len = 0")):
        LakelensConfig.load(path, {"sequences.max_len": 32})


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path):
    path = _write(tmp_path, "[sequences\nmax_len = 32\n")
    assert _load_error(path).startswith(f"{path}: not valid TOML")


def test_an_int_is_accepted_for_a_float_field_and_stored_as_a_float(tmp_path):
    config = LakelensConfig.load(_write(tmp_path, "[sequences]\nlookback_hours = 24\n"))
    assert config.sequences.lookback_hours == 24.0 and isinstance(config.sequences.lookback_hours, float)


def test_to_toml_loads_back_to_an_equal_config(tmp_path):
    config = LakelensConfig.load(_write(tmp_path, EVERY_SECTION))
    assert LakelensConfig.load(_write(tmp_path, config.to_toml(), "written.toml")) == config
    defaults = LakelensConfig()  # None-valued keys (no TOML null) are left out and come back as None
    assert "address" not in defaults.to_toml()
    assert LakelensConfig.load(_write(tmp_path, defaults.to_toml(), "defaults.toml")) == defaults


def test_assigning_a_bad_value_after_construction_raises_and_keeps_the_old_value():
    clusters = ClusterConfig()
    with pytest.raises(ValidationError, match="cluster_selection_method"):
        clusters.cluster_selection_method = "bogus"
    with pytest.raises(ValidationError, match="min_cluster_size"):
        clusters.min_cluster_size = 2.7
    assert clusters.cluster_selection_method == "eom" and clusters.min_cluster_size == 25


def test_constructing_or_replacing_with_a_bad_value_raises():
    with pytest.raises(ValidationError):
        LensConfig(layers="block3")
    with pytest.raises(ValidationError):
        dataclasses.replace(ClusterConfig(), min_samples=0)
    with pytest.raises(ValidationError):
        LakelensConfig(clusters={"min_samples": 3})  # sections are dataclasses, not dicts


def test_sections_stay_plain_dataclasses():
    config = LakelensConfig()
    assert [f.name for f in dataclasses.fields(config)] == [
        "storage", "ray", "sequences", "encoder", "embed", "clusters", "lens", "catalog", "drift"]
    assert vars(config.clusters) == config.to_dict()["clusters"]
    replaced = dataclasses.replace(config, clusters=dataclasses.replace(config.clusters, expert_weight=0.0))
    assert replaced.clusters.expert_weight == 0.0 and config.clusters.expert_weight == 0.25


def test_the_shuffle_strategies_are_ray_datas():
    from ray.data.context import ShuffleStrategy

    choices = typing.get_args(typing.get_type_hints(RayConfig)["shuffle_strategy"])
    assert set(choices) == {s.value for s in ShuffleStrategy}


def test_the_composites_are_the_ones_the_recorder_accepts():
    from lakelens.operators.lens.components import COMPOSITES

    assert typing.get_args(typing.get_type_hints(LensConfig)["composite"]) == COMPOSITES
