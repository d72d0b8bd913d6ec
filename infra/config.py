"""Typed job configuration: defaults in code, overridable from a TOML file and from flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StorageConfig:
    """S3 endpoint and credentials. Unset fields fall back to the standard AWS environment."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    def resolved(self) -> "StorageConfig":
        env = os.environ
        return StorageConfig(
            endpoint_url=self.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            region=self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            access_key_id=self.access_key_id or env.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=self.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY"),
        )


@dataclass
class RayConfig:
    """Local Ray by default; RAY_ADDRESS (or `address`) attaches to a cluster."""

    address: str | None = None
    num_cpus: int | None = None
    show_progress: bool = True
    # Ray Data's hash shuffle starts aggregator actors per run, which costs more than the
    # shuffle itself for daily partitions on small clusters; "hash_shuffle" suits very wide ones.
    shuffle_strategy: str = "sort_shuffle_pull_based"
    # Python log level inside Ray workers. Without the dashboard, Ray Train's placement-group
    # cleaner warns every second that it cannot query actor state; job errors still show.
    worker_log_level: str = "ERROR"


@dataclass
class SequenceConfig:
    lookback_hours: float = 24.0
    max_len: int = 64
    # hash buckets for the user shuffle; 0 picks one from the input size
    num_buckets: int = 0
    # how late an event may land in the partition after its own day
    late_arrival_days: int = 1


@dataclass
class EncoderConfig:
    """Training and serving of the behaviour-sequence encoder (`train-encoder`, `embed`)."""

    model_name: str = "behavior-encoder"
    architecture: str = "bilstm-32"  # a name in operators.encoder.model.ARCHITECTURES
    max_len: int = 64  # events per sequence the encoder reads (the latest ones)
    # the training sample: at most this many sequences, picked by a hash of transaction_id
    max_train_sequences: int = 200_000
    valid_fraction: float = 0.2  # held-out users for early stopping
    min_event_count: int = 2  # rarer event types share the out-of-vocabulary id
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 4e-3
    patience: int = 4
    seed: int = 0
    temperature: float = 1.0
    mask_prob: float = 0.15
    composition_weight: float = 2.0
    num_workers: int = 2  # Ray Train data-parallel workers


@dataclass
class EmbedConfig:
    """Serving the encoder over a day's sequences (`embed`)."""

    batch_size: int = 2048
    actors: int = 0  # 0: one per GPU, else one per CPU left after reading
    top_events: int = 5  # most-attended events kept per sequence


@dataclass
class ClusterConfig:
    """The behaviour-clusters job: hybrid features, pHDBSCAN, risk flags and rules."""

    window_days: int = 3
    expert_numeric: list[str] = field(default_factory=lambda: [
        "account_age_days", "txn_velocity_24h", "amount_to_user_avg", "amount", "hour_of_day"])
    expert_boolean: list[str] = field(default_factory=lambda: ["is_new_device", "ip_country_mismatch"])
    expert_categorical: list[str] = field(default_factory=lambda: ["payment_method"])
    expert_weight: float = 0.25
    embedding_weight: float = 1.0
    min_cluster_size: int = 25
    min_samples: int = 10
    cluster_selection_method: str = "eom"
    # EOM may keep one dominant cluster holding most of the window, fraud rings included; no
    # cluster may hold more than this share of the window's transactions (0 disables)
    max_cluster_share: float = 0.2
    # flagging thresholds (see operators/risk.py)
    min_flag_size: int = 20
    min_labelled: int = 3
    min_fraud_rate_lower: float = 0.25
    min_lift: float = 3.0
    # rules
    max_rules: int = 3
    max_conditions: int = 3
    # daily runs: days after a full re-cluster during which runs assign new transactions to the
    # existing clusters and re-cluster only the noise (0: every run re-clusters the whole window)
    full_every_days: int = 7
    # lineage (see operators/lineage.py)
    lineage_min_overlap: float = 0.3
    lineage_max_centroid_distance: float = 0.25
    lineage_size_tolerance: float = 0.1


@dataclass
class LensConfig:
    """The semantic-lens job: which model, which layers, which foundation model, which concepts."""

    model_id: str = ""
    architecture: str = "tiny-cnn"  # a name in operators.lens.models, torchvision:<name>, timm:<name>, torchscript
    weights: str = ""  # a path in the lake, or a local path
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    image_size: int = 0  # resize images to this before the model (0: as stored)
    foundation: str = "lakelens-tiny-clip"  # an open_clip architecture
    foundation_weights: str = ""  # a path in the lake, or a local path; never a hub download
    vocabulary: list[str] = field(default_factory=list)  # concept labels to name components with
    templates: list[str] = field(default_factory=lambda: ["a {}", "an image of a {}"])
    top_k: int = 20
    examples_mode: str = "relevance"  # which top-k the component embeddings come from: relevance or activation
    # crop each example to its channel-conditioned relevance (CRP) before embedding; else whole images
    crop_examples: bool = True
    crop_threshold: float = 0.3  # the region: smoothed relevance above this share of its peak
    crop_min_side: float = 0.25  # the smallest crop, as a share of the image side
    # the crop's side over the region's: a part of an object is named by the foundation model only
    # with some of the object around it
    crop_context: float = 1.5
    composite: str = "epsilon-plus-flat"
    target: str = "predicted"  # relevance of the predicted class, or of the label where known ("label")
    batch_size: int = 128
    actors: int = 0  # 0: one per GPU, else one per CPU
    # audits: per class name, the concepts the model should rely on and the ones it must not
    expected: dict[str, list[str]] = field(default_factory=dict)
    spurious: dict[str, list[str]] = field(default_factory=dict)
    min_alignment: float = 0.02  # a component counts for a concept above this alignment
    max_spurious_share: float = 0.15  # an audit flags a class whose relevance goes this much to spurious concepts


@dataclass
class LakelensConfig:
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sequences: SequenceConfig = field(default_factory=SequenceConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    lens: LensConfig = field(default_factory=LensConfig)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> "LakelensConfig":
        """Defaults, then the TOML file's sections, then dotted overrides such as {"sequences.max_len": 32}."""
        config = cls()
        if path is not None:
            with open(path, "rb") as handle:
                _apply_nested(config, tomllib.load(handle), source=str(path))
        for dotted, value in (overrides or {}).items():
            if value is None:
                continue
            section, _, name = dotted.partition(".")
            _apply_nested(config, {section: {name: value}}, source="flags")
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _apply_nested(config: Any, values: dict[str, Any], source: str) -> None:
    known = {f.name: f for f in dataclasses.fields(config)}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{source}: unknown config key {key!r}; expected one of {sorted(known)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: section {key!r} must be a table")
            _apply_nested(current, value, source=f"{source}:{key}")
        else:
            setattr(config, key, _coerce(value, known[key].type, f"{source}:{key}"))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    text = str(annotation)
    try:
        if text.startswith("int"):
            return int(value)
        if text.startswith("float"):
            return float(value)
        if text.startswith("bool"):
            return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes"}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: cannot read {value!r} as {text}") from exc
    return value
