"""``model_io``'s checks one by one, on crafted files and on real models built once per session
(the mutation target ``model-io``, docs/mutation.md): each refusal at its bound and just past
it, each node kind the kit's models hold accepted, each refused form named with its place.

Fast on purpose: the crafted schemas go through :func:`model_io.check_model_bytes` directly;
the real models are written with ``skops.io.dumps`` (not through the code under test) once.
test_model_security.py has the attacks end to end (a crafted model with a matching card)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_kit import model_io
from mlops_kit.errors import ArtifactError

from conftest import make_mixed_frame
from test_model_security import PIPELINE, node, null, pipeline_holding, skops_bytes, str_key_types, with_record

pytestmark = pytest.mark.security

LABEL = "m/model.skops"


def _train(model: str, task: str, n_classes: int, params: dict):
    from mlops_kit import data, train

    frame = make_mixed_frame(n=120, task=task)
    frame["when"] = pd.date_range("2026-01-01", periods=len(frame), freq="D")  # the kit's calendar functions
    if n_classes == 3:
        frame["label"] = np.where(frame.index % 3 == 0, "maybe", frame["label"])
    checked = data.validate_dataset(data.Dataset(frame, "t", "label"), task=task)
    schema = data.infer_schema(checked, "label")
    result = train.train_model(checked.frame, schema, model=model, params=params, seed=0)
    return result.model, train.features_and_target(checked.frame, schema)[0]


@pytest.fixture(scope="session")
def real_models():
    """Fitted kit pipelines and their skops bytes: between them every node kind a kit model
    holds (a partial around check_array, losses, trees, random states and generators, the
    kit's feature functions)."""
    import skops.io as sio

    models = {}
    for name, task, n_classes, params in [
            ("logistic_regression", "classification", 2, {}),
            ("hist_gradient_boosting", "classification", 3, {"max_iter": 3}),
            ("gradient_boosting", "regression", 0, {"n_estimators": 3})]:
        model, X = _train(name, task, n_classes, params)
        models[name] = (model, X, sio.dumps(model))
    return models


def refusal(data: bytes, label: str = LABEL) -> str | None:
    """check_model_bytes' message for ``data``, None when it is accepted."""
    try:
        model_io.check_model_bytes(data, label=label, refusal="REFUSED.")
    except ArtifactError as exc:
        assert str(exc).rstrip().endswith("REFUSED.") or "REFUSED." in str(exc)
        return str(exc)
    return None


def holding(child: dict, *, extra=()) -> bytes:
    return skops_bytes(pipeline_holding(child), extra=extra)


AT = "schema.json at root.content.content.steps"


def test_the_bounds_are_the_documented_ones():
    """docs/security.md: the model file's size, its unpacked size, its schema's size and depth,
    its members. A change of a bound is a decision: make it here too."""
    assert (model_io.MAX_FILE_BYTES, model_io.MAX_UNPACKED_BYTES, model_io.MAX_SCHEMA_BYTES,
            model_io.MAX_SCHEMA_DEPTH, model_io.MAX_MEMBERS) == (
        2 * 1024 ** 3, 4 * 1024 ** 3, 256 * 1024 ** 2, 100, 1_000_000)


# --- read_verified and load_model: before parsing -------------------------------------------------

def test_no_model_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="No model at"):
        model_io.load_model(tmp_path)


def test_the_file_size_bound_is_inclusive(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    sha = hashlib.sha256(b"x" * 100).hexdigest()
    monkeypatch.setattr(model_io, "MAX_FILE_BYTES", 100)
    assert model_io.read_verified(path, sha, record="r", changed="c") == b"x" * 100
    monkeypatch.setattr(model_io, "MAX_FILE_BYTES", 99)
    with pytest.raises(ArtifactError, match=f"{path} must be at most 99 bytes. Got 100 instead; it is not loaded"):
        model_io.read_verified(path, sha, record="r", changed="c")


@pytest.mark.parametrize("recorded", ["0" * 64, None])
def test_a_sha256_other_than_the_record_is_refused_naming_both(tmp_path, recorded):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    actual = hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(ArtifactError) as info:
        model_io.read_verified(path, recorded, record="the card", changed="after training")
    assert str(info.value).startswith(f"{path} does not match its record: sha256 must be {recorded} (the card). "
                                      f"Got {actual} instead. The file was changed after training")


# --- load_model: what skops itself refuses, after the kit's check ---------------------------------

def _array(file: str) -> dict:
    return node("NdArrayNode", ("numpy", "ndarray"), type="numpy", file=file)


#: an .npy file whose header is declared 16 bytes long, so it ends inside a string: numpy's header
#: parser fails with tokenize's TokenError
_TORN_NPY = b"\x93NUMPY\x01\x00\x10\x00{'descr': 'O', 'fortran_order': False, 'shape': (1,), }\n"


@pytest.mark.parametrize("child, extra, error", [
    (_array("a.npy"), (("a.npy", b"not an array"),), "ValueError"),        # pickled data refused by numpy
    (node("ListNode", ("builtins", "list"), content="not a list"), (), "AttributeError"),
    (node("ListNode", ("builtins", "list"), content=5), (), "TypeError"),
    (node("ListNode", ("builtins", "list")), (), "KeyError"),
    (_array("a.npy"), (("a.npy", b"PK\x03\x04" + b"not a zip" * 3),), "BadZipFile"),   # numpy opens it as .npz
    (_array("a.npy"), (("a.npy", _TORN_NPY),), "TokenError"),
], ids=["array-bytes", "list-content", "list-content-number", "list-no-content", "array-zip", "array-torn-header"])
def test_a_file_skops_cannot_build_is_an_artifact_error(tmp_path, child, extra, error):
    data = holding(child, extra=extra)
    assert refusal(data) is None     # the kit's check passes it: skops' own failure is named
    with pytest.raises(ArtifactError, match=rf"is not a model the kit can load \({error}: .*\); it is not loaded"):
        model_io.load_model(with_record(tmp_path / "m", data))


# --- _read_schema: the archive's bounds, then the JSON --------------------------------------------

def test_each_archive_bound_is_inclusive(monkeypatch):
    data = holding(null(), extra=(("a.npy", b"x" * 1000),))
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    schema_size = zipfile.ZipFile(io.BytesIO(data)).getinfo("schema.json").file_size
    for bound, value, words in [
            ("MAX_FILE_BYTES", len(data), f"must be at most {len(data) - 1} bytes. Got {len(data)} instead"),
            ("MAX_MEMBERS", len(infos), f"must hold at most {len(infos) - 1} files. Got {len(infos)} instead"),
            ("MAX_UNPACKED_BYTES", sum(i.file_size for i in infos),
             f"must unpack to at most {sum(i.file_size for i in infos) - 1} bytes. "
             f"It declares {sum(i.file_size for i in infos)} (a zip bomb?)"),
            ("MAX_SCHEMA_BYTES", schema_size,
             f"has a schema.json of {schema_size} bytes; at most {schema_size - 1} are accepted")]:
        with monkeypatch.context() as patch:
            patch.setattr(model_io, bound, value)
            assert refusal(data) is None, bound
            patch.setattr(model_io, bound, value - 1)
            assert refusal(data) == f"{LABEL} {words}; REFUSED.", bound


def zip_of(schema_text: str | bytes, name: str = "schema.json") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, schema_text)
    return buffer.getvalue()


@pytest.mark.parametrize("data, words", [
    (b"PK not a zip", "is not a skops file (a zip archive): "),
    (zip_of("{}", name="other.json"), "is not a skops file: expected a schema.json inside; found none"),
    (zip_of("[" * 100_000 + "]" * 100_000), f"has a schema.json nested deeper than {model_io.MAX_SCHEMA_DEPTH} levels"),
    (zip_of('{"a": }'), "has a schema.json that is not JSON (JSONDecodeError at position 6)"),
    (zip_of(b'{"a": "\xff"}'), "has a schema.json that is not JSON (UnicodeDecodeError at position ?)"),
    (zip_of("[1]"), "has a schema.json that is not a JSON object"),
    (zip_of(json.dumps({**pipeline_holding(null())})), "must be written with skops protocol"),
    (skops_bytes(pipeline_holding(null()), protocol=1), "Got 1 instead"),
    (skops_bytes(pipeline_holding(null()), protocol=True), "Got True instead"),
    (skops_bytes(pipeline_holding(null()), protocol="2"), "Got '2' instead"),
], ids=["not-zip", "no-schema", "deep-json", "bad-json", "bad-utf8", "not-object", "no-protocol", "protocol-1",
        "protocol-true", "protocol-text"])
def test_files_that_are_no_skops_schema_are_refused(data, words):
    message = refusal(data)
    assert message is not None and message.startswith(f"{LABEL} ") and words in message and "REFUSED." in message


def test_the_installed_protocol_is_accepted_and_named():
    from skops.io._protocol import PROTOCOL

    assert refusal(holding(null())) is None
    assert f"must be written with skops protocol {PROTOCOL} (the installed skops). Got None instead" in refusal(
        zip_of(json.dumps(pipeline_holding(null()))))


def test_untrusted_types_names_a_file_that_is_no_skops_file():
    assert model_io.untrusted_types(b"nothing") == [
        "(not a loadable skops file: the model is not a skops file (a zip archive): File is not a zip file; "
        "it is not loaded.)"]


# --- _walk: the root, the depth, the places ------------------------------------------------------

def nested(levels: int) -> dict:
    """A node at depth 3 (under pipeline_holding) whose content nests ``levels`` lists: the
    deepest value is at depth 3 + levels."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return node("JsonNode", ("builtins", "str"), content=value)


def test_the_depth_bound_is_inclusive():
    limit = model_io.MAX_SCHEMA_DEPTH
    assert refusal(holding(nested(limit - 3))) is None
    message = refusal(holding(nested(limit - 2)))
    assert message == (f"{LABEL}: schema.json at root.content.content.steps.content" + "[0]" * (limit - 3)
                       + f": nested deeper than {limit} levels; REFUSED.")


@pytest.mark.parametrize("root, found", [
    (node("ObjectNode", ("sklearn.preprocessing._data", "StandardScaler")),
     "a 'ObjectNode' of sklearn.preprocessing._data.StandardScaler"),
    (node("DictNode", PIPELINE, key_types=str_key_types(0), content={}), "a 'DictNode' of sklearn.pipeline.Pipeline"),
])
def test_a_root_other_than_a_pipeline_object_is_refused(root, found):
    assert refusal(skops_bytes(root)) == (f"{LABEL}: schema.json at the root: expected an ObjectNode of "
                                          f"sklearn.pipeline.Pipeline (what the train stage saves); found {found}; "
                                          "REFUSED.")


def test_a_long_root_loader_and_type_are_shortened():
    hgb = "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier"
    assert len(hgb) > 80 and hgb in model_io.TRUSTED_TYPES
    root = {"__module__": "sklearn.pipeline", "__class__": "Pipeline", "__loader__": "L" * 40}
    assert refusal(skops_bytes(root)).endswith(f"found a {repr('L' * 40)[:30]}... of sklearn.pipeline.Pipeline; REFUSED.")
    root = node("ObjectNode", tuple(hgb.rsplit(".", 1)))
    assert refusal(skops_bytes(root)).endswith(f"found a 'ObjectNode' of {hgb[:80]}...; REFUSED.")


def test_the_first_problem_found_is_the_one_named():
    """The walk takes the last child first: of two problems the one under the later key is named."""
    bad = node("SliceNode", ("builtins", "slice"), content={"start": "x", "stop": None, "step": None})
    worse = node("CachedNode", ("builtins", "dict"))
    attrs = node("DictNode", key_types=str_key_types(2), content={"a": bad, "b": worse})
    message = refusal(skops_bytes(node("ObjectNode", PIPELINE, content=attrs)))
    assert message.startswith(f"{LABEL}: schema.json at root.content.content.b: a 'CachedNode' node")


def test_a_long_key_is_shortened_in_the_place_named():
    attrs = node("DictNode", key_types=str_key_types(1), content={"k" * 50: node("CachedNode", ("builtins", "dict"))})
    message = refusal(skops_bytes(node("ObjectNode", PIPELINE, content=attrs)))
    assert message.startswith(f"{LABEL}: schema.json at root.content.content.{'k' * 40}...: a 'CachedNode'")


def test_a_type_that_is_not_two_strings_is_named_as_found():
    child = {"__module__": "builtins", "__loader__": "JsonNode", "content": "1"}
    assert model_io.untrusted_types(holding(child)) == ["('builtins', None)"]
    assert refusal(holding(child)) == (f"{LABEL} holds types the kit does not trust: ('builtins', None) "
                                       "(first at root.content.content.steps); REFUSED.")


def test_untrusted_types_are_all_named_sorted_with_the_first_ones_place():
    child = node("ListNode", ("builtins", "list"), content=[
        node("ObjectNode", ("zzz", "Last")), node("ObjectNode", ("aaa", "First")), node("ObjectNode", ("zzz", "Last"))])
    assert model_io.untrusted_types(holding(child)) == ["aaa.First", "zzz.Last"]
    assert refusal(holding(child)) == (f"{LABEL} holds types the kit does not trust: aaa.First, zzz.Last "
                                       "(first at root.content.content.steps.content[1]); REFUSED.")


def test_a_long_type_name_is_shortened():
    child = node("ObjectNode", ("m" * 200, "C"))
    assert model_io.untrusted_types(holding(child)) == ["m" * 120 + "..."]


def test_an_untrusted_type_is_named_whatever_its_loader_and_no_other_problem_is():
    """A type outside the allow-list is what is named, even in a node kind the kit allows and
    with fields that would be refused too (the __id__ here)."""
    child = node("DictNode", ("evil", "Thing"), key_types=str_key_types(0), content={})
    child["__id__"] = "x"
    assert refusal(holding(child)).startswith(f"{LABEL} holds types the kit does not trust: evil.Thing")
    assert refusal(holding(node("CachedNode", ("evil", "Thing")))).startswith(f"{LABEL} holds types")


# --- _check_node: the node kinds ------------------------------------------------------------------

def int_key_types() -> dict:
    return node("ListNode", ("builtins", "list"), content=[node("TypeNode", ("builtins", "int"))])


def check_array(**rest) -> dict:
    return node("FunctionNode", ("sklearn.utils.validation", "check_array"), **rest)


def partial_of(func) -> dict:
    return node("PartialNode", ("functools", "partial"), content={
        "func": func, "args": node("TupleNode", ("builtins", "tuple"), content=[]),
        "kwds": node("DictNode", key_types=str_key_types(0), content={}), "namespace": null()})


@pytest.mark.parametrize("child", [
    node("DictNode", key_types=int_key_types(), content={"1": null()}),
    node("DictNode", key_types=node("ListNode", ("builtins", "list"), content=[
        node("TypeNode", ("builtins", "str")), node("TypeNode", ("builtins", "int"))]), content={"a": null(), "2": null()}),
    node("SliceNode", ("builtins", "slice"), content={"start": 1, "stop": None, "step": 2}),
    node("NdArrayNode", ("numpy", "ndarray"), type="json", content=[1, 2]),
    _array("a.npy"),
    node("SparseMatrixNode", ("scipy.sparse._csr", "csr_matrix"), type="scipy", file="a.npy"),
    node("FunctionNode", ("mlops_kit._features", "as_text")),
    node("FunctionNode", ("mlops_kit._features", "as_text"),
         content={"module_path": "mlops_kit._features", "function": "as_text"}),
    partial_of(check_array()),
    node("RandomStateNode", ("numpy.random.mtrand", "RandomState")),
    node("TypeNode", ("numpy", "float64")),
    {"__module__": "builtins", "__class__": "list", "__loader__": "ListNode", "content": []},   # no __id__
], ids=["int-keys", "str-and-int-keys", "slice", "json-array", "numpy-array", "sparse", "function",
        "function-content", "partial", "random-state", "dtype-type", "no-id"])
def test_what_kit_models_hold_is_accepted(child):
    assert refusal(holding(child, extra=(("a.npy", b"x"),))) is None


def test_an_id_repeated_for_the_same_kind_of_node_is_accepted_another_kind_is_refused():
    first = node("TypeNode", ("builtins", "str"))
    same = {**first}
    assert refusal(holding(node("ListNode", ("builtins", "list"), content=[first, same]))) is None
    other = {**node("TypeNode", ("builtins", "int")), "__id__": first["__id__"]}
    message = refusal(holding(node("ListNode", ("builtins", "list"), content=[first, other])))
    assert message == (f"{LABEL}: {AT}.content[0]: object id {first['__id__']} names a TypeNode of builtins.str "
                       "here but a TypeNode of builtins.int elsewhere; REFUSED.")


@pytest.mark.parametrize("child, where, what", [
    (node("CachedNode", ("builtins", "dict")), "", "a 'CachedNode' node (for builtins.dict) is not something the "
                                                   "kit's models contain"),
    ({"__module__": "builtins", "__class__": "dict", "__loader__": ["DictNode"]}, "",
     "a ['DictNode'] node (for builtins.dict) is not something the kit's models contain"),
    (node("TypeNode", PIPELINE), "", "a TypeNode of sklearn.pipeline.Pipeline is not something the kit's models contain"),
    ({**node("JsonNode", ("builtins", "str"), content="1"), "__id__": "7"}, "", "__id__ must be an integer. Got '7' instead"),
    ({**node("JsonNode", ("builtins", "str"), content="1"), "__id__": True}, "", "__id__ must be an integer. Got True instead"),
    # dicts
    (node("DictNode", content={}), "", "a dict must have key_types (a list) and content (an object)"),
    (node("DictNode", key_types=node("TupleNode", ("builtins", "tuple"), content=[]), content={}), "",
     "a dict must have key_types (a list) and content (an object)"),
    (node("DictNode", key_types=node("DictNode", content=[node("TypeNode", ("builtins", "str"))]), content={}), "",
     "a dict must have key_types (a list) and content (an object)"),   # a loader that sorts before ListNode
    (node("DictNode", key_types=node("ListNode", ("builtins", "list"), content="x"), content={}), "",
     "a dict must have key_types (a list) and content (an object)"),
    (node("DictNode", key_types=str_key_types(0), content=[]), "",
     "a dict must have key_types (a list) and content (an object)"),
    (node("DictNode", key_types="x", content={}), "", "a dict must have key_types (a list) and content (an object)"),
    (node("DictNode", key_types=node("ListNode", ("builtins", "list"), content=[
        node("TypeNode", ("builtins", "str")), node("TypeNode", ("numpy", "float64"))]), content={}),
     ".key_types[1]", "dict keys must be typed str or int. Got a 'TypeNode' of numpy.float64 instead"),
    (node("DictNode", key_types=node("ListNode", ("builtins", "list"), content=["builtins.str"]), content={}),
     ".key_types[0]", "dict keys must be typed str or int. Got a None of 'builtins.str' instead"),
    (node("DictNode", key_types=node("ListNode", ("builtins", "list"), content=[
        node("JsonNode", ("builtins", "str"), content="x")]), content={}),
     ".key_types[0]", "dict keys must be typed str or int. Got a 'JsonNode' of builtins.str instead"),
    (node("DictNode", key_types=node("ListNode", ("builtins", "list"), content=[
        node("VoidNode", ("builtins", "str"))]), content={}),   # a loader that sorts after TypeNode
     ".key_types[0]", "dict keys must be typed str or int. Got a 'VoidNode' of builtins.str instead"),
    # partials
    (partial_of(check_array(content={"module_path": "builtins", "function": "exec"})), "",
     "a 'PartialNode' node may only wrap sklearn.utils.validation.check_array. Got a partial of "
     "'sklearn.utils.validation.check_array' instead"),
    (partial_of(node("ObjectNode", ("sklearn.utils.validation", "check_array"))), "",
     "a 'PartialNode' node may only wrap sklearn.utils.validation.check_array. Got a partial of "
     "'sklearn.utils.validation.check_array' instead"),
    (partial_of(node("DictNode", ("sklearn.utils.validation", "check_array"))),
     "", "a 'PartialNode' node may only wrap sklearn.utils.validation.check_array. Got a partial of "
         "'sklearn.utils.validation.check_array' instead"),   # a loader that sorts before FunctionNode
    (partial_of(node("FunctionNode", ("mlops_kit._features", "as_text"))), "",
     "a 'PartialNode' node may only wrap sklearn.utils.validation.check_array. Got a partial of "
     "'mlops_kit._features.as_text' instead"),
    (partial_of("check_array"), "",
     "a 'PartialNode' node may only wrap sklearn.utils.validation.check_array. "
     "Got a partial of 'check_array' instead"),
    (node("PartialNode", ("functools", "partial"), content="x"), "",
     "a 'PartialNode' node may only wrap sklearn.utils.validation.check_array. "
     "Got a partial of None instead"),
    # functions
    (node("FunctionNode", ("mlops_kit._features", "as_text"), content="builtins.exec"), "",
     "a function node must load the function it is labelled with (mlops_kit._features.as_text). "
     "Got 'builtins.exec' instead"),
    (node("FunctionNode", ("mlops_kit._features", "as_text"), content={"module_path": "builtins", "function": "exec"}),
     "", "a function node must load the function it is labelled with (mlops_kit._features.as_text). "
         "Got 'builtins.exec' instead"),
    (node("FunctionNode", ("mlops_kit._features", "as_text"), content=None), "",
     "a function node must load the function it is labelled with (mlops_kit._features.as_text). Got None instead"),
    # slices
    (node("SliceNode", ("builtins", "slice"), content={"start": None, "stop": "1", "step": None}), "",
     "a slice must hold integers or null"),
    (node("SliceNode", ("builtins", "slice"), content={"start": None, "stop": None, "step": True}), "",
     "a slice must hold integers or null"),
    (node("SliceNode", ("builtins", "slice"), content=[1, 2, 3]), "", "a slice must hold integers or null"),
    # arrays
    (_array("missing.npy"), "", "an array must name a file inside the archive. Got 'missing.npy' instead"),
    (_array(["a.npy"]), "", "an array must name a file inside the archive. Got ['a.npy'] instead"),
    (node("NdArrayNode", ("numpy", "ndarray"), type="pickle", file="a.npy"), "",
     "an array's type must be 'numpy' or 'json'. Got 'pickle' instead"),
    (node("NdArrayNode", ("numpy", "ndarray"), type="csv", file="a.npy"), "",      # sorts before 'json'
     "an array's type must be 'numpy' or 'json'. Got 'csv' instead"),
], ids=["loader", "loader-list", "type-for-loader", "id-text", "id-bool",
        "dict-no-key-types", "dict-key-types-tuple", "dict-key-types-dict", "dict-key-types-not-list",
        "dict-content-list", "dict-key-types-text",
        "dict-key-float", "dict-key-text", "dict-key-json", "dict-key-void",
        "partial-content", "partial-object", "partial-dict", "partial-other-function", "partial-text", "partial-no-content",
        "function-text", "function-other", "function-none",
        "slice-text", "slice-bool", "slice-list", "array-missing", "array-list", "array-type", "array-type-csv"])
def test_what_kit_models_never_hold_is_refused_naming_the_place(child, where, what):
    assert refusal(holding(child, extra=(("a.npy", b"x"),))) == f"{LABEL}: {AT}{where}: {what}; REFUSED."


HGB = "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier"  # trusted, 89


def labelled(type_name: str, loader: str, **rest) -> dict:
    module, cls = type_name.rsplit(".", 1)
    return {"__module__": module, "__class__": cls, "__loader__": loader, **rest}


@pytest.mark.parametrize("child, shown", [
    (labelled("builtins.dict", "L" * 50), f"a {repr('L' * 50)[:40]}... node (for builtins.dict)"),
    (labelled(HGB, "Bad"), f"a 'Bad' node (for {HGB[:80]}...)"),
    ({**null(), "__id__": "x" * 30}, f"__id__ must be an integer. Got {repr('x' * 30)[:20]}... instead"),
    (node("DictNode", key_types=node("ListNode", ("builtins", "list"), content=[labelled(HGB, "L" * 40)]), content={}),
     f"Got a {repr('L' * 40)[:30]}... of {HGB[:80]}... instead"),
    (partial_of(labelled(HGB, "FunctionNode")), f"Got a partial of {repr(HGB)[:80]}... instead"),
    (node("FunctionNode", ("mlops_kit._features", "as_text"), content="x" * 100), f"Got {repr('x' * 100)[:80]}... instead"),
    (_array("f" * 50), f"Got {repr('f' * 50)[:40]}... instead"),
    (node("NdArrayNode", ("numpy", "ndarray"), type="k" * 30), f"Got {repr('k' * 30)[:20]}... instead"),
], ids=["loader", "name", "id", "key-type", "partial", "function", "array-file", "array-type"])
def test_long_values_are_shortened_in_messages(child, shown):
    assert f"{shown}; REFUSED." in refusal(holding(child)).replace(" is not something the kit's models contain", "")


def test_a_long_protocol_is_shortened():
    assert f"Got {repr('p' * 30)[:20]}... instead" in refusal(skops_bytes(pipeline_holding(null()), protocol="p" * 30))


def test_the_refusal_names_the_file_as_its_path_only_for_a_model_file():
    for label, named in [(LABEL, True), ("The model", False)]:
        with pytest.raises(ArtifactError) as info:
            model_io.check_model_bytes(holding(node("CachedNode", ("builtins", "dict"))), label=label, refusal=".")
        assert (info.value.path is not None) == named


# --- real models (built once, last: a mutant the crafted files kill stops before) ----------------

def test_every_kind_of_kit_model_passes_the_check(real_models):
    for name, (_, _, data) in real_models.items():
        assert refusal(data) is None, name
        assert model_io.untrusted_types(data) == [], name


def test_a_real_model_loads_by_its_card_by_an_explicit_sha256_and_in_its_run(tmp_path, real_models):
    model, X, data = real_models["hist_gradient_boosting"]
    folder = with_record(tmp_path / "m", data)
    assert (model_io.load_model(folder).predict(X) == model.predict(X)).all()
    (folder / model_io.CARD_FILE).unlink()   # the sha256 given: no card needed
    assert model_io.load_model(folder, expected_sha256=hashlib.sha256(data).hexdigest()) is not None
    artifacts = with_record(tmp_path / "20260101-000000-run" / "artifacts", data)
    record_train(artifacts, hashlib.sha256(data).hexdigest())
    assert (model_io.load_model(artifacts).predict(X) == model.predict(X)).all()


def record_train(artifacts: Path, sha256: str) -> None:
    (artifacts.parent / "run.json").write_text(json.dumps(
        {"id": artifacts.parent.name, "stages": {"train": {"status": "succeeded",
                                                            "outputs": {model_io.MODEL_FILE: sha256}}}}))


def test_an_explicit_sha256_is_checked_even_when_the_card_matches(tmp_path, real_models):
    folder = with_record(tmp_path / "m", real_models["logistic_regression"][2])
    with pytest.raises(ArtifactError, match="does not match its record"):
        model_io.load_model(folder, expected_sha256="1" * 64)


@pytest.mark.parametrize("recorded", ["0" * 64, "f" * 64])   # below and above any real sha256
def test_a_model_other_than_the_one_its_run_trained_is_refused(tmp_path, real_models, recorded):
    data = real_models["logistic_regression"][2]
    artifacts = with_record(tmp_path / "20260101-000000-run" / "artifacts", data)
    record_train(artifacts, recorded)
    with pytest.raises(ArtifactError) as info:
        model_io.load_model(artifacts)
    assert (f"is not the model its run trained: sha256 must be {recorded} (run.json, stage train). "
            f"Got {hashlib.sha256(data).hexdigest()} instead") in str(info.value)


def test_a_loaded_model_predicts_as_the_saved_one(tmp_path, real_models):
    model, X, data = real_models["gradient_boosting"]
    loaded = model_io.load_model(with_record(tmp_path / "m", data))
    assert np.allclose(loaded.predict(X), model.predict(X))
    shutil.rmtree(tmp_path / "m")
