"""The review app under load: p50/p95 latency of the cluster list, a cluster page and a members page.

The lake holds about a million transactions in the window of the latest run. Building that with
the real pipeline takes hours on a small machine, so this writes the published tables directly
in the jobs' formats (synthetic/published_clusters.py, through the real job runner: same manifests,
same catalog) -- unless --lake names a lake that already has a behavior-clusters run (for example
the one `bench/pipeline_scale.py --lake DIR` leaves), which is then served as it is.

`lakelens serve` runs as its own process (the real command) on 127.0.0.1; clients are threads in
this process with keep-alive connections and a bearer token. Each cell (page x concurrency) is a
bounded loop: `--requests` per client, capped at `--cell-seconds`, so the run stops by itself.
Note that clients and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _common import PeakRSS, machine, stamp  # noqa: F401 - PeakRSS kept for symmetry with the other benches

from lakelens.infra.catalog import open_catalog
from lakelens.infra.storage import Lake

LAKELENS = str(Path(sys.executable).parent / "lakelens")


def build_lake(root: Path, per_day: int, clusters: int) -> float:
    from lakelens.synthetic.published_clusters import write_published_clusters

    began = time.perf_counter()
    write_published_clusters(Lake(root), transactions_per_day=per_day, days=3, clusters=clusters, runs=2,
                             events_per_sequence=10, seed=1)
    return time.perf_counter() - began


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(conn: http.client.HTTPConnection, path: str, token: str) -> tuple[int, float]:
    began = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    reply = conn.getresponse()
    reply.read()
    return reply.status, time.perf_counter() - began


def cell(port: int, token: str, paths: list[str], clients: int, per_client: int, limit_s: float) -> dict:
    """`clients` threads, each sending up to `per_client` requests drawn from `paths`, until `limit_s`."""
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + limit_s
    start = threading.Barrier(clients)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait()
        try:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    break
                status, seconds = get(conn, rng.choice(paths), token)
                with lock:
                    (latencies if status == 200 else errors).append(seconds if status == 200 else status)
        finally:
            conn.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    return {"requests": len(latencies), "errors": len(errors), "p50_ms": pct(0.50), "p95_ms": pct(0.95),
            "max_ms": ordered[-1] * 1000 if ordered else float("nan"), "per_s": len(latencies) / wall,
            "mean_ms": statistics.fmean(ordered) * 1000 if ordered else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", help="serve this lake (built here first if it has no behavior-clusters run)")
    parser.add_argument("--per-day", type=int, default=333_334, help="transactions per day (3 days: ~1M)")
    parser.add_argument("--clusters", type=int, default=240, help="clusters per run (about a third flagged)")
    parser.add_argument("--concurrency", default="1,10,50", help="client counts, comma-separated")
    parser.add_argument("--requests", type=int, default=40, help="requests per client per cell (default: 40)")
    parser.add_argument("--min-requests", type=int, default=200, help="at least this many per cell, spread over clients")
    parser.add_argument("--cell-seconds", type=float, default=90.0, help="stop a cell after this long")
    args = parser.parse_args()

    root = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="lakelens-serve-")) / "lake"
    lake = Lake(root)
    print(f"# serve_load | {machine()} | {stamp()}")
    if "behavior-clusters" not in lake.list_dirs("runs"):
        print(f"building a synthetic published lake at {root} ...", flush=True)
        print(f"built in {build_lake(root, args.per_day, args.clusters):.0f} s", flush=True)
    con = open_catalog(lake)
    partition, run_id = con.execute("SELECT partition, run_id FROM flagged_clusters ORDER BY partition DESC "
                                    "LIMIT 1").fetchone()
    window = con.execute("SELECT count(*) FROM txn_clusters WHERE run_id = ?", [run_id]).fetchone()[0]
    flagged = con.execute("SELECT cluster_key, size FROM flagged_clusters WHERE partition = ?", [partition]).fetchall()
    transactions = con.execute("SELECT count(*) FROM transactions").fetchone()[0]
    con.close()
    print(f"lake {root}: latest run {partition} clusters {window:,} transactions of its window "
          f"({transactions:,} in the lake); {len(flagged)} flagged clusters")

    work = Path(tempfile.mkdtemp(prefix="lakelens-serve-users-"))
    auth = work / "users.json"
    subprocess.run([LAKELENS, "users", "add", "--auth", str(auth), "--name", "bench", "--role", "reviewer"],
                   input="bench-password-1\n", text=True, check=True, capture_output=True)
    token = subprocess.run([LAKELENS, "users", "token", "--auth", str(auth), "--name", "bench"], text=True,
                           check=True, capture_output=True).stdout.strip()
    port = free_port()
    log = open(work / "serve.log", "w")
    server = subprocess.Popen([LAKELENS, "serve", "--lake", str(root), "--auth", str(auth), "--port", str(port),
                               "--recheck-seconds", "5"], stdout=log, stderr=subprocess.STDOUT)
    try:
        began = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - began > 120:
                    raise SystemExit(f"lakelens serve did not start:\n{(work / 'serve.log').read_text()}")
                time.sleep(0.3)
        keys = [k for k, _ in flagged]
        pages = {
            "cluster list (/)": ["/"],
            "cluster page": [f"/clusters/{k}" for k in keys],
            "members page": [f"/clusters/{k}/members?page={p}" for k, size in flagged
                             for p in range(1, min(size // 25, 20) + 1)],
        }
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        first = {name: get(conn, paths[0], token)[1] for name, paths in pages.items()}
        for name, seconds in first.items():
            print(f"first request, {name}: {seconds * 1000:.0f} ms (catalog build and map on the first)")
        for path in pages["cluster page"]:  # warm: one visit per cluster page
            get(conn, path, token)
        # the app builds its in-memory members table in the background after each catalog build:
        # wait until member pages answer from it (or a minute has passed) before measuring
        waited = time.perf_counter()
        fast = 0
        while fast < 3 and time.perf_counter() - waited < 60:
            fast = fast + 1 if get(conn, pages["members page"][0], token)[1] < 0.05 else 0
            time.sleep(0.2)
        print(f"members table ready after {time.perf_counter() - waited:.1f} s more")
        conn.close()
        print("\n| page | clients | requests | p50 ms | p95 ms | max ms | req/s | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        results = []
        for name, paths in pages.items():
            for clients in [int(c) for c in args.concurrency.split(",")]:
                per_client = max(args.requests, -(-args.min_requests // clients))
                r = cell(port, token, paths, clients, per_client, args.cell_seconds)
                results.append({"page": name, "clients": clients, **r})
                print(f"| {name} | {clients} | {r['requests']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                      f"{r['max_ms']:.0f} | {r['per_s']:.1f} | {r['errors']} |", flush=True)
        target = [r for r in results if r["clients"] == 10 and r["page"] in ("cluster list (/)", "cluster page")]
        met = all(r["p95_ms"] < 300 for r in target)
        print(f"\ntarget p95 < 300 ms at 10 clients for the list and a cluster page: {'met' if met else 'MISSED'}")
        (work / "results.json").write_text(json.dumps(results, indent=2))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    main()
