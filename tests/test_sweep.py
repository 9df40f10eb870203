"""Hyperparameter sweeps: real kernels, real runs in the ledger (mlops_kit/sweep.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import REPO

MLOPS_KIT = [sys.executable, "-m", "mlops_kit.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MLOPS_KIT, *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def records(runs: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/run.json")}


def sweep_record(runs: Path) -> dict:
    (path,) = runs.glob("sweeps/*/sweep.json")
    return json.loads(path.read_text())


# --- a sweep end to end: one trial failing, resumed alone ---------------------------------------

@pytest.mark.slow
def test_sweep_of_four_with_a_failing_trial_then_resume_reruns_only_it(_isolated_runs):
    runs = _isolated_runs
    result = cli("sweep", "--grid", "train.params.C=[0.01, 0.1, 1, -1]", "--jobs", "2")
    assert result.returncode == 0, result.stderr  # a failed trial does not fail the sweep
    assert "Traceback" not in result.stderr
    sweep = sweep_record(runs)
    assert sweep["status"] == "partial" and sweep["jobs"] == 2
    # the data stage ran once, in a run of its own; each setting is a run linked to the sweep
    ledger = records(runs)
    trials = {rid: r for rid, r in ledger.items() if r.get("sweep", {}).get("trial") is not None}
    (data_run,) = [rid for rid, r in ledger.items() if rid not in trials]
    assert sweep["data_run"] == data_run and list(ledger[data_run]["stages"]) == ["data"]
    assert len(trials) == 3 and all(r["status"] == "succeeded" for r in trials.values())
    assert sorted(r["params"]["train"]["params"]["C"] for r in trials.values()) == [0.01, 0.1, 1]
    for rid, record in trials.items():
        assert record["sweep"]["id"] == sweep["id"]
        assert record["stages"]["data"] == {"status": "reused", "source_run": data_run,
                                            "outputs": record["stages"]["data"]["outputs"]}
        # the data stage's outputs are borrowed (hard links), not copied
        assert (runs / rid / "artifacts" / "train.parquet").stat().st_ino == \
            (runs / data_run / "artifacts" / "train.parquet").stat().st_ino
    # the failed trial is named, with the parameter and what scikit-learn said
    failed = sweep["trials"][3]
    assert failed["status"] == "failed" and failed["run"] is None and failed["setting"] == {"train.params.C": -1}
    assert "train.params.C" in failed["error"] and "LogisticRegression" in failed["error"]
    assert "Trial 3 (train.params.C=-1) failed" in result.stdout and f"--resume {sweep['id']}" in result.stdout
    # the report: the metric against C, executed into the sweep's folder
    report = nbformat.read(runs / "sweeps" / sweep["id"] / "notebooks" / "sweep_report.ipynb", 4)
    assert any("image/png" in o.get("data", {}) for c in report.cells for o in c.get("outputs", []))
    assert (runs / "sweeps" / sweep["id"] / sweep["report"]).is_file()

    # the leaderboard: best first by the gate's metric, the failed trial last
    shown = cli("sweep", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    board = json.loads(shown.stdout)
    assert board["id"] == sweep["id"] and board["metric"] == "balanced_accuracy"
    assert all({"run", "status", "params", "metrics"} <= set(t) for t in board["trials"])
    values = [t["metrics"]["balanced_accuracy"] for t in board["trials"][:3]]
    assert values == sorted(values, reverse=True)
    assert board["trials"][-1]["status"] == "failed" and board["trials"][-1]["params"] == {"train.params.C": -1}
    assert cli("sweep", "show", sweep["id"]).stdout.count("succeeded") == 3

    # resume: only the failed trial runs again (it fails again: its C is still refused)
    before = {rid: (runs / rid / "run.json").read_bytes() for rid in ledger}
    resumed = cli("sweep", "--resume", sweep["id"], "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    assert "trial 3" in resumed.stderr and "trial 0" not in resumed.stderr
    again = sweep_record(runs)
    assert [t["attempts"] for t in again["trials"]] == [1, 1, 1, 2] and len(again["resumed"]) == 1
    assert {rid: (runs / rid / "run.json").read_bytes() for rid in records(runs)} == before

    # the best trial becomes the champion through the ledger's promote
    best = board["trials"][0]["run"]
    assert cli("runs", "promote", best).returncode == 0
    assert json.loads((runs / "champion.json").read_text())["run"] == best


@pytest.mark.slow
def test_a_trial_that_failed_in_a_stage_is_continued_in_its_own_run(project_copy, _isolated_runs, tmp_path,
                                                                       monkeypatch):
    """A trial whose train stage raised: named with its run and cell; resume continues that
    run (runner.resume_run), the other trial untouched."""
    from mlops_kit import sweep as sweeps
    from mlops_kit.params import load_params

    flag = tmp_path / "fail-when-C-is-1"
    flag.touch()
    monkeypatch.setenv("SWEEP_TEST_FLAG", str(flag))
    path = project_copy / "notebooks" / "02_train.ipynb"
    notebook = nbformat.read(path, 4)
    notebook.cells.insert(3, nbformat.v4.new_code_cell(
        "import os\nif params.get('C') == 1 and os.path.exists(os.environ['SWEEP_TEST_FLAG']):\n"
        "    raise RuntimeError('the flag says no')"))
    nbformat.write(notebook, path)

    record = sweeps.run_sweep(load_params(None, grid=["train.params.C=[0.1, 1]"]), jobs=2, report=False)
    assert record["status"] == "partial"
    failed = record["trials"][1]
    assert failed["status"] == "failed" and failed["run"] is not None
    assert "Stage 'train' failed in cell" in failed["error"] and "the flag says no" in failed["error"]
    run = json.loads((_isolated_runs / failed["run"] / "run.json").read_text())
    assert run["status"] == "failed" and run["stages"]["train"]["status"] == "failed"
    kept = (_isolated_runs / record["trials"][0]["run"] / "run.json").read_bytes()

    flag.unlink()
    record = sweeps.resume_sweep(record["id"], report=False)
    assert record["status"] == "succeeded"
    assert record["trials"][1]["run"] == failed["run"]  # the same run, continued
    run = json.loads((_isolated_runs / failed["run"] / "run.json").read_text())
    assert run["status"] == "succeeded" and len(run["resumed"]) == 1
    assert (_isolated_runs / record["trials"][0]["run"] / "run.json").read_bytes() == kept
    assert [t["attempts"] for t in record["trials"]] == [1, 2]


# --- bad grids: refused before any run, naming the key --------------------------------------------

@pytest.mark.parametrize("grid, words", [
    (["train.paramz.C=[1, 2]"], ["sweep.train.paramz.C", "a parameter path such as train.model", "unknown key",
                                 "Did you mean 'params'"]),
    (["train.modle=[ridge]"], ["sweep.train.modle", "unknown key", "Did you mean 'model'"]),
    (["train=[1]"], ["sweep.train:", "unknown key"]),
    (["train.params.C.x=[1]"], ["sweep.train.params.C.x", "unknown key"]),
    (["data.test_size=[0.1, 0.3]"], ["sweep.data.test_size", "train or evaluate", "data stage runs once",
                                     "a key of 'data'"]),
    (["train.params.C=0.1"], ["sweep.train.params.C", "non-empty list", "0.1 (float)"]),
    (["train.params.C=[1, 2"], ["sweep.train.params.C", "non-empty list", "'[1, 2' (str)"]),  # not YAML
    (["train.params.C=[]"], ["sweep.train.params.C", "an empty list"]),
    (["train.params.C=[{a: 1}]"], ["sweep.train.params.C", "a mapping among them"]),
    (["train.params.C=[1, 2, 1, 2]"], ["sweep.train.params.C", "1 twice"]),
    (["train.params.C=[0.5, 0.5]"], ["sweep.train.params.C", "0.5 twice"]),
    (["train.params.C=[" + ", ".join(str(i) for i in range(1, 12)) + "]",
      "train.params.max_iter=[" + ", ".join(str(i) for i in range(100, 110)) + "]"],
     ["--grid train.params.C=[1, 2,", "--grid train.params.max_iter=[100,", "at most 100 trials", "110 trials"]),
    # every mistake at once, each named
    (["train.params.C", "data.seed=[1]", "train.params.C=7"], ["no '='", "sweep.data.seed", "found 7 (int)"]),
    (["train.cv_folds=[0, 1]"], ["sweep.train.cv_folds[1]", "at least 2 folds", "found 1"]),
    (["train.model=[ridge, logistic_regresion]"], ["sweep.train.model[1]", "logistic_regresion",
                                                   "did you mean 'logistic_regression'"]),
    (["evaluate.gate.rmse=[10]"], ["sweep.evaluate.gate.rmse[0]", "a metric of a classification task"]),
    (["train.params.C"], ["--grid train.params.C", "no '='"]),
])
def test_a_bad_grid_is_refused_naming_the_key(grid, words, _isolated_runs):
    from mlops_kit.errors import ParameterError
    from mlops_kit.params import load_params

    with pytest.raises(ParameterError) as caught:
        load_params(None, grid=grid)
    for word in words:
        assert word in str(caught.value), str(caught.value)
    assert not any(_isolated_runs.iterdir())


def test_a_grid_of_one_hundred_trials_and_distinct_values_of_other_types_are_accepted():
    from mlops_kit.params import load_params

    loaded = load_params(None, grid=["train.params.C=[" + ", ".join(str(i) for i in range(1, 11)) + "]",
                                     "train.params.max_iter=[" + ", ".join(str(i) for i in range(100, 110)) + "]"])
    assert [len(values) for values in loaded.sweep.values()] == [10, 10]
    loaded = load_params(None, grid=["train.params.fit_intercept=[true, 1, 1.0, '1', null]"])
    assert loaded.sweep["train.params.fit_intercept"] == [True, 1, 1.0, "1", None]


def test_a_bad_grid_from_the_cli_and_from_a_file_is_refused_before_any_run(_isolated_runs, tmp_path):
    result = cli("sweep", "--grid", "train.cv_folds=[3, 1]")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "sweep.train.cv_folds[1]" in result.stderr
    file = tmp_path / "sweep.yaml"
    file.write_text(f"extends: {REPO / 'parameters' / 'default.yaml'}\n"
                    "sweep:\n  train.params.C: [0.1, 1]\n  seed: [1, 2]\n")
    result = cli("sweep", "-p", str(file))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{file}: sweep.seed: expected a parameter of the train or evaluate stage" in result.stderr
    assert cli("sweep").returncode != 0 and "needs a grid" in cli("sweep").stderr
    assert not any(_isolated_runs.iterdir())  # no run, no sweep folder


def test_a_setting_the_schema_refuses_stops_the_sweep_before_any_run(_isolated_runs):
    """run_sweep checks every combination itself (a program may hand it any grid)."""
    from mlops_kit.errors import ParameterError
    from mlops_kit.params import load_params
    from mlops_kit.sweep import run_sweep

    loaded = load_params(None)
    loaded.sweep = {"train.params.C": [0.1, 1], "train.cv_folds": [5, 1]}
    with pytest.raises(ParameterError) as caught:
        run_sweep(loaded)
    assert "sweep setting train.params.C=0.1, train.cv_folds=1: train.cv_folds" in str(caught.value)
    assert not any(_isolated_runs.iterdir())


def test_a_file_sweep_section_and_grid_options_combine(tmp_path):
    from mlops_kit.params import load_params
    from mlops_kit.sweep import settings

    file = tmp_path / "sweep.yaml"
    file.write_text(f"extends: {REPO / 'parameters' / 'default.yaml'}\n"
                    "sweep:\n  train.model: [logistic_regression, random_forest]\n  train.params.C: [1]\n")
    loaded = load_params(file, grid=["train.params.C=[0.1, 10]"])  # --grid replaces the file's list
    assert loaded.sweep == {"train.model": ["logistic_regression", "random_forest"], "train.params.C": [0.1, 10]}
    assert settings(loaded.sweep) == [
        {"train.model": "logistic_regression", "train.params.C": 0.1},
        {"train.model": "logistic_regression", "train.params.C": 10},
        {"train.model": "random_forest", "train.params.C": 0.1},
        {"train.model": "random_forest", "train.params.C": 10}]
    assert "sweep" not in loaded.params.model_dump()  # a plain run's parameters are untouched


def test_the_leaderboard_metric_follows_the_gate_and_the_task():
    from mlops_kit.params import load_params
    from mlops_kit.sweep import _metric

    assert _metric(load_params(None).params) == ("balanced_accuracy", True)
    assert _metric(load_params(None, ["data.source=sklearn:diabetes"]).params) == ("r2", True)
    assert _metric(load_params(None, ["data.source=sklearn:diabetes", "evaluate.baseline_metric=rmse"]).params) \
        == ("rmse", False)


def test_the_leaderboard_ranks_by_the_metric_in_its_direction(_isolated_runs):
    from mlops_kit import ledger
    from mlops_kit.sweep import best_trial, leaderboard

    scores = {"a": 10.0, "b": 3.0, "c": 7.0}
    for name, rmse in scores.items():
        run = ledger.create_run({"params": {}, "metrics": {"rmse": rmse, "gate_passed": name != "b"}}, run_id=name)
        run.update(status="succeeded")
        run.release()
    sweep = ledger.create_sweep({
        "grid": {"train.params.alpha": [1, 2, 3, 4]}, "params": {}, "jobs": 1, "metric": "rmse",
        "higher_is_better": False, "data_run": None,
        "trials": [{"index": i, "setting": {"train.params.alpha": i + 1}, "run": run, "status": status}
                   for i, (run, status) in enumerate([("a", "succeeded"), (None, "failed"), ("b", "succeeded"),
                                                      ("c", "succeeded")])]})
    sweep.update(status="partial")
    sweep.release()
    board = leaderboard()
    assert [t["run"] for t in board["trials"]] == ["b", "c", "a", None]
    assert best_trial(board)["run"] == "c"  # b is lower, but failed its gate


def test_a_sweep_whose_process_is_gone_reads_as_interrupted(_isolated_runs):
    from mlops_kit import ledger

    sweep = ledger.create_sweep({"grid": {"train.params.C": [1, 2]}, "params": {}, "jobs": 2,
                                 "trials": [{"index": 0, "setting": {"train.params.C": 1}, "status": "succeeded"},
                                            {"index": 1, "setting": {"train.params.C": 2}, "status": "running"}]})
    assert ledger.read_sweep(sweep.id)["status"] == "running"  # its lock is held: alive
    sweep.release()  # as when its process is killed
    record = ledger.read_sweep()
    assert record["status"] == "interrupted" and [t["status"] for t in record["trials"]] == ["succeeded",
                                                                                          "interrupted"]


# --- hostile input ----------------------------------------------------------------------------

@pytest.mark.security
@pytest.mark.parametrize("sweep_id", ["..", "../x", "/etc", ".hidden", "a/b"])
def test_a_sweep_id_cannot_leave_the_sweeps_folder(sweep_id, _isolated_runs):
    from mlops_kit.errors import MlopsKitError
    from mlops_kit.sweep import leaderboard

    with pytest.raises(MlopsKitError, match="must name a run folder inside"):
        leaderboard(sweep_id)


@pytest.mark.security
def test_a_symlinked_or_tampered_sweep_record_is_refused(_isolated_runs, tmp_path):
    from mlops_kit.errors import ArtifactError, InvalidRunId
    from mlops_kit.sweep import leaderboard

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sweep.json").write_text("{}")
    (_isolated_runs / "sweeps").mkdir()
    os.symlink(elsewhere, _isolated_runs / "sweeps" / "linked")
    with pytest.raises(InvalidRunId, match="symbolic link"):
        leaderboard("linked")
    (_isolated_runs / "sweeps" / "crafted").mkdir()
    (_isolated_runs / "sweeps" / "crafted" / "sweep.json").write_text(json.dumps(
        {"id": "crafted", "created": "now", "status": "running", "grid": {}, "params": {}, "jobs": 0,
         "trials": [{"index": 0, "setting": {"k": [1]}}], "exec": "rm -rf /"}))
    with pytest.raises(ArtifactError) as caught:
        leaderboard("crafted")
    assert "is not a valid SweepRecord" in str(caught.value) and "jobs" in str(caught.value)


def test_run_says_that_a_files_sweep_section_is_for_mlops_kit_sweep(tmp_path):
    """`mlops-kit run -p FILE` runs the file's settings once: its sweep: section is not silently dropped."""
    file = tmp_path / "grid.yaml"
    file.write_text("extends: default.yaml\nsweep:\n  train.params.C: [0.1, 1, 10]\n")
    (tmp_path / "default.yaml").write_text((REPO / "parameters" / "default.yaml").read_text())
    result = cli("run", "-p", str(file), "--explain")
    assert result.returncode == 0, result.stderr
    assert f"the sweep: section of {file} (3 trial(s)) is the grid of `mlops-kit sweep -p {file}`" in result.stderr
    plain = cli("run", "-p", str(tmp_path / "default.yaml"), "--explain")
    assert plain.returncode == 0 and "sweep:" not in plain.stderr
