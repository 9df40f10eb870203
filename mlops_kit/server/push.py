"""``git push`` to deploy: ``mlops-kit server init`` and the runner behind the server's hook.

``init`` creates ``~/mlops-kit/<project>.git`` on the server (bare) with a ``pre-receive`` hook
that runs ``mlops-kit server receive``, and adds the git remote ``server`` here. On each push
of the deploy branch the receiver, on the server:

1. takes the server's pipeline lock (``~/mlops-kit/pipeline.lock``) or refuses the push;
2. checks out the pushed commit into ``~/mlops-kit/<project>/work``;
3. reads ``~/.config/mlops-kit/secrets.env`` (refused unless mode 0600) into the run's
   environment - secret values never travel through git;
4. runs ``mlops-kit run -p FILE`` there (run records in ``~/mlops-kit/<project>/runs``),
   relaying each stage's progress to the pusher (git prints it as ``remote:`` lines);
5. ends with the run id, metrics, gate and endpoint - or refuses the push with the reason.

The hook is ``pre-receive``, so a refused push leaves the server's branch where it was, and the
previous release keeps serving (the run deploys only after its gate passed).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..errors import ServerError
from ._ssh import SSH

ZERO = "0" * 40
SECRETS_FILE = "~/.config/mlops-kit/secrets.env"
DEFAULT_PARAMS = "parameters/server.yaml"
HOOK = "pre-receive"
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


# --- on the laptop: server init ---------------------------------------------------------------

def project_name(folder: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.") or "project"
    return name[:64]


def hook_script(project: str, params_file: str, branch: str) -> str:
    args = shlex.join(["--project", project, "--params", params_file, "--branch", branch])
    return f"""#!/bin/sh
# mlops-kit: run the pipeline for each push of {branch}; refuse the push when it fails.
exec mlops-kit server receive {args}
"""


def init(ssh: SSH, *, repo_dir: Path, params_file: str = DEFAULT_PARAMS, branch: str = "main",
         remote: str = "server", project: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Create the bare repository and hook on the server; add the git remote here."""
    repo_dir = Path(repo_dir)
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=repo_dir, capture_output=True, text=True)
    if top.returncode != 0:
        raise ServerError(f"`server init` must run inside a git repository. Got {repo_dir} instead, which is not one.",
                          check="git", fix="git init && git add -A && git commit -m 'first commit'")
    top_dir = Path(top.stdout.strip())
    project = project or project_name(top_dir)
    if not _PROJECT_RE.match(project):
        raise ServerError(f"The project name must be letters, digits, '.', '_' or '-'. Got {project!r} instead.",
                          check="git")
    for what, value in (("--branch", branch), ("--remote", remote)):
        if not _NAME_RE.match(value) or ".." in value or value.endswith((".lock", "/")):
            raise ServerError(f"{what} must be a plain git name (letters, digits, '.', '_', '-', '/'). Got {value!r} "
                              "instead.", check="git")
    if Path(params_file).is_absolute() or ".." in Path(params_file).parts:
        raise ServerError(f"--params must be a path inside the repository (it is read from the pushed commit). "
                          f"Got {params_file!r} instead.", check="params")
    if not (top_dir / params_file).is_file():
        log(f"note: {params_file} does not exist here yet; pushes need it committed "
            f"(e.g. `extends: default.yaml`, all five stages, deploy.target microk8s)")
    bare = f"mlops-kit/{project}.git"
    script = hook_script(project, params_file, branch)
    setup = (f"set -e; command -v git >/dev/null || {{ echo 'MLOPS_KIT: no git' >&2; exit 3; }}; "
             f"command -v mlops-kit >/dev/null || {{ echo 'MLOPS_KIT: no mlops-kit' >&2; exit 4; }}; "
             f"mkdir -p ~/mlops-kit; [ -d ~/{bare} ] || git init -q --bare ~/{bare}; "
             f"git -C ~/{bare} symbolic-ref HEAD refs/heads/{branch}; "
             f"cat > ~/{bare}/hooks/{HOOK}.tmp; chmod 755 ~/{bare}/hooks/{HOOK}.tmp; "
             f"mv ~/{bare}/hooks/{HOOK}.tmp ~/{bare}/hooks/{HOOK}; cd ~/{bare} && pwd")
    proc = ssh.run(setup, input=script, check=False, step="server init")
    if proc.returncode == 3:
        raise ServerError(f"The server {ssh.target} must have git. Got none instead.", host=ssh.target.url,
                          check="git", fix="sudo apt-get install git (on the server)")
    if proc.returncode == 4:
        raise ServerError(f"The server {ssh.target} must have `mlops-kit` on the PATH of SSH sessions (the hook runs "
                          "it). Got none instead.", host=ssh.target.url, check="python",
                          fix="on the server: pip install mlops-kit (for the user that receives pushes)")
    if proc.returncode != 0:
        raise ServerError(f"server init failed on {ssh.target}: {proc.stderr.strip()[-500:]}", host=ssh.target.url,
                          check="command")
    remote_path = proc.stdout.strip().splitlines()[-1]
    t = ssh.target
    url = f"ssh://{t.user}@{t.host}:{t.port}{remote_path}"
    _git(top_dir, "remote", "remove", remote, check=False)
    _git(top_dir, "remote", "add", remote, url)
    ssh_command = shlex.join(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                              "-o", f"UserKnownHostsFile={ssh.known_hosts} ~/.ssh/known_hosts"]
                             + (["-i", ssh.identity_file] if ssh.identity_file else []))
    _git(top_dir, "config", "core.sshCommand", ssh_command)
    log(f"server: {url} (hook {HOOK}: `mlops-kit run -p {params_file}` on each push of {branch})")
    log(f"git remote {remote!r} added; deploy with: git push {remote} {branch}")
    return {"remote": remote, "url": url, "project": project, "params": params_file, "branch": branch}


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ServerError(f"git {' '.join(args)} failed: {proc.stderr.strip()}", check="git")
    return proc


# --- on the server: the receiver -----------------------------------------------------------

def read_secrets(path: str | os.PathLike = SECRETS_FILE) -> dict[str, str]:
    """``KEY=VALUE`` lines of the server's secrets file; refused unless only its owner may read it."""
    file = Path(path).expanduser()
    if not file.exists():
        return {}
    mode = file.stat().st_mode & 0o777
    if mode & 0o077:
        raise ServerError(f"{file} must be readable by its owner only (mode 0600). Got mode {mode:04o} instead; "
                          "its secrets were not used.", check="secrets", fix=f"chmod 600 {file}")
    values: dict[str, str] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ServerError(f"{file}, line {number}: expected NAME=VALUE; found a line without one "
                              "(the value is not shown).", check="secrets")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


class PipelineLock:
    """One pipeline at a time per server: an flock on ``~/mlops-kit/pipeline.lock``."""

    def __init__(self, path: str | os.PathLike = "~/mlops-kit/pipeline.lock"):
        self.path = Path(path).expanduser()
        self._fh: IO[str] | None = None

    def acquire(self, info: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except ValueError:
                holder = {}
            fh.close()
            what = ", ".join(f"{k} {v}" for k, v in holder.items() if k in ("project", "commit", "started", "pid"))
            raise ServerError(f"Only one pipeline may run on this server at a time. Got one running already "
                              f"({what or 'details unknown'}); this push is refused.", check="lock",
                              fix="push again when it has finished (`mlops-kit runs list --server`)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(info))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def project_home(project: str) -> Path:
    return Path("~/mlops-kit").expanduser() / project


def checkout(commit: str, into: Path) -> None:
    """The pushed commit's tree (``git archive``; works on quarantined objects in pre-receive)."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    proc = subprocess.Popen(["git", "archive", "--format=tar", commit], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        tar.extractall(into, filter="data")
    if proc.wait() != 0:
        raise ServerError(f"git archive {commit} failed on the server.", check="git")


def receive(lines: list[str], *, project: str, params_file: str = DEFAULT_PARAMS, branch: str = "main",
            out: IO[str] | None = None, kit: list[str] | None = None) -> int:
    """Handle a push (the hook's stdin ``old new ref`` lines); the exit code refuses (1) or accepts (0)."""
    out = out or sys.stdout
    kit = kit or [sys.executable, "-m", "mlops_kit.cli"]

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    wanted = f"refs/heads/{branch}"
    status = 0
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        old, new, ref = parts
        if ref != wanted:
            say(f"mlops-kit: {ref} is not {wanted}: accepted, no pipeline")
            continue
        if new == ZERO:
            say(f"mlops-kit: {branch} deleted; the deployment stays as it is")
            continue
        status = max(status, _run_push(new, project=project, params_file=params_file, say=say, kit=kit))
    return status


def _run_push(commit: str, *, project: str, params_file: str, say: Callable[[str], None], kit: list[str]) -> int:
    home = project_home(project)
    lock = PipelineLock()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        lock.acquire({"project": project, "commit": commit[:12], "started": started, "pid": os.getpid()})
    except ServerError as exc:
        say(f"mlops-kit: REFUSED: {exc}")
        return 1
    try:
        work = home / "work"
        runs = home / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        say(f"mlops-kit: commit {commit[:12]}: `mlops-kit run -p {params_file}` on the server")
        checkout(commit, work)
        try:
            secrets = read_secrets()
        except ServerError as exc:
            say(f"mlops-kit: REFUSED: {exc}")
            return 1
        env = {**os.environ, **secrets, "MLOPS_KIT_PROJECT_DIR": str(work), "MLOPS_KIT_RUNS_DIR": str(runs)}
        for name in ("GIT_DIR", "GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                     "GIT_PUSH_OPTION_COUNT"):
            env.pop(name, None)
        proc = subprocess.Popen([*kit, "run", "-p", params_file, "--json"], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        assert proc.stderr is not None and proc.stdout is not None
        errors: list[str] = []
        for raw in proc.stderr:                 # progress, one line per stage event, as it happens
            line = raw.rstrip("\n")
            if line.startswith("Error: ") or errors:
                errors.append(line)
            say(f"  {line}")
        record_text = proc.stdout.read()
        code = proc.wait()
        if code != 0:
            reason = " ".join(e.removeprefix("Error: ") for e in errors).strip() or f"exit {code}"
            say(f"mlops-kit: REFUSED: the pipeline failed: {reason}")
            say("mlops-kit: nothing was deployed; the previous release keeps serving.")
            return 1
        say(_summary(record_text, runs))
        return 0
    finally:
        lock.release()


def _summary(record_text: str, runs: Path) -> str:
    try:
        record = json.loads(record_text)
    except ValueError:
        return "mlops-kit: the pipeline succeeded (no run record printed)."
    run_id = record.get("id")
    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if k != "gate_passed"}
    gate = (record.get("metrics") or {}).get("gate_passed")
    lines = [f"mlops-kit: run {run_id} {record.get('status')}",
             "mlops-kit: metrics " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
             f"mlops-kit: gate {'passed' if gate else 'FAILED' if gate is not None else 'not set'}"]
    from .. import artifacts

    release = artifacts.RELEASE.path(runs / str(run_id))
    if release.is_file():
        data = artifacts.RELEASE.load(runs / str(run_id)).to_json()
        endpoint = data.get("url") or data.get("endpoint")
        if endpoint:
            lines.append(f"mlops-kit: endpoint {endpoint} (on the server)")
    return "\n".join(lines)
