"""The request parser's fast paths (typed decoding of records, the numeric features checked as
one matrix) against the value-by-value checks: the same batch for every valid body, the same
error for every invalid one. No server: the parser is pure."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mlops_kit.errors import InvalidRequest
from mlops_kit.serving._validation import RequestSchema

SCHEMA = {"features": [
    {"name": "count", "kind": "numeric", "nullable": True, "integer": True},
    {"name": "mean radius", "kind": "numeric", "nullable": False},
    {"name": "code", "kind": "categorical", "nullable": True, "categories": [1, 2, "x"]},
    {"name": "member", "kind": "boolean", "nullable": False},
    {"name": "signup", "kind": "datetime", "nullable": True},
    {"name": "score", "kind": "numeric", "nullable": True},
]}
NAMES = [f["name"] for f in SCHEMA["features"]]
#: every feature numeric: the rows are decoded straight into the matrix
NUMERIC_SCHEMA = {"features": [f for f in SCHEMA["features"] if f["kind"] == "numeric"]}


def value_by_value(schema: RequestSchema, payload) -> list:
    """The reference: each record checked, then each feature's values converted one by one."""
    if type(payload) is dict:  # (made of well-formed records: every column a list, all of one length)
        schema._check_rows(len(payload[schema.names[0]]))
        return [f.convert(payload[f.name]) for f in schema.features]
    schema._check_rows(len(payload))
    for row, record in enumerate(payload):
        if type(record) is not dict or record.keys() != schema.name_set:
            return schema.parse_records(payload)  # raises the row's mistake
    return [f.convert([record[f.name] for record in payload]) for f in schema.features]


def outcome(call):
    try:
        return "ok", call()
    except InvalidRequest as exc:
        return "error", (exc.status, str(exc), exc.body()["detail"])


def same_columns(got, want) -> bool:
    return len(got) == len(want) and all(
        a.dtype == b.dtype and a.shape == b.shape and (
            np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f"
            else [x if x == x else "NaN" for x in a.tolist()] == [x if x == x else "NaN" for x in b.tolist()])
        for a, b in zip(got, want))


values = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 63 - 1),
                   st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["x", "2024-05-31", "3", ""]),
                   st.just([1]))
good = {"count": st.none() | st.integers(-1000, 1000) | st.just(2.0), "mean radius": st.floats(-1e6, 1e6) | st.integers(),
        "code": st.sampled_from([1, 2, "x", "1", None, "unseen", 2.0]), "member": st.booleans(),
        "signup": st.none() | st.just("2024-05-31T12:00:00"), "score": st.none() | st.floats(allow_nan=False,
                                                                                               allow_infinity=False)}
records = st.lists(st.fixed_dictionaries({name: good[name] | (values if i % 2 else good[name])
                                          for i, name in enumerate(NAMES)}), min_size=0, max_size=6)
mutated = records.flatmap(lambda rows: st.sampled_from([rows, rows[:1] + [{**r, "extra": 1} for r in rows[1:]],
                                                        [{k: v for k, v in r.items() if k != "score"} for r in rows],
                                                        rows + [5]]))


@pytest.mark.parametrize("policy, spec", [("tolerate", SCHEMA), ("reject", SCHEMA), ("tolerate", NUMERIC_SCHEMA)],
                         ids=["mixed-tolerate", "mixed-reject", "numeric"])
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=mutated, as_columns=st.booleans())
def test_fast_paths_agree_with_value_by_value_checks(policy, spec, payload, as_columns):
    schema = RequestSchema(spec, max_rows=5, unknown_categories=policy)
    names = list(schema.names)
    payload = [{k: v for k, v in r.items() if k in names or k == "extra"} if type(r) is dict else r for r in payload]
    if as_columns and all(type(r) is dict and r.keys() == schema.name_set for r in payload):
        payload = {name: [r[name] for r in payload] for name in names}
    body = json.dumps(payload).encode()  # the standard library's JSON: integers beyond 64 bits too
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    fast, slow = outcome(lambda: schema.parse_body(body)), outcome(lambda: value_by_value(schema, parsed))
    assert fast[0] == slow[0], (fast, slow)
    if fast[0] == "error":
        assert fast[1] == slow[1]
        return
    batch = fast[1]
    slow_columns = slow[1] if isinstance(slow[1], list) else slow[1].columns
    assert same_columns(batch.columns, slow_columns), (batch.columns, slow_columns)
    assert batch.rows == len(slow_columns[0])
    if batch.numeric is not None:  # the matrix the numeric columns are views of
        for j, i in enumerate(schema.numeric_positions):
            assert np.shares_memory(batch.columns[i], batch.numeric) and np.array_equal(
                batch.numeric[:, j], batch.columns[i], equal_nan=True)


@pytest.mark.parametrize("record, words", [
    ({**dict.fromkeys(NAMES, None), "mean radius": 1.0, "member": True, "count": 2.5}, "Row 1: feature 'count' must be an integer"),
    ({**dict.fromkeys(NAMES, None), "mean radius": None, "member": True}, "feature 'mean radius' must be a number. Got null"),
    ({**dict.fromkeys(NAMES, None), "mean radius": True, "member": True}, "feature 'mean radius' must be a number. Got true"),
    ({**dict.fromkeys(NAMES, None), "mean radius": "1.5", "member": True}, "feature 'mean radius' must be a number. Got \"1.5\""),
])
def test_a_value_the_typed_decoder_refuses_is_named(record, words):
    """What the fast path refuses falls back to the value-by-value checks, which name it."""
    schema = RequestSchema(SCHEMA, max_rows=5)
    good_record = {**dict.fromkeys(NAMES, None), "mean radius": 1.0, "member": False}
    with pytest.raises(InvalidRequest) as caught:
        schema.parse_body(orjson.dumps([good_record, record]))
    assert words in str(caught.value) and caught.value.body()["detail"]["row"] == 1
