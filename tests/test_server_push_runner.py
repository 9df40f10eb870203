"""The push runner's parts without SSH: the secrets file, the pipeline lock, which refs run a
pipeline, and that secret values reach the pipeline's environment only. (The whole `git push`
over a real sshd is tests/test_server_push.py.)"""

from __future__ import annotations

import fcntl
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlops_kit.errors import ServerError
from mlops_kit.server import push

REPO = Path(__file__).resolve().parent.parent


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


# --- the pipeline's life is the hook's (issue #20, item 6) -------------------------------------

FAKE_PIPELINE = """import os, signal, sys, time
from pathlib import Path
state = Path(sys.argv[1])
def wind_down(signum, frame):            # what `mlops-kit run` does on SIGTERM: stop, record, exit
    (state / "TERM").write_text(str(os.getpid()))
    while not (state / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(143)
deadline = time.monotonic() + 300        # never left behind by a failed test
signal.signal(signal.SIGTERM, wind_down)
(state / "pid").write_text(str(os.getpid()))
print("  data      running", file=sys.stderr, flush=True)
while not (state / "go").exists():      # the test never says go: the stages run on
    time.sleep(0.05)
    if time.monotonic() > deadline:
        sys.exit(1)
(state / "DEPLOYED").write_text("deployed")
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_for(condition, what: str, limit: float = 120):
    deadline = time.monotonic() + limit      # a bound against hanging, not a timing check
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _lock_is_free(home) -> bool:
    with open(home / "mlops-kit" / "pipeline.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


@pytest.mark.security
def test_kill_9_of_the_hook_stops_its_pipeline_which_holds_the_lock_until_it_ends(home, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "f").write_text("x")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "x")
    state = tmp_path / "state"
    state.mkdir()
    fake = tmp_path / "pipeline.py"
    fake.write_text(FAKE_PIPELINE)
    # the hook: `mlops-kit server receive` as git starts it, with the pipeline command replaced
    hook_code = ("import sys; from mlops_kit.server import push; "
                 f"sys.exit(push.receive(sys.stdin.read().splitlines(), project='proj', "
                 f"kit=[sys.executable, {str(fake)!r}, {str(state)!r}]))")
    hook = subprocess.Popen([sys.executable, "-c", hook_code], cwd=repo, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)})
    hook.stdin.write(f"{'0' * 40} {git(repo, 'rev-parse', 'HEAD')} refs/heads/main\n".encode())
    hook.stdin.close()
    _wait_for(lambda: (state / "pid").exists(), "the pipeline started")
    pipeline = int((state / "pid").read_text())
    try:
        _hook_killed(hook, pipeline, home, repo, state, monkeypatch)
    finally:
        if _alive(pipeline):                    # a failed test leaves nothing running
            os.kill(pipeline, 9)


def _hook_killed(hook, pipeline, home, repo, state, monkeypatch):
    assert not _lock_is_free(home)

    hook.kill()                                 # kill -9: git refuses the push
    hook.wait()
    hook.stdout.close()
    _wait_for(lambda: (state / "TERM").exists(), "the pipeline got SIGTERM when its hook died")
    # winding down, it still holds the lock: a second push is refused, its checkout never runs
    assert _alive(pipeline) and not _lock_is_free(home)
    monkeypatch.chdir(repo)
    out = io.StringIO()
    assert push.receive([f"{'0' * 40} {git(repo, 'rev-parse', 'HEAD')} refs/heads/main"], project="proj",
                        out=out, kit=[sys.executable, "-c", "raise SystemExit('must not run')"]) == 1
    assert "Only one pipeline may run on this server at a time" in out.getvalue()

    (state / "release").write_text("")
    _wait_for(lambda: not _alive(pipeline), "the pipeline ended")
    assert _lock_is_free(home)                  # a dead pipeline holds nothing
    assert not (state / "DEPLOYED").exists()    # the refused push never deployed


def _processes_with(variable: str, value: str) -> list[int]:
    """The live processes whose environment has ``variable=value`` (a run's kernels inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if f"{variable}={value}".encode() in (entry / "environ").read_bytes().split(b"\0") \
                        and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.security
@pytest.mark.slow
def test_kill_9_of_the_hook_during_a_real_run_interrupts_it_and_its_kernels(home, tmp_path):
    """The real `mlops-kit server receive` and `mlops-kit run` (data, train, evaluate): the hook is
    killed while train runs; the run ends as interrupted, its kernels with it, the lock is free."""
    import shutil

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "notebooks", repo / "notebooks")
    shutil.copytree(REPO / "parameters", repo / "parameters")
    (repo / "parameters" / "server.yaml").write_text("extends: default.yaml\nstages: [data, train, evaluate]\n"
                                                     "train:\n  model: random_forest\n  cv_folds: 10\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "x")
    runs = home / "mlops-kit" / "proj" / "runs"
    hook = subprocess.Popen([sys.executable, "-m", "mlops_kit.cli", "server", "receive", "--project", "proj"],
                            cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)})
    hook.stdin.write(f"{'0' * 40} {git(repo, 'rev-parse', 'HEAD')} refs/heads/main\n")
    hook.stdin.close()
    seen = []
    for line in hook.stdout:                     # the progress the pusher sees, until train runs
        seen.append(line)
        if "train     running" in line:
            break
    assert any("train     running" in line for line in seen), "".join(seen)
    started = _processes_with("MLOPS_KIT_RUNS_DIR", str(runs))    # the pipeline and its kernels
    assert started
    hook.kill()
    hook.wait()
    hook.stdout.close()

    deadline = time.monotonic() + 300           # a bound against hanging, not a timing check
    # (an exiting process loses its environment before its files: wait for the pids themselves too)
    while left := _processes_with("MLOPS_KIT_RUNS_DIR", str(runs)) + [pid for pid in started if _alive(pid)]:
        if time.monotonic() > deadline:
            lines = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                     for pid in left if Path(f"/proc/{pid}").exists()]
            for pid in left:                    # started by this test: nothing is left behind
                subprocess.run(["kill", "-9", str(pid)], check=False)
            pytest.fail("the run outlived its hook: " + " | ".join(lines))
        time.sleep(0.05)
    (record,) = [json.loads(p.read_text()) for p in runs.glob("*/run.json")]
    assert record["status"] == "interrupted", record["status"]
    train = record["stages"]["train"]
    # stopped while it ran (SIGTERM at the hook's death), not at its next progress line (a broken pipe)
    assert train["status"] == "interrupted" and "seconds" not in train and "fingerprint" not in train, train
    assert record["stages"]["evaluate"]["status"] == "pending"
    # free once the last thread of the last process has closed it (a process may show as a zombie first)
    _wait_for(lambda: _lock_is_free(home), "the lock is free", 60)
