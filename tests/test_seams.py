"""The seams between the kit's parts (issue: one contract per artifact, one way into a stage,
one deploy interface): each test runs the real consumer on the real producer's output, or
guards a bug that lived at a seam."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REPO
from mlops_kit import artifacts, cache, ledger, runner
from mlops_kit.cli import main
from mlops_kit.errors import ArtifactError, GateFailed, ParameterError
from mlops_kit.notebook import open_stage
from mlops_kit.params import load_params

pytestmark = pytest.mark.contract


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """One real run of the default pipeline (data, train, evaluate: real kernels, papermill)."""
    runs = tmp_path_factory.mktemp("seam-runs")
    old = os.environ.get("MLOPS_KIT_RUNS_DIR")
    os.environ["MLOPS_KIT_RUNS_DIR"] = str(runs)
    try:
        record = runner.run_pipeline(load_params())
    finally:
        if old is None:
            os.environ.pop("MLOPS_KIT_RUNS_DIR", None)
        else:
            os.environ["MLOPS_KIT_RUNS_DIR"] = old
    return runs / record["id"]


# --- the artifact catalog -------------------------------------------------------------------

def test_every_document_a_stage_writes_loads_through_the_catalog(pipeline_run):
    for artifact in artifacts.CATALOG:
        if artifact.producer in ("data", "train", "evaluate"):
            assert artifact.exists(pipeline_run), artifact.name
            if isinstance(artifact, artifacts.DocumentArtifact):
                artifact.load(pipeline_run)            # validates: a drifted shape raises here
    record = artifacts.RUN.load(pipeline_run)
    assert record.status == "succeeded" and set(record.stages) == {"data", "train", "evaluate"}
    assert record.model_extra["git"]["commit"]     # recorded, never a 5 s stall and null


def test_consumers_read_what_the_producers_wrote(pipeline_run):
    """The server, the packager's gate check and the card/schema agreement, on a real run."""
    from mlops_kit.image._context import check_model
    from mlops_kit.serving.app import create_app
    from mlops_kit.stages import check_inputs

    check_inputs("package", pipeline_run)                      # evaluated and passed: packageable
    card = check_model(pipeline_run / "artifacts")
    schema = artifacts.SCHEMA.load(pipeline_run)
    assert card["features"] == schema.feature_names
    create_app(pipeline_run / "artifacts")                     # loads and warms up on examples.json


def test_a_drifted_document_is_refused_naming_the_key(pipeline_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pipeline_run / "artifacts", copy / "artifacts")
    metrics = json.loads((copy / "artifacts" / "metrics.json").read_text())
    metrics["gate"]["checks"] = [{"metric": "accuracy", "threshold": 0.9, "passed": False, "message": "x"}]
    (copy / "artifacts" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ArtifactError, match=r"metrics.json is not a valid Metrics: .*gate.checks.0.reason"):
        artifacts.METRICS.load(copy)


def test_no_artifact_file_name_is_spelled_outside_the_catalog():
    names = {a.name for a in artifacts.CATALOG} | {artifacts.RUN.name, artifacts.CHAMPION.name, artifacts.SWEEP.name}
    allowed = {REPO / "mlops_kit" / "artifacts.py", REPO / "mlops_kit" / "_artifact_names.py"}
    found = []
    for path in sorted((REPO / "mlops_kit").rglob("*.py")):
        if path in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "skops' own" in line:          # the schema.json inside a skops zip is not ours
                continue
            for name in names:
                if re.search(rf"[\"']{re.escape(name)}[\"']", line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {name}")
    assert not found, "artifact file names spelled outside mlops_kit/artifacts.py:\n" + "\n".join(found)


# --- one way into a stage -------------------------------------------------------------------

def test_every_stage_notebook_takes_run_dir_and_only_its_own_keys():
    import nbformat

    from mlops_kit.params import RunParams
    from mlops_kit.stages import STAGES

    for number, stage in enumerate(STAGES, 1):
        nb = nbformat.read(REPO / "notebooks" / stage.notebook, 4)
        assert nb.cells[0].source.startswith(f"# {number} · "), stage.notebook
        cell = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cell) == 1, stage.notebook
        names = {line.split("=")[0].strip() for line in cell[0].source.splitlines()
                 if "=" in line and not line.lstrip().startswith("#")}
        section = RunParams.model_fields[stage.section].default_factory.model_fields
        assert names == {"run_dir", *section}, stage.notebook
        assert f'open_stage("{stage.name}", run_dir' in "".join(c.source for c in nb.cells), stage.notebook


def test_open_stage_names_a_bad_notebook_value_like_a_parameter_file(pipeline_run):
    with pytest.raises(ParameterError, match=r"02_train.ipynb \(parameters cell\): train.model: expected a named"):
        open_stage("train", pipeline_run, model="random_forrest")
    opened = open_stage("train", pipeline_run, cv_folds=3)
    assert opened.section.cv_folds == 3 and opened.params.seed == 42 and not opened.interactive


def test_package_refuses_an_unevaluated_run(pipeline_run, _isolated_runs):
    run = _isolated_runs / "20260101-000000-aaaa"
    shutil.copytree(pipeline_run, run, ignore=shutil.ignore_patterns("metrics.json", ".lock"))
    result = subprocess.run([sys.executable, "-m", "mlops_kit.cli", "build", run.name], capture_output=True,
                            text=True, env={**os.environ, "MLOPS_KIT_RUNS_DIR": str(_isolated_runs)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "metrics.json must exist" in result.stderr and "stage 'evaluate'" in result.stderr
    with pytest.raises(ArtifactError, match="stage 'evaluate'"):
        open_stage("package", run)


def test_package_refuses_a_run_that_failed_its_gate(pipeline_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pipeline_run, run, ignore=shutil.ignore_patterns(".lock"))
    metrics = artifacts.METRICS.load(run)
    metrics.gate.passed = False
    metrics.gate.checks[0].passed = False
    metrics.gate.checks[0].reason = "accuracy 0.5000 misses >= 0.9"
    artifacts.METRICS.save(run, metrics)
    with pytest.raises(GateFailed, match=r"failed the quality gate: accuracy 0.5000 misses >= 0.9"):
        open_stage("package", run)
    from mlops_kit.image._context import check_gate

    with pytest.raises(GateFailed, match="accuracy 0.5000 misses"):
        check_gate(run / "artifacts")


# --- the CLI seams --------------------------------------------------------------------------

def test_serve_takes_a_run_folder(pipeline_run):
    from mlops_kit.cli.serve import resolve_model_dir

    assert resolve_model_dir(str(pipeline_run)) == (pipeline_run / "artifacts").resolve()
    assert resolve_model_dir(str(pipeline_run / "artifacts")) == (pipeline_run / "artifacts").resolve()


def test_build_and_deploy_take_the_same_parameter_options():
    for command in ("build", "deploy"):
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        assert "-p, --params FILE" in help_text and "--set SECTION.KEY=VALUE" in help_text, command


def test_build_set_override_reaches_the_packager(pipeline_run, _isolated_runs, monkeypatch):
    """`build --set package.containerd_socket=...` is what the packager gets (no re-run needed)."""
    from mlops_kit import image

    run = _isolated_runs / "20260101-000000-bbbb"
    shutil.copytree(pipeline_run, run, ignore=shutil.ignore_patterns(".lock"))
    seen = {}

    def package(run_dir, params, **kwargs):
        seen["socket"] = params.package.containerd_socket
        return {"ref": "x", "digest": "d", "size": {"compressed": 0, "unpacked": 0}, "layers": [],
                "builder": "layers", "seconds": {"total": 0}}

    monkeypatch.setattr(image, "package", package)
    result = CliRunner().invoke(main, ["build", run.name, "--set", "package.containerd_socket=/tmp/x.sock"])
    assert result.exit_code == 0, result.output
    assert seen == {"socket": "/tmp/x.sock"}


# --- run records: git state and the environment hash ----------------------------------------

def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_git_state_never_waits_for_a_slow_clean_filter_and_the_index_gets_refreshed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.org")
    _git(repo, "config", "user.name", "t")
    (repo / ".gitattributes").write_text("*.ipynb filter=slow\n")
    (repo / "a.ipynb").write_text("{}\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    _git(repo, "config", "filter.slow.clean", "sleep 2; cat")
    (repo / "a.ipynb").touch()                  # stat changed: git status must run the filter
    first = ledger.git_state(repo, wait=0.0)    # does not wait for it ...
    assert first == {"commit": _git(repo, "rev-parse", "HEAD").strip(), "dirty": None}
    for _ in range(30):                          # ... which finishes in the background, refreshing
        answered = ledger.git_state(repo, wait=1.0)   # the index: then status needs no filter
        if answered["dirty"] is not None:
            break
    assert answered == {"commit": first["commit"], "dirty": False}


def test_make_git_filters_leaves_a_refreshed_index_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True)
    bin_dir = Path(shutil.which("nbstripout") or (REPO / ".venv" / "bin" / "nbstripout")).parent
    subprocess.run(["make", "-s", "git-filters", f"BIN={bin_dir}"], cwd=clone, check=True)
    assert _git(clone, "config", "filter.nbstripout.clean").strip().endswith('/nbstripout" --keep-id')
    # A refreshed index never runs the filter again: a filter that fails now would show as dirty.
    _git(clone, "config", "filter.nbstripout.clean", "false")
    assert _git(clone, "status", "--porcelain", "--untracked-files=no") == ""


def test_environment_hash_follows_an_edited_kit_file_in_the_same_process(tmp_path, monkeypatch):
    package = tmp_path / "mlops_kit"
    shutil.copytree(REPO / "mlops_kit", package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache._paths, "PACKAGE_DIR", package)
    before = cache.environment_hash("train")
    assert cache.environment_hash("train") == before
    with open(package / "train.py", "a") as fh:
        fh.write("\n# an edit\n")
    assert cache.environment_hash("train") != before
    assert cache.environment_hash("deploy") == cache.environment_hash("deploy")


def test_make_lab_roots_jupyterlab_at_the_project():
    dry = subprocess.run(["make", "-n", "lab", "BIN=bin"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    line = [entry for entry in dry.splitlines() if "jupyter lab" in entry][0]
    assert f"--ServerApp.root_dir='{REPO}'" in line
    assert line.rstrip().endswith(f"'{REPO}/notebooks/00_control_panel.ipynb'")
