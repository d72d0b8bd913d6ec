"""Sharded pHDBSCAN on a local multi-node Ray cluster: per-stage times, driver and worker peak RSS,
per-shard rates, and the memory plan's estimate against the measured peaks.

    flock /tmp/lakelens-bench.lock python bench/sharded_scale.py --n 1000000 3000000   # --ten-million adds 10M

Starts its own cluster (`ray start` head without CPUs plus --workers nodes of one CPU each, free
ports, its own temp dir; each node stopped by SIGTERM, never `ray stop`), writes n x dim float32
rows (a Gaussian mixture, one block at a time) as Parquet feature blocks, one per shard, then runs
the fit in a separate driver process whose peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lakelens.infra.ray_runtime import free_port, node_port_flags

ROOT = Path(__file__).resolve().parents[1]




def start_cluster(workers: int, memory: int, object_store: int) -> tuple[dict, list]:
    ray_bin = str(Path(sys.executable).parent / "ray")
    temp_dir = tempfile.mkdtemp(prefix="lkbs", dir="/tmp")
    # a loaded machine starts a node's agents slowly: give the raylet longer than its default to wait
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_agent_register_timeout_ms": "300000"}
    env.pop("RAY_ADDRESS", None)
    nodes = []
    # a loaded machine may make `ray start` give up (it waits 30 s for its raylet): try again
    for _ in range(4):
        head = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=0",
             f"--ray-client-server-port={free_port()}", "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={temp_dir}", *node_port_flags()], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env)
        nodes.append(head)
        address = None
        for line in head.stdout:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            if "ray start --address=" in line:
                address = line.split("--address=")[1].strip().strip("'\"")
                break
        if address:
            break
    if not address:
        stop_cluster(nodes)
        raise RuntimeError("the head node did not start")
    driver_env = {**env, "RAY_ADDRESS": address}
    probe = "import ray; ray.init(logging_level='ERROR'); print(sum(1 for n in ray.nodes() if n['Alive']))"
    for i in range(workers):
        # one at a time: two raylets starting at once on one machine race for the same socket names;
        # on a loaded machine a raylet may give up waiting for its agent: start it again
        for attempt in range(4):
            worker = subprocess.Popen(
                [ray_bin, "start", f"--address={address}", "--block", "--num-cpus=1", f"--memory={memory}",
                 f"--object-store-memory={object_store}", "--disable-usage-stats", *node_port_flags()],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
            nodes.append(worker)
            deadline = time.monotonic() + 240
            joined = False
            while time.monotonic() < deadline and worker.poll() is None:
                out = subprocess.run([sys.executable, "-c", probe], env=driver_env, capture_output=True, text=True)
                if out.stdout.strip().splitlines()[-1:] == [str(i + 2)]:
                    joined = True
                    break
                time.sleep(1)
            if joined:
                break
        else:
            stop_cluster(nodes)
            raise RuntimeError(f"worker {i + 1} did not join the cluster")
    return driver_env, nodes


def stop_cluster(nodes: list) -> None:
    for node in reversed(nodes):
        node.terminate()
        try:
            node.wait(timeout=120)
        except subprocess.TimeoutExpired:
            node.kill()


def write_blocks(lake_root: str, n: int, dim: int, shards: int, seed: int = 0) -> None:
    """A Gaussian mixture of 64 components (spreads 0.5-2), written one block at a time."""
    from lakelens.infra.feature_blocks import write_feature_block
    from lakelens.infra.storage import Lake

    lake = Lake(lake_root)
    lake.delete_dir("features")
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-20, 20, (64, dim))
    spread = rng.uniform(0.5, 2.0, 64)
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    for s, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        block_rng = np.random.default_rng(seed + 1 + s)
        comp = block_rng.integers(0, 64, hi - lo)
        rows = centers[comp] + block_rng.normal(size=(hi - lo, dim)) * spread[comp, None]
        write_feature_block(lake, "features", s, rows.astype(np.float32))


def driver(lake_root: str, k: int, min_cluster_size: int) -> None:
    """The fit, in its own process: prints one JSON line of measurements."""
    import psutil
    import ray

    from lakelens.infra.feature_blocks import feature_block_readers
    from lakelens.infra.storage import Lake
    from lakelens.operators.hdbscan import HDBSCANParams
    from lakelens.operators.hdbscan.sharded import cluster_node_memory, fit_sharded_blocks
    from lakelens.operators.memory_plan import plan_fit

    ray.init(logging_level="ERROR")
    base = psutil.Process().memory_info().rss
    readers = feature_block_readers(Lake(lake_root), "features")
    n, dim = sum(r.rows for r in readers), readers[0].dim
    plan = plan_fit(n, dim, k, driver_cap_bytes=64 << 30, node_memory_bytes=cluster_node_memory(),
                    shards=len(readers), driver_base=base)
    params = HDBSCANParams(min_cluster_size=min_cluster_size, knn_k=k, knn_method="ivf")
    result, report = fit_sharded_blocks(readers, params, driver_cap_bytes=None)
    print(json.dumps({
        "n": n, "dim": dim, "k": report.k, "shards": report.shards, "method": report.method,
        "seconds": {s: round(v, 2) for s, v in report.seconds.items()},
        "driver_base_mb": base >> 20, "driver_peak_mb": report.driver_peak_rss_bytes >> 20,
        "plan_driver_mb": plan.driver_peak >> 20, "plan_shard_mb": plan.shard_peak >> 20,
        "forest_edges": report.forest_edges, "largest_forest": report.largest_forest,
        "components": report.joins.components, "join_rounds": report.joins.rounds,
        "clusters": int(result.labels.max()) + 1, "noise": float((result.labels < 0).mean()),
        "shards_detail": [{"node": s.node, "rows": s.rows, "seconds": s.seconds, "counts": s.counts,
                           "peak_rss_mb": s.peak_rss_bytes >> 20} for s in report.shard_stats],
    }), flush=True)


def summary(run: dict) -> str:
    n, s = run["n"], run["seconds"]
    lines = [f"n={n:,} x {run['dim']}, k={run['k']}, {run['shards']} shards ({run['method']}): "
             f"{run['clusters']} clusters, noise {run['noise']:.3f}, {run['components']} kNN components "
             f"({run['join_rounds']} join rounds), forests {run['forest_edges']:,} edges (largest {run['largest_forest']:,})",
             "stages (s): " + ", ".join(f"{k} {v}" for k, v in s.items()),
             f"driver peak RSS {run['driver_peak_mb']} MB (base {run['driver_base_mb']} MB; plan {run['plan_driver_mb']} MB)"]
    for d in run["shards_detail"]:
        sec = d["seconds"]
        lines.append(
            f"  shard on node {d['node']}: {d['rows']:,} rows, peak RSS {d['peak_rss_mb']} MB (plan {run['plan_shard_mb']} MB); "
            f"index {sec.get('index', 0)} s ({d['rows'] / max(sec.get('index', 1e-9), 1e-9):,.0f} pts/s), "
            f"search {sec.get('search', 0)} s ({n / max(sec.get('search', 1e-9), 1e-9):,.0f} queries/s against its "
            f"{d['rows']:,} rows), forest {sec.get('forest', 0)} s ({d['rows'] / max(sec.get('forest', 1e-9), 1e-9):,.0f} pts/s), "
            f"joins {sec.get('joins', 0)} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--ten-million", action="store_true", help="add n = 10M")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-cluster-size", type=int, default=100)
    parser.add_argument("--worker-memory-gb", type=float, default=8.0)
    parser.add_argument("--lake", default="/tmp/lakelens-sharded-bench")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        return driver(args.lake, args.k, args.min_cluster_size)
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import machine, stamp

    sizes = args.n + ([10_000_000] if args.ten_million else [])
    print(f"# {machine()} | {stamp()}", flush=True)
    env, nodes = start_cluster(args.workers, int(args.worker_memory_gb * (1 << 30)), 1 << 30)
    try:
        for n in sizes:
            started = time.perf_counter()
            write_blocks(args.lake, n, args.dim, args.shards)
            written = time.perf_counter() - started
            out = subprocess.run([sys.executable, __file__, "--driver", "--lake", args.lake, "--k", str(args.k),
                                  "--min-cluster-size", str(args.min_cluster_size)], env=env, capture_output=True,
                                 text=True, cwd=ROOT)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode or not lines:
                print(f"n={n:,}: the driver failed ({out.returncode}):\n{out.stderr[-3000:]}", flush=True)
                continue
            run = json.loads(lines[-1])
            print(f"blocks written in {written:.1f} s", flush=True)
            print(summary(run), flush=True)
            print("json " + json.dumps(run), flush=True)
    finally:
        stop_cluster(nodes)


if __name__ == "__main__":
    main()
