"""pHDBSCAN: HDBSCAN over kNN graphs, a drop-in for the `hdbscan` library.

`import lakelens.operators.hdbscan as hdbscan` gives code written for the hdbscan library what it
imports: `HDBSCAN` (the engine; `PHDBSCAN` is the same class), `hdbscan()`, `approximate_predict`,
`approximate_predict_scores`, `membership_vector`, `all_points_membership_vectors` and
`validity_index`. `lakelens.operators.hdbscan.sklearn.HDBSCAN` is scikit-learn's estimator over
the same engine.

Each stage is a module of pure functions over arrays: backends (kNN graphs per metric: FAISS,
scikit-learn, pynndescent, precomputed), knn (FAISS graphs), mst (core distances, spanning
forest, component joins), tree (linkage, condensing, selection, labels, GLOSH); model wires them,
prediction (new points, soft clustering), plots (tree objects) and validity (DBCV) read a fit.
"""

from lakelens.operators.hdbscan.model import (
    HDBSCAN,
    PHDBSCAN,
    HDBSCANParams,
    HDBSCANResult,
    fit_hdbscan,
    hdbscan,
    prepare_data,
)
from lakelens.operators.hdbscan.plots import CondensedTree, MinimumSpanningTree, SingleLinkageTree
from lakelens.operators.hdbscan.prediction import (
    all_points_membership_vectors,
    approximate_predict,
    approximate_predict_scores,
    membership_vector,
)
from lakelens.operators.hdbscan.validity import validity_index

__all__ = [
    "HDBSCAN", "PHDBSCAN", "HDBSCANParams", "HDBSCANResult", "fit_hdbscan", "hdbscan", "prepare_data",
    "approximate_predict", "approximate_predict_scores", "membership_vector", "all_points_membership_vectors",
    "validity_index", "CondensedTree", "SingleLinkageTree", "MinimumSpanningTree",
]
