"""The server's Kubernetes API through an SSH tunnel, with the kubeconfig of ``microk8s config``.

The kubeconfig is read over ssh into memory and never written by the kit (not to a run
record, a log or a notebook); its API server URL is rewritten to the local end of a tunnel
to the same host and port as the server sees them (MicroK8s: 127.0.0.1:16443, whose
certificate names 127.0.0.1). The kubernetes client keeps inline certificates in its own
0600 temporary files, removed when the process ends.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable, Iterator

from ..errors import ServerError
from .._terminal import printable
from ._ssh import SSH
from ._tunnel import Tunnel


def read_kubeconfig(ssh: SSH):
    """The kubeconfig ``microk8s config`` prints on the server, checked field by field
    (:func:`mlops_kit.kube.parse_foreign_kubeconfig`: inline certificates or a token for
    one cluster; a credential plugin, a file, a proxy is refused before any client exists)."""
    from ..kube import parse_foreign_kubeconfig

    proc = ssh.run("microk8s config", check=False, step="microk8s config")
    if proc.returncode != 0:
        text = printable((proc.stderr.strip() or proc.stdout.strip())[-300:])
        fix = (f"on the server: sudo usermod -a -G microk8s {ssh.target.user}, then log in again"
               if "permission" in text.lower() else "is MicroK8s installed and running? (`mlops-kit server check`)")
        raise ServerError(f"`microk8s config` must print the kubeconfig on {ssh.target}. Got exit {proc.returncode} "
                          f"instead: {text}", host=ssh.target.url, check="microk8s", fix=fix)
    return parse_foreign_kubeconfig(proc.stdout, source=f"`microk8s config` on {ssh.target}")


@contextlib.contextmanager
def server_api_client(server, *, log: Callable[[str], None] | None = None) -> Iterator:
    """A ``kubernetes.client.ApiClient`` for the server's API, valid inside the ``with``."""
    from ..kube import client_from_config

    ssh = SSH.from_params(server)
    config = read_kubeconfig(ssh)
    url = urllib.parse.urlsplit(config.server)
    remote_host = url.hostname or "127.0.0.1"
    remote_port = url.port or (443 if url.scheme == "https" else 80)
    # the API server listens on the server itself: reach it as the server does
    if remote_host not in ("127.0.0.1", "localhost", "::1"):
        remote_host = "127.0.0.1"
    with Tunnel(ssh, remote_port, remote_host=remote_host) as port:
        local = urllib.parse.urlunsplit((url.scheme, f"127.0.0.1:{port}", url.path, "", ""))
        try:
            client = client_from_config(config.with_server(local), source=f"`microk8s config` on {ssh.target}")
        finally:
            config = None         # drop our reference to the credentials
        if log:
            log(f"cluster: the API of {ssh.target} ({remote_host}:{remote_port} there) through an SSH tunnel "
                f"at 127.0.0.1:{port}, kubeconfig from `microk8s config` (in memory)")
        try:
            yield client
        finally:
            client.close()
