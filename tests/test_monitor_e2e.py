"""06_monitor end to end: a real ``mlops-kit serve`` logging its requests, traffic sent over
HTTP, then ``mlops-kit monitor --json`` on that log (issue 21, item 2): on a model of text
classes (the generated customers) and on the default model (breast cancer: integer classes,
which the log's reader gives back as floats)."""

from __future__ import annotations

import json
import math
import sys

import httpx
import pytest

from _serving_process import ServerProcess
from conftest import train_into
from test_monitor_stage import ROWS_PER_REQUEST, make_customers, make_model_run, mlops_kit, shifted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("e2e-runs")
    return runs, make_model_run(runs, tmp_path_factory.mktemp("e2e-data"))


def default_model_run(runs):
    """A succeeded run in the ledger of ``runs`` whose model is the default one (breast cancer,
    logistic regression: classes 0 and 1)."""
    from mlops_kit import ledger
    from mlops_kit.params import RunParams

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_KIT_RUNS_DIR", str(runs))
        params = RunParams.model_validate({"data": {"source": "sklearn:breast_cancer", "target": "target"}})
        run = ledger.create_run({"params": params.model_dump(mode="json"), "stages": {}})
        train_into(run.path, "sklearn:breast_cancer", "target")
        run.update(status="succeeded", finished=ledger.now())
        run.release()
        return run.path


def send(run, runs, frame, log_dir, prefix: str, target: str = "label") -> None:
    """``frame``'s rows to a real server started by ``mlops-kit serve RUN --log-requests``, in
    requests of ROWS_PER_REQUEST records, each with its own ``x-request-id``."""
    server = ServerProcess(run, "--log-requests", str(log_dir), "--log-sample", "1",
                           command=[sys.executable, "-m", "mlops_kit.cli", "serve", run.name],
                           env={"MLOPS_KIT_RUNS_DIR": str(runs)}).wait_ready()
    try:
        features = frame.drop(columns=[target])
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


def test_the_default_models_own_test_split_through_a_real_server_is_healthy(tmp_path):
    """The default model (integer classes): its test split sent to ``mlops-kit serve`` and
    logged, then ``mlops-kit monitor`` on the log: healthy, exit 0, the predictions not moved
    (the log gives the classes back as 0.0/1.0: an integral float is its integer's level)."""
    import pandas as pd

    runs = tmp_path / "runs"
    run = default_model_run(runs)
    split = pd.read_parquet(run / "artifacts" / "test.parquet")
    send(run, runs, split, tmp_path / "log", "bc", target="target")
    done = mlops_kit("monitor", run.name, "--log", str(tmp_path / "log"), "--json", runs=runs)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["verdict"]["status"] == "healthy"
    assert summary["window"]["rows"] == len(split)
    assert not summary["prediction"]["drift"], summary["prediction"]
    assert not any(f["drift"] for f in summary["features"].values())
