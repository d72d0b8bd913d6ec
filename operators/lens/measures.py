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
    """SemanticLens's polysemanticity, with one batched 2-means over all components instead of a fit each.

    1 - the cosine between the two centres 2-means finds among a component's examples; when a
    group has fewer than two members, 1 - the mean cosine between the examples' mean and each of
    the first ten examples. The 2-means is the package's (scikit-learn's KMeans, k-means++, 10
    starts, seed 123), run for all components at once by `two_means`.
    """
    if n_clusters != 2:
        raise ValueError("the batched k-means splits in two, as SemanticLens's polysemanticity does")
    points = np.asarray(examples, dtype=np.float64)
    centres, counts = two_means(points)
    split = 1.0 - clarity(centres)
    mean = points.mean(axis=1, keepdims=True)
    first = points[:, : min(10, points.shape[1])]
    fallback = 1.0 - (normalise(mean) * normalise(first)).sum(-1).mean(axis=1)
    return np.where(counts.min(axis=1) >= 2, split, fallback)


def two_means(points: np.ndarray, n_init: int = 10, seed: int = POLYSEMANTICITY_SEED, max_iter: int = 300,
              tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's `KMeans(2, n_init=10, random_state=seed)` on every row of `points` (batch, n, dim) at once.

    scikit-learn draws the same random numbers for every fit of the same size (the draws of
    k-means++ do not depend on the data, only what they select does), so they are drawn once
    and applied to all rows: first centre by the first draw, second centre the better of two
    candidates sampled by squared distance, then Lloyd's iterations until the labels stop
    changing or the centres move less than `tol` x the mean variance, the best start by inertia.
    Returns the centres (batch, 2, dim) and group sizes (batch, 2). (scikit-learn relocates an
    empty group; that only happens when all examples coincide, where the score falls back anyway.)
    """
    batch, n, _ = points.shape
    rows = np.arange(batch)
    x = points - points.mean(axis=1, keepdims=True)  # scikit-learn centres the data first
    sq = (x**2).sum(-1)
    tolerance = x.var(axis=1).mean(axis=1) * tol  # (batch,)
    rng = np.random.RandomState(seed)
    best_inertia = np.full(batch, np.inf)
    best_centres = np.zeros((batch, 2, x.shape[2]))
    best_labels = np.zeros((batch, n), dtype=np.int64)

    def distances(centres: np.ndarray) -> np.ndarray:  # (batch, n, 2) squared; batched matmuls run on BLAS
        return np.maximum(sq[:, :, None] - 2 * (x @ centres.transpose(0, 2, 1)) + (centres**2).sum(-1)[:, None, :], 0)

    for _ in range(n_init):
        first = int(rng.choice(n, p=np.full(n, 1.0 / n)))
        draws = rng.uniform(size=2)
        closest = np.maximum(sq - 2 * (x @ x[:, first][:, :, None])[..., 0] + sq[:, first][:, None], 0)
        potential = closest.sum(1)
        candidates = np.stack([np.minimum(np.searchsorted(c, draws * p), n - 1)
                               for c, p in zip(np.cumsum(closest, axis=1), potential)])  # (batch, 2)
        to_candidate = sq[:, None, :] - 2 * (x[rows[:, None], candidates] @ x.transpose(0, 2, 1)) \
            + sq[rows[:, None], candidates][:, :, None]
        pots = np.minimum(closest[:, None, :], np.maximum(to_candidate, 0)).sum(-1)
        second = candidates[rows, pots.argmin(1)]
        centres = np.stack([x[:, first], x[rows, second]], axis=1)
        labels = np.full((batch, n), -1)
        active = np.ones(batch, dtype=bool)
        for _ in range(max_iter):
            new = distances(centres).argmin(-1)
            member = np.stack([new == 0, new == 1], axis=-1).astype(np.float64)
            counts = member.sum(1)
            moved = np.where(counts[..., None] > 0, (member.transpose(0, 2, 1) @ x) / np.maximum(counts, 1)[..., None],
                             centres)
            shift = ((moved - centres) ** 2).sum((1, 2))
            strict = (new == labels).all(1)
            centres = np.where(active[:, None, None], moved, centres)
            labels = np.where(active[:, None], new, labels)
            active &= ~(strict | (shift <= tolerance))
            if not active.any():
                break
        labels = distances(centres).argmin(-1)  # the labels of the final centres, as scikit-learn reports them
        inertia = np.take_along_axis(distances(centres), labels[..., None], -1)[..., 0].sum(1)
        better = inertia < best_inertia
        best_inertia = np.where(better, inertia, best_inertia)
        best_centres = np.where(better[:, None, None], centres, best_centres)
        best_labels = np.where(better[:, None], labels, best_labels)
    counts = np.stack([(best_labels == 0).sum(1), (best_labels == 1).sum(1)], axis=1)
    return best_centres + points.mean(axis=1, keepdims=True), counts


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
