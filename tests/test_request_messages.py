"""The request messages, in process and fast: every check of ``serving/_validation.py`` called
directly on crafted bodies (no model, no server), each refusal asserted by its whole message,
its status and its detail (field, row, expected, got), each accepted body by the exact columns
the model gets. The same checks over HTTP, against real servers, are in test_serving.py; this
module is what ``make mutate``'s request-validation target runs for each mutant (seconds).

Every body goes each way the server reads one: ``parse_body`` (the typed decoder, then the
value-by-value checks), ``parse`` of the records, of the columns, and ``parse_v2`` (the Open
Inference Protocol's tensors): all four must give the same batch, or the same error.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from mlops_kit.errors import InvalidRequest
from mlops_kit.serving._validation import Batch, Feature, RequestSchema, show

MIXED = {"features": [
    {"name": "count", "kind": "numeric", "nullable": True, "integer": True},
    {"name": "radius", "kind": "numeric"},
    {"name": "code", "kind": "categorical", "nullable": True, "categories": [1, 2.5, "x"]},
    {"name": "member", "kind": "boolean"},
    {"name": "signup", "kind": "datetime", "nullable": True},
    {"name": "note", "kind": "text"},
    {"name": "city", "kind": "categorical", "categories": ["paris", "rome"]},
    {"name": "free", "kind": "categorical", "nullable": True, "categories": None},
]}
NAMES = [f["name"] for f in MIXED["features"]]
GOOD = {"count": 3, "radius": 1.5, "code": "x", "member": True, "signup": "2024-05-31", "note": "hi",
        "city": "paris", "free": "anything"}
#: a good value of every feature of every schema below
VALUE = {**GOOD, "size": 2}
#: every feature numeric: the typed decoder's rows are the matrix
NUMERIC = {"features": [{"name": "count", "kind": "numeric", "nullable": True, "integer": True},
                        {"name": "radius", "kind": "numeric"},
                        {"name": "size", "kind": "numeric", "integer": True}]}
#: no numeric feature at all
TEXTUAL = {"features": [{"name": "city", "kind": "categorical", "categories": ["paris", "rome"]},
                        {"name": "member", "kind": "boolean", "nullable": True},
                        {"name": "note", "kind": "text", "nullable": True}]}
#: one feature (the getters of one name)
SINGLE = {"features": [{"name": "radius", "kind": "numeric"}]}


def schema_of(spec=MIXED, policy="tolerate", max_rows=5) -> RequestSchema:
    """The parser of ``spec`` read as the server reads schema.json, and of a policy read from
    the settings: text built at run time, not the test's literals (which CPython interns: a
    check that compares by identity would pass on them and fail in production)."""
    return RequestSchema(orjson.loads(orjson.dumps(spec)), max_rows=max_rows,
                         unknown_categories="".join(list(policy)))


def columns_of(records: list[dict]) -> dict:
    return {name: [r[name] for r in records] for name in records[0]}


def v2_of(columns: dict, *, column_shape: bool = False) -> dict:
    return {"inputs": [{"name": name, "datatype": "BYTES", "data": values,
                        "shape": [len(values), 1] if column_shape else [len(values)]}
                       for name, values in columns.items()]}


def every_way(schema: RequestSchema, records: list) -> list[Batch]:
    """The batch of ``records`` read each way the server reads a body."""
    batches = [schema.parse_body(orjson.dumps(records)), schema.parse(records)]
    columns = columns_of(records)
    batches += [schema.parse(columns), schema.parse_v2(v2_of(columns))[0],
                schema.parse_v2(v2_of(columns, column_shape=True))[0]]
    return batches


def plain(column: np.ndarray) -> list:
    """A column's values, NaN as the text "NaN" (NaN != NaN)."""
    return ["NaN" if isinstance(v, float) and v != v else v for v in column.tolist()]


def assert_batch(batch: Batch, schema: RequestSchema, want: dict[str, list]) -> None:
    assert batch.rows == len(next(iter(want.values())))
    assert len(batch.columns) == len(schema.features)
    for feature, column in zip(schema.features, batch.columns):
        assert column.shape == (batch.rows,)
        assert column.dtype == (np.float64 if feature.kind in ("numeric", "boolean") else object), feature.name
        got = plain(column)
        assert got == want[feature.name] and [type(v) for v in got] == [type(v) for v in want[feature.name]], (
            feature.name, got)
    if schema.numeric_positions:
        assert batch.numeric is not None and batch.numeric.shape == (batch.rows, len(schema.numeric_positions))
        for j, i in enumerate(schema.numeric_positions):
            assert np.shares_memory(batch.columns[i], batch.numeric)
            assert plain(batch.numeric[:, j]) == want[schema.names[i]]


def refusal(call) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        call()
    return caught.value


def assert_refused(exc: InvalidRequest, message: str, *, status: int = 422, field=None, row=None,
                   expected=None, got=None) -> None:
    assert (str(exc), exc.message, exc.status) == (message, message, status)
    assert exc.body() == {"error": message, "detail": {"field": field, "row": row, "expected": expected, "got": got}}


# -- accepted bodies: the exact columns --------------------------------------------------------

def test_a_mixed_batch_is_the_models_columns_every_way():
    schema = schema_of()
    records = [GOOD,
               {**GOOD, "count": None, "radius": -2, "code": 1, "member": False, "signup": None,
                "note": "", "city": "rome", "free": None},
               {**GOOD, "count": 4.0, "radius": 1e300, "code": 2.5, "signup": "2024-05-31T12:00:00"},
               {**GOOD, "code": None, "free": "paris"}]
    want = {"count": [3.0, "NaN", 4.0, 3.0], "radius": [1.5, -2.0, 1e300, 1.5], "code": ["x", "1", "2.5", "NaN"],
            "member": [1.0, 0.0, 1.0, 1.0],
            "signup": ["2024-05-31", "NaN", "2024-05-31T12:00:00", "2024-05-31"],
            "note": ["hi", "", "hi", "hi"], "city": ["paris", "rome", "paris", "paris"],
            "free": ["anything", "NaN", "anything", "paris"]}
    for batch in every_way(schema, records):
        assert_batch(batch, schema, want)


@pytest.mark.parametrize("policy", ["tolerate", "reject"])
def test_categories_sent_as_text_or_as_their_json_type_are_the_same_text(policy):
    schema = schema_of(policy=policy, max_rows=7)
    records = [{**GOOD, "code": code} for code in ["1", 1, 1.0, "2.5", 2.5, "x", None]]
    want = {**{k: [v] * 7 for k, v in GOOD.items()}, "count": [3.0] * 7, "radius": [1.5] * 7, "member": [1.0] * 7,
            "code": ["1", "1", "1", "2.5", "2.5", "x", "NaN"]}
    for batch in every_way(schema, records):
        assert_batch(batch, schema, want)


def test_unseen_categories_are_passed_on_when_tolerated():
    schema = schema_of(policy="tolerate")
    records = [{**GOOD, "code": "unseen", "city": "oslo"}, {**GOOD, "code": 7, "city": "rome"}]
    want = {**{k: [v] * 2 for k, v in GOOD.items()}, "count": [3.0] * 2, "radius": [1.5] * 2, "member": [1.0] * 2,
            "code": ["unseen", "7"], "city": ["oslo", "rome"]}
    for batch in every_way(schema, records):
        assert_batch(batch, schema, want)


def test_every_feature_numeric_is_one_matrix_every_way():
    schema = schema_of(NUMERIC)
    records = [{"count": 1, "radius": 0.5, "size": 2}, {"count": None, "radius": -1, "size": 3.0},
               {"count": -4.0, "radius": 7, "size": -1}]
    want = {"count": [1.0, "NaN", -4.0], "radius": [0.5, -1.0, 7.0], "size": [2.0, 3.0, -1.0]}
    for batch in every_way(schema, records):
        assert_batch(batch, schema, want)


def test_no_numeric_feature_is_columns_of_text_and_booleans_every_way():
    schema = schema_of(TEXTUAL, policy="reject")
    records = [{"city": "paris", "member": True, "note": None}, {"city": "rome", "member": None, "note": "n"}]
    want = {"city": ["paris", "rome"], "member": [1.0, "NaN"], "note": ["NaN", "n"]}
    for batch in every_way(schema, records):
        assert_batch(batch, schema, want)
        assert batch.numeric is None


def test_one_feature_every_way():
    schema = schema_of(SINGLE)
    for batch in every_way(schema, [{"radius": 2}, {"radius": 0.25}]):
        assert_batch(batch, schema, {"radius": [2.0, 0.25]})


def test_a_record_whose_keys_come_in_another_order_is_the_same_row():
    schema = schema_of()
    shuffled = dict(reversed(list(GOOD.items())))
    first, second = (schema.parse_body(orjson.dumps([r])) for r in (GOOD, shuffled))
    assert [plain(c) for c in first.columns] == [plain(c) for c in second.columns]


def test_the_numeric_matrix_is_column_major_from_records_and_from_columns():
    schema = schema_of(NUMERIC)
    records = [{"count": i, "radius": i / 2, "size": -i} for i in range(4)]
    for batch in (schema.parse(records), schema.parse(columns_of(records))):
        assert batch.numeric.flags.f_contiguous
        assert batch.numeric.tolist() == [[i, i / 2, -i] for i in range(4)]


def test_a_batch_cannot_be_changed():
    """The batch the model predicts on is the one the request log records: neither can change it."""
    import dataclasses

    batch = schema_of(SINGLE).parse([{"radius": 1}])
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.rows = 2  # type: ignore[misc]


def test_v2_returns_the_request_it_read():
    schema = schema_of(SINGLE)
    payload = {"id": "r-1", "inputs": [{"name": "radius", "shape": [1], "datatype": "FP64", "data": [1]}]}
    batch, request = schema.parse_v2(payload)
    assert request is payload and batch.rows == 1 and plain(batch.columns[0]) == [1.0]


# -- the batch's rows -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [MIXED, NUMERIC, TEXTUAL], ids=["mixed", "numeric", "textual"])
def test_the_row_bound_is_inclusive_every_way(spec):
    schema = schema_of(spec, max_rows=3)
    record = {f["name"]: GOOD.get(f["name"], 1) for f in spec["features"]}
    for batch in every_way(schema, [record] * 3):
        assert batch.rows == 3
    records = [record] * 4
    for call in [lambda: schema.parse_body(orjson.dumps(records)), lambda: schema.parse(records),
                 lambda: schema.parse(columns_of(records)), lambda: schema.parse_v2(v2_of(columns_of(records)))]:
        assert_refused(refusal(call), "The batch must have at most 3 rows. Got 4 instead.", status=413,
                       expected="at most 3 rows", got="4 rows")


def test_an_empty_batch_is_refused_every_way():
    schema = schema_of()
    for call in [lambda: schema.parse_body(b"[]"), lambda: schema.parse([]),
                 lambda: schema.parse({name: [] for name in NAMES}),
                 lambda: schema.parse_v2(v2_of({name: [] for name in NAMES}))]:
        assert_refused(refusal(call), "The batch must have at least one row. Got 0 rows instead.",
                       expected="at least 1 row", got="0 rows")


# -- each value's refusal: the same error every way ---------------------------------------------------

VALUE_REFUSALS = [
    # numeric
    ("count", 2.5, "count", "an integer or null", "2.5"),
    ("count", "3", "count", "an integer or null", '"3"'),
    ("count", True, "count", "an integer or null", "true"),
    ("count", [3], "count", "an integer or null", "[3]"),
    ("radius", None, "radius", "a number", "null"),
    ("radius", "1.5", "radius", "a number", '"1.5"'),
    ("radius", False, "radius", "a number", "false"),
    ("radius", {"v": 1}, "radius", "a number", '{"v":1}'),
    # categorical
    ("code", True, "code", "a number or a string or null", "true"),
    ("code", [1], "code", "a number or a string or null", "[1]"),
    ("city", None, "city", "a string", "null"),
    ("city", 3, "city", "a string", "3"),
    ("free", 3, "free", "a string or null", "3"),
    # boolean
    ("member", 1, "member", "true or false", "1"),
    ("member", "true", "member", "true or false", '"true"'),
    ("member", None, "member", "true or false", "null"),
    # datetime
    ("signup", "31/05/2024", "signup",
     "an ISO 8601 date string (e.g. \"2024-05-31\" or \"2024-05-31T12:00:00\") or null", '"31/05/2024"'),
    ("signup", 20240531, "signup",
     "an ISO 8601 date string (e.g. \"2024-05-31\" or \"2024-05-31T12:00:00\") or null", "20240531"),
    # text
    ("note", None, "note", "a string", "null"),
    ("note", 5, "note", "a string", "5"),
]


@pytest.mark.parametrize("policy", ["tolerate", "reject"])
@pytest.mark.parametrize("name, value, field, expected, got", VALUE_REFUSALS,
                         ids=[f"{r[0]}={r[1]!r}" for r in VALUE_REFUSALS])
def test_a_wrong_value_is_named_by_row_and_feature_every_way(policy, name, value, field, expected, got):
    schema = schema_of(policy=policy)
    records = [GOOD, GOOD, {**GOOD, name: value}]
    message = f"Row 2: feature {field!r} must be {expected}. Got {got} instead."
    for call in [lambda: schema.parse_body(orjson.dumps(records)), lambda: schema.parse(records),
                 lambda: schema.parse(columns_of(records)), lambda: schema.parse_v2(v2_of(columns_of(records)))]:
        assert_refused(refusal(call), message, field=field, row=2, expected=expected, got=got)


@pytest.mark.parametrize("spec, name, value, expected, got", [
    (NUMERIC, "count", 2.5, "an integer or null", "2.5"),
    (NUMERIC, "size", 1e-9, "an integer", "1e-9"),
    (NUMERIC, "size", None, "an integer", "null"),
    (NUMERIC, "radius", None, "a number", "null"),
    (NUMERIC, "radius", "1", "a number", '"1"'),
    (TEXTUAL, "member", 0, "true or false or null", "0"),
    (TEXTUAL, "note", 1, "a string or null", "1"),
    (TEXTUAL, "city", None, "a string", "null"),
    (SINGLE, "radius", True, "a number", "true"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_wrong_value_is_named_in_every_kind_of_schema(spec, name, value, expected, got):
    schema = schema_of(spec)
    good = {f["name"]: {"city": "rome", "member": False, "note": "n"}.get(f["name"], 2) for f in spec["features"]}
    records = [good, {**good, name: value}]
    message = f"Row 1: feature {name!r} must be {expected}. Got {got} instead."
    for call in [lambda: schema.parse_body(orjson.dumps(records)), lambda: schema.parse(records),
                 lambda: schema.parse(columns_of(records)), lambda: schema.parse_v2(v2_of(columns_of(records)))]:
        assert_refused(refusal(call), message, field=name, row=1, expected=expected, got=got)


def test_only_the_first_wrong_value_is_named():
    schema = schema_of()
    records = [GOOD, {**GOOD, "note": 1, "radius": "r"}, {**GOOD, "radius": None}]
    exc = refusal(lambda: schema.parse_body(orjson.dumps(records)))
    assert_refused(exc, "Row 1: feature 'radius' must be a number. Got \"r\" instead.", field="radius", row=1,
                   expected="a number", got='"r"')
    exc = refusal(lambda: schema.parse([GOOD, GOOD, {**GOOD, "radius": None}, {**GOOD, "radius": None}]))
    assert exc.row == 2


CODE_CATEGORIES = "one of the categories seen in training: 1, 2.5, \"x\""


@pytest.mark.parametrize("name, value, expected", [
    ("code", "unseen", CODE_CATEGORIES),
    ("code", 7, CODE_CATEGORIES),
    ("code", "2", CODE_CATEGORIES),
    ("code", 2, CODE_CATEGORIES),
    ("city", "oslo", "one of the categories seen in training: \"paris\", \"rome\""),
    ("city", "Paris", "one of the categories seen in training: \"paris\", \"rome\""),
])
def test_an_unseen_category_is_refused_when_the_policy_says_reject(name, value, expected):
    schema = schema_of(policy="reject")
    records = [GOOD, {**GOOD, name: value}]
    got = show(value)
    message = f"Row 1: feature {name!r} must be {expected}. Got {got} instead."
    for call in [lambda: schema.parse_body(orjson.dumps(records)), lambda: schema.parse(records),
                 lambda: schema.parse(columns_of(records)), lambda: schema.parse_v2(v2_of(columns_of(records)))]:
        assert_refused(refusal(call), message, field=name, row=1, expected=expected, got=got)


def test_a_feature_without_listed_categories_takes_any_text_even_when_rejecting():
    schema = schema_of(policy="reject")
    for batch in every_way(schema, [{**GOOD, "free": "never seen"}]):
        assert plain(batch.columns[NAMES.index("free")]) == ["never seen"]


def test_the_categories_listed_in_a_message_stop_at_twelve():
    spec = {"features": [{"name": "letter", "kind": "categorical", "categories": list("abcdefghijklm")}]}
    schema = schema_of(spec, policy="reject")
    exc = refusal(lambda: schema.parse_body(b'[{"letter": "z"}]'))
    listed = ", ".join(f'"{c}"' for c in "abcdefghijkl")
    assert exc.expected == f"one of the categories seen in training: {listed}, ... (13 in all)"
    spec["features"][0]["categories"] = list("abcdefghijkl")
    exc = refusal(lambda: schema_of(spec, policy="reject").parse_body(b'[{"letter": "z"}]'))
    assert exc.expected == f"one of the categories seen in training: {listed}"


# -- the body's shape --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, reason", [
    (b"{not json", "unexpected character, expected a string key: line 1 column 2 (char 1)"),
    (b"", "Input is a zero-length, empty document: line 1 column 1 (char 0)"),
    (b"[1.0, NaN]", "unexpected character, expected a JSON value: line 1 column 7 (char 6)"),
])
def test_a_body_that_is_not_json_is_400(body, reason):
    exc = refusal(lambda: schema_of().parse_body(body))
    assert_refused(exc, f"The body must be JSON. Got invalid JSON instead ({reason}).", status=400,
                   expected="JSON", got="invalid JSON")


@pytest.mark.parametrize("body, got", [(b'"text"', '"text"'), (b"5", "5"), (b"null", "null"), (b"true", "true")])
def test_a_body_neither_records_nor_columns_is_refused(body, got):
    exc = refusal(lambda: schema_of().parse_body(body))
    assert_refused(exc, "The body must be a list of records ([{\"feature\": value, ...}]) or an object of columns "
                   f"({{\"feature\": [values]}}). Got {got} instead.",
                   expected="a list of records or an object of columns", got=got)


@pytest.mark.parametrize("spec", [MIXED, NUMERIC, TEXTUAL], ids=["mixed", "numeric", "textual"])
@pytest.mark.parametrize("record, got", [(5, "5"), ([1, 2], "[1,2]"), (None, "null"), ("r", '"r"')])
def test_a_record_that_is_not_an_object_is_named_by_row(spec, record, got):
    schema = schema_of(spec)
    good = {f["name"]: {"city": "rome", "member": False, "note": "n"}.get(f["name"], 2) for f in spec["features"]}
    records = [good, good, record]
    for call in [lambda: schema.parse_body(orjson.dumps(records)), lambda: schema.parse(records)]:
        assert_refused(refusal(call), f"Row 2 must be an object of feature values. Got {got} instead.",
                       row=2, expected="an object of feature values", got=got)


@pytest.mark.parametrize("values, got", [(2.0, "2.0"), ("a", '"a"'), (None, "null"), ({"0": 1}, '{"0":1}')])
def test_a_column_that_is_not_a_list_is_refused(values, got):
    schema = schema_of()
    columns = {**columns_of([GOOD]), "member": values}
    exc = refusal(lambda: schema.parse(columns))
    assert_refused(exc, f"Column 'member' must be a list of values. Got {got} instead. "
                   "(One record is sent as a list of one: [{...}].)", field="member",
                   expected="a list of values", got=got)


@pytest.mark.parametrize("name", ["radius", "free"])
def test_columns_of_different_lengths_are_refused(name):
    schema = schema_of()
    columns = columns_of([GOOD, GOOD])
    for length in (1, 3):
        columns[name] = [GOOD[name]] * length
        exc = refusal(lambda: schema.parse(columns))
        assert_refused(exc, f"Column {name!r} must have 2 values, like column 'count'. Got {length} instead.",
                       field=name, expected="2 values", got=f"{length} values")


def test_the_first_column_sets_the_row_count_and_its_bound():
    schema = schema_of(max_rows=2)
    columns = {**columns_of([GOOD, GOOD]), "count": [1, 2, 3]}
    assert_refused(refusal(lambda: schema.parse(columns)), "The batch must have at most 2 rows. Got 3 instead.",
                   status=413, expected="at most 2 rows", got="3 rows")


# -- the features' names ------------------------------------------------------------------------------

def records_and_columns(schema, record):
    """The calls that read one record with these keys (after a good one), with the row each one names."""
    good = {name: VALUE[name] for name in schema.names}
    return [(lambda: schema.parse_body(orjson.dumps([good, record])), 1), (lambda: schema.parse([good, record]), 1),
            (lambda: schema.parse({k: [v] for k, v in record.items()}), None)]


@pytest.mark.parametrize("spec", [MIXED, NUMERIC], ids=["mixed", "numeric"])
def test_a_missing_feature_is_named(spec):
    schema = schema_of(spec)
    full = {f["name"]: VALUE[f["name"]] for f in spec["features"]}
    record = {k: v for k, v in full.items() if k != "radius"}
    for call, row in records_and_columns(schema, record):
        where = "Row 1" if row is not None else "The columns"
        assert_refused(refusal(call), f"{where} must have feature 'radius'. Got no value for it instead.",
                       field="radius", row=row, expected="feature 'radius'", got="nothing")


def test_several_missing_features_are_counted_and_listed_up_to_five():
    schema = schema_of()
    for call, row in records_and_columns(schema, {"count": 1}):
        where = "Row 1" if row is not None else "The columns"
        assert_refused(refusal(call), f"{where} must have feature 'radius'. Got no value for it instead (7 features "
                       "missing: \"radius\", \"code\", \"member\", \"signup\", \"note\", ... (7 in all)).",
                       field="radius", row=row, expected="feature 'radius'", got="nothing")
    for call, row in records_and_columns(schema, {k: v for k, v in GOOD.items() if k not in ("count", "free")}):
        where = "Row 1" if row is not None else "The columns"
        assert_refused(refusal(call), f"{where} must have feature 'count'. Got no value for it instead (2 features "
                       "missing: \"count\", \"free\").",
                       field="count", row=row, expected="feature 'count'", got="nothing")


@pytest.mark.parametrize("spec", [MIXED, NUMERIC], ids=["mixed", "numeric"])
@pytest.mark.parametrize("extra, hint", [("radios", " (did you mean 'radius'?)"), ("zzz", ""), ("Count", " (did you mean 'count'?)")])
def test_an_unknown_feature_is_named_with_the_closest_known_one(spec, extra, hint):
    schema = schema_of(spec)
    record = {**{f["name"]: VALUE[f["name"]] for f in spec["features"]}, extra: 1}
    for call, row in records_and_columns(schema, record):
        where = "Row 1" if row is not None else "The columns"
        assert_refused(refusal(call), f"{where} must have only the model's features. Got unknown feature "
                       f"{extra!r} instead{hint}.", field=extra, row=row, expected="only the model's features",
                       got=show(extra))


def test_of_several_unknown_features_the_first_in_order_is_named():
    schema = schema_of(NUMERIC)
    record = {"count": 1, "radius": 2, "size": 3, "b": 1, "c": 2, "a": 3}
    for call, row in records_and_columns(schema, record):
        assert refusal(call).field == "a"


def test_a_record_with_as_many_keys_but_another_name_is_refused():
    """As many keys as features, one of them unknown: not the fast path's batch."""
    for spec in (MIXED, NUMERIC):
        schema = schema_of(spec)
        record = {f["name"]: VALUE[f["name"]] for f in spec["features"]}
        record = {("sizes" if k == "radius" else k): v for k, v in record.items()}
        for call, row in records_and_columns(schema, record):
            assert refusal(call).field == "radius"


# -- the Open Inference Protocol's request ---------------------------------------------------------

V2 = v2_of(columns_of([GOOD]))["inputs"]


@pytest.mark.parametrize("payload, field, message, expected, got", [
    ([1], None, "The body must be an inference request object. Got [1] instead.", "an object with \"inputs\"", "[1]"),
    ("x", None, "The body must be an inference request object. Got \"x\" instead.", "an object with \"inputs\"",
     '"x"'),
    ({}, "inputs", "\"inputs\" must be a non-empty list of tensors. Got null instead.", "a non-empty list of tensors",
     "null"),
    ({"inputs": []}, "inputs", "\"inputs\" must be a non-empty list of tensors. Got [] instead.",
     "a non-empty list of tensors", "[]"),
    ({"inputs": {"name": "count"}}, "inputs", "\"inputs\" must be a non-empty list of tensors. Got "
     "{\"name\":\"count\"} instead.", "a non-empty list of tensors", '{"name":"count"}'),
    ({"inputs": [*V2[:3], 7]}, "inputs[3]", "inputs[3] must be a tensor object. Got 7 instead.", "a tensor object", "7"),
    ({"inputs": [*V2[:3], [V2[3]]]}, "inputs[3]", None, "a tensor object", None),
    ({"inputs": [*V2[:1], {**V2[1], "name": 5}]}, "inputs[1].name", "inputs[1].name must be a string. Got 5 instead.",
     "a string", "5"),
    ({"inputs": [{k: v for k, v in V2[0].items() if k != "name"}]}, "inputs[0].name",
     "inputs[0].name must be a string. Got null instead.", "a string", "null"),
    ({"inputs": [*V2, V2[0]]}, "inputs[8].name", "inputs[8].name must be unique. Got 'count' twice instead.",
     "a unique name", '"count"'),
    ({"inputs": [*V2[:2], {**V2[2], "data": "x"}]}, "inputs[2].data",
     "inputs[2].data must be a flat list of values. Got \"x\" instead.", "a flat list", '"x"'),
    ({"inputs": [*V2[:2], {k: v for k, v in V2[2].items() if k != "data"}]}, "inputs[2].data",
     "inputs[2].data must be a flat list of values. Got null instead.", "a flat list", "null"),
    ({"inputs": [*V2[:3], {**V2[3], "shape": [2]}]}, "inputs[3].shape",
     "inputs[3].shape must be [1] or [1, 1] (one value per row). Got [2] instead.", "[1]", "[2]"),
    ({"inputs": [*V2[:3], {**V2[3], "shape": [1, 2]}]}, "inputs[3].shape", None, "[1]", "[1,2]"),
    ({"inputs": [*V2[:3], {**V2[3], "shape": [1, 1, 1]}]}, "inputs[3].shape", None, "[1]", "[1,1,1]"),
    ({"inputs": [*V2[:3], {**V2[3], "shape": [1.5]}]}, "inputs[3].shape", None, "[1]", "[1.5]"),
    ({"inputs": [*V2[:3], {**V2[3], "shape": 1}]}, "inputs[3].shape", None, "[1]", "1"),
    ({"inputs": [*V2[:3], {k: v for k, v in V2[3].items() if k != "shape"}]}, "inputs[3].shape", None, "[1]", "null"),
])
def test_a_wrong_v2_request_names_the_tensor_and_its_field(payload, field, message, expected, got):
    exc = refusal(lambda: schema_of().parse_v2(payload))
    if message is None:
        message = exc.message
        assert message.startswith(f"{field} must be")
    if got is None:
        got = show(payload["inputs"][3])
    assert_refused(exc, message, field=field, expected=expected, got=got)


def test_a_v2_tensor_shape_follows_its_own_data():
    """A batch of three: each tensor's shape is checked against its own data's length."""
    inputs = v2_of(columns_of([GOOD] * 3))["inputs"]
    inputs[5] = {**inputs[5], "data": ["a", "b"], "shape": [2]}
    exc = refusal(lambda: schema_of().parse_v2({"inputs": inputs}))
    assert_refused(exc, "Column 'note' must have 3 values, like column 'count'. Got 2 instead.", field="note",
                   expected="3 values", got="2 values")
    inputs[5] = {**inputs[5], "shape": [3]}
    exc = refusal(lambda: schema_of().parse_v2({"inputs": inputs}))
    assert_refused(exc, "inputs[5].shape must be [2] or [2, 1] (one value per row). Got [3] instead.",
                   field="inputs[5].shape", expected="[2]", got="[3]")


def test_v2_tensors_are_matched_by_name_not_by_place():
    schema = schema_of()
    columns = columns_of([GOOD, {**GOOD, "radius": 9, "note": "b"}])
    batch, _ = schema.parse_v2({"inputs": list(reversed(v2_of(columns)["inputs"]))})
    assert plain(batch.columns[1]) == [1.5, 9.0] and plain(batch.columns[5]) == ["hi", "b"]


def test_a_v2_request_missing_a_feature_or_with_an_unknown_one():
    schema = schema_of()
    exc = refusal(lambda: schema.parse_v2({"inputs": V2[1:]}))
    assert_refused(exc, "The columns must have feature 'count'. Got no value for it instead.", field="count",
                   expected="feature 'count'", got="nothing")
    exc = refusal(lambda: schema.parse_v2({"inputs": [*V2, {**V2[0], "name": "counts"}]}))
    assert_refused(exc, "The columns must have only the model's features. Got unknown feature 'counts' instead "
                   "(did you mean 'count'?).", field="counts", expected="only the model's features", got='"counts"')


# -- the features of a schema ------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected, datatype, metadata", [
    ({"name": "n", "kind": "numeric"}, "a number", "FP64",
     {"name": "n", "kind": "numeric", "nullable": False, "integer": False}),
    ({"name": "n", "kind": "numeric", "integer": True, "nullable": True}, "an integer or null", "FP64",
     {"name": "n", "kind": "numeric", "nullable": True, "integer": True}),
    ({"name": "c", "kind": "categorical", "categories": ["a", 2]}, "a number or a string", "BYTES",
     {"name": "c", "kind": "categorical", "nullable": False, "categories": ["a", 2]}),
    ({"name": "c", "kind": "categorical", "categories": [1.5], "nullable": True}, "a number or a string or null",
     "BYTES", {"name": "c", "kind": "categorical", "nullable": True, "categories": [1.5]}),
    ({"name": "c", "kind": "categorical", "categories": [True, "no"]}, "a boolean or a string", "BYTES",
     {"name": "c", "kind": "categorical", "nullable": False, "categories": [True, "no"]}),
    ({"name": "c", "kind": "categorical", "categories": None}, "a string", "BYTES",
     {"name": "c", "kind": "categorical", "nullable": False, "categories": []}),
    ({"name": "b", "kind": "boolean", "nullable": True}, "true or false or null", "BOOL",
     {"name": "b", "kind": "boolean", "nullable": True}),
    ({"name": "d", "kind": "datetime"}, "an ISO 8601 date string (e.g. \"2024-05-31\" or \"2024-05-31T12:00:00\")",
     "BYTES", {"name": "d", "kind": "datetime", "nullable": False}),
    ({"name": "t", "kind": "text", "nullable": True}, "a string or null", "BYTES",
     {"name": "t", "kind": "text", "nullable": True}),
])
def test_each_kind_of_feature_says_what_it_expects(spec, expected, datatype, metadata):
    feature = Feature(orjson.loads(orjson.dumps(spec)), reject_unknown=True)  # as read from schema.json
    assert (feature.expected, feature.datatype, feature.metadata()) == (expected, datatype, metadata)


def test_a_categorical_feature_takes_its_categories_json_types():
    feature = Feature({"name": "c", "kind": "categorical", "categories": [True, "no", 3]}, reject_unknown=True)
    assert feature.accepted == {bool, str, int, float}
    assert feature.fast_types == {str}
    assert plain(feature.convert([True, "no", 3, 3.0, "True"])) == ["True", "no", "3", "3", "True"]
    assert feature.problem(False) == "one of the categories seen in training: true, \"no\", 3"
    assert feature.problem(None) == "a boolean or a number or a string"
    textual = Feature({"name": "c", "kind": "categorical", "categories": ["a"], "nullable": True},
                      reject_unknown=False)
    assert textual.accepted == textual.fast_types == {str, type(None)}
    assert textual.problem(1) == "a string or null"


@pytest.mark.parametrize("kind", ["number", "", None, "Numeric"])
def test_an_unknown_kind_of_feature_is_a_schema_error(kind):
    with pytest.raises(ValueError) as caught:
        Feature({"name": "f", "kind": kind}, reject_unknown=False)
    assert str(caught.value) == (f"feature 'f': kind must be numeric, categorical, boolean, datetime or text; "
                                 f"got {kind!r}")


def test_a_schema_without_features_is_an_error():
    with pytest.raises(ValueError, match="^the schema has no features$"):
        RequestSchema({"features": []}, max_rows=1)


@pytest.mark.parametrize("policy, rejects", [("reject", True), ("tolerate", False), ("other", False)])
def test_the_unknown_categories_policy(policy, rejects):
    schema = schema_of(policy=policy)
    rejecting = {f.name: f.reject_unknown for f in schema.features if f.kind != "numeric"}
    assert rejecting == {"code": rejects, "member": rejects, "signup": False, "note": False, "city": rejects,
                         "free": False}


def test_the_schema_default_tolerates_unseen_categories():
    schema = RequestSchema(MIXED, max_rows=2)
    assert schema.parse([{**GOOD, "city": "oslo"}]).rows == 1


def test_a_feature_converts_from_the_first_row_it_is_given():
    feature = Feature({"name": "n", "kind": "numeric"}, reject_unknown=False)
    exc = refusal(lambda: feature.convert([1, "x"], first_row=10))
    assert (exc.row, exc.message) == (11, "Row 11: feature 'n' must be a number. Got \"x\" instead.")
    exc = refusal(lambda: feature.convert(["x"]))
    assert exc.row == 0


@pytest.mark.parametrize("spec, value, problem", [
    ({"kind": "numeric", "integer": True}, 3.0, None),
    ({"kind": "numeric", "integer": True}, 3.5, "an integer"),
    ({"kind": "numeric", "integer": True}, -0.5, "an integer"),
    ({"kind": "numeric"}, 3.5, None),
    ({"kind": "numeric", "nullable": True}, None, None),
    ({"kind": "numeric"}, None, "a number"),
    ({"kind": "boolean"}, False, None),
    ({"kind": "text"}, "", None),
    ({"kind": "datetime"}, "2024-05-31", None),
    ({"kind": "datetime"}, "2024-05-31T12:00:00+02:00", None),
    ({"kind": "datetime"}, "2024-13-01", "an ISO 8601 date string (e.g. \"2024-05-31\" or \"2024-05-31T12:00:00\")"),
    ({"kind": "datetime"}, "", "an ISO 8601 date string (e.g. \"2024-05-31\" or \"2024-05-31T12:00:00\")"),
    ({"kind": "datetime", "nullable": True}, None, None),
    ({"kind": "categorical", "categories": ["a", 1]}, 1.0, None),
    ({"kind": "categorical", "categories": ["a", 1]}, "1", None),
    ({"kind": "categorical", "categories": ["a", 1]}, "b", "one of the categories seen in training: \"a\", 1"),
])
def test_the_problem_of_one_value(spec, value, problem):
    feature = Feature({"name": "f", **spec}, reject_unknown=True)
    assert feature.problem(value) == problem


@pytest.mark.parametrize("values", [["2024-05-31", "nope"], ["2024-02-30"], ["2024-05-31T25:00:00"]])
def test_a_datetime_that_is_no_date_is_refused_every_way(values):
    feature = Feature({"name": "d", "kind": "datetime"}, reject_unknown=False)
    exc = refusal(lambda: feature.convert(values))
    assert exc.row == len(values) - 1 and exc.got == show(values[-1])


# -- how a value is shown --------------------------------------------------------------------------

@pytest.mark.parametrize("value, shown", [
    (None, "null"), (True, "true"), (1.5, "1.5"), ("a\"b", '"a\\"b"'), ([], "[]"), ({}, "{}"),
    ([1, "a", None], '[1,"a",null]'), ({"k": [1, {"j": 2}]}, '{"k":[1,{"j":2}]}'),
    ([[[[1]]]], "[[[[1]]]]"), ([[[[[1]]]]], "[[[[[...]]]]]"), ([[[[[]]]]], "[[[[[]]]]]"),
    ({"a": {"b": {"c": {"d": {"e": 1}}}}}, '{"a":{"b":{"c":{"d":{...}}}}}'),
    ({"a": {"b": {"c": {"d": {}}}}}, '{"a":{"b":{"c":{"d":{}}}}}'),
    ({1: 2}, '{"1":2}'),
    (2 ** 70, "1180591620717411303424"), (b"x", "b'x'"),
    ("x" * 78, '"' + "x" * 78 + '"'),
    ("x" * 79, '"' + "x" * 76 + "..."),
    (list(range(100)), "[" + ",".join(map(str, range(29))) + "..."),
    ({str(i): i for i in range(30)}, "{" + ",".join(f'"{i}":{i}' for i in range(12)) + ",..."),
])
def test_a_value_is_shown_as_json_cut_short(value, shown):
    assert show(value) == shown
    assert len(show(value)) <= 80


@pytest.mark.security
def test_a_deep_value_is_shown_without_recursing_through_it():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert show(deep) == "[[[[[...]]]]]"
    wide = [[1] * 1000] * 1000
    assert len(show(wide)) == 80


@pytest.mark.parametrize("limit", [10, 20])
def test_show_takes_a_limit(limit):
    shown = show("y" * 100, limit=limit)
    assert len(shown) == limit and shown == '"' + "y" * (limit - 4) + "..."


def test_the_parts_of_a_long_list_stop_at_the_budget():
    """Each nested value has the room its parents left: never far beyond the limit, even before the cut."""
    from mlops_kit.serving._validation import _outline

    assert _outline(["aaaa", "bbbb", "cccc"], depth=4, budget=10) == '["aaaa","...,...]'
    assert _outline(["aa", "bb", "cc"], depth=4, budget=10) == '["aa","bb...,...]'
    assert _outline(["aaaa", "bbbbbbbb"], depth=4, budget=10) == '["aaaa","...]'
    assert _outline({"a": "bbbb", "c": "dddd"}, depth=4, budget=10) == '{"a":"bbbb",...}'
    assert _outline({"a": "b", "c": "d", "e": "f"}, depth=4, budget=10) == '{"a":"b","c":...,...}'
    assert _outline("abcdef", depth=0, budget=4) == '"abc...'


# -- the fast paths are taken -------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [MIXED, NUMERIC, TEXTUAL, SINGLE], ids=["mixed", "numeric", "textual", "single"])
def test_a_valid_body_is_read_once_by_the_typed_decoder(spec, monkeypatch):
    """The value-by-value checks are for a body with a mistake: a valid one never gets there
    (both give the same batch, so only this sees a fast path that stopped being taken)."""
    schema = schema_of(spec)
    records = [{name: VALUE[name] for name in schema.names}, {name: VALUE[name] for name in schema.names}]
    if "count" in schema.names:
        records[1]["count"] = None

    def slow(*args):
        raise AssertionError("the body was read again, value by value")

    monkeypatch.setattr(schema, "load_json", slow)
    monkeypatch.setattr(schema, "parse", slow)
    batch = schema.parse_body(orjson.dumps(records))
    assert batch.rows == 2 and (batch.numeric is not None) == bool(schema.numeric_positions)


@pytest.mark.parametrize("spec", [MIXED, NUMERIC, SINGLE], ids=["mixed", "numeric", "single"])
def test_valid_records_and_columns_are_checked_as_one_matrix(spec, monkeypatch):
    """Records already parsed (a body the typed decoder refused, e.g. with a duplicated key) and
    columns: their numeric features are checked together, not feature by feature."""
    schema = schema_of(spec)
    records = [{name: VALUE[name] for name in schema.names}] * 2
    original = Feature.convert

    def convert(self, values, **kwargs):
        assert self.kind != "numeric", f"feature {self.name!r} converted by itself"
        return original(self, values, **kwargs)

    monkeypatch.setattr(Feature, "convert", convert)
    for payload in (records, columns_of(records)):
        batch = schema.parse(payload)
        assert batch.numeric is not None and batch.rows == 2



# -- one feature's column ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec, values, column", [
    ({"kind": "numeric", "integer": True, "nullable": True}, [1, 2.0, None, -3], [1.0, 2.0, "NaN", -3.0]),
    ({"kind": "numeric"}, [0.5, 1, -2.25], [0.5, 1.0, -2.25]),
    ({"kind": "boolean", "nullable": True}, [True, None, False], [1.0, "NaN", 0.0]),
    ({"kind": "datetime", "nullable": True}, ["2024-05-31", None, "2024-05-31T12:00:00"],
     ["2024-05-31", "NaN", "2024-05-31T12:00:00"]),
    ({"kind": "text"}, ["a", "", "b"], ["a", "", "b"]),
    ({"kind": "categorical", "categories": ["a", "b"]}, ["b", "a"], ["b", "a"]),
    ({"kind": "categorical", "categories": ["a", 1, 2.5], "nullable": True}, [1, "1", 1.0, None, 2.5, "a"],
     ["1", "1", "1", "NaN", "2.5", "a"]),
    ({"kind": "categorical", "categories": ["a", 1], "nullable": True}, ["a", None], ["a", "NaN"]),
])
@pytest.mark.parametrize("reject", [True, False])
def test_a_features_valid_values_are_its_column(spec, values, column, reject):
    """Each feature's own conversion: what the slow path gives the model (a body reaches it only
    with a mistake elsewhere, so here each is called directly)."""
    feature = Feature(orjson.loads(orjson.dumps({"name": "f", **spec})), reject_unknown=reject)
    converted = feature.convert(values)
    assert converted.dtype == (np.float64 if spec["kind"] in ("numeric", "boolean") else object)
    assert plain(converted) == column and [type(v) for v in plain(converted)] == [type(v) for v in column]


def test_an_unseen_category_before_a_wrong_value_is_passed_over_when_tolerated():
    schema = schema_of(policy="tolerate")
    records = [{**GOOD, "code": "unseen"}, {**GOOD, "code": True}]
    for call in [lambda: schema.parse_body(orjson.dumps(records)), lambda: schema.parse(records)]:
        assert refusal(call).row == 1
    feature = Feature({"name": "c", "kind": "categorical", "categories": ["a"]}, reject_unknown=False)
    assert feature.problem("b") is None and feature.problem(1) == "a string"


def test_a_batch_of_three_hundred_rows_every_way():
    """Row counts beyond CPython's cached small integers: compared by value."""
    schema = schema_of(max_rows=300)
    records = [{**GOOD, "count": i} for i in range(300)]
    for batch in every_way(schema, records):
        assert batch.rows == 300 and plain(batch.columns[0]) == [float(i) for i in range(300)]
    for call in [lambda: schema.parse(records + records[:1]), lambda: schema.parse(columns_of(records + records[:1]))]:
        assert refusal(call).message == "The batch must have at most 300 rows. Got 301 instead."


def test_the_room_left_is_used_to_the_last_character():
    from mlops_kit.serving._validation import _outline

    assert _outline(["aaa", []], depth=4, budget=8) == '["aaa",[]]'
    assert _outline(["aaa", [], 1], depth=4, budget=8) == '["aaa",[],...]'
    assert _outline("ab", depth=0, budget=4) == '"ab"'
    assert _outline("abc", depth=0, budget=4) == '"abc...'
    assert _outline({"k": "v"}, depth=1, budget=1) == '{...}'
    # the parts stop at the first that finds no room (one "..." for all the rest)
    assert _outline(["aaaa", "bbbb", "cccc", "dddd"], depth=4, budget=10) == '["aaaa","...,...]'
    assert _outline({"a": "bbbb", "c": 1, "d": 2}, depth=4, budget=10) == '{"a":"bbbb",...}'
    # the room a part took is the last part's, not the first's
    assert _outline(["a", "bbbbbb", "c", "d"], depth=4, budget=12) == '["a","bbbbb...,...]'
    assert _outline({"a": 1, "b": "cccccc", "d": 2}, depth=4, budget=14) == '{"a":1,"b":"ccccc...,...}'


@pytest.mark.security
def test_a_deep_or_wide_value_in_a_body_is_refused_in_a_short_message():
    schema = schema_of()
    deep = b"[" * 1000 + b"]" * 1000
    exc = refusal(lambda: schema.parse_body(orjson.dumps([GOOD]).replace(b'"count":3', b'"count":' + deep)))
    assert (exc.row, exc.field, exc.got) == (0, "count", "[[[[[...]]]]]")
    exc = refusal(lambda: schema.parse_body(b"[" * 2000 + b"]" * 2000))
    assert_refused(exc, "The body must be JSON. Got invalid JSON instead (depth limit exceeded: line 1 column 1026 "
                   "(char 1025)).", status=400, expected="JSON", got="invalid JSON")
    wide = orjson.dumps([{**GOOD, "note": ["n" * 1000] * 1000}])
    exc = refusal(lambda: schema.parse_body(wide))
    assert exc.got == '["' + "n" * 75 + "..." and len(exc.message) < 300
