"""What the kit does to stay cheap on large tables (benchmarks/scale.py measures the cost;
these check that each saving changes nothing the user sees): the test rows preprocessed
once in 03_evaluate, ordinal codes capped only where a column has more levels, the
summary's distinct counts taken from planning, the pre-flight checks that read the table
answered by a process of their own, jsonschema's IRI grammar left out of the CLI; text columns
dictionary-encoded in one pass, the two splits written at once, yes/no categories mapped by their codes,
the kernels started before the data file is hashed, each output of a run hashed once; the
training rows predicted for the monitoring profile from the matrix the fit was given, the
classes of the target plot counted before they are made text."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
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
    from mlops_kit.execution._kernels import CallProcess

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
    from mlops_kit import stages
    from mlops_kit.execution.local import KernelPool

    path = tmp_path / "one_class.csv"
    _table().assign(label="stay").to_csv(path, index=False)
    checks = [("mlops_kit.data:check_before_run", {"source": str(path), "target": "label", "task": None,
                                                   "test_size": 0.2, "min_rows": 20}),
              ("mlops_kit.train:check_train_params", {"model": "logistic_regression", "task": None,
                                                      "params": {"C": -1.0}})]
    pool = KernelPool([stages.BY_NAME["data"]], cwd=REPO / "notebooks")
    pool.start(checks)
    try:
        with pytest.raises(DataError, match="single class"):
            pool.check()
    finally:
        pool.stop_all()
    pool = KernelPool([stages.BY_NAME["data"]], cwd=REPO / "notebooks")
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


# --- reading, writing, hashing (benchmarks/scale.py: the data stage and the time outside the stages)

def _messy_csv(path, rows: int = 60_000):
    """More than one CSV block (1 MB): a column whose type changes after the first block, text
    with few and with many levels, missing values, a date."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "late": rng.integers(0, 9, rows).astype(object), "x": rng.normal(size=rows),
        "few": rng.choice(["a", "b", None], rows), "many": [f"w{v}" for v in range(rows)],
        "day": pd.date_range("2020-01-01", periods=rows, freq="h").strftime("%Y-%m-%d"),
        "label": rng.integers(0, 2, rows)})
    frame.loc[rows - 1, "late"] = "text at the end"
    frame.to_csv(path, index=False)
    assert path.stat().st_size > 2 << 20
    return path


def test_text_columns_encoded_in_one_pass_are_those_counted_then_encoded(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    path = _messy_csv(tmp_path / "messy.csv")
    monkeypatch.setattr(data, "MAX_DICTIONARY_LEVELS", 1_000)  # "many" stays text
    table = data.read_table(path)
    expected = csv.read_csv(path, convert_options=csv.ConvertOptions(strings_can_be_null=True,
                                                                     quoted_strings_can_be_null=True))
    for index, column in enumerate(expected.columns):  # the levels counted first, as before
        if pa.types.is_string(column.type) and pc.count_distinct(column).as_py() <= 1_000:
            expected = expected.set_column(index, expected.field(index).name, pc.dictionary_encode(column))
    assert table.schema == expected.schema
    assert table.schema.field("late").type.value_type == pa.string()  # typed by every block, not the first
    assert pa.types.is_dictionary(table.schema.field("few").type) and table.schema.field("many").type == pa.string()
    assert table.equals(expected)
    frame = data._read_file(path)
    assert sorted(frame["few"].cat.categories) == ["a", "b"]
    assert not isinstance(frame["many"].dtype, pd.CategoricalDtype)


def test_the_splits_written_at_once_are_those_written_one_by_one(tmp_path):
    checked = data.validate_dataset(data.Dataset(_table(), "table.csv", "label"))
    schema = data.infer_schema(checked, "label")
    train_rows, test_rows = data.split_dataset(checked, "label", test_size=0.25, seed=0)
    paths = data.save_splits(train_rows, test_rows, schema, tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["train"]), train_rows)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["test"]), test_rows)
    _, _, loaded = data.load_splits(tmp_path)
    assert loaded["fingerprint"] == data.fingerprint_frame(train_rows, test_rows)
    assert sorted(p.name for p in paths["train"].parent.iterdir()) == ["schema.json", "test.parquet", "train.parquet"]


def test_a_split_that_cannot_be_written_fails_the_save_and_leaves_no_schema(tmp_path):
    checked = data.validate_dataset(data.Dataset(_table(), "table.csv", "label"))
    schema = data.infer_schema(checked, "label")
    train_rows, test_rows = data.split_dataset(checked, "label", test_size=0.25, seed=0)
    test_rows = test_rows.assign(bad=[object()] * len(test_rows))  # parquet cannot store it
    with pytest.raises(pa.ArrowInvalid, match="Conversion failed for column bad"):
        data.save_splits(train_rows, test_rows, schema, tmp_path)
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert "schema.json" not in names and "test.parquet" not in names
    assert not [n for n in names if n.endswith(".tmp.parquet")]  # no half-written file left


def test_yes_no_categories_become_the_same_booleans_by_their_codes():
    values = ["yes", "no", None, "Yes", "no", "N"]
    as_category = pd.Series(values, dtype="category", name="m", index=range(10, 16))
    expected = pd.Series([1.0, 0.0, np.nan, 1.0, 0.0, 0.0], name="m", index=range(10, 16))
    pd.testing.assert_series_equal(data._as_boolean(as_category), expected)
    pd.testing.assert_series_equal(data._as_boolean(pd.Series(values, name="m", index=range(10, 16))), expected)


def test_the_first_stage_surely_runs_until_an_earlier_run_agrees_on_all_but_the_data_file(tmp_path):
    from mlops_kit import cache, ledger, stages
    from mlops_kit.params import load_params

    path = tmp_path / "table.csv"
    _table().to_csv(path, index=False)
    params = load_params(None, [f"data.source={path}", "data.target=label"]).params
    stage = stages.BY_NAME["data"]
    assert cache.surely_runs(stage, params, {})  # no earlier run
    run = ledger.create_run({"params": {}, "stages": {}})
    run.update_stage("data", status="succeeded", fingerprint=cache.fingerprint(stage, params, {}))
    run.update(status="succeeded")
    run.release()
    assert not cache.surely_runs(stage, params, {})  # only the file's hash can tell
    assert cache.surely_runs(stage, params, {}, use_cache=False)
    changed = load_params(None, [f"data.source={path}", "data.target=label", "data.test_size=0.3"]).params
    assert cache.surely_runs(stage, changed, {})  # runs whatever the file holds


def test_the_kernels_start_before_the_data_file_is_hashed(tmp_path, monkeypatch):
    """A large table takes seconds to hash; the zygote and the table's check start first."""
    from mlops_kit import _atomic, cache, runner
    from mlops_kit.params import load_params

    path = tmp_path / "table.csv"
    _table().to_csv(path, index=False)
    events = []

    class Executor:  # stands in for the kernels; its checks find a mistake, so no run is made
        stages = []

        def start(self, plan):
            self.stages = list(plan.stages)
            events.append(("start", [s.name for s in plan.stages], sorted(c[0] for c in plan.checks)))

        def ready(self):
            raise ParameterError([])

        def stop(self):
            events.append(("stop",))

    hash_file = _atomic.sha256_file
    monkeypatch.setattr(cache._atomic, "sha256_file",
                        lambda p: events.append(("hash", str(p))) or hash_file(p))
    with pytest.raises(ParameterError):
        runner.run_pipeline(load_params(None, [f"data.source={path}", "data.target=label"]), executor=Executor())
    assert events == [("start", ["data", "train", "evaluate"],
                       ["mlops_kit.data:check_before_run", "mlops_kit.train:check_train_params"]),
                      ("hash", str(path)), ("stop",)]
    assert not list(runner._paths.runs_dir().glob("*/run.json"))  # the mistake came before any run


def test_each_output_of_a_run_is_hashed_once(monkeypatch):
    """The next stage's fingerprint takes the hashes recorded for the outputs it reads."""
    from collections import Counter

    from mlops_kit import _atomic, runner
    from mlops_kit.params import load_params

    counted, hash_file = Counter(), _atomic.sha256_file
    monkeypatch.setattr(_atomic, "sha256_file", lambda p: counted.update([str(p)]) or hash_file(p))
    record = runner.run_pipeline(load_params(), use_cache=False)
    folder = runner._paths.runs_dir() / record["id"] / "artifacts"
    assert record["status"] == "succeeded"
    assert {name: counted[str(folder / name)] for name in ("train.parquet", "test.parquet", "schema.json",
                                                             "model.skops")} == dict.fromkeys(
        ("train.parquet", "test.parquet", "schema.json", "model.skops"), 1)
    # and the fingerprints name the same hashes as the outputs
    stages = record["stages"]
    assert stages["evaluate"]["fingerprint"]["inputs"]["train.parquet"] == stages["data"]["outputs"]["train.parquet"]
    assert stages["evaluate"]["fingerprint"]["inputs"]["model.skops"] == stages["train"]["outputs"]["model.skops"]


def test_the_zygote_started_before_planning_is_the_one_the_run_takes_or_is_stopped():
    from mlops_kit import stages
    from mlops_kit.execution import _kernels
    from mlops_kit.execution.local import KernelPool

    _kernels.prestart_zygote()
    prestarted = _kernels._PRESTARTED
    assert prestarted is not None and prestarted.alive
    pool = KernelPool([stages.BY_NAME["data"]], cwd=REPO / "notebooks")
    pool.start([])
    try:
        assert pool._zygote is prestarted and _kernels._PRESTARTED is None  # taken, not a second one
    finally:
        pool.stop_all()
    assert not prestarted.alive
    _kernels.prestart_zygote()  # a run where no stage runs: the CLI stops it
    prestarted = _kernels._PRESTARTED
    _kernels.discard_prestarted()
    assert not prestarted.alive and _kernels._PRESTARTED is None
    _kernels.discard_prestarted()  # nothing left to stop: a no-op


def test_a_run_that_fails_its_checks_leaves_no_zygote_behind():
    """The CLI starts the zygote before it reads the parameters; a mistake stops it."""
    code = """
import sys
from mlops_kit.execution import _kernels
from mlops_kit.cli import run_cli
started = []
prestart = _kernels.prestart_zygote
_kernels.prestart_zygote = lambda: (prestart(), started.append(_kernels._PRESTARTED))
sys.argv = ["mlops-kit", "run", "--set", "data.target=nope"]
try:
    run_cli()
except SystemExit as exc:
    # one zygote (run_cli starts it first; the run command's own call finds it started), stopped
    print("exit", exc.code, sorted({z.alive for z in started}), len({id(z) for z in started}), _kernels._PRESTARTED)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "exit 2 [False] 1 None" in result.stdout, result.stdout + result.stderr
    assert "data.target" in result.stderr and "Traceback" not in result.stderr


def test_only_a_large_table_is_checked_in_a_process_of_its_own(tmp_path):
    """A bundled data set or a small file is checked in the zygote, where pandas and
    scikit-learn are imported already; a process of its own would import them a third time."""
    from mlops_kit.execution.local import LARGE_TABLE_BYTES, reads_a_large_table

    def check(source):
        return ("mlops_kit.data:check_before_run", {"source": str(source), "target": "label"})

    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    small.write_text("a,label\n1,0\n")
    with open(large, "wb") as handle:  # sparse: no disk written
        handle.truncate(LARGE_TABLE_BYTES + 1)
    assert reads_a_large_table(check(large))
    assert not reads_a_large_table(check(small))
    assert not reads_a_large_table(check("sklearn:breast_cancer"))
    assert not reads_a_large_table(check(tmp_path / "missing.csv"))  # the check itself says it is missing


def _skops_state(model) -> dict:
    """The fitted model as skops writes it (its schema.json, each array file's bytes in place
    of its name, the objects' ids left out): equal states, equal models."""
    import io
    import json
    import zipfile

    import skops.io as sio

    archive = zipfile.ZipFile(io.BytesIO(sio.dumps(model)))

    def plain(node):
        if isinstance(node, dict):
            return {k: archive.read(v) if k == "file" else plain(v) for k, v in node.items() if k != "__id__"}
        return [plain(v) for v in node] if isinstance(node, list) else node

    return plain(json.loads(archive.read("schema.json")))


@pytest.mark.parametrize("model,class_weight", [("logistic_regression", None), ("logistic_regression", "balanced"),
                                                ("hist_gradient_boosting", None), ("random_forest", None)])
def test_the_training_rows_are_predicted_from_the_matrix_the_fit_was_given(model, class_weight):
    checked = data.validate_dataset(data.Dataset(_table(), "table.csv", "label"))
    schema = data.infer_schema(checked, "label")
    train_rows, _ = data.split_dataset(checked, "label", test_size=0.25, seed=0)
    result = train.train_model(train_rows, schema, model=model, params={}, seed=0, class_weight=class_weight)
    X, y = train.features_and_target(train_rows, schema)
    # the fitted pipeline is the one Pipeline.fit gives, and its predictions on the training
    # rows are those it makes from them: what the monitoring profile counts
    plain = train.build_pipeline(schema, train.make_estimator(model, "classification", {}, seed=0), seed=0)
    weights = train.sample_weights(y, class_weight)
    plain.fit(X, y, **({"model__sample_weight": weights} if weights is not None else {}))
    assert _skops_state(result.model) == _skops_state(plain)
    np.testing.assert_array_equal(result.train_predictions, plain.predict(X))


def test_target_encoded_training_rows_are_predicted_anew_for_the_profile(tmp_path):
    checked = data.validate_dataset(data.Dataset(_table(), "table.csv", "label"), high_cardinality="target_encode")
    schema = data.infer_schema(checked, "label")
    train_rows, _ = data.split_dataset(checked, "label", test_size=0.25, seed=0)
    result = train.train_model(train_rows, schema, model="logistic_regression", params={}, seed=0)
    X, y = train.features_and_target(train_rows, schema)
    # target encoding cross-fits: the matrix the fit is given is not what the fitted
    # pipeline makes of the same rows, so its predictions are not taken from it
    from sklearn.base import clone

    assert not np.allclose(clone(result.model[:-1]).fit_transform(X, y), result.model[:-1].transform(X))
    assert result.train_predictions is None
    profile = train.save_profile(result.model, train_rows, schema, tmp_path,
                                 predictions=result.train_predictions)
    from mlops_kit.monitor import build_profile

    expected = build_profile(train_rows, schema, predictions=result.model.predict(X))
    assert profile == expected


@pytest.mark.parametrize("labels", [
    pd.Series(np.random.default_rng(0).integers(0, 12, 500)),  # 10 sorts before 2 as text, as before
    pd.Series(["stay", "churn", "stay", None, "churn"], dtype=object),
    pd.Series([1, "1", 2.0, "b", True], dtype=object),  # 1 and "1" are one bar, as their text is
    pd.Series([1.5, np.nan, 1.5, 2.0]), pd.Series([True, False, True]),
    pd.Series(["b", "a", "b", None], dtype="category"), pd.Series(["b", "a", None], dtype="string")])
def test_the_classes_are_counted_by_their_text_as_each_row_made_text_counts_them(labels):
    expected = labels.astype(str).value_counts().sort_index()
    counted = data.class_counts(labels)
    assert counted.to_dict() == expected.to_dict() and list(counted.index) == list(expected.index)
