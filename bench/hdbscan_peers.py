"""pHDBSCAN against hdbscan, fast_hdbscan and sklearn's HDBSCAN on the same data and params, in one run.

Each method runs in its own process (peak RSS is per process) with a time limit; a method that
ran out of time at a smaller size is skipped at larger ones, and the output says so. Quality is
ARI against the hdbscan labels (when hdbscan ran) and against the planted truth (noise = -1).

Cases (`--cases`): `euclidean` (all four methods), `manhattan` (a non-euclidean metric: pHDBSCAN,
hdbscan and scikit-learn; fast_hdbscan has no other metric), and `knn_graph` (a precomputed sparse
distance matrix: the data's symmetrised 60-NN graph, chained into one component with true
distances, given to each with metric='precomputed').

    python bench/hdbscan_peers.py --sizes 100000x32 1000000x48
    python bench/hdbscan_peers.py --sizes 20000x16 --cases manhattan knn_graph
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, stamp  # noqa: E402

METHODS = ("phdbscan", "hdbscan", "fast_hdbscan", "sklearn")
CASES = ("euclidean", "manhattan", "knn_graph")
MIN_CLUSTER_SIZE = 50
GRAPH_K = 60  # scikit-learn needs at least min_samples stored distances per row


def planted(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs of different spreads plus 3% uniform noise; truth labels with noise = -1."""
    from sklearn.datasets import make_blobs

    n_noise = n * 3 // 100
    X, y = make_blobs(n_samples=n - n_noise, centers=20, n_features=dim, cluster_std=np.linspace(0.5, 2.5, 20),
                      center_box=(-30, 30), random_state=seed)
    noise = np.random.default_rng(seed).uniform(-40, 40, size=(n_noise, dim))
    return np.vstack([X, noise]).astype(np.float32), np.concatenate([y, np.full(n_noise, -1)])


def knn_graph(X: np.ndarray, k: int = GRAPH_K):
    """The symmetrised k-NN distance graph of X, its components chained by one true-distance edge each."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import kneighbors_graph

    graph = kneighbors_graph(X, k, mode="distance", n_jobs=-1)
    graph = graph.maximum(graph.T).tolil()
    count, labels = connected_components(graph, directed=False)
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(count)]
    for a, b in zip(firsts, firsts[1:]):
        graph[a, b] = graph[b, a] = max(float(np.linalg.norm(X[a] - X[b])), 1e-12)
    return sparse.csr_matrix(graph)


def run_worker(method: str, case: str, data_path: str, labels_path: str) -> None:
    if case == "knn_graph":
        from scipy import sparse

        X = sparse.load_npz(data_path)
        metric = "precomputed"
    else:
        X = np.load(data_path)
        metric = case
    began = time.perf_counter()
    if method == "phdbscan":
        from lakelens.operators.hdbscan import PHDBSCAN

        labels = PHDBSCAN(min_cluster_size=MIN_CLUSTER_SIZE, metric=metric).fit(X).labels_
    elif method == "hdbscan":
        import hdbscan

        labels = hdbscan.HDBSCAN(min_cluster_size=MIN_CLUSTER_SIZE, metric=metric, core_dist_n_jobs=-1).fit(X).labels_
    elif method == "fast_hdbscan":
        import fast_hdbscan

        labels = fast_hdbscan.HDBSCAN(min_cluster_size=MIN_CLUSTER_SIZE).fit(X).labels_
    else:
        from sklearn.cluster import HDBSCAN

        labels = HDBSCAN(min_cluster_size=MIN_CLUSTER_SIZE, metric=metric, n_jobs=-1, copy=False).fit(X).labels_
    seconds = time.perf_counter() - began
    np.save(labels_path, labels)
    print(json.dumps({"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["100000x32", "1000000x48", "10000000x48"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--limit-s", type=int, default=900)
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "CASE", "DATA", "LABELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(*args.worker)
        return
    print(f"# hdbscan_peers | {machine()} | {stamp()} | min_cluster_size={MIN_CLUSTER_SIZE}")
    timed_out: set[tuple[str, str]] = set()
    last_seconds: dict[tuple[str, str], tuple[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            n, dim = (int(v) for v in size.split("x"))
            X, truth = planted(n, dim)
            for case in args.cases:
                if case == "knn_graph":
                    from scipy import sparse

                    data_path = f"{tmp}/G.npz"
                    sparse.save_npz(data_path, knn_graph(X))
                else:
                    data_path = f"{tmp}/X.npy"
                    np.save(data_path, X)
                run_case(args, case, size, n, data_path, truth, tmp, timed_out, last_seconds)


def run_case(args, case: str, size: str, n: int, data_path: str, truth: np.ndarray, tmp: str,
             timed_out: set, last_seconds: dict) -> None:
    from sklearn.metrics import adjusted_rand_score

    results: dict[str, dict] = {}
    label = f"{size} {case}"
    for method in args.methods:
        if method == "fast_hdbscan" and case != "euclidean":
            continue  # euclidean only
        if (method, case) in timed_out:
            print(f"{label} {method:>12}: skipped (over {args.limit_s}s at a smaller size)")
            continue
        if (method, case) in last_seconds:
            prev_n, prev_s = last_seconds[(method, case)]
            predicted = prev_s * n / prev_n  # at least linear growth
            if predicted > args.limit_s:
                print(f"{label} {method:>12}: skipped (took {prev_s:.0f}s at n={prev_n:,}; "
                      f"predicted >= {predicted:.0f}s > {args.limit_s}s)")
                continue
        labels_path = f"{tmp}/{method}.npy"
        began = time.perf_counter()
        try:
            out = subprocess.run([sys.executable, __file__, "--worker", method, case, data_path, labels_path],
                                 capture_output=True, text=True, timeout=args.limit_s)
        except subprocess.TimeoutExpired:
            timed_out.add((method, case))
            print(f"{label} {method:>12}: skipped (over {args.limit_s}s)")
            continue
        if out.returncode != 0:
            print(f"{label} {method:>12}: failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        stats = json.loads(out.stdout.strip().splitlines()[-1])
        stats["wall_with_startup"] = time.perf_counter() - began
        stats["labels"] = np.load(labels_path)
        results[method] = stats
        last_seconds[(method, case)] = (n, stats["seconds"])
    reference = results.get("hdbscan", {}).get("labels")
    ours = results.get("phdbscan")
    for method, stats in results.items():
        ari_ref = adjusted_rand_score(reference, stats["labels"]) if reference is not None else float("nan")
        ratio = stats["seconds"] / ours["seconds"] if ours else float("nan")
        print(f"{label} {method:>12}: fit={stats['seconds']:8.1f}s process={stats['wall_with_startup']:8.1f}s "
              f"peak_rss={stats['peak_rss_gib']:5.2f}GiB ARI_vs_hdbscan={ari_ref:.4f} "
              f"ARI_vs_truth={adjusted_rand_score(truth, stats['labels']):.4f} "
              f"time_vs_phdbscan={ratio:6.2f}x clusters={int(stats['labels'].max()) + 1}")


if __name__ == "__main__":
    main()
