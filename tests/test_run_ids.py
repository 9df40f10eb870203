"""Run ids are confined to the runs folder: every command that takes one refuses ``..``,
absolute paths, separators and run folders that are symbolic links leading out, and the
folder outside is left exactly as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlops_kit import ledger
from mlops_kit.cli import main
from mlops_kit.errors import InvalidRunId, RunNotFound

pytestmark = pytest.mark.security

REPO = Path(__file__).resolve().parent.parent


def write_run(folder: Path, *, status: str = "succeeded") -> Path:
    """A run folder as the ledger writes it (a record; artifacts beside it)."""
    (folder / "artifacts").mkdir(parents=True)
    (folder / "artifacts" / "metrics.json").write_text(json.dumps({"accuracy": 0.9, "gate_passed": True}))
    (folder / "run.json").write_text(json.dumps({
        "id": folder.name, "status": status, "created": "2026-01-01T00:00:00Z", "stages": {},
        "params": {"train": {"model": "dummy"}}, "metrics": {"accuracy": 0.9, "gate_passed": True}}))
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def victim(tmp_path, _isolated_runs):
    """A run-like folder outside the runs folder, a good run inside, and a symbolic link in
    the runs folder that leads to the victim."""
    outside = write_run(tmp_path / "victim", status="running")
    write_run(_isolated_runs / "20260101-000000-good")
    (_isolated_runs / "20260101-000000-link").symlink_to(outside)
    before = snapshot(outside)
    yield outside
    assert outside.is_dir() and snapshot(outside) == before, "the folder outside the runs folder changed"
    assert not (outside / ".lock").exists()


def tricks(victim: Path, runs: Path) -> list[str]:
    return [os.path.relpath(victim, runs), str(victim), "20260101-000000-link", f"20260101-000000-good/../../{victim.name}"]


COMMANDS = {
    "runs rm": lambda rid: ["runs", "rm", "--force", rid],
    "runs show": lambda rid: ["runs", "show", rid],
    "runs promote": lambda rid: ["runs", "promote", rid],
    "runs compare": lambda rid: ["runs", "compare", "20260101-000000-good", rid],
    "build": lambda rid: ["build", rid, "--no-import"],
    "deploy": lambda rid: ["deploy", rid, "--target", "local"],
    "status": lambda rid: ["status", "--run", rid, "--target", "local"],
    "undeploy": lambda rid: ["undeploy", "--run", rid, "--target", "local"],
    "runs fetch --server": lambda rid: ["runs", "fetch", rid, "--server"],
    "run --resume": lambda rid: ["run", "--resume", rid],
    "run --reuse-from": lambda rid: ["run", "--stages", "evaluate", "--reuse-from", rid],
    "run --explain --reuse-from": lambda rid: ["run", "--explain", "--stages", "evaluate", "--reuse-from", rid],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_run_ids_that_leave_the_runs_folder(command, victim, _isolated_runs):
    for trick in tricks(victim, _isolated_runs):
        result = CliRunner().invoke(main, COMMANDS[command](trick))
        assert isinstance(result.exception, InvalidRunId), (trick, result.output, result.exception)
        assert "must name a run folder inside" in str(result.exception)


@pytest.mark.parametrize("trick", ["../victim", "absolute", "link"])
def test_the_cli_prints_the_refusal_without_a_traceback(trick, victim, _isolated_runs):
    run_id = {"../victim": os.path.relpath(victim, _isolated_runs), "absolute": str(victim),
              "link": "20260101-000000-link"}[trick]
    result = subprocess.run([sys.executable, "-m", "mlops_kit.cli", "runs", "rm", "--force", run_id],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "must name a run folder inside" in result.stderr
    assert "Removed" not in result.stdout


def test_serve_refuses_a_run_folder_that_leads_out_and_takes_run_paths(victim, _isolated_runs, monkeypatch):
    from mlops_kit.cli.serve import resolve_model_dir

    good = _isolated_runs / "20260101-000000-good"
    assert resolve_model_dir("20260101-000000-good") == good / "artifacts"
    assert resolve_model_dir(str(good)) == good / "artifacts"                  # a run folder path (issue #10)
    assert resolve_model_dir(str(good / "artifacts")) == good / "artifacts"
    monkeypatch.chdir(_isolated_runs.parent)
    assert resolve_model_dir(os.path.join(_isolated_runs.name, good.name)) == good / "artifacts"
    for trick in ("20260101-000000-link", str(_isolated_runs / "20260101-000000-link"),
                  str(_isolated_runs / "20260101-000000-link" / "artifacts")):
        with pytest.raises(InvalidRunId, match="is a symbolic link"):
            resolve_model_dir(trick)
    with pytest.raises(RunNotFound):
        resolve_model_dir("20260101-000000-none")
    assert resolve_model_dir(str(victim / "artifacts")) == victim / "artifacts"   # a model folder, by path
    result = CliRunner().invoke(main, ["serve", "20260101-000000-link"])
    assert isinstance(result.exception, InvalidRunId)


def test_champion_names_the_promoted_run_where_a_run_is_read(victim, _isolated_runs):
    ledger.promote("20260101-000000-good")
    assert ledger.read_run("champion")["id"] == "20260101-000000-good"
    assert ledger.run_dir_or_champion("champion") == _isolated_runs / "20260101-000000-good"
    with pytest.raises(InvalidRunId):
        ledger.open_run("scratch")
    assert ledger.run_path("scratch", scratch=True) == _isolated_runs / "scratch"


def test_a_record_that_names_another_folder_is_listed_under_its_own_folder(victim, _isolated_runs):
    record = json.loads((_isolated_runs / "20260101-000000-good" / "run.json").read_text())
    record["id"] = "../victim"
    (_isolated_runs / "20260101-000000-good" / "run.json").write_text(json.dumps(record))
    assert [r["id"] for r in ledger.list_runs()] == ["20260101-000000-good"]


def test_runs_rm_and_gc_skip_symbolic_links_without_a_traceback(victim, _isolated_runs):
    """gc keeps 0 runs: the good run goes, the link (and what it leads to) stays."""
    for name in ("20260101-000001-a", "20260101-000002-b"):
        write_run(_isolated_runs / name)
    assert [r["id"] for r in ledger.list_runs()] == ["20260101-000002-b", "20260101-000001-a",
                                                     "20260101-000000-good"]
    result = CliRunner().invoke(main, ["runs", "gc", "--keep", "0"])
    assert result.exit_code == 0, result.output
    assert "Removed 3 run(s)" in result.output
    assert (_isolated_runs / "20260101-000000-link").is_symlink()


def test_deploy_alone_takes_the_image_record_of_the_run_it_reuses(victim, _isolated_runs):
    """`run --stages deploy --reuse-from RUN` (microk8s): image.json is one of the inputs."""
    from mlops_kit import runner
    from mlops_kit.errors import ArtifactError
    from mlops_kit.params import load_params
    from mlops_kit.stages import BY_NAME, needed_inputs

    microk8s = load_params(None, ["deploy.target=microk8s"])
    assert "image.json" in needed_inputs([BY_NAME["deploy"]], microk8s.params)
    assert "image.json" not in needed_inputs([BY_NAME["package"], BY_NAME["deploy"]], microk8s.params)
    source = _isolated_runs / "20260101-000000-good" / "artifacts"
    for name in ("model.skops", "model_card.json", "schema.json", "examples.json", "monitor_profile.json"):
        (source / name).write_text("{}")
    with pytest.raises(ArtifactError, match="has no image.json to reuse"):
        runner.explain(microk8s, stages=["deploy"], reuse_from="20260101-000000-good")
    (source / "image.json").write_text("{}")
    (plan,) = runner.explain(microk8s, stages=["deploy"], reuse_from="20260101-000000-good")
    assert plan.stage.name == "deploy"
