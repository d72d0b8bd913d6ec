"""scikit-learn's `HDBSCAN` estimator (sklearn.cluster.HDBSCAN) over the lakelens engine: its
signature, parameter validation, input checks and messages, `copy`, `store_centers` with
`centroids_` and `medoids_`, `dbscan_clustering`, and its outlier encoding (label -2 and
probability 0 for rows with inf, label -3 and probability nan for rows with NaN).

The conventions that differ from the hdbscan library are mapped here, not re-implemented:
scikit-learn's `min_samples` counts the point itself (the engine's is one less) and
`max_cluster_size=None` means no limit. A precomputed sparse matrix is the kNN graph as given:
each point's core distance is its `min_samples`-th stored distance, as in scikit-learn.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy import sparse as sp
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.metrics.pairwise import _VALID_METRICS
from sklearn.neighbors import BallTree, KDTree
from sklearn.utils._param_validation import Hidden, Interval, StrOptions

from lakelens.operators.hdbscan.model import HDBSCAN as _Engine
from lakelens.operators.hdbscan.tree import labelling_at_cut

try:  # scikit-learn >= 1.3
    from sklearn.base import _fit_context
except ImportError:  # pragma: no cover
    def _fit_context(prefer_skip_nested_validation):
        def wrap(fit):
            def fit_with_validation(estimator, *args, **kwargs):
                estimator._validate_params()
                return fit(estimator, *args, **kwargs)
            return fit_with_validation
        return wrap

FAST_METRICS = set(KDTree.valid_metrics + BallTree.valid_metrics)

_OUTLIER_ENCODING: dict = {
    "infinite": {"label": -2, "prob": 0},
    "missing": {"label": -3, "prob": np.nan},
}

HIERARCHY_dtype = np.dtype([("left_node", np.intp), ("right_node", np.intp), ("value", np.float64),
                            ("cluster_size", np.intp)])


def _validate(estimator, X, **kwargs):
    try:
        from sklearn.utils.validation import validate_data  # scikit-learn >= 1.6

        return validate_data(estimator, X, **kwargs)
    except ImportError:  # pragma: no cover
        if "ensure_all_finite" in kwargs:
            kwargs["force_all_finite"] = kwargs.pop("ensure_all_finite")
        return estimator._validate_data(X, **kwargs)


class HDBSCAN(ClusterMixin, BaseEstimator):
    """Cluster data using hierarchical density-based clustering (scikit-learn's interface).

    Parameters, attributes and conventions are scikit-learn's `sklearn.cluster.HDBSCAN`; the
    clustering is lakelens's kNN-graph engine (`lakelens.operators.hdbscan.HDBSCAN`).
    `algorithm` and `leaf_size` are accepted and validated as scikit-learn does; the engine maps
    them to its own kNN backends (docs/phdbscan.md).
    """

    _parameter_constraints = {
        "min_cluster_size": [Interval(Integral, left=2, right=None, closed="left")],
        "min_samples": [Interval(Integral, left=1, right=None, closed="left"), None],
        "cluster_selection_epsilon": [Interval(Real, left=0, right=None, closed="left")],
        "max_cluster_size": [None, Interval(Integral, left=1, right=None, closed="left")],
        "metric": [StrOptions(FAST_METRICS | set(_VALID_METRICS) | {"precomputed"}), callable],
        "metric_params": [dict, None],
        "alpha": [Interval(Real, left=0, right=None, closed="neither")],
        "algorithm": [StrOptions({"auto", "brute", "kd_tree", "ball_tree"})],
        "leaf_size": [Interval(Integral, left=1, right=None, closed="left")],
        "n_jobs": [Integral, None],
        "cluster_selection_method": [StrOptions({"eom", "leaf"})],
        "allow_single_cluster": ["boolean"],
        "store_centers": [None, StrOptions({"centroid", "medoid", "both"})],
        "copy": ["boolean", Hidden(StrOptions({"warn"}))],
    }

    def __init__(self, min_cluster_size=5, min_samples=None, cluster_selection_epsilon=0.0, max_cluster_size=None,
                 metric="euclidean", metric_params=None, alpha=1.0, algorithm="auto", leaf_size=40, n_jobs=None,
                 cluster_selection_method="eom", allow_single_cluster=False, store_centers=None, copy="warn"):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.alpha = alpha
        self.max_cluster_size = max_cluster_size
        self.cluster_selection_epsilon = cluster_selection_epsilon
        self.metric = metric
        self.metric_params = metric_params
        self.algorithm = algorithm
        self.leaf_size = leaf_size
        self.n_jobs = n_jobs
        self.cluster_selection_method = cluster_selection_method
        self.allow_single_cluster = allow_single_cluster
        self.store_centers = store_centers
        self.copy = copy

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Find clusters in X (features, or distances with metric='precomputed')."""
        if self.copy == "warn":
            warnings.warn("The default value of `copy` will change from False to True in 1.10. Explicitly set a "
                          "value for `copy` to silence this warning.", FutureWarning)
        if self.metric == "precomputed" and self.store_centers is not None:
            raise ValueError("Cannot store centers when using a precomputed distance matrix.")
        self._metric_params = self.metric_params or {}
        missing_index = infinite_index = np.zeros(0, dtype=np.int64)
        if self.metric != "precomputed":
            X = _validate(self, X, accept_sparse=["csr", "lil"], ensure_all_finite=False, dtype=np.float64)
            if sp.issparse(X):
                X = X.tocsr()
            self._raw_data = X
            values = X.data if sp.issparse(X) else X
            if not np.isfinite(values).all():
                reduced = np.asarray(X.sum(axis=1)).ravel()
                missing_index = np.flatnonzero(np.isnan(reduced))
                infinite_index = np.flatnonzero(np.isinf(reduced))
            kind = "features"
        elif sp.issparse(X):
            X = _validate(self, X, accept_sparse=["csr", "lil"], dtype=np.float64)
            kind = "sparse_graph"
        else:
            X = _validate(self, X, ensure_all_finite=False, dtype=np.float64)
            if np.isnan(X).any():
                raise ValueError("np.nan values found in precomputed-dense")
            kind = "precomputed"
        if X.shape[0] == 1:
            raise ValueError("n_samples=1 while HDBSCAN requires more than one sample")
        self._min_samples = self.min_cluster_size if self.min_samples is None else self.min_samples
        if self._min_samples > X.shape[0]:
            raise ValueError(f"min_samples ({self._min_samples}) must be at most the number of samples in X "
                             f"({X.shape[0]})")
        self._check_algorithm(X)
        if kind == "precomputed":
            self._check_precomputed(X)
        if kind == "sparse_graph":
            X = X.tocsr()
            counts = np.diff(X.indptr)
            if (counts < self._min_samples).any():
                raise ValueError(f"There exists points with fewer than {self._min_samples} neighbors. Ensure your "
                                 "distance matrix has non-zero values for at least "
                                 f"`min_sample`={self._min_samples} neighbors for each points (i.e. K-nn graph), or "
                                 "specify a `max_distance` in `metric_params` to use when distances are missing.")
        engine = self._engine()
        # scikit-learn's min_samples counts the point itself; a sparse graph's rank is min_samples - 1 as given
        engine._fit_checked(
            kind, X, min_samples_offset=-1, core_rank=self._min_samples - 1 if kind == "sparse_graph" else None,
            max_distance=float(self._metric_params.get("max_distance", 0.0)),
            algorithm={"auto": "auto", "brute": "brute", "kd_tree": "kd_tree", "ball_tree": "ball_tree"}[
                self.algorithm], n_jobs=self.n_jobs,
            on_disconnected="Sparse mutual reachability matrix has {components} connected components. HDBSCAN "
                            "cannot be performed on a disconnected graph. Ensure that the sparse distance matrix "
                            "has only one connected component.")
        self._engine_ = engine
        labels = engine.labels_.astype(np.intp)
        probabilities = engine.probabilities_.astype(np.float64)
        labels[infinite_index] = _OUTLIER_ENCODING["infinite"]["label"]
        labels[missing_index] = _OUTLIER_ENCODING["missing"]["label"]
        probabilities[infinite_index] = _OUTLIER_ENCODING["infinite"]["prob"]
        probabilities[missing_index] = _OUTLIER_ENCODING["missing"]["prob"]
        self.labels_, self.probabilities_ = labels, probabilities
        self._single_linkage_tree_ = _as_hierarchy(engine._single_linkage_tree)
        if self.store_centers:
            self._weighted_cluster_center(X)
        return self

    def _engine(self) -> _Engine:
        params = dict(self._metric_params)
        params.pop("max_distance", None)
        metric = self.metric
        if metric == "minkowski" and "p" not in params:
            params["p"] = 2
        return _Engine(min_cluster_size=self.min_cluster_size, min_samples=self._min_samples,
                       cluster_selection_epsilon=float(self.cluster_selection_epsilon),
                       max_cluster_size=self.max_cluster_size or 0, metric=metric, alpha=float(self.alpha),
                       p=params.pop("p", None) if metric == "minkowski" else None,
                       cluster_selection_method=self.cluster_selection_method,
                       allow_single_cluster=self.allow_single_cluster, leaf_size=self.leaf_size, **params)

    def _check_algorithm(self, X) -> None:
        if self.algorithm == "kd_tree" and self.metric not in KDTree.valid_metrics:
            raise ValueError(f"{self.metric} is not a valid metric for a KDTree-based algorithm. Please select a "
                             "different metric.")
        if self.algorithm == "ball_tree" and self.metric not in BallTree.valid_metrics:
            raise ValueError(f"{self.metric} is not a valid metric for a BallTree-based algorithm. Please select a "
                             "different metric.")
        if self.algorithm not in ("auto", "brute") and self.metric != "precomputed" and sp.issparse(X):
            raise ValueError("Sparse data matrices only support algorithm `brute`.")

    @staticmethod
    def _check_precomputed(X) -> None:
        if X.shape[0] != X.shape[1]:
            raise ValueError(f"The precomputed distance matrix is expected to be symmetric, however it has shape "
                             f"{X.shape}. Please verify that the distance matrix was constructed correctly.")
        finite = np.isfinite(X) & np.isfinite(X.T)
        if not (np.allclose(X[finite], X.T[finite]) and (np.isfinite(X) == np.isfinite(X.T)).all()):
            raise ValueError("The precomputed distance matrix is expected to be symmetric, however its values "
                             "appear to be asymmetric. Please verify that the distance matrix was constructed "
                             "correctly.")

    def fit_predict(self, X, y=None):
        """Cluster X and return the labels."""
        self.fit(X)
        return self.labels_

    def _weighted_cluster_center(self, X) -> None:
        """centroids_ and/or medoids_: membership-weighted, one row per cluster (none for outliers)."""
        n_clusters = int(self.labels_.max()) + 1 if (self.labels_ >= 0).any() else 0
        make_centroids = self.store_centers in ("centroid", "both")
        make_medoids = self.store_centers in ("medoid", "both")
        if make_centroids:
            self.centroids_ = np.empty((n_clusters, X.shape[1]), dtype=np.float64)
        if make_medoids:
            self.medoids_ = np.empty((n_clusters, X.shape[1]), dtype=np.float64)
        for idx in range(n_clusters):
            mask = self.labels_ == idx
            data = X[mask]
            data = data.toarray() if sp.issparse(data) else data
            strength = self.probabilities_[mask]
            if make_centroids:
                self.centroids_[idx] = np.average(data, weights=strength, axis=0)
            if make_medoids:
                distances = self._engine_._pairwise(data, data) * strength
                self.medoids_[idx] = data[np.argmin(distances.sum(axis=1))]

    def dbscan_clustering(self, cut_distance, min_cluster_size=5):
        """DBSCAN* labels at `cut_distance` (a flat cut of the single-linkage tree); rows with inf or
        NaN keep their outlier labels."""
        labels = labelling_at_cut(self._engine_._single_linkage_tree, cut_distance, min_cluster_size)
        labels[self.labels_ == _OUTLIER_ENCODING["infinite"]["label"]] = _OUTLIER_ENCODING["infinite"]["label"]
        labels[self.labels_ == _OUTLIER_ENCODING["missing"]["label"]] = _OUTLIER_ENCODING["missing"]["label"]
        return labels

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = self.metric != "precomputed"
        return tags

    def _more_tags(self):  # scikit-learn < 1.6
        return {"allow_nan": self.metric != "precomputed"}


def _as_hierarchy(linkage: np.ndarray) -> np.ndarray:
    """A scipy-format linkage as scikit-learn's structured HIERARCHY_dtype array."""
    out = np.empty(linkage.shape[0], dtype=HIERARCHY_dtype)
    if linkage.size:
        out["left_node"], out["right_node"] = linkage[:, 0].astype(np.intp), linkage[:, 1].astype(np.intp)
        out["value"], out["cluster_size"] = linkage[:, 2], linkage[:, 3].astype(np.intp)
    return out
