"""Helpers shared by the benchmarks: a machine description and a peak-RSS sampler over a process tree."""

from __future__ import annotations

import os
import platform
import threading
import time
from datetime import datetime, timezone

import psutil


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return f"{platform.node()} | {os.cpu_count()} cores | {mem:.0f} GiB | {platform.processor() or platform.machine()}"


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class PeakRSS:
    """Samples the RSS of this process and its children (Ray workers, pool processes) every 50 ms."""

    def __init__(self, include_children: bool = True) -> None:
        self.include_children = include_children
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                procs = [me] + (me.children(recursive=True) if self.include_children else [])
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30
