"""Find the cluster: ``$KUBECONFIG``, else ``~/.kube/config``, else ``microk8s config``.

The user's own kubeconfig files are used as they are (a credential plugin there is the user's
choice, e.g. a cloud provider's). A kubeconfig that another program prints (``microk8s config``
here or on the team's server) is checked field by field first (:func:`parse_foreign_kubeconfig`):
only inline certificates or a token for one cluster, never a plugin, a file or a proxy.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from ..errors import K8sDeployError, UnsafeKubeconfig


def load_api_client(*, environ: Mapping[str, str] | None = None,
                    run: Callable[..., subprocess.CompletedProcess] = subprocess.run):
    """A ``kubernetes.client.ApiClient`` and a line saying where its configuration came from."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    environ = os.environ if environ is None else environ
    try:
        if environ.get("KUBECONFIG"):
            files = [f for f in environ["KUBECONFIG"].split(os.pathsep) if f]
            existing = [f for f in files if Path(f).expanduser().is_file()]
            if not existing:
                raise K8sDeployError(f"KUBECONFIG names {environ['KUBECONFIG']!r}, but no such file exists.",
                                  reason="NoKubeconfig",
                                  hint="point KUBECONFIG at a kubeconfig file, e.g. `microk8s config > ~/.kube/config`.")
            client = config.new_client_from_config(config_file=os.pathsep.join(existing))
            return client, f"kubeconfig {os.pathsep.join(existing)} (KUBECONFIG)"
        default = Path(environ.get("HOME", str(Path.home()))) / ".kube" / "config"
        if default.is_file():
            return config.new_client_from_config(config_file=str(default)), f"kubeconfig {default}"
        microk8s = shutil.which("microk8s", path=environ.get("PATH"))
        if microk8s:
            result = run([microk8s, "config"], capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                raise K8sDeployError(f"`microk8s config` failed: {(result.stderr or result.stdout).strip()[:500]}",
                                  reason="NoKubeconfig",
                                  hint="is MicroK8s running (`microk8s status --wait-ready`) and are you in the "
                                       "microk8s group (`sudo usermod -a -G microk8s $USER`, then log in again)?")
            checked = parse_foreign_kubeconfig(result.stdout, source="`microk8s config`")
            return client_from_config(checked, source="`microk8s config`"), "`microk8s config`"
    except ConfigException as exc:
        raise K8sDeployError(f"The kubeconfig cannot be used: {exc}", reason="NoKubeconfig") from None
    raise K8sDeployError("No Kubernetes cluster configured: KUBECONFIG is unset, ~/.kube/config does not exist "
                      "and `microk8s` is not on PATH.", reason="NoKubeconfig",
                      hint="install MicroK8s (`sudo snap install microk8s --classic`), or set KUBECONFIG; "
                           "deploy.target: local needs no cluster.")


def client_from_config(checked: "ForeignKubeconfig", *, source: str):
    """A ``kubernetes.client.ApiClient`` built in memory from a checked kubeconfig (the client
    keeps inline certificates in its own 0600 temporary files; the kit writes none)."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        return config.new_client_from_config_dict(checked.to_dict())
    except ConfigException as exc:
        raise K8sDeployError(f"The kubeconfig from {source} cannot be used: {exc}", reason="NoKubeconfig") from None


# --- a kubeconfig from another machine -----------------------------------------------------------

MAX_KUBECONFIG_BYTES = 1 << 20
_CLUSTER_FIELDS = ("server", "certificate-authority-data")
_USER_FIELDS = ("client-certificate-data", "client-key-data", "token")
_CONTEXT_FIELDS = ("cluster", "user", "namespace")
_TOP_FIELDS = ("apiVersion", "kind", "clusters", "contexts", "users", "current-context", "preferences")
# why a field is refused: the dangerous ones by name; any other unknown field is refused too
_REFUSED = {
    "exec": "a credential plugin: the Kubernetes client would run its command on THIS machine",
    "auth-provider": "an authentication provider (gcp, azure, oidc): the client would run it on THIS machine",
    "client-certificate": "a file on THIS machine (only inline client-certificate-data is accepted)",
    "client-key": "a file on THIS machine (only inline client-key-data is accepted)",
    "certificate-authority": "a file on THIS machine (only inline certificate-authority-data is accepted)",
    "tokenFile": "a file on THIS machine (only an inline token is accepted)",
    "proxy-url": "a proxy: the API traffic, credentials included, would go elsewhere",
    "insecure-skip-tls-verify": "the API server's certificate would not be checked",
    "username": "basic authentication (only a certificate or a token is accepted)",
    "password": "basic authentication (only a certificate or a token is accepted)",
    "as": "impersonation of another user", "as-groups": "impersonation of other groups",
    "as-uid": "impersonation of another user", "as-user-extra": "impersonation of another user",
    "extensions": "extensions (data for plugins)",
}
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,8192}")


@dataclass(frozen=True, repr=False)
class ForeignKubeconfig:
    """The only kubeconfig the kit builds a client from when it comes from another machine: one
    cluster (its URL and, optionally, its CA certificate inline) and one user with an inline
    client certificate and key, or a token. Nothing that runs or reads anything here."""

    server: str
    certificate_authority_data: str | None = None
    client_certificate_data: str | None = None
    client_key_data: str | None = None
    token: str | None = None
    namespace: str | None = None

    def with_server(self, url: str) -> ForeignKubeconfig:
        return dataclasses.replace(self, server=url)

    def to_dict(self) -> dict:
        """A kubeconfig made of these fields only (what ``new_client_from_config_dict`` gets)."""
        cluster = {"server": self.server}
        if self.certificate_authority_data:
            cluster["certificate-authority-data"] = self.certificate_authority_data
        user = ({"token": self.token} if self.token else
                {"client-certificate-data": self.client_certificate_data, "client-key-data": self.client_key_data})
        context = {"cluster": "cluster", "user": "user", **({"namespace": self.namespace} if self.namespace else {})}
        return {"apiVersion": "v1", "kind": "Config", "current-context": "context",
                "clusters": [{"name": "cluster", "cluster": cluster}], "users": [{"name": "user", "user": user}],
                "contexts": [{"name": "context", "context": context}]}

    def __repr__(self) -> str:       # never the credentials
        kind = "token" if self.token else "client certificate"
        return f"ForeignKubeconfig(server={self.server!r}, {kind})"


def parse_foreign_kubeconfig(text: str, *, source: str) -> ForeignKubeconfig:
    """The kubeconfig ``text`` printed by ``source`` on another machine, checked field by field
    (:class:`ForeignKubeconfig`); anything else is :class:`UnsafeKubeconfig` naming the field."""

    def refuse(field: str, found: str, hint: str | None = None) -> UnsafeKubeconfig:
        return UnsafeKubeconfig(f"The kubeconfig from {source} must hold only certificate or token credentials for "
                                f"one cluster. Got {field}: {found} instead; it was refused before any Kubernetes "
                                "client was built (nothing in it was run or read).", field=field, source=source,
                                hint=hint)

    def mapping(value: Any, field: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise refuse(field, f"{type(value).__name__} where a mapping belongs")
        for key in value:
            if key not in allowed:
                why = _REFUSED.get(str(key), "a field the kit does not accept here (accepted: "
                                   + ", ".join(allowed) + ")")
                raise refuse(f"{field}.{key}" if field else str(key), why)
        return value

    def text_field(value: Any, field: str, pattern: re.Pattern | None = None) -> str:
        if not isinstance(value, str) or not value or (pattern and not pattern.fullmatch(value)):
            shown = type(value).__name__ if not isinstance(value, str) else "a malformed value (not shown)"
            raise refuse(field, shown)
        return value

    def one(value: Any, field: str, inner: str, allowed: tuple[str, ...]) -> tuple[str, dict]:
        if not isinstance(value, list) or len(value) != 1:
            found = f"{len(value)} entries" if isinstance(value, list) else type(value).__name__
            raise refuse(field, f"{found} where exactly one entry belongs")
        entry = mapping(value[0], f"{field}[0]", ("name", inner))
        name = text_field(entry.get("name"), f"{field}[0].name")
        return name, mapping(entry.get(inner, {}), f"{field}[0].{inner}", allowed)

    if len(text.encode(errors="replace")) > MAX_KUBECONFIG_BYTES:
        raise refuse("(the document)", f"more than {MAX_KUBECONFIG_BYTES} bytes")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        raise refuse("(the document)", "text that is not YAML") from None
    document = mapping(document, "", _TOP_FIELDS)
    if document.get("kind", "Config") != "Config" or document.get("apiVersion", "v1") != "v1":
        raise refuse("kind", "not a v1 Config")
    cluster_name, cluster = one(document.get("clusters"), "clusters", "cluster", _CLUSTER_FIELDS)
    user_name, user = one(document.get("users"), "users", "user", _USER_FIELDS)
    context_name, context = one(document.get("contexts"), "contexts", "context", _CONTEXT_FIELDS)
    if document.get("current-context", context_name) != context_name:
        raise refuse("current-context", "a context the file does not define")
    if context.get("cluster") != cluster_name or context.get("user") != user_name:
        raise refuse("contexts[0].context", "a cluster or user the file does not define")
    server = text_field(cluster.get("server"), "clusters[0].cluster.server")
    try:
        url = urllib.parse.urlsplit(server)
        _ = url.port                          # a bad port raises ValueError
    except ValueError:
        url = None
    if url is None or url.scheme not in ("https", "http") or not url.hostname:
        raise refuse("clusters[0].cluster.server", f"{server[:100]!r}, not an https:// URL")

    def inline(value: Any, field: str) -> str | None:
        if value is None:
            return None
        try:
            base64.b64decode(text_field(value, field), validate=True)
        except (binascii.Error, ValueError):
            raise refuse(field, "a value that is not base64 (not shown)") from None
        return value

    cert = inline(user.get("client-certificate-data"), "users[0].user.client-certificate-data")
    key = inline(user.get("client-key-data"), "users[0].user.client-key-data")
    token = user.get("token")
    if token is not None:
        token = text_field(token, "users[0].user.token", _TOKEN_RE)
    if not (token and not cert and not key) and not (cert and key and not token):
        raise refuse("users[0].user", "neither a token alone nor client-certificate-data with client-key-data")
    namespace = context.get("namespace")
    return ForeignKubeconfig(
        server=server, certificate_authority_data=inline(cluster.get("certificate-authority-data"),
                                                         "clusters[0].cluster.certificate-authority-data"),
        client_certificate_data=cert, client_key_data=key, token=token,
        namespace=None if namespace is None else text_field(namespace, "contexts[0].context.namespace",
                                                            re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")))
