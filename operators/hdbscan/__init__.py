"""pHDBSCAN: HDBSCAN over FAISS kNN graphs. Each stage is a module of pure functions over arrays:
knn (graph), mst (core distances, spanning tree, component joins), tree (linkage, condensing,
selection, labels, GLOSH); model wires them and matches the hdbscan library's API."""

from lakelens.operators.hdbscan.model import HDBSCANParams, HDBSCANResult, PHDBSCAN, fit_hdbscan, prepare_data

__all__ = ["HDBSCANParams", "HDBSCANResult", "PHDBSCAN", "fit_hdbscan", "prepare_data"]
