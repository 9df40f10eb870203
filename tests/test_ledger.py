"""The run ledger: stage reuse, --explain, resume, interrupted runs, concurrency, champion,
compare, rm and gc. Real runs (papermill, kernels) through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import nbformat
import pytest

from conftest import REPO, make_mixed_frame
from test_pipeline import MLOPS_KIT, cli, runs_in


def newest(runs_dir) -> dict:
    return max(runs_in(runs_dir), key=lambda r: r["id"])


def statuses(record: dict) -> dict:
    return {name: info["status"] for name, info in record["stages"].items()}


def test_unchanged_rerun_reuses_every_stage(_isolated_runs):
    assert cli("run").returncode == 0
    first = newest(_isolated_runs)
    result = cli("run")
    assert result.returncode == 0, result.stderr
    second = newest(_isolated_runs)
    assert second["id"] != first["id"] and second["status"] == "succeeded"
    assert statuses(second) == {"data": "cached", "train": "cached", "evaluate": "cached"}
    assert {info["source_run"] for info in second["stages"].values()} == {first["id"]}
    folder = _isolated_runs / second["id"]
    for name in ("01_data", "02_train", "03_evaluate"):  # the records are carried over
        assert (folder / "notebooks" / f"{name}.ipynb").exists()
        assert (folder / "reports" / f"{name}.html").exists()
    assert second["stages"]["train"]["outputs"] == first["stages"]["train"]["outputs"]
    assert second["metrics"] == first["metrics"]
    assert "reused from run " + first["id"] in result.stderr
    # --no-cache executes everything again
    assert cli("run", "--no-cache").returncode == 0
    assert set(statuses(newest(_isolated_runs)).values()) == {"succeeded"}


def test_only_stages_downstream_of_a_change_execute(_isolated_runs, tmp_path, project_copy):
    data_file = tmp_path / "table.csv"
    make_mixed_frame(seed=1).to_csv(data_file, index=False)
    args = ("--set", f"data.source={data_file}", "--set", "data.target=label", "--set", "train.params={}",
            "--set", "evaluate.gate={}")
    assert cli("run", *args).returncode == 0

    assert cli("run", *args, "--set", "train.params={C: 0.2}").returncode == 0  # a parameter
    assert statuses(newest(_isolated_runs)) == {"data": "cached", "train": "succeeded", "evaluate": "succeeded"}

    evaluate_nb = project_copy / "notebooks" / "03_evaluate.ipynb"  # a notebook cell
    notebook = nbformat.read(evaluate_nb, as_version=4)
    notebook.cells[-1].source += "\n- (a note added by the test)"
    nbformat.write(notebook, evaluate_nb)
    assert cli("run", *args, "--set", "train.params={C: 0.2}").returncode == 0
    assert statuses(newest(_isolated_runs)) == {"data": "cached", "train": "cached", "evaluate": "succeeded"}

    make_mixed_frame(seed=2).to_csv(data_file, index=False)  # the data file's content
    explained = cli("run", *args, "--set", "train.params={C: 0.2}", "--explain")
    assert explained.returncode == 0
    assert "data      run" in explained.stdout and "the data file's content changed" in explained.stdout
    assert "comes from stage 'data', which runs" in explained.stdout
    assert cli("run", *args, "--set", "train.params={C: 0.2}").returncode == 0
    assert set(statuses(newest(_isolated_runs)).values()) == {"succeeded"}


def test_explain_runs_nothing_and_says_why(_isolated_runs):
    assert cli("run").returncode == 0
    (first,) = runs_in(_isolated_runs)
    result = cli("run", "--explain", "--set", "train.params.C=0.5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data") and f"reuse from run {first['id']}" in lines[0]
    # default.yaml names no hyperparameters (the registry's defaults apply): {} -> the override
    assert lines[1].startswith("train") and "train.params {} -> {'C': 0.5}" in lines[1]
    assert lines[2].startswith("evaluate") and "comes from stage 'train', which runs" in lines[2]
    assert len(runs_in(_isolated_runs)) == 1  # nothing ran


def test_tampered_cached_artifact_is_detected_and_the_stage_reexecutes(_isolated_runs):
    assert cli("run").returncode == 0
    (first,) = runs_in(_isolated_runs)
    model = _isolated_runs / first["id"] / "artifacts" / "model.skops"
    model.write_bytes(model.read_bytes() + b"tampered")
    result = cli("run")
    assert result.returncode == 0, result.stderr
    assert "model.skops of run " + first["id"] + " was changed after it was written (sha256 mismatch)" \
        in result.stderr
    assert statuses(newest(_isolated_runs)) == {"data": "cached", "train": "succeeded", "evaluate": "succeeded"}


def test_resume_continues_a_failed_run_in_its_folder(_isolated_runs, project_copy):
    train_nb = project_copy / "notebooks" / "02_train.ipynb"
    original = train_nb.read_text()
    notebook = nbformat.read(train_nb, as_version=4)
    notebook.cells.insert(3, nbformat.v4.new_code_cell('raise RuntimeError("not yet")'))
    nbformat.write(notebook, train_nb)
    assert cli("run").returncode == 1
    (failed,) = runs_in(_isolated_runs)
    assert failed["status"] == "failed"
    data_started = failed["stages"]["data"]["started"]

    still = cli("run", "--resume", failed["id"])  # the cause is still there
    assert still.returncode == 1 and "not yet" in still.stderr

    train_nb.write_text(original)
    result = cli("run", "--resume", failed["id"])
    assert result.returncode == 0, result.stderr
    (resumed,) = runs_in(_isolated_runs)  # the same run, the same folder
    assert resumed["id"] == failed["id"] and resumed["status"] == "succeeded"
    assert resumed["stages"]["data"]["started"] == data_started  # not executed again
    assert statuses(resumed) == {"data": "succeeded", "train": "succeeded", "evaluate": "succeeded"}
    assert len(resumed["resumed"]) == 2 and resumed.get("error") is None
    # the overhead is the last attempt's: its stages are train and evaluate, not data
    assert resumed["overhead"]["stages"] == pytest.approx(
        resumed["stages"]["train"]["seconds"] + resumed["stages"]["evaluate"]["seconds"], abs=0.002)
    assert {"start-up", "planning", "kernel start", "record", "other"} <= set(resumed["overhead"]["phases"])
    refused = cli("run", "--resume", failed["id"])
    assert refused.returncode == 1 and "it succeeded; there is nothing to resume" in refused.stderr


def test_killed_run_shows_interrupted_and_resumes(_isolated_runs):
    process = subprocess.Popen([*MLOPS_KIT, "run"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = runs_in(_isolated_runs)
        if records and records[0]["stages"]["train"].get("status") == "running":
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    raw = runs_in(_isolated_runs)[0]
    assert raw["status"] == "running"  # what the killed process left behind ...
    listed = json.loads(cli("runs", "list", "--json").stdout)
    assert listed[0]["status"] == "interrupted"  # ... is settled by the next reader
    assert listed[0]["stages"]["train"]["status"] == "interrupted"
    result = cli("run", "--resume", listed[0]["id"])
    assert result.returncode == 0, result.stderr
    (record,) = runs_in(_isolated_runs)
    assert record["status"] == "succeeded" and record["stages"]["data"]["status"] == "succeeded"


def test_sigterm_records_the_run_as_interrupted(_isolated_runs):
    process = subprocess.Popen([*MLOPS_KIT, "run"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = runs_in(_isolated_runs)
        if records and records[0]["stages"]["data"].get("status") == "running":
            break
        time.sleep(0.02)
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "Traceback" not in stderr
    (record,) = runs_in(_isolated_runs)
    assert record["status"] == "interrupted"  # written by the process itself


def test_two_runs_at_once_both_complete(_isolated_runs):
    processes = [subprocess.Popen([*MLOPS_KIT, "run", "--no-cache", "--set", f"seed={seed}"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for seed in (1, 2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    records = runs_in(_isolated_runs)
    assert len(records) == 2 and {r["status"] for r in records} == {"succeeded"}
    assert {r["params"]["seed"] for r in records} == {1, 2}
    for record in records:
        schema = json.loads((_isolated_runs / record["id"] / "artifacts" / "model_card.json").read_text())
        assert schema["seed"] == record["params"]["seed"]  # each wrote its own artifacts


def test_promote_compare_and_evaluate_against_the_champion(_isolated_runs, tmp_path):
    assert cli("run").returncode == 0
    assert cli("run", "--set", "train.params.C=0.05").returncode == 0
    first, second = sorted(runs_in(_isolated_runs), key=lambda r: r["id"])
    refused = cli("runs", "promote", "missing-run")
    assert refused.returncode == 1 and "No run 'missing-run'" in refused.stderr
    promoted = cli("runs", "promote", first["id"], "--why", "baseline")
    assert promoted.returncode == 0, promoted.stderr
    champion = json.loads((_isolated_runs / "champion.json").read_text())
    assert champion["run"] == first["id"] and champion["why"] == "baseline" and champion["who"]
    listed = json.loads(cli("runs", "list", "--json").stdout)
    assert [r["champion"] for r in sorted(listed, key=lambda r: r["id"])] == [True, False]

    plot = tmp_path / "compare.png"
    compared = cli("runs", "compare", first["id"], second["id"], "--json")
    result = json.loads(compared.stdout)
    assert result["params"]["train.params.C"] == [None, 0.05]      # unset (the registry's default) vs 0.05
    assert set(result["metrics"]) >= {"accuracy", "roc_auc"}
    assert result["metrics"]["accuracy"] == [first["metrics"]["accuracy"], second["metrics"]["accuracy"]]
    table = cli("runs", "compare", first["id"], second["id"], "--plot", str(plot))
    assert table.returncode == 0 and "train.params.C" in table.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert cli("run", "--set", "train.params.C=0.5").returncode == 0  # compares with the champion
    third = newest(_isolated_runs)
    metrics = json.loads((_isolated_runs / third["id"] / "artifacts" / "metrics.json").read_text())
    assert metrics["comparison"]["run"] == first["id"] and metrics["comparison"]["champion"] is True


def test_rm_and_gc_keep_the_champion(_isolated_runs):
    for c in (1.0, 0.5, 0.25):
        assert cli("run", "--set", f"train.params.C={c}").returncode == 0
    oldest, middle, newest_run = sorted(r["id"] for r in runs_in(_isolated_runs))
    assert cli("runs", "promote", oldest).returncode == 0
    refused = cli("runs", "rm", oldest)
    assert refused.returncode == 1 and "is the champion" in refused.stderr
    dry = cli("runs", "gc", "--keep", "1", "--dry-run")
    assert dry.returncode == 0 and middle in dry.stdout and len(runs_in(_isolated_runs)) == 3
    assert cli("runs", "gc", "--keep", "1").returncode == 0
    assert sorted(r["id"] for r in runs_in(_isolated_runs)) == [oldest, newest_run]
    assert cli("runs", "rm", newest_run).returncode == 0
    assert [r["id"] for r in runs_in(_isolated_runs)] == [oldest]


def test_deploy_takes_the_champion_when_no_run_is_named(_isolated_runs):
    result = cli("deploy")
    assert result.returncode == 1 and "No RUN_ID given and no champion promoted" in result.stderr
    assert "Traceback" not in result.stderr


def test_explain_names_the_stage_each_missing_input_comes_from(_isolated_runs):
    result = cli("run", "-p", "parameters/local.yaml", "--explain")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["data"].strip().endswith("no earlier run of this stage")
    assert "comes from stage 'data'" in lines["evaluate"]
    assert "its input model.skops comes from stage 'train'" in lines["package"]
    assert runs_in(_isolated_runs) == []
