"""The one place that talks to the Kubernetes API (the I/O boundary).

:class:`Cluster` wraps an injectable ``kubernetes.client.ApiClient`` (the official client;
tests pass one pointed at a fake API server) and turns the API's failures into
:class:`~mlops_kit.errors.K8sDeployError` with a plain message: unreachable server, rejected
credentials, missing permission, conflicts, invalid objects. Objects are plain dicts.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from ..errors import K8sDeployError

FIELD_MANAGER = "mlops-kit"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
#: kind -> (API class, method suffix, namespaced)
KINDS = {
    "Namespace": ("CoreV1Api", "namespace", False),
    "ConfigMap": ("CoreV1Api", "namespaced_config_map", True),
    "Secret": ("CoreV1Api", "namespaced_secret", True),
    "Service": ("CoreV1Api", "namespaced_service", True),
    "Deployment": ("AppsV1Api", "namespaced_deployment", True),
    "Job": ("BatchV1Api", "namespaced_job", True),
    "PersistentVolumeClaim": ("CoreV1Api", "namespaced_persistent_volume_claim", True),
}
_TIMEOUT = (10, 60)


class Cluster:
    """Plain-dict access to the API server through ``api_client``."""

    def __init__(self, api_client, *, description: str = "the given API client"):
        from kubernetes import client

        self.api_client = api_client
        self.description = description
        self._apis = {"CoreV1Api": client.CoreV1Api(api_client), "AppsV1Api": client.AppsV1Api(api_client),
                      "BatchV1Api": client.BatchV1Api(api_client)}

    @property
    def server(self) -> str:
        return str(getattr(self.api_client.configuration, "host", "?"))

    # --- objects ---------------------------------------------------------------------

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        """The live object, or None when it does not exist."""
        try:
            return self._call("read", kind, namespace, name)
        except K8sDeployError as exc:
            if exc.reason == "NotFound":
                return None
            raise

    def apply(self, obj: dict, *, force: bool = False) -> dict:
        """Server-side apply (field manager ``mlops-kit``): creates or updates ``obj``."""
        meta = obj["metadata"]
        return self._call("patch", obj["kind"], meta.get("namespace"), meta["name"], body=obj,
                          field_manager=FIELD_MANAGER, force=force, _content_type=APPLY_CONTENT_TYPE)

    def create(self, obj: dict) -> dict:
        """Create ``obj`` (a Conflict when it exists): for objects made once, such as a Job."""
        kind, meta = obj["kind"], obj["metadata"]
        api, suffix, namespaced = KINDS.get(kind, (None, None, None))
        if api is None:
            return self._call("create", kind, meta.get("namespace"), meta["name"])   # the kind error
        args = (meta["namespace"], obj) if namespaced else (obj,)
        return self._invoke(api, f"create_{suffix}", "create", kind, meta.get("namespace"), meta["name"], *args,
                            field_manager=FIELD_MANAGER)

    def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        """Delete; False when it was already absent."""
        try:
            self._call("delete", kind, namespace, name, propagation_policy="Foreground"
                       if kind != "Namespace" else None)
            return True
        except K8sDeployError as exc:
            if exc.reason == "NotFound":
                return False
            raise

    def list_pods(self, namespace: str, selector: dict[str, str]) -> list[dict]:
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        data = self._invoke("CoreV1Api", "list_namespaced_pod", "list", "Pod", namespace, None,
                            namespace, label_selector=label_selector)
        pods = data.get("items") or []
        # (a server that ignores label selectors must not mix in other pods)
        return [p for p in pods if all((p.get("metadata", {}).get("labels") or {}).get(k) == v
                                       for k, v in selector.items())]

    def list_events(self, namespace: str, involved_name: str | None = None) -> list[dict]:
        kwargs = {"field_selector": f"involvedObject.name={involved_name}"} if involved_name else {}
        try:
            data = self._invoke("CoreV1Api", "list_namespaced_event", "list", "Event", namespace, None,
                                namespace, **kwargs)
        except K8sDeployError as exc:
            if exc.reason in ("NotFound", "Forbidden"):
                return []   # events only explain; never a reason to fail
            raise
        events = data.get("items") or []
        if involved_name:
            events = [e for e in events if (e.get("involvedObject") or {}).get("name") == involved_name]
        return events

    def pod_log(self, namespace: str, pod: str, container: str, *, previous: bool = True, tail: int | None = 20,
                quiet: bool = False) -> str | None:
        """The container's log (its last ``tail`` lines; None: all). When it cannot be read: a
        line saying why, or None with ``quiet``."""
        try:
            response = self._apis["CoreV1Api"].read_namespaced_pod_log(
                pod, namespace, container=container, previous=previous, tail_lines=tail,
                _preload_content=False, _request_timeout=_TIMEOUT)
            return _body(response).decode("utf-8", "replace")
        except Exception as exc:  # noqa: BLE001 - the log only explains a failure already found
            return None if quiet else f"(the log could not be read: {getattr(exc, 'reason', None) or exc})"

    def service_post(self, namespace: str, service: str, port: int | str, path: str, body: Any) -> Any:
        """POST JSON to a Service through the API server's service proxy; the parsed answer."""
        resource = (f"/api/v1/namespaces/{quote(namespace)}/services/{quote(service)}:{port}/proxy/"
                    f"{path.lstrip('/')}")
        status, data = self._raw("POST", resource, body)
        if not 200 <= status < 300:
            raise K8sDeployError(f"POST {path} through Service {namespace}/{service} answered {status}: "
                              f"{data[:500].decode('utf-8', 'replace')}", reason="SmokeTestFailed",
                              kind="Service", namespace=namespace, name=service, status=status)
        try:
            return json.loads(data)
        except ValueError:
            raise K8sDeployError(f"POST {path} through Service {namespace}/{service} answered with no JSON: "
                              f"{data[:200]!r}", reason="SmokeTestFailed", kind="Service",
                              namespace=namespace, name=service) from None

    def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str, *, max_bytes: int,
                      headers: dict[str, str] | None = None) -> bytes:
        """GET ``path`` of a pod's ``port`` through the API server's pod proxy (RBAC: ``pods/proxy``
        decides who may), with ``headers`` added, its body read as it streams and cut at
        ``max_bytes`` + 1 bytes (a longer body is the caller's to refuse: it sees more than it
        allowed). Not 2xx: a :class:`K8sDeployError` naming the pod; when the answer is the pod's own
        (not the API's ``Status``), its ``raw_reason`` is ``PodAnswered``."""
        from urllib3.exceptions import HTTPError

        resource = (f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}:{int(port)}/proxy/"
                    f"{path.lstrip('/')}")
        where = dict(verb="get", kind="Pod", namespace=namespace, name=f"{pod} (port {port}, {path})")
        client = self.api_client
        headers = {**(headers or {}), "Accept": "application/json, application/x-ndjson"}
        try:
            if hasattr(client, "param_serialize"):      # kubernetes >= 33: call_api does not preload
                m, url, h, b, post = client.param_serialize(method="GET", resource_path=resource,
                                                            header_params=headers, auth_settings=["BearerToken"])
                response = client.call_api(m, url, header_params=h, body=b, post_params=post,
                                           _request_timeout=_TIMEOUT).response
            else:                                       # older generated clients
                from kubernetes.client.exceptions import ApiException
                try:
                    response = client.call_api(resource, "GET", header_params=headers, auth_settings=["BearerToken"],
                                               _preload_content=False, _return_http_data_only=True,
                                               _request_timeout=_TIMEOUT)
                except ApiException as exc:
                    raise self._proxy_error(exc.status, exc.body, where) from None
            try:
                if not 200 <= response.status < 300:
                    raise self._proxy_error(response.status, response.read(64 * 1024), where)
                chunks, size = [], 0
                for chunk in response.stream(64 * 1024, decode_content=True):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        break
                return b"".join(chunks)[:max_bytes + 1]
            finally:
                response.close()   # a body cut short must not go back to the pool half read
        except (HTTPError, OSError) as exc:
            raise self.unreachable(exc) from None

    def _proxy_error(self, status: int, body: Any, where: dict) -> K8sDeployError:
        """The API's own refusal (a ``Status`` object: RBAC, no such pod) as :meth:`error` says it;
        anything else is what the pod answered through the proxy."""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("kind") == "Status":
            return self.error(status, body, **where)
        said = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), str) else text
        return K8sDeployError(f"pod {where['namespace']}/{where['name']} answered {status}: {said[:500]}",
                              reason="PodAnswered", kind="Pod", namespace=where["namespace"], name=where["name"],
                              status=status)

    # --- plumbing --------------------------------------------------------------------

    def _call(self, verb: str, kind: str, namespace: str | None, name: str, **kwargs) -> dict:
        if kind not in KINDS:
            raise K8sDeployError(f"kind must be one of {', '.join(KINDS)}. Got {kind!r} instead.", reason="Invalid",
                              kind=kind, namespace=namespace, name=name)
        api, suffix, namespaced = KINDS[kind]
        args = (name, namespace) if namespaced else (name,)
        if "body" in kwargs:
            args = (*args, kwargs.pop("body"))
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return self._invoke(api, f"{verb}_{suffix}", verb, kind, namespace, name, *args, **kwargs)

    def _invoke(self, api: str, method: str, verb: str, kind: str, namespace: str | None, name: str | None,
                *args, **kwargs) -> dict:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = getattr(self._apis[api], method)(*args, _preload_content=False,
                                                        _request_timeout=_TIMEOUT, **kwargs)
        except ApiException as exc:
            raise self.error(exc.status, exc.body, verb=verb, kind=kind, namespace=namespace, name=name) from None
        except (HTTPError, OSError) as exc:
            raise self.unreachable(exc) from None
        data = _body(response)
        return json.loads(data) if data else {}

    def _raw(self, method: str, resource: str, body: Any) -> tuple[int, bytes]:
        from urllib3.exceptions import HTTPError

        client = self.api_client
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            if hasattr(client, "param_serialize"):      # kubernetes >= 33
                m, url, h, b, post = client.param_serialize(method=method, resource_path=resource,
                                                            header_params=headers, body=body,
                                                            auth_settings=["BearerToken"])
                response = client.call_api(m, url, header_params=h, body=b, post_params=post,
                                           _request_timeout=_TIMEOUT)
                response.read()
                return response.status, response.data or b""
            from kubernetes.client.exceptions import ApiException
            try:                                        # older generated clients
                response = client.call_api(resource, method, header_params=headers, body=body,
                                           auth_settings=["BearerToken"], _preload_content=False,
                                           _return_http_data_only=True, _request_timeout=_TIMEOUT)
            except ApiException as exc:
                return exc.status, (exc.body or "").encode() if isinstance(exc.body, str) else (exc.body or b"")
            return response.status, response.data or b""
        except (HTTPError, OSError) as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, exc: BaseException) -> K8sDeployError:
        reason = getattr(exc, "reason", None) or exc
        return K8sDeployError(f"The Kubernetes API server at {self.server} cannot be reached ({self.description}): "
                           f"{reason}", reason="Unreachable",
                           hint="is the cluster running (`microk8s status --wait-ready`)? Is KUBECONFIG the "
                                "right file?")

    def error(self, status: int | None, body: Any, *, verb: str, kind: str, namespace: str | None,
              name: str | None) -> K8sDeployError:
        message, api_reason = _status_message(body)
        where = f"{kind} {namespace + '/' if namespace else ''}{name or ''}".strip()
        fields = dict(kind=kind, namespace=namespace, name=name, status=status)
        if not status:
            return self.unreachable(Exception(message))
        if status == 401:
            return K8sDeployError(f"The API server at {self.server} rejected the credentials ({self.description}): "
                               f"{message}", reason="Unauthorized", hint="the kubeconfig's token or certificate "
                               "is wrong or expired; `microk8s config` prints a fresh one.", **fields)
        if status == 403:
            return K8sDeployError(f"Not allowed to {verb} {where}: {message}", reason="Forbidden",
                               hint="the kubeconfig's user lacks this permission (RBAC); ask for it, or use "
                                    "`microk8s config` (the cluster admin).", **fields)
        if status == 404:
            return K8sDeployError(f"{where} does not exist: {message}", reason="NotFound", **fields)
        if status == 409:
            return K8sDeployError(f"Conflict on {verb} {where}: {message}", reason="Conflict",
                               hint="another tool changed these fields (`kubectl edit`, `kubectl scale`); "
                                    "undo that change, or deploy with force_conflicts=True "
                                    "(`--force-conflicts`) to take them over.", **fields)
        if status == 422:
            return K8sDeployError(f"The API server refused {where}: {message}", reason="Invalid", **fields)
        return K8sDeployError(f"The API server answered {status} ({api_reason or 'error'}) to {verb} {where}: "
                           f"{message}", reason=api_reason or "ApiError", **fields)


def _body(response) -> bytes:
    data = getattr(response, "data", None)
    if data is None and hasattr(response, "read"):
        data = response.read()
    return data or b""


def _status_message(body: Any) -> tuple[str, str | None]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        status = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return (str(body)[:500] or "no details"), None
    if isinstance(status, dict):
        return str(status.get("message") or "no details")[:1000], status.get("reason")
    return str(body)[:500], None
