"""Ray bootstrap: a local Ray by default, a cluster when RAY_ADDRESS (or config) names one."""

from __future__ import annotations

import logging
import os

from lakelens.infra.config import RayConfig


def init_ray(config: RayConfig | None = None) -> None:
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    config = config or RayConfig()
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        common = dict(logging_level=logging.WARNING, log_to_driver=True)
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=config.num_cpus, include_dashboard=False, **common)
    context = DataContext.get_current()
    context.shuffle_strategy = ShuffleStrategy(config.shuffle_strategy)
    context.enable_progress_bars = config.show_progress
    # per-operator bars are noise in scheduled-job logs; the global bar shows progress
    context.enable_operator_progress_bars = False
    context.verbose_progress = False
