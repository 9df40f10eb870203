"""05_deploy: where the packaged model runs.

``mlops_kit.deploy.local`` runs it on this machine (``deploy.target: local``);
``mlops_kit.deploy.k8s`` deploys it to Kubernetes / MicroK8s (``deploy.target: microk8s``).
The functions here pick the one ``params.deploy.target`` names; the CLI, the 05_deploy
notebook and the DeployPanel all call them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

Log = Callable[[str], None]


def target_module(params: Any):
    """The module of ``params.deploy.target``: ``deploy.k8s`` or ``deploy.local``."""
    if params.deploy.target == "microk8s":
        from . import k8s
        return k8s
    from . import local
    return local


def _on_server(params: Any) -> bool:
    """deploy.target microk8s with ``server.host`` set: the server's API through an SSH tunnel."""
    server = getattr(params, "server", None)
    return params.deploy.target == "microk8s" and bool(getattr(server, "host", None))


def _through_server(params: Any, call: Callable[..., Any], log: Log | None, **kwargs: Any) -> Any:
    """``call(..., api_client=...)`` with the server's API client when ``server.host`` is set."""
    if not _on_server(params) or kwargs.get("api_client") is not None:
        return call(**kwargs)
    from ..server.kube import server_api_client

    with server_api_client(params.server, log=log) as client:
        return call(api_client=client, **kwargs)


def deploy(run_dir: Path, params: Any, *, log: Log = print, dry_run: bool = False, **options: Any) -> dict:
    if params.deploy.target != "microk8s":
        if dry_run:
            from ..errors import MlopsKitError
            raise MlopsKitError("--dry-run must go with deploy.target microk8s. Got target local instead.")
        return target_module(params).deploy(run_dir, params, log=log)
    module = target_module(params)
    return _through_server(params, lambda **kw: module.deploy(run_dir, params, log=log, dry_run=dry_run, **kw),
                           log, **options)


def status(params: Any) -> dict:
    module = target_module(params)
    return _through_server(params, lambda **kw: module.status(params, **kw), None)


def rollback(params: Any, *, log: Log = print, to_revision: int | None = None) -> dict:
    from ..errors import MlopsKitError

    if params.deploy.target != "microk8s":
        raise MlopsKitError("Rollback must go with deploy.target microk8s (its release history). Got target "
                            "local instead.", hint="deploy the earlier run again to go back locally.")
    module = target_module(params)
    return _through_server(params, lambda **kw: module.rollback(params, log=log, to_revision=to_revision, **kw), log)


def undeploy(params: Any, *, log: Log = print, delete_namespace: bool = False) -> dict:
    if params.deploy.target == "microk8s":
        module = target_module(params)
        return _through_server(params, lambda **kw: module.undeploy(params, log=log, delete_namespace=delete_namespace,
                                                                    **kw), log)
    return target_module(params).undeploy(params, log=log)
