"""The memory plan: each stage's bytes from the window's size, a plan that fits the driver's cap and
the nodes, a clear error saying what to change when none does, and a cap enforced while a fit runs."""

from __future__ import annotations

import numpy as np
import pytest

from lakelens.operators.memory_plan import (
    GiB,
    PROCESS_BASE_BYTES,
    MemoryPlanError,
    driver_stages,
    plan_fit,
    shard_stages,
    single_node_peak,
)


def _peak(stages):
    return max(s.bytes for s in stages)


def test_every_stage_grows_with_the_window_and_a_shard_shrinks_with_more_shards():
    small, large = shard_stages(1_000_000, 64, 16, 4), shard_stages(10_000_000, 64, 16, 4)
    assert all(b.bytes > a.bytes for a, b in zip(small, large))
    assert _peak(shard_stages(10_000_000, 64, 16, 8)) < _peak(shard_stages(10_000_000, 64, 16, 4))
    # features, index and kNN lists of a 100M x 64 shard of 1/10: ~10M x (256 + 256 + 256) B at least
    assert _peak(shard_stages(100_000_000, 64, 16, 10)) - PROCESS_BASE_BYTES >= 10_000_000 * 768


def test_the_sharded_driver_holds_no_rows_no_graph_and_no_more_with_more_shards():
    n = 10_000_000
    per_point = (_peak(driver_stages(n, 4)) - PROCESS_BASE_BYTES) / n
    assert per_point < 64 * 4 + 16 * 16  # less than one row plus its kNN list per point
    assert _peak(driver_stages(n, 64)) <= _peak(driver_stages(n, 4))
    assert single_node_peak(n, 64, 16) > 2 * _peak(driver_stages(n, 4))


def test_the_plan_takes_the_least_shard_count_whose_shards_fit_the_nodes():
    n, dim, k = 20_000_000, 64, 16
    nodes = [16 * GiB] * 4
    plan = plan_fit(n, dim, k, driver_cap_bytes=32 * GiB, node_memory_bytes=nodes)
    assert plan.shard_peak <= 16 * GiB
    fewer = max(s.bytes for s in shard_stages(n, dim, k, plan.shards - 1))
    # one shard fewer would not fit: a shard too big for a node, or more shards than the nodes hold
    assert fewer > 16 * GiB or sum(16 * GiB // fewer for _ in nodes) < plan.shards - 1
    # bigger nodes need fewer shards
    assert plan_fit(n, dim, k, 32 * GiB, [64 * GiB] * 4).shards < plan.shards
    assert plan.driver_peak == _peak(driver_stages(n, plan.shards))
    assert "driver" in plan.table() and "shard" in plan.table()


def test_a_driver_over_its_cap_is_told_the_cap_to_set_or_the_window_that_fits():
    n = 100_000_000
    with pytest.raises(MemoryPlanError, match="clusters.driver_memory_gb") as caught:
        plan_fit(n, 64, 16, driver_cap_bytes=4 * GiB, node_memory_bytes=[256 * GiB] * 8)
    message = str(caught.value)
    assert "shorten the window to at most" in message and "More shards do not help" in message
    fits = int(message.split("at most ")[1].split(" points")[0].replace(",", ""))
    assert 0 < fits < n
    plan_fit(fits, 64, 16, driver_cap_bytes=4 * GiB, node_memory_bytes=[256 * GiB] * 8)  # the advice holds
    needed = float(message.split("at least ")[1].split(",")[0])
    plan_fit(n, 64, 16, driver_cap_bytes=int(needed * GiB), node_memory_bytes=[256 * GiB] * 8)


def test_too_few_shards_for_the_nodes_asks_for_more_shards_and_too_small_a_cluster_for_more_nodes():
    with pytest.raises(MemoryPlanError, match="use more shards"):
        plan_fit(50_000_000, 64, 16, driver_cap_bytes=64 * GiB, node_memory_bytes=[16 * GiB] * 8, shards=2)
    with pytest.raises(MemoryPlanError, match="add nodes or memory"):
        plan_fit(500_000_000, 64, 16, driver_cap_bytes=256 * GiB, node_memory_bytes=[1 * GiB])


def test_the_memory_cap_stops_a_block_that_allocates_past_it_with_the_setting_to_change():
    # in a fresh process: after a long test session the process's peak RSS (the cap's base) can sit far above
    # its current RSS, and 800 MB more may then never cross it
    import subprocess
    import sys

    code = """
import numpy as np, pytest
from lakelens.operators.memory_plan import DriverMemoryExceeded, MemoryCap
with MemoryCap(None) as idle:
    pass
cap = idle.peak + 200 * (1 << 20)
with pytest.raises(DriverMemoryExceeded, match="clusters.driver_memory_gb") as raised:
    with MemoryCap(cap, interval_s=0.005):
        held = []
        for _ in range(100):  # 800 MB in 8 MB steps, touched so it is resident
            held.append(np.ones(1 << 20))
print(raised.value)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "clusters.driver_memory_gb" in out.stdout


def test_the_memory_cap_lets_a_block_under_it_finish_and_reports_its_peak():
    # in a fresh process: a long test session keeps freed pages resident, so a new block may not raise its RSS
    import subprocess
    import sys

    code = """
import time, numpy as np
from lakelens.operators.memory_plan import MemoryCap
with MemoryCap(None) as idle:
    pass
with MemoryCap(idle.peak + 400 * (1 << 20), interval_s=0.005) as cap:
    block = np.ones(100 * (1 << 17))  # 100 MB
    deadline = time.monotonic() + 10
    while cap.peak < idle.peak + 90 * (1 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert float(block.sum()) == block.size
print(cap.peak - idle.peak)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 90 * (1 << 20)
