"""Ray bootstrap: a local Ray by default, a cluster when RAY_ADDRESS (or config) names one."""

from __future__ import annotations

import logging
import os
import socket

from lakelens.infra.config import RayConfig


def init_ray(config: RayConfig | None = None) -> None:
    import ray
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    config = config or RayConfig()
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        common = dict(logging_level=logging.WARNING, log_to_driver=True,
                      logging_config=ray.LoggingConfig(log_level=config.worker_log_level))
        if address:
            try:
                ray.init(address=address, **common)
            except Exception as exc:  # Ray raises several types here; the auth case needs a plain answer
                if "InvalidAuthToken" in str(exc) or "AuthenticationError" in type(exc).__name__:
                    raise ConnectionError(
                        f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token "
                        "(the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)"
                    ) from exc
                raise
        else:
            ray.init(num_cpus=config.num_cpus, include_dashboard=False, **common)
    context = DataContext.get_current()
    context.shuffle_strategy = ShuffleStrategy(config.shuffle_strategy)
    context.enable_progress_bars = config.show_progress
    # per-operator bars are noise in scheduled-job logs; the global bar shows progress
    context.enable_operator_progress_bars = False
    context.verbose_progress = False


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_port_flags() -> list[str]:
    """`ray start` flags giving one node's agents free ports: two nodes on one machine (with Ray's default
    extra, which runs a dashboard agent per node) would otherwise both ask for the defaults, and the
    second never joins."""
    names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "node-manager-port", "object-manager-port")
    return [f"--{name}={free_port()}" for name in names]
