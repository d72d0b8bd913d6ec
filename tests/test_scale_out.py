"""The sharded pHDBSCAN fed from the lake: each shard actor reads its own Parquet block, and the
labels equal the single-node fit's exactly on the same (exact) kNN graph, joins included; on a
multi-node `ray start` cluster a driver under a memory cap publishes them, where the single-node
path in the same capped driver fails with the cap's error.

Run as a module (`python -m tests.test_scale_out --lake ...`) this file is that capped driver."""

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
import pytest

from lakelens.infra.feature_blocks import feature_block_readers, write_feature_block, write_feature_blocks
from lakelens.infra.ray_runtime import free_port, node_port_flags
from lakelens.infra.storage import Lake
from lakelens.operators.hdbscan import HDBSCANParams, fit_hdbscan, prepare_data
from lakelens.operators.hdbscan.knn import knn_graph

ROOT = Path(__file__).resolve().parents[1]


def _blobs_with_noise(n=3000, dim=8, seed=9):
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=n, centers=6, n_features=dim, cluster_std=[0.4, 0.8, 1.2, 0.6, 1.6, 1.0],
                      random_state=seed)
    noise = np.random.default_rng(seed).uniform(X.min(0) - 2, X.max(0) + 2, size=(n // 15, dim))
    return prepare_data(np.vstack([X, noise]))


def _islands(seed=0):
    """Blobs far apart (a kNN graph with k = 8 falls apart into them), large and tiny, shuffled so
    every component spreads over every shard."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(0, 0.4, (700, 4)), rng.normal(0, 0.3, (300, 4)) + [40, 0, 0, 0],
             rng.normal(0, 0.5, (250, 4)) + [0, 25, 0, 0], rng.normal(0, 0.3, (200, 4)) + [20, 20, 20, 0]]
    parts += [rng.normal(0, 0.1, (12, 4)) + rng.uniform(-60, 60, 4) for _ in range(8)]
    X = np.vstack(parts)
    return prepare_data(X[rng.permutation(len(X))])


def _assert_same_fit(single, sharded):
    assert np.array_equal(single.labels, sharded.labels)
    assert np.array_equal(single.condensed_tree, sharded.condensed_tree)
    np.testing.assert_array_equal(single.core_distances, sharded.core_distances)
    np.testing.assert_allclose(single.outlier_scores, sharded.outlier_scores)
    np.testing.assert_allclose(single.probabilities, sharded.probabilities)


def test_shards_reading_their_own_blocks_give_exactly_the_single_node_labels(ray_local, tmp_path):
    from lakelens.operators.hdbscan.sharded import fit_sharded_blocks

    X = _blobs_with_noise()
    params = HDBSCANParams(min_cluster_size=25, min_samples=10, knn_k=20, knn_method="exact")
    single = fit_hdbscan(X, params, graph=knn_graph(X, 20, method="exact"))
    lake = Lake(tmp_path / "lake")
    # uneven blocks: offsets come from the blocks' sizes, not from an even split
    readers = [write_feature_block(lake, "staging/features", i, X[lo:hi])
               for i, (lo, hi) in enumerate([(0, 500), (500, 1900), (1900, len(X))])]
    sharded, report = fit_sharded_blocks(readers, params)
    assert single.labels.max() >= 3, "the case must have clusters to compare"
    _assert_same_fit(single, sharded)
    assert report.points == len(X) and report.shards == 3 and report.method == "exact"
    assert [s.rows for s in report.shard_stats] == [500, 1400, len(X) - 1900]
    # what reached the driver: forests, one at a time, each far smaller than the n x k graph
    assert len(X) - 1 <= report.forest_edges < len(X) * 20 / 4
    assert report.largest_forest < len(X)


def test_a_disconnected_knn_graph_is_joined_by_per_shard_searches_exactly_as_on_one_node(ray_local, tmp_path):
    from lakelens.operators.hdbscan.sharded import fit_sharded_blocks

    X = _islands()
    params = HDBSCANParams(min_cluster_size=10, min_samples=5, knn_k=8, knn_method="exact")
    single = fit_hdbscan(X, params, graph=knn_graph(X, 8, method="exact"))
    assert single.joins.components == 12 and single.joins.exact
    readers = write_feature_blocks(Lake(tmp_path / "lake"), "staging/features", X, blocks=3)
    sharded, report = fit_sharded_blocks(readers, params)
    assert report.joins.components == 12 and report.joins.rounds >= 1
    _assert_same_fit(single, sharded)
    # the shards searched for the joins (the driver never held a row)
    assert sum(s.counts.get("join queries", 0) for s in report.shard_stats) > 0


# -- the multi-node cluster and the capped driver ----------------------------------------------------

N, DIM, K = 40_000, 16, 128  # a wide kNN graph: the single-node path holds n x k x 16 B of it
HEADROOM_MB = 150  # the driver's cap: its footprint after imports and warm-up, plus this
PARAMS = dict(min_cluster_size=50, min_samples=10, knn_k=K, knn_method="exact")





@pytest.fixture(scope="module")
def capped_cluster():
    """`ray start`: a head with no CPUs (the driver's node) and two workers, each with its own
    --memory (Ray's schedulable memory) and --object-store-memory. Stopped by SIGTERM per node,
    never `ray stop` (other Ray instances may run on this machine)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    temp_dir = tempfile.mkdtemp(prefix="lkso", dir="/tmp")
    # a loaded machine starts a node's agents slowly: give the raylet longer than its default to wait
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_agent_register_timeout_ms": "300000"}
    env.pop("RAY_ADDRESS", None)
    nodes = []
    try:
        # a loaded machine may make `ray start` give up (it waits 30 s for its raylet): try again
        for attempt in range(3):
            head = subprocess.Popen(
                [ray_bin, "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=0",
                 "--memory=1000000000", "--object-store-memory=200000000", "--include-dashboard=false",
                 "--disable-usage-stats", f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}",
                 *node_port_flags()],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            nodes.append(head)
            address, said = None, []
            for line in head.stdout:
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                said.append(line)
                if "ray start --address=" in line:
                    address = line.split("--address=")[1].strip().strip("'\"")
                    break
            if address:
                break
        assert address, "the head node did not start:\n" + "".join(said[-30:])
        driver_env = {**env, "RAY_ADDRESS": address}
        for i, memory in enumerate((1_500_000_000, 1_400_000_000)):
            # one at a time: two raylets starting at once on one machine race for the same socket names;
            # on a loaded machine a raylet may give up waiting for its agent: start it again
            for attempt in range(3):
                worker = subprocess.Popen(
                    [ray_bin, "start", f"--address={address}", "--block", "--num-cpus=1", f"--memory={memory}",
                     "--object-store-memory=150000000", "--disable-usage-stats", *node_port_flags()],
                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
                nodes.append(worker)
                if _wait_for_nodes(driver_env, 2 + i, worker=worker, fail=attempt == 2):
                    break
        yield driver_env
    finally:
        for node in reversed(nodes):
            node.terminate()
            node.wait(timeout=120)


def _wait_for_nodes(env, count, timeout_s=180.0, worker=None, fail=True) -> bool:
    """Whether `count` nodes are alive within the timeout; False as soon as `worker` exits (unless `fail`)."""
    probe = "import ray; ray.init(logging_level='ERROR'); print(sum(1 for n in ray.nodes() if n['Alive']))"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return True
        if worker is not None and worker.poll() is not None and not fail:
            return False
        time.sleep(1.0)
    if fail:
        pytest.fail(f"the Ray cluster did not reach {count} nodes in {timeout_s:.0f} s")
    return False


def _run_driver(env, lake: Path, mode: str, out: Path) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, "-m", "tests.test_scale_out", "--lake", str(lake), "--mode", mode,
                           "--out", str(out), "--headroom-mb", str(HEADROOM_MB)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, (json.loads(lines[-1]) if lines else {}), proc.stderr[-3000:]


@pytest.mark.slow
def test_a_capped_driver_on_a_multi_node_cluster_publishes_the_single_node_labels_where_one_node_cannot(
        capped_cluster, tmp_path):
    rng = np.random.default_rng(5)
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=N, centers=12, n_features=DIM, cluster_std=3.0, random_state=5)
    X = prepare_data(X[rng.permutation(N)])
    lake = tmp_path / "lake"
    write_feature_blocks(Lake(lake), "staging/features", X, blocks=2)

    # the single-node path in the same capped driver: the cap stops it, with the setting to change
    code, single_run, err = _run_driver(capped_cluster, lake, "single", tmp_path / "single.npy")
    assert code == 3, f"the single-node path was expected to pass its cap: {single_run} {err}"
    assert "clusters.driver_memory_gb" in single_run["error"] and single_run["cap_mb"] > 0

    code, run, err = _run_driver(capped_cluster, lake, "sharded", tmp_path / "labels.npy")
    assert code == 0, f"the sharded driver failed: {run} {err}"
    # the watchdog samples RSS every 20 ms and would have failed the run above its cap; the kernel's peak
    # (ru_maxrss) can still catch a transient between two samples, so allow 1 %
    # both drivers get the same headroom over their own footprint (which differs by a few MB per process)
    headroom = lambda r: r["cap_mb"] - r["base_mb"]  # noqa: E731
    assert abs(headroom(run) - headroom(single_run)) <= 1 and run["peak_mb"] <= 1.01 * run["cap_mb"]
    # the shards ran on both worker nodes (each node's --memory holds one shard's plan), not the head
    assert len({s["node"] for s in run["shards"]}) == 2
    assert all(s["peak_rss_mb"] > 0 for s in run["shards"])

    single = fit_hdbscan(X, HDBSCANParams(**PARAMS), graph=knn_graph(X, K, method="exact"))  # outside the cap
    labels = np.load(tmp_path / "labels.npy")
    assert single.labels.max() >= 5
    assert np.array_equal(labels, single.labels)


def _driver(argv: list[str]) -> int:
    """The capped driver: attach to RAY_ADDRESS, warm up, cap RSS at footprint + headroom, fit."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lake", required=True)
    parser.add_argument("--mode", choices=("single", "sharded"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--headroom-mb", type=int, required=True)
    args = parser.parse_args(argv)
    import psutil
    import ray

    from lakelens.operators.hdbscan.sharded import cluster_node_memory, fit_sharded_blocks
    from lakelens.operators.memory_plan import DriverMemoryExceeded, MemoryCap, plan_fit

    ray.init(logging_level="ERROR")
    warm = np.random.default_rng(0).normal(size=(600, DIM)).astype(np.float32)
    fit_hdbscan(warm, HDBSCANParams(**{**PARAMS, "knn_k": 16}))  # numba's cached kernels, loaded once
    base = psutil.Process().memory_info().rss
    cap = base + args.headroom_mb * (1 << 20)
    readers = feature_block_readers(Lake(args.lake), "staging/features")
    n = sum(r.rows for r in readers)
    report = {"mode": args.mode, "base_mb": base >> 20, "cap_mb": cap >> 20}
    try:
        if args.mode == "single":
            with MemoryCap(cap, what="the single-node driver") as guard:
                data = np.vstack([r() for r in readers])
                result = fit_hdbscan(data, HDBSCANParams(**PARAMS))
            report["peak_mb"] = guard.peak >> 20
        else:
            plan = plan_fit(n, DIM, K, driver_cap_bytes=cap, node_memory_bytes=cluster_node_memory(),
                            shards=len(readers), ivf=False, driver_base=base)
            result, fit = fit_sharded_blocks(readers, HDBSCANParams(**PARAMS), shard_memory_bytes=plan.shard_peak,
                                             driver_cap_bytes=cap)
            report.update(peak_mb=fit.driver_peak_rss_bytes >> 20, seconds=fit.seconds,
                          plan_driver_mb=plan.driver_peak >> 20, plan_shard_mb=plan.shard_peak >> 20,
                          shards=[{"node": s.node, "rows": s.rows, "seconds": s.seconds,
                                   "peak_rss_mb": s.peak_rss_bytes >> 20} for s in fit.shard_stats])
    except DriverMemoryExceeded as exc:
        report["error"] = str(exc)
        print(json.dumps(report), flush=True)
        return 3
    np.save(args.out, result.labels)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1:]))
