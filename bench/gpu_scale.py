"""pHDBSCAN at 10M-100M rows on one GPU, beside cuML's HDBSCAN where it is installed (issue 14).

Data: embedding-like rows, as `hdbscan_grid.manifold` makes them (10 clusters on curved 4-d
manifolds in d dimensions, 4 % uniform noise), but made in parallel chunks and in float32
throughout: 100M x 64 is 26 GB, where `manifold`'s float64 temporaries would need ~130 GB.

Each method fits in its own process under a time cap and reports: the fit's wall time and stage
profile (kNN graph, core distances, forest, joins, tree), the kNN graph's recall and core-distance
error (measured on a sample against exact search), peak host RSS, peak GPU memory (NVML: the
device's used memory above what it used at the start), ARI against the planted truth, and ARI
between the methods. A process stopped at its cap prints the stages it finished (the fit logs
each stage as it ends), so a cap still says where the time went.

    python bench/gpu_scale.py --n 10000000 100000000 --device cuda --cap-s 300
    python bench/gpu_scale.py --n 300000 --device cpu --methods phdbscan       # the same flow on CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, stamp  # noqa: E402

CHUNK = 1 << 20


def embedding_like(n: int, d: int = 64, seed: int = 0, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 rows, truth labels with noise -1); the same rows for a seed whatever `threads` is."""
    rng = np.random.default_rng(seed)
    k, latent, n_noise = 10, 4, n * 4 // 100
    sizes = rng.multinomial(n - n_noise, np.full(k, 1 / k))
    w1 = (rng.standard_normal((latent, 32)) / np.sqrt(latent)).astype(np.float32)
    w2 = (rng.standard_normal((32, d)) * 3 / np.sqrt(32)).astype(np.float32)
    centres = (rng.standard_normal((k, latent)) * 3.0).astype(np.float32)
    spread = np.geomspace(0.25, 0.6, k).astype(np.float32)
    truth = np.concatenate([np.repeat(np.arange(k), sizes), np.full(n_noise, -1)]).astype(np.int32)
    # the noise box: the clustered rows' range, from a pilot the size of a chunk
    picked = rng.integers(0, k, 65_536)
    pilot = np.tanh((centres[picked] + spread[picked, None] * rng.standard_normal((picked.size, latent), np.float32))
                    @ w1) @ w2
    low, high = pilot.min(0) - 1.0, pilot.max(0) + 1.0
    X = np.empty((n, d), dtype=np.float32)
    seeds = np.random.SeedSequence(seed).spawn(math.ceil(n / CHUNK))

    def fill(chunk: int) -> None:
        lo, hi = chunk * CHUNK, min(n, (chunk + 1) * CHUNK)
        g = np.random.default_rng(seeds[chunk])
        labels = truth[lo:hi]
        clustered = labels >= 0
        z = centres[labels[clustered]] + spread[labels[clustered], None] * g.standard_normal(
            (int(clustered.sum()), latent), dtype=np.float32)
        X[lo:hi][clustered] = np.tanh(z @ w1) @ w2 + 0.03 * g.standard_normal((z.shape[0], d), dtype=np.float32)
        X[lo:hi][~clustered] = g.uniform(low, high, size=(int((~clustered).sum()), d)).astype(np.float32)

    with ThreadPoolExecutor(threads or os.cpu_count()) as pool:
        list(pool.map(fill, range(len(seeds))))
    return X, truth


class GpuMemoryPeak:
    """The GPU's used memory above its level at the start, sampled every 100 ms through NVML."""

    def __init__(self) -> None:
        self.peak_gib: float | None = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._used = lambda: pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
            self._base = self._used()
            self.peak_gib = 0.0
        except Exception:  # no NVML (a CPU run): nothing to sample
            self._used = None
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while self._used is not None and not self._stop.is_set():
            self.peak_gib = max(self.peak_gib, (self._used() - self._base) / 2**30)
            time.sleep(0.1)

    def __enter__(self) -> "GpuMemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def fit(method: str, X: np.ndarray, min_cluster_size: int, min_samples: int, device: str) -> tuple[np.ndarray, dict]:
    """One fit: labels and what it reports about itself."""
    if method == "phdbscan":
        from lakelens.operators.hdbscan import PHDBSCAN

        model = PHDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, device=device).fit(X)
        r = model.knn_report_
        return model.labels_, {
            "stages": {k: round(v, 2) for k, v in model.result_.timings.items()},
            "knn": None if r is None else {"method": r.method, "probe": r.probe, "lists": r.cells,
                                           "recall_k": r.recall_k, "recall": round(r.recall, 4),
                                           "core_error_mean": r.core_error_mean, "core_error_max": r.core_error_max},
            "components_joined": model.result_.joins.components}
    if method == "cuml":
        from cuml.cluster import HDBSCAN

        model = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples).fit(X)
        labels = model.labels_
        return np.asarray(labels.get() if hasattr(labels, "get") else labels), {}
    raise ValueError(f"unknown method {method!r}; use phdbscan or cuml")


def worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    began = time.perf_counter()
    X, truth = embedding_like(args.n, args.d, args.seed)
    made = time.perf_counter() - began
    with GpuMemoryPeak() as gpu:
        began = time.perf_counter()
        labels, report = fit(args.worker, X, args.min_cluster_size, args.min_samples, args.device)
        seconds = time.perf_counter() - began
    from sklearn.metrics import adjusted_rand_score

    np.save(args.labels, labels)
    print(json.dumps({"method": args.worker, "n": args.n, "d": args.d, "data_s": round(made, 1),
                      "fit_s": round(seconds, 1), "gpu_peak_gib": None if gpu.peak_gib is None else round(gpu.peak_gib, 2),
                      "host_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                      "clusters": int(labels.max() + 1), "noise_share": round(float((labels < 0).mean()), 4),
                      "ari_truth": round(float(adjusted_rand_score(truth, labels)), 4), **report}))


def run(method: str, n: int, args: argparse.Namespace, cap: float, labels: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--d", str(args.d), "--seed", str(args.seed),
           "--device", args.device, "--min-cluster-size", str(args.min_cluster_size),
           "--min-samples", str(args.min_samples), "--labels", labels]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired as stopped:
        err = stopped.stderr.decode() if isinstance(stopped.stderr, bytes) else (stopped.stderr or "")
        return {"method": method, "n": n, "status": f"stopped at the {cap:.0f} s cap",
                "stages_done": [line.split(" ", 3)[-1] for line in err.splitlines() if "lakelens" in line][-10:]}
    if out.returncode != 0:
        return {"method": method, "n": n, "status": "failed", "error": out.stderr.strip()[-600:]}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "status": "done"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu", "auto"))
    parser.add_argument("--methods", nargs="+", default=["phdbscan", "cuml"])
    parser.add_argument("--min-cluster-size", type=int, default=1000)
    parser.add_argument("--min-samples", type=int, default=10)
    parser.add_argument("--cap-s", type=float, default=300.0, help="per fit, data making included")
    parser.add_argument("--budget-s", type=float, default=math.inf, help="the whole run; later fits get what is left")
    parser.add_argument("--out", default=None, help="also append each row as a JSON line here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--labels", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.n = args.n[0]
        worker(args)
        return
    started = time.time()
    print(f"# gpu_scale | {stamp()} | {machine()} | device {args.device}", flush=True)
    for n in args.n:
        rows = {}
        for method in args.methods:
            if method == "cuml" and subprocess.run([sys.executable, "-c", "import cuml"],
                                                   capture_output=True).returncode != 0:
                rows[method] = {"method": method, "n": n, "status": "not installed"}
            else:
                left = args.budget_s - (time.time() - started)
                rows[method] = (run(method, n, args, min(args.cap_s, left), f"/tmp/gpu_scale_{method}_{n}.npy")
                                if left >= 20 else {"method": method, "n": n, "status": "not run: the budget is spent"})
            print(json.dumps(rows[method]), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rows[method]) + "\n")
        done = [m for m in rows if rows[m].get("status") == "done"]
        if len(done) == 2:
            from sklearn.metrics import adjusted_rand_score

            a, b = (np.load(f"/tmp/gpu_scale_{m}_{n}.npy") for m in done)
            print(f"n={n}: ARI {done[0]} vs {done[1]} = {adjusted_rand_score(a, b):.4f}", flush=True)
    print(f"# total {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
