"""The request log collected from every replica of a MicroK8s deployment, through the Kubernetes API.

Each pod's server serves its log on its admin port (``serve.monitor.admin_port``, a named
``admin`` containerPort that the Service does not expose; ``mlops_kit/serving/_admin.py``).
:func:`collect` finds the pods by the Deployment's selector and reads each one's listing and
files through the API server's pod proxy (``GET .../pods/POD:PORT/proxy/requests``): the
API's RBAC (``pods/proxy``) decides who may read what users sent; no ``kubectl cp``, no
port-forward. Each request carries the Deployment's admin token (the Secret
``<deployment>-admin-token`` the deploy keeps, read through the API: RBAC ``get`` on that one
Secret) in the header the server requires (:data:`~mlops_kit.serving.ADMIN_TOKEN_HEADER`), so a
pod of the cluster that reaches the port directly gets nothing. Each replica's files go to their
own subfolder (``<dest>/<pod>/``: every pod's server is pid 1, so file names repeat across
pods), which :func:`~.requestlog.read_request_log` reads together.

What a pod answers is hostile input: its listing is bounded in bytes and files, every name
must match the log's own file-name pattern (no ``/``, no ``..``), every size must fit in what
is left of the reader's bound, and a file shorter than listed is refused; each refusal names
the pod. Files are written atomically, and a collection replaces the previous one whole only
when it is complete.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .. import _atomic
from ..errors import ArtifactError, K8sDeployError
from ..serving import ADMIN_TOKEN, ADMIN_TOKEN_HEADER
from .requestlog import DEFAULT_MAX_READ_BYTES, FILE_NAME

#: the container port the server's admin listener is declared as (k8s/deployment.yaml, deploy/k8s/_render.py)
ADMIN_PORT_NAME = "admin"
#: the key of the admin token in its Secret (:func:`admin_token_secret`)
ADMIN_TOKEN_KEY = "token"
#: bytes of a pod's listing at most
MAX_LISTING_BYTES = 1024 * 1024
#: files one pod may list at most (the writer keeps max_total_bytes / max_file_bytes of them: 16 by default)
MAX_FILES = 4096
#: a pod name as Kubernetes makes them (a DNS subdomain): never a path
POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
LISTING_PATH = "requests"

Log = Callable[[str], None]


def collect(cluster: Any, namespace: str, deployment: str, dest: Path, *,
            max_bytes: int = DEFAULT_MAX_READ_BYTES, log: Log | None = None) -> Path:
    """Copy the request log of every running pod of ``deployment`` into ``dest/<pod>/`` (the
    previous collection in ``dest`` is replaced once this one is complete); returns ``dest``.
    Every file of every pod together is at most ``max_bytes`` (the reader's bound)."""
    say = log or (lambda line: None)
    found = cluster.get("Deployment", namespace, deployment)
    if found is None:
        raise K8sDeployError(f"Deployment {namespace}/{deployment} must exist to collect its request log. Got none "
                             "instead.", reason="NotFound", kind="Deployment", namespace=namespace, name=deployment,
                             hint="deploy the model first (`mlops-kit deploy RUN_ID`), or pass --log DIR.")
    selector = ((found.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not selector:
        raise K8sDeployError(f"Deployment {namespace}/{deployment} must select its pods by labels "
                             "(spec.selector.matchLabels). Got none instead.", reason="Invalid",
                             kind="Deployment", namespace=namespace, name=deployment)
    pods = [p for p in cluster.list_pods(namespace, selector) if (p.get("status") or {}).get("phase") == "Running"]
    if not pods:
        raise K8sDeployError(f"Deployment {namespace}/{deployment} must have a running pod to collect the request "
                             "log from. Got none instead.", reason="NotFound", kind="Deployment",
                             namespace=namespace, name=deployment, hint="`mlops-kit deploy status` shows the pods.")
    auth = _Auth(cluster, namespace, deployment)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        left = max_bytes
        for pod in pods:
            name = _pod_name(pod, namespace)
            port = _admin_port(pod, namespace, name)
            files = _listing(cluster, namespace, name, port, auth)
            where = f"pod {namespace}/{name}"
            (staging / name).mkdir()
            for entry in files:
                if entry["size"] > left:
                    raise ArtifactError(f"{where}: the request log of every pod together must be at most {max_bytes} "
                                        f"bytes (the reader's bound). Got more instead ({entry['name']}: "
                                        f"{entry['size']} bytes listed, {left} left).",
                                        hint="monitor a shorter window: lower serve.monitor.max_total_bytes.")
                body = _get(cluster, namespace, name, port, f"{LISTING_PATH}/{entry['name']}", auth,
                            max_bytes=entry["size"])
                if len(body) < entry["size"]:
                    raise ArtifactError(f"{where}: {entry['name']} must be {entry['size']} bytes long (as listed). "
                                        f"Got {len(body)} bytes instead.")
                # longer than listed: the writer appended since the listing; what was listed is kept
                # (a line cut there is the torn last line the reader skips)
                _atomic.write_bytes(staging / name / entry["name"], body[:entry["size"]])
                left -= entry["size"]
            say(f"request log: {len(files)} file(s), {sum(f['size'] for f in files)} bytes from pod {name}")
        _replace(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def collect_for(params: Any, dest: Path, *, log: Log | None = None, api_client: Any = None) -> Path:
    """:func:`collect` for the deployment ``params.deploy`` names, through the team's server's
    SSH tunnel when ``server.host`` is set (as deploy reaches it), else the local kubeconfig."""
    from ..kube import Cluster, load_api_client

    def run(client: Any, description: str) -> Path:
        return collect(Cluster(client, description=description), params.deploy.namespace, params.deploy.name,
                       dest, log=log)

    if api_client is not None:
        return run(api_client, "the given API client")
    if getattr(params.server, "host", None):
        from ..server.kube import server_api_client

        with server_api_client(params.server, log=log) as client:
            return run(client, f"the API of {params.server.host}")
    client, description = load_api_client()
    return run(client, description)


def _pod_name(pod: dict, namespace: str) -> str:
    name = (pod.get("metadata") or {}).get("name")
    if type(name) is not str or POD_NAME.fullmatch(name) is None:
        raise ArtifactError(f"A pod of {namespace} must have a Kubernetes pod name (lower-case letters, digits, "
                            f"'-' and '.'). Got {str(name)[:100]!r} instead.")
    return name


def _admin_port(pod: dict, namespace: str, name: str) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == ADMIN_PORT_NAME and type(port.get("containerPort")) is int:
                return port["containerPort"]
    raise K8sDeployError(f"pod {namespace}/{name} must declare a container port named {ADMIN_PORT_NAME!r} (the "
                         "request log's admin port). Got none instead.", reason="Invalid", kind="Pod",
                         namespace=namespace, name=name,
                         hint="the pod was deployed by an older kit: deploy the model again.")


def admin_token_secret(deployment: str) -> str:
    """The name of the Secret that holds the admin token of ``deployment``'s pods (made by the
    deploy, ``deploy/k8s/_render.admin_token_secret_object``). A fixed name, never one the
    Deployment's spec names: whoever may edit the Deployment must not make the collector read
    another Secret and send it to a pod of theirs."""
    return f"{deployment}-admin-token"


def admin_token(cluster: Any, namespace: str, deployment: str) -> str:
    """The admin token of ``deployment``'s pods, from its Secret through the API (checked: it
    goes into a request header)."""
    name = admin_token_secret(deployment)
    where = f"Secret {namespace}/{name}"
    found = cluster.get("Secret", namespace, name)
    if found is None:
        raise K8sDeployError(f"{where} must exist (the admin token that reads the request log). Got none instead.",
                             reason="NotFound", kind="Secret", namespace=namespace, name=name,
                             hint="the model was deployed by an older kit: deploy it again (`mlops-kit deploy "
                                  "RUN_ID`); the deploy creates the Secret and the pods read it.")
    token = token_in(found)
    if token is None:   # what is wrong, never the value
        raise K8sDeployError(f"{where}: data.{ADMIN_TOKEN_KEY} must be 32 to 256 characters of A-Z, a-z, 0-9, '-' "
                             "and '_' (base64-encoded). Got something else instead.", reason="Invalid",
                             kind="Secret", namespace=namespace, name=name,
                             hint="delete the Secret and deploy again (a new token), then restart the pods.")
    return token


def token_in(secret: dict | None) -> str | None:
    """The admin token a Secret object holds (base64 ``data.token``), when it is a valid one."""
    raw = ((secret or {}).get("data") or {}).get(ADMIN_TOKEN_KEY)
    try:
        token = base64.b64decode(raw, validate=True).decode("ascii") if type(raw) is str else None
    except (binascii.Error, UnicodeDecodeError):
        return None
    return token if token is not None and ADMIN_TOKEN.fullmatch(token) else None


class _Auth:
    """The header that carries the Deployment's admin token, and the Secret it came from."""

    def __init__(self, cluster: Any, namespace: str, deployment: str):
        self.deployment = deployment
        self.secret = f"{namespace}/{admin_token_secret(deployment)}"
        self.headers = {ADMIN_TOKEN_HEADER: admin_token(cluster, namespace, deployment)}


def _get(cluster: Any, namespace: str, name: str, port: int, path: str, auth: _Auth, *, max_bytes: int) -> bytes:
    """GET through the pod proxy with the admin token; the pod's refusal of it said as such."""
    try:
        return cluster.pod_proxy_get(namespace, name, port, path, max_bytes=max_bytes, headers=auth.headers)
    except K8sDeployError as exc:
        if exc.raw_reason == "PodAnswered" and exc.status in (401, 403):
            raise K8sDeployError(f"pod {namespace}/{name} must take the admin token of Secret {auth.secret}. Got a "
                                 f"refusal instead ({exc.message})", reason="Forbidden", kind="Pod",
                                 namespace=namespace, name=name, status=exc.status,
                                 hint=f"the pod started before its Secret changed, or without it: restart the pods "
                                      f"(`kubectl -n {namespace} rollout restart deployment/{auth.deployment}`) "
                                      "or deploy again.") from None
        raise


def _listing(cluster: Any, namespace: str, name: str, port: int, auth: _Auth) -> list[dict]:
    """The pod's listing, checked: at most MAX_FILES entries of a log file name and a size."""
    where = f"pod {namespace}/{name}"
    body = _get(cluster, namespace, name, port, LISTING_PATH, auth, max_bytes=MAX_LISTING_BYTES)
    if len(body) > MAX_LISTING_BYTES:
        raise ArtifactError(f"{where}: the request log's listing must be at most {MAX_LISTING_BYTES} bytes. Got more "
                            "instead.")
    try:
        files = json.loads(body)
    except ValueError:
        raise ArtifactError(f"{where}: the request log's listing must be JSON (a list of name and size). Got "
                            f"{body[:80]!r} instead.") from None
    if type(files) is not list:
        raise ArtifactError(f"{where}: the request log's listing must be a list of name and size. Got "
                            f"{type(files).__name__} instead.")
    if len(files) > MAX_FILES:
        raise ArtifactError(f"{where}: the request log's listing must hold at most {MAX_FILES} files. Got "
                            f"{len(files)} instead.")
    seen = set()
    for entry in files:
        if type(entry) is not dict or entry.keys() != {"name", "size"}:
            raise ArtifactError(f"{where}: each entry of the request log's listing must be an object of exactly "
                                f"name and size. Got {str(entry)[:100]!r} instead.")
        file, size = entry["name"], entry["size"]
        if type(file) is not str or FILE_NAME.fullmatch(file) is None:
            raise ArtifactError(f"{where}: a file name of the request log must be requests-<yyyymmddTHHMMSS>-<pid>-<n>"
                                f".jsonl (no folder). Got {str(file)[:100]!r} instead.")
        if type(size) is not int or size < 0:
            raise ArtifactError(f"{where}: the size of {file} must be a number of bytes. Got {str(size)[:40]!r} "
                                "instead.")
        if file in seen:
            raise ArtifactError(f"{where}: each file of the request log must be listed once. Got {file} twice "
                                "instead.")
        seen.add(file)
    return files


def _replace(staging: Path, dest: Path) -> None:
    """``staging`` becomes ``dest``; the previous ``dest`` goes only once the new one is in place."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
    staging.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
