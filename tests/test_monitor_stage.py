"""06_monitor: the report on live rows, late labels joined, the export retrained on, a run of
kind ``monitor`` in the ledger, and each bad input named (issue 21, item 2).

Ground truth by construction: the model is trained on a generated table; unchanged traffic is
fresh rows of the same generator, shifted traffic the same rows with known features moved.
The live rows are shaped as the request log's reader gives them (contract B): ``request_id``,
``row``, ``time``, ``model_sha256``, the features as received, ``prediction``, ``proba_<class>``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from conftest import train_into
from mlops_kit import artifacts, data, ledger, model_io, monitor, train
from mlops_kit.errors import DataError, MlopsKitError
from mlops_kit.params import RunParams

ROWS_PER_REQUEST = 5


def make_customers(n: int, *, seed: int) -> pd.DataFrame:
    """Numeric ``age``, ``income``, ``tenure``; categorical ``city``, ``plan``; a yes/no ``label``."""
    rng = np.random.default_rng(seed)
    age = rng.normal(45, 12, n)
    income = rng.normal(50_000, 15_000, n)
    tenure = rng.exponential(4, n)
    city = rng.choice(["paris", "lyon", "nantes", "lille"], n, p=[0.4, 0.3, 0.2, 0.1])
    plan = rng.choice(["basic", "pro"], n, p=[0.6, 0.4])
    score = 0.04 * (age - 45) + (income - 50_000) / 15_000 + (city == "paris") * 0.8 + rng.normal(0, 0.7, n)
    frame = pd.DataFrame({"age": age, "income": income, "tenure": tenure, "city": city, "plan": plan})
    frame.loc[rng.random(n) < 0.03, "tenure"] = np.nan
    frame["label"] = np.where(score > 0, "yes", "no")
    return frame


def make_model_run(runs, data_dir):
    """A succeeded run in the ledger of ``runs`` whose model is trained on make_customers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_KIT_RUNS_DIR", str(runs))
        source = data_dir / "customers.csv"
        make_customers(3000, seed=0).to_csv(source, index=False)
        params = RunParams.model_validate({"data": {"source": str(source), "target": "label"}})
        run = ledger.create_run({"params": params.model_dump(mode="json"), "stages": {}})
        train_into(run.path, str(source), "label")  # with its monitor_profile.json, as 02_train writes it
        run.update(status="succeeded", finished=ledger.now())
        run.release()
        return run.path


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A succeeded run in the ledger (its runs folder this module's own) whose model watched."""
    runs = tmp_path_factory.mktemp("monitor-runs")
    return runs, make_model_run(runs, tmp_path_factory.mktemp("monitor-data"))


@pytest.fixture
def folder(model_run, monkeypatch):
    runs, path = model_run
    monkeypatch.setenv("MLOPS_KIT_RUNS_DIR", str(runs))
    return path / "artifacts"


def live_rows(folder, frame: pd.DataFrame, *, prefix: str = "req") -> pd.DataFrame:
    """``frame``'s features as the request log's reader returns them, with the model's answers."""
    schema = artifacts.SCHEMA.load(folder)
    card = artifacts.MODEL_CARD.load(folder)
    model = model_io.load_model(folder)
    features = frame[schema.feature_names]
    X, _ = train.features_and_target(features.assign(**{schema.target: "no"}), schema.model_dump())
    n = len(frame)
    live = pd.DataFrame({"request_id": [f"{prefix}-{i // ROWS_PER_REQUEST}" for i in range(n)],
                         "row": np.arange(n) % ROWS_PER_REQUEST,
                         "time": pd.date_range("2026-12-01", periods=n, freq="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "model_sha256": card.sha256})
    live = pd.concat([live, features.reset_index(drop=True)], axis=1)
    live["prediction"] = model.predict(X)
    for i, name in enumerate(model.classes_):
        live[f"proba_{name}"] = model.predict_proba(X)[:, i]
    return live


def shifted(frame: pd.DataFrame) -> pd.DataFrame:
    """``age`` and ``income`` moved, within the training range (beyond it is a data-quality matter)."""
    return frame.assign(age=np.clip(frame["age"] + 8, 20, 70), income=np.clip(frame["income"] * 1.3, 20_000, 80_000))


# --- the verdict ---------------------------------------------------------------------------

def test_unchanged_traffic_is_healthy_and_the_table_is_sorted_by_score(folder):
    result = monitor.report(folder, live_rows(folder, make_customers(1000, seed=1)))
    assert result.verdict.status == "healthy" and result.verdict.exit_code == monitor.EXIT_HEALTHY
    summary = result.summary()
    assert set(summary) == {"window", "features", "prediction", "quality", "performance", "verdict"}
    assert set(summary["features"]["age"]) == {"method", "score", "p_value", "threshold", "drift", "min_detectable"}
    assert summary["performance"] is None and summary["window"]["rows"] == 1000
    assert summary["window"]["requests"] == 200 and summary["window"]["first"] == "2026-12-01T00:00:00Z"
    scores = result.table()["score (PSI)"].tolist()
    assert scores == sorted(scores, reverse=True)
    assert result.bins["age"].reference == monitor.model_profile(folder).feature("age").counts


def test_shifted_features_are_exactly_those_flagged(folder):
    result = monitor.report(folder, live_rows(folder, shifted(make_customers(1000, seed=2))))
    assert result.verdict.status == "drift" and result.verdict.exit_code == monitor.EXIT_DRIFT
    assert set(result.verdict.drifted) - {"prediction"} == {"age", "income"}
    assert {n for n, f in result.features.items() if f.drift} == {"age", "income"}
    assert set(result.table().drop(index="(prediction)").index[:2]) == {"age", "income"}


def test_a_new_category_is_a_data_quality_verdict(folder):
    frame = make_customers(1000, seed=3)
    frame.loc[frame.index[:200], "city"] = "marseille"
    result = monitor.report(folder, live_rows(folder, frame))
    assert result.verdict.status == "quality" and result.verdict.exit_code == monitor.EXIT_QUALITY
    assert result.verdict.quality_issues == ["city"] and result.quality["city"].unseen.flagged


# --- late labels ---------------------------------------------------------------------------

def _labels(live: pd.DataFrame, frame: pd.DataFrame, share: float = 0.5, *, flip: bool = False) -> pd.DataFrame:
    keep = np.arange(len(live)) < int(share * len(live))
    truth = frame["label"].to_numpy()[keep]
    if flip:
        truth = np.where(truth == "yes", "no", "yes")
    return pd.DataFrame({"request_id": live["request_id"][keep], "row": live["row"][keep], "label": truth})


def test_labels_give_live_metrics_beside_the_evaluation_and_the_export_retrains(folder, tmp_path):
    frame = make_customers(600, seed=4)
    live = live_rows(folder, frame)
    labels_path = tmp_path / "labels.csv"
    _labels(live, frame).to_csv(labels_path, index=False)
    labels = monitor.read_labels(labels_path, "label")
    export = tmp_path / "live.csv"
    result = monitor.report(folder, live, labels=labels, labels_source=str(labels_path), export_to=export)
    perf = result.performance
    assert perf.labelled_rows == 300 and perf.share_labelled == 0.5 and perf.unmatched_labels == 0
    assert set(perf.metrics) == set(perf.evaluation) and perf.judged and perf.passed
    assert abs(perf.metrics["accuracy"] - perf.evaluation["accuracy"]) < 0.1
    assert result.verdict.status == "healthy"
    # the export is a table the data stage accepts, its rows those labelled
    exported = pd.read_csv(export)
    assert list(exported.columns) == ["age", "income", "tenure", "city", "plan", "label"] and len(exported) == 300
    validation = data.validate_dataset(data.load_dataset(str(export), "label"))
    assert data.infer_schema(validation, "label")["task"] == "classification"


def test_labels_that_contradict_the_model_are_a_performance_verdict(folder, tmp_path):
    frame = make_customers(600, seed=5)
    live = live_rows(folder, frame)
    result = monitor.report(folder, live, labels=_labels(live, frame, flip=True), gate={"accuracy": 0.7})
    assert result.performance.passed is False and result.verdict.status == "performance"
    assert result.verdict.exit_code == monitor.EXIT_PERFORMANCE
    assert any("accuracy" in reason for reason in result.verdict.gate_failures)


def test_broken_inputs_come_before_performance_in_the_verdict(folder):
    frame = make_customers(600, seed=14)
    frame.loc[frame.index[:150], "city"] = "marseille"
    live = live_rows(folder, frame)
    result = monitor.report(folder, live, labels=_labels(live, frame, flip=True), gate={"accuracy": 0.7})
    assert result.performance.passed is False and result.verdict.gate_failures
    assert result.verdict.status == "quality" and result.verdict.exit_code == monitor.EXIT_QUALITY


def test_few_labels_are_reported_but_not_judged(folder):
    frame = make_customers(600, seed=6)
    live = live_rows(folder, frame)
    labels = _labels(live, frame, share=(monitor.MIN_LABELLED_ROWS - 1) / 600, flip=True)
    result = monitor.report(folder, live, labels=labels)
    assert result.performance.labelled_rows == monitor.MIN_LABELLED_ROWS - 1
    assert not result.performance.judged and result.performance.passed is None
    assert result.verdict.status == "healthy"
    enough = _labels(live, frame, share=monitor.MIN_LABELLED_ROWS / 600, flip=True)  # exactly the minimum
    assert monitor.report(folder, live, labels=enough).performance.judged


def test_numeric_class_labels_join_whatever_their_spelling(tmp_path):
    """Classes 0/1 (breast cancer): the log's JSON 1, a CSV's 1 or 1.0 (a column with a hole)
    are one class."""
    assert {monitor.class_text(v) for v in (1, 1.0, "1", np.int64(1), np.float64(1.0))} == {"1"}
    assert monitor.class_text(True) == "True" and monitor.class_text(0.5) == "0.5"


# --- bad inputs, each named ------------------------------------------------------------------

def test_an_empty_window_is_refused(folder):
    empty = live_rows(folder, make_customers(10, seed=7)).iloc[:0]
    with pytest.raises(DataError, match="must hold rows of model .* Got no row instead"):
        monitor.report(folder, empty)


def test_labels_without_the_columns_are_named(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"id": ["a"], "label": ["yes"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"must have the columns 'request_id' and 'label'.*Got the columns \['id', "
                                        r"'label'\] instead") as refused:
        monitor.read_labels(path, "label")
    assert refused.value.column == "request_id"
    parquet = tmp_path / "labels.parquet"  # parquet too, ids read as text whatever their type
    pd.DataFrame({"request_id": [7, 8], "row": [0, 1], "label": ["yes", "no"]}).to_parquet(parquet)
    assert monitor.read_labels(parquet, "label").to_dict("list") == {"request_id": ["7", "8"], "row": [0, 1],
                                                                    "label": ["yes", "no"]}
    path.write_text("request_id,row,label\na,-1,yes\n")
    with pytest.raises(DataError, match="'row' must be a row number .* Got -1 on row 1 instead"):
        monitor.read_labels(path, "label")
    path.write_text("request_id,row,label\na,x,yes\n")
    with pytest.raises(DataError, match="'row' must be a row number .* Got 'x' on row 1 instead"):
        monitor.read_labels(path, "label")
    path.write_text("request_id,row,label\na,0,yes\na,1.5,no\n")
    with pytest.raises(DataError, match="'row' must be a row number .* Got 1.5 on row 2 instead"):
        monitor.read_labels(path, "label")
    path.write_text("request_id,label\na,yes\n,no\n")
    with pytest.raises(DataError, match="'request_id' must be set on every row. Got an empty one on row 2 instead"):
        monitor.read_labels(path, "label")
    path.write_text("request_id,row,label\na,0,yes\na,1,\nb,0,no\n")  # a label not known yet: left out
    labels = monitor.read_labels(path, "label")
    assert labels.to_dict("list") == {"request_id": ["a", "b"], "row": [0, 0], "label": ["yes", "no"]}
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(DataError, match="must be a .csv or .parquet file"):
        monitor.read_labels(tmp_path / "labels.json", "label")
    with pytest.raises(DataError, match="must exist"):
        monitor.read_labels(tmp_path / "absent.csv", "label")


def test_duplicate_ids_are_refused_in_the_labels_and_in_the_log(folder, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label\n0042,yes\n0042,no\n")  # ids are text: 0042 stays 0042
    with pytest.raises(DataError, match="must name each request id .* Got '0042' row 0 2 times"):
        monitor.read_labels(path, "label")
    frame = make_customers(20, seed=8)
    live = live_rows(folder, frame)
    live.loc[1, ["request_id", "row"]] = live.loc[0, ["request_id", "row"]].to_numpy()
    with pytest.raises(DataError, match="The request log must name each request id"):
        monitor.report(folder, live, labels=_labels(live, frame))


def test_labels_that_join_nothing_are_refused(folder):
    frame = make_customers(50, seed=9)
    live = live_rows(folder, frame)
    labels = _labels(live, frame).assign(request_id=lambda f: "other-" + f["request_id"])
    with pytest.raises(DataError, match=r"^The labels must name requests of the log. Got 25 labels that join nothing instead "
                                        r"\(e.g. 'other-req-0' row 0; the log has ids such as 'req-0'\)"):
        monitor.report(folder, live, labels=labels)


def test_labels_must_be_classes_of_the_model(folder):
    frame = make_customers(100, seed=15)
    live = live_rows(folder, frame)
    labels = _labels(live, frame)
    labels.loc[:2, "label"] = ["maybe", "perhaps", "perhaps"]
    with pytest.raises(DataError, match=r"The labels of labels.csv must be classes of the model \('no', 'yes'\). "
                                        "Got 'maybe' on 3 rows instead"):
        monitor.report(folder, live, labels=labels, labels_source="labels.csv")


def test_regression_labels_must_be_numbers(regression_model_dir):
    """The join reads the labels as the model's task needs them."""
    schema = artifacts.SCHEMA.load(regression_model_dir)
    labelled = pd.DataFrame({"prediction": [1.0, 2.0], schema.target: ["3", "four"]})
    with pytest.raises(DataError, match="must be numbers. Got 'four' instead"):
        monitor.live_performance(labelled, regression_model_dir, unmatched=0, rows=2, source="l.csv", gate={},
                                 baseline_metric=None, baseline_margin=None)


# --- the ledger ----------------------------------------------------------------------------

def test_a_monitor_run_is_never_compared_nor_promoted(folder):
    run = ledger.create_run({"kind": "monitor", "stages": {}})
    artifacts.METRICS.path(run.path).write_bytes(artifacts.METRICS.path(folder).read_bytes())
    run.update(status="succeeded", metrics={"gate_passed": True})
    run.release()
    record = ledger.read_run(run.id)
    assert ledger.kind_of(record) == "monitor" and ledger.read_metrics(record) is None
    with pytest.raises(MlopsKitError, match="must be a pipeline run to be promoted. Got a monitor run"):
        ledger.promote(run.id)
    assert ledger.kind_of({"id": "old"}) == "pipeline" and ledger.run_kind(["data", "train"]) == "pipeline"


# --- the Monitor panel (its I/O faked here; tests/test_browser.py clicks it for real) -------

def test_monitor_panel_shows_the_verdict_the_table_a_feature_and_retrains(folder, tmp_path):
    from mlops_kit.panels import MonitorPanel

    frame = shifted(make_customers(600, seed=10))
    live = live_rows(folder, frame)
    export = tmp_path / "live.csv"
    result = monitor.report(folder, live, labels=_labels(live, frame), export_to=export)
    calls = []

    def watch(run_id, **options):
        calls.append(("watch", run_id, options))
        return {"id": "20261207-000000-mmmm"}, result

    def retrain(run_id, source):
        calls.append(("retrain", run_id, source))
        return {"id": "20261207-000001-rrrr", "status": "succeeded"}

    runs = [{"id": "20261207-000000-mmmm", "status": "succeeded", "kind": "monitor"},
            {"id": "20261206-000000-aaaa", "status": "succeeded", "champion": True}]
    panel = MonitorPanel(list_runs=lambda: runs, watch=watch, retrain=retrain)
    assert panel.run_picker.dropdown.options == (("20261206-000000-aaaa  ★ champion", "20261206-000000-aaaa"),)
    assert panel.retrain_button.disabled
    panel.export_path.value = str(export)
    panel.check_button.click()
    panel.worker.join(30)
    assert calls == [("watch", "20261206-000000-aaaa", {"log_dir": None, "labels": None,
                                                         "export_labelled": str(export)})]
    assert "Verdict: drift" in panel.verdict.value and "moved: " in panel.verdict.value
    rows = panel.table.value.split("<tr")[2:]
    assert {rows[0].split("<td>")[1].split("<")[0], rows[1].split("<td>")[1].split("<")[0]} <= \
        {"age", "income", "(prediction)"}
    assert "300 labelled rows" in panel.performance.value
    assert panel.feature.value in ("age", "income") and panel.plot.value[:4] == b"\x89PNG"
    panel.feature.value = "city"
    assert panel.plot.value[:4] == b"\x89PNG"
    assert not panel.retrain_button.disabled
    panel.retrain_button.click()
    panel.worker.join(30)
    assert calls[-1] == ("retrain", "20261206-000000-aaaa", str(export))
    assert "Retraining run 20261207-000001-rrrr succeeded" in panel.status.value
    assert panel.errors.outputs == ()


def test_monitor_panel_shows_a_failure(folder):
    from mlops_kit.panels import MonitorPanel

    def watch(run_id, **options):
        raise DataError("The labels must name requests of the log. Got 3 labels that join nothing instead.")

    panel = MonitorPanel(list_runs=lambda: [{"id": "20261206-000000-aaaa", "status": "succeeded"}], watch=watch)
    panel.check_button.click()
    panel.worker.join(30)
    assert "failed: The labels must name requests of the log" in panel.status.value
    assert panel.retrain_button.disabled and not panel.check_button.disabled


# --- the stage end to end: mlops-kit monitor on a log written by the request log's writer ---

def write_log(folder, frame: pd.DataFrame, log_dir, *, prefix: str = "req", sha256: str | None = None):
    """``frame`` sent as requests of ROWS_PER_REQUEST rows and logged by the server's writer."""
    from mlops_kit.monitor.requestlog import RequestLogWriter

    live = live_rows(folder, frame, prefix=prefix)
    card = artifacts.MODEL_CARD.load(folder)
    writer = RequestLogWriter(log_dir, sample=1.0, model_sha256=sha256 or card.sha256, classes=card.classes)
    classes = [f"proba_{c}" for c in card.classes]
    for start in range(0, len(live), ROWS_PER_REQUEST):
        chunk = live.iloc[start:start + ROWS_PER_REQUEST]
        features = {name: chunk[name].to_numpy() for name in card.features}
        assert writer.offer(chunk["request_id"].iloc[0], features, chunk["prediction"].to_numpy(),
                            chunk[classes].to_numpy())
    writer.close()
    return live


def mlops_kit(*args: str, runs) -> "subprocess.CompletedProcess":
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLOPS_KIT_RUNS_DIR": str(runs)}
    return subprocess.run([sys.executable, "-m", "mlops_kit.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_mlops_kit_monitor_judges_a_log_joins_labels_and_the_export_retrains(model_run, folder, tmp_path):
    import json

    from mlops_kit import runner
    from mlops_kit.params import load_params

    runs, model = model_run
    # unchanged traffic: healthy, exit 0, a run of kind monitor with its notebook, report and plot
    healthy = tmp_path / "healthy"
    write_log(folder, make_customers(800, seed=11), healthy)
    done = mlops_kit("monitor", model.name, "--log", str(healthy), "--json", runs=runs)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert set(summary) == {"window", "features", "prediction", "quality", "performance", "verdict"}
    assert summary["verdict"]["status"] == "healthy" and summary["window"]["rows"] == 800
    record = ledger.read_run(re.search(r"Monitor run (\S+):", done.stderr).group(1))
    assert ledger.kind_of(record) == "monitor"
    assert record["status"] == "succeeded" and record["params"]["monitor"]["model_run"] == model.name
    assert record["verdict"] == {"status": "healthy", "exit_code": 0, "model_run": model.name}
    listed = mlops_kit("runs", "list", runs=runs)
    assert f"healthy (run {model.name})" in listed.stdout
    assert record["stages"]["train"] == {"status": "reused", "source_run": model.name,
                                         "outputs": record["stages"]["train"]["outputs"]}
    monitor_run = runs / record["id"]
    for path in ("notebooks/06_monitor.ipynb", "reports/06_monitor.html", "artifacts/monitor_report.json",
                 "artifacts/monitor_drift.png"):
        assert (monitor_run / path).is_file(), path
    assert monitor.load_report(monitor_run).summary() == summary
    # shifted traffic with late labels: exactly the shifted features, the labelled rows exported
    drifted = tmp_path / "drifted"
    frame = shifted(make_customers(800, seed=12))
    live = write_log(folder, frame, drifted)
    labels, export = tmp_path / "labels.parquet", tmp_path / "live.parquet"
    _labels(live, frame).to_parquet(labels)
    done = mlops_kit("monitor", model.name, "--log", str(drifted), "--labels", str(labels),
                     "--export-labelled", str(export), "--json", runs=runs)
    assert done.returncode == monitor.EXIT_DRIFT, done.stderr
    summary = json.loads(done.stdout)
    assert {n for n, f in summary["features"].items() if f["drift"]} == {"age", "income"}
    assert summary["performance"]["labelled_rows"] == 400 and summary["performance"]["passed"] is True
    # the text report says the same
    done = mlops_kit("monitor", model.name, "--log", str(drifted), runs=runs)
    assert done.returncode == monitor.EXIT_DRIFT and "Verdict: drift (exit code 3)" in done.stdout
    assert "moved: age" in done.stdout and "moved: income" in done.stdout
    # retraining on the export is one run
    retrained = runner.run_pipeline(load_params(overrides=[f"data.source={export}", "data.target=label"]))
    assert retrained["status"] == "succeeded" and retrained["kind"] == "pipeline"
    assert artifacts.SCHEMA.load(runs / retrained["id"]).rows == 400


def test_mlops_kit_monitor_names_bad_inputs_before_any_run(model_run, folder, tmp_path):
    runs, model = model_run
    done = mlops_kit("monitor", "20990101-000000-none", "--log", str(tmp_path), runs=runs)
    assert done.returncode == 1 and "No run '20990101-000000-none'" in done.stderr and "Traceback" not in done.stderr
    labels = tmp_path / "labels.csv"
    labels.write_text("id,outcome\na,yes\n")
    done = mlops_kit("monitor", model.name, "--log", str(tmp_path), "--labels", str(labels), runs=runs)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "monitor.labels: expected a table with the columns 'request_id' and 'label'" in done.stderr
    assert "found the columns id, outcome" in done.stderr
    done = mlops_kit("monitor", model.name, "--log", str(tmp_path / "absent"), runs=runs)
    assert done.returncode == 2 and "monitor.log_dir: expected an existing folder" in done.stderr
    done = mlops_kit("monitor", model.name, "--log", str(tmp_path), runs=runs)  # a folder without a log
    assert done.returncode == 2 and "monitor.log_dir: expected a request log (requests-*.jsonl files" in done.stderr
    done = mlops_kit("monitor", model.name, runs=runs)  # the local deploy's log: none yet
    assert done.returncode == 2 and f"found no folder at '{runs / '.requests' / model.name}'" in done.stderr
    done = mlops_kit("monitor", model.name, "--log", str(tmp_path), "--alpha", "1.5", runs=runs)
    assert done.returncode == 2 and "--set monitor.alpha=1.5: monitor.alpha: expected" in done.stderr, done.stderr
    # on MicroK8s the log is collected from the pods first (tests/test_monitor_collect.py): no cluster, no run
    missing = tmp_path / "no-kubeconfig"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(missing))
        done = mlops_kit("monitor", model.name, "--set", "deploy.target=microk8s", runs=runs)
    assert done.returncode == 1 and f"KUBECONFIG names '{missing}', but no such file exists" in done.stderr, \
        done.stderr
    assert "Traceback" not in done.stderr
    assert not [r for r in ledger.list_runs() if ledger.kind_of(r) == "monitor" and r["status"] != "succeeded"]


def test_a_log_of_another_model_and_an_empty_log_are_refused(folder, tmp_path):
    from mlops_kit.errors import ArtifactError

    write_log(folder, make_customers(20, seed=13), tmp_path / "other", sha256="f" * 64)
    with pytest.raises(ArtifactError, match="must be a request to model .* Got a request to model f{64} instead"):
        monitor.read_live(tmp_path / "other", folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="must hold at least one row. Got no log file instead"):
        monitor.read_live(tmp_path / "empty", folder)


@pytest.mark.security
def test_a_hostile_labels_file_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    from mlops_kit.monitor import _report

    endless = tmp_path / "labels.csv"
    endless.symlink_to("/dev/zero")  # a device never ends: refused before any read
    with pytest.raises(DataError, match="must be a regular file. Got a device, pipe or folder instead"):
        monitor.read_labels(endless, "label")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match="must be a readable parquet table. Got an error instead"):
        monitor.read_labels(garbage, "label")
    big = tmp_path / "big.csv"
    big.write_text("request_id,label\n" + "".join(f"r{i:03d},yes\n" for i in range(1000)))
    monkeypatch.setattr(_report, "MAX_LABELS_BYTES", 1000)
    with pytest.raises(DataError, match="must be at most 1000 bytes. Got 9017 bytes instead"):
        monitor.read_labels(big, "label")
    monkeypatch.setattr(_report, "MAX_LABELS_BYTES", 9017)  # exactly the limit: read
    assert len(monitor.read_labels(big, "label")) == 1000


def test_the_default_model_is_the_one_deployed_locally_else_the_champion(_isolated_runs):
    from mlops_kit import _paths

    with pytest.raises(MlopsKitError, match="RUN_ID must be given when no model is deployed locally and none is "
                                            "promoted. Got neither instead"):
        monitor.deployed_run()
    (_isolated_runs / "champion.json").write_text(
        '{"run": "20261201-000000-cccc", "who": "me", "when": "2026-12-01T00:00:00Z", "why": "", "history": []}')
    assert monitor.deployed_run() == "20261201-000000-cccc"
    (_isolated_runs / _paths.LOCAL_DEPLOY_STATE).write_text('{"run_id": "20261202-000000-dddd"}')
    assert monitor.deployed_run() == "20261202-000000-dddd"


@pytest.mark.slow
def test_mlops_kit_monitor_refuses_a_log_of_another_model_in_one_message(model_run, folder, tmp_path):
    runs, model = model_run
    write_log(folder, make_customers(20, seed=16), tmp_path / "other", sha256="a" * 64)
    done = mlops_kit("monitor", model.name, "--log", str(tmp_path / "other"), "--json", runs=runs)
    assert done.returncode == 1 and not done.stdout and "Traceback" not in done.stderr
    assert "Stage 'monitor' failed" in done.stderr and f"Got a request to model {'a' * 64} instead" in done.stderr


def test_a_regression_models_live_metrics_and_gate(regression_model_dir):
    """Numeric predictions binned like a numeric feature; labels scored as rmse/mae/r2."""
    from conftest import make_mixed_frame

    folder = regression_model_dir
    schema = artifacts.SCHEMA.load(folder)
    card = artifacts.MODEL_CARD.load(folder)
    frame = make_mixed_frame(400, task="regression", seed=17)
    X, _ = train.features_and_target(frame, schema.model_dump())
    live = frame[schema.feature_names].assign(request_id=[f"r{i}" for i in range(len(frame))], row=0,
                                              time="2026-12-01T00:00:00Z", model_sha256=card.sha256,
                                              prediction=model_io.load_model(folder).predict(X))
    labels = pd.DataFrame({"request_id": live["request_id"], "row": 0, "label": frame["label"]})
    result = monitor.report(folder, live, labels=labels, gate={"rmse": 1e6})
    perf = result.performance
    assert set(perf.metrics) == {"rmse", "mae", "r2"} == set(perf.evaluation) and perf.labelled_rows == 400
    assert perf.passed and result.prediction is not None and result.verdict.status == "healthy"
    failing = monitor.report(folder, live, labels=labels.assign(label=labels["label"] + 1000), gate={"rmse": 50})
    assert failing.verdict.status == "performance" and "rmse" in failing.verdict.gate_failures[0]
