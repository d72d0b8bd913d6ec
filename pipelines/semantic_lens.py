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
])
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
    target = Path(tempfile.gettempdir()) / "lakelens-weights" / hashlib.sha1(lake.uri(path).encode()).hexdigest()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(read_path(lake, path))
        tmp.replace(target)
    return str(target)


class ComponentStatsActor:
    """Loads the model once; each batch returns its own `ComponentStats`, pickled, for an exact merge."""

    def __init__(self, lake: Lake, cfg: LensConfig, run: Run) -> None:
        import torch

        from lakelens.operators.lens.components import ComponentRecorder
        from lakelens.operators.lens.models import create_model

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = create_model(cfg.architecture, cfg.num_classes, read_path(lake, cfg.weights)).to(self.device)
        self.recorder = ComponentRecorder(model, cfg.layers, cfg.num_classes, cfg.top_k, cfg.composite, cfg.target)
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
            labels = pc.fill_null(kept.column("label"), -1).to_numpy(zero_copy_only=False).astype(np.int64)
            x = to_tensor(np.stack(images)).to(self.device)
            with torch.enable_grad():
                self.recorder.record(x, np.array([sample_key(s) for s in ids]), ids, labels)
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


class FoundationEmbedder:
    """Loads the foundation model once; embeds the images of a batch."""

    def __init__(self, lake: Lake, cfg: LensConfig) -> None:
        import torch

        from lakelens.operators.lens.foundation import load_foundation

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.foundation = load_foundation(cfg.foundation, local_copy(lake, cfg.foundation_weights), device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lakelens.operators.lens.image_world import decode_image

        images = np.stack([decode_image(d) for d in batch.column("image").to_pylist()])
        vectors = self.foundation.embed_images(images).astype(np.float32)
        return pa.table({"sample_id": batch.column("sample_id"), "image": batch.column("image"),
                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])})


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
        lake.write_table(f"{run.table_dir('component_examples')}/part-00000.parquet", examples)
    run.metrics["components"] = {"images": stats.samples, "accuracy": stats.correct / stats.labelled if stats.labelled
                                 else None, "actors": actors, "device": "cuda" if gpus else "cpu"}

    with run.stage("embed_examples"):
        wanted = pc.filter(examples, pc.equal(examples.column("mode"), cfg.examples_mode)).column("sample_id")
        needed = pa.array(sorted(set(wanted.to_pylist())), pa.string())
        chosen = images.map_batches(_only_samples, fn_kwargs={"wanted": needed}, batch_format="pyarrow")
        embedded = chosen.map_batches(FoundationEmbedder, fn_constructor_kwargs={"lake": lake, "cfg": cfg},
                                      batch_size=cfg.batch_size, batch_format="pyarrow", **compute)
        sample_vectors = collect_table(embedded, pa.schema([]))
    run.metrics["embed_examples"] = {"embedded_samples": sample_vectors.num_rows, "dataset_samples": stats.samples}

    with run.stage("semantics"):
        components, labels, audits = _semantics(run, lake, cfg, stats, examples, sample_vectors)
    lake.write_table(f"{run.table_dir('components')}/part-00000.parquet", components)
    lake.write_table(f"{run.table_dir('concept_labels')}/part-00000.parquet", labels)
    lake.write_table(f"{run.table_dir('audits')}/part-00000.parquet", audits)
    report = f"{run.prefix}/report/index.html"
    lake.write_bytes(report, _report(cfg, components, examples, sample_vectors, audits).encode())
    run.metrics["report"] = report
    manifest = run.commit(expected_tables={"component_examples": EXAMPLES_SCHEMA, "concept_labels": LABELS_SCHEMA,
                                           "audits": AUDITS_SCHEMA})
    flagged = [r["class_name"] for r in audits.to_pylist() if r["flagged"]]
    print(f"semantic-lens: {stats.samples:,} images, {components.num_rows} components in {len(cfg.layers)} layers; "
          f"embedded {sample_vectors.num_rows:,} example images; audits flag: {', '.join(flagged) or 'nothing'}; "
          f"timings {manifest['timings_s']}")
    return manifest


def _report(cfg: LensConfig, components: pa.Table, examples: pa.Table, sample_vectors: pa.Table,
            audits: pa.Table) -> str:
    from lakelens.operators.lens.report import render_report

    ranked: dict[tuple[str, int], list[str]] = {}
    for r in examples.filter(pc.equal(examples.column("mode"), cfg.examples_mode)).sort_by("rank").to_pylist():
        ranked.setdefault((r["layer"], r["unit"]), []).append(r["sample_id"])
    images = dict(zip(sample_vectors.column("sample_id").to_pylist(), sample_vectors.column("image").to_pylist()))
    return render_report(cfg.model_id, components.drop_columns(["embedding"]).to_pylist(), ranked, images,
                         audits.to_pylist())


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
                                     "score": float(topk.scores[rank, unit])})
    return pa.Table.from_pylist(rows, schema=EXAMPLES_SCHEMA)


def _semantics(run: Run, lake: Lake, cfg: LensConfig, stats, examples: pa.Table,
               sample_vectors: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    from lakelens.operators.lens import measures
    from lakelens.operators.lens.foundation import load_foundation

    foundation = load_foundation(cfg.foundation, local_copy(lake, cfg.foundation_weights))
    dim = sample_vectors.schema.field("embedding").type.list_size
    vector_of = dict(zip(sample_vectors.column("sample_id").to_pylist(),
                         np.asarray(sample_vectors.column("embedding").combine_chunks().values).reshape(-1, dim)))
    vocab = list(dict.fromkeys(cfg.vocabulary))
    label_vectors = np.stack([foundation.embed_texts([t.format(v) for t in cfg.templates]) for v in vocab])
    empty = foundation.embed_texts([t.format("") for t in cfg.templates])
    class_names = cfg.class_names or [str(c) for c in range(cfg.num_classes)]
    chosen = examples.filter(pc.equal(examples.column("mode"), cfg.examples_mode)).to_pylist()
    rows, label_rows, per_layer = [], [], {}
    for layer, layer_stats in stats.layers.items():
        units = layer_stats.activation_sum.shape[0]
        by_unit: dict[int, list[str]] = {}
        for r in chosen:
            if r["layer"] == layer:
                by_unit.setdefault(r["unit"], []).append(r["sample_id"])
        # every unit gets the same number of examples so the measures compare; k is the smallest seen
        k = min((len(v) for v in by_unit.values()), default=0)
        if k < 2:
            raise ValueError(f"layer {layer}: fewer than two concept examples per component")
        example_vectors = np.stack([np.stack([vector_of[s] for s in by_unit[u][:k]]) for u in range(units)])
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
    and beats its alignment to the class's other set; shares are summed over the analysed layers
    and divided by their number, so the result reads as a share of one layer's relevance.
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
        totals = {kind: 0.0 for kind in sets}
        members: dict[str, list[tuple[float, str]]] = {kind: [] for kind in sets}
        for layer, (aligned, share) in per_layer.items():
            best = {kind: (aligned[:, [index[x] for x in concepts]].max(axis=1) if concepts
                           else np.full(aligned.shape[0], -np.inf)) for kind, concepts in sets.items()}
            for kind in sets:
                other = best["spurious" if kind == "expected" else "expected"]
                mine = (best[kind] >= cfg.min_alignment) & (best[kind] > other)
                for u in np.flatnonzero(mine):
                    totals[kind] += share[c, u] / len(per_layer)
                    members[kind].append((share[c, u], f"{layer}:{u}"))
        for kind, concepts in sets.items():
            if not concepts:
                continue
            top = [name for _, name in sorted(members[kind], reverse=True)[:5]]
            flagged = kind == "spurious" and totals[kind] >= cfg.max_spurious_share
            finding = (f"{totals[kind]:.0%} of the relevance for class {class_name} goes to components encoding "
                       f"{', '.join(concepts)}" + (" (spurious: above the allowed share)" if flagged else ""))
            rows.append({"model_id": cfg.model_id, "class_name": class_name, "kind": kind, "concepts": concepts,
                         "relevance_share": float(totals[kind]), "components": top, "flagged": flagged,
                         "finding": finding})
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
