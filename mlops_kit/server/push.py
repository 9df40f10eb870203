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

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .. import _paths
from ..errors import ServerError
from .._terminal import printable
from ._ssh import SSH, ssh_option_path

ZERO = "0" * 40
SECRETS_FILE = "~/.config/mlops-kit/secrets.env"
DEFAULT_PARAMS = "parameters/server.yaml"
HOOK = "pre-receive"
_PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")       # fullmatch: `$` would take "main\n"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")


def check_project_name(project: str, *, where: str = "The project name") -> str:
    """``project`` when it is a plain name (it becomes a folder and a shell word on the server)."""
    if not isinstance(project, str) or not _PROJECT_RE.fullmatch(project):
        raise ServerError(f"{where} must be letters, digits, '.', '_' or '-' (at most 64). Got {project!r} instead.",
                          check="git", fix="run `mlops-kit server init` again in this repository")
    return project


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
    project = check_project_name(project or project_name(top_dir))
    for what, value in (("--branch", branch), ("--remote", remote)):
        if not _NAME_RE.fullmatch(value) or ".." in value or value.endswith((".lock", "/")):
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
    _git(top_dir, "config", "core.sshCommand", git_ssh_command(ssh))
    log(f"server: {url} (hook {HOOK}: `mlops-kit run -p {params_file}` on each push of {branch})")
    log(f"git remote {remote!r} added; deploy with: git push {remote} {branch}")
    return {"remote": remote, "url": url, "project": project, "params": params_file, "branch": branch}


def git_ssh_command(ssh: SSH) -> str:
    """``core.sshCommand`` for the remote: the one known_hosts file (no global one) and, when
    given, the one key (IdentitiesOnly: no agent key offered first). ssh splits
    UserKnownHostsFile at spaces, so a path with one is quoted for ssh as well as for the shell."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={ssh_option_path(ssh.known_hosts)}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no"]
    if ssh.identity_file:
        argv += ["-o", "IdentitiesOnly=yes", "-i", ssh.identity_file]
    return shlex.join(argv)


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ServerError(f"git {' '.join(args)} failed: {proc.stderr.strip()}", check="git")
    return proc


# --- on the server: the receiver -----------------------------------------------------------

MAX_SECRETS_BYTES = 1 << 20


def read_secrets(path: str | os.PathLike = SECRETS_FILE) -> dict[str, str]:
    """``KEY=VALUE`` lines of the server's secrets file; refused unless it is a regular file (not a
    link, a FIFO, a folder) of this user, readable by its owner only, in a folder only its owner
    may change. Opened without following a link and without blocking (a FIFO would hold the lock)."""
    file = Path(path).expanduser()

    def refuse(expected: str, found: str, fix: str | None = None) -> ServerError:
        return ServerError(f"{file} must be {expected}. Got {found} instead; its secrets were not used.",
                           check="secrets", fix=fix)

    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refuse("a regular file", "a symbolic link (never followed)", f"replace the link by the file itself: "
                         f"{shlex.quote(str(file))}") from None
        raise refuse("a readable regular file", f"{exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                    else "a socket" if stat.S_ISSOCK(info.st_mode) else "a device or other special file")
            raise refuse("a regular file", kind)
        if info.st_uid != os.getuid():
            raise refuse(f"owned by the user who receives pushes (uid {os.getuid()})",
                         f"a file owned by uid {info.st_uid}")
        mode = info.st_mode & 0o777
        if mode & 0o077:
            raise refuse("readable by its owner only (mode 0600)", f"mode {mode:04o}",
                         f"chmod 600 {shlex.quote(str(file))}")
        folder = os.stat(file.parent)
        if folder.st_mode & 0o022 or folder.st_uid not in (os.getuid(), 0):
            raise refuse("in a folder only its owner may change",
                         f"folder {file.parent} with mode {folder.st_mode & 0o7777:04o}, owner uid {folder.st_uid}",
                         f"chmod go-w {shlex.quote(str(file.parent))}")
        data = os.read(fd, MAX_SECRETS_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRETS_BYTES:
        raise refuse(f"at most {MAX_SECRETS_BYTES} bytes", "a larger file")
    values: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
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
    """One pipeline at a time per server: an flock on ``~/mlops-kit/pipeline.lock``.

    The hook takes it and hands the locked file to the pipeline it starts (an inherited fd: the
    same open file, the same lock). The lock is never unlocked explicitly: it goes when the last
    process holding the file ends, so a pipeline that outlives its hook keeps it while it runs,
    and a dead one holds nothing."""

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

    def fileno(self) -> int:
        assert self._fh is not None, "acquire() first"
        return self._fh.fileno()

    def release(self) -> None:
        """Clear the holder's details and close this process's hold (no LOCK_UN: that would free a
        pipeline's hold as well; the hook calls this once its pipeline has ended)."""
        if self._fh is not None:
            self._fh.seek(0)
            self._fh.truncate()
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
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:      # an empty tree, a link out of the checkout, ...
        proc.kill()
        proc.wait()
        raise ServerError(f"The commit {commit[:12]} must check out as a plain tree. Got {exc} instead.",
                          check="git") from None
    if proc.wait() != 0:
        raise ServerError(f"git archive {commit} failed on the server.", check="git")


def receive(lines: list[str], *, project: str, params_file: str = DEFAULT_PARAMS, branch: str = "main",
            out: IO[str] | None = None, kit: list[str] | None = None) -> int:
    """Handle a push (the hook's stdin ``old new ref`` lines); the exit code refuses (1) or accepts (0)."""
    out = out or sys.stdout
    kit = kit or [sys.executable, "-m", "mlops_kit.cli"]

    def say(text: str) -> None:     # the pusher's terminal shows it (git's `remote:` lines)
        out.write(printable(text) + "\n")
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
        try:
            checkout(commit, work)
            secrets = read_secrets()
        except ServerError as exc:
            say(f"mlops-kit: REFUSED: {exc}")
            return 1
        env = {**os.environ, **secrets, _paths.PROJECT_DIR_ENV: str(work), _paths.RUNS_DIR_ENV: str(runs),
               _paths.CONFINE_DATA_ENV: "1"}
        for name in ("GIT_DIR", "GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                     "GIT_PUSH_OPTION_COUNT"):
            env.pop(name, None)
        proc = start_pipeline([*kit, "run", "-p", params_file, "--json"], cwd=work, env=env, lock=lock)
        assert proc.stderr is not None and proc.stdout is not None
        errors: list[str] = []
        try:
            for raw in proc.stderr:                 # progress, one line per stage event, as it happens
                line = raw.rstrip("\n")
                if line.startswith("Error: ") or errors:
                    errors.append(line)
                say(f"  {line}")
            record_text = proc.stdout.read()
            code = proc.wait()
        finally:
            stop_pipeline(proc)                 # on any way out of the hook, the pipeline ends first
        if code != 0:
            reason = " ".join(e.removeprefix("Error: ") for e in errors).strip() or f"exit {code}"
            say(f"mlops-kit: REFUSED: the pipeline failed: {reason}")
            say("mlops-kit: nothing was deployed; the previous release keeps serving.")
            return 1
        say(_summary(record_text, runs))
        return 0
    finally:
        lock.release()


#: how long a pipeline may take to wind down (kernels stopped, run recorded) after SIGTERM
STOP_GRACE_SECONDS = 60
_PR_SET_PDEATHSIG = 1


def start_pipeline(argv: list[str], *, cwd: Path, env: dict[str, str], lock: PipelineLock) -> subprocess.Popen:
    """The pipeline, tied to the hook that starts it: its own process group (session), SIGTERM
    when the hook ends however it ends (``PR_SET_PDEATHSIG``: a ``kill -9`` of the hook too; git
    then refuses the push, so the pipeline must not go on to deploy), and the pipeline lock's fd
    inherited (held by the pipeline as long as it runs, by nobody once it has ended)."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)     # Linux (a MicroK8s server)
    hook = os.getpid()

    def tie_to_hook() -> None:                  # in the child, before exec
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != hook:               # the hook died before prctl: never start
            os._exit(1)

    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(lock.fileno(),),
                            preexec_fn=tie_to_hook)


def stop_pipeline(proc: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """End the pipeline's process group: SIGTERM (the run winds down, recorded as interrupted),
    SIGKILL after ``grace`` seconds. Nothing when it has ended already."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


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
