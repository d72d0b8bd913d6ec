"""pHDBSCAN against hdbscan, fast_hdbscan and scikit-learn's HDBSCAN over a grid of settings, in one run.

The grid (issue 14): n in {50k, 200k, 1M} x d in {8, 24, 64} x min_samples in {5, 10, 50} x
min_cluster_size in {25, 200} x three data sets:
- `blobs`: 16 Gaussian blobs of varied density (std 0.4 to 3) in a +-30 box, 6 % uniform noise;
- `aniso`: 12 Gaussian blobs, each stretched by a random rotation and axis scales up to 10:1, 6 % noise;
- `manifold`: embedding-like, 10 clusters on curved 4-d manifolds (a random tanh map of latent
  Gaussians) in d dimensions, 4 % noise: low intrinsic dimension, as learnt embeddings have.

Every method runs in its own process (peak RSS is per process) under a time cap (`--cap-s`,
default 15 min). pHDBSCAN's process is timed from launch to the end of its first fit ("fresh":
imports and numba's on-disk cache included, the scheduled-job case) and then fits again ("warm").
fast_hdbscan fits a small set first so its JIT compile is excluded and reported apart.
`--stop-at-ratio R` stops a peer once it has run R times pHDBSCAN's fresh time: its row then
says "> t s" and the speed ratio is a measured lower bound (>= R), never a pass by omission.

Quality: ARI of each method's labels against the reference (hdbscan's, else the first exact peer
that finished), the Spearman correlation of GLOSH outlier scores against hdbscan's, and pHDBSCAN's
kNN recall@(min_samples + 1) and core-distance error, measured on 1,000 sampled rows against
exact FAISS (knn.KnnReport). The stage profile splits pHDBSCAN's warm fit into kNN graph, core
distances, spanning forest, component joins and tree.

    python bench/hdbscan_grid.py                                   # the whole grid
    python bench/hdbscan_grid.py --n 50000 --mcs 25 --stop-at-ratio 20 --out bench/out/grid.jsonl
    python bench/hdbscan_grid.py --n 1000000 --d 48 --min-samples 10 --mcs 100 --peers
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, stamp  # noqa: E402

PEERS = ("hdbscan", "fast_hdbscan", "sklearn")
DATA = ("blobs", "aniso", "manifold")


# -- data ---------------------------------------------------------------------------------------------

def blobs(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """16 Gaussian blobs of varied density plus 6 % uniform noise; truth labels, noise -1."""
    rng = np.random.default_rng(seed)
    k, n_noise = 16, n * 6 // 100
    centres = rng.uniform(-30, 30, size=(k, d))
    sizes = rng.multinomial(n - n_noise, np.full(k, 1 / k))
    X = np.concatenate([c + s * rng.standard_normal((m, d), dtype=np.float32)
                        for c, s, m in zip(centres, np.geomspace(0.4, 3.0, k), sizes)])
    noise = rng.uniform(-40, 40, size=(n_noise, d))
    return np.vstack([X, noise]).astype(np.float32), np.concatenate([np.repeat(np.arange(k), sizes),
                                                                     np.full(n_noise, -1)])


def aniso(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """12 Gaussian blobs, each rotated at random and stretched up to 10:1 along its axes, plus 6 % noise."""
    rng = np.random.default_rng(seed)
    k, n_noise = 12, n * 6 // 100
    centres = rng.uniform(-40, 40, size=(k, d))
    sizes = rng.multinomial(n - n_noise, np.full(k, 1 / k))
    parts = []
    for c, m, s in zip(centres, sizes, np.geomspace(0.5, 2.0, k)):
        rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
        scales = s * np.geomspace(1.0, 10.0, d)[rng.permutation(d)] / 3
        parts.append((c + (rng.standard_normal((m, d)) * scales) @ rotation.T).astype(np.float32))
    noise = rng.uniform(-55, 55, size=(n_noise, d))
    return np.vstack(parts + [noise]).astype(np.float32), np.concatenate([np.repeat(np.arange(k), sizes),
                                                                          np.full(n_noise, -1)])


def manifold(n: int, d: int, seed: int = 0, latent: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like: 10 clusters on curved `latent`-d manifolds in d dimensions, plus 4 % noise."""
    rng = np.random.default_rng(seed)
    k, n_noise = 10, n * 4 // 100
    sizes = rng.multinomial(n - n_noise, np.full(k, 1 / k))
    w1 = rng.standard_normal((latent, 32)) / np.sqrt(latent)
    w2 = rng.standard_normal((32, d)) * 3 / np.sqrt(32)
    centres = rng.standard_normal((k, latent)) * 3.0
    z = np.concatenate([c + s * rng.standard_normal((m, latent))
                        for c, m, s in zip(centres, sizes, np.geomspace(0.25, 0.6, k))])
    X = np.tanh(z @ w1) @ w2 + 0.03 * rng.standard_normal((z.shape[0], d))
    noise = rng.uniform(X.min(0), X.max(0), size=(n_noise, d))
    return np.vstack([X, noise]).astype(np.float32), np.concatenate([np.repeat(np.arange(k), sizes),
                                                                     np.full(n_noise, -1)])


MAKERS = {"blobs": blobs, "aniso": aniso, "manifold": manifold}


# -- workers (one process each) ------------------------------------------------------------------------

def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(method: str, data_path: str, out_prefix: str, min_samples: int, mcs: int, launched: float) -> dict:
    X = np.load(data_path)
    stats: dict = {}
    if method == "phdbscan":
        from lakelens.operators.hdbscan import PHDBSCAN

        began, cpu = time.perf_counter(), time.process_time()
        model = PHDBSCAN(min_cluster_size=mcs, min_samples=min_samples).fit(X)
        stats["fit_fresh"] = time.perf_counter() - began
        stats["cpu_fresh"] = time.process_time()  # imports and the first fit, all threads
        stats["fresh"] = time.time() - launched  # launch, imports, numba cache loads and the fit
        stats["peak_rss_fresh_gib"] = _peak_gib()
        stats["seconds"] = stats["fit_fresh"]
        if os.environ.get("HDBSCAN_GRID_WARM", "1") == "1":
            began, cpu = time.perf_counter(), time.process_time()
            model = PHDBSCAN(min_cluster_size=mcs, min_samples=min_samples).fit(X)
            stats["seconds"] = time.perf_counter() - began
        stats["cpu"] = time.process_time() - cpu
        stats["warm_run"] = os.environ.get("HDBSCAN_GRID_WARM", "1") == "1"
        stats["stages"] = {k: round(v, 3) for k, v in model.result_.timings.items()}
        r = model.knn_report_
        stats["knn"] = {"method": r.method, "probe": r.probe, "cells": r.cells, "recall_k": r.recall_k,
                        "recall": r.recall, "core_error_mean": r.core_error_mean, "core_error_max": r.core_error_max,
                        "measuring_s": r.seconds_measuring}
        stats["joins"] = {"components": model.result_.joins.components, "budgeted": model.result_.joins.budgeted}
        labels, scores = model.labels_, model.outlier_scores_
    elif method == "hdbscan":
        import hdbscan

        began, cpu = time.perf_counter(), time.process_time()
        model = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=min_samples, core_dist_n_jobs=-1).fit(X)
        stats["seconds"], stats["cpu"] = time.perf_counter() - began, time.process_time() - cpu
        labels, scores = model.labels_, model.outlier_scores_
    elif method == "fast_hdbscan":
        import fast_hdbscan

        began = time.perf_counter()
        fast_hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=min_samples).fit(X[:2000])
        stats["compile"] = time.perf_counter() - began
        began, cpu = time.perf_counter(), time.process_time()
        model = fast_hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=min_samples).fit(X)
        stats["seconds"], stats["cpu"] = time.perf_counter() - began, time.process_time() - cpu
        labels, scores = model.labels_, None
    else:
        from sklearn.cluster import HDBSCAN

        began, cpu = time.perf_counter(), time.process_time()
        # scikit-learn counts the point itself in min_samples; the others do not
        labels = HDBSCAN(min_cluster_size=mcs, min_samples=min_samples + 1, n_jobs=-1, copy=False).fit(X).labels_
        stats["seconds"], stats["cpu"] = time.perf_counter() - began, time.process_time() - cpu
        scores = None
    stats["peak_rss_gib"] = _peak_gib()
    np.save(out_prefix + ".labels.npy", labels)
    if scores is not None:
        np.save(out_prefix + ".scores.npy", np.asarray(scores, dtype=np.float64))
    return stats


def run_method(method: str, data_path: str, out_prefix: str, min_samples: int, mcs: int, cap: float) -> dict:
    """One method in its own process, stopped at `cap` seconds; its stats, labels and scores."""
    launched = time.time()
    cmd = [sys.executable, __file__, "--worker", method, data_path, out_prefix, str(min_samples), str(mcs),
           repr(launched)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return {"status": "stopped", "cap_s": round(cap, 1)}
    if out.returncode != 0:
        return {"status": "failed", "error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    stats["status"] = "ok"
    stats["labels"] = np.load(out_prefix + ".labels.npy")
    scores = Path(out_prefix + ".scores.npy")
    stats["scores"] = np.load(scores) if scores.exists() else None
    return stats


# -- the grid ------------------------------------------------------------------------------------------

def cell(args, tmp: str, data: str, n: int, d: int, data_path: str, truth: np.ndarray, ms: int, mcs: int) -> dict:
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score

    ours = run_method("phdbscan", data_path, f"{tmp}/phdbscan", ms, mcs, args.cap_s)
    results = {"phdbscan": ours}
    for peer in args.peers:
        cap = args.cap_s
        if args.stop_at_ratio and ours["status"] == "ok":
            cap = min(cap, max(args.min_cap_s, args.stop_at_ratio * ours["fresh"]))
        results[peer] = run_method(peer, data_path, f"{tmp}/{peer}", ms, mcs, cap)
    finished = [p for p in args.peers if results[p]["status"] == "ok"]
    reference = finished[0] if finished else None
    row = {"data": data, "n": n, "d": d, "min_samples": ms, "min_cluster_size": mcs, "reference": reference}
    for method, stats in results.items():
        entry = {k: v for k, v in stats.items() if k not in ("labels", "scores")}
        if stats["status"] == "ok":
            entry["ari_truth"] = adjusted_rand_score(truth, stats["labels"])
            if reference is not None:
                entry["ari_ref"] = adjusted_rand_score(results[reference]["labels"], stats["labels"])
            ref_scores = results.get("hdbscan", {}).get("scores")
            if stats.get("scores") is not None and ref_scores is not None and method != "hdbscan":
                entry["glosh_spearman"] = float(spearmanr(ref_scores, stats["scores"]).statistic)
        row[method] = entry
    peer_times = [results[p]["seconds"] for p in finished]
    stopped = [results[p]["cap_s"] for p in args.peers if results[p]["status"] == "stopped"]
    if ours["status"] == "ok":
        fastest = min(peer_times) if peer_times else None
        row["fastest_peer_s"] = fastest
        # a stopped peer ran at least its cap; the ratio against it is a lower bound
        bound = min(stopped) if stopped else None
        best = min(x for x in (fastest, bound) if x is not None) if (fastest or bound) else None
        row["ratio_fresh"] = best / ours["fresh"] if best else None
        row["ratio_warm"] = best / ours["seconds"] if best else None
        row["ratio_is_lower_bound"] = bool(stopped) and (fastest is None or bound < fastest)
        # CPU seconds (all threads) are less swayed by other jobs on a shared machine than wall time
        peer_cpu = [results[p]["cpu"] for p in finished if "cpu" in results[p]]
        row["cpu_ratio_fresh"] = min(peer_cpu) / ours["cpu_fresh"] if peer_cpu else None
    return row


def fmt_row(row: dict) -> str:
    ours = row["phdbscan"]
    head = f"| {row['data']} | {row['n']:,} | {row['d']} | {row['min_samples']} | {row['min_cluster_size']} |"
    if ours["status"] != "ok":
        return head + f" pHDBSCAN {ours['status']} |" + " |" * 13
    peers = []
    for p in PEERS:
        s = row.get(p)
        if s is None:
            peers.append("not run")
        elif s["status"] == "ok":
            peers.append(f"{s['seconds']:.1f}" + (f" (+{s['compile']:.0f} jit)" if "compile" in s else ""))
        elif s["status"] == "stopped":
            peers.append(f"> {s['cap_s']:.0f} (stopped)")
        else:
            peers.append("failed")
    ge = "≥ " if row.get("ratio_is_lower_bound") else ""
    ratio = lambda r: f"{ge}{r:.1f}×" if r else "–"  # noqa: E731
    knn = ours["knn"]
    ari = ours.get("ari_ref")
    glosh = ours.get("glosh_spearman")
    st = ours["stages"]
    stages = "/".join(f"{st.get(k, 0):.1f}" for k in ("knn", "core", "forest", "joins", "tree"))
    return (head + f" {ours['fresh']:.1f} | {ours['seconds']:.1f} | " + " | ".join(peers) +
            f" | {ratio(row.get('ratio_fresh'))} | {ratio(row.get('ratio_warm'))} | "
            f"{'–' if not row.get('cpu_ratio_fresh') else format(row['cpu_ratio_fresh'], '.1f') + '×'} | "
            f"{ours['peak_rss_fresh_gib']:.2f} | {'–' if ari is None else f'{ari:.3f}'} ({row['reference'] or '–'}) | "
            f"{'–' if glosh is None else f'{glosh:.3f}'} | {knn['recall']:.3f} (p{knn['probe'] or '-'}) | "
            f"{100 * knn['core_error_mean']:.2f}/{100 * knn['core_error_max']:.0f} | {stages} |")


HEADER = ("| data | n | d | min_samples | mcs | pHDBSCAN fresh s | warm s | hdbscan s | fast_hdbscan s | sklearn s | "
          "× fresh | × warm | × CPU s (fresh) | peak RSS GiB (ours) | ARI vs ref | GLOSH ρ | recall@(ms+1) (probe) | "
          "core err % mean/max | stages s: knn/core/forest/joins/tree |\n" + "|---" * 19 + "|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", nargs="+", type=int, default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--d", nargs="+", type=int, default=[8, 24, 64])
    parser.add_argument("--min-samples", nargs="+", type=int, default=[5, 10, 50])
    parser.add_argument("--mcs", nargs="+", type=int, default=[25, 200])
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=DATA)
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--cap-s", type=float, default=900.0, help="per-method time cap (the issue's 15 min)")
    parser.add_argument("--stop-at-ratio", type=float, default=None,
                        help="stop a peer once it has run this many times pHDBSCAN's fresh time")
    parser.add_argument("--min-cap-s", type=float, default=20.0, help="the least cap --stop-at-ratio gives a peer")
    parser.add_argument("--out", default=None, help="append one JSON line per cell here")
    parser.add_argument("--no-warm", action="store_true", help="skip pHDBSCAN's second (warm) fit: its "
                        "'warm' column is then the fresh process's fit alone")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.no_warm:
        os.environ["HDBSCAN_GRID_WARM"] = "0"
    if args.worker:
        method, data_path, out_prefix, ms, mcs, launched = args.worker
        print(json.dumps(worker(method, data_path, out_prefix, int(ms), int(mcs), float(launched))))
        return
    print(f"# hdbscan_grid | {machine()} | {stamp()} | load avg {os.getloadavg()[0]:.1f} | cap {args.cap_s:.0f}s"
          + (f" | peers stopped at {args.stop_at_ratio}x pHDBSCAN fresh (min {args.min_cap_s:.0f}s)"
             if args.stop_at_ratio else ""), flush=True)
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for data, n, d in itertools.product(args.data, args.n, args.d):
            X, truth = MAKERS[data](n, d)
            data_path = f"{tmp}/X.npy"
            np.save(data_path, X)
            del X
            for ms, mcs in itertools.product(args.min_samples, args.mcs):
                row = cell(args, tmp, data, n, d, data_path, truth, ms, mcs)
                row["when"] = stamp()
                row["load_avg_1m"] = os.getloadavg()[0]  # the machine is shared: other jobs' load inflates times
                print(fmt_row(row), flush=True)
                if args.out:
                    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(row, default=float) + "\n")


if __name__ == "__main__":
    main()
