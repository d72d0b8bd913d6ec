"""Typed job configuration: defaults in code, overridable from a TOML file and from flags.

Every section is a pydantic dataclass in strict mode: a TOML value of the wrong type, a choice
outside its list or a number out of bounds is an error naming the file (or "flags") and the
dotted key, never silently coerced. Assignment after construction is validated the same way.
They stay plain dataclasses for `dataclasses.asdict`, `dataclasses.replace` and `vars`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

# strict: no "3" -> 3, no 2.7 -> 2, a string is not a list (an int is still a float);
# inf and nan pass no bound check, so they are refused outright
STRICT = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)

NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]
NonNegFloat = Annotated[float, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0, le=1)]

# the values of ray.data.context.ShuffleStrategy (tests check they stay in step)
ShuffleStrategy = Literal["sort_shuffle_pull_based", "sort_shuffle_push_based", "hash_shuffle", "shuffle_v2",
                          "gpu_shuffle"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# operators.lens.components.COMPOSITES, listed here so that reading a config needs no torch
Composite = Literal["auto", "epsilon-plus-flat", "epsilon-plus", "epsilon-alpha2-beta1-flat", "gradient", "attn-lrp"]
# where a model-bound stage runs: "auto" takes the GPUs the cluster has when the stage starts (none: CPU);
# "cuda" requires one (infra/devices.py), so a GPU job never silently runs on CPU; "cpu" never asks for one
Device = Literal["auto", "cpu", "cuda"]


class ConfigError(ValueError):
    """A config file or flag that cannot be applied; `problems` holds one line per wrong key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(config=STRICT)
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


@dataclass(config=STRICT)
class RayConfig:
    """Local Ray by default; RAY_ADDRESS (or `address`) attaches to a cluster."""

    address: str | None = None
    num_cpus: PosInt | None = None
    show_progress: bool = True
    # Ray Data's hash shuffle starts aggregator actors per run, which costs more than the
    # shuffle itself for daily partitions on small clusters; "hash_shuffle" suits very wide ones.
    shuffle_strategy: ShuffleStrategy = "sort_shuffle_pull_based"
    # Python log level inside Ray workers. Without the dashboard, Ray Train's placement-group
    # cleaner warns every second that it cannot query actor state; job errors still show.
    worker_log_level: LogLevel = "ERROR"
    # a stage whose device is "cuda" waits this long for an autoscaler to bring up a GPU node before it
    # fails (0: fail at once when no node has a GPU)
    gpu_wait_s: NonNegInt = 0


@dataclass(config=STRICT)
class SequenceConfig:
    lookback_hours: PosFloat = 24.0
    max_len: PosInt = 64
    # hash buckets for the user shuffle; 0 picks one from the input size
    num_buckets: NonNegInt = 0
    # how late an event may land in the partition after its own day
    late_arrival_days: NonNegInt = 1


@dataclass(config=STRICT)
class EncoderConfig:
    """Training and serving of the behaviour-sequence encoder (`train-encoder`, `embed`)."""

    model_name: Annotated[str, Field(min_length=1)] = "behavior-encoder"  # a folder name in models/
    architecture: str = "bilstm-32"  # a name in operators.encoder.model.ARCHITECTURES
    max_len: PosInt = 64  # events per sequence the encoder reads (the latest ones)
    # the training sample: at most this many sequences, picked by a hash of transaction_id
    max_train_sequences: PosInt = 200_000
    # held-out users for early stopping; training refuses an empty split, so both ends are open
    valid_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    min_event_count: PosInt = 2  # rarer event types share the out-of-vocabulary id
    epochs: PosInt = 40
    batch_size: Annotated[int, Field(ge=2)] = 256  # contrastive batches need negatives
    learning_rate: PosFloat = 4e-3
    patience: PosInt = 4
    seed: NonNegInt = 0  # numpy's default_rng refuses negative seeds
    temperature: PosFloat = 1.0  # divides the similarities
    mask_prob: Share = 0.15
    oov_prob: Share = 0.1  # events a training view shows as never seen, so renamed events shift embeddings less
    composition_weight: NonNegFloat = 2.0
    num_workers: PosInt = 2  # Ray Train data-parallel workers


@dataclass(config=STRICT)
class EmbedConfig:
    """Serving the encoder over a day's sequences (`embed`)."""

    batch_size: PosInt = 2048
    actors: NonNegInt = 0  # 0: one per GPU, else one per CPU left after reading
    device: Device = "auto"
    top_events: PosInt = 5  # most-attended events kept per sequence


@dataclass(config=STRICT)
class ClusterConfig:
    """The behaviour-clusters job: hybrid features, pHDBSCAN, risk flags and rules."""

    window_days: PosInt = 3
    # optional: the timing_* columns (timing_log_gap_std, timing_log_dwell_std, timing_same_gap_share,
    # timing_gap_autocorr) come from the sessions (operators/timing.py), and rules may name them
    expert_numeric: list[str] = field(default_factory=lambda: [
        "account_age_days", "txn_velocity_24h", "amount_to_user_avg", "amount", "hour_of_day"])
    expert_boolean: list[str] = field(default_factory=lambda: ["is_new_device", "ip_country_mismatch"])
    expert_categorical: list[str] = field(default_factory=lambda: ["payment_method"])
    # 0 drops a feature family (the expert-only and embedding-only comparisons)
    expert_weight: NonNegFloat = 0.25
    embedding_weight: NonNegFloat = 1.0
    # the signature of rare event types the encoder never saw (operators/features.unseen_signature)
    unseen_weight: NonNegFloat = 1.0
    # how regular the session is (operators/features.timing_block): scripts that replay people's flow
    # at a constant pace sit apart from the people they copy
    timing_weight: NonNegFloat = 1.0
    min_cluster_size: Annotated[int, Field(ge=2)] = 25
    min_samples: PosInt = 10
    cluster_selection_method: Literal["eom", "leaf"] = "eom"
    # EOM may keep one dominant cluster holding most of the window, fraud rings included; no
    # cluster may hold more than this share of the window's transactions (0 disables)
    max_cluster_share: Share = 0.2
    # flagging thresholds (see operators/risk.py); 0 lifts a threshold
    min_flag_size: NonNegInt = 20
    min_labelled: NonNegInt = 3
    min_fraud_rate_lower: Share = 0.25
    min_lift: NonNegFloat = 3.0
    # rules (0 rules: none searched)
    max_rules: NonNegInt = 3
    max_conditions: PosInt = 3
    # daily runs: days after a full re-cluster during which runs assign new transactions to the
    # existing clusters and re-cluster only the noise (0: every run re-clusters the whole window)
    full_every_days: NonNegInt = 7
    # lineage (see operators/lineage.py)
    lineage_min_overlap: Share = 0.3  # a Jaccard index
    lineage_max_centroid_distance: NonNegFloat = 0.25
    lineage_size_tolerance: NonNegFloat = 0.1  # a relative size change, may exceed 1
    # incremental runs: a new transaction joins an existing cluster only when its predicted outlier
    # score is within this quantile of the cluster's members' scores (operators/assignment.py)
    join_quantile: Share = 0.95
    # how the noise pool is clustered: "leaf" keeps small dense new patterns apart from the diffuse rest
    emerging_selection_method: Literal["eom", "leaf"] = "leaf"
    # ... at this finer density scale (at most min_samples): patterns of a few dozen transactions, sparser
    # than the big groups, dissolve into their surroundings when core distances reach min_samples neighbours
    emerging_min_samples: PosInt = 5
    # noise left after that re-cluster joins the cluster that holds at least this share of its min_samples
    # nearest neighbours (the fringe of a group that HDBSCAN leaves as noise below a capped or leaf cluster;
    # operators/assignment.attach_to_neighbours); 0 leaves all of it noise
    attach_share: Share = 0.5
    # an incremental cluster counts as emerging when new, or grown by at least this factor
    emerging_growth: Annotated[float, Field(ge=1)] = 1.5
    # scale-out (docs/scale_out.md): pHDBSCAN over this many Ray shard actors that read their rows from the
    # run's staging area; 0 picks one shard per `shard_above` points of the window (1: single-node fit)
    shards: NonNegInt = 0
    shard_above: PosInt = 2_000_000
    # the driver's memory budget in GiB (0: unchecked): stages are planned against it before they start
    # and the run fails fast, saying what to change, when one cannot fit
    driver_memory_gb: NonNegFloat = 0.0


@dataclass(config=STRICT)
class LensConfig:
    """The semantic-lens job: which model, which layers, which foundation model, which concepts."""

    model_id: str = ""
    architecture: str = "tiny-cnn"  # a name in operators.lens.models, torchvision:<name>, timm:<name>, torchscript
    weights: str = ""  # a path in the lake, or a local path
    num_classes: NonNegInt = 0
    class_names: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    image_size: NonNegInt = 0  # resize images to this before the model (0: as stored)
    # the model's own input transforms (operators/lens/preprocess.py): "" (as stored, pixels in [0, 1]),
    # "timm" (the model's data config) or "torchvision:<weights>" (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2)
    preprocess: str = ""
    foundation: str = "lakelens-tiny-clip"  # an open_clip architecture
    foundation_weights: str = ""  # a path in the lake, or a local path; never a hub download
    vocabulary: list[str] = field(default_factory=list)  # concept labels to name components with
    templates: list[str] = field(default_factory=lambda: ["a {}", "an image of a {}"])
    top_k: PosInt = 20
    # which top-k the component embeddings come from
    examples_mode: Literal["activation", "relevance"] = "relevance"
    # crop each example to its channel-conditioned relevance (CRP) before embedding; else whole images
    crop_examples: bool = True
    crop_threshold: Share = 0.3  # the region: smoothed relevance above this share of its peak
    crop_min_side: Share = 0.25  # the smallest crop, as a share of the image side
    # the crop's side over the region's: a part of an object is named by the foundation model only
    # with some of the object around it
    crop_context: Annotated[float, Field(ge=1)] = 1.5
    # auto: the architecture family's own (EpsilonPlusFlat for CNNs, AttnLRP for vision transformers)
    composite: Composite = "auto"
    # false: activations only, one plain forward per image (the semanticlens package's mode): no relevance
    # top-k, no audits, no crops
    relevance: bool = True
    # relevance of the predicted class, or of the label where known
    target: Literal["predicted", "label"] = "predicted"
    batch_size: PosInt = 128
    actors: NonNegInt = 0  # 0: one per GPU, else one per 8 CPUs of the cluster (at least one)
    threads: NonNegInt = 0  # torch threads per CPU actor; 0: the cluster's CPUs over the actors
    # stage 1 checkpoints its statistics per block of input files of about this many rows, so a killed
    # run resumes without recomputing finished blocks (0: one block)
    checkpoint_rows: NonNegInt = 20_000
    device: Device = "auto"  # not part of the run id: the same work on another device
    # audits: per class name, the concepts the model should rely on and the ones it must not
    expected: dict[str, list[str]] = field(default_factory=dict)
    spurious: dict[str, list[str]] = field(default_factory=dict)
    # a component counts for a concept above this alignment, a difference of two cosines
    min_alignment: Annotated[float, Field(ge=-2, le=2)] = 0.02
    max_spurious_share: Share = 0.15  # an audit flags a class whose relevance goes this much to spurious concepts


@dataclass(config=STRICT)
class CatalogConfig:
    """The lake's DuckDB catalog outside `lakelens sql`."""

    # a local DuckDB file path that jobs refresh with the catalog after every publish (empty: off)
    export: str = ""


@dataclass(config=STRICT)
class DriftConfig:
    """When today's data has moved away from what the encoder was trained on (operators/drift.py)."""

    max_oov_share: Share = 0.05  # events whose type the encoder never saw
    max_embedding_shift: Annotated[float, Field(gt=0)] = 1.5  # kNN distance to the training reference, as a ratio
    max_refused_share: Share = 0.3  # new transactions the incremental gate refused
    reference_sample: PosInt = 2000  # held-out embeddings stored with a trained encoder


@dataclass(config=STRICT)
class LakelensConfig:
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sequences: SequenceConfig = field(default_factory=SequenceConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    lens: LensConfig = field(default_factory=LensConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> "LakelensConfig":
        """Defaults, then the TOML file's sections, then dotted overrides such as {"sequences.max_len": 32}.

        Overrides whose value is None are skipped. Raises ConfigError naming the file (or "flags")
        and each wrong key; nothing is applied unless everything is valid.
        """
        sections = _section_types(cls)
        values: dict[str, dict[str, Any]] = {name: {} for name in sections}
        config = cls()
        if path is not None:
            source = str(path)
            with open(path, "rb") as handle:
                try:
                    data = tomllib.load(handle)
                except tomllib.TOMLDecodeError as exc:
                    raise ConfigError([f"{source}: not valid TOML: {exc}"]) from exc
            _merge(values, data, sections, source)
            # validated before the flags so that its errors name the file
            config = _build(cls, values, sections, source)
        flags: dict[str, dict[str, Any]] = {}
        problems = []
        for dotted, value in (overrides or {}).items():
            if value is None:
                continue
            section, _, name = dotted.partition(".")
            if section not in sections or not name:
                problems.append(f"flags: unknown config key {dotted!r}; expected <section>.<key> with a section "
                                f"in {sorted(sections)}")
                continue
            flags.setdefault(section, {})[name] = value
        if problems:
            raise ConfigError(problems)
        if flags:
            _merge(values, flags, sections, "flags")
            config = _build(cls, values, sections, "flags")
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The config as TOML that `load` reads back equal; None values are left out (TOML has no null)."""
        import tomli_w  # only writing TOML needs it; reading configs must not

        return tomli_w.dumps(_without_none(self.to_dict()))


def _section_types(cls: type) -> dict[str, type]:
    # the annotations are strings under `from __future__ import annotations`: take the defaults' types
    default = cls()
    return {f.name: type(getattr(default, f.name)) for f in dataclasses.fields(cls)}


def _merge(values: dict[str, dict[str, Any]], data: dict[str, Any], sections: dict[str, type], source: str) -> None:
    """Checks the names in `data` (sections of keys) and lays them over `values`; all or nothing."""
    problems = []
    for section, body in data.items():
        if section not in sections:
            problems.append(f"{source}: unknown config key {section!r}; expected one of {sorted(sections)}")
        elif not isinstance(body, dict):
            problems.append(f"{source}: {section} = {body!r}: a section must be a table of keys ([{section}])")
        else:
            known = sorted(f.name for f in dataclasses.fields(sections[section]))
            problems += [f"{source}: unknown config key '{section}.{key}'; expected one of {known}"
                         for key in body if key not in known]
    if problems:
        raise ConfigError(problems)
    for section, body in data.items():
        values[section].update(body)


def _build(cls: type, values: dict[str, dict[str, Any]], sections: dict[str, type], source: str) -> Any:
    built, problems = {}, []
    for name, section_type in sections.items():
        try:
            built[name] = section_type(**values[name])
        except ValidationError as exc:
            problems += [_describe(source, name, error) for error in exc.errors()]
    if problems:
        raise ConfigError(problems)
    return cls(**built)


def _describe(source: str, section: str, error: dict[str, Any]) -> str:
    """`job.toml: clusters.min_cluster_size = 2.7: Input should be a valid integer`."""
    key = ".".join([section, *(str(part) for part in error["loc"])])
    return f"{source}: {key} = {error['input']!r}: {error['msg']}"


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in values.items() if v is not None}
