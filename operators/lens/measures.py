"""Semantics of components from their concept examples' embeddings, as SemanticLens defines them.

Shapes: `examples` is (components, samples, dim), the foundation-model embeddings of each
component's concept examples; `components` is (components, dim), one vector per component.

- clarity: how alike a component's examples are, the mean cosine similarity over distinct pairs,
  in [-1/(n-1), 1];
- polysemanticity: 1 - clarity of the two centres 2-means finds among the examples (so 1 - the
  cosine between them); when one of the two groups has fewer than two members, 1 - the mean
  cosine between the examples' mean and each of the first ten examples;
- redundancy: per component, the highest cosine to any other component of the layer; the layer's
  redundancy is their mean;
- alignment of a label: cos(v, E(label)) - cos(v, E("")), averaged over prompt templates.
"""

from __future__ import annotations

import numpy as np

POLYSEMANTICITY_SEED = 123  # SemanticLens's k-means seed, kept so scores are comparable


def normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def component_embeddings(examples: np.ndarray) -> np.ndarray:
    """One vector per component: the mean of its examples' normalised embeddings."""
    return normalise(np.asarray(examples, dtype=np.float64)).mean(axis=-2)


def clarity(examples: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine of distinct examples, via |mean of unit vectors|^2 = (n + sum_{i!=j} cos) / n^2."""
    n = examples.shape[-2]
    mean = normalise(np.asarray(examples, dtype=np.float64)).mean(axis=-2)
    return ((mean**2).sum(axis=-1) - 1.0 / n) * n / (n - 1)


def polysemanticity(examples: np.ndarray, n_clusters: int = 2) -> np.ndarray:
    from sklearn.cluster import KMeans

    examples = np.asarray(examples, dtype=np.float64)
    scores = np.empty(examples.shape[0])
    for c, points in enumerate(examples):
        km = KMeans(n_clusters=n_clusters, n_init=10, random_state=POLYSEMANTICITY_SEED).fit(points)
        counts = np.bincount(km.labels_, minlength=n_clusters)
        if counts.min() >= 2:
            scores[c] = 1.0 - clarity(km.cluster_centers_[None])[0]
        else:  # a degenerate split says nothing; compare examples with their mean instead
            mean = points.mean(axis=0)
            first = points[: min(10, len(points))]
            scores[c] = 1.0 - np.mean([clarity(np.stack([mean, p])[None])[0] for p in first])
    return scores


def max_similarity_to_others(components: np.ndarray) -> np.ndarray:
    """Per component, the highest cosine to another component (its redundancy)."""
    unit = normalise(np.asarray(components, dtype=np.float64))
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return sims.max(axis=1)


def redundancy(components: np.ndarray) -> float:
    return float(max_similarity_to_others(components).mean())


def alignment(components: np.ndarray, labels: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """(components, labels) alignment: cos(v, t) - cos(v, E("")).

    `labels` is (labels, templates, dim) and `empty` (templates, dim): each template's embedding
    of a label and of the empty string; the alignment is averaged over templates.
    """
    v = normalise(np.asarray(components, dtype=np.float64))
    t = normalise(np.asarray(labels, dtype=np.float64))
    e = normalise(np.asarray(empty, dtype=np.float64))
    with_label = np.einsum("cd,ltd->clt", v, t)
    baseline = np.einsum("cd,td->ct", v, e)[:, None, :]
    return (with_label - baseline).mean(axis=-1)
