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
from lakelens.infra.runs import Run, describe_inputs
from lakelens.infra.storage import Lake
from lakelens.operators.lens.semantics import (
    AUDITS_SCHEMA, EXAMPLES_SCHEMA, LABELS_SCHEMA, VIEWS_SCHEMA, ComponentViews, SemanticsSpec, component_semantics,
    examples_table, views_per_component, with_crop_boxes,
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
    lens_params = {k: v for k, v in vars(cfg).items() if k != "device"}
    return Job(JOB, f"model={cfg.model_id}", {"dataset": dataset, "lens": lens_params}, inputs,
               compute=lambda run: _compute(run, cfg, config.ray.gpu_wait_s), describe=describe,
               outputs={"component_examples": EXAMPLES_SCHEMA, "concept_labels": LABELS_SCHEMA, "audits": AUDITS_SCHEMA})


def run_semantic_lens(lake: Lake, dataset: str, config: LakelensConfig, force: bool = False) -> dict[str, Any]:
    return run_job(lake, plan_semantic_lens(lake, dataset, config), config, force)


def _check(lake: Lake, cfg: LensConfig) -> None:
    """Fail before Ray starts: missing settings, bad layer names, unreadable or mismatched weights."""
    from lakelens.operators.lens.models import create_model, resolve_layers

    if not cfg.model_id:
        raise InputError("lens.model_id is required: it names the model in the result tables")
    if not cfg.vocabulary:
        raise InputError("the concept vocabulary is empty: give lens.vocabulary (or --vocabulary FILE) at least one label")
    if not cfg.layers:
        raise InputError("name at least one layer to analyse (lens.layers)")
    if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
        raise InputError(f"{len(cfg.class_names)} class names for {cfg.num_classes} classes")
    resolve_layers(create_model(cfg.architecture, cfg.num_classes, ModelStore(lake).read_weights(cfg.weights)), cfg.layers)


def _compute(run: Run, cfg: LensConfig, gpu_wait_s: int = 0) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    lake = run.lake
    gpus = stage_gpus("lens.device", cfg.device, gpu_wait_s)  # "cuda" and no GPU: InputError naming the key
    actors = cfg.actors or gpus or max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
    compute = {"compute": ActorPoolStrategy(size=actors), "num_gpus": 1 if gpus else 0, "num_cpus": 0 if gpus else 1}
    use_gpu = gpus > 0
    with run.stage("components"):
        images = read_validated(run, IMAGES, run.inputs, columns=["sample_id", "image", "label"])
        partials = images.map_batches(ComponentStatsActor,
                                      fn_constructor_kwargs={"lake": lake, "cfg": cfg, "run": run, "use_gpu": use_gpu},
                                      batch_size=cfg.batch_size, batch_format="pyarrow", **compute)
        blobs = collect_table(partials, pa.schema([("stats", pa.binary())])).column("stats").to_pylist()
        stats = None
        for done, blob in enumerate(blobs, start=1):
            part = pickle.loads(blob)
            if part is not None:
                stats = part if stats is None else stats.merge(part)
            log.info("merged %d/%d batch statistics", done, len(blobs), extra={"progress": {"done": done, "total": len(blobs)}})
        if stats is None:
            raise InputError("no image could be decoded; see the run's quarantine")
        stats.prune_ids()
        examples = examples_table(cfg.model_id, stats)
    run.metrics["components"] = {"images": stats.samples, "accuracy": stats.correct / stats.labelled if stats.labelled
                                 else None, "actors": actors, "device": "cuda" if gpus else "cpu"}

    with run.stage("embed_examples"):
        chosen = examples.filter(pc.equal(examples.column("mode"), cfg.examples_mode))
        needed = pa.array(sorted(set(chosen.column("sample_id").to_pylist())), pa.string())
        selected = images.map_batches(only_samples, fn_kwargs={"wanted": needed}, batch_format="pyarrow")
        if cfg.crop_examples:
            wanted: dict[str, list[tuple[str, int]]] = {}
            for r in chosen.select(["sample_id", "layer", "unit"]).to_pylist():
                wanted.setdefault(r["sample_id"], []).append((r["layer"], r["unit"]))
            views = selected.map_batches(ExampleCropper, fn_constructor_kwargs={"lake": lake, "cfg": cfg, "wanted": wanted,
                                                                            "use_gpu": use_gpu},
                                         batch_size=max(1, cfg.batch_size // 8), batch_format="pyarrow", **compute)
        else:
            views = selected.map_batches(whole_images, batch_format="pyarrow")
        embedded = views.map_batches(FoundationEmbedder, fn_constructor_kwargs={"lake": lake, "cfg": cfg, "use_gpu": use_gpu},
                                     batch_size=cfg.batch_size, batch_format="pyarrow", **compute)
        embedded_views = collect_table(embedded, VIEWS_SCHEMA)
        example_views = views_per_component(embedded_views, chosen)
        run.write_table("component_examples", with_crop_boxes(examples, example_views, cfg.examples_mode))
    run.metrics["embed_examples"] = {"embedded_samples": len(needed), "embedded_views": embedded_views.num_rows,
                                     "cropped": cfg.crop_examples, "dataset_samples": stats.samples}

    with run.stage("semantics"):
        spec = SemanticsSpec(cfg.model_id, list(dict.fromkeys(cfg.vocabulary)),
                             cfg.class_names or [str(c) for c in range(cfg.num_classes)], cfg.expected, cfg.spurious,
                             cfg.min_alignment, cfg.max_spurious_share)
        label_vectors, empty = _concept_vectors(lake, cfg, spec.vocabulary)
        components, labels, audits = component_semantics(spec, stats, chosen, example_views, label_vectors, empty)
    run.write_table("components", components)
    run.write_table("concept_labels", labels)
    run.write_table("audits", audits)
    report = f"{run.prefix}/report/index.html"
    lake.write_bytes(report, _report(cfg, components, chosen, example_views, audits).encode())
    run.metrics["report"] = report
    run.metrics["flagged"] = ", ".join(r["class_name"] for r in audits.to_pylist() if r["flagged"])


def _concept_vectors(lake: Lake, cfg: LensConfig, vocabulary: list[str]):
    """The foundation model's text embeddings of each concept and of the empty caption, per template."""
    import numpy as np

    from lakelens.operators.lens.foundation import load_foundation

    foundation = load_foundation(cfg.foundation, ModelStore(lake).local_copy(cfg.foundation_weights))
    label_vectors = np.stack([foundation.embed_texts([t.format(v) for t in cfg.templates]) for v in vocabulary])
    return label_vectors, foundation.embed_texts([t.format("") for t in cfg.templates])


def _report(cfg: LensConfig, components: pa.Table, chosen: pa.Table, views: ComponentViews, audits: pa.Table) -> str:
    from lakelens.operators.lens.report import render_report

    ranked: dict[tuple[str, int], list[tuple[str, bytes]]] = {}
    for r in chosen.sort_by("rank").to_pylist():
        view = views[(r["layer"], r["unit"], r["sample_id"])]
        ranked.setdefault((r["layer"], r["unit"]), []).append((r["sample_id"], view["image"]))
    return render_report(cfg.model_id, components.drop_columns(["embedding"]).to_pylist(), ranked, audits.to_pylist())
