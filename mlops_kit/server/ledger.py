"""The server's ledger over SSH: ``mlops-kit runs list|show --server`` runs the same command on
the server, in the runs folder of the project's pushes (``~/mlops-kit/<project>/runs``).

Which server: what ``mlops-kit server init`` recorded in this repository's git config
(``mlops-kit.host``, ``.identityFile``, ``.knownHosts``, ``.project``)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from ..errors import ServerError
from ._ssh import SSH


def _git_config(key: str, cwd: Path | None = None) -> str | None:
    proc = subprocess.run(["git", "config", "--get", f"mlops-kit.{key}"], cwd=cwd, capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def server_from_git(cwd: Path | None = None) -> tuple[SSH, str]:
    host = _git_config("host", cwd)
    project = _git_config("project", cwd)
    if not host or not project:
        raise ServerError("--server must know the server: run `mlops-kit server init ssh://USER@HOST` in this "
                          "repository first. Got no mlops-kit.host in its git config instead.", check="host",
                          fix="mlops-kit server init ssh://USER@HOST[:PORT] -i KEY")
    ssh = SSH(host, identity_file=_git_config("identityFile", cwd) or None,
              known_hosts=_git_config("knownHosts", cwd) or None)
    return ssh, project


def remote_runs(args: list[str], *, cwd: Path | None = None) -> str:
    """``mlops-kit runs ARGS`` on the server; its standard output (errors become ServerError)."""
    ssh, project = server_from_git(cwd)
    command = (f"MLOPS_KIT_RUNS_DIR=\"$HOME/mlops-kit/{project}/runs\" "
               + shlex.join(["mlops-kit", "runs", *args]))
    proc = ssh.run(command, check=False, step="mlops-kit runs", timeout=120)
    if proc.returncode != 0:
        text = proc.stderr.strip().removeprefix("Error: ") or proc.stdout.strip() or f"exit {proc.returncode}"
        raise ServerError(f"On {ssh.target}: {text}", host=ssh.target.url, check="command")
    return proc.stdout
