"""From a spanning tree to clusters: single linkage, the condensed tree, selection, labels, GLOSH.

The semantics follow the hdbscan library (Campello et al.): lambda = 1 / distance; a split is
real when both sides have at least min_cluster_size points; EOM keeps the clusters whose
stability beats the sum of their descendants'; leaf keeps the leaves; epsilon merges clusters
born below the distance threshold into their ancestors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from lakelens.operators.hdbscan.mst import _find, edge_order

CONDENSED_DTYPE = np.dtype([("parent", np.int64), ("child", np.int64), ("lambda_val", np.float64),
                            ("child_size", np.int64)])


@njit(cache=True)
def _single_linkage(n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """scipy-style linkage (left, right, distance, size) from n-1 edges already in edge order."""
    parent = np.arange(2 * n - 1)
    size = np.ones(2 * n - 1, dtype=np.int64)
    out = np.empty((n - 1, 4))
    for e in range(n - 1):
        ra = a[e]
        while parent[ra] != ra:
            ra = parent[ra]
        rb = b[e]
        while parent[rb] != rb:
            rb = parent[rb]
        node = n + e
        parent[ra] = node
        parent[rb] = node
        size[node] = size[ra] + size[rb]
        out[e, 0] = ra
        out[e, 1] = rb
        out[e, 2] = w[e]
        out[e, 3] = size[node]
        # compress the paths just walked so later finds stay short
        x = a[e]
        while x != node:
            nxt = parent[x]
            parent[x] = node
            x = nxt
        x = b[e]
        while x != node:
            nxt = parent[x]
            parent[x] = node
            x = nxt
    return out


def single_linkage(n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """scipy-style linkage of a spanning tree's edges, merged in edge order.

    Each merge's left side is the one nearer point 0 along the tree, the order Prim's algorithm
    from point 0 gives (the hdbscan library's exact algorithms), so clusters are numbered as there.
    """
    a, b = orient_from_first_point(n, np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
    order = edge_order(np.minimum(a, b), np.maximum(a, b), w, n)
    return _single_linkage(n, a[order], b[order], w[order].astype(np.float64))


@njit(cache=True)
def orient_from_first_point(n: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each tree edge as (endpoint nearer point 0, the other); a forest's other parts from their smallest point."""
    degree = np.zeros(n + 1, dtype=np.int64)
    for e in range(a.size):
        degree[a[e] + 1] += 1
        degree[b[e] + 1] += 1
    start = np.cumsum(degree)
    fill = start[:n].copy()
    neighbour = np.empty(2 * a.size, dtype=np.int64)
    for e in range(a.size):
        neighbour[fill[a[e]]] = b[e]
        fill[a[e]] += 1
        neighbour[fill[b[e]]] = a[e]
        fill[b[e]] += 1
    depth = np.full(n, -1, dtype=np.int64)
    queue = np.empty(n, dtype=np.int64)
    for source in range(n):
        if depth[source] >= 0:
            continue
        depth[source] = 0
        head, tail = 0, 1
        queue[0] = source
        while head < tail:
            node = queue[head]
            head += 1
            for t in range(start[node], start[node + 1]):
                other = neighbour[t]
                if depth[other] < 0:
                    depth[other] = depth[node] + 1
                    queue[tail] = other
                    tail += 1
    near = a.copy()
    far = b.copy()
    for e in range(a.size):
        if depth[b[e]] < depth[a[e]]:
            near[e], far[e] = b[e], a[e]
    return near, far


@njit(cache=True)
def _bfs_into(linkage: np.ndarray, n: int, root: int, out: np.ndarray) -> int:
    """Writes the nodes of the subtree under `root` into `out`, level by level, left before right
    (hdbscan's order); returns how many."""
    out[0] = root
    head, tail = 0, 1
    while head < tail:
        node = out[head]
        head += 1
        if node >= n:
            out[tail] = np.int64(linkage[node - n, 0])
            out[tail + 1] = np.int64(linkage[node - n, 1])
            tail += 2
    return tail


@njit(cache=True)
def _bfs(linkage: np.ndarray, n: int, root: int) -> np.ndarray:
    """Nodes of the subtree under `root`, level by level, left before right (hdbscan's order)."""
    out = np.empty(2 * n - 1, dtype=np.int64)
    return out[:_bfs_into(linkage, n, root, out)]


@njit(cache=True)
def _condense(linkage: np.ndarray, min_cluster_size: int):
    n = linkage.shape[0] + 1
    root = 2 * n - 2
    order = _bfs(linkage, n, root)
    relabel = np.empty(2 * n - 1, dtype=np.int64)
    relabel[root] = n
    next_label = n + 1
    ignore = np.zeros(2 * n - 1, dtype=np.bool_)
    parents = np.empty(2 * n, dtype=np.int64)
    children = np.empty(2 * n, dtype=np.int64)
    lambdas = np.empty(2 * n, dtype=np.float64)
    sizes = np.empty(2 * n, dtype=np.int64)
    # one buffer for every falling-off subtree: a fresh 2n one each time was most of the time past
    # ~2M points (each a fresh mmap), 33 s of 34 at 3M
    scratch = np.empty(2 * n - 1, dtype=np.int64)
    rows = 0
    for node in order:
        if ignore[node] or node < n:
            continue
        left = np.int64(linkage[node - n, 0])
        right = np.int64(linkage[node - n, 1])
        dist = linkage[node - n, 2]
        lam = 1.0 / dist if dist > 0.0 else np.inf
        left_size = np.int64(linkage[left - n, 3]) if left >= n else 1
        right_size = np.int64(linkage[right - n, 3]) if right >= n else 1
        if left_size >= min_cluster_size and right_size >= min_cluster_size:
            for side, side_size in ((left, left_size), (right, right_size)):
                relabel[side] = next_label
                next_label += 1
                parents[rows] = relabel[node]
                children[rows] = relabel[side]
                lambdas[rows] = lam
                sizes[rows] = side_size
                rows += 1
        else:
            for side, side_size in ((left, left_size), (right, right_size)):
                if side_size >= min_cluster_size:
                    relabel[side] = relabel[node]  # the cluster goes on under the same label
                    continue
                for j in range(_bfs_into(linkage, n, side, scratch)):
                    sub = scratch[j]
                    if sub < n:
                        parents[rows] = relabel[node]
                        children[rows] = sub
                        lambdas[rows] = lam
                        sizes[rows] = 1
                        rows += 1
                    ignore[sub] = True
    return parents[:rows], children[:rows], lambdas[:rows], sizes[:rows]


def condense_tree(linkage: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """The condensed tree as a structured array (parent, child, lambda_val, child_size)."""
    parents, children, lambdas, sizes = _condense(linkage, min_cluster_size)
    tree = np.empty(parents.size, dtype=CONDENSED_DTYPE)
    tree["parent"], tree["child"], tree["lambda_val"], tree["child_size"] = parents, children, lambdas, sizes
    return tree


@dataclass(frozen=True)
class ClusterTree:
    """Per-cluster facts derived from a condensed tree (clusters are ids root..max)."""

    root: int
    parent_of: np.ndarray  # cluster id -> parent cluster id (-1 for the root), indexed by id - root
    birth: np.ndarray  # lambda at which the cluster appears
    stability: np.ndarray
    size: np.ndarray

    @classmethod
    def from_condensed(cls, tree: np.ndarray) -> "ClusterTree":
        root = int(tree["parent"].min())
        count = int(max(tree["parent"].max(), tree["child"].max() if tree.size else root)) - root + 1
        count = max(count, 1)
        parent_of = np.full(count, -1, dtype=np.int64)
        birth = np.zeros(count)
        size = np.zeros(count, dtype=np.int64)
        is_cluster_row = tree["child"] >= root
        cl = tree[is_cluster_row]
        parent_of[cl["child"] - root] = cl["parent"]
        birth[cl["child"] - root] = cl["lambda_val"]
        size[cl["child"] - root] = cl["child_size"]
        size[0] = int(tree["child_size"][tree["parent"] == root].sum())
        # stability = sum over rows leaving the cluster of (lambda_leave - lambda_birth) * size
        lam = np.where(np.isfinite(tree["lambda_val"]), tree["lambda_val"], np.finfo(np.float64).max / 1e10)
        contrib = (lam - birth[tree["parent"] - root]) * tree["child_size"]
        stability = np.bincount(tree["parent"] - root, weights=contrib, minlength=count)
        return cls(root, parent_of, birth, stability, size)

    def children(self, cluster: int) -> np.ndarray:
        return np.flatnonzero(self.parent_of == cluster) + self.root

    def descendants(self, cluster: int) -> list[int]:
        out, todo = [], list(self.children(cluster))
        while todo:
            c = todo.pop()
            out.append(int(c))
            todo.extend(self.children(c))
        return out


def select_clusters(tree: np.ndarray, method: str = "eom", allow_single_cluster: bool = False,
                    cluster_selection_epsilon: float = 0.0, ct: ClusterTree | None = None,
                    max_cluster_size: int = 0, cluster_selection_epsilon_max: float = np.inf) -> list[int]:
    """Ids of the selected clusters, ascending.

    `max_cluster_size` (EOM only, 0 = no limit), as in the hdbscan library: a cluster larger than
    this is never selected; its subtree is taken instead, so one dominant mass cannot swallow
    the small dense groups inside it. `cluster_selection_epsilon_max` (EOM only): neither is a
    cluster born at a distance above it. With `allow_single_cluster` the root is a candidate too,
    its size the sum of its child clusters' (the hdbscan library's definitions).
    """
    if method not in ("eom", "leaf"):
        raise ValueError(f"cluster_selection_method must be 'eom' or 'leaf', got {method!r}")
    ct = ct if ct is not None else ClusterTree.from_condensed(tree)
    n_clusters = ct.parent_of.size
    ids = np.arange(n_clusters) + ct.root
    if method == "eom":
        stability = ct.stability.copy()
        selected = np.zeros(n_clusters, dtype=bool)
        sizes = ct.size.copy()
        with np.errstate(divide="ignore"):
            born_at = 1.0 / ct.birth  # distance at which each cluster appears
        if allow_single_cluster:
            sizes[0] = ct.size[ct.parent_of == ct.root].sum()
            finite = tree["lambda_val"]
            with np.errstate(divide="ignore"):
                born_at[0] = np.max(1.0 / finite) if finite.size else np.inf
        candidates = ids[::-1] if allow_single_cluster else ids[::-1][:-1]
        for c in candidates:
            kids = ct.children(c)
            subtree = stability[kids - ct.root].sum()
            too_big = max_cluster_size > 0 and sizes[c - ct.root] > max_cluster_size
            too_wide = born_at[c - ct.root] > cluster_selection_epsilon_max
            if (kids.size and subtree > stability[c - ct.root]) or too_big or too_wide:
                stability[c - ct.root] = subtree
            else:
                selected[c - ct.root] = True
                for d in ct.descendants(c):
                    selected[d - ct.root] = False
        chosen = [int(c) for c in ids[selected]]
        if cluster_selection_epsilon and n_clusters > 1:
            if chosen == [ct.root]:
                chosen = chosen if allow_single_cluster else []
            else:
                chosen = _epsilon_search(ct, chosen, cluster_selection_epsilon, allow_single_cluster)
    else:
        leaves = [int(c) for c in ids if c != ct.root and ct.children(c).size == 0]
        if not leaves:
            return []  # as in the hdbscan library: leaf selection never returns the root
        chosen = _epsilon_search(ct, leaves, cluster_selection_epsilon, allow_single_cluster) \
            if cluster_selection_epsilon else leaves
    return sorted(chosen)


def _epsilon_search(ct: ClusterTree, clusters: list[int], epsilon: float, allow_single_cluster: bool) -> list[int]:
    """Replace clusters born at a distance below epsilon by their ancestor born above it."""
    chosen: list[int] = []
    covered: set[int] = set()
    for c in sorted(clusters):
        if c in covered:
            continue
        birth_distance = 1.0 / ct.birth[c - ct.root] if ct.birth[c - ct.root] > 0 else np.inf
        if birth_distance >= epsilon:
            chosen.append(c)
            continue
        node = c
        while True:
            parent = int(ct.parent_of[node - ct.root])
            if parent == ct.root:
                node = parent if allow_single_cluster else node
                break
            parent_distance = 1.0 / ct.birth[parent - ct.root] if ct.birth[parent - ct.root] > 0 else np.inf
            if parent_distance > epsilon:
                node = parent
                break
            node = parent
        chosen.append(node)
        covered.update(ct.descendants(node))
        covered.add(node)
    return sorted(set(chosen))


def selected_owner(ct: ClusterTree, selected: list[int]) -> np.ndarray:
    """Per cluster (indexed by id - root): the label of its selected ancestor-or-self, or -1."""
    owner = np.full(ct.parent_of.size, -1, dtype=np.int64)
    for number, c in enumerate(selected):
        owner[c - ct.root] = number
    # clusters are numbered parents-first, so one pass carries each selection down its subtree
    for idx in range(1, ct.parent_of.size):
        if owner[idx] < 0:
            owner[idx] = owner[ct.parent_of[idx] - ct.root]
    return owner


def label_points(tree: np.ndarray, selected: list[int], n_points: int, allow_single_cluster: bool = False,
                 cluster_selection_epsilon: float = 0.0, ct: ClusterTree | None = None,
                 match_reference_implementation: bool = False) -> np.ndarray:
    """-1 for noise, else the index of the point's selected ancestor cluster in `selected`.

    A single selected root (allow_single_cluster) keeps only the points whose own lambda reaches the
    root's largest lambda (or 1 / epsilon); `match_reference_implementation` drops the points that
    leave a cluster at its birth lambda, as the reference (Java) implementation does.
    """
    ct = ct if ct is not None else ClusterTree.from_condensed(tree)
    owner = selected_owner(ct, selected)
    labels = np.full(n_points, -1, dtype=np.int64)
    points = tree[tree["child"] < ct.root]
    labels[points["child"]] = owner[points["parent"] - ct.root]
    if selected == [ct.root]:
        threshold = 1.0 / cluster_selection_epsilon if cluster_selection_epsilon else \
            tree["lambda_val"][tree["parent"] == ct.root].max()
        labels[points["child"][points["lambda_val"] < threshold]] = -1
    elif match_reference_implementation:
        # the point's lambda against the birth lambda of the selected cluster it belongs to
        label_of_row = owner[points["parent"] - ct.root]
        member = label_of_row >= 0
        cluster = np.asarray(selected, dtype=np.int64)[label_of_row[member]]
        born = ct.birth[cluster - ct.root]
        drop = points["child"][member][~(points["lambda_val"][member] > born)]
        labels[drop] = -1
    return labels


def cluster_deaths(tree: np.ndarray, root: int, count: int) -> np.ndarray:
    """Per cluster, the largest lambda at which one of its direct rows leaves it."""
    deaths = np.zeros(count)
    np.maximum.at(deaths, tree["parent"] - root, np.where(np.isfinite(tree["lambda_val"]), tree["lambda_val"], 0.0))
    has_inf = np.zeros(count, dtype=bool)
    has_inf[tree["parent"][~np.isfinite(tree["lambda_val"])] - root] = True
    deaths[has_inf] = np.inf
    return deaths


def membership_probabilities(tree: np.ndarray, selected: list[int], labels: np.ndarray,
                             ct: ClusterTree | None = None) -> np.ndarray:
    """How long a point stays in its cluster relative to the cluster's longest-lived point."""
    ct = ct if ct is not None else ClusterTree.from_condensed(tree)
    deaths = cluster_deaths(tree, ct.root, ct.parent_of.size)
    probs = np.zeros(labels.size)
    points = tree[tree["child"] < ct.root]
    point_labels = labels[points["child"]]
    member = point_labels >= 0
    cluster_ids = np.array(selected, dtype=np.int64)[point_labels[member]]
    max_lambda = deaths[cluster_ids - ct.root]
    lam = points["lambda_val"][member]
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = np.where((max_lambda == 0) | ~np.isfinite(lam) | ~np.isfinite(max_lambda),
                        1.0, np.minimum(lam, max_lambda) / max_lambda)
    probs[points["child"][member]] = prob
    return probs


def glosh_scores(tree: np.ndarray, n_points: int, ct: ClusterTree | None = None) -> np.ndarray:
    """GLOSH: 1 - lambda(point) / max lambda reached within the point's cluster's subtree."""
    ct = ct if ct is not None else ClusterTree.from_condensed(tree)
    deaths = cluster_deaths(tree, ct.root, ct.parent_of.size)
    for idx in range(ct.parent_of.size - 1, 0, -1):  # children before parents
        parent = ct.parent_of[idx] - ct.root
        deaths[parent] = max(deaths[parent], deaths[idx])
    scores = np.zeros(n_points)
    points = tree[tree["child"] < ct.root]
    lam_max = deaths[points["parent"] - ct.root]
    lam = points["lambda_val"]
    with np.errstate(invalid="ignore", divide="ignore"):
        scores[points["child"]] = np.where((lam_max == 0) | ~np.isfinite(lam) | ~np.isfinite(lam_max),
                                           0.0, (lam_max - lam) / lam_max)
    return scores


def cluster_persistence(tree: np.ndarray, selected: list[int], ct: ClusterTree | None = None) -> np.ndarray:
    """Per selected cluster: stability / (size * largest finite lambda), in [0, 1] (hdbscan's definition)."""
    if not selected:
        return np.zeros(0)
    ct = ct if ct is not None else ClusterTree.from_condensed(tree)
    lam = tree["lambda_val"][np.isfinite(tree["lambda_val"])]
    max_lambda = lam.max() if lam.size and lam.max() > 0 else 1.0
    idx = np.array(selected) - ct.root
    return np.minimum(ct.stability[idx] / (ct.size[idx] * max_lambda), 1.0)


def simplify_hierarchy(tree: np.ndarray, persistence_threshold: float) -> np.ndarray:
    """Merge away the clusters whose persistence (lambda at their birth minus lambda of their
    parent's split, over the subtree) is below the threshold: the hdbscan library's
    `cluster_selection_persistence`, step for step (its float32 bookkeeping included)."""
    tree = tree.copy()
    if tree.size == 0:
        return tree
    n_points = int(tree["parent"][0])
    cluster_tree = tree[tree["child"] >= n_points]
    if cluster_tree.size == 0:
        return tree
    n_nodes = int(cluster_tree["child"][-1]) + 1
    leaf = np.ones(n_nodes - n_points, dtype=bool)
    leaf[cluster_tree["parent"] - n_points] = False
    max_births = np.empty(n_nodes - n_points, dtype=np.float32)
    max_births[tree["parent"] - n_points] = tree["lambda_val"]
    parent_map = np.arange(n_points, n_nodes, dtype=np.int64)
    lambda_map: dict[int, float] = {}
    for idx in range(cluster_tree.size - 1, 0, -2):
        parent = int(cluster_tree["parent"][idx])
        children = cluster_tree["child"][idx - 1: idx + 1]
        death = np.float32(cluster_tree["lambda_val"][idx])
        nodes = children - n_points
        births = max_births[nodes]
        max_births[parent - n_points] = max(max_births[parent - n_points], births.max())
        if (births.min() - death) >= persistence_threshold:
            continue
        sibling = int(births[0] <= births[1])
        if leaf[nodes[sibling]]:
            leaf[parent - n_points] = True
        else:
            lambda_map[int(children[1 - sibling])] = float(death)
        parent_map[nodes] = parent
    skipped = np.zeros(parent_map.size, dtype=bool)
    for idx, parent in enumerate(parent_map):
        parent_map[idx] = parent_map[parent - n_points]
    for idx, parent in enumerate(parent_map):
        skipped[idx] = parent != idx + n_points
    cumulative = np.cumsum(skipped)
    for idx, parent in enumerate(parent_map):
        offset = cumulative[parent - n_points - 1] if parent - n_points > 0 else 0
        parent_map[idx] = parent - offset
    keep = np.ones(tree.size, dtype=bool)
    for idx in range(tree.size):
        parent, child = int(tree["parent"][idx]), int(tree["child"][idx])
        keep[idx] = not skipped[max(child - n_points, 0)]
        if not keep[idx]:
            continue
        tree["lambda_val"][idx] = lambda_map.get(parent, tree["lambda_val"][idx])
        tree["parent"][idx] = parent_map[parent - n_points]
        if child >= n_points:
            tree["child"][idx] = parent_map[child - n_points]
    return tree[keep]


def labelling_at_cut(linkage: np.ndarray, cut: float, min_cluster_size: int) -> np.ndarray:
    """DBSCAN* at one distance: the flat clustering of the single-linkage tree cut at `cut`;
    components smaller than `min_cluster_size` are noise (-1). Components are numbered as the
    peers number them (by their union-find representative)."""
    roots = _roots_at_cut(np.ascontiguousarray(linkage, dtype=np.float64), float(cut))
    ids, inverse, counts = np.unique(roots, return_inverse=True, return_counts=True)
    keep = counts >= min_cluster_size
    number = np.full(ids.size, -1, dtype=np.int64)
    number[keep] = np.arange(int(keep.sum()))
    return number[inverse]


@njit(cache=True)
def _roots_at_cut(linkage: np.ndarray, cut: float) -> np.ndarray:
    """Each point's union-find representative after merging every linkage row below `cut`
    (union by rank, ties to the first argument: the peers' TreeUnionFind)."""
    n = linkage.shape[0] + 1
    parent = np.arange(2 * n - 1)
    rank = np.zeros(2 * n - 1, dtype=np.int64)
    for i in range(linkage.shape[0]):
        if linkage[i, 2] < cut:
            node = n + i
            for side in range(2):
                x = _find(parent, np.int64(linkage[i, side]))
                y = _find(parent, node)
                if rank[x] < rank[y]:
                    parent[x] = y
                elif rank[x] > rank[y]:
                    parent[y] = x
                else:
                    parent[y] = x
                    rank[x] += 1
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = _find(parent, i)
    return out


def remap_condensed_tree(tree: np.ndarray, finite_rows: np.ndarray, n_raw: int) -> np.ndarray:
    """A condensed tree of the finite rows renumbered to all rows: the non-finite rows leave the root
    at lambda 0, as in the hdbscan library."""
    n_finite = finite_rows.size
    outliers = np.setdiff1d(np.arange(n_raw), finite_rows)
    shift = outliers.size
    out = tree.copy()
    is_point = out["child"] < n_finite
    out["child"] = np.where(is_point, finite_rows[np.minimum(out["child"], n_finite - 1)], out["child"] + shift)
    out["parent"] = out["parent"] + shift
    extra = np.empty(outliers.size, dtype=tree.dtype)
    extra["parent"] = n_raw
    extra["child"] = outliers
    extra["lambda_val"] = 0.0
    extra["child_size"] = 1
    return np.concatenate([extra, out])


def remap_single_linkage(linkage: np.ndarray, finite_rows: np.ndarray, n_raw: int) -> np.ndarray:
    """A single-linkage tree of the finite rows renumbered to all rows: each non-finite row joins the
    top at distance inf, as in the hdbscan library."""
    n_finite = finite_rows.size
    outliers = np.setdiff1d(np.arange(n_raw), finite_rows)
    shift = outliers.size
    out = linkage.copy()
    for col in (0, 1):
        node = out[:, col].astype(np.int64)
        out[:, col] = np.where(node < n_finite, finite_rows[np.minimum(node, n_finite - 1)], node + shift)
    # scipy numbering: merge row i creates node n_raw + i; each non-finite row joins the top so far
    top = n_raw + n_finite - 2 if n_finite >= 2 else (int(finite_rows[0]) if n_finite else -1)
    rows = []
    for j, outlier in enumerate(outliers):
        if top < 0:
            top = int(outlier)
            continue
        rows.append((outlier, top, np.inf, n_finite + j + 1 - (0 if n_finite else 1)))
        top = n_raw + n_finite - 1 + j - (0 if n_finite else 1)
    return np.vstack([out, np.array(rows, dtype=np.float64).reshape(-1, 4)])
