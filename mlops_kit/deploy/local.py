"""05_deploy, ``deploy.target: local``: the run's image on this machine.

The image runs in containerd (host network, a free port or ``deploy.local_port``, logs to a
file, read-only root file system); with no container runtime the same app runs as a local
process (``python -m mlops_kit.serving``). A new deployment must become ready and answer
``examples.json`` exactly as at training before the previous one is stopped: until then the
old one keeps serving, and a new one that fails is removed with its log shown.

The server that answers must be the one just started: a taken ``deploy.local_port`` is
refused before anything starts, and the new server gets a random instance value
(``MLOPS_KIT_INSTANCE``) that its /v2/health/ready names; another process answering on the
port (the new one then died of "address already in use") fails the deploy. One deploy or
undeploy at a time per runs folder (a lock file beside the state).

State: ``<runs dir>/.local-deploy.json`` (atomic); each release: the run's
``artifacts/release.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import _atomic, _paths
from .. import artifacts as _artifacts
from ..errors import ArtifactError, ContainerdError, DeployError
from ..image import Containerd
from ..image import DEFAULT_RUNNER, MODEL_DIR_IN_IMAGE, Runner, tail
from ..serving import INSTANCE_ENV, INSTANCE_HEADER

READY_PATH = "/v2/health/ready"
HOST = "127.0.0.1"
#: the server processes this Python started (to reap them when stopped)
_CHILDREN: dict[int, subprocess.Popen] = {}


def state_file() -> Path:
    return _paths.runs_dir() / _paths.LOCAL_DEPLOY_STATE


def logs_dir() -> Path:
    return _paths.runs_dir() / ".local-deploy-logs"


def read_state() -> dict | None:
    path = state_file()
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ArtifactError(f"{path} must be JSON. Got something else instead.", path=path,
                            hint=f"delete {path} and stop the server by hand if one still runs.") from None


def _sections(params: Any):
    from ..params import RunParams

    params = params if params is not None else RunParams()
    return params.package, params.deploy


#: What a server process inherits from the caller's environment: the basics a Python process
#: needs to start and find the kit (everything else of the caller stays out).
BASIC_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
             "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX")


def server_env(params: Any = None, environ: dict[str, str] | None = None, *, run_id: str | None = None) -> dict[str, str]:
    """The environment of a local server process: :data:`BASIC_ENV`, the run's serving
    settings (``serve`` section, with ``serve.monitor``: the request log of run ``run_id`` in
    :func:`request_log_folder`) and the variables ``deploy.secret_env`` names; nothing else."""
    from ..params import RunParams

    environ = dict(os.environ if environ is None else environ)
    params = params if params is not None else RunParams()
    env = {name: environ[name] for name in BASIC_ENV if name in environ}
    env.update(serving_settings(params, request_log_folder(params, run_id)).to_env())
    env.update({name: environ[name] for name in params.deploy.secret_env if name in environ})
    return env


def serving_settings(params: Any, log_dir: str | os.PathLike | None) -> Any:
    """The server's settings of the ``serve`` section; the request log (if sampled) in ``log_dir``."""
    from ..serving import ServeSettings

    serve, monitor = params.serve, params.serve.monitor
    return ServeSettings.from_env({}, max_rows=serve.max_rows, max_body_bytes=serve.max_body_bytes,
                                  unknown_categories=serve.unknown_categories, drift_window=monitor.window,
                                  log_requests=str(log_dir) if monitor.sample > 0 and log_dir else None,
                                  log_sample=monitor.sample, log_max_file_bytes=monitor.max_file_bytes,
                                  log_max_total_bytes=monitor.max_total_bytes)


def request_log_folder(params: Any, run_id: str | None) -> Path | None:
    """Where a local server of run ``run_id`` writes its request log: ``serve.monitor.log_dir``,
    else ``<runs dir>/.requests/<run id>/``; None when ``serve.monitor.sample`` is 0."""
    monitor = params.serve.monitor
    if monitor.sample <= 0:
        return None
    return Path(monitor.log_dir).expanduser() if monitor.log_dir else _paths.request_log_dir(run_id or _paths.SCRATCH_RUN)


def _containerd(params: Any, runner: Runner) -> Containerd:
    package, _ = _sections(params)
    return Containerd(package.containerd_socket, package.containerd_namespace, runner=runner)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- deploy ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _one_at_a_time(log: Callable[[str], None]) -> Iterator[None]:
    """Hold the local deploy lock (two deploys at once both reported success; the state kept
    one server and undeploy left the other running)."""
    path = _paths.runs_dir() / _paths.LOCAL_DEPLOY_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another local deploy or undeploy is running ({path}): waiting for it to finish")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_port_free(port: int) -> None:
    """DeployError unless ``port`` can be listened on here (another process holds it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise DeployError(f"deploy.local_port {port} must be free for the new server. Got it in use by another "
                              f"process instead ({exc.strerror}); nothing was started.",
                              hint="stop that process, or choose another deploy.local_port (0: any free port).") from None


def deploy(run_dir: Path, params: Any = None, *, log: Callable[[str], None] = print,
           runner: Runner = DEFAULT_RUNNER, timeout: float | None = None) -> dict:
    """Deploy run ``run_dir``'s model locally; returns the release record."""
    with _one_at_a_time(log):
        return _deploy(run_dir, params, log=log, runner=runner, timeout=timeout)


def _deploy(run_dir: Path, params: Any, *, log: Callable[[str], None], runner: Runner,
            timeout: float | None) -> dict:
    package, dep = _sections(params)
    run_dir = Path(run_dir)
    artifacts = run_dir / _paths.ARTIFACTS_SUBDIR
    examples = _artifacts.EXAMPLES.load(run_dir)
    timeout = timeout if timeout is not None else min(dep.rollout_timeout, 120.0)
    previous = read_state()
    previous_alive = previous is not None and _alive(previous, runner)
    mode, image, containerd = _choose_mode(artifacts, params, runner, log)

    port = dep.local_port or free_port()
    staged = bool(dep.local_port and previous_alive and previous.get("port") == dep.local_port)
    if staged:            # the old one holds the port: check the new one beside it first
        port = free_port()
    elif dep.local_port:
        check_port_free(port)
    started = time.monotonic()
    env = server_env(params, run_id=run_dir.name)
    current = _start(mode, run_dir, artifacts, image, containerd, port, dep.name, runner, log, env)
    try:
        _wait_ready(current, containerd, runner, timeout)
        ready_seconds = time.monotonic() - started
        smoke = _smoke(current["url"], examples, log)
    except DeployError:
        _stop(current, runner)
        raise
    log(f"new server ready in {ready_seconds:.2f} s at {current['url']}; smoke test: {smoke['records']} records "
        "answered as at training")
    if previous_alive:
        log(f"stopping the previous deployment ({previous.get('run_id')}, {previous.get('name') or previous.get('pid')})")
        _stop(previous, runner)
    if staged:
        checked = current
        try:
            check_port_free(dep.local_port)
            current = _start(mode, run_dir, artifacts, image, containerd, dep.local_port, dep.name, runner, log,
                             env)
            _wait_ready(current, containerd, runner, timeout)
            smoke = _smoke(current["url"], examples, log)
            _stop(checked, runner)
        except DeployError as exc:
            log(f"could not move to port {dep.local_port} ({exc.message}); keeping the new server at {checked['url']}")
            _stop(current, runner)
            current = checked
    release = {
        "target": "local", "mode": mode, "run_id": run_dir.name, "url": current["url"], "port": current["port"],
        "name": current.get("name"), "pid": current.get("pid"), "log": current["log"],
        "image": image.get("ref") if image else None, "digest": image.get("digest") if image else None,
        "containerd": current.get("containerd"), "ready_seconds": round(ready_seconds, 3), "smoke": smoke,
        "previous": ({"run_id": previous.get("run_id"), "name": previous.get("name"), "pid": previous.get("pid")}
                     if previous_alive else None),
        "deployed": _now(),
    }
    _atomic.write_json(state_file(), {**current, "run_id": run_dir.name, "run_dir": str(run_dir),
                                      "image": release["image"], "digest": release["digest"],
                                      "deployed": release["deployed"]})
    _artifacts.RELEASE.save(run_dir, release)
    log(f"deployed {run_dir.name} ({mode}) at {current['url']}")
    return release


def _choose_mode(artifacts: Path, params: Any, runner: Runner, log) -> tuple[str, dict | None, Containerd | None]:
    containerd = _containerd(params, runner)
    if not containerd.available:
        log("no container runtime here: running the model server as a local process")
        return "process", None, None
    image = _artifacts.IMAGE.load(artifacts).to_json()
    containerd.check()
    digest = containerd.image_digest(image["ref"])
    if digest is None:
        layout = image.get("layout")
        if not layout or not Path(layout).is_dir():
            raise ContainerdError(f"{containerd.describe()} must hold {image['ref']}. Got no such image instead.",
                                  hint="build and import it: `mlops-kit build RUN_ID`.")
        from ..image import BuiltImage

        log(f"importing {image['ref']} into {containerd.describe()}")
        containerd.import_archive(BuiltImage(ref=image["ref"], builder=image["builder"], layout=Path(layout)).write_archive)
        digest = containerd.image_digest(image["ref"])
    if image.get("digest") and digest != image["digest"]:
        raise ContainerdError(f"{image['ref']} in {containerd.describe()} must have the digest {image['digest']} "
                              f"(image.json). Got {digest} instead.", hint="rebuild: `mlops-kit build RUN_ID`.")
    return "container", image, containerd


def _start(mode, run_dir, artifacts, image, containerd, port, name, runner, log, env=None) -> dict:
    logs = logs_dir()
    logs.mkdir(parents=True, exist_ok=True)
    ident = f"mlops-kit-{name}-{secrets.token_hex(3)}"
    log_file = logs / f"{ident}.log"
    url = f"http://{HOST}:{port}"
    instance = secrets.token_hex(16)   # named by the new server's readiness answer, and by no other
    if mode == "container":
        argv = ["python3", "-m", "mlops_kit.serving", "--model-dir", MODEL_DIR_IN_IMAGE, "--host", HOST]
        settings, mounts = _container_settings(env or {})
        containerd.run(image["ref"], ident, env={**settings, "PORT": str(port), INSTANCE_ENV: instance},
                       log_file=log_file, command=argv, mounts=mounts)
        log(f"started container {ident} ({image['ref']}) on port {port}, log {log_file}")
        return {"mode": mode, "name": ident, "port": port, "url": url, "log": str(log_file), "instance": instance,
                "containerd": {"socket": containerd.socket, "namespace": containerd.namespace, "via": containerd.via}}
    out = open(log_file, "ab")
    proc = runner.popen([sys.executable, "-m", "mlops_kit.serving", "--model-dir", str(artifacts.resolve()),
                         "--host", HOST, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True,
                        env={**(env if env is not None else server_env()), INSTANCE_ENV: instance})
    out.close()
    _CHILDREN[proc.pid] = proc
    log(f"started process {proc.pid} on port {port}, log {log_file}")
    return {"mode": mode, "pid": proc.pid, "port": port, "url": url, "log": str(log_file), "instance": instance}


def _container_settings(env: dict[str, str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The serving settings of a process's environment for the container: the request log's
    host folder bind-mounted at :data:`REQUEST_LOG_DIR_IN_IMAGE` (the root file system is
    read-only), writable by the image's user."""
    from ..image import APP_UID, REQUEST_LOG_DIR_IN_IMAGE
    from ..serving import ENVIRONMENT

    settings = {k: v for k, v in env.items() if k in ENVIRONMENT.values()}
    folder = settings.get(ENVIRONMENT["log_requests"])
    if not folder:
        return settings, []
    host = Path(folder)
    host.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(host, APP_UID, APP_UID)
    else:
        host.chmod(0o777)
    settings[ENVIRONMENT["log_requests"]] = REQUEST_LOG_DIR_IN_IMAGE
    return settings, [(str(host.resolve()), REQUEST_LOG_DIR_IN_IMAGE)]


def _log_tail(entry: dict, lines: int = 25) -> str:
    try:
        return tail(Path(entry["log"]).read_text(errors="replace"), lines)
    except OSError:
        return ""


def _wait_ready(entry: dict, containerd: Containerd | None, runner: Runner, timeout: float) -> None:
    """Until the new server answers ready, naming its instance; DeployError when it exits, when
    another process answers on its port instead, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    who = entry.get("name") or entry.get("pid")
    while True:
        if not _alive(entry, runner, containerd):
            time.sleep(0.2)  # let the log be flushed
            raise DeployError(f"The new server ({who}) exited before it was ready; "
                              "the previous deployment keeps serving.", log=_log_tail(entry))
        answer = _probe(entry["url"])
        if answer is not None:
            status, instance = answer
            if instance != entry.get("instance"):
                raise DeployError(f"The server answering at {entry['url']} must be the one just started ({who}). "
                                  f"Got another process's answer instead (HTTP {status}, instance {instance!r}); "
                                  "the previous deployment keeps serving.", log=_log_tail(entry),
                                  hint=f"stop whatever else listens on port {entry['port']}.")
            if status == 200:
                return
        if time.monotonic() > deadline:
            raise DeployError(f"The new server must answer {READY_PATH} within {timeout:.0f} s. Got no ready answer "
                              "instead; the previous deployment keeps serving.", log=_log_tail(entry))
        time.sleep(0.05)


def _probe(url: str) -> tuple[int, str | None] | None:
    """The status of ``url``'s readiness answer and the instance it names; None: no HTTP answer."""
    try:
        with urllib.request.urlopen(url + READY_PATH, timeout=2) as resp:
            return resp.status, resp.headers.get(INSTANCE_HEADER)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get(INSTANCE_HEADER)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _ready(url: str, instance: str | None = None) -> bool:
    """``url`` answers ready (and names ``instance``, when the state recorded one)."""
    answer = _probe(url)
    return answer is not None and answer[0] == 200 and (instance is None or answer[1] == instance)


def _smoke(url: str, examples: _artifacts.Examples, log: Callable[[str], None]) -> dict:
    """The shared smoke test (:func:`mlops_kit.deploy.base.smoke_test`) against ``url``."""
    from .base import smoke_test

    return smoke_test(lambda path, body: _post_json(url + path, body), examples, log=log)


def _post_json(url: str, body: Any) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise DeployError(f"HTTP {exc.code}: {exc.read()[:500].decode(errors='replace')}", status=exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DeployError(f"no answer from {url} ({exc})") from None


# --- liveness and stopping ------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"mlops_kit.serving" in cmdline


def _entry_containerd(entry: dict, runner: Runner) -> Containerd:
    info = entry.get("containerd") or {}
    return Containerd(info.get("socket"), info.get("namespace", "k8s.io"), runner=runner)


def _alive(entry: dict, runner: Runner, containerd: Containerd | None = None) -> bool:
    if entry.get("mode") == "process":
        return bool(entry.get("pid")) and _pid_alive(int(entry["pid"]))
    try:
        return (containerd or _entry_containerd(entry, runner)).task_status(entry["name"]) == "RUNNING"
    except ContainerdError:
        return False


def _stop(entry: dict, runner: Runner, grace: float = 10.0) -> None:
    if entry.get("mode") == "process":
        pid = int(entry["pid"])
        if _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _pid_alive(pid):
                time.sleep(0.05)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            child.wait(timeout=5)
        return
    try:
        _entry_containerd(entry, runner).stop(entry["name"], grace=grace)
    except ContainerdError:
        pass


# --- status / undeploy ----------------------------------------------------------------------

def status(params: Any = None, *, runner: Runner = DEFAULT_RUNNER) -> dict:
    """What the local target serves: run, url, ready, mode; ``deployed: False`` when nothing."""
    state = read_state()
    if state is None:
        return {"target": "local", "deployed": False}
    alive = _alive(state, runner)
    return {"target": "local", "deployed": True, "running": alive,
            "ready": alive and _ready(state["url"], state.get("instance")),
            **{k: state.get(k) for k in ("run_id", "mode", "url", "port", "name", "pid", "image", "digest",
                                         "log")},
            "deployed_at": state.get("deployed")}


def rollback(params: Any = None, *, log: Callable[[str], None] = print, to_revision: int | None = None,
             runner: Runner = DEFAULT_RUNNER) -> dict:
    """Serve the run that served before the current one again (its release recorded it)."""
    from ..errors import MlopsKitError
    from ..ledger import run_dir_or_champion

    if to_revision is not None:
        raise MlopsKitError("--to-revision must go with deploy.target microk8s (its release history). "
                            "Got target local instead.", hint="deploy the run you want: `mlops-kit deploy RUN_ID`.")
    state = read_state()
    current = state and _artifacts.RELEASE.load_if_present(Path(state["run_dir"]))
    previous = (current.model_extra or {}).get("previous") if current else None
    if not previous or not previous.get("run_id"):
        raise MlopsKitError("A local rollback needs a previous deployment. Got none recorded instead.",
                            hint="deploy the run you want: `mlops-kit deploy RUN_ID`.")
    log(f"rolling back to run {previous['run_id']}")
    return deploy(run_dir_or_champion(previous["run_id"]), params, log=log, runner=runner)


def undeploy(params: Any = None, *, runner: Runner = DEFAULT_RUNNER, log: Callable[[str], None] = print) -> dict:
    """Stop the local deployment and forget it."""
    with _one_at_a_time(log):
        return _undeploy(runner, log)


def _undeploy(runner: Runner, log: Callable[[str], None]) -> dict:
    state = read_state()
    if state is None:
        return {"target": "local", "undeployed": None}
    _stop(state, runner)
    state_file().unlink(missing_ok=True)
    log(f"stopped {state.get('name') or state.get('pid')} (run {state.get('run_id')})")
    return {"target": "local", "undeployed": state.get("name") or state.get("pid"), "run_id": state.get("run_id")}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
