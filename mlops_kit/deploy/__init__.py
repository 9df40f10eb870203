"""05_deploy: where the packaged model runs.

Every target implements one interface (:class:`mlops_kit.deploy.base.Target`: deploy,
status, rollback, undeploy) and shares one smoke test (:func:`mlops_kit.deploy.base.smoke_test`).
``local`` runs the model on this machine (:mod:`mlops_kit.deploy.local`); ``microk8s``
deploys it to Kubernetes / MicroK8s (:mod:`mlops_kit.deploy.k8s`). :func:`target_for` picks
the one ``params.deploy.target`` names; the CLI, the 05_deploy notebook and the DeployPanel
call the functions below and never branch on the target themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .base import Log, SmokeTestFailed, Target, release_table, same_prediction, smoke_test

__all__ = ["Log", "SmokeTestFailed", "Target", "TARGETS", "deploy", "release_table", "rollback", "same_prediction", "smoke_test",
           "status", "target_for", "undeploy"]


class _LocalTarget:
    name = "local"

    def deploy(self, run_dir, params, *, log: Log = print, dry_run: bool = False, **options: Any) -> dict:
        from ..errors import MlopsKitError
        from . import local

        if dry_run:
            raise MlopsKitError("--dry-run must go with deploy.target microk8s. Got target local instead.")
        return local.deploy(run_dir, params, log=log)

    def status(self, params) -> dict:
        from . import local

        return local.status(params)

    def rollback(self, params, *, log: Log = print, to_revision: int | None = None) -> dict:
        from . import local

        return local.rollback(params, log=log, to_revision=to_revision)

    def undeploy(self, params, *, log: Log = print, delete_namespace: bool = False) -> dict:
        from . import local

        return local.undeploy(params, log=log)


class _MicroK8sTarget:
    """MicroK8s here, or on the team's server (``server.host``) through an SSH tunnel."""

    name = "microk8s"

    def deploy(self, run_dir, params, *, log: Log = print, dry_run: bool = False, **options: Any) -> dict:
        from . import k8s

        return _through_server(params, lambda **kw: k8s.deploy(run_dir, params, log=log, dry_run=dry_run, **kw),
                               log, **options)

    def status(self, params) -> dict:
        from . import k8s

        return _through_server(params, lambda **kw: k8s.status(params, **kw), None)

    def rollback(self, params, *, log: Log = print, to_revision: int | None = None) -> dict:
        from . import k8s

        return _through_server(params, lambda **kw: k8s.rollback(params, log=log, to_revision=to_revision, **kw), log)

    def undeploy(self, params, *, log: Log = print, delete_namespace: bool = False) -> dict:
        from . import k8s

        return _through_server(params, lambda **kw: k8s.undeploy(params, log=log, delete_namespace=delete_namespace,
                                                                  **kw), log)


TARGETS: dict[str, Target] = {"local": _LocalTarget(), "microk8s": _MicroK8sTarget()}


def target_for(params: Any) -> Target:
    """The target ``params.deploy.target`` names."""
    return TARGETS[params.deploy.target]


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
    return target_for(params).deploy(run_dir, params, log=log, dry_run=dry_run, **options)


def status(params: Any) -> dict:
    return target_for(params).status(params)


def rollback(params: Any, *, log: Log = print, to_revision: int | None = None) -> dict:
    return target_for(params).rollback(params, log=log, to_revision=to_revision)


def undeploy(params: Any, *, log: Log = print, delete_namespace: bool = False) -> dict:
    return target_for(params).undeploy(params, log=log, delete_namespace=delete_namespace)
