"""Column handling (01_data), imbalanced classes, the data checks before any stage, and the
model server on the new feature kinds: in-process for the decisions, the real CLI with real
kernels for the runs, a real server process for requests."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, make_mixed_frame, train_into
from mlops_kit import data, evaluate
from mlops_kit.errors import DataError, ParameterError

MLOPS_KIT = [sys.executable, "-m", "mlops_kit.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MLOPS_KIT, *args], capture_output=True, text=True, cwd=REPO, timeout=900)


def runs_in(runs_dir):
    return [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*/run.json"))]


def messy_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = make_mixed_frame(n, seed=seed)
    frame["order_id"] = np.arange(n) + 1000
    frame["ref"] = [f"R{i:06d}" for i in rng.permutation(n)]
    frame["signup"] = pd.date_range("2023-01-01", periods=n, freq="D").strftime("%Y-%m-%d")
    frame["vip"] = rng.choice(["yes", "no"], n)
    frame["flag"] = rng.random(n) < 0.5
    frame["zip"] = [f"z{v}" for v in rng.integers(0, 80, n)]
    return frame


def plans_of(frame, target="label", **options):
    checked = data.validate_dataset(data.Dataset(frame, "table.csv", target), **options)
    return {p.name: p for p in checked.plans}, checked


def test_each_column_kind_is_inferred_and_explained():
    plans, checked = plans_of(messy_frame())
    kinds = {name: plan.kind for name, plan in plans.items()}
    assert kinds == {"age": "numeric", "income": "numeric", "city": "categorical", "plan": "categorical",
                     "constant": "dropped", "empty": "dropped", "label": "target", "order_id": "dropped",
                     "ref": "dropped", "signup": "datetime", "vip": "boolean", "flag": "boolean",
                     "zip": "categorical"}
    assert plans["constant"].action == "constant" and plans["empty"].action == "all values missing"
    assert "ID-like" in plans["order_id"].action and "ID-like" in plans["ref"].action
    assert plans["zip"].encoding == "grouped" and "grouped" in plans["zip"].action
    assert checked.frame["vip"].isin([0.0, 1.0]).all() and checked.frame["flag"].dtype == np.float64
    assert pd.api.types.is_datetime64_any_dtype(checked.frame["signup"])
    summary = data.summarize(checked, "label")
    assert "ID-like" in summary.loc["order_id", "what the kit does"]
    assert summary.loc["constant", "what the kit does"] == "constant"
    assert set(summary.index) >= {"label (target)", "signup", "zip"}


def test_options_override_the_inference():
    plans, _ = plans_of(messy_frame(), dates="drop", high_cardinality="target_encode",
                        columns={"city": "drop", "order_id": "numeric"})
    assert plans["signup"].kind == "dropped" and "data.dates" in plans["signup"].action
    assert plans["zip"].encoding == "target"
    assert plans["city"].kind == "dropped" and "data.columns" in plans["city"].action
    assert plans["order_id"].kind == "numeric"


def test_free_text_is_refused_naming_the_column_and_the_options():
    frame = messy_frame()
    rng = np.random.default_rng(3)
    words = np.array(["late", "delivery", "great", "service", "never", "again", "box", "broken"])
    frame["comment"] = [" ".join(rng.choice(words, 7)) for _ in range(len(frame))]
    with pytest.raises(DataError) as caught:
        plans_of(frame)
    message = str(caught.value)
    assert "'comment'" in message and "free text" in message
    assert "data.columns.comment=drop" in message and "data.columns.comment=text" in message
    plans, _ = plans_of(frame, columns={"comment": "text"})
    assert plans["comment"].kind == "text"


def test_a_forced_kind_that_does_not_fit_names_the_column():
    with pytest.raises(DataError, match=r"'city'.*numeric.*data\.columns\.city"):
        plans_of(messy_frame(), columns={"city": "numeric"})
    with pytest.raises(DataError, match="data.columns names 'nowhere'"):
        plans_of(messy_frame(), columns={"nowhere": "drop"})


@pytest.mark.parametrize("frame, words", [
    (make_mixed_frame().assign(label=1), ["single class (1)"]),
    (make_mixed_frame().head(3), ["has 3 rows", "data.min_rows"]),
    (make_mixed_frame().assign(label=np.where(np.arange(300) == 0, "rare", "common")),
     ["'rare'", "single row"]),
])
def test_target_problems_have_plain_messages(frame, words):
    with pytest.raises(DataError) as caught:
        data.check_target(frame["label"], source="t.csv", target="label", task=None, test_size=0.2, min_rows=20)
    message = str(caught.value)
    for word in words:
        assert word in message
    assert "np." not in message and "int64" not in message


def test_rows_without_a_label_are_refused_or_dropped_and_counted():
    frame = make_mixed_frame().assign(label=lambda f: f["label"].where(f.index % 7 != 0))
    with pytest.raises(DataError, match="43 missing values") as caught:
        data.validate_dataset(data.Dataset(frame.copy(), "t.csv", "label"))
    assert caught.value.hint == ("set data.drop_missing_target: true to drop those 43 rows, or choose another "
                                 "data.target.")
    checked = data.validate_dataset(data.Dataset(frame.copy(), "t.csv", "label"), drop_missing_target=True)
    assert checked.rows == len(checked.frame) == 257 and checked.unlabeled_rows == 43
    assert checked.frame["label"].notna().all() and checked.frame.index.equals(pd.RangeIndex(257))
    assert "label: 43 rows without a label dropped (data.drop_missing_target)" in checked.warnings
    summary = data.summarize(checked, "label")
    assert "43 rows without one dropped" in summary.loc["label (target)", "what the kit does"]
    schema = data.infer_schema(checked, "label")
    assert schema["rows"] == 257 and schema["unlabeled_rows_dropped"] == 43
    complete = data.validate_dataset(data.Dataset(make_mixed_frame(), "t.csv", "label"), drop_missing_target=True)
    assert complete.unlabeled_rows == 0 and complete.rows == 300 and not any("label" in w for w in complete.warnings)


def test_a_test_size_that_empties_a_split_is_a_parameter_error():
    with pytest.raises(ParameterError, match=r"data.test_size.*0 training rows"):
        data.check_target(make_mixed_frame()["label"], source="t.csv", target="label", task=None,
                          test_size=0.99999, min_rows=20, origins={"data.test_size": "--set data.test_size=0.99999"})


def test_the_split_is_stratified_on_a_1_to_20_imbalance():
    from _datagen import make_table

    frame = make_table(20_000, seed=1)
    checked = data.validate_dataset(data.Dataset(frame, "gen", "label"))
    train, test = data.split_dataset(checked, "label", test_size=0.2, seed=0)
    share = frame["label"].mean()
    assert 0.04 < share < 0.055  # 1:20
    assert abs(train["label"].mean() - share) < 0.001 and abs(test["label"].mean() - share) < 0.001


def test_baseline_pr_auc_and_the_few_test_rows_warning():
    y_train = pd.Series([0] * 95 + [1] * 5)
    y_test = pd.Series([0] * 19 + [1] * 1)
    baseline = evaluate.baseline_metrics(y_train, y_test, "classification")
    assert baseline["balanced_accuracy"] == 0.5 and baseline["roc_auc"] == 0.5
    assert baseline["pr_auc"] == pytest.approx(0.05)
    warnings = evaluate.class_warnings(y_test, "classification")
    assert len(warnings) == 2 and "class '1' has only 1 test rows" in warnings[1]
    gate = evaluate.check_gate({"balanced_accuracy": 0.51, "pr_auc": 0.3}, {"pr_auc": 0.2}, "classification",
                               baseline=baseline, baseline_margin=0.02)
    assert not gate["passed"] and "does not beat the dummy baseline" in gate["checks"][0]["reason"]
    assert gate["checks"][1]["passed"]


def test_class_weight_balanced_raises_recall_of_the_rare_class():
    from _datagen import make_table
    from mlops_kit import train

    frame = make_table(6_000, seed=2)
    checked = data.validate_dataset(data.Dataset(frame, "gen", "label"))
    schema = data.infer_schema(checked, "label")
    train_rows, test_rows = data.split_dataset(checked, "label", test_size=0.25, seed=0)
    recall = {}
    for weight in (None, "balanced"):
        result = train.train_model(train_rows, schema, model="logistic_regression", params={}, seed=0,
                                   class_weight=weight)
        X, y = train.features_and_target(test_rows, schema)
        recall[weight] = evaluate.compute_metrics(result.model, X, y, "classification")["recall"]
    assert recall["balanced"] > recall[None]


# --- the real CLI -------------------------------------------------------------------------

def test_regression_csv_runs_with_data_source_and_target_alone(_isolated_runs, mixed_regression_csv):
    result = cli("run", "--set", f"data.source={mixed_regression_csv}", "--set", "data.target=label")
    assert result.returncode == 0, result.stderr
    (record,) = runs_in(_isolated_runs)
    assert record["status"] == "succeeded"
    metrics = json.loads((_isolated_runs / record["id"] / "artifacts" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["gate"]["passed"]
    (check,) = metrics["gate"]["checks"]  # the default gate: beat the dummy on the same split
    assert check["metric"] == "r2" and check["baseline"] == metrics["baseline"]["r2"]
    assert metrics["baseline"]["r2"] <= 0.01 < metrics["metrics"]["r2"]


@pytest.mark.parametrize("make, args, words, code", [
    (lambda f: f.assign(label="yes"), [], ["single class ('yes')"], 1),
    (lambda f: f.head(3), ["--set", "data.min_rows=2"], ["single row"], 1),
    (lambda f: f.head(8), [], ["has 8 rows", "data.min_rows"], 1),
    (lambda f: f, ["--set", "data.test_size=0.99999"], ["data.test_size", "0 training rows"], 2),
    (lambda f: f.assign(label=f["label"].where(f.index % 7 != 0)), [],
     ["'label'", "43 missing values", "set data.drop_missing_target: true to drop those 43 rows"], 1),
    (lambda f: f.assign(label=f["label"].where(f.index < 10)), ["--set", "data.drop_missing_target=true"],
     ["has 10 rows with a label (290 without one dropped", "data.min_rows"], 1),
    (lambda f: f, ["--set", "data.columns.nowhere=drop"], ["data.columns.nowhere", "no such column"], 2),
    (lambda f: f, ["--set", "train.params={n_estimator: 5}", "--set", "train.model=random_forest"],
     ["train.params.n_estimator", "RandomForestClassifier", "Did you mean 'n_estimators'?"], 2),
    (lambda f: f, ["--set", "train.params={C: 1.0}", "--set", "train.model=random_forest"],
     ["--set train.params={C: 1.0}: train.params.C", "RandomForestClassifier"], 2),
])
def test_data_and_hyperparameter_problems_stop_the_run_before_any_stage(_isolated_runs, tmp_path, make, args,
                                                                        words, code):
    path = tmp_path / "table.csv"
    make(make_mixed_frame()).to_csv(path, index=False)
    result = cli("run", "--set", f"data.source={path}", "--set", "data.target=label", *args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "np.int64" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert runs_in(_isolated_runs) == []  # nothing started


def comments(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(["slow", "fast", "kind", "rude", "late"], 6)) + f" #{i}" for i in range(n)]


@pytest.mark.parametrize("suffix, args, words", [
    (".parquet", [], ["'comment'", "free text", "data.columns.comment=drop"]),
    (".csv", ["--set", "data.columns.age=boolean"], ["'age'", "cannot be read as boolean",
                                                       "data.columns.age"]),
])
def test_a_column_01_data_refuses_stops_the_run_before_any_run_folder(_isolated_runs, tmp_path, suffix, args,
                                                                       words):
    frame = make_mixed_frame().assign(comment=comments(300))
    path = tmp_path / f"table{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    result = cli("run", "--set", f"data.source={path}", "--set", "data.target=label", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert [p.name for p in _isolated_runs.iterdir() if p.is_dir()] == []  # no run folder, no record


def test_the_check_before_a_run_plans_a_large_tables_columns_on_its_head(tmp_path):
    """Past CHECK_SAMPLE_ROWS, the columns are planned on the head of the file; a column
    refused there is read whole and planned again, so the refusal is 01_data's own."""
    rows = data.CHECK_SAMPLE_ROWS + 2_000
    frame = make_mixed_frame(rows, seed=3).assign(comment=comments(rows))
    path = tmp_path / "large.csv"
    frame.to_csv(path, index=False)
    options = dict(source=str(path), target="label", task=None, test_size=0.2, min_rows=20)
    with pytest.raises(DataError, match=f"'comment' .* looks like free text \\({rows} distinct values"):
        data.check_before_run(**options)
    assert data.check_before_run(**options, columns={"comment": "drop"}) == "classification"
    # free text in the head only: planned on all its levels (most of them one word), the whole
    # column is a category, which 01_data takes
    head, tail = data.CHECK_SAMPLE_ROWS, 12_000
    phrases = [f"p{i % 1_500} quite long" for i in range(head)]
    frame = make_mixed_frame(head + tail, seed=4).assign(note=phrases + [f"w{i}" for i in range(tail)])
    path = tmp_path / "head_only.parquet"
    frame.to_parquet(path)
    options["source"] = str(path)
    assert data.check_before_run(**options) == "classification"
    with pytest.raises(DataError, match="'note' .* looks like free text"):  # what the head alone says
        data.validate_dataset(data.Dataset(frame.head(head), str(path), "label"))
    checked = data.validate_dataset(data.load_dataset(str(path), "label"))  # what 01_data does
    assert {p.name: p.kind for p in checked.plans}["note"] == "categorical"


def test_rows_without_a_label_dropped_when_asked_and_a_column_left_unread(_isolated_runs, tmp_path):
    path = tmp_path / "unlabeled.csv"
    frame = make_mixed_frame().assign(comment=comments(300))
    frame.assign(label=frame["label"].where(frame.index % 7 != 0)).to_csv(path, index=False)
    result = cli("run", "--set", f"data.source={path}", "--set", "data.target=label", "--set", "train.cv_folds=0",
                 "--set", "data.drop_missing_target=true", "--set", "data.columns.comment=drop",
                 "--set", "stages=[data]")
    assert result.returncode == 0, result.stderr
    (record,) = runs_in(_isolated_runs)
    folder = _isolated_runs / record["id"]
    schema = json.loads((folder / "artifacts" / "schema.json").read_text())
    assert schema["rows"] == 257 and schema["unlabeled_rows_dropped"] == 43
    assert {"name": "comment", "reason": "dropped by data.columns (not read)"} in schema["dropped"]
    report = (folder / "reports" / "01_data.html").read_text()
    assert "label: 43 rows without a label dropped (data.drop_missing_target)" in report and "257 rows" in report


def test_a_messy_csv_runs_and_the_summary_says_what_was_done(_isolated_runs, tmp_path):
    path = tmp_path / "messy.csv"
    messy_frame(600).to_csv(path, index=False)
    result = cli("run", "--set", f"data.source={path}", "--set", "data.target=label",
                 "--set", "data.high_cardinality=target_encode", "--set", "data.max_categories=20",
                 "--set", "train.cv_folds=0", "--set", "train.class_weight=balanced")
    assert result.returncode == 0, result.stderr
    (record,) = runs_in(_isolated_runs)
    folder = _isolated_runs / record["id"]
    schema = json.loads((folder / "artifacts" / "schema.json").read_text())
    kinds = {f["name"]: f["kind"] for f in schema["features"]}
    assert kinds["signup"] == "datetime" and kinds["vip"] == "boolean" and kinds["flag"] == "boolean"
    assert {f["name"]: f.get("encoding") for f in schema["features"]}["zip"] == "target"
    assert {d["name"] for d in schema["dropped"]} == {"constant", "empty", "order_id", "ref"}
    assert schema["rows"] == 600 and schema["plot_sample"] == 600
    report = (folder / "reports" / "01_data.html").read_text()
    assert "ID-like" in report and "calendar features" in report and "target-encoded" in report


# --- the model server on the new kinds ------------------------------------------------------

def test_the_server_validates_and_predicts_boolean_and_date_features(tmp_path):
    from _serving_process import ServerProcess

    path = tmp_path / "messy.csv"
    messy_frame(400).to_csv(path, index=False)
    folder = train_into(tmp_path / "model", str(path), "label")
    schema = json.loads((folder / "schema.json").read_text())
    kinds = {f["name"]: f["kind"] for f in schema["features"]}
    assert kinds["vip"] == "boolean" and kinds["signup"] == "datetime"
    examples = json.loads((folder / "examples.json").read_text())
    assert isinstance(examples["records"][0]["vip"], bool)
    assert isinstance(examples["records"][0]["signup"], str)
    server = ServerProcess(folder)
    try:
        server.wait_ready()
        with httpx.Client(timeout=30) as http:
            answer = http.post(f"{server.url}/predict", json=examples["records"])
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"] == examples["predictions"]
            record = dict(examples["records"][0], vip="yes")
            refused = http.post(f"{server.url}/predict", json=[record])
            assert refused.status_code == 422 and "vip" in refused.text and "true or false" in refused.text
            record = dict(examples["records"][0], signup="last tuesday")
            refused = http.post(f"{server.url}/predict", json=[record])
            assert refused.status_code == 422 and "signup" in refused.text and "ISO 8601" in refused.text
    finally:
        server.stop()


# --- scale -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_200k_row_generated_table_end_to_end_with_small_reports(_isolated_runs, tmp_path):
    from _datagen import write_table

    path = write_table(200_000, tmp_path / "big.csv", seed=0)
    result = cli("run", "--set", f"data.source={path}", "--set", "data.target=label", "--set", "train.cv_folds=0")
    assert result.returncode == 0, result.stderr
    (record,) = runs_in(_isolated_runs)
    folder = _isolated_runs / record["id"]
    schema = json.loads((folder / "artifacts" / "schema.json").read_text())
    assert schema["rows"] == 200_000 and schema["plot_sample"] == 20_000
    notes = {c["name"]: c for c in schema["columns"]}
    assert notes["customer_id"]["kind"] == "dropped" and notes["signup"]["kind"] == "datetime"
    assert notes["member"]["kind"] == "boolean" and "grouped" in notes["zip"]["action"]
    test_rows = pd.read_parquet(folder / "artifacts" / "test.parquet", columns=["label"])
    assert len(test_rows) == 40_000 and abs(test_rows["label"].mean() - 1 / 21) < 0.002
    for report in (folder / "reports").glob("*.html"):
        assert report.stat().st_size <= 2 * 1024 * 1024, report
    metrics = json.loads((folder / "artifacts" / "metrics.json").read_text())
    assert metrics["gate"]["passed"] and "pr_auc" in metrics["metrics"]
