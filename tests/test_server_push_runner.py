"""The push runner's parts without SSH: the secrets file, the pipeline lock, which refs run a
pipeline, and that secret values reach the pipeline's environment only. (The whole `git push`
over a real sshd is tests/test_server_push.py.)"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from mlops_kit.errors import ServerError
from mlops_kit.server import push


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def write_secrets(home, text, mode=0o600):
    path = home / ".config" / "mlops-kit" / "secrets.env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_secrets_file(home):
    assert push.read_secrets() == {}
    write_secrets(home, "# comment\nAPI_TOKEN=abc=def\nexport DB_PASSWORD='p w'\n\nEMPTY=\n")
    assert push.read_secrets() == {"API_TOKEN": "abc=def", "DB_PASSWORD": "p w", "EMPTY": ""}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_secrets_file_readable_by_others_is_refused(home, mode):
    path = write_secrets(home, "API_TOKEN=abc\n", mode)
    with pytest.raises(ServerError, match=rf"must be readable by its owner only \(mode 0600\). Got mode {mode:04o}") as err:
        push.read_secrets()
    assert err.value.fix == f"chmod 600 {path}"


def test_secrets_bad_line_names_the_line_not_the_value(home):
    write_secrets(home, "API_TOKEN=ok\nthis-is-the-secret-itself\n")
    with pytest.raises(ServerError, match="line 2: expected NAME=VALUE") as err:
        push.read_secrets()
    assert "this-is-the-secret-itself" not in str(err.value)


def test_lock_is_one_pipeline_at_a_time(home):
    first = push.PipelineLock()
    first.acquire({"project": "p", "commit": "abc123", "started": "now", "pid": 1})
    second = push.PipelineLock()
    try:
        with pytest.raises(ServerError, match="Only one pipeline may run.*commit abc123.*this push is refused"):
            second.acquire({"project": "p", "commit": "def456"})
    finally:
        first.release()
    second.acquire({"project": "p", "commit": "def456"})
    second.release()


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@e", "PATH": "/usr/bin:/bin"}).stdout.strip()


def test_receive_runs_main_only_with_the_secrets_in_the_environment(home, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "parameters").mkdir()
    (repo / "parameters" / "server.yaml").write_text("stages: [data]\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "x")
    commit = git(repo, "rev-parse", "HEAD")
    write_secrets(home, "API_TOKEN=s3cr3t\n")
    # the pipeline command is replaced by a script that reports what it got (never the value)
    fake_kit = tmp_path / "kit.py"
    fake_kit.write_text("import json, os, sys\n"
                        "print('  data      succeeded in 0.1 s', file=sys.stderr)\n"
                        "print(json.dumps({'id': 'r1', 'status': 'succeeded', 'metrics': {'accuracy': 0.9, "
                        "'gate_passed': True}, 'args': sys.argv[1:], 'has_token': os.environ.get('API_TOKEN') == "
                        "'s3cr3t', 'cwd': os.getcwd()}))\n")
    monkeypatch.chdir(repo)
    out = io.StringIO()
    code = push.receive([f"{'0' * 40} {commit} refs/heads/feature", f"{'0' * 40} {commit} refs/heads/main"],
                        project="proj", out=out, kit=[sys.executable, str(fake_kit)])
    text = out.getvalue()
    assert code == 0, text
    assert "refs/heads/feature is not refs/heads/main: accepted, no pipeline" in text
    assert "data      succeeded" in text and "run r1 succeeded" in text and "gate passed" in text
    assert "s3cr3t" not in text
    assert (home / "mlops-kit" / "proj" / "work" / "parameters" / "server.yaml").is_file()


def test_receive_refuses_a_failed_pipeline_with_the_reason(home, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "f").write_text("x")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "x")
    fake_kit = tmp_path / "kit.py"
    fake_kit.write_text("import sys\nprint('Error: The model failed the quality gate: accuracy 0.5 < 0.9.', "
                        "file=sys.stderr)\nsys.exit(1)\n")
    monkeypatch.chdir(repo)
    out = io.StringIO()
    code = push.receive([f"{'0' * 40} {git(repo, 'rev-parse', 'HEAD')} refs/heads/main"], project="proj", out=out,
                        kit=[sys.executable, str(fake_kit)])
    assert code == 1
    assert "REFUSED: the pipeline failed: The model failed the quality gate: accuracy 0.5 < 0.9." in out.getvalue()
    assert "previous release keeps serving" in out.getvalue()


@pytest.mark.parametrize("option, value", [("branch", "main; touch /tmp/x"), ("branch", "-f"), ("remote", "a b"),
                                           ("params_file", "../secrets.yaml"), ("params_file", "/etc/passwd")])
def test_init_refuses_hostile_names_before_connecting(tmp_path, option, value):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    ssh = push.SSH("ssh://alice@127.0.0.1:1")          # never reached: the names are checked first
    with pytest.raises(ServerError, match="must be"):
        push.init(ssh, repo_dir=tmp_path, **{option: value}, log=lambda line: None)
