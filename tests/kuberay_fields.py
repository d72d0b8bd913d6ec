"""The fields of KubeRay's v1 objects that deploy/ may use, as a tree, and a strict check against it.

The Kubernetes API server keeps only the fields a CRD's schema declares and silently prunes the rest
(that is how `jobTemplate: spec: entrypoint` left a RayCronJob without an entrypoint). The tests
cannot read KubeRay's CRDs (no network in CI, and they are not copied here), so this module encodes the
subset of the v1 API that our manifests need, checked by hand and by `verify_against_crds` against
KubeRay v1.7.0 (ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs,raycronjobs}.yaml).

Reading a node: a dict is an object with exactly these fields; `[node]` an array of such items; `MAP`
an object of string values (labels, rayStartParams); `QUANTITIES` an object of resource quantities;
`STR`, `INT`, `BOOL`, `NUM`, `QUANTITY` scalars; a frozenset of strings an enumeration. A manifest field
that is not in the tree is an error even if a newer CRD has it: verify it there, then add it here.

    python tests/kuberay_fields.py PATH/TO/kuberay/ray-operator/config/crd/bases

re-checks every field, type and enumeration of the tree against a local copy of the CRDs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

STR, INT, BOOL, NUM, QUANTITY = "string", "integer", "boolean", "number", "quantity"
MAP, QUANTITIES = "map of strings", "map of quantities"

KUBERAY_VERSION = "v1.7.0"

# -- core/v1 pieces inside pod templates (the part of PodTemplateSpec deploy/ uses) ---------------------
_KEY_REF = {"name": STR, "key": STR, "optional": BOOL}
ENV_VAR = {"name": STR, "value": STR,
           "valueFrom": {"secretKeyRef": _KEY_REF, "configMapKeyRef": _KEY_REF, "fieldRef": {"fieldPath": STR}}}
ENV_FROM = {"configMapRef": {"name": STR, "optional": BOOL}, "secretRef": {"name": STR, "optional": BOOL},
            "prefix": STR}
RESOURCES = {"requests": QUANTITIES, "limits": QUANTITIES}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": BOOL, "readOnlyRootFilesystem": BOOL, "runAsNonRoot": BOOL,
                      "runAsUser": INT, "runAsGroup": INT, "capabilities": {"add": [STR], "drop": [STR]}}
CONTAINER = {
    "name": STR, "image": STR,
    "imagePullPolicy": frozenset({"Always", "Never", "IfNotPresent"}),
    "command": [STR], "args": [STR], "env": [ENV_VAR], "envFrom": [ENV_FROM],
    "ports": [{"containerPort": INT, "name": STR, "protocol": STR}],
    "resources": RESOURCES,
    "volumeMounts": [{"name": STR, "mountPath": STR, "readOnly": BOOL, "subPath": STR}],
    "securityContext": CONTAINER_SECURITY,
}
_ITEMS = [{"key": STR, "path": STR}]
VOLUME = {"name": STR, "configMap": {"name": STR, "items": _ITEMS, "defaultMode": INT},
          "secret": {"secretName": STR, "items": _ITEMS, "defaultMode": INT},
          "emptyDir": {"medium": STR, "sizeLimit": QUANTITY}}
POD_TEMPLATE = {
    "metadata": {"labels": MAP, "annotations": MAP},
    "spec": {
        "containers": [CONTAINER], "initContainers": [CONTAINER], "volumes": [VOLUME],
        "nodeSelector": MAP, "serviceAccountName": STR, "priorityClassName": STR,
        "restartPolicy": STR, "terminationGracePeriodSeconds": INT, "imagePullSecrets": [{"name": STR}],
        "tolerations": [{"key": STR, "operator": STR, "value": STR, "effect": STR, "tolerationSeconds": INT}],
        "securityContext": {"runAsNonRoot": BOOL, "runAsUser": INT, "runAsGroup": INT, "fsGroup": INT},
    },
}

# -- ray.io/v1 ---------------------------------------------------------------------------------------------
RAY_CLUSTER_SPEC = {
    "rayVersion": STR,
    "enableInTreeAutoscaling": BOOL,
    "autoscalerOptions": {
        "version": frozenset({"v1", "v2"}),
        "upscalingMode": frozenset({"Default", "Aggressive", "Conservative"}),
        "idleTimeoutSeconds": INT, "resources": RESOURCES, "image": STR,
        "imagePullPolicy": frozenset({"Always", "Never", "IfNotPresent"}),
        "env": [ENV_VAR], "envFrom": [ENV_FROM], "securityContext": CONTAINER_SECURITY,
    },
    "authOptions": {"mode": frozenset({"disabled", "token"}), "secretName": STR},
    "headGroupSpec": {"rayStartParams": MAP, "template": POD_TEMPLATE, "serviceType": STR, "enableIngress": BOOL,
                      "resources": MAP, "labels": MAP},
    "workerGroupSpecs": [{
        "groupName": STR, "replicas": INT, "minReplicas": INT, "maxReplicas": INT, "idleTimeoutSeconds": INT,
        "rayStartParams": MAP, "template": POD_TEMPLATE, "resources": MAP, "labels": MAP, "numOfHosts": INT,
        "suspend": BOOL,
    }],
    "suspend": BOOL,
    "headServiceAnnotations": MAP,
}
RAY_JOB_SPEC = {
    "entrypoint": STR, "runtimeEnvYAML": STR, "jobId": STR, "metadata": MAP,
    "submissionMode": frozenset({"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}),
    "shutdownAfterJobFinishes": BOOL, "ttlSecondsAfterFinished": INT,
    "activeDeadlineSeconds": INT, "preRunningDeadlineSeconds": INT,
    "backoffLimit": INT, "submitterConfig": {"backoffLimit": INT}, "submitterPodTemplate": POD_TEMPLATE,
    "entrypointNumCpus": NUM, "entrypointNumGpus": NUM, "entrypointResources": STR,
    "clusterSelector": MAP, "suspend": BOOL,
    "rayClusterSpec": RAY_CLUSTER_SPEC,
}
RAY_CRON_JOB_SPEC = {"schedule": STR, "timeZone": STR, "suspend": BOOL, "jobTemplate": RAY_JOB_SPEC}

SPECS = {"RayCluster": RAY_CLUSTER_SPEC, "RayJob": RAY_JOB_SPEC, "RayCronJob": RAY_CRON_JOB_SPEC}
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayCronJob": "ray.io_raycronjobs.yaml"}
OBJECT_META = {"name": STR, "namespace": STR, "labels": MAP, "annotations": MAP}
# what KubeRay's validation refuses beyond the schema (ray-operator/controllers/ray/utils/validation.go,
# utils/constant.go): name lengths leave room for the names KubeRay derives from them
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 36}


def check_object(obj: dict[str, Any]) -> list[str]:
    """Every problem with one ray.io/v1 object: unknown (pruned) fields, wrong types, values off an enum."""
    kind = obj.get("kind")
    if obj.get("apiVersion") != "ray.io/v1" or kind not in SPECS:
        return [f"{obj.get('apiVersion')}/{kind}: not a ray.io/v1 kind this tree knows ({sorted(SPECS)})"]
    problems = []
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    problems += [f"{kind}.{name}: not a field of {kind}" for name in sorted(extra)]
    problems += _check(obj.get("metadata", {}), OBJECT_META, f"{kind}.metadata")
    problems += _check(obj.get("spec", {}), SPECS[kind], f"{kind}.spec")
    return problems


def _check(value: Any, node: Any, path: str) -> list[str]:
    if isinstance(node, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {value!r}"]
        problems = []
        for key, item in value.items():
            if key not in node:
                problems.append(f"{path}.{key}: unknown field (the API server would prune it)")
            else:
                problems += _check(item, node[key], f"{path}.{key}")
        return problems
    if isinstance(node, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [p for i, item in enumerate(value) for p in _check(item, node[0], f"{path}[{i}]")]
    if isinstance(node, frozenset):
        return [] if value in node else [f"{path}: {value!r} is not one of {sorted(node)}"]
    if node in (MAP, QUANTITIES):
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {value!r}"]
        scalar = STR if node == MAP else QUANTITY
        return [p for k, v in value.items() for p in _check(v, scalar, f"{path}.{k}")]
    ok = {STR: isinstance(value, str),
          INT: isinstance(value, int) and not isinstance(value, bool),
          BOOL: isinstance(value, bool),
          NUM: isinstance(value, (int, float)) and not isinstance(value, bool),
          QUANTITY: isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))}[node]
    return [] if ok else [f"{path}: {value!r} is not a {node}"]


# -- re-checking the tree against KubeRay's CRDs (a developer tool; needs a local kuberay checkout) -----------

def verify_against_crds(crd_dir: str | Path) -> list[str]:
    """Every path of the tree that the CRDs lack or type differently."""
    import yaml

    problems = []
    for kind, filename in CRD_FILES.items():
        crd = yaml.safe_load((Path(crd_dir) / filename).read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        problems += _verify(SPECS[kind], spec, f"{kind}.spec")
    return problems


def _verify(node: Any, schema: dict[str, Any], path: str) -> list[str]:
    kind = schema.get("type")
    if isinstance(node, dict):
        if kind != "object" or "properties" not in schema:
            return [f"{path}: the CRD has no object here ({kind})"]
        props = schema["properties"]
        return [p for key, sub in node.items()
                for p in ([f"{path}.{key}: not in the CRD"] if key not in props else _verify(sub, props[key], f"{path}.{key}"))]
    if isinstance(node, list):
        return [f"{path}: not an array in the CRD"] if kind != "array" else _verify(node[0], schema["items"], f"{path}[]")
    if isinstance(node, frozenset):
        allowed = set(schema.get("enum", []))
        if kind != "string":
            return [f"{path}: not a string in the CRD"]
        return [f"{path}: the CRD allows {sorted(allowed)}, not {sorted(node - allowed)}"] if allowed and node - allowed else []
    if node in (MAP, QUANTITIES):
        inner = schema.get("additionalProperties")
        if kind != "object" or not isinstance(inner, dict):
            return [f"{path}: not a map in the CRD"]
        return _verify(STR if node == MAP else QUANTITY, inner, f"{path}.*")
    if node == QUANTITY:
        return [] if schema.get("x-kubernetes-int-or-string") else [f"{path}: not a quantity in the CRD"]
    return [] if kind == node else [f"{path}: the CRD says {kind}, the tree {node}"]


if __name__ == "__main__":
    found = verify_against_crds(sys.argv[1])
    print("\n".join(found) or f"every field of the tree is in the CRDs under {sys.argv[1]}")
    sys.exit(1 if found else 0)
