"""`lakelens submit` and `lakelens jobs` against a real Ray head (dashboard, Jobs API, token auth), and the
submission plan (ids, the command sent, what travels) without one; `embed.device`/`lens.device`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from lakelens.cli import build_parser
from lakelens.infra.config import ConfigError, LakelensConfig
from lakelens.infra.errors import InputError
from lakelens.submission import FILE_FLAGS, plan_submission

BIN = Path(sys.executable).parent
ADDRESS = "http://127.0.0.1:1"  # nothing listens there: the plan never talks to Ray


def _submit_args(*argv: str):
    return build_parser().parse_args(["submit", *argv, "--address", ADDRESS])


def _run_args(argv: list[str]):
    assert argv[:2] == ["lakelens", "run"]
    return build_parser().parse_args(argv[1:])


@pytest.fixture
def files(tmp_path):
    config = tmp_path / "job.toml"
    config.write_text('[storage]\nendpoint_url = "http://s3.internal:8333"\nregion = "eu-west-1"\n'
                      "[clusters]\nwindow_days = 4\n")
    vocabulary = tmp_path / "concepts.txt"
    vocabulary.write_text("striped\ndotted\n")
    return {"config": config, "vocabulary": vocabulary}


JOB_FLAGS = {
    "build-sequences": ["--date", "2026-01-02", "--lookback-hours", "12", "--max-len", "32"],
    "train-encoder": ["--dates", "2026-01-01..2026-01-03", "--epochs", "3", "--workers", "2"],
    "embed": ["--date", "2026-01-02", "--model", "v-abc"],
    "behavior-clusters": ["--date", "2026-01-03", "--window-days", "3", "--full"],
    "semantic-lens": ["--dataset", "imgs", "--model-id", "cnn", "--layers", "a,b"],
}


@pytest.mark.parametrize("job", sorted(JOB_FLAGS))
def test_the_command_sent_is_the_run_command_with_the_same_flags(job, files):
    extra = ["--vocabulary", str(files["vocabulary"])] if job == "semantic-lens" else []
    submitted = _submit_args(job, "--lake", "s3://lake/prod", "--config", str(files["config"]), "--force",
                             *JOB_FLAGS[job], *extra)
    plan = plan_submission(submitted)
    ran = _run_args(plan.argv)  # what the cluster runs parses as `lakelens run JOB`
    assert ran.job == job and ran.lake == "s3://lake/prod" and ran.force
    assert ran.config == FILE_FLAGS["config"] and plan.files[FILE_FLAGS["config"]] == files["config"]
    for name, value in vars(submitted).items():
        if name in ("lake", "config", "vocabulary", "cmd", "fn") or not hasattr(ran, name):
            continue
        assert getattr(ran, name) == value, name
    if job == "semantic-lens":
        assert ran.vocabulary == FILE_FLAGS["vocabulary"] and FILE_FLAGS["vocabulary"] in plan.files
    assert plan.base_id.startswith(f"lakelens-{job}-")
    assert plan.env_vars == {"AWS_ENDPOINT_URL": "http://s3.internal:8333", "AWS_REGION": "eu-west-1"}


def test_the_submission_id_is_job_partition_and_a_hash_of_flags_and_config(files, tmp_path):
    def base_id(*argv: str) -> str:
        return plan_submission(_submit_args(*argv)).base_id

    common = ["behavior-clusters", "--lake", "s3://lake/prod", "--date", "2026-01-03"]
    first = base_id(*common)
    assert first.startswith("lakelens-behavior-clusters-dt=2026-01-03-") and len(first.rsplit("-", 1)[1]) == 10
    assert base_id(*common) == first  # deterministic
    assert base_id(*common, "--log-format", "json", "--log-level", "DEBUG") == first  # logging is not the work
    assert base_id(*common, "--window-days", "3") == first  # the default, said out loud
    assert base_id(*common, "--window-days", "5") != first
    assert base_id(*common, "--config", str(files["config"])) != first  # window_days = 4 in the file
    same = tmp_path / "same.toml"
    same.write_text("# nothing but a comment\n")
    assert base_id(*common, "--config", str(same)) == first  # the effective config counts, not its text
    assert base_id("behavior-clusters", "--lake", "s3://lake/dev", "--date", "2026-01-03") != first
    assert base_id("train-encoder", "--lake", "s3://lake/prod", "--dates", "2026-01-01..2026-01-07") \
        .startswith("lakelens-train-encoder-dt=2026-01-01..2026-01-07-")
    assert base_id("semantic-lens", "--lake", "s3://lake/prod", "--model-id", "resnet/v2") \
        .startswith("lakelens-semantic-lens-model=resnet_v2-")


def test_a_local_lake_is_sent_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_submission(_submit_args("build-sequences", "--lake", "lake", "--date", "2026-01-02"))
    assert _run_args(plan.argv).lake == str(tmp_path / "lake")


def test_credentials_in_the_config_are_refused_before_anything_is_sent(tmp_path, capsys):
    from lakelens.cli import _exit_code

    config = tmp_path / "job.toml"
    config.write_text('[storage]\naccess_key_id = "AKIA-TEST"\nsecret_access_key = "not-for-the-wire"\n')
    with pytest.raises(InputError, match="storage.access_key_id, storage.secret_access_key"):
        plan_submission(_submit_args("build-sequences", "--lake", "s3://l/p", "--date", "2026-01-02",
                                     "--config", str(config)))
    code = _exit_code(_submit_args("build-sequences", "--lake", "s3://l/p", "--date", "2026-01-02",
                                   "--config", str(config)))
    out = capsys.readouterr()
    assert code == 2  # bad input, and nothing was sent: ADDRESS has no server behind it
    assert "never sends credentials" in out.err and "not-for-the-wire" not in out.err + out.out


def test_a_bad_config_or_missing_file_is_bad_input(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[embed]\ndevice = \"gpu\"\n")
    with pytest.raises(ConfigError, match="embed.device"):
        plan_submission(_submit_args("embed", "--lake", "s3://l/p", "--date", "2026-01-02", "--config", str(bad)))
    with pytest.raises(InputError, match="no such file here"):
        plan_submission(_submit_args("embed", "--lake", "s3://l/p", "--date", "2026-01-02",
                                     "--config", str(tmp_path / "absent.toml")))


def test_the_address_is_required_unless_the_environment_gives_it(monkeypatch, capsys):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(["jobs", "list"])
    assert usage.value.code == 64 and "--address" in capsys.readouterr().err
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:8265")
    assert build_parser().parse_args(["jobs", "status", "x"]).address == "http://head:8265"


def test_device_keys_are_validated_and_cpu_or_auto_ask_for_no_gpu():
    from lakelens.infra.devices import actor_device

    config = LakelensConfig.load(None, {"embed.device": "cuda", "lens.device": "cpu", "ray.gpu_wait_s": 60})
    assert (config.embed.device, config.lens.device, config.ray.gpu_wait_s) == ("cuda", "cpu", 60)
    with pytest.raises(ConfigError, match=r"lens.device = 'gpu'"):
        LakelensConfig.load(None, {"lens.device": "gpu"})
    assert actor_device("embed.device", use_gpu=False) == "cpu"


@pytest.mark.slow
def test_an_explicit_cuda_request_fails_on_a_cluster_without_gpus(ray_local):
    from lakelens.infra.devices import stage_gpus

    assert stage_gpus("embed.device", "auto") == 0 and stage_gpus("embed.device", "cpu") == 0
    with pytest.raises(InputError, match=r'embed.device = "cuda" but no node of the Ray cluster has a GPU'):
        stage_gpus("embed.device", "cuda")
    started = time.monotonic()
    with pytest.raises(InputError, match=r"lens.device.*after waiting 1 s for the autoscaler"):
        stage_gpus("lens.device", "cuda", wait_s=1, poll_s=0.2)
    assert time.monotonic() - started < 30


# -- a real Ray head: `ray start --head` with the dashboard on free loopback ports, token auth on ---------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(s3_endpoint):
    """A Ray head with its Jobs API, started as operators start one, with token auth.

    Its environment holds the S3 credentials (as the lakelens-s3 Secret does on Kubernetes) but not the
    endpoint: the endpoint travels with each submission. Yields (address, client environment).
    """
    from tests.conftest import S3_KEY, S3_SECRET

    temp_dir = tempfile.mkdtemp(prefix="lksub", dir="/tmp")  # Ray's socket paths must stay short
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(auth, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", AWS_ACCESS_KEY_ID=S3_KEY,
               AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_REGION="us-east-1")
    dashboard = _free_port()
    ports = {"port": _free_port(), "dashboard-port": dashboard, "dashboard-agent-listen-port": _free_port(),
             "dashboard-agent-grpc-port": _free_port(), "ray-client-server-port": _free_port(),
             "metrics-export-port": _free_port(), "runtime-env-agent-port": _free_port(),
             "node-manager-port": _free_port(), "object-manager-port": _free_port()}
    log = open(Path(temp_dir) / "head.log", "w")
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--dashboard-host", "127.0.0.1",
                             "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                             *(f"--{name}={port}" for name, port in ports.items())],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for the token
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Ray head did not start:\n{(Path(temp_dir) / 'head.log').read_text()[-3000:]}")
                time.sleep(0.5)
        client_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        yield address, {**client_env, **auth}
    finally:
        # this head's processes only (its own session); `ray stop` would stop every Ray on the machine
        # (a graceful `ray start --block` shutdown takes ~35 s; the session is thrown away, so 5 s will do)
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the session is still there
        head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)  # the session's logs and the token


def _lakelens(env, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lakelens"), *argv], capture_output=True, text=True, env=env, timeout=timeout)


def _json(out: subprocess.CompletedProcess):
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"not JSON (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


@pytest.mark.slow
def test_submit_runs_once_fails_plainly_retries_and_publishes(ray_head, s3_storage, s3_endpoint, tmp_path):
    from lakelens.infra.catalog import open_catalog
    from lakelens.infra.storage import Lake
    from lakelens.synthetic.generate import generate_world
    from tests.conftest import S3_BUCKET, S3_SECRET, TEST_DAY, TEST_START

    address, env = ray_head
    lake_uri = f"s3://{S3_BUCKET}/submit-{uuid.uuid4().hex[:8]}"  # nothing there yet
    config = tmp_path / "job.toml"  # travels with the job: the endpoint, and a setting the run must use
    config.write_text(f'[storage]\nendpoint_url = "{s3_endpoint}"\n[ray]\nshow_progress = false\n'
                      "[sequences]\nmax_len = 16\n")
    submit = ["submit", "build-sequences", "--address", address, "--lake", lake_uri, "--date", str(TEST_DAY),
              "--config", str(config), "--json"]

    # 1. the lake is empty: the job fails as `lakelens run` would (exit 2), with the error in its logs
    failed = _lakelens(env, *submit, "--wait")
    first = _json(failed)
    assert failed.returncode == 2 and first["status"] == "FAILED" and first["submitted"]
    base = first["submission_id"]
    assert base == first["base_id"] and base.startswith(f"lakelens-build-sequences-dt={TEST_DAY}-")
    assert "no transactions for" in first["message"]
    logs = _lakelens(env, "jobs", "logs", base, "--address", address)
    assert logs.returncode == 0 and "lakelens: error: no transactions for" in logs.stdout

    # 2. the schedule fires again: nothing new starts, the command says why and exits with the job's code
    again = _lakelens(env, *submit)
    assert again.returncode == 2 and not _json(again)["submitted"] and _json(again)["submission_id"] == base
    assert "--retry runs it again as " + base + "-a2" in again.stderr

    # 3. the data lands; --retry runs it again under the next attempt id, and it publishes
    generate_world(Lake(lake_uri, s3_storage), users=300, days=2, seed=5, start=TEST_START, workers=1)
    retried = _lakelens(env, *submit, "--retry", "--wait")
    second = _json(retried)
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert second["submission_id"] == base + "-a2" and second["status"] == "SUCCEEDED" and second["submitted"]
    assert "build-sequences: published" in retried.stderr  # the job's logs, streamed (to stderr under --json)

    # 4. twice more, with and without --retry: a succeeded submission is never run again
    for extra in ([], ["--retry"]):
        noop = _lakelens(env, *submit, *extra, "--wait")
        assert noop.returncode == 0 and not _json(noop)["submitted"] and _json(noop)["submission_id"] == base + "-a2"
        assert "already SUCCEEDED; nothing to do" in noop.stderr
    listed = _json(_lakelens(env, "jobs", "list", "--address", address, "--json"))
    mine = [row for row in listed if row["submission_id"].startswith(base)]
    assert [(r["submission_id"], r["status"], r["attempt"]) for r in mine] == \
        [(base, "FAILED", 1), (base + "-a2", "SUCCEEDED", 2)]
    status = _json(_lakelens(env, "jobs", "status", base + "-a2", "--address", address, "--json"))
    assert status["job"] == "build-sequences" and status["partition"] == f"dt={TEST_DAY}"
    assert _lakelens(env, "jobs", "logs", base, "--follow", "--address", address).returncode == 2
    followed = _lakelens(env, "jobs", "logs", base + "-a2", "--follow", "--json", "--address", address)
    assert followed.returncode == 0 and "build-sequences: published" in _json(followed)["logs"]
    print(f"\ndouble submission ids: {base} (FAILED), {base}-a2 (SUCCEEDED after --retry); "
          f"repeats started nothing")

    # 5. a stopped submission: stop ends it, and a repeat without --retry reports it and exits 1
    other = ["submit", "build-sequences", "--address", address, "--lake", lake_uri, "--date", str(TEST_START),
             "--config", str(config), "--json"]
    started = _json(_lakelens(env, *other))
    assert started["submitted"] and started["status"] in ("PENDING", "RUNNING")
    stopped = _lakelens(env, "jobs", "stop", started["submission_id"], "--address", address, "--json")
    assert stopped.returncode == 0 and _json(stopped)["stop_requested"]
    deadline = time.monotonic() + 120
    while _json(_lakelens(env, "jobs", "status", started["submission_id"], "--address", address, "--json"))[
            "status"] != "STOPPED":
        assert time.monotonic() < deadline, "the stopped job never reached STOPPED"
        time.sleep(1)
    repeat = _lakelens(env, *other)
    assert repeat.returncode == 1, f"{started}\n{repeat.stdout}\n{repeat.stderr[-2000:]}"
    assert not _json(repeat)["submitted"] and _json(repeat)["status"] == "STOPPED"

    # 6. the results, through the catalog; the config that travelled was the one used (max_len 16)
    con = open_catalog(Lake(lake_uri, s3_storage))
    runs = con.execute(f"SELECT job, partition, params FROM runs WHERE partition = 'dt={TEST_DAY}'").fetchall()
    assert [(job, partition) for job, partition, _ in runs] == [("build-sequences", f"dt={TEST_DAY}")]
    assert json.loads(runs[0][2])["max_len"] == 16
    count, longest = con.execute(f"SELECT count(*), max(n_events) FROM sequences WHERE dt = DATE '{TEST_DAY}'"
                                 ).fetchone()
    assert count > 0 and longest <= 16

    # 7. the endpoint travelled; the credentials did not (the cluster's environment had them)
    for submission_id in (base, base + "-a2"):
        shown = _lakelens(env, "jobs", "status", submission_id, "--address", address, "--json")
        info = _json(shown)
        assert info["runtime_env"]["env_vars"] == {"AWS_ENDPOINT_URL": s3_endpoint}
        assert info["runtime_env"]["working_dir"].startswith("gcs://")  # the config file
        everything = shown.stdout + _lakelens(env, "jobs", "logs", submission_id, "--address", address).stdout
        assert S3_SECRET not in everything and "AWS_SECRET_ACCESS_KEY" not in everything


@pytest.mark.slow
def test_a_client_without_the_token_is_refused_plainly(ray_head):
    address, env = ray_head
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    out = _lakelens({**no_token, "HOME": tempfile.mkdtemp()}, "jobs", "list", "--address", address)
    assert out.returncode == 2
    assert "requires token authentication" in out.stderr and "RAY_AUTH_MODE=token" in out.stderr
