"""The real server under fuzzed requests: random JSON bodies (deep nesting, huge numbers,
wrong types, odd shapes) never get a 5xx, and a client's mistake never logs a traceback."""

from __future__ import annotations

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from _serving_process import ServerProcess

pytestmark = pytest.mark.security

FEATURES = ("age", "income", "city", "plan")


@pytest.fixture(scope="module")
def server(mixed_model_dir):
    process = ServerProcess(mixed_model_dir, "--max-rows", "50")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def model_name(server):
    return "logistic_regression"  # the model the mixed fixture trains (its name on /v2/models/{name})


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=60) as http:
        yield http


def scalars():
    return st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1),
                     st.floats(allow_nan=False), st.text(max_size=20), st.sampled_from(["paris", "basic", "", "NaN"]),
                     st.just(1e308), st.just(-1e308))


def json_values(max_leaves: int = 20):
    return st.recursive(scalars(), lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.sampled_from(FEATURES), st.text(max_size=8)),
                                                     inner, max_size=5)), max_leaves=max_leaves)


def records():
    return st.lists(st.fixed_dictionaries({name: scalars() for name in FEATURES}), min_size=0, max_size=60)


def columns():
    return st.integers(0, 60).flatmap(lambda n: st.fixed_dictionaries(
        {name: st.lists(scalars(), min_size=n, max_size=n) for name in FEATURES}))


def v2_bodies():
    tensor = st.fixed_dictionaries({"name": st.one_of(st.sampled_from(FEATURES), json_values(3)),
                                    "datatype": st.sampled_from(["FP64", "BYTES", "INT64", "X"]),
                                    "shape": json_values(3), "data": st.one_of(st.lists(scalars(), max_size=6),
                                                                               json_values(5))})
    return st.fixed_dictionaries({"inputs": st.one_of(st.lists(tensor, max_size=5), json_values(5))},
                                 optional={"outputs": json_values(4), "id": json_values(2)})


def deep(depth: int, kind: str):
    value: object = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"age": value}
    return value


def assert_client_error(answer: httpx.Response) -> None:
    """Refused as the client's mistake: a 4xx (never a 200, never a 5xx) with a short JSON error."""
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:500])
    body = answer.json()
    assert isinstance(body["error"], str) and len(body["error"]) < 2000


def assert_answered_or_refused(answer: httpx.Response, key: str) -> None:
    """A fuzzed body may happen to be valid: then a 200 with ``key``; else a client error."""
    if answer.status_code == 200:
        assert isinstance(answer.json()[key], list), answer.text[:500]
    else:
        assert_client_error(answer)


def assert_quiet_log(server: ServerProcess) -> None:
    """No traceback in what the server logged so far (read without blocking)."""
    import os
    import select

    stream = server.process.stderr
    text = ""
    while select.select([stream], [], [], 0)[0]:
        chunk = os.read(stream.fileno(), 65536).decode(errors="replace")
        if not chunk:
            break
        text += chunk
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(records(), columns(), json_values()))
def test_predict_never_answers_5xx(server, client, body):
    assert_answered_or_refused(client.post(f"{server.url}/predict", content=orjson.dumps(body),
                                           headers={"content-type": "application/json"}), "predictions")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(v2_bodies(), json_values()))
def test_v2_infer_never_answers_5xx(server, client, model_name, body):
    url = f"{server.url}/v2/models/{model_name}/infer"
    assert_answered_or_refused(client.post(url, content=orjson.dumps(body), headers={"content-type": "application/json"}),
                               "outputs")


@pytest.mark.parametrize("depth", [100, 300, 970, 1024, 5000])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deep_nesting_is_a_client_error_without_a_traceback(server, client, model_name, depth, kind):
    text = orjson.dumps(deep(min(depth, 250), kind)).decode()
    opening, closing = ("[", "]") if kind == "list" else ('{"age":', "}")
    body = (opening * (depth - 250) + text + closing * (depth - 250)).encode() if depth > 250 else text.encode()
    for url in (f"{server.url}/predict", f"{server.url}/v2/models/{model_name}/infer"):
        assert_client_error(client.post(url, content=body, headers={"content-type": "application/json"}))
    records = b'[{"age":' + body + b',"income":1,"city":"paris","plan":"basic"}]'
    assert_client_error(client.post(f"{server.url}/predict", content=records,
                                    headers={"content-type": "application/json"}))
    assert_quiet_log(server)


@pytest.mark.parametrize("number", [b"1e400", b"-1e400"])
def test_numbers_beyond_a_float_are_a_client_error(server, client, number):
    body = b'[{"age":' + number + b',"income":1,"city":"paris","plan":"basic"}]'
    assert_client_error(client.post(f"{server.url}/predict", content=body, headers={"content-type": "application/json"}))
    assert_quiet_log(server)


@pytest.mark.parametrize("number", [b"123456789012345678901234567890", b"1e308", b"-1e308"])
def test_huge_finite_numbers_are_answered(server, client, number):
    body = b'[{"age":' + number + b',"income":1,"city":"paris","plan":"basic"}]'
    answer = client.post(f"{server.url}/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1, answer.text[:500]
    assert_quiet_log(server)


def test_the_fuzzed_server_logged_no_traceback(server, client):
    assert client.get(f"{server.url}/v2/health/ready").status_code == 200
    assert_quiet_log(server)
