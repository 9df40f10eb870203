"""05_deploy, ``deploy.target: local``: the run's image on this machine.

The image runs in containerd (host network, a free port or ``deploy.local_port``, logs to a
file, read-only root file system); with no container runtime the same app runs as a local
process (``python -m mlops_kit.serving``). A new deployment must become ready and answer
``examples.json`` exactly as at training before the previous one is stopped: until then the
old one keeps serving, and a new one that fails is removed with its log shown.

State: ``<runs dir>/.local-deploy.json`` (atomic); each release: the run's
``artifacts/release.json``.
"""

from __future__ import annotations

import json
import math
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
from typing import Any, Callable

from .. import _atomic, _paths
from ..errors import ArtifactError, ContainerdError, DeployError
from ..image import IMAGE_RECORD, Containerd
from ..image._context import MODEL_DIR_IN_IMAGE
from ..image._runner import DEFAULT_RUNNER, Runner, tail

RELEASE_RECORD = "release.json"
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


def server_env(params: Any = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a local server process: :data:`BASIC_ENV`, the run's serving
    settings (``serve`` section) and the variables ``deploy.secret_env`` names; nothing else."""
    from ..params import RunParams
    from ..serving import ServeSettings

    environ = dict(os.environ if environ is None else environ)
    params = params if params is not None else RunParams()
    env = {name: environ[name] for name in BASIC_ENV if name in environ}
    serve = params.serve
    env.update(ServeSettings.from_env({}, max_rows=serve.max_rows, max_body_bytes=serve.max_body_bytes,
                                      unknown_categories=serve.unknown_categories).to_env())
    env.update({name: environ[name] for name in params.deploy.secret_env if name in environ})
    return env


def _containerd(params: Any, runner: Runner) -> Containerd:
    package, _ = _sections(params)
    return Containerd(package.containerd_socket, package.containerd_namespace, runner=runner)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- deploy ---------------------------------------------------------------------------------

def deploy(run_dir: Path, params: Any = None, *, log: Callable[[str], None] = print,
           runner: Runner = DEFAULT_RUNNER, timeout: float | None = None) -> dict:
    """Deploy run ``run_dir``'s model locally; returns the release record."""
    package, dep = _sections(params)
    run_dir = Path(run_dir)
    artifacts = run_dir / _paths.ARTIFACTS_SUBDIR
    examples = _read_examples(artifacts)
    timeout = timeout if timeout is not None else min(dep.rollout_timeout, 120.0)
    previous = read_state()
    previous_alive = previous is not None and _alive(previous, runner)
    mode, image, containerd = _choose_mode(artifacts, params, runner, log)

    port = dep.local_port or free_port()
    staged = bool(dep.local_port and previous_alive and previous.get("port") == dep.local_port)
    if staged:            # the old one holds the port: check the new one beside it first
        port = free_port()
    started = time.monotonic()
    env = server_env(params)
    current = _start(mode, run_dir, artifacts, image, containerd, port, dep.name, runner, log, env)
    try:
        _wait_ready(current, containerd, runner, timeout)
        ready_seconds = time.monotonic() - started
        smoke = _smoke(current["url"], examples)
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
            current = _start(mode, run_dir, artifacts, image, containerd, dep.local_port, dep.name, runner, log,
                             env)
            _wait_ready(current, containerd, runner, timeout)
            smoke = _smoke(current["url"], examples)
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
    _atomic.write_json(artifacts / RELEASE_RECORD, release)
    log(f"deployed {run_dir.name} ({mode}) at {current['url']}")
    return release


def _read_examples(artifacts: Path) -> dict:
    path = artifacts / "examples.json"
    if not path.is_file():
        raise ArtifactError(f"No examples at {path}: every deployment is smoke-tested with them.", path=path,
                            hint="run the train stage (02_train) first.")
    examples = json.loads(path.read_text())
    if not isinstance(examples, dict) or not isinstance(examples.get("records"), list) \
            or len(examples.get("predictions") or []) != len(examples["records"]):
        raise ArtifactError(f"{path} must hold records and as many predictions. Got something else instead.",
                            path=path)
    return examples


def _choose_mode(artifacts: Path, params: Any, runner: Runner, log) -> tuple[str, dict | None, Containerd | None]:
    record_path = artifacts / IMAGE_RECORD
    containerd = _containerd(params, runner)
    if not containerd.available:
        log("no container runtime here: running the model server as a local process")
        return "process", None, None
    if not record_path.is_file():
        raise ArtifactError(f"No image record at {record_path}: the local target runs the run's image.",
                            path=record_path, hint="run the package stage (04_package) or `mlops-kit build RUN_ID`.")
    image = json.loads(record_path.read_text())
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
    if mode == "container":
        argv = ["python3", "-m", "mlops_kit.serving", "--model-dir", MODEL_DIR_IN_IMAGE, "--host", HOST]
        containerd.run(image["ref"], ident, env={"PORT": str(port)}, log_file=log_file, command=argv)
        log(f"started container {ident} ({image['ref']}) on port {port}, log {log_file}")
        return {"mode": mode, "name": ident, "port": port, "url": url, "log": str(log_file),
                "containerd": {"socket": containerd.socket, "namespace": containerd.namespace, "via": containerd.via}}
    out = open(log_file, "ab")
    proc = runner.popen([sys.executable, "-m", "mlops_kit.serving", "--model-dir", str(artifacts.resolve()),
                         "--host", HOST, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True,
                        env=env if env is not None else server_env())
    out.close()
    _CHILDREN[proc.pid] = proc
    log(f"started process {proc.pid} on port {port}, log {log_file}")
    return {"mode": mode, "pid": proc.pid, "port": port, "url": url, "log": str(log_file)}


def _log_tail(entry: dict, lines: int = 25) -> str:
    try:
        return tail(Path(entry["log"]).read_text(errors="replace"), lines)
    except OSError:
        return ""


def _wait_ready(entry: dict, containerd: Containerd | None, runner: Runner, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if _ready(entry["url"]):
            return
        if not _alive(entry, runner, containerd):
            time.sleep(0.2)  # let the log be flushed
            raise DeployError(f"The new server ({entry.get('name') or entry.get('pid')}) exited before it was ready; "
                              "the previous deployment keeps serving.", log=_log_tail(entry))
        if time.monotonic() > deadline:
            raise DeployError(f"The new server must answer {READY_PATH} within {timeout:.0f} s. Got no ready answer "
                              "instead; the previous deployment keeps serving.", log=_log_tail(entry))
        time.sleep(0.05)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + READY_PATH, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _smoke(url: str, examples: dict) -> dict:
    body = json.dumps(examples["records"]).encode()
    req = urllib.request.Request(url + "/predict", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise DeployError(f"The smoke test (POST /predict with examples.json) must succeed. Got HTTP {exc.code}: "
                          f"{exc.read()[:500].decode(errors='replace')} instead; the previous deployment keeps "
                          "serving.") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DeployError(f"The smoke test (POST /predict) must get an answer. Got {exc} instead.") from None
    got = answer.get("predictions") if isinstance(answer, dict) else None
    expected = examples["predictions"]
    if not isinstance(got, list) or len(got) != len(expected) or not all(map(_same, got, expected)):
        raise DeployError(f"The smoke test's predictions must be {expected} (recorded at training). Got {got} "
                          "instead; the previous deployment keeps serving.")
    return {"records": len(expected), "passed": True}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


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
    return {"target": "local", "deployed": True, "running": alive, "ready": alive and _ready(state["url"]),
            **{k: state.get(k) for k in ("run_id", "mode", "url", "port", "name", "pid", "image", "digest",
                                         "log")},
            "deployed_at": state.get("deployed")}


def undeploy(params: Any = None, *, runner: Runner = DEFAULT_RUNNER, log: Callable[[str], None] = print) -> dict:
    """Stop the local deployment and forget it."""
    state = read_state()
    if state is None:
        return {"target": "local", "undeployed": None}
    _stop(state, runner)
    state_file().unlink(missing_ok=True)
    log(f"stopped {state.get('name') or state.get('pid')} (run {state.get('run_id')})")
    return {"target": "local", "undeployed": state.get("name") or state.get("pid"), "run_id": state.get("run_id")}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
