"""Tree objects with the hdbscan library's interface: `CondensedTree`, `SingleLinkageTree` and
`MinimumSpanningTree` (what `condensed_tree_`, `single_linkage_tree_` and `minimum_spanning_tree_`
return): `to_numpy`, `to_pandas`, `to_networkx`, `plot`, and `select_clusters` /
`get_clusters` on the trees that have them. pandas, networkx and matplotlib are optional imports.
"""

from __future__ import annotations

import warnings

import numpy as np

from lakelens.operators.hdbscan.tree import ClusterTree, labelling_at_cut, select_clusters


def _pyplot(what: str):
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"You must install the matplotlib library to plot the {what}.") from None
    return plt


class CondensedTree:
    """The condensed tree: a structured array of (parent, child, lambda_val, child_size) rows."""

    def __init__(self, condensed_tree_array: np.ndarray, labels: np.ndarray | None = None,
                 selected: list[int] | None = None) -> None:
        self._raw_tree = condensed_tree_array
        self._labels = labels
        self._selected = selected

    # a tree is still usable as the array it wraps (tree["child"], np.asarray(tree), len(tree))
    def __array__(self, dtype=None, copy=None):
        return self._raw_tree if dtype is None else self._raw_tree.astype(dtype)

    def __getitem__(self, key):
        return self._raw_tree[key]

    def __len__(self) -> int:
        return len(self._raw_tree)

    @property
    def dtype(self):
        return self._raw_tree.dtype

    def to_numpy(self) -> np.ndarray:
        return self._raw_tree.copy()

    def to_pandas(self):
        try:
            from pandas import DataFrame
        except ImportError:
            raise ImportError("You must have pandas installed to export pandas DataFrames") from None
        return DataFrame(self._raw_tree)

    def to_networkx(self):
        try:
            from networkx import DiGraph, set_node_attributes
        except ImportError:
            raise ImportError("You must have networkx installed to export networkx graphs") from None
        graph = DiGraph()
        for row in self._raw_tree:
            graph.add_edge(int(row["parent"]), int(row["child"]), weight=float(row["lambda_val"]))
        set_node_attributes(graph, {int(c): int(s) for c, s in zip(self._raw_tree["child"],
                                                                   self._raw_tree["child_size"])}, "size")
        return graph

    def _select_clusters(self) -> list[int]:
        """The clusters the fit selected (ids in this tree)."""
        if self._selected is not None:
            return sorted(self._selected)
        if self._labels is None or self._raw_tree.size == 0:
            return []
        points = self._raw_tree[self._raw_tree["child_size"] == 1]
        labels = self._labels[points["child"]]
        return [int(points["parent"][labels == label].min()) for label in range(int(labels.max()) + 1)]

    def select_clusters(self, method: str = "eom", allow_single_cluster: bool = False,
                        cluster_selection_epsilon: float = 0.0, max_cluster_size: int = 0) -> list[int]:
        """Cluster ids another selection (EOM or leaf, epsilon, size cap) would pick on this tree."""
        if self._raw_tree.size == 0:
            return []
        return select_clusters(self._raw_tree, method, allow_single_cluster, cluster_selection_epsilon,
                               max_cluster_size=max_cluster_size)

    def get_plot_data(self, leaf_separation: float = 1, log_size: bool = False,
                      max_rectangle_per_icicle: int = 20) -> dict:
        """Bars (one per step of a cluster's shrinking size), connecting lines and cluster bounds."""
        tree = self._raw_tree
        ct = ClusterTree.from_condensed(tree)
        root = ct.root
        x = {leaf: leaf_separation * i for i, leaf in enumerate(_leaf_order(ct, root))} if ct.parent_of.size > 1 \
            else {root: leaf_separation}
        y = {root: 0.0}
        for c in range(root + ct.parent_of.size - 1, root - 1, -1):
            kids = ct.children(c)
            if kids.size:
                x[c] = float(np.mean([x[k] for k in kids]))
                for k in kids:
                    y[int(k)] = ct.birth[k - root]
        scaling = float(tree["child_size"][tree["parent"] == root].sum())
        scaling = np.log(scaling) if log_size else scaling
        bars = {"bar_centers": [], "bar_tops": [], "bar_bottoms": [], "bar_widths": []}
        bounds = {}
        for c in range(root + ct.parent_of.size - 1, root - 1, -1):
            rows = tree[tree["parent"] == c]
            size = float(rows["child_size"].sum())
            top_lambda = rows["lambda_val"].max()
            fmt = np.log if log_size else (lambda v: v)
            current = fmt(size)
            last_size, last_lambda = current, y[c]
            smallest = fmt(max(float(rows["child_size"][rows["lambda_val"] == top_lambda].sum()), 1.0))
            step = (current - smallest) / max_rectangle_per_icicle
            bounds[c] = [x[c] * scaling - current / 2.0, x[c] * scaling + current / 2.0, y[c], top_lambda]
            lam = y[c]
            for row in rows[np.argsort(rows["lambda_val"], kind="stable")]:
                if row["lambda_val"] != lam and (last_size - current > step or row["lambda_val"] == top_lambda):
                    bars["bar_centers"].append(x[c] * scaling)
                    bars["bar_tops"].append(row["lambda_val"] - last_lambda)
                    bars["bar_bottoms"].append(last_lambda)
                    bars["bar_widths"].append(last_size)
                    last_size, last_lambda = current, lam
                if log_size:
                    rest = np.exp(current) - row["child_size"]
                    current = np.log(rest) if rest > 0.01 else 0.0
                else:
                    current -= row["child_size"]
                lam = row["lambda_val"]
        line_xs, line_ys = [], []
        for row in tree[tree["child_size"] > 1]:
            parent, child = int(row["parent"]), int(row["child"])
            size = np.log(row["child_size"]) if log_size else row["child_size"]
            sign = np.sign(x[child] - x[parent])
            line_xs.append([x[parent] * scaling, x[child] * scaling + sign * (size / 2.0)])
            line_ys.append([y[child], y[child]])
        return {**bars, "line_xs": line_xs, "line_ys": line_ys, "cluster_bounds": bounds}

    def plot(self, leaf_separation=1, cmap="viridis", select_clusters=False, label_clusters=False,
             selection_palette=None, axis=None, colorbar=True, log_size=False, max_rectangles_per_icicle=20):
        """The icicle plot of the condensed tree (matplotlib), selected clusters circled on request."""
        plt = _pyplot("condensed tree")
        data = self.get_plot_data(leaf_separation, log_size, max_rectangles_per_icicle)
        widths = data["bar_widths"] or [1.0]
        sm = None
        if cmap != "none":
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(widths)))
            sm.set_array(widths)
            colors = [sm.to_rgba(w) for w in data["bar_widths"]]
        else:
            colors = "black"
        axis = axis if axis is not None else plt.gca()
        axis.bar(data["bar_centers"], data["bar_tops"], bottom=data["bar_bottoms"], width=data["bar_widths"],
                 color=colors, align="center", linewidth=0)
        for xs, ys in zip(data["line_xs"], data["line_ys"]):
            axis.plot(xs, ys, color="black", linewidth=1)
        if select_clusters:
            from matplotlib.patches import Ellipse

            chosen = self._select_clusters()
            span = np.hstack([data["bar_tops"], data["bar_bottoms"]]) if data["bar_tops"] else np.zeros(1)
            span = span[np.isfinite(span)] if np.isfinite(span).any() else np.zeros(1)
            middle = np.mean([span.max(), span.min()])
            tallest = float(np.diff(np.percentile(span, [10, 90]))[0]) or 1.0
            for i, c in enumerate(chosen):
                left, right, bottom, top = data["cluster_bounds"][c]
                if not np.isfinite(top):
                    warnings.warn("Infinite lambda values encountered in chosen clusters. This might be due to "
                                  "duplicates in the data.")
                width, height = right - left, top - bottom
                center = (np.mean([left, right]), np.mean([top, bottom]))
                center = center if np.isfinite(center[1]) else (center[0], middle)
                height = height if np.isfinite(height) else tallest
                height = max(height, 0.1 * tallest)
                color = selection_palette[i] if selection_palette is not None and \
                    len(selection_palette) >= len(chosen) else "r"
                axis.add_artist(Ellipse(center, 2.0 * width, 1.2 * height, facecolor="none", edgecolor=color,
                                        linewidth=2))
                if label_clusters:
                    axis.annotate(str(i), xy=center, xytext=(center[0] - 4.0 * width, center[1] + 0.65 * height),
                                  horizontalalignment="left", verticalalignment="bottom")
        if colorbar and sm is not None:
            bar = plt.colorbar(sm, ax=axis)
            bar.ax.set_ylabel("log(Number of points)" if log_size else "Number of points")
        axis.set_xticks([])
        for side in ("right", "top", "bottom"):
            axis.spines[side].set_visible(False)
        axis.invert_yaxis()
        axis.set_ylabel("$\\lambda$ value")
        return axis


def _leaf_order(ct: ClusterTree, root: int) -> list[int]:
    """Leaves left to right (depth first, children in id order)."""
    kids = ct.children(root)
    return [root] if kids.size == 0 else [leaf for k in kids for leaf in _leaf_order(ct, int(k))]


class SingleLinkageTree:
    """The single-linkage tree in scipy's linkage format: rows (left, right, distance, size)."""

    def __init__(self, linkage: np.ndarray) -> None:
        self._linkage = linkage

    def __array__(self, dtype=None, copy=None):
        return self._linkage if dtype is None else self._linkage.astype(dtype)

    def __getitem__(self, key):
        return self._linkage[key]

    def __len__(self) -> int:
        return len(self._linkage)

    @property
    def shape(self):
        return self._linkage.shape

    def to_numpy(self) -> np.ndarray:
        return self._linkage.copy()

    def to_pandas(self):
        try:
            from pandas import DataFrame
        except ImportError:
            raise ImportError("You must have pandas installed to export pandas DataFrames") from None
        n_points = self._linkage.shape[0] + 1
        return DataFrame({"parent": np.arange(n_points, 2 * n_points - 1), "left_child": self._linkage[:, 0],
                          "right_child": self._linkage[:, 1], "distance": self._linkage[:, 2],
                          "size": self._linkage[:, 3]})

    def to_networkx(self):
        try:
            from networkx import DiGraph, set_node_attributes
        except ImportError:
            raise ImportError("You must have networkx installed to export networkx graphs") from None
        n_points = self._linkage.shape[0] + 1
        graph = DiGraph()
        for parent, row in enumerate(self._linkage, n_points):
            graph.add_edge(parent, int(row[0]), weight=float(row[2]))
            graph.add_edge(parent, int(row[1]), weight=float(row[2]))
        set_node_attributes(graph, {parent: float(row[3]) for parent, row in enumerate(self._linkage, n_points)},
                            "size")
        return graph

    def get_clusters(self, cut_distance: float, min_cluster_size: int = 5) -> np.ndarray:
        """DBSCAN* labels at `cut_distance` (-1 for noise)."""
        return labelling_at_cut(self._linkage, cut_distance, min_cluster_size)

    def plot(self, axis=None, truncate_mode=None, p=0, vary_line_width=True, cmap="viridis", colorbar=True):
        """A dendrogram (scipy's layout, matplotlib), line widths by cluster size on request."""
        from scipy.cluster.hierarchy import dendrogram

        plt = _pyplot("single linkage tree")
        linkage = np.array(self._linkage, dtype=np.float64)
        linkage[:, 2] = np.where(np.isfinite(linkage[:, 2]), linkage[:, 2],
                                 np.nanmax(np.where(np.isfinite(linkage[:, 2]), linkage[:, 2], np.nan)) * 2 or 1.0)
        shape = dendrogram(linkage, p=p, truncate_mode=truncate_mode, no_plot=True)
        axis = axis if axis is not None else plt.gca()
        sizes = [(1.0, 1.0)] * len(shape["dcoord"])
        if vary_line_width:
            n = linkage.shape[0] + 1
            by_height = {}
            for row in linkage:
                by_height.setdefault(round(float(row[2]), 12), []).append(row)
            sizes = []
            for ys in shape["dcoord"]:
                row = by_height.get(round(float(ys[1]), 12), [None])[0]
                if row is None:
                    sizes.append((1.0, 1.0))
                    continue
                side = [linkage[int(c) - n, 3] if c >= n else 1.0 for c in row[:2]]
                sizes.append((float(side[0]), float(side[1])))
        sm = None
        if cmap != "none":
            values = np.log2(np.array(sizes).ravel())
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(values.max(), 1e-9)))
            sm.set_array(values)
        for xs, ys, (lw_left, lw_right) in zip(shape["icoord"], shape["dcoord"], sizes):
            left_color = sm.to_rgba(np.log2(lw_left)) if sm is not None else "k"
            right_color = sm.to_rgba(np.log2(lw_right)) if sm is not None else "k"
            axis.plot(xs[:2], ys[:2], color=left_color, linewidth=np.log2(1 + lw_left))
            axis.plot(xs[2:], ys[2:], color=right_color, linewidth=np.log2(1 + lw_right))
            axis.plot(xs[1:3], ys[1:3], color="k", linewidth=1.0)
        if colorbar and sm is not None:
            bar = plt.colorbar(sm, ax=axis)
            bar.ax.set_ylabel("log(Number of points)")
        axis.set_xticks([])
        for side in ("right", "top", "bottom"):
            axis.spines[side].set_visible(False)
        axis.set_ylabel("distance")
        return axis


class MinimumSpanningTree:
    """The mutual-reachability minimum spanning tree: rows (from, to, distance), with the data it spans."""

    def __init__(self, mst: np.ndarray, data) -> None:
        self._mst = mst
        self._data = data

    def __array__(self, dtype=None, copy=None):
        return self._mst if dtype is None else self._mst.astype(dtype)

    def to_numpy(self) -> np.ndarray:
        return self._mst.copy()

    def to_pandas(self):
        try:
            from pandas import DataFrame
        except ImportError:
            raise ImportError("You must have pandas installed to export pandas DataFrames") from None
        return DataFrame({"from": self._mst[:, 0].astype(int), "to": self._mst[:, 1].astype(int),
                          "distance": self._mst[:, 2]})

    def to_networkx(self):
        try:
            from networkx import Graph, set_node_attributes
        except ImportError:
            raise ImportError("You must have networkx installed to export networkx graphs") from None
        graph = Graph()
        for a, b, w in self._mst:
            graph.add_edge(int(a), int(b), weight=float(w))
        data = self._data.toarray() if hasattr(self._data, "toarray") else np.asarray(self._data)
        set_node_attributes(graph, {i: tuple(row) for i, row in enumerate(data)}, "data")
        return graph

    def plot(self, axis=None, node_size=40, node_color="k", node_alpha=0.8, edge_alpha=0.5, edge_cmap="viridis_r",
             edge_linewidth=2, vary_line_width=True, colorbar=True):
        """The tree drawn over the data (its first two dimensions, or a 2-d PCA projection of more)."""
        plt = _pyplot("minimum spanning tree")
        from matplotlib.collections import LineCollection

        data = self._data.toarray() if hasattr(self._data, "toarray") else np.asarray(self._data, dtype=np.float64)
        if data.shape[0] > 32767:
            warnings.warn("Too many data points for safe rendering of an minimal spanning tree!")
            return None
        axis = axis if axis is not None else plt.gca()
        if data.shape[1] > 2:
            from sklearn.decomposition import PCA

            projection = PCA(n_components=2).fit_transform(np.nan_to_num(data))
        else:
            projection = data
        weights = self._mst[:, 2]
        finite = weights[np.isfinite(weights) & (weights > 0)]
        if vary_line_width and finite.size:
            safe = np.clip(np.where(np.isfinite(weights), weights, finite.max()), finite.min(), None)
            width = edge_linewidth * (np.log(finite.max() / safe) + 1.0)
        else:
            width = edge_linewidth
        lines = LineCollection(projection[self._mst[:, :2].astype(int)], linewidth=width, cmap=edge_cmap,
                               alpha=edge_alpha)
        lines.set_array(weights)
        axis.add_artist(lines)
        axis.scatter(projection[:, 0], projection[:, 1], c=node_color, alpha=node_alpha, s=node_size)
        axis.set_xticks([])
        axis.set_yticks([])
        if colorbar:
            bar = plt.colorbar(lines, ax=axis)
            bar.ax.set_ylabel("Mutual reachability distance")
        return axis
