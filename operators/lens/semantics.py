"""What components encode, from their examples' foundation-model embeddings: pure functions over arrays.

    examples_table         the exact top-k examples per component (by activation and by relevance)
    views_per_component    each (component, example) pair with its embedded view (a crop or the whole image)
    component_semantics    component embeddings, labels, clarity, polysemanticity, redundancy, relevance shares
    audit_relevance        per class: the share of relevance held by components encoding expected or spurious concepts
    spurious_samples       per flagged class: its samples ranked by the relevance its spurious components carry
    compare_components     shared and unique concepts of two models projected into the same space
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from lakelens.operators.lens import measures
from lakelens.operators.lens.components import ComponentStats

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


COMPARISONS_SCHEMA = pa.schema([
    ("model_a", pa.string()), ("model_b", pa.string()), ("concept", pa.string()), ("status", pa.string()),
    ("components_a", pa.int64()), ("components_b", pa.int64()), ("best_alignment_a", pa.float64()),
    ("best_alignment_b", pa.float64()), ("matched_share_a", pa.float64()), ("matched_share_b", pa.float64()),
])


@dataclass(frozen=True)
class SemanticsSpec:
    """What to name components with and what to audit: the model's classes and the concept vocabulary."""

    model_id: str
    vocabulary: list[str]  # distinct concept labels, in order
    class_names: list[str]
    expected: dict[str, list[str]] = field(default_factory=dict)  # per class: concepts it should rely on
    spurious: dict[str, list[str]] = field(default_factory=dict)  # per class: concepts it must not rely on
    min_alignment: float = 0.02  # a component counts for a concept above this alignment
    max_spurious_share: float = 0.15  # an audit flags a class whose relevance goes this much to spurious concepts


ComponentViews = dict[tuple[str, int, str], dict[str, Any]]  # (layer, unit, sample_id) -> embedding, image, crop_box


def examples_table(model_id: str, stats: ComponentStats) -> pa.Table:
    """Every component's top-k samples by activation and by relevance, ranked from 1."""
    rows = []
    for layer, layer_stats in stats.layers.items():
        for mode, topk in (("activation", layer_stats.by_activation), ("relevance", layer_stats.by_relevance)):
            for unit in range(topk.scores.shape[1]):
                for rank in range(topk.k):
                    index = int(topk.samples[rank, unit])
                    if index >= 0:
                        rows.append({"model_id": model_id, "layer": layer, "unit": unit, "mode": mode,
                                     "rank": rank + 1, "sample_id": stats.sample_ids[index],
                                     "score": float(topk.scores[rank, unit]), "crop_box": None})
    return pa.Table.from_pylist(rows, schema=EXAMPLES_SCHEMA)


def views_per_component(views: pa.Table, chosen: pa.Table) -> ComponentViews:
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


def with_crop_boxes(examples: pa.Table, views: ComponentViews, mode: str) -> pa.Table:
    boxes = [views[(r["layer"], r["unit"], r["sample_id"])]["crop_box"] if r["mode"] == mode else None
             for r in examples.select(["layer", "unit", "sample_id", "mode"]).to_pylist()]
    return examples.set_column(examples.schema.get_field_index("crop_box"), "crop_box",
                               pa.array(boxes, pa.list_(pa.int32(), 4)))


def component_semantics(spec: SemanticsSpec, stats: ComponentStats, chosen: pa.Table, views: ComponentViews,
                        label_vectors: np.ndarray, empty: np.ndarray
                        ) -> tuple[pa.Table, pa.Table, pa.Table, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Components, their labels and the audits, from each component's embedded examples; last, per layer,
    the (components x concepts) alignments and (classes x components) relevance shares the audits use.

    `label_vectors` (concepts x templates x dim) and `empty` (templates x dim) are the foundation
    model's text embeddings of `spec.vocabulary` and of the empty caption.
    """
    vocab = spec.vocabulary
    class_names = spec.class_names
    dim = label_vectors.shape[-1]
    rows, label_rows, per_layer = [], [], {}
    examples_of: dict[str, dict[int, list[str]]] = {}
    ranked = chosen.sort_by("rank").select(["layer", "unit", "sample_id"])
    for layer, unit, sample in zip(*(ranked.column(c).to_pylist() for c in ("layer", "unit", "sample_id"))):
        examples_of.setdefault(layer, {}).setdefault(unit, []).append(sample)
    for layer, layer_stats in stats.layers.items():
        units = layer_stats.activation_sum.shape[0]
        by_unit = examples_of.get(layer, {})
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
                "model_id": spec.model_id, "layer": layer, "unit": u, "embedding": vectors[u].astype(np.float32).tolist(),
                "label": vocab[order[0]], "label_score": float(aligned[u, order[0]]), "clarity": float(clarity[u]),
                "polysemanticity": float(poly[u]), "redundancy": float(redundant[u]),
                "mean_activation": float(layer_stats.activation_sum[u] / max(stats.samples, 1)),
                "relevance_mean": float(layer_stats.class_relevance[:, u].sum() / max(stats.samples, 1)),
                "relevance_share": [{"class_name": class_names[c], "share": float(share[c, u])}
                                    for c in range(len(class_names))],
            })
            for rank, j in enumerate(order[:3]):
                label_rows.append({"model_id": spec.model_id, "layer": layer, "unit": u, "label": vocab[j],
                                   "alignment": float(aligned[u, j]), "rank": rank + 1})
    audits = audit_relevance(spec, per_layer)
    return (pa.Table.from_pylist(rows, schema=components_schema(dim)),
            pa.Table.from_pylist(label_rows, schema=LABELS_SCHEMA), audits, per_layer)


def audit_relevance(spec: SemanticsSpec, per_layer: dict[str, tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    """Per class and concept set: the share of the class's relevance held by components that encode the set.

    A component encodes a set when its best alignment to the set's concepts clears `min_alignment`
    and beats its alignment to the class's other set. Each layer carries all of a class's
    relevance, so the share is taken per layer and the audit reports the layer where the set holds
    the most: a concept encoded at one depth is not diluted by the layers that do not encode it.
    """
    rows = []
    for (class_name, kind), (total, layer, units, concepts) in concept_sets(spec, per_layer).items():
        flagged = kind == "spurious" and total >= spec.max_spurious_share
        where = f" in layer {layer}" if layer else " in any analysed layer"
        finding = (f"{total:.0%} of the relevance for class {class_name}{where} goes to components encoding "
                   f"{', '.join(concepts)}" + (" (spurious: above the allowed share)" if flagged else ""))
        rows.append({"model_id": spec.model_id, "class_name": class_name, "kind": kind, "concepts": concepts,
                     "relevance_share": total, "components": [f"{layer}:{u}" for u in units[:5]],
                     "flagged": flagged, "finding": finding})
    return pa.Table.from_pylist(rows, schema=AUDITS_SCHEMA)


def concept_sets(spec: SemanticsSpec, per_layer: dict[str, tuple[np.ndarray, np.ndarray]]
                 ) -> dict[tuple[str, str], tuple[float, str, list[int], list[str]]]:
    """(class, "expected" | "spurious") -> (relevance share, layer, its components by share, concepts): the
    layer where the components encoding the set hold the most of the class's relevance."""
    class_names = spec.class_names
    out = {}
    index = {v: i for i, v in enumerate(spec.vocabulary)}
    for class_name in sorted(set(spec.expected) | set(spec.spurious)):
        if class_name not in class_names:
            raise ValueError(f"audit names class {class_name!r}; classes: {', '.join(class_names)}")
        c = class_names.index(class_name)
        sets = {"expected": spec.expected.get(class_name, []), "spurious": spec.spurious.get(class_name, [])}
        for concepts in sets.values():
            missing = [x for x in concepts if x not in index]
            if missing:
                raise ValueError(f"audit concepts {missing} are not in the vocabulary")
        best_layer: dict[str, tuple[float, str, list[int]]] = {kind: (0.0, "", []) for kind in sets}
        for layer, (aligned, share) in per_layer.items():
            best = {kind: (aligned[:, [index[x] for x in concepts]].max(axis=1) if concepts
                           else np.full(aligned.shape[0], -np.inf)) for kind, concepts in sets.items()}
            for kind in sets:
                other = best["spurious" if kind == "expected" else "expected"]
                mine = np.flatnonzero((best[kind] >= spec.min_alignment) & (best[kind] > other))
                total = float(share[c, mine].sum())
                if total > best_layer[kind][0]:
                    ranked = mine[np.argsort(-share[c, mine], kind="stable")]
                    best_layer[kind] = (total, layer, [int(u) for u in ranked])
        for kind, concepts in sets.items():
            if concepts:
                out[(class_name, kind)] = (*best_layer[kind], concepts)
    return out


SPURIOUS_SAMPLES_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("class_name", pa.string()), ("layer", pa.string()), ("rank", pa.int64()),
    ("sample_id", pa.string()), ("relevance", pa.float64()), ("share", pa.float64()),
    ("concepts", pa.list_(pa.string())),
])


@dataclass
class SampleRelevance:
    """Per-sample channel relevances of the samples whose relevance started at an audited class."""

    sample_ids: list[str] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)  # per batch: (n,) class index
    layers: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per layer, per batch: (n, channels)

    def add(self, ids: list[str], targets: np.ndarray, relevances: dict[str, np.ndarray]) -> None:
        self.sample_ids += ids
        self.targets.append(np.asarray(targets))
        for layer, rel in relevances.items():
            self.layers.setdefault(layer, []).append(np.asarray(rel, dtype=np.float32))

    def merge(self, other: "SampleRelevance") -> "SampleRelevance":
        out = SampleRelevance(self.sample_ids + other.sample_ids, self.targets + other.targets,
                              {k: v[:] for k, v in self.layers.items()})
        for layer, parts in other.layers.items():
            out.layers.setdefault(layer, []).extend(parts)
        return out


def spurious_samples(spec: SemanticsSpec, per_layer: dict[str, tuple[np.ndarray, np.ndarray]],
                     samples: SampleRelevance) -> pa.Table:
    """For each class the audit flags: its samples ranked by the relevance its spurious components carry
    for the class (summed over those components, at the audit's layer), with that relevance's share of
    the sample's positive relevance at the layer. These are the training data tied to the spurious
    concept (SemanticLens's use of the audit)."""
    rows = []
    targets = np.concatenate(samples.targets) if samples.targets else np.zeros(0, np.int64)
    ids = np.asarray(samples.sample_ids, dtype=object)
    for (class_name, kind), (total, layer, units, concepts) in concept_sets(spec, per_layer).items():
        if kind != "spurious" or total < spec.max_spurious_share or not units:
            continue
        mine = targets == spec.class_names.index(class_name)
        if not mine.any():
            continue
        rel = np.concatenate(samples.layers[layer]).astype(np.float64)[mine]
        score = rel[:, units].sum(axis=1)
        share = score / np.maximum(np.maximum(rel, 0).sum(axis=1), 1e-12)
        order = np.lexsort((ids[mine], -score))  # ties by id, so the order never depends on batches
        for rank, i in enumerate(order, start=1):
            rows.append({"model_id": spec.model_id, "class_name": class_name, "layer": layer, "rank": rank,
                         "sample_id": ids[mine][i], "relevance": float(score[i]), "share": float(share[i]),
                         "concepts": concepts})
    return pa.Table.from_pylist(rows, schema=SPURIOUS_SAMPLES_SCHEMA)


def compare_components(model_a: str, a: pa.Table, model_b: str, b: pa.Table, min_alignment: float,
                       match_cosine: float) -> pa.Table:
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
