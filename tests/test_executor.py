"""How a stage is executed is a seam (issue 22, item 0): the runner plans, caches, records and
emits events; an executor runs the notebooks. Here a test executor runs papermill in a
plain subprocess (no zygote, no forked kernel) and the pipeline gives the same run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from mlops_kit import runner
from mlops_kit.errors import StageFailed
from mlops_kit.execution import ExecutionPlan, Outcome, executed_notebook
from mlops_kit.params import load_params


class SubprocessExecutor:
    """papermill's own command line, one process per stage."""

    def __init__(self):
        self.stages, self.calls = [], []

    def start(self, plan: ExecutionPlan) -> None:
        self.stages, self.plan = list(plan.stages), plan
        self.calls.append(("start", [s.name for s in plan.stages]))

    def ready(self) -> None:
        import importlib

        for function, kwargs in self.plan.checks:  # here, in this process
            module, _, name = function.partition(":")
            getattr(importlib.import_module(module), name)(**kwargs)

    def execute(self, stage, run_dir: Path, parameters: dict) -> Outcome:
        self.calls.append(("execute", stage.name))
        output = executed_notebook(run_dir, stage)
        done = subprocess.run([sys.executable, "-m", "papermill", str(self.plan.notebooks / stage.notebook),
                               str(output), "-y", json.dumps(parameters), "-k", "python3",
                               "--cwd", str(self.plan.notebooks), "--no-progress-bar"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            cells = json.loads(output.read_text())["cells"]
            failing = next(i for i, c in enumerate(cells) if any(o.get("output_type") == "error"
                                                                 for o in c.get("outputs", [])))
            error = next(o for o in cells[failing]["outputs"] if o.get("output_type") == "error")
            return Outcome("failed", 1.0, cell_index=failing, exception=error["ename"], detail=error["evalue"])
        return Outcome("succeeded", 1.0)

    def stop(self) -> None:
        self.calls.append(("stop",))
        self.stages = []


def test_the_runner_knows_no_kernel():
    """It imports no kernel machinery (its reports read notebooks with nbformat/nbconvert)."""
    import ast

    tree = ast.parse((REPO / "mlops_kit" / "runner.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {f"{'.' * node.level}{node.module or ''}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported
                if name.split(".")[0] in ("papermill", "jupyter_client", "nbclient", "ipykernel")
                or "_kernels" in name or name.endswith("execution.local")}, imported
    assert "KernelPool" not in (REPO / "mlops_kit" / "runner.py").read_text()


def test_a_pipeline_runs_through_another_executor(_isolated_runs):
    loaded = load_params()
    local = runner.run_pipeline(loaded)
    executor = SubprocessExecutor()
    events = []
    record = runner.run_pipeline(loaded, use_cache=False, executor=executor, on_event=events.append)
    assert record["status"] == "succeeded"
    assert executor.calls == [("start", ["data", "train", "evaluate"]), ("execute", "data"),
                              ("execute", "train"), ("execute", "evaluate"), ("stop",)]
    assert record["metrics"] == local["metrics"]
    assert record["stages"]["data"]["outputs"] == local["stages"]["data"]["outputs"]
    assert record["stages"]["data"]["fingerprint"]["digest"] == local["stages"]["data"]["fingerprint"]["digest"]
    assert [e.kind for e in events if e.stage == "train"] == ["stage_started", "stage_finished"]
    folder = _isolated_runs / record["id"]
    assert (folder / "reports" / "02_train.html").is_file()
    # and the cache takes what either executor made: nothing runs, nothing starts
    again = SubprocessExecutor()
    cached = runner.run_pipeline(loaded, executor=again)
    assert {s["status"] for s in cached["stages"].values()} == {"cached"}
    assert ("execute", "data") not in again.calls


def test_a_failed_outcome_is_recorded_with_its_cell(_isolated_runs):
    class Failing(SubprocessExecutor):
        def execute(self, stage, run_dir, parameters):
            self.calls.append(("execute", stage.name))
            executed_notebook(run_dir, stage).write_text((REPO / "notebooks" / stage.notebook).read_text())
            return Outcome("failed", 0.5, cell_index=3, exception="ValueError", detail="bad value")

    executor = Failing()
    with pytest.raises(StageFailed, match="bad value"):
        runner.run_pipeline(load_params(), use_cache=False, executor=executor)
    [record] = [json.loads(p.read_text()) for p in _isolated_runs.glob("*/run.json")]
    assert record["status"] == "failed" and record["error"]["cell_index"] == 3
    assert record["stages"]["data"]["error"] == {"cell_index": 3, "exception": "ValueError", "message": "bad value"}
    assert executor.calls[-1] == ("stop",) and ("execute", "train") not in executor.calls
