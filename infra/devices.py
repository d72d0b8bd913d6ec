"""Where a model-bound stage runs, decided by the config (`embed.device`, `lens.device`), never by accident.

    gpus = stage_gpus("embed.device", config.embed.device, config.ray.gpu_wait_s)   # on the driver
    device = actor_device("embed.device", use_gpu=gpus > 0)                        # inside each actor

- "cpu": no GPU is asked for, even on a cluster that has some.
- "auto": the GPUs the cluster has when the stage starts; none means CPU (a GPU worker group scaled to
  zero is not seen: ask for "cuda" when the work must run on a GPU).
- "cuda": at least one GPU, or an InputError naming the key. With `ray.gpu_wait_s` the stage first
  asks the autoscaler for a GPU node and waits for it (a KubeRay GPU group that starts at zero).
"""

from __future__ import annotations

import logging
import time

from lakelens.infra.errors import InputError

log = logging.getLogger("lakelens.devices")


def stage_gpus(key: str, device: str, wait_s: float = 0, poll_s: float = 2.0) -> int:
    """How many GPUs the stage may spread over (0: it runs on CPU). Needs a running Ray."""
    import ray

    if device == "cpu":
        return 0
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus or device == "auto":
        return gpus
    if wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        log.info('%s = "cuda": no node has a GPU yet; asked the autoscaler for one, waiting up to %d s', key, wait_s)
        request_resources(bundles=[{"GPU": 1}])
        try:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
                gpus = int(ray.cluster_resources().get("GPU", 0))
                if gpus:
                    return gpus  # the stage's own GPU actors hold the node from here on
        finally:
            request_resources(bundles=[])  # a standing request would keep a GPU node up for ever
    waited = f" after waiting {wait_s:.0f} s for the autoscaler (ray.gpu_wait_s)" if wait_s > 0 else ""
    raise InputError(
        f'{key} = "cuda" but no node of the Ray cluster has a GPU{waited}. Give the cluster a GPU worker group '
        f'(deploy/kuberay: the gpu group), let an autoscaler start one (ray.gpu_wait_s), or set {key} = "auto" '
        'or "cpu" to run on CPU.')


def actor_device(key: str, use_gpu: bool) -> str:
    """The torch device inside an actor scheduled with (use_gpu) or without a GPU."""
    if not use_gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"{key}: this actor was given a GPU but torch {torch.__version__} sees none "
                         f"(CUDA build: {torch.version.cuda or 'no'}); GPU workers need the CUDA image "
                         "(deploy/Dockerfile, --build-arg VARIANT=cuda)")
    return "cuda"
