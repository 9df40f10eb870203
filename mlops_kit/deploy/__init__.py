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


def deploy(run_dir: Path, params: Any, *, log: Log = print, dry_run: bool = False, **options: Any) -> dict:
    if params.deploy.target != "microk8s":
        if dry_run:
            from ..errors import MlopsKitError
            raise MlopsKitError("--dry-run must go with deploy.target microk8s. Got target local instead.")
        return target_module(params).deploy(run_dir, params, log=log)
    return target_module(params).deploy(run_dir, params, log=log, dry_run=dry_run, **options)


def status(params: Any) -> dict:
    return target_module(params).status(params)


def rollback(params: Any, *, log: Log = print, to_revision: int | None = None) -> dict:
    from ..errors import MlopsKitError

    if params.deploy.target != "microk8s":
        raise MlopsKitError("Rollback must go with deploy.target microk8s (its release history). Got target "
                            "local instead.", hint="deploy the earlier run again to go back locally.")
    return target_module(params).rollback(params, log=log, to_revision=to_revision)


def undeploy(params: Any, *, log: Log = print, delete_namespace: bool = False) -> dict:
    if params.deploy.target == "microk8s":
        return target_module(params).undeploy(params, log=log, delete_namespace=delete_namespace)
    return target_module(params).undeploy(params, log=log)
