"""``mlops-kit deploy | status | rollback | undeploy``: 05_deploy from a terminal.

``deploy.target: microk8s`` goes to :mod:`mlops_kit.deploy.k8s`; ``local`` to
:mod:`mlops_kit.deploy.local`. Parameters: ``-p FILE`` (default: the run's own parameters
from run.json, else parameters/default.yaml) plus ``--set section.key=value``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import _paths
from ..errors import RunNotFound

from ._options import load_for_run, params_option as _params_option, set_option as _set_option

_target_option = click.option("--target", type=click.Choice(["local", "microk8s"]), default=None,
                              help="deploy.target (overrides the parameter files)")
_json_option = click.option("--json", "as_json", is_flag=True, help="print the result as JSON")


def _load(params_file: str | None, overrides: tuple[str, ...], target: str | None, run_dir: Path | None):
    overrides = tuple(overrides) + ((f"deploy.target={target}",) if target else ())
    return load_for_run(params_file, overrides, run_dir)


def _run_dir(run_id: str | None) -> Path | None:
    if run_id is None:
        return None
    from ..ledger import run_path

    folder = run_path(run_id, champion=True, scratch=True)
    if not folder.is_dir():
        raise RunNotFound(run_id, _paths.runs_dir())
    return folder


def _echo(line: str) -> None:
    click.echo(line)


@click.command()
@click.argument("run_id", required=False)
@_params_option
@_set_option
@_target_option
@click.option("--dry-run", is_flag=True, help="render, validate and show the diff; apply nothing")
@click.option("--force-conflicts", is_flag=True, help="take over fields another tool changed (server-side apply)")
@_json_option
def deploy(run_id, params_file, overrides, target, dry_run, force_conflicts, as_json):
    """Deploy the model of run RUN_ID (default: the champion) to deploy.target: local or microk8s."""
    from ..ledger import run_dir_or_champion

    run_dir = run_dir_or_champion(run_id)
    params = _load(params_file, overrides, target, run_dir)
    from .. import deploy as deploy_target

    options = {"force_conflicts": True} if force_conflicts else {}
    result = deploy_target.deploy(run_dir, params, log=_echo, dry_run=dry_run, **options)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))


@click.command()
@click.option("--run", "run_id", default=None, help="take the parameters of this run")
@_params_option
@_set_option
@_target_option
@_json_option
def status(run_id, params_file, overrides, target, as_json):
    """Show what is deployed: release history, pods, endpoint."""
    from .. import deploy as deploy_target

    result = deploy_target.status(_load(params_file, overrides, target, _run_dir(run_id)))
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    _print_status(result)


@click.command()
@click.option("--run", "run_id", default=None, help="take the parameters of this run")
@_params_option
@_set_option
@_target_option
@click.option("--to", "to_revision", type=int, default=None, help="the release revision to restore "
              "(microk8s; default: the newest good one unlike the current)")
@_json_option
def rollback(run_id, params_file, overrides, target, to_revision, as_json):
    """Restore the previous good release (microk8s: from its history; local: the run served before)."""
    from .. import deploy as deploy_target

    params = _load(params_file, overrides, target, _run_dir(run_id))
    result = deploy_target.rollback(params, to_revision=to_revision, log=_echo)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))


@click.command()
@click.option("--run", "run_id", default=None, help="take the parameters of this run")
@_params_option
@_set_option
@_target_option
@click.option("--delete-namespace", is_flag=True, help="also delete deploy.namespace (microk8s)")
def undeploy(run_id, params_file, overrides, target, delete_namespace):
    """Remove the deployment (Deployment, Service, ConfigMaps, Secret)."""
    from .. import deploy as deploy_target

    params = _load(params_file, overrides, target, _run_dir(run_id))
    deploy_target.undeploy(params, delete_namespace=delete_namespace, log=_echo)


def _print_status(result: dict) -> None:
    from ._output import print_table

    facts = {k: v for k, v in result.items() if k not in ("pods", "releases", "current") and v is not None}
    print_table(["", "value"], [[k, v if isinstance(v, str) else json.dumps(v, default=str)]
                                for k, v in facts.items()], title=f"deploy target {result.get('target', '')}")
    if result.get("endpoint"):
        click.echo(f"endpoint: {result['endpoint']}")
    if result.get("pods"):
        print_table(["pod", "phase", "ready", "restarts", "reason"],
                    [[p["name"], p["phase"], p["ready"], p["restarts"], p["reason"]] for p in result["pods"]],
                    title="pods")
    current = (result.get("current") or {}).get("revision")
    print_table(["revision", "status", "run", "image", "time", "who", "note"],
                [[f"{r['revision']}{' *' if r['revision'] == current else ''}", r.get("status"), r.get("run_id"),
                  r.get("image"), r.get("time"), r.get("who"),
                  r.get("reason") or (f"restores {r['restores']}" if r.get("restores") else "")]
                 for r in result.get("releases") or []], title="releases (* = current)")
