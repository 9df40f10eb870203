"""What the kit does to stay cheap on large tables (benchmarks/scale.py measures the cost;
these check that each saving changes nothing the user sees): the test rows preprocessed
once in 03_evaluate, ordinal codes capped only where a column has more levels, the
summary's distinct counts taken from planning, the pre-flight checks that read the table
answered by a process of their own, jsonschema's IRI grammar left out of the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from mlops_kit import data, evaluate, train
from mlops_kit.errors import DataError, ParameterError


def _table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Numbers, a few-level category, a many-level one (above the ordinal cap), a date, a
    yes/no column; an imbalanced label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "x": rng.normal(size=n), "y": rng.normal(size=n),
        "few": rng.choice(["a", "b", "c", None], n),
        "many": [f"z{v}" for v in rng.integers(0, 300, n)],
        "day": pd.date_range("2024-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
        "member": rng.choice(["yes", "no"], n),
    })
    frame["label"] = np.where(frame["x"] + rng.normal(0, 0.5, n) > 1.2, "churn", "stay")
    return frame


def _fitted(model: str, frame: pd.DataFrame | None = None):
    frame = _table() if frame is None else frame
    checked = data.validate_dataset(data.Dataset(frame, "table.csv", "label"))
    schema = data.infer_schema(checked, "label")
    train_rows, test_rows = data.split_dataset(checked, "label", test_size=0.25, seed=0)
    result = train.train_model(train_rows, schema, model=model, params={}, seed=0)
    X, y = train.features_and_target(test_rows, schema)
    return result.model, X, y, train.features_and_target(train_rows, schema)[0]


@pytest.mark.parametrize("model", ["logistic_regression", "hist_gradient_boosting", "random_forest"])
def test_evaluate_predicts_from_one_transform_what_the_pipeline_predicts(model):
    pipeline, X, y, _ = _fitted(model)
    predicted, proba = evaluate.predict(pipeline, X, "classification")
    np.testing.assert_array_equal(predicted, pipeline.predict(X))
    np.testing.assert_allclose(proba, pipeline.predict_proba(X), rtol=0, atol=1e-12)
    once = evaluate.compute_metrics(pipeline, X, y, "classification", predictions=(predicted, proba))
    assert once == evaluate.compute_metrics(pipeline, X, y, "classification")
    assert {"balanced_accuracy", "pr_auc", "roc_auc"} <= set(once)


def test_evaluate_predicts_a_regression_without_probabilities():
    frame = _table()
    frame["label"] = frame["x"] * 3 + 1
    pipeline, X, y, _ = _fitted("ridge", frame)
    predicted, proba = evaluate.predict(pipeline, X, "regression")
    assert proba is None
    np.testing.assert_allclose(predicted, pipeline.predict(X))


def test_the_evaluation_plot_takes_its_sample_from_the_predictions_made(tmp_path):
    pipeline, X, y, _ = _fitted("logistic_regression")
    predicted, proba = evaluate.predict(pipeline, X, "classification")
    calls = []

    class Counting:  # the pipeline, counting the rows it is asked to predict
        classes_ = pipeline.classes_

        def predict(self, rows):
            calls.append(len(rows))
            return pipeline.predict(rows)

        def predict_proba(self, rows):
            calls.append(len(rows))
            return pipeline.predict_proba(rows)

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    paths = evaluate.plot_evaluation(Counting(), X, y, "classification", artifacts, sample=50, seed=0,
                                     predictions=(predicted, proba))
    assert calls == [] and paths[0].is_file()
    evaluate.plot_evaluation(Counting(), X, y, "classification", artifacts, sample=50, seed=0)
    assert calls == [50, 50]  # without them: the sample alone is predicted


def test_ordinal_codes_are_capped_only_where_a_column_has_more_levels():
    pipeline, X, _, X_train = _fitted("hist_gradient_boosting")
    preprocess = pipeline[0]
    encoders = {name: (encoder.max_categories, list(columns))
                for name, encoder, columns in preprocess.transformers_ if name.startswith("categorical")}
    assert encoders == {"categorical": (None, ["few"]), "categorical_capped": (250, ["many"])}
    # the trees are told which outputs are categories: exactly the encoded columns
    names = preprocess.get_feature_names_out()
    assert list(names[pipeline[-1].categorical_features]) == ["few", "many"]
    # the codes are those one capped encoder over both columns gives
    from sklearn.preprocessing import OrdinalEncoder

    single = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
                            max_categories=250).fit(X_train[["few", "many"]])
    np.testing.assert_array_equal(preprocess.transform(X)[:, :2], single.transform(X[["few", "many"]]))


def test_the_summary_counts_distinct_values_as_the_columns_hold_them():
    frame = _table()
    frame["code"] = np.arange(len(frame)) % 37 * 1.5  # numeric, not converted
    checked = data.validate_dataset(data.Dataset(frame, "table.csv", "label"))
    summary = data.summarize(checked, "label")
    for name in checked.frame.columns:
        row = summary.loc[name + (" (target)" if name == "label" else "")]
        assert int(row["distinct"]) == checked.frame[name].nunique(), name


def test_a_table_check_runs_in_its_own_process_and_answers_in_order(tmp_path):
    from mlops_kit._kernels import CallProcess

    path = tmp_path / "one_class.csv"
    _table().assign(label="stay").to_csv(path, index=False)
    good = tmp_path / "good.csv"
    _table().to_csv(good, index=False)
    calls = [("mlops_kit.data:check_before_run", {"source": str(good), "target": "label", "task": None,
                                                  "test_size": 0.2, "min_rows": 20}),
             ("mlops_kit.data:check_before_run", {"source": str(path), "target": "label", "task": None,
                                                  "test_size": 0.2, "min_rows": 20})]
    process = CallProcess(calls)
    first, second = process.replies()
    process.close()
    assert first == {"result": "classification"}
    assert second["error"]["type"] == "DataError" and "single class" in second["error"]["message"]


def test_the_first_problem_of_the_checks_is_raised_whichever_process_answered(tmp_path, monkeypatch):
    """The table's check (its own process) comes before the hyperparameters' (the zygote)."""
    from mlops_kit import runner, stages

    path = tmp_path / "one_class.csv"
    _table().assign(label="stay").to_csv(path, index=False)
    checks = [("mlops_kit.data:check_before_run", {"source": str(path), "target": "label", "task": None,
                                                   "test_size": 0.2, "min_rows": 20}),
              ("mlops_kit.train:check_train_params", {"model": "logistic_regression", "task": None,
                                                      "params": {"C": -1.0}})]
    pool = runner.KernelPool([stages.BY_NAME["data"]], cwd=REPO / "notebooks")
    pool.start(checks)
    try:
        with pytest.raises(DataError, match="single class"):
            pool.check()
    finally:
        pool.stop_all()
    pool = runner.KernelPool([stages.BY_NAME["data"]], cwd=REPO / "notebooks")
    pool.start(checks[1:])
    try:
        with pytest.raises(ParameterError, match="train.params"):
            pool.check()
    finally:
        pool.stop_all()


def test_the_cli_leaves_out_the_iri_grammar_and_notebooks_still_validate():
    code = """
import sys
from mlops_kit import runner
runner.skip_iri_grammar()
import nbformat, papermill
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
nbformat.validate(nb)
print(sys.modules.get("rfc3987_syntax", "absent"))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("None", "absent")
    assert "skip_iri_grammar()" in (REPO / "mlops_kit" / "cli" / "run.py").read_text()
