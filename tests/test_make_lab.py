"""`make lab` starts JupyterLab for root too (servers, containers): JupyterLab alone refuses
root ("Running as root is not recommended. Use --allow-root")."""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

ROOT_FLAG = "--allow-root"


def _lab_recipe(env: dict | None = None) -> tuple[str, list[str]]:
    """What `make -n lab` would print and run: its output and the jupyter command's words."""
    shown = subprocess.run(["make", "--no-print-directory", "-n", "lab"], cwd=REPO, env=env, capture_output=True,
                           text=True, check=True).stdout
    line = next(line for line in shown.splitlines() if "/jupyter lab" in line)
    return shown, shlex.split(line)


def test_make_lab_adds_allow_root_for_root_only(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "id").write_text("#!/bin/sh\necho 1000\n")
    (fake / "id").chmod(0o755)
    shown, command = _lab_recipe({**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert ROOT_FLAG not in command and "you are root" not in shown
    (fake / "id").write_text("#!/bin/sh\necho 0\n")
    shown, command = _lab_recipe({**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert command[1:3] == ["lab", ROOT_FLAG]
    assert "you are root (uid 0): JupyterLab starts with --allow-root" in shown


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        (tmp_path / name.lower()).mkdir(exist_ok=True)
        env[name] = str(tmp_path / name.lower())
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / f"lab-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
             "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}/api/status?token={token}", log


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the refusal only happens for root")
def test_make_lab_as_root_starts_and_listens(tmp_path):
    _, command = _lab_recipe()
    # JupyterLab alone refuses root: the reason for the flag
    without = [word for word in command if word != ROOT_FLAG]
    process, _, log = _start(without, tmp_path)
    try:
        assert process.wait(timeout=60) != 0
    finally:
        _stop(process)
    assert "Use --allow-root" in log.read_text()
    # the Makefile's command starts and answers
    process, url, log = _start(command, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"jupyter lab exited {process.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, f"no answer from {url}:\n{log.read_text()[-3000:]}"
                time.sleep(0.3)
    finally:
        _stop(process)
