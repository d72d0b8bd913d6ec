"""`lakelens run semantic-lens`: what each component of a vision model encodes, in CLIP space.

    images(lake) --validate--> [ComponentStatsActor: decode, one forward + one backward per batch,
                                streaming top-k by activation and by relevance, per-class relevance]
        --> exact global top-k (merge) --> component_examples
    images(only the union of top-k samples) --> [ExampleCropper] --> [FoundationEmbedder] --> embedded views
        --> component embedding = mean of its examples' unit embeddings
        --> clarity, polysemanticity, redundancy, labels, audits --> components, concept_labels, audits
        --> report/index.html --> publish
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.config import LakelensConfig, LensConfig
from lakelens.infra.contracts import IMAGES
from lakelens.infra.devices import stage_gpus
from lakelens.infra.errors import InputError
from lakelens.infra.jobs import Job, run_job
from lakelens.infra.lake_io import collect_table, read_validated
from lakelens.infra.model_store import ModelStore
from lakelens.infra.runs import InputFile, Run, describe_inputs
from lakelens.infra.storage import Lake
from lakelens.operators.lens.components import ComponentStats
from lakelens.operators.lens.semantics import (
    AUDITS_SCHEMA, EXAMPLES_SCHEMA, LABELS_SCHEMA, SPURIOUS_SAMPLES_SCHEMA, VIEWS_SCHEMA, ComponentViews,
    SampleRelevance, SemanticsSpec, component_semantics, examples_table, spurious_samples, views_per_component,
    with_crop_boxes,
)
from lakelens.pipelines.lens_actors import (
    ComponentStatsActor, ExampleCropper, FoundationEmbedder, only_samples, whole_images,
)

JOB = "semantic-lens"
log = logging.getLogger(__name__)


def plan_semantic_lens(lake: Lake, dataset: str, config: LakelensConfig) -> Job:
    cfg = config.lens
    _check(lake, cfg)
    inputs = describe_inputs(lake, "images", [dataset])
    if not inputs:
        raise InputError(f"no image Parquet files under {lake.uri(dataset)}")

    def describe(m: dict[str, Any]) -> str:
        e = m["metrics"]["embed_examples"]
        return (f"{e['dataset_samples']:,} images, {len(cfg.layers)} layers; embedded {e['embedded_views']:,} example "
                f"{'crops' if cfg.crop_examples else 'images'}; audits flag: {m['metrics']['flagged'] or 'nothing'}")

    # the device is where the work runs, not what it is: left out of the params (and so of the run id)
    lens_params = {k: v for k, v in vars(cfg).items() if k not in ("device", "threads", "checkpoint_rows")}
    return Job(JOB, f"model={cfg.model_id}", {"dataset": dataset, "lens": lens_params}, inputs,
               compute=lambda run: _compute(run, cfg, config.ray.gpu_wait_s), describe=describe,
               outputs={"component_examples": EXAMPLES_SCHEMA, "concept_labels": LABELS_SCHEMA, "audits": AUDITS_SCHEMA,
                        "spurious_samples": SPURIOUS_SAMPLES_SCHEMA})


def run_semantic_lens(lake: Lake, dataset: str, config: LakelensConfig, force: bool = False) -> dict[str, Any]:
    return run_job(lake, plan_semantic_lens(lake, dataset, config), config, force)


def _check(lake: Lake, cfg: LensConfig) -> None:
    """Fail before Ray starts: missing settings, bad layer names, unreadable or mismatched weights."""
    from lakelens.operators.lens.components import make_attribution
    from lakelens.operators.lens.models import create_model, resolve_layers
    from lakelens.operators.lens.preprocess import model_input

    if not cfg.model_id:
        raise InputError("lens.model_id is required: it names the model in the result tables")
    if not cfg.vocabulary:
        raise InputError("the concept vocabulary is empty: give lens.vocabulary (or --vocabulary FILE) at least one label")
    if not cfg.layers:
        raise InputError("name at least one layer to analyse (lens.layers)")
    if not cfg.relevance and (cfg.examples_mode == "relevance" or cfg.crop_examples or cfg.expected or cfg.spurious):
        raise InputError("lens.relevance = false computes activations only: set examples_mode = \"activation\", "
                         "crop_examples = false and no audits (expected, spurious)")
    if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
        raise InputError(f"{len(cfg.class_names)} class names for {cfg.num_classes} classes")
    model = create_model(cfg.architecture, cfg.num_classes, ModelStore(lake).read_weights(cfg.weights))
    resolve_layers(model, cfg.layers)
    for key, check in (("lens.preprocess", lambda: model_input(cfg.preprocess, model, cfg.image_size)),
                       ("lens.composite", lambda: cfg.relevance and make_attribution(cfg.composite, model))):
        try:
            check()
        except ValueError as exc:
            raise InputError(f"{key}: {exc}") from None


def _compute(run: Run, cfg: LensConfig, gpu_wait_s: int = 0) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    lake = run.lake
    gpus = stage_gpus("lens.device", cfg.device, gpu_wait_s)  # "cuda" and no GPU: InputError naming the key
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # CPU actors are few and multi-threaded (intra-op parallelism beats one single-threaded model per core)
    actors = cfg.actors or gpus or max(1, cpus // 8)
    threads = cfg.threads or max(1, cpus // actors)
    # max_restarts=0: an actor that dies fails the attempt instead of restarting from constructor arguments
    # in the object store (Ray logs an error for that pairing); a new attempt resumes from stage 1's checkpoints
    compute = {"compute": ActorPoolStrategy(size=actors), "num_gpus": 1 if gpus else 0, "num_cpus": 0 if gpus else 1,
               "max_restarts": 0}
    use_gpu = gpus > 0
    common = {"lake": lake, "cfg": cfg, "use_gpu": use_gpu, "threads": threads}
    class_names = cfg.class_names or [str(c) for c in range(cfg.num_classes)]
    audited = {class_names.index(c) for c in cfg.spurious if c in class_names}
    with run.stage("components"):
        stats, samples, blocks = _component_stats(run, cfg, {**common, "run": run, "audited": audited},
                                                  compute)
        stats.prune_ids()
        examples = examples_table(cfg.model_id, stats)
    run.metrics["components"] = {"images": stats.samples, "accuracy": stats.correct / stats.labelled if stats.labelled
                                 else None, "actors": actors, "threads_per_actor": threads,
                                 "device": "cuda" if gpus else "cpu", "blocks": blocks,
                                 "relevance_conservation": {k: round(v, 4) for k, v in stats.conservation().items()}}

    images = read_validated(run, IMAGES, run.inputs, columns=["sample_id", "image", "label"])
    with run.stage("embed_examples"):
        chosen = examples.filter(pc.equal(examples.column("mode"), cfg.examples_mode))
        needed = pa.array(sorted(set(chosen.column("sample_id").to_pylist())), pa.string())
        # the examples are read before the actors start: with the cropper and the embedder each holding a CPU,
        # a 2-CPU cluster had none left for the read tasks that feed them, and the stage stalled
        selected = images.map_batches(only_samples, fn_kwargs={"wanted": needed}, batch_format="pyarrow").materialize()
        if cfg.crop_examples:
            wanted: dict[str, list[tuple[str, int]]] = {}
            for r in chosen.select(["sample_id", "layer", "unit"]).to_pylist():
                wanted.setdefault(r["sample_id"], []).append((r["layer"], r["unit"]))
            views = selected.map_batches(ExampleCropper, fn_constructor_kwargs={"setup": ray.put({**common,
                                                                                                 "wanted": wanted})},
                                         batch_size=max(1, cfg.batch_size // 8), batch_format="pyarrow", **compute)
        else:
            views = selected.map_batches(whole_images, batch_format="pyarrow")
        embedded = views.map_batches(FoundationEmbedder, fn_constructor_kwargs={"setup": ray.put(common)},
                                     batch_size=cfg.batch_size, batch_format="pyarrow", **compute)
        embedded_views = collect_table(embedded, VIEWS_SCHEMA)
        example_views = views_per_component(embedded_views, chosen)
        run.write_table("component_examples", with_crop_boxes(examples, example_views, cfg.examples_mode))
    run.metrics["embed_examples"] = {"embedded_samples": len(needed), "embedded_views": embedded_views.num_rows,
                                     "cropped": cfg.crop_examples, "dataset_samples": stats.samples}

    with run.stage("semantics"):
        spec = SemanticsSpec(cfg.model_id, list(dict.fromkeys(cfg.vocabulary)), class_names, cfg.expected,
                             cfg.spurious, cfg.min_alignment, cfg.max_spurious_share)
        label_vectors, empty = _concept_vectors(lake, cfg, spec.vocabulary)
        components, labels, audits, per_layer = component_semantics(spec, stats, chosen, example_views,
                                                                     label_vectors, empty)
        tied = spurious_samples(spec, per_layer, samples)
    run.write_table("components", components)
    run.write_table("concept_labels", labels)
    run.write_table("audits", audits)
    run.write_table("spurious_samples", tied)
    thumbnails = {}
    if tied.num_rows:  # the report shows the most tied samples of each flagged class
        top = tied.filter(pc.less_equal(tied.column("rank"), REPORT_SPURIOUS_SAMPLES))
        shown = images.map_batches(only_samples, fn_kwargs={"wanted": top.column("sample_id").combine_chunks()},
                                   batch_format="pyarrow")
        thumbnails = dict(zip(*(collect_table(shown.select_columns(["sample_id", "image"]), pa.schema(
            [("sample_id", pa.string()), ("image", pa.binary())])).column(c).to_pylist() for c in ("sample_id", "image"))))
    report = f"{run.prefix}/report/index.html"
    lake.write_bytes(report, _report(cfg, components, chosen, example_views, audits, tied, thumbnails).encode())
    run.metrics["report"] = report
    run.metrics["flagged"] = ", ".join(r["class_name"] for r in audits.to_pylist() if r["flagged"])
    lake.delete_dir(_checkpoint_dir(run))  # everything is written: a retry of the commit recomputes


REPORT_SPURIOUS_SAMPLES = 12


def _checkpoint_dir(run: Run) -> str:
    """Per run id, not per attempt: a new attempt of the same work finds what a killed one finished."""
    return f"{run.prefix.rsplit('/', 1)[0]}/_checkpoints/components"


def _blocks(inputs: list[InputFile], rows: int) -> list[list[InputFile]]:
    """Consecutive input files grouped into blocks of at most `rows` rows (a larger file is a block alone)."""
    blocks: list[list[InputFile]] = []
    for f in inputs:
        if blocks and rows and sum(g.rows for g in blocks[-1]) + f.rows <= rows:
            blocks[-1].append(f)
        else:
            blocks.append([f])
    return blocks if rows else [list(inputs)]


def _component_stats(run: Run, cfg: LensConfig, setup: dict[str, Any], compute: dict[str, Any]
                     ) -> tuple[ComponentStats, SampleRelevance, dict[str, int]]:
    """Stage 1, block by block. Each finished block's statistics, its audited samples' relevances and the
    quarantine files it wrote are checkpointed; a later attempt of the same run restores them instead of
    recomputing the block. Blocks merge in order, so the result is the same whether a run was resumed or not."""
    import ray

    lake = run.lake
    ref = ray.put(setup)
    stats: ComponentStats | None = None
    samples = SampleRelevance()
    blocks = _blocks(run.inputs, cfg.checkpoint_rows)
    resumed = 0
    for number, block in enumerate(blocks, start=1):
        key = hashlib.sha1(json.dumps([(f.path, f.rows, f.bytes, f.mtime_ns) for f in block]).encode()).hexdigest()[:20]
        path = f"{_checkpoint_dir(run)}/{key}.pkl"
        if lake.exists(path):
            part, part_samples, quarantine = pickle.loads(lake.read_bytes(path))
            for name, data in quarantine.items():
                lake.write_bytes(f"{run.prefix}/quarantine/{name}", data)
            resumed += 1
            log.info("block %d/%d restored from its checkpoint", number, len(blocks))
        else:
            quarantine_dir = f"{run.prefix}/quarantine"
            before = {e.path for e in lake.list_files(quarantine_dir)}
            images = read_validated(run, IMAGES, block, columns=["sample_id", "image", "label"])
            partials = images.map_batches(ComponentStatsActor, fn_constructor_kwargs={"setup": ref},
                                          batch_size=cfg.batch_size, batch_format="pyarrow", **compute)
            blobs = collect_table(partials, pa.schema([("stats", pa.binary())])).column("stats").to_pylist()
            part, part_samples = None, SampleRelevance()
            # batches merge in a fixed order (float sums do not depend on which actor finished first)
            for blob in sorted(blobs, key=lambda b: hashlib.sha1(b).digest()):
                batch_stats, batch_samples = pickle.loads(blob)
                if batch_stats is not None:
                    part = batch_stats if part is None else part.merge(batch_stats)
                part_samples = part_samples.merge(batch_samples)
            if part is not None:
                part.prune_ids()
            quarantine = {e.path[len(quarantine_dir) + 1:]: lake.read_bytes(e.path)
                          for e in lake.list_files(quarantine_dir) if e.path not in before}
            lake.write_bytes(path, pickle.dumps((part, part_samples, quarantine)))
            log.info("block %d/%d done and checkpointed", number, len(blocks),
                     extra={"progress": {"done": number, "total": len(blocks)}})
        if part is not None:
            stats = part if stats is None else stats.merge(part)
        samples = samples.merge(part_samples)
    if stats is None:
        raise InputError("no image could be decoded; see the run's quarantine")
    return stats, samples, {"total": len(blocks), "resumed": resumed}


def _concept_vectors(lake: Lake, cfg: LensConfig, vocabulary: list[str]):
    """The foundation model's text embeddings of each concept and of the empty caption, per template."""
    import numpy as np

    from lakelens.operators.lens.foundation import load_foundation

    foundation = load_foundation(cfg.foundation, ModelStore(lake).local_copy(cfg.foundation_weights))
    label_vectors = np.stack([foundation.embed_texts([t.format(v) for t in cfg.templates]) for v in vocabulary])
    return label_vectors, foundation.embed_texts([t.format("") for t in cfg.templates])


def _report(cfg: LensConfig, components: pa.Table, chosen: pa.Table, views: ComponentViews, audits: pa.Table,
            tied: pa.Table, thumbnails: dict[str, bytes]) -> str:
    from lakelens.operators.lens.report import render_report

    ranked: dict[tuple[str, int], list[tuple[str, bytes]]] = {}
    for r in chosen.sort_by("rank").to_pylist():
        view = views[(r["layer"], r["unit"], r["sample_id"])]
        ranked.setdefault((r["layer"], r["unit"]), []).append((r["sample_id"], view["image"]))
    shown = tied.filter(pc.less_equal(tied.column("rank"), REPORT_SPURIOUS_SAMPLES)).to_pylist()
    return render_report(cfg.model_id, components.drop_columns(["embedding"]).to_pylist(), ranked, audits.to_pylist(),
                         [{**r, "image": thumbnails.get(r["sample_id"])} for r in shown])
