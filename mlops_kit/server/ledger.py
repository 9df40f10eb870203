"""The server's ledger over SSH: ``mlops-kit runs list|show --server`` runs the same command on
the server, in the runs folder of the project's pushes (``~/mlops-kit/<project>/runs``).

Which server: what ``mlops-kit server init`` recorded in this repository's git config
(``mlops-kit.host``, ``.identityFile``, ``.knownHosts``, ``.project``), each checked when read
(a repository's git config is another file anyone may have edited).

What the server prints is hostile input: at most ``MAX_OUTPUT_BYTES`` is read, text is printed
without terminal control sequences, and ``--json`` is parsed and checked as run records
(:class:`mlops_kit.artifacts.RunRecord`, ids as the ledger's) before it is printed again.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

from .._terminal import printable
from ..errors import ServerError
from ._ssh import SSH

MAX_OUTPUT_BYTES = 16 << 20


def _git_config(key: str, cwd: Path | None = None) -> str | None:
    proc = subprocess.run(["git", "config", "--get", f"mlops-kit.{key}"], cwd=cwd, capture_output=True, text=True)
    return proc.stdout.removesuffix("\n") or None if proc.returncode == 0 else None   # as stored: checked below


def server_from_git(cwd: Path | None = None) -> tuple[SSH, str]:
    from .push import check_project_name

    host = _git_config("host", cwd)
    project = _git_config("project", cwd)
    if not host or not project:
        raise ServerError("--server must know the server: run `mlops-kit server init ssh://USER@HOST` in this "
                          "repository first. Got no mlops-kit.host in its git config instead.", check="host",
                          fix="mlops-kit server init ssh://USER@HOST[:PORT] -i KEY")
    check_project_name(project, where="mlops-kit.project in this repository's git config")
    ssh = SSH(host, identity_file=_git_config("identityFile", cwd) or None,
              known_hosts=_git_config("knownHosts", cwd) or None)
    return ssh, project


def remote_runs(args: list[str], *, cwd: Path | None = None) -> str:
    """``mlops-kit runs ARGS`` on the server; its standard output (errors become ServerError)."""
    ssh, project = server_from_git(cwd)
    command = (f"MLOPS_KIT_RUNS_DIR=\"$HOME\"/mlops-kit/{shlex.quote(project)}/runs "
               + shlex.join(["mlops-kit", "runs", *args]))
    proc = ssh.run(command, check=False, step="mlops-kit runs", timeout=120, max_bytes=MAX_OUTPUT_BYTES)
    if proc.returncode != 0:
        text = proc.stderr.strip().removeprefix("Error: ") or proc.stdout.strip() or f"exit {proc.returncode}"
        raise ServerError(f"On {ssh.target}: {printable(text[-1500:])}", host=ssh.target.url, check="command")
    if "--json" in args:
        return json.dumps(checked_records(proc.stdout, many=args[0] == "list", host=ssh.target.url), indent=2) + "\n"
    return printable(proc.stdout)


def checked_records(text: str, *, many: bool, host: str) -> Any:
    """``runs list|show --json`` from the server: a list of run records (``many``) or one,
    each a :class:`~mlops_kit.artifacts.RunRecord` with an id the ledger accepts."""
    from pydantic import ValidationError

    from ..artifacts import RunRecord
    from ..ledger import RUN_ID_PATTERN

    def refuse(found: str) -> ServerError:
        what = "a JSON list of run records" if many else "a JSON run record"
        return ServerError(f"`mlops-kit runs --json` on the server must print {what}. Got {found} instead.",
                           host=host, check="command", fix="is the server's mlops-kit the same version as this one?")

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise refuse(f"text that is not JSON ({exc.msg} at line {exc.lineno})") from None
    records = data if many else [data]
    if not isinstance(records, list):
        raise refuse(f"a JSON {type(data).__name__}")
    for number, record in enumerate(records):
        try:
            parsed = RunRecord.model_validate(record)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "(the record)"
            raise refuse(f"record {number}: {field}: {error['msg']}") from None
        if not RUN_ID_PATTERN.fullmatch(parsed.id):
            raise refuse(f"record {number}: id {printable(parsed.id[:80])!r}, not a run id")
    return data
