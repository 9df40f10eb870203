"""The kernels' parent kept warm between runs (``MLOPS_KIT_WARM_MINUTES``, issue 23 item 3):
the next run's session, with that run's environment; the same results; stale, idle and
another user's connections; the folder's permissions. Every warm parent a test starts is
stopped by the fixture (never a leftover process)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO
from mlops_kit.execution import _warm

CLIENT = textwrap.dedent("""
    import json, os
    from mlops_kit.execution import _kernels
    zygote = _kernels.new_zygote()
    print(json.dumps({"warm": zygote.warm, "pid": zygote.call("os:getpid")["result"],
                      "ppid": zygote.call("os:getppid")["result"],
                      "marker": zygote.call("os:getenv", key="WARM_TEST_MARKER")["result"]}))
    zygote.close()
""")


@pytest.fixture
def warm_env(tmp_path, monkeypatch):
    """A private runtime folder; warm parents of a few seconds; all of them stopped at the end."""
    import tempfile

    runtime = Path(tempfile.mkdtemp(prefix="kw-", dir="/tmp"))  # pytest's are too long for a socket's path
    extra = tmp_path / "extra"  # on sys.path: a file added there makes the warm parent stale
    extra.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv(_warm.MINUTES_ENV, "1")
    monkeypatch.setenv(_warm.TICK_ENV, "0.2")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(extra), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    yield {"folder": runtime / f"mlops-kit-warm-{os.getuid()}", "extra": extra}
    where = runtime / f"mlops-kit-warm-{os.getuid()}"
    pids = _warm.stop_all(where) if where.is_dir() else []
    for pid in pids:
        assert _gone(pid), f"warm parent {pid} still running"
    import shutil

    shutil.rmtree(runtime, ignore_errors=True)


def _client(marker: str = "1") -> dict:
    result = subprocess.run([sys.executable, "-c", CLIENT], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={**os.environ, "WARM_TEST_MARKER": marker})
    assert result.returncode == 0, result.stderr
    assert "Debugger warning" not in result.stderr  # debugpy's, imported by the zygote: silenced
    return json.loads(result.stdout)


def _warm_pid(folder: Path, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pidfile in folder.glob("*.pid"):
            text = pidfile.read_text()
            if text:
                return int(text)
        time.sleep(0.05)
    raise AssertionError(f"no warm parent in {folder}: {list(folder.glob('*')) if folder.is_dir() else 'no folder'} "
                         + "".join(p.read_text()[-2000:] for p in folder.glob("*.log")))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except OSError:
        return False


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_the_next_client_gets_a_session_of_the_warm_parent_with_its_own_environment(warm_env):
    first = _client("first")
    assert first["warm"] is False and first["marker"] == "first"
    parent = _warm_pid(warm_env["folder"])
    assert parent == first["pid"]  # the first run's zygote stayed, as the warm parent
    second = _client("second")
    assert second["warm"] is True
    assert second["ppid"] == parent and second["pid"] != parent  # a fork per run
    assert second["marker"] == "second"  # the run's environment, not the first run's
    assert _alive(parent)  # the session's end is not the parent's
    (sock,) = warm_env["folder"].glob("*.sock")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600  # this user's only, in a folder of mode 0700


def test_a_changed_library_folder_makes_the_warm_parent_stale(warm_env):
    _client()
    parent = _warm_pid(warm_env["folder"])
    (warm_env["extra"] / "new_library.py").write_text("")  # an install changes its folder
    assert _gone(parent), "the stale warm parent is still running"
    assert not list(warm_env["folder"].glob("*.sock"))
    again = _client()  # another key: a new zygote, not a session of the stale one
    assert again["warm"] is False


def test_an_idle_warm_parent_exits(warm_env, monkeypatch):
    monkeypatch.setenv(_warm.MINUTES_ENV, "0.01")  # 0.6 s
    _client()
    assert _gone(_warm_pid(warm_env["folder"]))


def test_without_the_variable_no_parent_stays(warm_env, monkeypatch):
    monkeypatch.delenv(_warm.MINUTES_ENV)
    first = _client()
    assert first["warm"] is False
    assert _gone(first["pid"])
    assert not warm_env["folder"].exists() or not list(warm_env["folder"].glob("*.pid"))


@pytest.mark.security
@pytest.mark.parametrize("mode", [0o755, 0o777])
def test_a_folder_open_to_others_is_refused(warm_env, capsys, mode):
    warm_env["folder"].mkdir(mode=0o700)
    os.chmod(warm_env["folder"], mode)
    assert _warm.folder() is None
    err = capsys.readouterr().err
    assert f"must be a folder of uid {os.getuid()} with mode 0700. Got uid {os.getuid()}, mode {mode:o} instead" in err


@pytest.mark.security
def test_a_symlinked_folder_is_refused(warm_env, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    warm_env["folder"].symlink_to(elsewhere)
    assert _warm.folder() is None
    assert "Got a symlink instead" in capsys.readouterr().err


@pytest.mark.security
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another user")
def test_another_users_connection_gets_no_session(warm_env):
    _client()
    parent = _warm_pid(warm_env["folder"])
    (path,) = warm_env["folder"].glob("*.sock")
    os.chmod(warm_env["folder"].parent, 0o711)
    os.chmod(warm_env["folder"], 0o711)  # let the other user reach the socket: the parent must still refuse
    os.chmod(path, 0o666)
    probe = textwrap.dedent(f"""
        import json, os, socket
        os.setgid(65534); os.setuid(65534)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect({str(path)!r})
        client.sendall((json.dumps({{"op": "session", "env": {{}}, "cwd": "/"}}) + "\\n"
                        + json.dumps({{"op": "call", "function": "os:getpid", "kwargs": {{}}}}) + "\\n").encode())
        client.settimeout(30)
        try:
            print(repr(client.recv(4096)))
        except ConnectionResetError:  # closed with the request unread
            print("b''")
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "b''"  # closed without an answer
    assert _alive(parent)


def test_the_peer_uid_is_the_kernel_s_word(tmp_path):
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert _warm.peer_uid(left) == os.getuid()


@pytest.mark.parametrize("value", ["abc", "-1", "99999"])
def test_a_bad_number_of_minutes_is_named(value, monkeypatch):
    monkeypatch.setenv(_warm.MINUTES_ENV, value)
    result = subprocess.run([sys.executable, "-m", "mlops_kit.cli", "run", "--stages", "data"], capture_output=True,
                            text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "MLOPS_KIT_WARM_MINUTES" in result.stderr and "a number of minutes from 0 to 1440" in result.stderr
    assert repr(value) in result.stderr and "Traceback" not in result.stderr


def test_two_warm_runs_at_once_have_the_results_of_a_cold_one(warm_env, _isolated_runs, tmp_path):
    """A cold run leaves the warm parent; two runs at once each get a session of it; the three
    runs' metrics and fingerprints are the same."""
    cli = [sys.executable, "-m", "mlops_kit.cli", "run", "--no-cache", "--stages", "data,train,evaluate"]
    cold = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert cold.returncode == 0, cold.stderr
    parent = _warm_pid(warm_env["folder"])
    timelines = [tmp_path / "a.log", tmp_path / "b.log"]
    warm = [subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "MLOPS_KIT_TIMELINE": str(timeline)}) for timeline in timelines]
    for process in warm:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    for timeline in timelines:
        assert "zygote: warm session" in timeline.read_text()
    records = [json.loads(path.read_text()) for path in sorted(_isolated_runs.glob("*/run.json"))]
    assert len(records) == 3
    assert records[1]["metrics"] == records[0]["metrics"] == records[2]["metrics"]
    for name in ("data", "train"):  # evaluate's input, the model file, differs between any two runs
        assert len({r["stages"][name]["fingerprint"]["digest"] for r in records}) == 1
    assert _alive(parent)


def test_the_kernels_parent_freezes_its_imports_before_forking():
    """gc.freeze() in the kernels' parent: a full collection in a forked kernel then skips the
    imported objects, so their pages stay shared instead of being copied into every kernel
    (measured: PSS of a 10k-row run's processes 573 -> 550 MiB)."""
    from mlops_kit.execution import _kernels

    zygote = _kernels.new_zygote()
    try:
        assert zygote.call("gc:get_freeze_count")["result"] > 10_000
    finally:
        zygote.close()
