"""The model server for real: ``python -m mlops_kit.serving`` processes on free ports, over HTTP."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from _serving_process import ServerProcess
from mlops_kit.model_io import load_model
from mlops_kit.train import features_and_target

MODEL_NAME = "logistic_regression"


@pytest.fixture(scope="module")
def servers(model_dir, mixed_model_dir, regression_model_dir):
    """Four servers started at once: the default model, the mixed model (tolerant and
    strict with small limits) and a regression forest."""
    started = {
        "default": ServerProcess(model_dir),
        "mixed": ServerProcess(mixed_model_dir),
        "strict": ServerProcess(mixed_model_dir, "--unknown-categories", "reject", "--max-rows", "5",
                                "--max-body-bytes", "2048"),
        "regression": ServerProcess(regression_model_dir),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield {name: server.url for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=30) as http:
        yield http


def plain(value):
    """A frame value as JSON has it: NaN -> null, numpy scalars -> Python."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def in_process(folder):
    """The test split, the records the server gets, and what the model says in-process."""
    schema = json.loads((folder / "schema.json").read_text())
    model = load_model(folder)
    X, _ = features_and_target(pd.read_parquet(folder / "test.parquet"), schema)
    records = [{k: plain(v) for k, v in row.items()} for row in X.to_dict(orient="records")]
    proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    return records, model.predict(X).tolist(), proba


def post(client, url, body, **kw):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(url, content=content, headers={"content-type": "application/json"}, **kw)


# -- predictions equal in-process predictions ---------------------------------------------

@pytest.mark.parametrize("name,fixture", [("default", "model_dir"), ("mixed", "mixed_model_dir"),
                                         ("regression", "regression_model_dir")])
def test_predictions_over_http_equal_in_process(servers, client, request, name, fixture):
    records, expected, proba = in_process(request.getfixturevalue(fixture))
    assert any(v is None for r in records for v in r.values()) or name == "default"

    by_records = post(client, f"{servers[name]}/predict", records)
    assert by_records.status_code == 200, by_records.text
    assert by_records.json()["predictions"] == expected

    columns = {k: [r[k] for r in records] for k in records[0]}
    by_columns = post(client, f"{servers[name]}/predict", columns)
    assert by_columns.json()["predictions"] == expected

    one_by_one = [post(client, f"{servers[name]}/predict", [r]).json()["predictions"][0] for r in records[:20]]
    assert one_by_one == expected[:20]

    if proba is not None:
        answer = by_records.json()
        assert answer["classes"] == load_model(request.getfixturevalue(fixture)).classes_.tolist()
        assert np.array_equal(np.array(answer["probabilities"]), proba)
    else:
        assert "probabilities" not in by_records.json()


@pytest.mark.parametrize("name,fixture", [("mixed", "mixed_model_dir"), ("regression", "regression_model_dir")])
def test_v2_infer_equals_in_process(servers, client, request, name, fixture):
    records, expected, proba = in_process(request.getfixturevalue(fixture))
    model_name = client.get(f"{servers[name]}/v2/models/{'random_forest' if name == 'regression' else MODEL_NAME}")
    assert model_name.status_code == 200
    meta = model_name.json()
    inputs = [{"name": i["name"], "datatype": i["datatype"], "shape": [len(records)],
               "data": [r[i["name"]] for r in records]} for i in meta["inputs"]]
    answer = post(client, f"{servers[name]}/v2/models/{meta['name']}/infer", {"id": "r1", "inputs": inputs})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "r1" and body["model_name"] == meta["name"]
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"]["data"] == expected and outputs["predict"]["shape"] == [len(records)]
    if proba is not None:
        assert outputs["predict_proba"]["shape"] == list(proba.shape)
        assert np.array_equal(np.array(outputs["predict_proba"]["data"]).reshape(proba.shape), proba)
        only = post(client, f"{servers[name]}/v2/models/{meta['name']}/infer",
                    {"inputs": inputs, "outputs": [{"name": "predict"}]}).json()
        assert [o["name"] for o in only["outputs"]] == ["predict"]


def test_unseen_category_is_tolerated_or_rejected_per_setting(servers, client, mixed_model_dir):
    record = {"age": 40.0, "income": 50_000.0, "city": "berlin", "plan": "pro"}
    tolerant = post(client, f"{servers['mixed']}/predict", [record])
    assert tolerant.status_code == 200
    # tolerated: encoded as none of the known cities, as the pipeline's one-hot encoder does in-process
    frame = pd.DataFrame([record])
    frame["label"] = "yes"
    X, _ = features_and_target(frame, json.loads((mixed_model_dir / "schema.json").read_text()))
    assert tolerant.json()["predictions"] == load_model(mixed_model_dir).predict(X).tolist()

    strict = post(client, f"{servers['strict']}/predict", [record])
    assert strict.status_code == 422
    assert strict.json()["detail"] == {"field": "city", "row": 0, "got": '"berlin"',
                                       "expected": strict.json()["detail"]["expected"]}
    assert "must be one of the categories seen in training" in strict.json()["error"]
    assert '"paris"' in strict.json()["error"]


# -- the other endpoints ------------------------------------------------------------------

def test_health_and_metadata(servers, client):
    url = servers["mixed"]
    assert client.get(f"{url}/v2/health/live").json() == {"live": True}
    assert client.get(f"{url}/v2/health/ready").json() == {"ready": True}
    assert client.get(f"{url}/v2/models/{MODEL_NAME}/ready").json() == {"name": MODEL_NAME, "ready": True}
    assert client.get(f"{url}/v2").json()["name"] == "mlops-kit"
    meta = client.get(f"{url}/v2/models/{MODEL_NAME}").json()
    assert meta["name"] == MODEL_NAME and meta["platform"] == "scikit-learn"
    assert meta["inputs"] == [{"name": "age", "datatype": "FP64", "shape": [-1]},
                              {"name": "income", "datatype": "FP64", "shape": [-1]},
                              {"name": "city", "datatype": "BYTES", "shape": [-1]},
                              {"name": "plan", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][1] == {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}
    assert meta["parameters"]["classes"] == ["no", "yes"]
    missing = client.get(f"{url}/v2/models/other")
    assert missing.status_code == 404
    assert missing.json()["error"] == ("The model name must be 'logistic_regression' (the model this server "
                                       "serves). Got 'other' instead.")
    assert client.post(f"{url}/v2/models/other/infer", content=b"{}").status_code == 404


def test_openapi_and_docs(servers, client):
    document = client.get(f"{servers['mixed']}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/predict", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/infer",
            "/metrics"} <= set(document["paths"])
    record = document["components"]["schemas"]["Record"]
    assert record["required"] == ["age", "income", "city", "plan"]
    assert record["properties"]["age"]["type"] == ["number", "null"]
    assert record["properties"]["city"]["type"] == ["string"]
    docs = client.get(f"{servers['mixed']}/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in docs.text and "plan" in docs.text
    assert client.get(f"{servers['mixed']}/", follow_redirects=False).headers["location"] == "/docs"


def test_metrics(servers, client):
    url = servers["regression"]
    post(client, f"{url}/predict", {"age": [1.0, 2.0, 3.0], "income": [1.0, 2.0, 3.0],
                                    "city": ["paris"] * 3, "plan": [None] * 3})
    post(client, f"{url}/predict", b"{oops")
    text = client.get(f"{url}/metrics").text
    assert 'mlops_kit_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert 'mlops_kit_requests_total{endpoint="/predict",method="POST",status="400"} 1.0' in text
    assert 'mlops_kit_request_duration_seconds_bucket{endpoint="/predict",le="0.05"}' in text
    rows = [line for line in text.splitlines() if line.startswith("mlops_kit_rows_predicted_total ")]
    assert rows and float(rows[0].split()[1]) >= 3
    assert 'mlops_kit_model_info{' in text and 'estimator="RandomForestRegressor"' in text
    assert "mlops_kit_ready 1.0" in text


# -- bad input: always a 4xx that says what is wrong ---------------------------------------

GOOD = {"age": 40.0, "income": 50_000.0, "city": "paris", "plan": None}
BAD_INPUTS = [
    # (server, body, status, field, row, words in the message)
    ("mixed", b"{not json", 400, None, None, "The body must be JSON. Got invalid JSON"),
    ("mixed", b"", 400, None, None, "must be JSON"),
    ("mixed", b"[1.0, NaN]", 400, None, None, "must be JSON"),
    ("mixed", b'"text"', 422, None, None, "must be a list of records"),
    ("mixed", b"[]", 422, None, None, "must have at least one row. Got 0 rows"),
    ("mixed", {"age": [], "income": [], "city": [], "plan": []}, 422, None, None, "at least one row"),
    ("mixed", [GOOD, 5], 422, None, 1, "Row 1 must be an object of feature values. Got 5 instead."),
    ("mixed", [GOOD, {k: v for k, v in GOOD.items() if k != "income"}], 422, "income", 1,
     "Row 1 must have feature 'income'. Got no value for it instead."),
    ("mixed", [{**GOOD, "incme": 3}], 422, "incme", 0, "unknown feature 'incme' instead (did you mean 'income'?)"),
    ("mixed", [GOOD, GOOD, {**GOOD, "age": "40"}], 422, "age", 2,
     "Row 2: feature 'age' must be a number or null. Got \"40\" instead."),
    ("mixed", [{**GOOD, "age": True}], 422, "age", 0, "must be a number or null. Got true instead."),
    ("mixed", [{**GOOD, "age": [1]}], 422, "age", 0, "Got [1] instead."),
    ("mixed", [{**GOOD, "city": None}], 422, "city", 0, "feature 'city' must be a string. Got null instead."),
    ("mixed", [{**GOOD, "city": 3}], 422, "city", 0, "must be a string. Got 3 instead."),
    ("mixed", {"age": [1.0], "income": 2.0, "city": ["paris"], "plan": [None]}, 422, "income", None,
     "Column 'income' must be a list of values. Got 2.0 instead."),
    ("mixed", {"age": [1.0, 2.0], "income": [2.0], "city": ["paris"] * 2, "plan": [None] * 2}, 422, "income", None,
     "Column 'income' must have 2 values, like column 'age'. Got 1 instead."),
    ("mixed", {"age": [1.0], "income": [2.0], "city": ["paris"]}, 422, "plan", None, "must have feature 'plan'"),
    ("mixed", {"age": [1.0, None], "income": [2.0, 3.0], "city": ["paris", None], "plan": [None, None]},
     422, "city", 1, "Row 1: feature 'city' must be a string. Got null instead."),
    ("strict", [GOOD] * 6, 413, None, None, "The batch must have at most 5 rows. Got 6 instead."),
    ("strict", [{**GOOD, "plan": "gold"}], 422, "plan", 0, "Got \"gold\" instead."),
    ("strict", b"[" + b" " * 3000 + b"]", 413, None, None, "The body must be at most 2048 bytes. Got 3002 bytes instead."),
]


@pytest.mark.parametrize("server,body,status,field,row,words", BAD_INPUTS,
                         ids=[f"{i}-{b[4]}" for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_4xx_that_says_what_is_wrong(servers, client, server, body, status, field, row, words):
    answer = post(client, f"{servers[server]}/predict", body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert words in error["error"]
    assert " must " in error["error"] and " Got " in error["error"] and "instead" in error["error"]
    assert error["detail"]["field"] == field and error["detail"]["row"] == row


def test_body_over_the_limit_without_content_length_is_413(servers, client):
    def chunks():  # chunked transfer: the server counts as it reads
        for _ in range(10):
            yield b" " * 512

    answer = client.post(f"{servers['strict']}/predict", content=chunks())
    assert answer.status_code == 413
    assert "at most 2048 bytes. Got at least" in answer.json()["error"]
    assert client.get(f"{servers['strict']}/v2/health/ready").status_code == 200


V2_INPUTS = [{"name": "age", "datatype": "FP64", "shape": [1], "data": [40.0]},
             {"name": "income", "datatype": "FP64", "shape": [1], "data": [1.0]},
             {"name": "city", "datatype": "BYTES", "shape": [1], "data": ["lyon"]},
             {"name": "plan", "datatype": "BYTES", "shape": [1], "data": ["pro"]}]


@pytest.mark.parametrize("body,field,words", [
    ({}, "inputs", "\"inputs\" must be a non-empty list of tensors. Got null instead."),
    ([1], None, "must be an inference request object"),
    ({"inputs": [*V2_INPUTS[:3], 7]}, "inputs[3]", "inputs[3] must be a tensor object. Got 7 instead."),
    ({"inputs": [*V2_INPUTS[:3], {**V2_INPUTS[3], "shape": [2]}]}, "inputs[3].shape", "must be [1] or [1, 1]"),
    ({"inputs": [*V2_INPUTS[:3], {**V2_INPUTS[3], "data": "pro"}]}, "inputs[3].data", "must be a flat list"),
    ({"inputs": [*V2_INPUTS, V2_INPUTS[0]]}, "inputs[4].name", "must be unique. Got 'age' twice instead."),
    ({"inputs": V2_INPUTS[:3]}, "plan", "must have feature 'plan'"),
    ({"inputs": V2_INPUTS, "outputs": [{"name": "nope"}]}, "outputs", "\"outputs\" must be a list of"),
])
def test_bad_v2_inference_requests(servers, client, body, field, words):
    answer = post(client, f"{servers['mixed']}/v2/models/{MODEL_NAME}/infer", body)
    assert answer.status_code == 422, answer.text
    assert words in answer.json()["error"] and answer.json()["detail"]["field"] == field


def test_wrong_method_and_path_are_4xx_json(servers, client):
    url = servers["mixed"]
    wrong_method = client.get(f"{url}/predict")
    assert wrong_method.status_code == 405 and "Got GET instead" in wrong_method.json()["error"]
    wrong_path = client.get(f"{url}/nope")
    assert wrong_path.status_code == 404 and "Got /nope instead" in wrong_path.json()["error"]


# -- fuzz: random bodies never give a 5xx --------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
           | st.sampled_from(["paris", "pro", "basic", "lyon", ""]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
feature_names = st.sampled_from(["age", "income", "city", "plan", "other"])
near_records = st.lists(st.dictionaries(feature_names, scalars, min_size=3, max_size=5), min_size=0, max_size=4)
near_columns = st.dictionaries(feature_names, st.lists(scalars, max_size=3) | scalars, min_size=3, max_size=5)
near_v2 = st.fixed_dictionaries({"inputs": st.lists(st.fixed_dictionaries({
    "name": feature_names, "datatype": st.sampled_from(["FP64", "BYTES", "INT64"]),
    "shape": st.lists(st.integers(-1, 3), max_size=2), "data": st.lists(scalars, max_size=3) | scalars}),
    max_size=5)}, optional={"outputs": json_values, "id": json_values})


def dumps(value) -> bytes:  # the standard library's json: integers beyond 64 bits too
    return json.dumps(value).encode()


bodies = (st.binary(max_size=64) | json_values.map(dumps) | near_records.map(dumps)
          | near_columns.map(dumps) | near_v2.map(dumps))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, server=st.sampled_from(["mixed", "strict", "default", "regression"]),
       path=st.sampled_from(["/predict", f"/v2/models/{MODEL_NAME}/infer", "/v2/models/random_forest/infer"]))
def test_fuzz_random_bodies_never_5xx(servers, client, body, server, path):
    answer = client.post(f"{servers[server]}{path}", content=body)
    assert answer.status_code < 500, (body, answer.text)
    if answer.status_code >= 400:
        assert answer.json()["error"]


def test_servers_still_serve_after_all_that(servers, client):
    for url in servers.values():
        assert client.get(f"{url}/v2/health/ready").status_code == 200
        text = client.get(f"{url}/metrics").text
        assert 'status="500"' not in text


finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
valid_mixed_records = st.lists(st.fixed_dictionaries({
    "age": st.none() | finite, "income": st.none() | finite,
    "city": st.sampled_from(["paris", "lyon", "nantes", "lille"]),
    "plan": st.none() | st.sampled_from(["basic", "pro"])}), min_size=1, max_size=5)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=valid_mixed_records, server=st.sampled_from(["mixed", "regression"]))
def test_fuzz_valid_records_are_always_predicted(servers, client, records, server):
    """Any value the schema allows, however extreme, is predicted (200), never a 5xx."""
    answer = post(client, f"{servers[server]}/predict", records)
    assert answer.status_code == 200, (records, answer.text)
    assert len(answer.json()["predictions"]) == len(records)
