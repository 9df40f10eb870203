"""`git push` to deploy, end to end, for real: `mlops-kit server init`, then `git push server
main` runs the five stages on the server, the image lands in the server's containerd, the
model is served there (deploy.target local on the test server) and answers.

The "server" is this machine behind a REAL sshd (tests/_sshd.py) whose sessions have their
own HOME (a temp folder: the bare repository, run records, lock and secrets live there). It
has no MicroK8s: its `microk8s` command is a STAND-IN script whose `ctr` is the real ctr on a
private containerd. The remote mlops-kit is this checkout (PYTHONPATH), the pipeline real."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _real import need_commands
from _sshd import REPO, Sshd, install_microk8s
from test_image_support import image_cache, need_layers_builder, start_containerd

pytestmark = [pytest.mark.ssh, pytest.mark.containerd, pytest.mark.slow]

DEPLOYED: dict[str, str] = {}
SERVER_YAML = """extends: default.yaml
stages: [data, train, evaluate, package, deploy]
package:
  builder: layers
deploy:
  target: local
"""


def sh(*argv, cwd=None, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def kit(*args, cwd=None, check=True):
    return sh(sys.executable, "-m", "mlops_kit.cli", *args, cwd=cwd, check=check)


def commit_params(project: Path, text: str, message: str) -> None:
    (project / "parameters" / "server.yaml").write_text(text)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", message, cwd=project)


def remote_head(project: Path) -> str:
    out = sh("git", "ls-remote", "server", "refs/heads/main", cwd=project).stdout
    return out.split()[0] if out.strip() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_commands("git")
    need_layers_builder()
    socket = start_containerd()
    home = tmp_path_factory.mktemp("server-home")
    sshd = Sshd(env={"HOME": str(home), "MLOPS_KIT_CACHE_DIR": str(image_cache())}).start()
    install_microk8s(sshd, socket=socket, registry="disabled")
    yield sshd, home, socket
    # stop what the pushes deployed on the server, then the server
    env = {**os.environ, "HOME": str(home), "MLOPS_KIT_RUNS_DIR": str(home / "mlops-kit" / "project" / "runs"),
           "PATH": f"{sshd.bin}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "mlops_kit.cli", "undeploy", "--target", "local"], env=env,
                   capture_output=True, timeout=120)
    sshd.stop_all()


@pytest.fixture(scope="module")
def project(server, tmp_path_factory):
    sshd, home, socket = server
    project = tmp_path_factory.mktemp("laptop") / "project"
    project.mkdir()
    shutil.copytree(REPO / "notebooks", project / "notebooks")
    shutil.copytree(REPO / "parameters", project / "parameters")
    sh("git", "init", "-q", "-b", "main", cwd=project)
    commit_params(project, SERVER_YAML, "first")
    out = kit("server", "init", *sshd.args(), cwd=project).stdout
    assert "git push server main" in out
    return project


def test_push_runs_the_pipeline_and_serves(server, project):
    sshd, home, socket = server
    assert (home / "mlops-kit" / "project.git" / "hooks" / "pre-receive").is_file()
    # a secrets file readable by others is refused, and its value never shows
    secrets = home / ".config" / "mlops-kit" / "secrets.env"
    secrets.parent.mkdir(parents=True)
    secrets.write_text("API_TOKEN=s3cr3t-value\n")
    secrets.chmod(0o644)
    refused = sh("git", "push", "server", "main", cwd=project, check=False)
    assert refused.returncode != 0
    assert "must be readable by its owner only (mode 0600). Got mode 0644" in refused.stderr
    assert "s3cr3t-value" not in refused.stderr + refused.stdout
    assert remote_head(project) == ""                      # refused: the branch did not move
    secrets.chmod(0o600)

    pushed = sh("git", "push", "server", "main", cwd=project, check=False)
    out = pushed.stderr
    assert pushed.returncode == 0, out
    assert "s3cr3t-value" not in out
    for stage in ("data", "train", "evaluate", "package", "deploy"):
        assert re.search(rf"remote: +{stage} +succeeded", out), out
    run_id = re.search(r"remote: mlops-kit: run (\S+) succeeded", out).group(1)
    assert "remote: mlops-kit: gate" in out and "remote: mlops-kit: metrics accuracy" in out
    endpoint = re.search(r"remote: mlops-kit: endpoint (\S+)", out).group(1)
    with urllib.request.urlopen(endpoint + "/v2/health/ready", timeout=10) as resp:
        assert resp.status == 200
    # the run record is on the server; the image in the server's containerd
    runs = home / "mlops-kit" / "project" / "runs"
    record = json.loads((runs / run_id / "run.json").read_text())
    assert record["status"] == "succeeded"
    image = json.loads((runs / run_id / "artifacts" / "image.json").read_text())
    listed = subprocess.run(["ctr", "-a", str(socket), "-n", "k8s.io", "images", "ls", "-q"], capture_output=True,
                            text=True).stdout.split()
    assert image["ref"] in listed
    assert remote_head(project) == sh("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    DEPLOYED["endpoint"] = endpoint
    DEPLOYED["run_id"] = run_id


def test_runs_list_and_show_read_the_servers_ledger(server, project):
    run_id = DEPLOYED.get("run_id")
    if run_id is None:
        pytest.skip("needs the run of test_push_runs_the_pipeline_and_serves")
    listed = json.loads(kit("runs", "list", "--server", "--json", cwd=project).stdout)
    assert run_id in [r["id"] for r in listed]
    assert run_id in kit("runs", "list", "--server", cwd=project).stdout
    shown = json.loads(kit("runs", "show", run_id, "--server", "--json", cwd=project).stdout)
    assert shown["id"] == run_id and shown["status"] == "succeeded"
    missing = kit("runs", "show", "no-such-run", "--server", cwd=project, check=False)
    assert missing.returncode == 1 and "No run 'no-such-run'" in missing.stderr and "Traceback" not in missing.stderr
    # outside a repository set up by `server init`: a plain message
    elsewhere = kit("runs", "list", "--server", cwd=project.parent, check=False)
    assert elsewhere.returncode == 1 and "mlops-kit server init" in elsewhere.stderr


@pytest.mark.parametrize("change, reason", [
    ("train:\n  model: gradient_boostin\n", "train.model"),
    ("evaluate:\n  gate: {accuracy: 0.9999}\n", "quality gate"),
])
def test_bad_push_is_refused_and_the_old_release_serves(server, project, change, reason):
    endpoint = DEPLOYED.get("endpoint")
    if endpoint is None:
        pytest.skip("needs the deployment of test_push_runs_the_pipeline_and_serves")
    before = remote_head(project)
    commit_params(project, SERVER_YAML + change, f"bad: {reason}")
    try:
        pushed = sh("git", "push", "server", "main", cwd=project, check=False)
        assert pushed.returncode != 0
        assert "remote: mlops-kit: REFUSED: the pipeline failed" in pushed.stderr and reason in pushed.stderr
        assert "previous release keeps serving" in pushed.stderr
        assert "Traceback" not in pushed.stderr
        assert remote_head(project) == before
        with urllib.request.urlopen(endpoint + "/v2/health/ready", timeout=10) as resp:
            assert resp.status == 200
    finally:
        sh("git", "reset", "-q", "--hard", "HEAD~1", cwd=project)


def test_push_while_a_run_is_in_progress_is_refused(server, project):
    sshd, home, socket = server
    lock = home / "mlops-kit" / "pipeline.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:                 # what a running pipeline holds
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(json.dumps({"project": "project", "commit": "abcdef123456", "started": "2026-01-01T00:00:00Z"}))
        fh.flush()
        commit_params(project, SERVER_YAML + "seed: 7\n", "another")
        try:
            pushed = sh("git", "push", "server", "main", cwd=project, check=False)
        finally:
            sh("git", "reset", "-q", "--hard", "HEAD~1", cwd=project)
    assert pushed.returncode != 0
    assert "Only one pipeline may run on this server at a time" in pushed.stderr
    assert "commit abcdef123456" in pushed.stderr and "this push is refused" in pushed.stderr


def _server_processes(home: Path, *, cmdline: bytes = b"", env: bytes = b"") -> list[int]:
    """Live processes of the test server's sessions (HOME=home) whose command line holds
    ``cmdline`` and whose environment has the entry ``env``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0") if entry.name.isdigit() else []
            if (f"HOME={home}".encode() in environ and (not env or env in environ)
                    and cmdline in (entry / "cmdline").read_bytes()
                    and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.security
def test_kill_9_of_the_hook_stops_the_pipeline_before_it_deploys(server, project):
    """Item 6 of issue #20 over a real `git push`: the server's hook is killed (-9) while train
    runs; git refuses the push, the pipeline stops there (never packages nor deploys), the lock
    is free again and the previous release keeps serving."""
    sshd, home, socket = server
    endpoint = DEPLOYED.get("endpoint")
    if endpoint is None:
        pytest.skip("needs the deployment of test_push_runs_the_pipeline_and_serves")
    before = remote_head(project)
    runs = home / "mlops-kit" / "project" / "runs"
    known = {p.parent.name for p in runs.glob("*/run.json")}
    commit_params(project, SERVER_YAML + "train:\n  model: random_forest\n  cv_folds: 10\n", "slow train")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pushing = subprocess.Popen(["git", "push", "server", "main"], cwd=project, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    try:
        seen = []
        for line in pushing.stdout:
            seen.append(line)
            if re.search(r"remote: +train +running", line):
                break
        hooks = _server_processes(home, cmdline=b"server\0receive")
        assert len(hooks) == 1, "".join(seen)
        os.kill(hooks[0], 9)
        rest = pushing.stdout.read()
        assert pushing.wait(timeout=300) != 0, "".join(seen) + rest
    finally:
        if pushing.poll() is None:
            pushing.kill()
        sh("git", "reset", "-q", "--hard", "HEAD~1", cwd=project)
    deadline = time.monotonic() + 300           # a bound against hanging, not a timing check
    while _server_processes(home, env=b"MLOPS_KIT_CONFINE_DATA=1"):      # the pipeline and its kernels
        assert time.monotonic() < deadline, "the pipeline outlived its hook"
        time.sleep(0.2)
    assert remote_head(project) == before
    (new,) = {p.parent.name for p in runs.glob("*/run.json")} - known
    record = json.loads((runs / new / "run.json").read_text())
    train = record["stages"]["train"]
    # stopped while train ran (SIGTERM at the hook's death), not at its next progress line (a broken pipe)
    assert record["status"] == "interrupted" and train["status"] == "interrupted" and "seconds" not in train, train
    assert record["stages"]["package"]["status"] == record["stages"]["deploy"]["status"] == "pending"
    with open(home / "mlops-kit" / "pipeline.lock", "a+") as fh:     # free: the next push may run
        while True:             # once the last thread of the last process closed it (bounded above)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the lock outlived the pipeline"
                time.sleep(0.05)
    with urllib.request.urlopen(endpoint + "/v2/health/ready", timeout=10) as resp:
        assert resp.status == 200
