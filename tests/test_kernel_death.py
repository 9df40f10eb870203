"""A stage's kernel killed with SIGKILL: the stage ends as failed (which stage, "the kernel
died"), the run is recorded failed and the exit code is non-zero, in both kernel modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from conftest import REPO

pytestmark = [pytest.mark.security, pytest.mark.slow]


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_a_killed_kernel_fails_its_stage(mode, _isolated_runs, project_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_KIT_KERNELS", mode)
    pid_file = tmp_path / "kernel.pid"
    path = project_copy / "notebooks" / "01_data.ipynb"
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(2, nbformat.v4.new_code_cell(
        f"import os, pathlib, time\npathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\ntime.sleep(600)"))
    nbformat.write(notebook, path)
    process = subprocess.Popen([sys.executable, "-m", "mlops_kit.cli", "run", "--stages", "data"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not pid_file.exists() or not pid_file.read_text():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)  # it hung forever before (fork mode)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert "Stage 'data' failed" in stderr and "the kernel died" in stderr, stderr
    (record_path,) = _isolated_runs.glob("*/run.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "failed"
    assert record["error"]["stage"] == "data" and record["error"]["exception"] == "DeadKernelError"
    assert record["stages"]["data"]["status"] == "failed"
