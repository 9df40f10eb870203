"""The pipeline compiled to ONNX (04_package): converted and verified on the whole test split
for each registry estimator, or the reason it is not; served by onnxruntime with the answers
of the skops path; refused when tampered with; importable without scikit-learn."""

from __future__ import annotations

import json
import os
import shutil
import socket
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


# --- hostile ONNX files ----------------------------------------------------------------------

def _external(name: str, size: int, location: str = ".env", *, entries: bool = True):
    """A tensor whose ``size`` bytes are read from ``location`` (relative: the process's directory)."""
    from onnx import TensorProto

    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[size])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))) if entries else ():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _reader_model(where: str, size: int = 15) -> bytes:
    """A model whose output is ``x + w``, with ``w`` read from ``.env`` and kept ``where``."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [size])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [size])
    add = helper.make_node("Add", ["x", "w"], ["y"])
    nodes, initializers, sparse, functions = [add], [], [], []
    if where in ("initializer", "flag only"):
        initializers.append(_external("w", size, entries=where == "initializer"))
    elif where == "constant attribute":
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=_external("w", size)))
    elif where == "sparse initializer":
        values = _external("w", size)
        indices = helper.make_tensor("w_indices", TensorProto.INT64, [size], list(range(size)))
        sparse.append(helper.make_sparse_tensor(values, indices, [size]))
    elif where == "subgraph":
        branch = helper.make_graph([helper.make_node("Identity", ["inner"], ["w_branch"])], "then", [],
                                   [helper.make_tensor_value_info("w_branch", TensorProto.UINT8, [size])],
                                   [_external("inner", size)])
        cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
        plain = helper.make_graph([helper.make_node("Identity", ["zeros"], ["w_branch"])], "else", [],
                                  [helper.make_tensor_value_info("w_branch", TensorProto.UINT8, [size])],
                                  [helper.make_tensor("zeros", TensorProto.UINT8, [size], [0] * size)])
        nodes.insert(0, helper.make_node("If", ["cond"], ["w"], then_branch=branch, else_branch=plain))
        initializers.append(cond)
    elif where == "function":
        body = helper.make_node("Constant", [], ["out"], value=_external("w", size))
        functions.append(helper.make_function("evil", "reader", [], ["out"], [body],
                                              [helper.make_opsetid("", 19)]))
        nodes.insert(0, helper.make_node("reader", [], ["w"], domain="evil"))
    graph = helper.make_graph(nodes, "g", [x], [y], initializers, sparse_initializer=sparse)
    opsets = [helper.make_opsetid("", 19)] + ([helper.make_opsetid("evil", 1)] if functions else [])
    return helper.make_model(graph, opset_imports=opsets, functions=functions).SerializeToString()


PLACES = ["initializer", "flag only", "constant attribute", "sparse initializer", "subgraph", "function"]


@pytest.mark.security
@pytest.mark.parametrize("where", PLACES)
def test_a_model_with_a_tensor_in_another_file_is_refused_before_onnxruntime_reads_it(tmp_path, monkeypatch,
                                                                                       where):
    """onnxruntime resolves external data against the process's directory when the session is
    made from bytes: a model beside a ``.env`` (the server's working directory) served the
    file as its answer. Any tensor outside the file, wherever it sits, is refused first."""
    from mlops_kit.serving._onnx import open_session
    from mlops_kit.serving._onnx_graph import external_tensors

    (tmp_path / ".env").write_text("SECRET=hunter2\n")
    monkeypatch.chdir(tmp_path)
    model = _reader_model(where)
    (tmp_path / "model.onnx").write_bytes(model)
    assert len(external_tensors(model)) == 1
    with pytest.raises(ArtifactError, match="must hold every tensor itself.*another file"):
        open_session(model, source=tmp_path / "model.onnx")


@pytest.mark.security
def test_the_kit_models_have_no_external_data_and_junk_is_no_model(compiled):
    from mlops_kit.serving._onnx import open_session
    from mlops_kit.serving._onnx_graph import external_tensors

    for folder in compiled.values():
        assert external_tensors((folder / artifacts.ONNX_MODEL.name).read_bytes()) == []
    with pytest.raises(ArtifactError, match="must be an ONNX model"):
        open_session(b"\xff" * 64)


def _with_probabilities_changed(folder, tensor) -> None:
    """Rewrite the folder's model.onnx so its probabilities output is ``probabilities + tensor``
    (the labels are computed before), and onnx.json's sha256 to match: a crafted model."""
    import onnx
    from onnx import helper

    path = folder / artifacts.ONNX_MODEL.name
    model = onnx.load_from_string(path.read_bytes())
    output = model.graph.output[1].name
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == output:
                node.output[i] = output + "_raw"
    model.graph.initializer.append(tensor)
    model.graph.node.append(helper.make_node("Add", [output + "_raw", tensor.name], [output]))
    path.write_bytes(model.SerializeToString())
    report_path = folder / artifacts.ONNX_REPORT.name
    report = json.loads(report_path.read_text())
    report["sha256"] = artifacts._atomic.sha256_file(path)
    report_path.write_text(json.dumps(report))


@pytest.mark.security
def test_a_served_model_that_reads_a_file_into_its_probabilities_is_refused(compiled, tmp_path, monkeypatch):
    from onnx import TensorProto

    from mlops_kit.serving import create_app

    folder = tmp_path / "model"
    shutil.copytree(compiled["mixed"], folder)
    (folder / ".env").write_bytes(b"SECRET=hunter2\n\0")   # two float64s
    monkeypatch.chdir(folder)
    tensor = _external("stolen", 2, location=".env")
    tensor.data_type, tensor.external_data[2].value = TensorProto.DOUBLE, "16"
    _with_probabilities_changed(folder, tensor)
    with pytest.raises(ArtifactError, match="another file"):
        create_app(folder, runtime="onnx")


@pytest.mark.security
def test_probabilities_other_than_recorded_fail_the_warm_up_though_the_labels_match(compiled, tmp_path):
    from onnx import numpy_helper

    from mlops_kit.serving import create_app

    folder = tmp_path / "model"
    shutil.copytree(compiled["mixed"], folder)
    assert json.loads((folder / "examples.json").read_text())["probabilities"]
    _with_probabilities_changed(folder, numpy_helper.from_array(np.array([0.01, -0.01]), "shift"))
    with pytest.raises(ArtifactError, match="warm-up probabilities for example 0 must be"):
        create_app(folder, runtime="onnx")


@pytest.mark.security
def test_the_skops_model_warm_up_compares_probabilities_too(mixed_model_dir, tmp_path):
    from mlops_kit.serving import create_app

    folder = tmp_path / "model"
    shutil.copytree(mixed_model_dir, folder)
    path = folder / "examples.json"
    examples = json.loads(path.read_text())
    examples["probabilities"][2][0] += 1e-3
    path.write_text(json.dumps(examples))
    with pytest.raises(ArtifactError, match="warm-up probabilities for example 2 must be"):
        create_app(folder, runtime="skops")
    for change, message in ((lambda rows: rows[:-1], "must have the shape recorded at training"),
                            (lambda rows: [rows[0][:1], *rows[1:]], "one row of numbers per record")):
        path.write_text(json.dumps({**examples, "probabilities": change(examples["probabilities"])}))
        with pytest.raises(ArtifactError, match=message):
            create_app(folder, runtime="skops")


def _run_of(tmp_path, source, run_id="r-onnx"):
    """A run folder (run.json with the train stage's record) whose artifacts/ is ``source``, compiled."""
    run = tmp_path / run_id
    shutil.copytree(source, run / "artifacts")
    card = json.loads((run / "artifacts" / "model_card.json").read_text())
    (run / "run.json").write_text(json.dumps({"id": run_id, "status": "succeeded", "stages": {
        "train": {"status": "succeeded", "outputs": {"model.skops": card["sha256"]}}}}))
    assert compile_model(run / "artifacts").passed
    return run


@pytest.mark.security
def test_a_swapped_onnx_model_is_not_served_from_its_run(mixed_model_dir, tmp_path):
    """onnx.json and the card sit beside the model: whoever swaps model.onnx edits them too.
    The run's record (run.json, written at package time) holds the sha256 the file must have,
    as it holds model.skops's: a swapped model with its onnx.json edited, and model.skops
    overwritten so that nothing falls back to it, is refused."""
    import onnx

    from mlops_kit.serving import create_app

    run = _run_of(tmp_path, mixed_model_dir)
    folder = run / "artifacts"
    record = json.loads((run / "run.json").read_text())
    onnx_file = folder / artifacts.ONNX_MODEL.name
    assert record["stages"]["package"]["onnx"] == {"file": "model.onnx",
                                                   "sha256": artifacts._atomic.sha256_file(onnx_file)}
    assert create_app(folder).state.service.predictor.path == "onnx"
    # the swap: a model that answers the examples alike (a trigger would hide elsewhere)
    swapped = onnx.load_from_string(onnx_file.read_bytes())
    swapped.doc_string = "not the model the run compiled"
    onnx_file.write_bytes(swapped.SerializeToString())
    report = json.loads((folder / "onnx.json").read_text())
    report["sha256"] = artifacts._atomic.sha256_file(onnx_file)
    (folder / "onnx.json").write_text(json.dumps(report))
    (folder / "model.skops").write_bytes(b"junk")
    for runtime in ("auto", "onnx"):
        with pytest.raises(ArtifactError, match=r"not the model its run compiled: sha256 must be .*run\.json"):
            create_app(folder, runtime=runtime)
    # outside a run (an image's /app/model) onnx.json is the record
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    assert create_app(plain, runtime="onnx").state.service.predictor.path == "onnx"


@pytest.mark.security
def test_a_run_that_records_no_onnx_model_serves_skops_or_refuses_onnx(mixed_model_dir, tmp_path):
    from mlops_kit.serving import create_app

    run = _run_of(tmp_path, mixed_model_dir)
    record = json.loads((run / "run.json").read_text())
    del record["stages"]["package"]
    (run / "run.json").write_text(json.dumps(record))
    assert create_app(run / "artifacts").state.service.predictor.path == "numpy"
    with pytest.raises(ArtifactError, match="run.json records no compiled model"):
        create_app(run / "artifacts", runtime="onnx")


@pytest.mark.security
def test_a_model_that_takes_too_much_memory_at_warm_up_is_refused(compiled, tmp_path):
    """A ConstantOfShape of 2 x 10^8 doubles (1.6 GB) added, as a zero, to the probabilities:
    with max_model_memory 1 GiB the server refuses the model at its warm-up, in one line."""
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "model"
    shutil.copytree(compiled["mixed"], folder)
    path = folder / artifacts.ONNX_MODEL.name
    model = onnx.load_from_string(path.read_bytes())
    output = model.graph.output[1].name
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == output:
                node.output[i] = output + "_raw"
    model.graph.initializer.append(helper.make_tensor("big_shape", TensorProto.INT64, [1], [2 * 10 ** 8]))
    model.graph.node.extend([
        helper.make_node("ConstantOfShape", ["big_shape"], ["big"],
                         value=helper.make_tensor("zero", TensorProto.DOUBLE, [1], [0.0])),
        helper.make_node("ReduceMax", ["big"], ["big_zero"], keepdims=0),
        helper.make_node("Add", [output + "_raw", "big_zero"], [output])])
    path.write_bytes(model.SerializeToString())
    report = json.loads((folder / artifacts.ONNX_REPORT.name).read_text())
    report["sha256"] = artifacts._atomic.sha256_file(path)
    (folder / artifacts.ONNX_REPORT.name).write_text(json.dumps(report))
    with socket.socket() as taken:   # a port the server could not open: it must stop before
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        command = [sys.executable, "-m", "mlops_kit.serving", "--model-dir", str(folder), "--runtime", "onnx",
                   "--port", str(taken.getsockname()[1])]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "MLOPS_KIT_MAX_MODEL_MEMORY": str(1024 ** 3)})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "must take at most 1073741824 bytes of memory (max_model_memory)" in done.stderr
    assert "Traceback" not in done.stderr
