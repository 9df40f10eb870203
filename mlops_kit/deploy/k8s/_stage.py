"""What the 05_deploy notebook and the CLI call: the run folder, the parameters, the target."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...params import DeployParams, RunParams


def stage_run_dir(run_dir: str | Path = "") -> Path:
    """The run folder of the deploy stage: ``run_dir``, or the scratch run when it is ""."""
    from ...notebook import open_stage

    return open_stage("deploy", run_dir).run_dir


def run_params(run_dir: Path) -> dict | None:
    """The validated parameters recorded in ``run.json`` (None when the run has no record)."""
    from ...errors import ArtifactError
    from ...ledger import recorded_params

    try:
        return recorded_params(Path(run_dir))
    except ArtifactError:
        return None


def stage_params(run_dir: Path, *, seed: int = 42, task: str | None = None, **deploy: Any) -> RunParams:
    """The notebook's parameters (``deploy.*``, seed, task) on top of the run's own ``package`` and
    ``serve`` sections (from run.json; defaults when absent)."""
    recorded = run_params(run_dir) or {}
    return RunParams(seed=seed, task=task, package=recorded.get("package") or {},
                     serve=recorded.get("serve") or {}, server=recorded.get("server") or {},
                     deploy=DeployParams(**deploy))


def run_stage(run_dir: Path, params: RunParams, *, log: Callable[[str], None] = print,
              dry_run: bool = False) -> dict:
    """Deploy to ``deploy.target`` (what the 05_deploy notebook calls)."""
    from ... import deploy

    return deploy.deploy(run_dir, params, log=log, dry_run=dry_run)


from ..base import release_table  # noqa: E402,F401 - kept where the notebook once found it
