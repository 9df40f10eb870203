"""Faults a careless user or a crash causes: read-only folders, kernels' connection files
(they hold the HMAC key) left in $TMPDIR."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from _real import need_commands
from conftest import REPO

pytestmark = pytest.mark.security


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops_kit.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **env}, timeout=600)


@pytest.fixture
def private_tmp(tmp_path):
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    return folder


@pytest.fixture
def immutable():
    """``chattr +i``: a folder even root cannot write (root ignores permission bits)."""
    need_commands("chattr")
    made: list[Path] = []

    def make(folder: Path) -> Path:
        result = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if result.returncode != 0:  # a file system without the flag (overlayfs): not a missing component
            pytest.skip(f"chattr +i does not work on this file system: {result.stderr.strip()}")
        made.append(folder)
        return folder

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("mlops-kit-kernel"))


def test_a_read_only_runs_folder_is_named_and_leaves_no_connection_files(_isolated_runs, private_tmp, immutable):
    immutable(_isolated_runs)
    result = cli("run", "--stages", "data", env={"TMPDIR": str(private_tmp)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{_isolated_runs} must be writable by you" in result.stderr and "MLOPS_KIT_RUNS_DIR" in result.stderr
    assert leftovers(private_tmp) == []


def test_resume_in_a_read_only_run_folder_is_named(_isolated_runs, private_tmp, immutable):
    folder = _isolated_runs / "20260101-000000-fail"
    folder.mkdir()
    for sub in ("notebooks", "reports", "artifacts"):
        (folder / sub).mkdir()
    from mlops_kit.params import RunParams
    (folder / "run.json").write_text(json.dumps({
        "id": folder.name, "status": "failed", "params": RunParams().model_dump(mode="json"),
        "stages_requested": ["data"], "stages": {"data": {"status": "failed"}}}))
    immutable(folder)
    result = cli("run", "--resume", folder.name, env={"TMPDIR": str(private_tmp)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and f"{folder} must be writable by you" in result.stderr
    assert leftovers(private_tmp) == []


def test_connection_folders_of_killed_runs_are_removed_by_the_next_run(private_tmp, monkeypatch):
    from mlops_kit.execution import _kernels

    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = private_tmp / f"mlops-kit-kernels-{dead.pid}-abc"
    stale.mkdir()
    (stale / "mlops-kit-kernel-1.json").write_text('{"key": "hmac-secret"}')
    alive = private_tmp / f"mlops-kit-kernels-{os.getpid()}-def"
    alive.mkdir()
    fresh = _kernels.private_connection_dir()
    assert not stale.exists() and alive.exists()
    assert Path(fresh).parent == private_tmp and oct(os.stat(fresh).st_mode & 0o777) == "0o700"
    shutil.rmtree(fresh)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_a_run_leaves_no_connection_files(_isolated_runs, private_tmp, mode):
    result = cli("run", "--stages", "data", env={"TMPDIR": str(private_tmp), "MLOPS_KIT_KERNELS": mode,
                                                 "JUPYTER_RUNTIME_DIR": str(private_tmp / "runtime")})
    assert result.returncode == 0, result.stderr
    assert leftovers(private_tmp) == []
    assert not list((private_tmp / "runtime").glob("kernel-*.json")) if (private_tmp / "runtime").exists() else True
