"""The parameter schema and loader: overlays, --set typing, and the errors users see."""

from __future__ import annotations

import textwrap

import pytest

from mlops_kit.errors import ParameterError
from mlops_kit.params import RunParams, load_params

from conftest import REPO


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(excinfo):
    return {p.key: p for p in excinfo.value.problems}


def test_default_file_is_valid_and_complete():
    loaded = load_params(REPO / "parameters" / "default.yaml")
    assert loaded.params.data.source == "sklearn:breast_cancer"
    assert loaded.params.stages == ["data", "train", "evaluate"]


def test_default_file_is_the_schemas_own_defaults():
    """One source of defaults: default.yaml states exactly what RunParams() holds, every key
    (a new schema key, or a changed default, fails here until default.yaml says the same)."""
    import yaml

    stated = yaml.safe_load((REPO / "parameters" / "default.yaml").read_text())
    assert stated == RunParams().model_dump(mode="json")
    assert load_params(REPO / "parameters" / "default.yaml").params == RunParams()


def test_default_names_no_hyperparameters_and_a_gate_for_any_task():
    params = RunParams()
    assert params.train.params == {}  # the registry's defaults for whichever model is chosen
    assert params.evaluate.gate == {} and params.evaluate.baseline_margin > 0


def test_registry_defaults_fit_each_task():
    from mlops_kit.train import ESTIMATORS, make_estimator

    for name, spec in ESTIMATORS.items():
        for task in ("classification", "regression"):
            if spec.path(task):
                make_estimator(name, task, {})  # no unknown default hyperparameter
    assert make_estimator("logistic_regression", "regression", {}).__class__.__name__ == "Ridge"
    assert make_estimator("logistic_regression", "classification", {}).max_iter == 1000


def test_baseline_metric_is_checked_against_the_task():
    with pytest.raises(ParameterError, match="evaluate.baseline_metric"):
        load_params(REPO / "parameters" / "default.yaml", ["evaluate.baseline_metric=rmse"])
    loaded = load_params(REPO / "parameters" / "default.yaml", ["evaluate.gate={pr_auc: 0.5}",
                                                                "evaluate.baseline_metric=roc_auc"])
    assert loaded.params.evaluate.baseline_metric == "roc_auc"


def test_column_kinds_are_typed():
    loaded = load_params(REPO / "parameters" / "default.yaml", ["data.columns.note=text", "data.columns.ref=drop"])
    assert loaded.params.data.columns == {"note": "text", "ref": "drop"}
    with pytest.raises(ParameterError, match="data.columns.note"):
        load_params(REPO / "parameters" / "default.yaml", ["data.columns.note=words"])


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "parameters").glob("*.yaml")))
def test_every_shipped_parameter_file_validates(name):
    assert isinstance(load_params(REPO / "parameters" / name).params, RunParams)


def test_overlay_extends_and_merges(tmp_path):
    write(tmp_path, "base.yaml", """
        seed: 1
        train: {model: random_forest, params: {n_estimators: 50, max_depth: 3}}
    """)
    overlay = write(tmp_path, "overlay.yaml", """
        extends: base.yaml
        train: {params: {n_estimators: 10}}
        data: {test_size: 0.3}
    """)
    loaded = load_params(overlay)
    assert loaded.params.seed == 1
    assert loaded.params.train.model == "random_forest"
    # train.params is replaced as a whole: an overlay's hyperparameters are the estimator's
    assert loaded.params.train.params == {"n_estimators": 10}
    assert loaded.params.data.test_size == 0.3
    assert [f.name for f in loaded.files] == ["base.yaml", "overlay.yaml"]
    assert loaded.source_of("seed").endswith("base.yaml")
    assert loaded.source_of("data.test_size").endswith("overlay.yaml")


def test_set_is_typed_by_the_schema(tmp_path):
    loaded = load_params(REPO / "parameters" / "default.yaml",
                         ["data.target=1", "data.test_size=0.25", "seed=7", "train.params.C=0.5",
                          "train.model=random_forest", "deploy.secret_env=[API_TOKEN]"])
    assert loaded.params.data.target == "1"  # a string field keeps the text, not papermill's guess
    assert loaded.params.data.test_size == 0.25
    assert loaded.params.seed == 7
    assert loaded.params.train.params["C"] == 0.5
    assert loaded.params.deploy.secret_env == ["API_TOKEN"]
    assert loaded.source_of("seed") == "--set seed=7"


def test_misspelt_key_in_a_file_names_file_key_and_suggestion(tmp_path):
    bad = write(tmp_path, "bad.yaml", """
        extends: %s
        data: {tset_size: 0.3}
    """ % (REPO / "parameters" / "default.yaml"))
    with pytest.raises(ParameterError) as excinfo:
        load_params(bad)
    problem = problems_of(excinfo)["data.tset_size"]
    assert problem.file == str(bad)
    assert problem.suggestion == "test_size"
    assert "Did you mean 'test_size'?" in str(excinfo.value)


def test_several_mistakes_are_reported_together(tmp_path):
    with pytest.raises(ParameterError) as excinfo:
        load_params(REPO / "parameters" / "default.yaml",
                    ["data.test_size=1.5", "train.model=random_forrest", "deploy.replicas=many"])
    found = problems_of(excinfo)
    assert set(found) == {"data.test_size", "train.model", "deploy.replicas"}
    assert found["train.model"].found.startswith("'random_forrest'")
    assert "did you mean 'random_forest'" in found["train.model"].found
    assert "less than 1" in found["data.test_size"].expected
    assert found["deploy.replicas"].file == "--set deploy.replicas=many"


@pytest.mark.parametrize("override, key, words", [
    ("evaluate.gate={rmse: 3}", "evaluate.gate.rmse", "metric of a classification task"),
    ("evaluate.gate={accuracy: 90}", "evaluate.gate.accuracy", "between 0 and 1"),
    ("data.source=sklearn:titanic", "data.source", "bundled scikit-learn data set"),
    ("data.source=data.xlsx", "data.source", ".csv"),
    ("data.source=missing.csv", "data.source", "an existing data file"),
    ("package.image=model:latest", "package.image", "without a tag"),
    ("deploy.namespace=My_Space", "deploy.namespace", "DNS label"),
    ("stages=[data, trian]", "stages.1", "'data', 'train'"),
    ("nonsense.key=1", "nonsense.key", "a known key"),
    ("data.test_size", "data.test_size", "section.key=value"),
])
def test_each_bad_value_is_explained(override, key, words):
    with pytest.raises(ParameterError) as excinfo:
        load_params(REPO / "parameters" / "default.yaml", [override])
    problem = problems_of(excinfo)[key]
    assert words in problem.expected + " " + problem.found


def test_broken_yaml_names_the_line(tmp_path):
    bad = write(tmp_path, "bad.yaml", "data:\n  source: [unclosed\n")
    with pytest.raises(ParameterError) as excinfo:
        load_params(bad)
    (problem,) = excinfo.value.problems
    assert problem.file == str(bad) and "line" in problem.key and problem.expected == "valid YAML"


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(ParameterError, match="no such file"):
        load_params(tmp_path / "nope.yaml")
    overlay = write(tmp_path, "o.yaml", "extends: base-that-is-not-there.yaml\n")
    with pytest.raises(ParameterError, match="an existing base file"):
        load_params(overlay)


def test_extends_cycle_is_refused(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ParameterError, match="without cycles"):
        load_params(tmp_path / "a.yaml")


def test_stage_parameters_are_flat_and_hold_no_other_sections():
    params = load_params(REPO / "parameters" / "default.yaml").params
    values = params.stage_parameters("train")
    assert values == {"model": "logistic_regression", "params": {}, "cv_folds": 5, "class_weight": None}
