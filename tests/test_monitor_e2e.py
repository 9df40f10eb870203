"""06_monitor end to end: a real ``mlops-kit serve`` logging its requests, traffic sent over
HTTP, then ``mlops-kit monitor --json`` on that log (issue 21, item 2)."""

from __future__ import annotations

import json
import math
import sys

import httpx
import pytest

from _serving_process import ServerProcess
from test_monitor_stage import ROWS_PER_REQUEST, make_customers, make_model_run, mlops_kit, shifted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("e2e-runs")
    return runs, make_model_run(runs, tmp_path_factory.mktemp("e2e-data"))


def send(run, runs, frame, log_dir, prefix: str) -> None:
    """``frame``'s rows to a real server started by ``mlops-kit serve RUN --log-requests``, in
    requests of ROWS_PER_REQUEST records, each with its own ``x-request-id``."""
    server = ServerProcess(run, "--log-requests", str(log_dir), "--log-sample", "1",
                           command=[sys.executable, "-m", "mlops_kit.cli", "serve", run.name],
                           env={"MLOPS_KIT_RUNS_DIR": str(runs)}).wait_ready()
    try:
        features = frame.drop(columns=["label"])
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for start in range(0, len(features), ROWS_PER_REQUEST):
                records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                           for row in features.iloc[start:start + ROWS_PER_REQUEST].to_dict("records")]
                answer = client.post("/predict", json=records, headers={"x-request-id": f"{prefix}-{start}"})
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-request-id"] == f"{prefix}-{start}"
    finally:
        server.stop()


def test_a_real_servers_log_judged_unchanged_healthy_and_shifted_naming_exactly_those(served_run, tmp_path):
    runs, run = served_run
    # unchanged traffic alarms in at most 5 % of windows by design (seed 31's window, for one, has
    # 65 % 'basic' plans for 60 %: p 0.0017 under the threshold 0.0083): a seeded healthy window
    send(run, runs, make_customers(800, seed=33), tmp_path / "same", "same")
    done = mlops_kit("monitor", run.name, "--log", str(tmp_path / "same"), "--json", runs=runs)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["verdict"]["status"] == "healthy" and summary["window"]["rows"] == 800
    assert summary["window"]["requests"] == 800 // ROWS_PER_REQUEST
    send(run, runs, shifted(make_customers(800, seed=32)), tmp_path / "shifted", "shifted")
    done = mlops_kit("monitor", run.name, "--log", str(tmp_path / "shifted"), "--json", runs=runs)
    assert done.returncode == 3, done.stderr
    summary = json.loads(done.stdout)
    assert {name for name, f in summary["features"].items() if f["drift"]} == {"age", "income"}
    assert set(summary["verdict"]["drifted"]) - {"prediction"} == {"age", "income"}
