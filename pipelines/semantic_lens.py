"""`lakelens run semantic-lens`: what each component of a vision model encodes, in CLIP space.

    images(lake) --validate--> [ComponentStatsActor: decode, one forward + one backward per batch,
                                streaming top-k by activation and by relevance, per-class relevance]
        --> exact global top-k (merge) --> component_examples
    images(only the union of top-k samples) --> [FoundationEmbedder] --> per-sample embeddings
        --> component embedding = mean of its examples' unit embeddings
        --> clarity, polysemanticity, redundancy, labels, audits --> components, concept_labels, audits
        --> publish
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.config import LakelensConfig, LensConfig
from lakelens.infra.contracts import IMAGES, SOURCE_FILE, SOURCE_ROW, quarantine_rows
from lakelens.infra.lake_io import collect_table, read_validated
from lakelens.infra.ray_runtime import init_ray
from lakelens.infra.runs import Run, begin_run, describe_inputs
from lakelens.infra.storage import Lake

JOB = "semantic-lens"
EXAMPLE_MODES = ("activation", "relevance")

EXAMPLES_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("layer", pa.string()), ("unit", pa.int64()), ("mode", pa.string()),
    ("rank", pa.int64()), ("sample_id", pa.string()), ("score", pa.float64()),
    ("crop_box", pa.list_(pa.int32(), 4)),  # y0, x0, y1, x1 of the embedded crop; null: the whole image
])
VIEWS_SCHEMA = pa.schema([("sample_id", pa.string()), ("image", pa.binary()), ("layer", pa.string()),
                          ("unit", pa.int64()), ("crop_box", pa.list_(pa.int32(), 4))])
LABELS_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("layer", pa.string()), ("unit", pa.int64()), ("label", pa.string()),
    ("alignment", pa.float64()), ("rank", pa.int64()),
])
AUDITS_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("class_name", pa.string()), ("kind", pa.string()), ("concepts", pa.list_(pa.string())),
    ("relevance_share", pa.float64()), ("components", pa.list_(pa.string())), ("flagged", pa.bool_()),
    ("finding", pa.string()),
])


def components_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("model_id", pa.string()), ("layer", pa.string()), ("unit", pa.int64()),
        ("embedding", pa.list_(pa.float32(), dim)), ("label", pa.string()), ("label_score", pa.float64()),
        ("clarity", pa.float64()), ("polysemanticity", pa.float64()), ("redundancy", pa.float64()),
        ("mean_activation", pa.float64()), ("relevance_mean", pa.float64()),
        ("relevance_share", pa.list_(pa.struct([("class_name", pa.string()), ("share", pa.float64())]))),
    ])


def sample_key(sample_id: str) -> int:
    """A stable non-negative int per sample id: the top-k's tie-break and index."""
    return int.from_bytes(hashlib.sha1(sample_id.encode()).digest()[:8], "big") >> 1


def read_path(lake: Lake, path: str) -> bytes:
    """Weights or files by path: a path inside the lake, else a local file."""
    if not path:
        raise ValueError("a weights path is required")
    if Path(path).is_absolute() and Path(path).exists():
        return Path(path).read_bytes()
    if lake.exists(path):
        return lake.read_bytes(path)
    raise FileNotFoundError(f"{path} is neither a local file nor in the lake {lake.uri()}")


def local_copy(lake: Lake, path: str) -> str:
    """A local file path for libraries that only open paths (open_clip)."""
    if Path(path).is_absolute() and Path(path).exists():
        return path
    info = lake.fs.get_file_info(lake.path(path))
    # keyed by size and modification time too: weights replaced at the same path must not hit a stale copy
    version = f"{lake.uri(path)}|{info.size}|{info.mtime_ns}"
    target = Path(tempfile.gettempdir()) / "lakelens-weights" / hashlib.sha1(version.encode()).hexdigest()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(read_path(lake, path))
        tmp.replace(target)
    return str(target)


def _recorder(lake: Lake, cfg: LensConfig):
    """The model with its weights, on the GPU when there is one, wrapped for relevance passes."""
    import torch

    from lakelens.operators.lens.components import ComponentRecorder
    from lakelens.operators.lens.models import create_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model(cfg.architecture, cfg.num_classes, read_path(lake, cfg.weights)).to(device)
    return ComponentRecorder(model, cfg.layers, cfg.num_classes, cfg.top_k, cfg.composite, cfg.target), device


def _labels(batch: pa.Table) -> np.ndarray:
    return pc.fill_null(batch.column("label"), -1).to_numpy(zero_copy_only=False).astype(np.int64)


class ComponentStatsActor:
    """Loads the model once; each batch returns its own `ComponentStats`, pickled, for an exact merge."""

    def __init__(self, lake: Lake, cfg: LensConfig, run: Run) -> None:
        self.recorder, self.device = _recorder(lake, cfg)
        self.cfg, self.run = cfg, run

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from lakelens.operators.lens.image_world import decode_image
        from lakelens.operators.lens.models import to_tensor

        images, keep, reasons = [], [], []
        for i, data in enumerate(batch.column("image").to_pylist()):
            try:
                images.append(decode_image(data, self.cfg.image_size or None))
                keep.append(i)
            except ValueError as exc:
                reasons.append((i, f"undecodable:image ({exc})"[:200]))
        self._quarantine(batch, reasons)
        self.recorder.stats = None
        if keep:
            kept = batch.take(pa.array(keep))
            ids = kept.column("sample_id").to_pylist()
            x = to_tensor(np.stack(images)).to(self.device)
            with torch.enable_grad():
                self.recorder.record(x, np.array([sample_key(s) for s in ids]), ids, _labels(kept))
        return pa.table({"stats": pa.array([pickle.dumps(self.recorder.stats)], pa.binary())})

    def _quarantine(self, batch: pa.Table, reasons: list[tuple[int, str]]) -> None:
        if not reasons:
            return
        rows = [i for i, _ in reasons]
        bad = batch.take(pa.array(rows))
        records = bad.drop_columns(["image", SOURCE_FILE, SOURCE_ROW]).to_pylist()
        table = quarantine_rows("images", bad.column(SOURCE_FILE).to_pylist(), bad.column(SOURCE_ROW).to_numpy(),
                                [r for _, r in reasons], records)
        part = hashlib.sha1(",".join(bad.column("sample_id").to_pylist()).encode()).hexdigest()[:16]
        self.run.write_quarantine("images", table, f"undecodable-{part}")


class ExampleCropper:
    """Loads the model once; crops each concept example to the region its component's relevance points at.

    `wanted[sample_id]` lists the (layer, unit) components the sample is an example of; every pair
    gets its own channel-conditioned heatmap (CRP), computed for many pairs per backward pass.
    """

    def __init__(self, lake: Lake, cfg: LensConfig, wanted: dict[str, list[tuple[str, int]]]) -> None:
        self.recorder, self.device = _recorder(lake, cfg)
        self.cfg, self.wanted = cfg, wanted

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from lakelens.operators.lens.crops import crop_resized, relevant_box
        from lakelens.operators.lens.image_world import decode_image, encode_png
        from lakelens.operators.lens.models import to_tensor

        cfg = self.cfg
        ids = batch.column("sample_id").to_pylist()
        images = [decode_image(d, cfg.image_size or None) for d in batch.column("image").to_pylist()]
        labels = _labels(batch)
        pairs = [(i, layer, unit) for i, s in enumerate(ids) for layer, unit in self.wanted.get(s, [])]
        rows = []
        for start in range(0, len(pairs), cfg.batch_size):
            chunk = pairs[start:start + cfg.batch_size]
            for layer in dict.fromkeys(p[1] for p in chunk):
                mine = [p for p in chunk if p[1] == layer]
                rows_of = np.array([p[0] for p in mine])
                x = to_tensor(np.stack([images[i] for i in rows_of])).to(self.device)
                with torch.enable_grad():
                    heatmaps = self.recorder.channel_heatmaps(x, layer, np.array([p[2] for p in mine]), labels[rows_of])
                for (i, _, unit), heatmap in zip(mine, heatmaps):
                    box = relevant_box(heatmap, cfg.crop_threshold, cfg.crop_min_side, cfg.crop_context)
                    crop = crop_resized(images[i], box, images[i].shape[0])
                    rows.append({"sample_id": ids[i], "image": encode_png(crop), "layer": layer, "unit": unit,
                                 "crop_box": list(box)})
        return pa.Table.from_pylist(rows, schema=VIEWS_SCHEMA)


class FoundationEmbedder:
    """Loads the foundation model once; adds each row's image embedding."""

    def __init__(self, lake: Lake, cfg: LensConfig) -> None:
        import torch

        from lakelens.operators.lens.foundation import load_foundation

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.foundation = load_foundation(cfg.foundation, local_copy(lake, cfg.foundation_weights), device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lakelens.operators.lens.image_world import decode_image

        images = np.stack([decode_image(d) for d in batch.column("image").to_pylist()])
        vectors = self.foundation.embed_images(images).astype(np.float32)
        return batch.append_column("embedding",
                                   pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]))


def run_semantic_lens(lake: Lake, dataset: str, config: LakelensConfig, force: bool = False) -> dict[str, Any]:
    cfg = config.lens
    _check(lake, cfg)
    init_ray(config.ray)
    inputs = describe_inputs(lake, "images", [dataset])
    if not inputs:
        raise FileNotFoundError(f"no image Parquet files under {lake.uri(dataset)}")
    params = {"dataset": dataset, "lens": vars(cfg).copy()}
    run, existing = begin_run(lake, JOB, f"model={cfg.model_id}", params, inputs, force=force)
    if existing is not None:
        print(f"semantic-lens: {run.run_id} is already published (attempt {existing['attempt_id']}); nothing to do")
        return existing
    try:
        return _execute(run, lake, cfg)
    except BaseException as exc:
        run.record_failure(exc)
        raise


def _only_samples(batch: pa.Table, wanted: pa.Array) -> pa.Table:
    return batch.filter(pc.is_in(batch.column("sample_id"), value_set=wanted))


def _whole_images(batch: pa.Table) -> pa.Table:
    """Views that are the whole image: no component yet (they serve every component they are an example of)."""
    n = batch.num_rows
    return pa.table({"sample_id": batch.column("sample_id"), "image": batch.column("image"),
                     "layer": pa.nulls(n, pa.string()), "unit": pa.nulls(n, pa.int64()),
                     "crop_box": pa.nulls(n, pa.list_(pa.int32(), 4))}, schema=VIEWS_SCHEMA)


def _check(lake: Lake, cfg: LensConfig) -> None:
    from lakelens.operators.lens.models import create_model, resolve_layers

    if not cfg.model_id:
        raise ValueError("lens.model_id is required: it names the model in the result tables")
    if not cfg.vocabulary:
        raise ValueError("the concept vocabulary is empty: give lens.vocabulary (or --vocabulary FILE) at least one label")
    if cfg.examples_mode not in EXAMPLE_MODES:
        raise ValueError(f"lens.examples_mode must be one of {EXAMPLE_MODES}")
    if not cfg.layers:
        raise ValueError("name at least one layer to analyse (lens.layers)")
    if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
        raise ValueError(f"{len(cfg.class_names)} class names for {cfg.num_classes} classes")
    # fail before Ray starts: bad layer names, unreadable or mismatched weights
    resolve_layers(create_model(cfg.architecture, cfg.num_classes, read_path(lake, cfg.weights)), cfg.layers)


def _execute(run: Run, lake: Lake, cfg: LensConfig) -> dict[str, Any]:
    import ray
    from ray.data import ActorPoolStrategy

    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = cfg.actors or gpus or max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)
    compute = {"compute": ActorPoolStrategy(size=actors), "num_gpus": 1 if gpus else 0, "num_cpus": 0 if gpus else 1}
    with run.stage("components"):
        images = read_validated(run, IMAGES, run.inputs, columns=["sample_id", "image", "label"])
        partials = images.map_batches(ComponentStatsActor, fn_constructor_kwargs={"lake": lake, "cfg": cfg, "run": run},
                                      batch_size=cfg.batch_size, batch_format="pyarrow", **compute)
        stats = None
        for blob in collect_table(partials, pa.schema([("stats", pa.binary())])).column("stats").to_pylist():
            part = pickle.loads(blob)
            if part is not None:
                stats = part if stats is None else stats.merge(part)
        if stats is None:
            raise ValueError("no image could be decoded; see the run's quarantine")
        stats.prune_ids()
        examples = _examples_table(cfg, stats)
    run.metrics["components"] = {"images": stats.samples, "accuracy": stats.correct / stats.labelled if stats.labelled
                                 else None, "actors": actors, "device": "cuda" if gpus else "cpu"}

    with run.stage("embed_examples"):
        chosen = examples.filter(pc.equal(examples.column("mode"), cfg.examples_mode))
        needed = pa.array(sorted(set(chosen.column("sample_id").to_pylist())), pa.string())
        selected = images.map_batches(_only_samples, fn_kwargs={"wanted": needed}, batch_format="pyarrow")
        if cfg.crop_examples:
            wanted: dict[str, list[tuple[str, int]]] = {}
            for r in chosen.select(["sample_id", "layer", "unit"]).to_pylist():
                wanted.setdefault(r["sample_id"], []).append((r["layer"], r["unit"]))
            views = selected.map_batches(ExampleCropper, fn_constructor_kwargs={"lake": lake, "cfg": cfg, "wanted": wanted},
                                         batch_size=max(1, cfg.batch_size // 8), batch_format="pyarrow", **compute)
        else:
            views = selected.map_batches(_whole_images, batch_format="pyarrow")
        embedded = views.map_batches(FoundationEmbedder, fn_constructor_kwargs={"lake": lake, "cfg": cfg},
                                     batch_size=cfg.batch_size, batch_format="pyarrow", **compute)
        embedded_views = collect_table(embedded, VIEWS_SCHEMA)
        example_views = _views_per_component(embedded_views, chosen)
        examples = _with_crop_boxes(examples, example_views, cfg.examples_mode)
        lake.write_table(f"{run.table_dir('component_examples')}/part-00000.parquet", examples)
    run.metrics["embed_examples"] = {"embedded_samples": len(needed), "embedded_views": embedded_views.num_rows,
                                     "cropped": cfg.crop_examples, "dataset_samples": stats.samples}

    with run.stage("semantics"):
        components, labels, audits = _semantics(lake, cfg, stats, chosen, example_views)
    lake.write_table(f"{run.table_dir('components')}/part-00000.parquet", components)
    lake.write_table(f"{run.table_dir('concept_labels')}/part-00000.parquet", labels)
    lake.write_table(f"{run.table_dir('audits')}/part-00000.parquet", audits)
    report = f"{run.prefix}/report/index.html"
    lake.write_bytes(report, _report(cfg, components, chosen, example_views, audits).encode())
    run.metrics["report"] = report
    manifest = run.commit(expected_tables={"component_examples": EXAMPLES_SCHEMA, "concept_labels": LABELS_SCHEMA,
                                           "audits": AUDITS_SCHEMA})
    flagged = [r["class_name"] for r in audits.to_pylist() if r["flagged"]]
    print(f"semantic-lens: {stats.samples:,} images, {components.num_rows} components in {len(cfg.layers)} layers; "
          f"embedded {run.metrics['embed_examples']['embedded_views']:,} example {'crops' if cfg.crop_examples else 'images'}; audits flag: {', '.join(flagged) or 'nothing'}; "
          f"timings {manifest['timings_s']}")
    return manifest


ComponentViews = dict[tuple[str, int, str], dict[str, Any]]  # (layer, unit, sample_id) -> embedding, image, crop_box


def _views_per_component(views: pa.Table, chosen: pa.Table) -> ComponentViews:
    """Every (component, example) pair with its embedded view: its own crop, or the shared whole image."""
    dim = views.schema.field("embedding").type.list_size if views.num_rows else 0
    vectors = np.asarray(views.column("embedding").combine_chunks().values).reshape(-1, dim) if dim else []
    own, shared = {}, {}
    for row, vector in zip(views.drop_columns(["embedding"]).to_pylist(), vectors):
        row["embedding"] = vector
        if row["layer"] is None:
            shared[row["sample_id"]] = row
        else:
            own[(row["layer"], row["unit"], row["sample_id"])] = row
    out: ComponentViews = {}
    for r in chosen.select(["layer", "unit", "sample_id"]).to_pylist():
        key = (r["layer"], r["unit"], r["sample_id"])
        view = own.get(key) or shared.get(r["sample_id"])
        if view is None:
            raise RuntimeError(f"no embedded view for example {key}")
        out[key] = view
    return out


def _with_crop_boxes(examples: pa.Table, views: ComponentViews, mode: str) -> pa.Table:
    boxes = [views[(r["layer"], r["unit"], r["sample_id"])]["crop_box"] if r["mode"] == mode else None
             for r in examples.select(["layer", "unit", "sample_id", "mode"]).to_pylist()]
    return examples.set_column(examples.schema.get_field_index("crop_box"), "crop_box",
                               pa.array(boxes, pa.list_(pa.int32(), 4)))


def _report(cfg: LensConfig, components: pa.Table, chosen: pa.Table, views: ComponentViews, audits: pa.Table) -> str:
    from lakelens.operators.lens.report import render_report

    ranked: dict[tuple[str, int], list[tuple[str, bytes]]] = {}
    for r in chosen.sort_by("rank").to_pylist():
        view = views[(r["layer"], r["unit"], r["sample_id"])]
        ranked.setdefault((r["layer"], r["unit"]), []).append((r["sample_id"], view["image"]))
    return render_report(cfg.model_id, components.drop_columns(["embedding"]).to_pylist(), ranked, audits.to_pylist())


def _examples_table(cfg: LensConfig, stats) -> pa.Table:
    rows = []
    for layer, layer_stats in stats.layers.items():
        for mode, topk in (("activation", layer_stats.by_activation), ("relevance", layer_stats.by_relevance)):
            for unit in range(topk.scores.shape[1]):
                for rank in range(topk.k):
                    index = int(topk.samples[rank, unit])
                    if index >= 0:
                        rows.append({"model_id": cfg.model_id, "layer": layer, "unit": unit, "mode": mode,
                                     "rank": rank + 1, "sample_id": stats.sample_ids[index],
                                     "score": float(topk.scores[rank, unit]), "crop_box": None})
    return pa.Table.from_pylist(rows, schema=EXAMPLES_SCHEMA)


def _semantics(lake: Lake, cfg: LensConfig, stats, chosen: pa.Table,
               views: ComponentViews) -> tuple[pa.Table, pa.Table, pa.Table]:
    from lakelens.operators.lens import measures
    from lakelens.operators.lens.foundation import load_foundation

    foundation = load_foundation(cfg.foundation, local_copy(lake, cfg.foundation_weights))
    vocab = list(dict.fromkeys(cfg.vocabulary))
    label_vectors = np.stack([foundation.embed_texts([t.format(v) for t in cfg.templates]) for v in vocab])
    empty = foundation.embed_texts([t.format("") for t in cfg.templates])
    class_names = cfg.class_names or [str(c) for c in range(cfg.num_classes)]
    dim = label_vectors.shape[-1]
    rows, label_rows, per_layer = [], [], {}
    for layer, layer_stats in stats.layers.items():
        units = layer_stats.activation_sum.shape[0]
        by_unit: dict[int, list[str]] = {}
        for r in chosen.sort_by("rank").to_pylist():
            if r["layer"] == layer:
                by_unit.setdefault(r["unit"], []).append(r["sample_id"])
        # every unit gets the same number of examples so the measures compare; k is the smallest seen
        k = min((len(v) for v in by_unit.values()), default=0)
        if k < 2:
            raise ValueError(f"layer {layer}: fewer than two concept examples per component")
        example_vectors = np.stack([np.stack([views[(layer, u, s)]["embedding"] for s in by_unit[u][:k]])
                                    for u in range(units)])
        vectors = measures.component_embeddings(example_vectors)
        clarity = measures.clarity(example_vectors)
        poly = measures.polysemanticity(example_vectors)
        redundant = measures.max_similarity_to_others(vectors)
        aligned = measures.alignment(vectors, label_vectors, empty)
        share = layer_stats.class_positive / np.maximum(layer_stats.class_positive.sum(axis=1, keepdims=True), 1e-12)
        per_layer[layer] = (aligned, share)
        for u in range(units):
            order = np.argsort(-aligned[u])
            rows.append({
                "model_id": cfg.model_id, "layer": layer, "unit": u, "embedding": vectors[u].astype(np.float32).tolist(),
                "label": vocab[order[0]], "label_score": float(aligned[u, order[0]]), "clarity": float(clarity[u]),
                "polysemanticity": float(poly[u]), "redundancy": float(redundant[u]),
                "mean_activation": float(layer_stats.activation_sum[u] / max(stats.samples, 1)),
                "relevance_mean": float(layer_stats.class_relevance[:, u].sum() / max(stats.samples, 1)),
                "relevance_share": [{"class_name": class_names[c], "share": float(share[c, u])}
                                    for c in range(cfg.num_classes)],
            })
            for rank, j in enumerate(order[:3]):
                label_rows.append({"model_id": cfg.model_id, "layer": layer, "unit": u, "label": vocab[j],
                                   "alignment": float(aligned[u, j]), "rank": rank + 1})
    audits = _audits(cfg, vocab, per_layer, class_names)
    return (pa.Table.from_pylist(rows, schema=components_schema(dim)),
            pa.Table.from_pylist(label_rows, schema=LABELS_SCHEMA), audits)


def _audits(cfg: LensConfig, vocab: list[str], per_layer: dict[str, tuple[np.ndarray, np.ndarray]],
            class_names: list[str]) -> pa.Table:
    """Per class and concept set: the share of the class's relevance held by components that encode the set.

    A component encodes a set when its best alignment to the set's concepts clears `min_alignment`
    and beats its alignment to the class's other set. Each layer carries all of a class's
    relevance, so the share is taken per layer and the audit reports the layer where the set holds
    the most: a concept encoded at one depth is not diluted by the layers that do not encode it.
    """
    rows = []
    index = {v: i for i, v in enumerate(vocab)}
    for class_name in sorted(set(cfg.expected) | set(cfg.spurious)):
        if class_name not in class_names:
            raise ValueError(f"audit names class {class_name!r}; classes: {', '.join(class_names)}")
        c = class_names.index(class_name)
        sets = {"expected": cfg.expected.get(class_name, []), "spurious": cfg.spurious.get(class_name, [])}
        for concepts in sets.values():
            missing = [x for x in concepts if x not in index]
            if missing:
                raise ValueError(f"audit concepts {missing} are not in the vocabulary")
        best_layer: dict[str, tuple[float, str, list[str]]] = {kind: (0.0, "", []) for kind in sets}
        for layer, (aligned, share) in per_layer.items():
            best = {kind: (aligned[:, [index[x] for x in concepts]].max(axis=1) if concepts
                           else np.full(aligned.shape[0], -np.inf)) for kind, concepts in sets.items()}
            for kind in sets:
                other = best["spurious" if kind == "expected" else "expected"]
                mine = np.flatnonzero((best[kind] >= cfg.min_alignment) & (best[kind] > other))
                total = float(share[c, mine].sum())
                if total > best_layer[kind][0]:
                    ranked = mine[np.argsort(-share[c, mine], kind="stable")]
                    best_layer[kind] = (total, layer, [f"{layer}:{u}" for u in ranked[:5]])
        for kind, concepts in sets.items():
            if not concepts:
                continue
            total, layer, top = best_layer[kind]
            flagged = kind == "spurious" and total >= cfg.max_spurious_share
            where = f" in layer {layer}" if layer else " in any analysed layer"
            finding = (f"{total:.0%} of the relevance for class {class_name}{where} goes to components encoding "
                       f"{', '.join(concepts)}" + (" (spurious: above the allowed share)" if flagged else ""))
            rows.append({"model_id": cfg.model_id, "class_name": class_name, "kind": kind, "concepts": concepts,
                         "relevance_share": total, "components": top, "flagged": flagged, "finding": finding})
    return pa.Table.from_pylist(rows, schema=AUDITS_SCHEMA)


def search_components(lake: Lake, text: str, model_id: str, top: int = 10, config: LakelensConfig | None = None
                      ) -> pa.Table:
    """Components of `model_id` ranked by cosine to the text, in DuckDB over the published components."""
    from lakelens.infra.catalog import open_catalog
    from lakelens.infra.runs import latest_per_partition, published_manifests
    from lakelens.operators.lens.foundation import load_foundation

    runs = [m for m in latest_per_partition(published_manifests(lake, JOB)) if m["partition"] == f"model={model_id}"]
    if not runs:
        raise LookupError(f"no published semantic-lens run for model {model_id!r}; run `lakelens run semantic-lens`")
    lens = runs[0]["params"]["lens"]
    foundation = load_foundation(lens["foundation"], local_copy(lake, lens["foundation_weights"]))
    templates = lens["templates"]
    # the same measure as labels: mean over templates of cos(v, E(template(text))) - cos(v, E(template("")))
    texts = foundation.embed_texts([t.format(text) for t in templates]).astype(np.float32)
    empties = foundation.embed_texts([t.format("") for t in templates]).astype(np.float32)
    dim = texts.shape[1]
    terms = " + ".join(f"array_cosine_similarity(embedding::FLOAT[{dim}], ?::FLOAT[{dim}]) - "
                       f"array_cosine_similarity(embedding::FLOAT[{dim}], ?::FLOAT[{dim}])" for _ in templates)
    vectors = [v for t, e in zip(texts, empties) for v in (t.tolist(), e.tolist())]
    con = open_catalog(lake)
    return con.execute(f"""
        SELECT layer, unit, label, round(label_score, 4) AS label_score, round(clarity, 4) AS clarity,
               ({terms}) / {len(templates)} AS similarity
        FROM components WHERE model_id = ? ORDER BY similarity DESC, layer, unit LIMIT ?""",
                       [*vectors, model_id, top]).to_arrow_table()


COMPARISON_JOB = "compare-models"
COMPARISONS_SCHEMA = pa.schema([
    ("model_a", pa.string()), ("model_b", pa.string()), ("concept", pa.string()), ("status", pa.string()),
    ("components_a", pa.int64()), ("components_b", pa.int64()), ("best_alignment_a", pa.float64()),
    ("best_alignment_b", pa.float64()), ("matched_share_a", pa.float64()), ("matched_share_b", pa.float64()),
])


def run_compare_models(lake: Lake, model_a: str, model_b: str, min_alignment: float = 0.02,
                       match_cosine: float = 0.9, force: bool = False) -> dict[str, Any]:
    """Shared and unique concepts of two analysed models (same foundation model), as `model_comparisons`.

    A concept is encoded by a model when some component's best label is that concept with an
    alignment of at least `min_alignment`: `shared` when both models encode it, else `only_a` or
    `only_b`. `matched_share_*` is the share of a model's components whose embedding has a
    counterpart in the other model with cosine >= `match_cosine`.
    """
    from lakelens.infra.runs import latest_per_partition, published_manifests

    visible = {m["partition"]: m for m in latest_per_partition(published_manifests(lake, JOB))}
    runs = []
    for model in (model_a, model_b):
        if f"model={model}" not in visible:
            raise LookupError(f"no published semantic-lens run for model {model!r}")
        runs.append(visible[f"model={model}"])
    foundations = {(m["params"]["lens"]["foundation"], m["params"]["lens"]["foundation_weights"]) for m in runs}
    if len(foundations) != 1:
        raise ValueError("the two models were projected with different foundation models; their spaces differ")
    inputs = [f for m in runs for f in _output_files(m, "components")]
    params = {"model_a": model_a, "model_b": model_b, "min_alignment": min_alignment, "match_cosine": match_cosine}
    run, existing = begin_run(lake, COMPARISON_JOB, f"models={model_a}__{model_b}", params, inputs, force=force)
    if existing is not None:
        return existing
    try:
        tables = [pa.concat_tables([lake.read_table(f.path) for f in _output_files(m, "components")]) for m in runs]
        comparison = compare_components(model_a, tables[0], model_b, tables[1], min_alignment, match_cosine)
        lake.write_table(f"{run.table_dir('model_comparisons')}/part-00000.parquet", comparison)
        return run.commit(expected_tables={"model_comparisons": COMPARISONS_SCHEMA})
    except BaseException as exc:
        run.record_failure(exc)
        raise


def _output_files(manifest: dict[str, Any], table: str):
    from lakelens.infra.runs import InputFile

    return [InputFile(table, f["path"], f["rows"], f["bytes"], 0) for f in manifest["outputs"][table]["files"]]


def compare_components(model_a: str, a: pa.Table, model_b: str, b: pa.Table, min_alignment: float,
                       match_cosine: float) -> pa.Table:
    from lakelens.operators.lens import measures

    def vectors(t: pa.Table) -> np.ndarray:
        dim = t.schema.field("embedding").type.list_size
        return measures.normalise(np.asarray(t.column("embedding").combine_chunks().values).reshape(-1, dim))

    va, vb = vectors(a), vectors(b)
    cos = va @ vb.T
    matched_a = float((cos.max(axis=1) >= match_cosine).mean()) if cos.size else 0.0
    matched_b = float((cos.max(axis=0) >= match_cosine).mean()) if cos.size else 0.0

    def encoded(t: pa.Table) -> dict[str, tuple[int, float]]:
        out: dict[str, tuple[int, float]] = {}
        for label, score in zip(t.column("label").to_pylist(), t.column("label_score").to_pylist()):
            if score >= min_alignment:
                count, best = out.get(label, (0, -np.inf))
                out[label] = (count + 1, max(best, score))
        return out

    ea, eb = encoded(a), encoded(b)
    rows = []
    for concept in sorted(set(ea) | set(eb)):
        status = "shared" if concept in ea and concept in eb else "only_a" if concept in ea else "only_b"
        rows.append({"model_a": model_a, "model_b": model_b, "concept": concept, "status": status,
                     "components_a": ea.get(concept, (0, None))[0], "components_b": eb.get(concept, (0, None))[0],
                     "best_alignment_a": ea.get(concept, (0, None))[1], "best_alignment_b": eb.get(concept, (0, None))[1],
                     "matched_share_a": matched_a, "matched_share_b": matched_b})
    return pa.Table.from_pylist(rows, schema=COMPARISONS_SCHEMA)
