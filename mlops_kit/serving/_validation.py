"""Requests checked against the training schema (``schema.json``), value by value but fast.

A request becomes a :class:`Batch`: one 1-D array per feature in the schema's order,
numeric features as float64 (missing: NaN), categorical ones as text (missing: NaN) - the
representation :func:`mlops_kit.train.features_and_target` gave the model in training.
Every mistake raises :class:`InvalidRequest`, which names the row and the feature, what was
expected and what was sent.

Checks per feature: present and known (no extra names), type (numbers for numeric features,
integers where training saw only integers, text for categorical ones), missing values only
where the schema says ``nullable``, categories unseen in training rejected when the policy is
``reject``. ``min``/``max`` are not enforced: values outside the training range are valid
inputs and are predicted.
"""

from __future__ import annotations

from ..errors import InvalidRequest  # noqa: F401 - raised here, defined with the kit's errors

import difflib
import operator
from itertools import chain
from dataclasses import dataclass
from typing import Any, Sequence

import msgspec
import numpy as np
import orjson

_NUMBER_TYPES = frozenset({int, float})
_NONE = type(None)
_astuple = msgspec.structs.astuple


def show(value: Any, limit: int = 80) -> str:
    """A value as the client sent it (JSON), shortened; never deeper than a few levels (a
    client may nest 1,000 levels: the message must not recurse through them)."""
    text = _outline(value, depth=4, budget=limit + 3)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _outline(value: Any, depth: int, budget: int) -> str:
    """JSON text of ``value`` cut at ``depth`` levels (``[...]``/``{...}``) and about
    ``budget`` characters; recursion is bounded by ``depth``, whatever the value."""
    if type(value) is list:
        if depth <= 0:
            return "[...]" if value else "[]"
        parts, used = [], 2
        for item in value:
            if used > budget:
                parts.append("...")
                break
            parts.append(_outline(item, depth - 1, budget - used))
            used += len(parts[-1]) + 1
        return "[" + ",".join(parts) + "]"
    if type(value) is dict:
        if depth <= 0:
            return "{...}" if value else "{}"
        parts, used = [], 2
        for key, item in value.items():
            if used > budget:
                parts.append("...")
                break
            parts.append(_outline(str(key), 0, budget) + ":" + _outline(item, depth - 1, budget - used))
            used += len(parts[-1]) + 1
        return "{" + ",".join(parts) + "}"
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= budget else text[:budget] + "..."


def _tuple_getter(names: Sequence[str]) -> Any:
    """``record -> tuple of record[name] for name in names`` (KeyError for a missing name)."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    if len(names) == 1:
        return lambda record, _name=names[0]: (record[_name],)
    return lambda record: ()


def _whole(values: np.ndarray) -> bool:
    """Every value a whole number or NaN (missing)."""
    return bool(np.all(np.isnan(values) | (values == np.floor(values))))


def _records_decoder(features: Sequence["Feature"]) -> Any:
    """A msgspec decoder of ``[{feature: value, ...}, ...]`` that accepts exactly the model's
    features, each of the JSON types :meth:`Feature.problem` accepts (a decoding error means
    "check value by value": the slow path then finds and names the mistake)."""
    from typing import Union

    order = {int: 0, float: 1, bool: 2, str: 3, _NONE: 4}
    fields = [(f"f{i}", Union[tuple(sorted(f.accepted, key=order.__getitem__))])  # type: ignore[misc]
              for i, f in enumerate(features)]
    record = msgspec.defstruct("Record", fields, rename={f"f{i}": f.name for i, f in enumerate(features)},
                               forbid_unknown_fields=True, gc=False)
    return msgspec.json.Decoder(list[record])


def _where(row: int | None, name: str) -> str:
    return f"Row {row}: feature {name!r}" if row is not None else f"Feature {name!r}"


@dataclass(frozen=True)
class Batch:
    """Validated input: ``columns[i]`` holds feature ``i``'s values for ``rows`` rows.

    ``numeric``, when set, is the numeric features' values as one ``rows x k`` float64 matrix
    (the schema's numeric features, in the schema's order); their entries of ``columns`` are
    views of its columns (strided when the matrix is row-major).
    """

    columns: list[np.ndarray]
    rows: int
    numeric: np.ndarray | None = None


class Feature:
    """One feature of ``schema.json`` and how its values are checked and converted."""

    def __init__(self, spec: dict[str, Any], *, reject_unknown: bool):
        self.name: str = spec["name"]
        self.kind: str = spec["kind"]
        self.nullable: bool = bool(spec.get("nullable", False))
        self.integer: bool = bool(spec.get("integer", False))
        self.categories: tuple = tuple(spec.get("categories") or ())
        self.reject_unknown = reject_unknown
        if self.kind == "numeric":
            self.accepted = _NUMBER_TYPES | ({_NONE} if self.nullable else set())
            self.expected = ("an integer" if self.integer else "a number") + (" or null" if self.nullable else "")
            self.datatype = "FP64"
        elif self.kind == "categorical":
            # training turned every category into text (str(value)); non-text categories
            # (numbers, booleans) may be sent as their JSON type or as that text
            self.known = frozenset(str(c) for c in self.categories)
            self.as_text = {c: str(c) for c in self.categories if not isinstance(c, str)}
            value_types = {str} | {type(c) for c in self.categories}
            if int in value_types or float in value_types:
                value_types |= _NUMBER_TYPES
            self.accepted = frozenset(value_types) | ({_NONE} if self.nullable else set())
            self.fast_types = frozenset({str} | ({_NONE} if self.nullable else set()))
            kinds = sorted({"a string" if t is str else "a boolean" if t is bool else "a number"
                            for t in value_types})
            self.expected = " or ".join(kinds) + (" or null" if self.nullable else "")
            self.datatype = "BYTES"
        elif self.kind == "boolean":
            # JSON true/false; the model's column is 1.0/0.0 (missing NaN)
            self.accepted = frozenset({bool} | ({_NONE} if self.nullable else set()))
            self.expected = "true or false" + (" or null" if self.nullable else "")
            self.datatype = "BOOL"
        elif self.kind in ("datetime", "text"):
            # an ISO 8601 date or datetime string, or any text; passed to the model as sent
            self.accepted = self.fast_types = frozenset({str} | ({_NONE} if self.nullable else set()))
            self.known = frozenset()
            self.reject_unknown = False
            self.expected = ("an ISO 8601 date string (e.g. \"2024-05-31\" or \"2024-05-31T12:00:00\")"
                             if self.kind == "datetime" else "a string") + (" or null" if self.nullable else "")
            self.datatype = "BYTES"
        else:
            raise ValueError(f"feature {self.name!r}: kind must be numeric, categorical, boolean, datetime or "
                             f"text; got {self.kind!r}")
        if self.kind == "categorical" and spec.get("categories") is None:
            self.reject_unknown = False  # too many levels to list: any text is accepted

    def metadata(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind, "nullable": self.nullable}
        if self.kind == "numeric":
            entry["integer"] = self.integer
        elif self.kind == "categorical":
            entry["categories"] = list(self.categories)
        return entry

    def convert(self, values: Sequence[Any], *, first_row: int = 0) -> np.ndarray:
        """``values`` as the model's column, or :class:`InvalidRequest` for the first bad one."""
        kinds = set(map(type, values))
        if self.kind == "boolean":
            if kinds <= self.accepted:
                return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            self._raise_first_bad(values, first_row)
        if self.kind == "datetime" and kinds <= self.accepted:
            if any(v is not None and not _is_iso_date(v) for v in values):
                self._raise_first_bad(values, first_row)
        if self.kind == "numeric":
            if kinds <= self.accepted:
                column = np.array(values, dtype=np.float64)  # None -> NaN
                if not self.integer or np.all(np.isnan(column) | (column == np.floor(column))):
                    return column
            self._raise_first_bad(values, first_row)
        if kinds <= self.fast_types:
            if self.reject_unknown and not self.known.issuperset(set(values) - {None}):
                self._raise_first_bad(values, first_row)
            column = np.array(values, dtype=object)
            if _NONE in kinds:
                column[column == None] = np.nan  # noqa: E711 - elementwise comparison
            return column
        if not kinds <= self.accepted:
            self._raise_first_bad(values, first_row)
        texts = [np.nan if v is None else v if type(v) is str else self.as_text.get(v, str(v)) for v in values]
        if self.reject_unknown and not self.known.issuperset(t for t in texts if t is not np.nan):
            self._raise_first_bad(values, first_row)
        column = np.empty(len(texts), dtype=object)
        column[:] = texts
        return column

    def problem(self, value: Any) -> str | None:
        """What is wrong with one value (``expected``), or None."""
        kind = type(value)
        if kind not in self.accepted:
            return self.expected
        if value is None:
            return None
        if self.kind == "numeric":
            if self.integer and float(value) != int(value):
                return self.expected
            return None
        if self.kind in ("boolean", "text"):
            return None
        if self.kind == "datetime":
            return None if _is_iso_date(value) else self.expected
        text = value if kind is str else self.as_text.get(value, str(value))
        if self.reject_unknown and text not in self.known:
            return "one of the categories seen in training: " + _listing(self.categories)
        return None

    def _raise_first_bad(self, values: Sequence[Any], first_row: int) -> None:
        for offset, value in enumerate(values):
            expected = self.problem(value)
            if expected is not None:
                row = first_row + offset
                raise InvalidRequest(f"{_where(row, self.name)} must be {expected}. Got {show(value)} instead.",
                                     field=self.name, row=row, expected=expected, got=show(value))
        raise AssertionError(f"no bad value found in feature {self.name!r}")  # pragma: no cover


def _is_iso_date(value: str) -> bool:
    from datetime import datetime

    try:
        datetime.fromisoformat(value)
        return True
    except ValueError:
        return False


def _listing(values: Sequence[Any], limit: int = 12) -> str:
    shown = ", ".join(show(v) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


class RequestSchema:
    """Parses request bodies into a :class:`Batch` for the model trained on ``schema``."""

    def __init__(self, schema: dict[str, Any], *, max_rows: int, unknown_categories: str = "tolerate"):
        self.features = [Feature(f, reject_unknown=unknown_categories == "reject") for f in schema["features"]]
        if not self.features:
            raise ValueError("the schema has no features")
        self.names = tuple(f.name for f in self.features)
        self.name_set = frozenset(self.names)
        self.max_rows = max_rows
        self._values_of = _tuple_getter(self.names)
        # the numeric features are checked and converted together, as one matrix
        self.numeric_positions = [i for i, f in enumerate(self.features) if f.kind == "numeric"]
        self._other_positions = [i for i, f in enumerate(self.features) if f.kind != "numeric"]
        self._numeric_of = _tuple_getter([self.names[i] for i in self.numeric_positions])
        self._others_of = _tuple_getter([self.names[i] for i in self._other_positions])
        numeric = [self.features[i] for i in self.numeric_positions]
        self._required = np.array([j for j, f in enumerate(numeric) if not f.nullable], dtype=np.intp)
        self._integer = np.array([j for j, f in enumerate(numeric) if f.integer], dtype=np.intp)
        self._numeric_types = _NUMBER_TYPES | {_NONE}
        self._records_decoder = _records_decoder(self.features)

    # -- bodies ----------------------------------------------------------------------------
    def parse_body(self, body: bytes) -> Batch:
        """A request body (JSON records or columns) as a :class:`Batch`.

        Records are decoded straight into typed rows (msgspec checks every value's JSON type
        while it parses: no dict per record); anything else - columns, or a body with a
        mistake - is parsed with orjson and checked value by value, which names the mistake.
        """
        try:
            records = self._records_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return self.parse(self.load_json(body))
        self._check_rows(len(records))
        if not self._other_positions:  # every feature numeric: the rows are the matrix
            values = chain.from_iterable(map(_astuple, records))  # null -> NaN
            block = np.fromiter(values, np.float64, count=len(records) * len(self.features)).reshape(len(records), -1)
            if self._integer.size and not _whole(block[:, self._integer]):
                return self.parse(self.load_json(body))
            return self._assemble(block, [], len(records))
        columns = list(zip(*map(_astuple, records)))
        if self.numeric_positions:
            # types are checked already; what is left is whole numbers where training saw them
            block = np.array([columns[i] for i in self.numeric_positions], dtype=np.float64).T
            if self._integer.size and not _whole(block[:, self._integer]):
                return self.parse(self.load_json(body))
            return self._assemble(block, [columns[i] for i in self._other_positions], len(records))
        return Batch([f.convert(c) for f, c in zip(self.features, columns)], len(records))

    @staticmethod
    def load_json(body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The body must be JSON. Got invalid JSON instead ({exc}).", status=400,
                                 expected="JSON", got="invalid JSON") from None

    def parse(self, payload: Any) -> Batch:
        """Records (``[{"f": 1, ...}, ...]``) or columns (``{"f": [1, ...], ...}``)."""
        if type(payload) is list:
            return self.parse_records(payload)
        if type(payload) is dict:
            return self.parse_columns(payload)
        raise InvalidRequest(
            "The body must be a list of records ([{\"feature\": value, ...}]) or an object of columns "
            f"({{\"feature\": [values]}}). Got {show(payload)} instead.",
            expected="a list of records or an object of columns", got=show(payload))

    def parse_records(self, records: list) -> Batch:
        self._check_rows(len(records))
        width = len(self.names)
        # a record with as many keys as the model has features, all of them found, has
        # exactly the model's features: checked for the whole batch at once
        if set(map(type, records)) == {dict} and set(map(len, records)) == {width}:
            try:
                numeric_rows = list(map(self._numeric_of, records))
                other_rows = list(map(self._others_of, records))
            except KeyError:
                numeric_rows = None
            if numeric_rows is not None and self.numeric_positions:
                block = self._numeric_block(numeric_rows, by_row=True)
                if block is not None:
                    return self._assemble(block, list(zip(*other_rows)), len(records))
        # one value at a time: the first mistake is found and named
        for row, record in enumerate(records):
            if type(record) is not dict:
                raise InvalidRequest(f"Row {row} must be an object of feature values. Got {show(record)} instead.",
                                     row=row, expected="an object of feature values", got=show(record))
            if record.keys() != self.name_set:
                self._raise_names(record.keys(), row=row)
        columns = list(zip(*map(self._values_of, records)))
        return Batch([f.convert(c) for f, c in zip(self.features, columns)], len(records))

    def parse_columns(self, columns: dict) -> Batch:
        if columns.keys() != self.name_set:
            self._raise_names(columns.keys(), row=None)
        rows = None
        for name in self.names:
            values = columns[name]
            if type(values) is not list:
                raise InvalidRequest(
                    f"Column {name!r} must be a list of values. Got {show(values)} instead. "
                    "(One record is sent as a list of one: [{...}].)",
                    field=name, expected="a list of values", got=show(values))
            if rows is None:
                rows = len(values)
                self._check_rows(rows)
            elif len(values) != rows:
                raise InvalidRequest(
                    f"Column {name!r} must have {rows} values, like column {self.names[0]!r}. "
                    f"Got {len(values)} instead.", field=name, expected=f"{rows} values", got=f"{len(values)} values")
        rows = rows or 0
        if self.numeric_positions:
            block = self._numeric_block([columns[self.names[i]] for i in self.numeric_positions], by_row=False)
            if block is not None:
                return self._assemble(block, [columns[self.names[i]] for i in self._other_positions], rows)
        return Batch([f.convert(columns[f.name]) for f in self.features], rows)

    def _numeric_block(self, values: list, *, by_row: bool) -> np.ndarray | None:
        """The numeric features as one column-major float64 matrix when every value is valid,
        else None (the caller then checks value by value, and names the first mistake)."""
        types = set(map(type, chain.from_iterable(values)))
        if not types <= self._numeric_types:
            return None
        block = np.array(values, dtype=np.float64)  # null -> NaN (JSON has no NaN of its own)
        block = np.asfortranarray(block) if by_row else block.T
        if _NONE in types and self._required.size and np.isnan(block[:, self._required]).any():
            return None
        if self._integer.size and not _whole(block[:, self._integer]):
            return None
        return block

    def _assemble(self, block: np.ndarray, other_columns: list, rows: int) -> Batch:
        columns: list[Any] = [None] * len(self.features)
        for j, i in enumerate(self.numeric_positions):
            columns[i] = block[:, j]
        for i, values in zip(self._other_positions, other_columns):
            columns[i] = self.features[i].convert(values)
        return Batch(columns, rows, numeric=block)

    def parse_v2(self, payload: Any) -> tuple[Batch, dict[str, Any]]:
        """An Open Inference Protocol v2 inference request: one input tensor per feature
        (``shape`` ``[N]`` or ``[N, 1]``, flat ``data``). Returns the batch and the request."""
        if type(payload) is not dict:
            raise InvalidRequest(f"The body must be an inference request object. Got {show(payload)} instead.",
                                 expected="an object with \"inputs\"", got=show(payload))
        inputs = payload.get("inputs")
        if type(inputs) is not list or not inputs:
            raise InvalidRequest(f"\"inputs\" must be a non-empty list of tensors. Got {show(inputs)} instead.",
                                 field="inputs", expected="a non-empty list of tensors", got=show(inputs))
        columns: dict[str, Any] = {}
        for index, tensor in enumerate(inputs):
            where = f"inputs[{index}]"
            if type(tensor) is not dict:
                raise InvalidRequest(f"{where} must be a tensor object. Got {show(tensor)} instead.",
                                     field=where, expected="a tensor object", got=show(tensor))
            name = tensor.get("name")
            if type(name) is not str:
                raise InvalidRequest(f"{where}.name must be a string. Got {show(name)} instead.",
                                     field=f"{where}.name", expected="a string", got=show(name))
            if name in columns:
                raise InvalidRequest(f"{where}.name must be unique. Got {name!r} twice instead.",
                                     field=f"{where}.name", expected="a unique name", got=show(name))
            data, shape = tensor.get("data"), tensor.get("shape")
            if type(data) is not list:
                raise InvalidRequest(f"{where}.data must be a flat list of values. Got {show(data)} instead.",
                                     field=f"{where}.data", expected="a flat list", got=show(data))
            if shape not in ([len(data)], [len(data), 1]):
                raise InvalidRequest(f"{where}.shape must be [{len(data)}] or [{len(data)}, 1] (one value "
                                     f"per row). Got {show(shape)} instead.", field=f"{where}.shape",
                                     expected=f"[{len(data)}]", got=show(shape))
            columns[name] = data
        return self.parse_columns(columns), payload

    # -- helpers ---------------------------------------------------------------------------
    def _check_rows(self, rows: int) -> None:
        if rows == 0:
            raise InvalidRequest("The batch must have at least one row. Got 0 rows instead.",
                                 expected="at least 1 row", got="0 rows")
        if rows > self.max_rows:
            raise InvalidRequest(f"The batch must have at most {self.max_rows} rows. Got {rows} instead.",
                                 status=413, expected=f"at most {self.max_rows} rows", got=f"{rows} rows")

    def _raise_names(self, sent, *, row: int | None) -> None:
        where = f"Row {row}" if row is not None else "The columns"
        missing = [n for n in self.names if n not in sent]
        if missing:
            raise InvalidRequest(
                f"{where} must have feature {missing[0]!r}. Got no value for it instead"
                + (f" ({len(missing)} features missing: {_listing(missing, 5)})." if len(missing) > 1 else "."),
                field=missing[0], row=row, expected=f"feature {missing[0]!r}", got="nothing")
        extra = sorted((n for n in sent if n not in self.name_set), key=str)[0]
        close = difflib.get_close_matches(extra, self.names, n=1)
        raise InvalidRequest(
            f"{where} must have only the model's features. Got unknown feature {extra!r} instead"
            + (f" (did you mean {close[0]!r}?)." if close else "."),
            field=extra, row=row, expected="only the model's features", got=show(extra))
