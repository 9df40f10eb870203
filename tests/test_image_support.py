"""Shared by tests/test_image*.py and tests/test_local_deploy*.py: a private containerd (like
the recipe's containerd-up.sh, in Python), the base-image cache of the session, run folders.

No tests here; the helpers are singletons so every module shares one containerd and one cache.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from _real import need, need_commands

_STATE: dict = {}


def start_containerd() -> Path:
    """A private containerd (CRI off, own root/state/socket); stopped at exit. Returns the socket."""
    if "socket" in _STATE:
        return _STATE["socket"]
    need_commands("containerd", "runc", "ctr")
    need(os.geteuid() == 0, "a private containerd needs root")
    folder = Path(tempfile.mkdtemp(prefix="mk-containerd-"))
    sock = folder / "containerd.sock"
    (folder / "config.toml").write_text(f"""version = 2
root = "{folder}/root"
state = "{folder}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{folder}/opt"
""")
    log = open(folder / "containerd.log", "ab")
    proc = subprocess.Popen(["containerd", "--config", str(folder / "config.toml")], stdout=log, stderr=log,
                            start_new_session=True)
    for _ in range(200):
        if subprocess.run(["ctr", "-a", str(sock), "version"], capture_output=True).returncode == 0:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    else:
        proc.kill()
    need(proc.poll() is None, f"containerd did not start; see {folder / 'containerd.log'}")
    _STATE.update(socket=sock, proc=proc, folder=folder)
    atexit.register(stop_containerd)
    return sock


def stop_containerd() -> None:
    proc, folder, sock = _STATE.pop("proc", None), _STATE.pop("folder", None), _STATE.pop("socket", None)
    if proc is None:
        return
    ctr = ["ctr", "-a", str(sock), "-n", "k8s.io"]
    names = subprocess.run([*ctr, "c", "ls", "-q"], capture_output=True, text=True).stdout.split()
    for name in names:
        subprocess.run([*ctr, "task", "kill", "-s", "SIGKILL", name], capture_output=True)
    time.sleep(0.2 if names else 0)
    for name in names:
        subprocess.run([*ctr, "task", "rm", "-f", name], capture_output=True)
        subprocess.run([*ctr, "c", "rm", name], capture_output=True)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    subprocess.run(["umount", "-R", str(folder / "root")], capture_output=True)  # snapshot mounts, if any
    shutil.rmtree(folder, ignore_errors=True)


def image_cache() -> Path:
    """The base-image cache of the session: $MLOPS_KIT_CACHE_DIR when set (CI builds it once),
    else a folder that lives as long as the session."""
    if "cache" not in _STATE:
        explicit = os.environ.get("MLOPS_KIT_CACHE_DIR")
        _STATE["cache"] = Path(explicit) if explicit else Path(tempfile.mkdtemp(prefix="mk-image-cache-"))
        if not explicit:
            atexit.register(shutil.rmtree, _STATE["cache"], True)
    return _STATE["cache"]


def need_layers_builder() -> None:
    need_commands("umoci", "mmdebstrap")


def make_run(runs: Path, model_dir: Path, run_id: str, *, params: dict | None = None) -> Path:
    """A run folder whose artifacts/ is a copy of a trained model folder."""
    run = runs / run_id
    shutil.copytree(model_dir, run / "artifacts", ignore=shutil.ignore_patterns("context", "image.json",
                                                                                "release.json"))
    if params is not None:
        import json

        # a record as the runner writes it (typed: the package stage records its ONNX model there)
        (run / "run.json").write_text(json.dumps({"id": run_id, "status": "succeeded", "params": params}))
    return run
