"""The pipeline compiled to ONNX (04_package): converted and verified on the whole test split
for each registry estimator, or the reason it is not; served by onnxruntime with the answers
of the skops path; refused when tampered with; importable without scikit-learn."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx
import numpy as np
import orjson
import pytest
from _serving_process import ServerProcess
from conftest import REPO, train_into

from mlops_kit import artifacts
from mlops_kit.compile import ATOL, RTOL, compile_model
from mlops_kit.errors import ArtifactError

#: (data fixture, target, model, params, compiles): every registry estimator, both tasks
CASES = [
    ("sklearn:breast_cancer", "target", "logistic_regression", {}, True),
    ("sklearn:iris", "target", "logistic_regression", {}, True),           # multiclass
    ("mixed_csv", "label", "logistic_regression", {}, True),               # categoricals, missing values
    ("mixed_csv", "label", "linear", {}, True),
    ("mixed_csv", "label", "random_forest", {"n_estimators": 10}, True),
    ("mixed_csv", "label", "gradient_boosting", {"n_estimators": 20}, True),
    ("mixed_csv", "label", "hist_gradient_boosting", {"max_iter": 10}, False),  # native categorical splits
    ("sklearn:breast_cancer", "target", "hist_gradient_boosting", {"max_iter": 20}, True),  # float32 in the graph
    ("sklearn:iris", "target", "hist_gradient_boosting", {"max_iter": 20}, True),
    ("mixed_csv", "label", "dummy", {}, False),
    ("mixed_regression_csv", "label", "logistic_regression", {}, True),    # Ridge
    ("mixed_regression_csv", "label", "linear", {}, True),
    ("mixed_regression_csv", "label", "ridge", {}, True),
    ("mixed_regression_csv", "label", "random_forest", {"n_estimators": 10}, True),
    ("mixed_regression_csv", "label", "gradient_boosting", {"n_estimators": 20}, True),
    ("mixed_regression_csv", "label", "hist_gradient_boosting", {"max_iter": 10}, False),
    ("sklearn:diabetes", "target", "hist_gradient_boosting", {"max_iter": 20}, True),
    ("mixed_regression_csv", "label", "dummy", {}, False),
]


def _source(request, data):
    return data if data.startswith("sklearn:") else str(request.getfixturevalue(data))


@pytest.mark.parametrize("data,target,model,params,compiles", CASES,
                         ids=[f"{c[0].split(':')[-1]}-{c[2]}" for c in CASES])
def test_each_registry_estimator_compiles_and_is_verified_or_says_why(request, tmp_path, data, target, model,
                                                                      params, compiles):
    folder = train_into(tmp_path, _source(request, data), target, model=model, params=params)
    report = compile_model(folder)
    assert artifacts.read_document(folder / artifacts.ONNX_REPORT.name, artifacts.OnnxReport) == report
    onnx_file = folder / artifacts.ONNX_MODEL.name
    if compiles is not None:
        assert report.passed is compiles, report.reason
    if report.passed:
        check = report.check
        test_rows = len(__import__("pandas").read_parquet(folder / artifacts.TEST_SPLIT.name))
        assert check.rows == test_rows and check.edge_rows > 0
        assert check.predictions_equal and check.mismatched_predictions == 0
        assert check.max_abs_diff <= ATOL + RTOL * 1e3 and (check.atol, check.rtol) == (ATOL, RTOL)
        assert report.sha256 == artifacts._atomic.sha256_file(onnx_file) and report.bytes == onnx_file.stat().st_size
        assert report.model_sha256 == json.loads((folder / "model_card.json").read_text())["sha256"]
        assert report.reason is None and report.versions["onnxruntime"]
    else:
        assert report.reason and not onnx_file.exists()
        assert report.estimator in report.reason or "differs" in report.reason


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, mixed_model_dir, regression_model_dir):
    """Copies of the mixed classifier and the regression forest, compiled."""
    folders = {}
    for name, source in (("mixed", mixed_model_dir), ("regression", regression_model_dir)):
        folder = tmp_path_factory.mktemp(f"compiled-{name}") / "model"
        shutil.copytree(source, folder)
        assert compile_model(folder).passed
        folders[name] = folder
    return folders


def _records(folder):
    import pandas as pd

    from mlops_kit.train import features_and_target

    schema = json.loads((folder / "schema.json").read_text())
    X, _ = features_and_target(pd.read_parquet(folder / "test.parquet"), schema)
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v.item() if hasattr(v, "item") else v)
             for k, v in row.items()} for row in X.to_dict(orient="records")]


@pytest.mark.parametrize("name", ["mixed", "regression"])
def test_the_onnx_server_answers_what_the_skops_server_answers_for_the_test_split(compiled, name):
    folder = compiled[name]
    records = _records(folder)
    records += [{**records[0], "city": "atlantis"}, {**records[1], "plan": ""}]  # unseen, and the marker's text
    servers = [ServerProcess(folder, "--runtime", runtime) for runtime in ("onnx", "skops")]
    try:
        answers = []
        for server in servers:
            server.wait_ready()
            response = httpx.post(f"{server.url}/predict", content=orjson.dumps(records),
                                  headers={"content-type": "application/json"}, timeout=30)
            assert response.status_code == 200, response.text
            answers.append(response.json())
        onnx_answer, skops_answer = answers
        if name == "mixed":
            assert onnx_answer["predictions"] == skops_answer["predictions"]
            assert onnx_answer["classes"] == skops_answer["classes"]
            np.testing.assert_allclose(onnx_answer["probabilities"], skops_answer["probabilities"], atol=ATOL, rtol=RTOL)
        else:
            np.testing.assert_allclose(onnx_answer["predictions"], skops_answer["predictions"], atol=ATOL, rtol=RTOL)
        metadata = [httpx.get(f"{s.url}/metrics").text for s in servers]
        assert 'path="onnx"' in metadata[0] and 'path="numpy"' in metadata[1]
    finally:
        for server in servers:
            server.stop()


def test_a_tampered_onnx_file_is_refused_before_it_is_parsed(compiled, tmp_path):
    from mlops_kit.serving import create_app

    folder = tmp_path / "model"
    shutil.copytree(compiled["mixed"], folder)
    onnx_file = folder / artifacts.ONNX_MODEL.name
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="sha256 must be"):
        create_app(folder)
    # the command line says so in one line and exits 1
    done = subprocess.run([sys.executable, "-m", "mlops_kit.serving", "--model-dir", str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "does not match its record" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("numeric_input", [None, "age", "numeric_features_"])
def test_a_report_whose_inputs_differ_from_the_graph_is_refused(compiled, tmp_path, numeric_input):
    """onnx.json says how the graph is fed; a crafted one that disagrees is refused, not fed wrongly."""
    from mlops_kit.serving import create_app

    folder = tmp_path / "model"
    shutil.copytree(compiled["mixed"], folder)
    path = folder / artifacts.ONNX_REPORT.name
    report = json.loads(path.read_text())
    assert report["numeric_input"] == report["inputs"][0]  # the mixed model's two numbers, one input
    report["numeric_input"] = numeric_input
    path.write_text(json.dumps(report))
    with pytest.raises(ArtifactError, match="must take the inputs onnx.json records"):
        create_app(folder, runtime="onnx")


def test_a_stale_report_falls_back_to_skops_and_onnx_on_demand_is_refused(compiled, tmp_path):
    from mlops_kit.serving import create_app

    folder = tmp_path / "model"
    shutil.copytree(compiled["mixed"], folder)
    path = folder / artifacts.ONNX_REPORT.name
    report = json.loads(path.read_text())
    report["model_sha256"] = "0" * 64          # compiled from another model
    path.write_text(json.dumps(report))
    assert create_app(folder).state.service.predictor.path == "numpy"
    with pytest.raises(ArtifactError, match="compiled from model 000000000000"):
        create_app(folder, runtime="onnx")
    assert create_app(compiled["mixed"]).state.service.predictor.path == "onnx"


def test_the_onnx_path_imports_no_scikit_learn_scipy_or_pandas(compiled):
    """What the lean image relies on: with those modules made unimportable, the app loads the
    ONNX model, warms up and answers."""
    code = f"""
import sys
for name in ("sklearn", "scipy", "pandas", "skops", "joblib", "threadpoolctl"):
    sys.modules[name] = None
import orjson
from mlops_kit.serving.app import create_app
app = create_app({str(compiled['mixed'])!r})
service = app.state.service
assert service.predictor.path == "onnx", service.predictor.path
batch = service.schema.parse(orjson.loads({json.dumps(json.dumps(_records(compiled['mixed'])[:3]))}))
print(service.predictor.predict(batch)[0].tolist())
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("[")
