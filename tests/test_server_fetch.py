"""``mlops-kit runs fetch RUN_ID --server`` (issue #22): a run of the team's server copied back, so
``runs show|compare``, its notebooks and reports work on the laptop; and what a hostile server's
tar stream may not do (links, ``..``, absolute names, devices, too many bytes, another run's
record): each refused, naming what was found, nothing left behind.

A REAL sshd (tests/_sshd.py) with a login user whose home holds ``~/mlops-kit/proj/runs``; the
hostile streams come from a STAND-IN ``tar`` (first on the sessions' PATH) that prints a crafted
archive."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mlops_kit.errors import InvalidRunId, ServerError
from mlops_kit.server.fetch import fetch_run

pytestmark = pytest.mark.ssh
REPO = Path(__file__).resolve().parent.parent
USER = "mkfetch"


@pytest.fixture(scope="module")
def server():
    from _sshd import Sshd

    sshd = Sshd().start()
    try:
        sshd.add_user(USER)
        yield sshd
    finally:
        sshd.stop_all()


def server_runs(sshd) -> Path:
    return sshd.dir / f"home-{USER}" / "mlops-kit" / "proj" / "runs"


def make_server_run(sshd, run_id: str, *, c: float, accuracy: float) -> Path:
    """A finished run folder as the server's runner leaves it (record, notebook, report, model)."""
    folder = server_runs(sshd) / run_id
    for sub in ("notebooks", "reports", "artifacts"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    record = {"id": run_id, "created": "2026-12-07T22:00:00+00:00", "finished": "2026-12-07T22:01:00+00:00",
              "status": "succeeded", "params": {"train": {"model": "logreg", "params": {"C": c}}},
              "stages": {"train": {"status": "succeeded", "notebook": "notebooks/03_train.ipynb"}},
              "metrics": {"accuracy": accuracy}}
    (folder / "run.json").write_text(json.dumps(record))
    (folder / "notebooks" / "03_train.ipynb").write_text('{"cells": [], "nbformat": 4, "nbformat_minor": 5}')
    (folder / "reports" / "report.html").write_text(f"<html><body>accuracy {accuracy}</body></html>")
    (folder / "artifacts" / "model.bin").write_bytes(os.urandom(300_000))
    for path in [server_runs(sshd).parent.parent, server_runs(sshd).parent, server_runs(sshd), *folder.rglob("*"),
                 folder]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


@pytest.fixture
def local(server, tmp_path, monkeypatch):
    """A laptop's repository (set up by `server init`) and its empty runs folder."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for key, value in {"host": server.url(USER), "identityFile": str(server.user_key),
                       "knownHosts": str(server.known_hosts), "project": "proj"}.items():
        subprocess.run(["git", "-C", str(repo), "config", f"mlops-kit.{key}", value], check=True)
    runs = tmp_path / "runs"
    monkeypatch.setenv("MLOPS_KIT_RUNS_DIR", str(runs))
    monkeypatch.chdir(repo)
    return repo, runs


def kit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops_kit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=180)


def test_a_fetched_run_shows_compares_and_keeps_its_files(server, local):
    repo, runs = local
    first = make_server_run(server, "20261207-220000-aaaa", c=1.0, accuracy=0.91)
    make_server_run(server, "20261207-221000-bbbb", c=0.1, accuracy=0.87)
    for run_id in ("20261207-220000-aaaa", "20261207-221000-bbbb"):
        proc = kit("runs", "fetch", run_id, "--server", cwd=repo)
        assert proc.returncode == 0 and f"Fetched run {run_id} into {runs / run_id}" in proc.stdout, proc.stderr
    shown = kit("runs", "show", "20261207-220000-aaaa", "--json", cwd=repo)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["id"] == "20261207-220000-aaaa" and record["metrics"] == {"accuracy": 0.91}
    compared = kit("runs", "compare", "20261207-220000-aaaa", "20261207-221000-bbbb", "--json", cwd=repo)
    assert compared.returncode == 0, compared.stderr
    result = json.loads(compared.stdout)
    assert result["metrics"] == {"accuracy": [0.91, 0.87]} and result["params"] == {"train.params.C": [1.0, 0.1]}
    for name in ("notebooks/03_train.ipynb", "reports/report.html", "artifacts/model.bin"):
        assert (runs / "20261207-220000-aaaa" / name).read_bytes() == (first / name).read_bytes()
    # a local run of that id is kept unless --force
    again = kit("runs", "fetch", "20261207-220000-aaaa", "--server", cwd=repo)
    assert again.returncode == 1 and "The local run 20261207-220000-aaaa must not exist" in again.stderr
    assert "Traceback" not in again.stderr and "--force" in again.stderr
    (runs / "20261207-220000-aaaa" / "local-note.txt").write_text("mine")
    forced = kit("runs", "fetch", "20261207-220000-aaaa", "--server", "--force", cwd=repo)
    assert forced.returncode == 0, forced.stderr
    assert not (runs / "20261207-220000-aaaa" / "local-note.txt").exists()
    assert sorted(p.name for p in runs.iterdir()) == ["20261207-220000-aaaa", "20261207-221000-bbbb"]


def test_a_run_the_server_lacks_is_named(server, local):
    repo, runs = local
    proc = kit("runs", "fetch", "20991231-000000-none", "--server", cwd=repo)
    assert proc.returncode == 1 and "The run 20991231-000000-none must exist on" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and list(runs.iterdir()) == []


# --- a hostile server ------------------------------------------------------------------------------

@pytest.fixture
def stand_in_tar(server):
    """``stand_in_tar(script)``: the server's ``tar`` runs ``script`` (sh) instead, for one test."""
    path = server.bin / "tar"

    def install(script: str) -> None:
        path.write_text(f"#!/bin/sh\n# STAND-IN for a compromised server's tar\n{script}\n")
        path.chmod(0o755)

    yield install
    path.unlink(missing_ok=True)


RUN = "20261207-230000-evil"


def member(name: str, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data if info.isreg() else None


def crafted(*members, record_id: str = RUN) -> bytes:
    """A tar stream: a valid run.json of ``record_id`` (unless None), then ``members``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        if record_id is not None:
            body = json.dumps({"id": record_id, "status": "succeeded"}).encode()
            info, data = member("./run.json", body)
            tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


HOSTILE = {
    "symlink": (crafted(member("./reports/report.html", type=tarfile.SYMTYPE, linkname="/etc/shadow")),
                "a symbolic link './reports/report.html' (to '/etc/shadow')"),
    "hardlink": (crafted(member("./model.bin", type=tarfile.LNKTYPE, linkname="run.json")),
                 "a hard link './model.bin' (to 'run.json')"),
    "dotdot": (crafted(member("./../../escaped.txt", b"owned")),
               "a member './../../escaped.txt' that leaves the run folder ('..')"),
    "absolute": (crafted(member("/tmp/mk-fetch-escaped.txt", b"owned")),
                 "an absolute member '/tmp/mk-fetch-escaped.txt'"),
    "device": (crafted(member("./tty", type=tarfile.CHRTYPE, devmajor=5, devminor=0)),
               "a member './tty' that is neither a file nor a folder (a character device)"),
    "fifo": (crafted(member("./pipe", type=tarfile.FIFOTYPE)),
             "a member './pipe' that is neither a file nor a folder (a FIFO)"),
    "oversized file": (crafted(member("./artifacts/model.bin", b"\0" * 600_000)), "members of more than 262144 bytes"),
    "oversized stream": (crafted(member("./a", b"x", pax_headers={"comment": "x" * 600_000})),
                         "more than 262144 bytes (stopped)"),
    "another run's record": (crafted(record_id="20261207-000000-other"), "a run.json of the run '20261207-000000-other'"),
    "not a record": (crafted(member("./notebooks/x.ipynb", b"{}"), record_id=None), "a run.json that is not a run record"),
    "not a tar": (b"<html>hello</html>\n" * 100, "a stream that is not a tar archive"),
    "too many members": (crafted(*[member(f"./f{i}", b"x") for i in range(40)]), "more than 30 members"),
}


@pytest.mark.security
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_tar_stream_is_refused_and_leaves_nothing(server, local, monkeypatch, stand_in_tar, case):
    repo, runs = local
    stream, found = HOSTILE[case]
    evil = server.dir / "evil.tar"
    evil.write_bytes(stream)
    evil.chmod(0o644)
    stand_in_tar(f"exec cat {evil}")
    monkeypatch.setattr("mlops_kit.server.fetch.MAX_MEMBERS", 30)
    with pytest.raises(ServerError) as err:
        fetch_run(RUN, cwd=repo, max_bytes=256 << 10)
    message = str(err.value)
    assert f"Got {found}" in message, message
    assert "nothing was written" in message and "\x1b" not in message
    assert list(runs.iterdir()) == []                                          # no run, no temporary folder
    assert not Path("/tmp/mk-fetch-escaped.txt").exists() and not (runs.parent / "escaped.txt").exists()
    assert not (runs.parent.parent / "escaped.txt").exists()


@pytest.mark.security
@pytest.mark.parametrize("run_id", ["../proj2/runs/x", "-rf", "a;id", "$(id)", "scratch", ".hidden", "a b", "x\n"])
def test_a_bad_run_id_is_refused_before_any_command(local, run_id, monkeypatch):
    repo, runs = local
    subprocess.run(["git", "-C", str(repo), "config", "mlops-kit.host", "ssh://nobody@127.0.0.1:1"], check=True)
    with pytest.raises(InvalidRunId):            # not a ServerError: nothing was sent to port 1
        fetch_run(run_id, cwd=repo)
    proc = kit("runs", "fetch", run_id, "--server", cwd=repo)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and not runs.exists()


def test_fetch_needs_server(local):
    repo, _ = local
    proc = kit("runs", "fetch", "20261207-220000-aaaa", cwd=repo)
    assert proc.returncode == 2 and "add --server" in proc.stderr


@pytest.mark.security
def test_modes_a_server_sets_are_not_kept(server, local, stand_in_tar):
    repo, runs = local
    evil = server.dir / "modes.tar"
    evil.write_bytes(crafted(member("./artifacts/tool", b"#!/bin/sh\n", mode=0o6777),
                             member("./reports", type=tarfile.DIRTYPE, mode=0o000)))
    evil.chmod(0o644)
    stand_in_tar(f"exec cat {evil}")
    folder = fetch_run(RUN, cwd=repo)
    mode = (folder / "artifacts" / "tool").stat().st_mode & 0o7777
    assert mode & 0o6000 == 0 and mode & 0o022 == 0, oct(mode)          # no setuid/setgid, no write by others


@pytest.mark.security
def test_a_server_that_never_ends_is_stopped(server, local, stand_in_tar):
    repo, runs = local
    pid_file = server.dir / f"home-{USER}" / "hung.pid"
    stand_in_tar(f"echo $$ > {pid_file}; printf 'partial'; exec sleep 60")
    try:
        with pytest.raises(ServerError, match=f"Fetching run {RUN} from .* must finish within 2 s"):
            fetch_run(RUN, cwd=repo, timeout=2)
    finally:      # the server's process outlives the connection: ended here, by its id
        subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
    assert list(runs.iterdir()) == []
