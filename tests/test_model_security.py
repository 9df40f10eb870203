"""Crafted model files: each is built here, given a matching model card (the sha256 sits
next to the model, so an attacker controls both) and must be refused with ArtifactError
before anything in it runs. A canary file is what the code-running payloads would create."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import zipfile
from pathlib import Path

import pytest

from mlops_kit import model_io
from mlops_kit.errors import ArtifactError

pytestmark = pytest.mark.security

BUNCH = ("sklearn.utils._bunch", "Bunch")
PIPELINE = ("sklearn.pipeline", "Pipeline")
_ids = itertools.count(10_000)


def node(loader: str, label: tuple[str, str] = ("builtins", "dict"), **rest) -> dict:
    return {"__module__": label[0], "__class__": label[1], "__loader__": loader, "__id__": next(_ids), **rest}


def null() -> dict:
    return node("JsonNode", ("builtins", "str"), content="null", is_json=True)


def method(func: str, obj: dict, label: tuple[str, str]) -> dict:
    return node("MethodNode", label, content={"func": func, "obj": obj})


def exec_chain(code: str, label: tuple[str, str] = BUNCH) -> dict:
    """The chain from issue #11: every declared type is ``label``; skops' loaders act anyway.

    ``x`` is an empty Bunch; a partial of ``x.update`` with the builtins (reached by
    ``getattr`` from a method's ``__builtins__``) as keywords is a dict's key type, so
    building that dict fills ``x`` with the builtins; ``x.exec`` is the next key type, and
    it is called on the next key: the code.
    """
    x = node("ObjectNode", label)
    builtins = method("__builtins__", method("__init__", node("ObjectNode", label), label), label)
    update = node("PartialNode", label, content={
        "func": method("update", x, label), "args": node("TupleNode", ("builtins", "tuple"), content=[]),
        "kwds": builtins, "namespace": null()})
    inner = node("DictNode", label, key_types=node("ListNode", ("builtins", "list"), content=[update]),
                 content={"": null()})
    key_types = node("ListNode", ("builtins", "list"),
                     content=[method("get", inner, label), method("exec", dict(x), label)])
    return node("DictNode", key_types=key_types, content={"x": null(), code: null()})


def skops_bytes(schema: dict, *, extra: tuple[tuple[str, bytes], ...] = (), protocol: int | None = None) -> bytes:
    from skops.io._protocol import PROTOCOL

    schema = {**schema, "protocol": PROTOCOL if protocol is None else protocol, "_skops_version": "0.16.0"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", json.dumps(schema))
        for name, data in extra:
            archive.writestr(name, data)
    return buffer.getvalue()


def with_record(folder: Path, data: bytes) -> Path:
    """``data`` as model.skops, with a model card whose sha256 matches it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / model_io.MODEL_FILE).write_bytes(data)
    (folder / model_io.CARD_FILE).write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest()}))
    return folder


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "the crafted model ran code"


def payload(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w').write('pwned')"


def refused(folder: Path, *words: str) -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        model_io.load_model(folder)
    message = str(info.value)
    assert str(folder / model_io.MODEL_FILE) in message and "it is not loaded" in message
    for word in words:
        assert word in message
    return info.value


def test_the_exec_chain_is_refused_and_runs_nothing(tmp_path, canary):
    folder = with_record(tmp_path / "m", skops_bytes(exec_chain(payload(canary))))
    refused(folder, "does not trust: sklearn.utils._bunch.Bunch")


def test_the_chain_is_refused_for_its_loaders_even_when_every_label_is_a_kit_type(tmp_path, canary):
    """With Pipeline labels every type passes; the method, partial and key_types nodes do not."""
    schema = pipeline_holding(exec_chain(payload(canary), PIPELINE))
    err = refused(with_record(tmp_path / "m", skops_bytes(schema)), "schema.json at root.content")
    assert "MethodNode" in str(err) or "PartialNode" in str(err) or "dict keys must be typed" in str(err)


def pipeline_holding(child: dict) -> dict:
    """A Pipeline (the root every kit model has) whose attributes hold ``child``."""
    attrs = node("DictNode", key_types=node("ListNode", ("builtins", "list"), content=[
        node("TypeNode", ("builtins", "str"))]), content={"steps": child})
    return node("ObjectNode", PIPELINE, content=attrs)


def str_key_types(n: int = 1) -> dict:
    return node("ListNode", ("builtins", "list"), content=[node("TypeNode", ("builtins", "str")) for _ in range(n)])


@pytest.mark.parametrize("child, words", [
    (node("PartialNode", PIPELINE, content={"func": null(), "args": null(), "kwds": null(), "namespace": null()}),
     "a PartialNode of sklearn.pipeline.Pipeline is not something the kit's models contain"),
    (node("PartialNode", ("functools", "partial"), content={"func": node("FunctionNode", ("mlops_kit._features", "as_text")), "args": null(),
                                                           "kwds": null(), "namespace": null()}),
     "a 'PartialNode' node may only wrap sklearn.utils.validation.check_array"),
    (method("__init__", node("ObjectNode", PIPELINE), PIPELINE), "a 'MethodNode' node"),
    (node("FunctionNode", ("builtins", "exec"), content={"module_path": "builtins", "function": "exec"}),
     "does not trust: builtins.exec"),
    (node("OperatorFuncNode", ("operator", "attrgetter"), attrs=null()), "does not trust: operator.attrgetter"),
    (node("ConstructorFromReduceNode", ("builtins", "dict"), content=null()), "a 'ConstructorFromReduceNode'"),
    (node("CachedNode", ("builtins", "dict")), "a 'CachedNode' node"),
    (node("DictNode", key_types=node("ListNode", ("builtins", "list"), content=[
        node("TypeNode", ("numpy", "float64"))]), content={"1": null()}),
     "dict keys must be typed str or int. Got a 'TypeNode' of numpy.float64 instead"),
    (node("TypeNode", PIPELINE), "a TypeNode of sklearn.pipeline.Pipeline"),
    (node("NdArrayNode", ("numpy", "ndarray"), type="numpy", file="../../etc/passwd"),
     "an array must name a file inside the archive"),
    (node("SliceNode", ("builtins", "slice"), content={"start": "x", "stop": None, "step": None}),
     "a slice must hold integers or null"),
    ({"__module__": "builtins", "__class__": "dict", "__loader__": ["DictNode"]}, "a ['DictNode'] node"),
    # labelled as one of the kit's own feature functions, but loading another one
    (node("FunctionNode", ("mlops_kit._features", "as_text"), content={"module_path": "builtins", "function": "exec"}),
     "a function node must load the function it is labelled with (mlops_kit._features.as_text). "
     "Got 'builtins.exec' instead"),
], ids=["partial", "partial-of-a-method", "method", "function", "operator", "reduce", "cached", "key-types", "type-node", "array-file",
        "slice", "loader-list", "disguised-function"])
def test_nodes_kit_models_never_contain_are_refused(tmp_path, child, words):
    refused(with_record(tmp_path / "m", skops_bytes(pipeline_holding(child))), "root.content.content.steps", words)


def test_an_object_id_reused_for_another_kind_of_node_is_refused(tmp_path):
    """skops resolves a repeated ``__id__`` to the first node: a harmless-looking key type
    could stand for anything built earlier."""
    first = node("ObjectNode", PIPELINE)
    alias = {"__module__": "builtins", "__class__": "str", "__loader__": "TypeNode", "__id__": first["__id__"]}
    child = node("ListNode", ("builtins", "list"), content=[first, node(
        "DictNode", key_types=node("ListNode", ("builtins", "list"), content=[alias]), content={"a": null()})])
    refused(with_record(tmp_path / "m", skops_bytes(pipeline_holding(child))), "object id")


def test_types_outside_the_allow_list_are_refused_by_name(tmp_path):
    bunch = node("ObjectNode", BUNCH)
    refused(with_record(tmp_path / "m", skops_bytes(pipeline_holding(bunch))),
            "does not trust: sklearn.utils._bunch.Bunch (first at root.content.content.steps)")


def test_a_root_that_is_not_a_pipeline_is_refused(tmp_path):
    scaler = node("ObjectNode", ("sklearn.preprocessing._data", "StandardScaler"))
    refused(with_record(tmp_path / "m", skops_bytes(scaler)), "expected an ObjectNode of sklearn.pipeline.Pipeline")


def test_a_deep_schema_is_refused_without_a_recursion_error(tmp_path):
    deep: dict = null()
    for _ in range(model_io.MAX_SCHEMA_DEPTH):
        deep = node("ListNode", ("builtins", "list"), content=[deep])
    refused(with_record(tmp_path / "m", skops_bytes(pipeline_holding(deep))),
            f"nested deeper than {model_io.MAX_SCHEMA_DEPTH} levels")
    very_deep = "[" * 100_000 + "]" * 100_000  # beyond what json.loads can recurse through
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", very_deep)
    refused(with_record(tmp_path / "n", buffer.getvalue()), "nested deeper than")


def test_a_huge_schema_is_refused_before_it_is_parsed(tmp_path):
    schema = pipeline_holding(node("JsonNode", ("builtins", "str"), content="x" * (model_io.MAX_SCHEMA_BYTES + 1)))
    refused(with_record(tmp_path / "m", skops_bytes(schema)),
            f"at most {model_io.MAX_SCHEMA_BYTES} are accepted")


def test_a_zip_bomb_is_refused_from_its_declared_size(tmp_path, monkeypatch):
    """A 64 MiB member of zeros packs to ~64 KiB; with the bound lowered to 16 MiB for the
    test (the real bound is 4 GiB) it is refused before anything is unpacked."""
    monkeypatch.setattr(model_io, "MAX_UNPACKED_BYTES", 16 * 1024 ** 2)
    data = skops_bytes(pipeline_holding(null()), extra=(("bomb.npy", bytes(64 * 1024 ** 2)),))
    assert len(data) < 1024 ** 2
    refused(with_record(tmp_path / "m", data), "must unpack to at most 16777216 bytes", "zip bomb")


def test_a_file_over_the_size_bound_is_refused_before_it_is_read(tmp_path, monkeypatch, model_dir):
    import shutil

    monkeypatch.setattr(model_io, "MAX_FILE_BYTES", 1000)
    copy = shutil.copytree(model_dir, tmp_path / "m")
    refused(copy, "must be at most 1000 bytes")


@pytest.mark.parametrize("data, words", [
    (b"not a zip", "is not a skops file (a zip archive)"),
    (skops_bytes(pipeline_holding(null()), protocol=0), "must be written with skops protocol"),
])
def test_files_that_are_not_current_skops_files_are_refused(tmp_path, data, words):
    refused(with_record(tmp_path / "m", data), words)


def test_saving_a_model_with_a_foreign_type_is_refused(tmp_path):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    model = Pipeline([("f", FunctionTransformer(abs))]).fit([[1.0], [2.0]])
    with pytest.raises(ArtifactError, match="The model holds types the kit does not trust: builtins.abs"):
        model_io.save_model(model, tmp_path)
    assert not (tmp_path / model_io.MODEL_FILE).exists()


def test_a_swapped_model_with_an_edited_card_is_refused_in_a_run_folder(tmp_path, model_dir):
    """The card sits beside the model; run.json keeps the sha256 the train stage recorded."""
    import shutil

    from conftest import train_into

    artifacts = shutil.copytree(model_dir, tmp_path / "20260101-000000-run" / "artifacts")
    trained = hashlib.sha256((artifacts / model_io.MODEL_FILE).read_bytes()).hexdigest()
    (artifacts.parent / "run.json").write_text(json.dumps(
        {"id": artifacts.parent.name, "stages": {"train": {"status": "succeeded",
                                                            "outputs": {model_io.MODEL_FILE: trained}}}}))
    model_io.load_model(artifacts)  # the real one loads
    other = train_into(tmp_path / "other", "sklearn:breast_cancer", "target", model="dummy")
    shutil.copy(other / model_io.MODEL_FILE, artifacts / model_io.MODEL_FILE)
    card = json.loads((artifacts / model_io.CARD_FILE).read_text())
    card["sha256"] = hashlib.sha256((artifacts / model_io.MODEL_FILE).read_bytes()).hexdigest()
    (artifacts / model_io.CARD_FILE).write_text(json.dumps(card))
    refused(artifacts, "is not the model its run trained", f"sha256 must be {trained}")
    shutil.copytree(artifacts, tmp_path / "loose")   # outside a run folder only the card is there to check
    assert type(model_io.load_model(tmp_path / "loose")[-1]).__name__ == "DummyClassifier"


def test_the_server_reports_the_loaded_models_real_type(tmp_path, model_dir):
    import shutil

    import httpx

    from _serving_process import ServerProcess

    copy = shutil.copytree(model_dir, tmp_path / "m")
    card = json.loads((copy / model_io.CARD_FILE).read_text())
    card["estimator"] = "SomethingElse"
    (copy / model_io.CARD_FILE).write_text(json.dumps(card))
    server = ServerProcess(copy)
    try:
        server.wait_ready()
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        meta = httpx.get(f"{server.url}/v2/models/{card['model']}", timeout=30).json()
    finally:
        server.stop()
    assert 'estimator="LogisticRegression"' in metrics and "SomethingElse" not in metrics
    assert meta["parameters"]["estimator"] == "LogisticRegression"
