"""Render the manifests in ``k8s/`` with a run's image, model and parameters.

The files in ``k8s/`` are real manifests (``kubectl kustomize k8s/`` renders them). This
module reads the same files, in the order of ``kustomization.yaml``'s ``resources``, and
fills in what a deployment of one run needs: the image (``ref@digest`` from
``artifacts/image.json``), replicas, Service type and ports, the serving settings of the
ConfigMap, and pod-template annotations with the checksums of config and model, so a new
model or new settings always roll the pods. The name ``model-server`` in the files stands
for ``deploy.name``; the namespace for ``deploy.namespace``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from ... import _artifact_names as _names
from ... import _paths
from ...errors import ArtifactError, K8sDeployError
from ...image import REQUEST_LOG_DIR_IN_IMAGE
from ...monitor.collect import ADMIN_PORT_NAME, ADMIN_TOKEN_KEY, admin_token_secret
from ...params import RunParams
from ...serving import ENVIRONMENT as SERVING_ENVIRONMENT

#: The placeholder names used in k8s/*.yaml.
BASE_NAME = "model-server"
BASE_NAMESPACE = "mlops-kit"
CONTAINER = "server"
#: the pod's volume of the request log (an emptyDir at REQUEST_LOG_DIR_IN_IMAGE)
REQUESTS_VOLUME = "requests"
#: the server's environment variable that holds the admin token (from its Secret only)
ADMIN_TOKEN_ENV = SERVING_ENVIRONMENT["admin_token"]
#: Pod-template annotations the kit fills in.
ANNOTATION_PREFIX = "mlops-kit/"
RUN_ID = "mlops-kit/run-id"
MODEL_SHA = "mlops-kit/model-sha256"
CONFIG_CHECKSUM = "mlops-kit/config-checksum"
SECRET_CHECKSUM = "mlops-kit/secret-checksum"
RELEASE_ID = "mlops-kit/release-id"
#: The order objects are applied in (kinds not listed come last, in file order).
APPLY_ORDER = ("Namespace", "Secret", "ConfigMap", "Service", "Deployment")
_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images"}


def manifests_dir() -> Path:
    """``k8s/`` of the project (the files a user may edit)."""
    folder = _paths.project_dir() / "k8s"
    if not (folder / "kustomization.yaml").is_file():
        raise K8sDeployError(f"No kustomization.yaml in {folder}: the manifests of the model server "
                          "live in the project's k8s/ folder.", reason="NotFound",
                          hint="run from the project folder or set MLOPS_KIT_PROJECT_DIR.")
    return folder


def load_manifests(folder: Path | None = None) -> list[dict]:
    """The objects of ``k8s/``, in the order of ``kustomization.yaml``, with its namespace set.

    Each object remembers its file under the key ``__source__`` (removed by :func:`render`)."""
    folder = Path(folder) if folder is not None else manifests_dir()
    kfile = folder / "kustomization.yaml"
    kustomization = _read_yaml_docs(kfile)[0] if kfile.is_file() else None
    if not isinstance(kustomization, dict):
        raise K8sDeployError(f"{kfile}: expected a Kustomization mapping; found {type(kustomization).__name__}.",
                          reason="Invalid")
    unknown = sorted(set(kustomization) - _KUSTOMIZATION_KEYS)
    if unknown:
        raise K8sDeployError(f"{kfile}: {', '.join(unknown)}: the kit reads only "
                          f"{', '.join(sorted(_KUSTOMIZATION_KEYS))}; found more.", reason="Invalid",
                          hint="keep other kustomize features in an overlay that uses k8s/ as its base.")
    resources = kustomization.get("resources") or []
    objects: list[dict] = []
    for entry in resources:
        path = folder / str(entry)
        if not path.is_file():
            raise K8sDeployError(f"{kfile}: resources: {entry}: expected a file in {folder}; found none.",
                              reason="NotFound")
        for doc in _read_yaml_docs(path):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                raise K8sDeployError(f"{path}: expected Kubernetes objects (mappings with kind); "
                                  f"found {doc!r:.60}.", reason="Invalid")
            if kustomization.get("namespace") and doc["kind"] != "Namespace":
                doc.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
            doc["__source__"] = str(path.relative_to(folder.parent) if folder.parent in path.parents else path)
            objects.append(doc)
    return objects


def _read_yaml_docs(path: Path) -> list[Any]:
    try:
        return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise K8sDeployError(f"{path}: not valid YAML: {exc}", reason="Invalid") from None


# --- the run's artifacts -----------------------------------------------------------------

def image_reference(image: Mapping[str, Any], source: str = _names.IMAGE) -> str:
    """``ref@digest``: the image pinned by content (a tag can move; a digest cannot)."""
    ref, digest = image.get("ref"), image.get("digest")
    if not isinstance(ref, str) or not ref:
        raise ArtifactError(f"{source}: ref must be an image reference such as 'mlops-kit/model:run-1'. "
                            f"Got {ref!r} instead.", path=source)
    if "@" in ref:
        return ref
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise ArtifactError(f"{source}: digest must be 'sha256:' and 64 hex digits. Got {digest!r} instead.",
                            path=source)
    return f"{ref}@{digest}"


def pull_policy(reference: str, params: RunParams, image_info: Mapping[str, Any] | None = None) -> str:
    """``Never`` for an image imported into the node's containerd (pulling could only fail, and
    ``ErrImageNeverPull`` says plainly that the import is missing); ``IfNotPresent`` when it
    comes from a registry. image.json's ``imported`` says which (``{"registry": ...}`` or
    ``{"containerd": ...}``); without it, a registry host other than docker.io in the reference
    or ``package.registry`` means a registry."""
    imported = (image_info or {}).get("imported")
    if isinstance(imported, dict):
        return "IfNotPresent" if imported.get("registry") else "Never"
    first = reference.split("/", 1)[0]
    registry_host = "/" in reference and ("." in first or ":" in first or first == "localhost") \
        and first != "docker.io"
    return "IfNotPresent" if params.package.registry or registry_host else "Never"


# --- secrets ----------------------------------------------------------------------------

def secret_values(names: list[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Values of the variables named in ``deploy.secret_env``: ``$NAME``, or the content of the
    file named by ``$NAME_FILE``. Only ever goes into a Kubernetes Secret."""
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        if name in environ:
            values[name] = environ[name]
        elif f"{name}_FILE" in environ:
            path = Path(environ[f"{name}_FILE"]).expanduser()
            try:
                values[name] = path.read_text(encoding="utf-8").rstrip("\n")
            except OSError as exc:
                raise K8sDeployError(f"deploy.secret_env: {name}_FILE names {str(path)!r}, which cannot be "
                                  f"read ({exc.strerror}).", reason="Invalid") from None
        else:
            missing.append(name)
    if missing:
        unset = "; ".join(f"neither ${m} nor ${m}_FILE is set" for m in missing)
        raise K8sDeployError(f"deploy.secret_env names {', '.join(missing)}, but {unset}.", reason="Invalid",
                          hint="export the variable (or NAME_FILE=path) before deploying; values never go "
                               "into parameter files.")
    return values


def secret_object(params: RunParams, values: Mapping[str, str]) -> dict:
    d = params.deploy
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": f"{d.name}-secrets", "namespace": d.namespace, "labels": _labels(d.name)},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode("utf-8")).decode("ascii") for k, v in sorted(values.items())},
    }


def admin_token_secret_object(params: RunParams, token: str) -> dict:
    """The Secret of the admin token the pods require on the admin port (the request log) and
    `mlops-kit monitor` sends (monitor/collect.py). Never in the ConfigMap, the rendered
    manifests or the release record: only here and in the cluster."""
    d = params.deploy
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": admin_token_secret(d.name), "namespace": d.namespace, "labels": _labels(d.name)},
        "type": "Opaque",
        "data": {ADMIN_TOKEN_KEY: base64.b64encode(token.encode("ascii")).decode("ascii")},
    }


def _admin_token_env(server: dict, name: str) -> None:
    """The server's ADMIN_TOKEN_ENV from the Deployment's admin token Secret, and from nowhere else.
    ``optional``: without the Secret (k8s/ applied by hand) the pod still serves predictions,
    and its admin port refuses every request."""
    ref = {"secretKeyRef": {"name": admin_token_secret(name), "key": ADMIN_TOKEN_KEY, "optional": True}}
    env = server.setdefault("env", [])
    entries = [e for e in env if e.get("name") == ADMIN_TOKEN_ENV]
    if not entries:
        env.append({"name": ADMIN_TOKEN_ENV, "valueFrom": ref})
    for entry in entries:
        entry.pop("value", None)
        entry["valueFrom"] = ref


# --- rendering --------------------------------------------------------------------------

def render(params: RunParams, *, image: str, model_sha256: str, run_id: str,
           templates: list[dict] | None = None, image_info: Mapping[str, Any] | None = None,
           secret_checksum: str | None = None) -> list[dict]:
    """The objects to apply for this run, in apply order (no Secret: see :func:`secret_object`).

    ``secret_checksum`` (:func:`secret_checksum`) goes into the pod template, so a change of a
    secret's value alone rolls the pods (they read secrets only at start)."""
    d, s = params.deploy, params.serve
    if d.node_port is not None and d.service_type != "NodePort":
        raise K8sDeployError(f"deploy.node_port must be unset when deploy.service_type is {d.service_type}. "
                          f"Got {d.node_port} instead.", reason="Invalid",
                          hint="set deploy.service_type: NodePort, or remove deploy.node_port.")
    objects = [copy.deepcopy(o) for o in (templates if templates is not None else load_manifests())]
    for obj in objects:
        obj.pop("__source__", None)
        _rename(obj, d.name)
        meta = obj.setdefault("metadata", {})
        if obj["kind"] == "Namespace":
            meta["name"] = d.namespace
        else:
            meta["namespace"] = d.namespace
    config = {
        "MLOPS_KIT_MAX_ROWS": str(s.max_rows),
        "MLOPS_KIT_MAX_BODY_BYTES": str(s.max_body_bytes),
        "MLOPS_KIT_UNKNOWN_CATEGORIES": s.unknown_categories,
        # serve.monitor: the request log goes to the pod's emptyDir (see k8s/deployment.yaml)
        "MLOPS_KIT_DRIFT_WINDOW": str(s.monitor.window),
        "MLOPS_KIT_LOG_SAMPLE": repr(float(s.monitor.sample)),
        "MLOPS_KIT_LOG_REQUESTS": REQUEST_LOG_DIR_IN_IMAGE,
        "MLOPS_KIT_LOG_MAX_FILE_BYTES": str(s.monitor.max_file_bytes),
        "MLOPS_KIT_LOG_MAX_TOTAL_BYTES": str(s.monitor.max_total_bytes),
        # the request log's files for `mlops-kit monitor`, through the pod proxy (mlops_kit/monitor/collect.py)
        "MLOPS_KIT_ADMIN_PORT": str(s.monitor.admin_port),
    }
    config_checksum = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    release_id = hashlib.sha256("|".join([image, model_sha256, config_checksum, ",".join(d.secret_env),
                                          secret_checksum or ""])
                                .encode()).hexdigest()[:16]
    for obj in objects:
        kind = obj["kind"]
        if kind == "ConfigMap" and ADMIN_TOKEN_ENV in (obj.get("data") or {}):
            raise K8sDeployError(f"k8s/configmap.yaml: {obj['metadata']['name']}: data must not hold "
                                 f"{ADMIN_TOKEN_ENV}. Got it instead.", reason="Invalid",
                                 hint=f"remove it: the admin token lives only in the Secret "
                                      f"{admin_token_secret(d.name)}, which the deploy makes.")
        if kind == "ConfigMap" and obj["metadata"]["name"] == f"{d.name}-config":
            obj["data"] = {**(obj.get("data") or {}), **config}
        elif kind == "Service" and obj["metadata"]["name"] == d.name:
            spec = obj.setdefault("spec", {})
            spec["type"] = d.service_type
            port = spec["ports"][0]
            port["port"] = d.port
            port.pop("nodePort", None)
            if d.service_type == "NodePort" and d.node_port is not None:
                port["nodePort"] = d.node_port
            exposed = [p.get("targetPort", p.get("port")) for p in spec["ports"]]
            if ADMIN_PORT_NAME in exposed or s.monitor.admin_port in exposed:
                raise K8sDeployError(f"k8s/service.yaml: spec.ports must not expose the admin port ({ADMIN_PORT_NAME}, "
                                     f"{s.monitor.admin_port}: the request log, what users sent). Got targetPorts "
                                     f"{exposed} instead.", reason="Invalid",
                                     hint="remove that port from the Service; `mlops-kit monitor` reads the log "
                                          "through the API server's pod proxy.")
        elif kind == "Deployment" and obj["metadata"]["name"] == d.name:
            spec = obj.setdefault("spec", {})
            spec["replicas"] = d.replicas
            spec["progressDeadlineSeconds"] = max(int(math.ceil(d.rollout_timeout)), 1)
            template = spec.setdefault("template", {})
            annotations = template.setdefault("metadata", {}).setdefault("annotations", {})
            annotations.update({RUN_ID: run_id, MODEL_SHA: model_sha256,
                                CONFIG_CHECKSUM: config_checksum, RELEASE_ID: release_id})
            if secret_checksum:
                annotations[SECRET_CHECKSUM] = secret_checksum
            containers = template.setdefault("spec", {}).get("containers") or []
            server = next((c for c in containers if c.get("name") == CONTAINER), None)
            if server is None:
                raise K8sDeployError(f"k8s/deployment.yaml: spec.template.spec.containers must hold a container "
                                  f"named {CONTAINER!r}. Got {[c.get('name') for c in containers]} instead.",
                                  reason="Invalid")
            server["image"] = image
            server["imagePullPolicy"] = pull_policy(image, params, image_info)
            _admin_token_env(server, d.name)
            for declared in server.get("ports") or []:
                if declared.get("name") == ADMIN_PORT_NAME:
                    declared["containerPort"] = s.monitor.admin_port
            for volume in template["spec"].get("volumes") or []:
                if volume.get("name") == REQUESTS_VOLUME and "emptyDir" in volume:
                    # the log's bound, and one file being written, in MiB
                    mib = -(-(s.monitor.max_total_bytes + s.monitor.max_file_bytes) // 2 ** 20)
                    volume["emptyDir"]["sizeLimit"] = f"{mib}Mi"
    return sort_for_apply(objects)


def sort_for_apply(objects: list[dict]) -> list[dict]:
    rank = {kind: i for i, kind in enumerate(APPLY_ORDER)}
    return sorted(objects, key=lambda o: rank.get(o.get("kind"), len(rank)))


def release_id_of(objects: list[dict]) -> str | None:
    for obj in objects:
        if obj.get("kind") == "Deployment":
            return obj["spec"]["template"]["metadata"].get("annotations", {}).get(RELEASE_ID)
    return None


def find(objects: list[dict], kind: str) -> dict | None:
    return next((o for o in objects if o.get("kind") == kind), None)


def to_yaml(objects: list[dict]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mlops-kit",
            "app.kubernetes.io/managed-by": "mlops-kit"}


def _rename(node: Any, name: str) -> Any:
    """Replace the placeholder name (``model-server``, ``model-server-*``) in values, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("image", "command", "args"):
                continue
            if isinstance(value, str):
                if value == BASE_NAME or value.startswith(BASE_NAME + "-"):
                    node[key] = name + value[len(BASE_NAME):]
            else:
                _rename(value, name)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, str):
                if value == BASE_NAME or value.startswith(BASE_NAME + "-"):
                    node[i] = name + value[len(BASE_NAME):]
            else:
                _rename(value, name)
    return node


def secret_checksum(values: Mapping[str, str]) -> str:
    """A digest of the Secret's names and values (never the values themselves), keyed with a
    fixed label so the annotation is no plain hash of a short secret."""
    import hmac

    text = json.dumps(sorted(values.items())).encode()
    return hmac.new(b"mlops-kit/secret-checksum", text, hashlib.sha256).hexdigest()
