"""Memory as a setting: what each stage of a pHDBSCAN fit holds, on the driver and on each shard,
from the window's size, checked against the driver's cap and the nodes' memory before anything runs.

    plan = plan_fit(n=10_000_000, dim=64, k=16, driver_cap_bytes=8 * GiB, node_memory_bytes=[16 * GiB] * 4)
    plan.shards            # the least shards whose stages fit (or the ones asked for)
    plan.driver_peak       # bytes, the largest driver stage
    plan.table()           # every stage, for logs and docs

`plan_fit` raises MemoryPlanError with what to change (more shards, a bigger driver, a shorter
window) when no plan fits. `MemoryCap` enforces the driver's cap while a fit runs.

The per-point constants are the arrays each stage allocates (see the comments), and
PROCESS_BASE_BYTES the interpreter with numpy, FAISS, numba and Ray loaded; bench/RESULTS.md
("Sharded pHDBSCAN on a local multi-node cluster") compares the estimates with measured peak RSS.
"""

from __future__ import annotations

import _thread
import math
import os
import sys
import threading
import time
from dataclasses import dataclass

GiB = 1 << 30
# python + numpy + faiss + numba + ray client, measured on the `vm` bench machine
PROCESS_BASE_BYTES = 600 * (1 << 20)
# a shard's kNN lists name foreign points, and its forest spans its rows plus those: at most
# rows x (1 + k (S - 1) / S) vertices and n; measured 2.7 x rows at 3 shards, k = 20 (blobs of 3,200
# points split by row order), so 3 is the default spread
FOREST_SPREAD = 3.0


def forest_vertices(n: int, k: int, shards: int) -> int:
    """Vertices a shard's forest may span: its rows and their distinct foreign neighbours."""
    rows = math.ceil(n / shards)
    bound = rows * (1 + k * (shards - 1) / shards)
    return int(min(n, rows * FOREST_SPREAD, bound))
# single linkage, condensed tree, ClusterTree, selection, labels/probabilities/GLOSH: float64 and
# int64 arrays over n points and n - 1 merges (about 20 such arrays live at the tree stage's peak)
TREE_BYTES_PER_POINT = 160


class MemoryPlanError(ValueError):
    """No plan fits the driver's cap or the nodes' memory; the message says what to change."""


@dataclass(frozen=True)
class StageMemory:
    stage: str
    where: str  # "driver" or "shard"
    bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    n: int
    dim: int
    k: int
    shards: int
    stages: tuple[StageMemory, ...]
    driver_cap_bytes: int
    node_memory_bytes: tuple[int, ...]

    @property
    def driver_peak(self) -> int:
        return max(s.bytes for s in self.stages if s.where == "driver")

    @property
    def shard_peak(self) -> int:
        return max((s.bytes for s in self.stages if s.where == "shard"), default=0)

    def table(self) -> str:
        lines = [f"{s.where:6s} {s.stage:24s} {s.bytes / GiB:8.2f} GiB" for s in self.stages]
        return "\n".join(lines)


def shard_stages(n: int, dim: int, k: int, shards: int, feature_bytes: int = 4, ivf: bool = True,
                 batch: int = 65_536, process_base: int = PROCESS_BASE_BYTES) -> list[StageMemory]:
    """Each shard's stages, cumulative (what is alive at the stage's peak), for n / shards rows."""
    rows = math.ceil(n / shards)
    features = rows * dim * feature_bytes
    index = rows * dim * 4 + (rows * 8 if ivf else 0)  # FAISS holds its own float32 copy (+ ids for IVF)
    knn_lists = rows * k * 16  # float64 distances + int64 ids
    # a merge holds every shard's top-k for one batch twice (concatenated and ordered)
    merging = 2 * batch * k * 16 * shards
    # compacted ids (unique over rows * k), local ids, and Borůvka's six arrays over rows * spread
    vertices = forest_vertices(n, k, shards)
    forest = rows * k * 8 * 3 + vertices * 8 * 6 + vertices * 24
    base = process_base + features + index
    return [
        StageMemory("read + index", "shard", base),
        StageMemory("knn (fan-out, merge)", "shard", base + knn_lists + merging),
        StageMemory("core + forest", "shard", base + knn_lists + forest),
        StageMemory("joins", "shard", base + knn_lists + rows * 8 * 4),
    ]


def driver_stages(n: int, shards: int, process_base: int = PROCESS_BASE_BYTES) -> list[StageMemory]:
    """The sharded fit's driver: core distances, the shards' forests and Kruskal, joins, the tree."""
    core = n * 8
    # the running forest (n - 1 edges) plus one shard's forest, folded in by Kruskal: (a, b, w: 24 B
    # an edge) concatenated, sorted copies, and the order/key/min/max temporaries
    edges = n + forest_vertices(n, 16, shards)
    kruskal = edges * 24 * 2 + edges * 8 * 4 + n * 8
    forest = n * 24
    joins = n * 8 * 3  # labels, union-find parents and roots
    tree = n * TREE_BYTES_PER_POINT
    return [
        StageMemory("core distances", "driver", process_base + core),
        StageMemory("forest union + Kruskal", "driver", process_base + core + kruskal),
        StageMemory("component joins", "driver", process_base + core + forest + joins + n * 8 * 3),
        StageMemory("single linkage + tree", "driver", process_base + core + forest + tree),
    ]


def single_node_stages(n: int, dim: int, k: int, feature_bytes: int = 4,
                       process_base: int = PROCESS_BASE_BYTES) -> list[StageMemory]:
    """The single-node fit in one process: the rows, the index and the whole kNN graph, then the tree."""
    features = n * dim * feature_bytes
    index = n * dim * 4 + n * 8
    graph = n * k * 16
    forest = n * 8 * 6 + n * 24
    base = process_base + features
    return [
        StageMemory("features", "driver", base),
        StageMemory("knn graph", "driver", base + index + graph),
        StageMemory("core + forest", "driver", base + graph + forest),
        StageMemory("single linkage + tree", "driver", base + n * 8 + n * 24 + n * TREE_BYTES_PER_POINT),
    ]


def single_node_peak(n: int, dim: int, k: int, feature_bytes: int = 4, process_base: int = PROCESS_BASE_BYTES) -> int:
    return max(s.bytes for s in single_node_stages(n, dim, k, feature_bytes, process_base))


def plan_fit(n: int, dim: int, k: int, driver_cap_bytes: int, node_memory_bytes: list[int] | tuple[int, ...],
             shards: int | None = None, feature_bytes: int = 4, ivf: bool = True,
             max_shards_per_node: int | None = None, process_base: int = PROCESS_BASE_BYTES,
             driver_base: int | None = None) -> MemoryPlan:
    """The memory plan of a sharded fit, or MemoryPlanError saying what to change.

    `node_memory_bytes`: the memory of each node that can hold shards (Ray's `memory` resource).
    Without `shards`, the least count whose per-shard peak fits the nodes, placing shards on nodes
    by their memory (a node holds floor(memory / shard peak) shards). `process_base` is a shard
    process's footprint before any data, `driver_base` the driver's (default: the same), e.g. as
    measured by the caller at start."""
    if n < 2 or dim < 1 or k < 2:
        raise ValueError(f"a plan needs n >= 2, dim >= 1, k >= 2; got n={n}, dim={dim}, k={k}")
    nodes = sorted((int(m) for m in node_memory_bytes if m > 0), reverse=True)
    driver_base = process_base if driver_base is None else driver_base
    driver = driver_stages(n, shards or 1, driver_base)
    driver_peak = max(s.bytes for s in driver)
    if driver_peak > driver_cap_bytes:
        # the driver's stages grow with n only (not with shards): fewer points or a bigger driver
        per_point = (driver_peak - driver_base) / n
        fits = max(0, int((driver_cap_bytes - driver_base) / per_point))
        raise MemoryPlanError(
            f"the driver needs {driver_peak / GiB:.2f} GiB for {n:,} points (its largest stage, "
            f"{max(driver, key=lambda s: s.bytes).stage}, holds ~{per_point:.0f} B per point), over its cap of "
            f"{driver_cap_bytes / GiB:.2f} GiB: raise clusters.driver_memory_gb to at least "
            f"{math.ceil(driver_peak / GiB * 10) / 10:.1f}, or shorten the window to at most {fits:,} points. "
            "More shards do not help: the driver holds O(n) edges whatever the shard count.")
    if not nodes:
        raise MemoryPlanError("the cluster reports no node memory to place shards on (start nodes with --memory, "
                              "or give node_memory_bytes)")

    def capacity(peak: int) -> int:
        per_node = [m // peak for m in nodes]
        if max_shards_per_node:
            per_node = [min(c, max_shards_per_node) for c in per_node]
        return int(sum(per_node))

    candidates = [shards] if shards else range(1, 1 << 16)
    for count in candidates:
        stages = shard_stages(n, dim, k, count, feature_bytes, ivf, process_base=process_base)
        peak = max(s.bytes for s in stages)
        if peak <= nodes[0] and capacity(peak) >= count:
            return MemoryPlan(n, dim, k, count, tuple(driver + stages), driver_cap_bytes, tuple(nodes))
        if shards is None and math.ceil(n / count) <= 1:
            break
    count = shards or 0
    need = shard_stages(n, dim, k, max(count, 1), feature_bytes, ivf, process_base=process_base)
    peak = max(s.bytes for s in need)
    if shards:
        raise MemoryPlanError(
            f"{shards} shards of {math.ceil(n / shards):,} points need {peak / GiB:.2f} GiB each, but the nodes "
            f"({', '.join(f'{m / GiB:.1f}' for m in nodes)} GiB) hold only {capacity(peak)} such shards: "
            f"use more shards (clusters.shards), bigger or more nodes, or a shorter window.")
    raise MemoryPlanError(
        f"no shard count fits {n:,} points x {dim} dims on nodes of {', '.join(f'{m / GiB:.1f}' for m in nodes)} GiB: "
        "add nodes or memory, or shorten the window.")


class DriverMemoryExceeded(MemoryError):
    """The driver's resident memory passed its configured cap (clusters.driver_memory_gb)."""


class MemoryCap:
    """Enforces a cap on this process's resident memory while a block runs, and measures its peak.

    A watchdog thread samples RSS every `interval_s`. Past the cap it interrupts the main thread
    (KeyboardInterrupt at the next Python bytecode), which `__exit__` turns into
    DriverMemoryExceeded naming the cap and the RSS seen. A main thread stuck in one native call
    that keeps allocating cannot be interrupted: past `hard_factor` x the cap, or `grace_s` after
    the breach, the process writes the same message to stderr and exits with status 70.
    `cap_bytes=None` only measures.
    """

    EXIT_STATUS = 70

    def __init__(self, cap_bytes: int | None, what: str = "the driver", interval_s: float = 0.02,
                 hard_factor: float = 1.5, grace_s: float = 20.0, setting: str = "clusters.driver_memory_gb") -> None:
        self.cap, self.what, self.interval = cap_bytes, what, interval_s
        self.hard_factor, self.grace, self.setting = hard_factor, grace_s, setting
        self.peak = 0
        self.breach: int | None = None
        self._stop = threading.Event()

    def message(self, rss: int) -> str:
        return (f"{self.what} reached {rss / GiB:.2f} GiB resident, over its cap of {self.cap / GiB:.2f} GiB "
                f"({self.setting}): use the sharded path (more shards keep the rows and the kNN graph off the "
                f"driver), raise {self.setting}, or shorten the window")

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        breached_at = None
        while not self._stop.is_set():
            rss = me.memory_info().rss
            self.peak = max(self.peak, rss)
            if self.cap is not None and rss > self.cap:
                if self.breach is None:
                    self.breach, breached_at = rss, time.monotonic()
                    _thread.interrupt_main()
                elif rss > self.cap * self.hard_factor or time.monotonic() - breached_at > self.grace:
                    sys.stderr.write(f"DriverMemoryExceeded: {self.message(self.breach)}\n")
                    sys.stderr.flush()
                    os._exit(self.EXIT_STATUS)
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemoryCap":
        import psutil

        self.peak = psutil.Process().memory_info().rss
        if self.cap is not None and self.peak > self.cap:
            raise DriverMemoryExceeded(self.message(self.peak))
        self._thread = threading.Thread(target=self._watch, name="memory-cap", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop.set()
        self._thread.join()
        if self.breach is not None:
            raise DriverMemoryExceeded(self.message(self.breach)) from (exc if exc_type is not KeyboardInterrupt else None)
        return False
