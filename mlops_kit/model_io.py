"""Saving and loading models with skops, never pickle.

A model file is hostile input until proven otherwise: a file whose sha256 differs from the
record is refused before it is parsed at all, and then, before skops builds a single object,
the kit walks the file's schema itself (:func:`check_model_bytes`). Only the node kinds
(skops "loaders") and types the kit's own pipelines are made of pass: no method, partial,
function or operator nodes, dict keys typed only by ``str``/``int``, sizes and nesting
bounded. skops then loads with its own audit and the kit's narrow allow-list; what a file
reports as its types is never trusted.
"""

from __future__ import annotations

import io
import json
import tokenize
import zipfile
from pathlib import Path
from typing import Any, Iterator

from . import _artifact_names as _names
from . import _atomic
from .errors import ArtifactError

MODEL_FILE = _names.MODEL
CARD_FILE = _names.MODEL_CARD
EXAMPLES_FILE = _names.EXAMPLES

#: Bounds on a model file: its size on disk, the total size of its unpacked members (a zip
#: bomb declares more than this), the size of its schema and how deep the schema nests.
MAX_FILE_BYTES = 2 * 1024 ** 3
MAX_UNPACKED_BYTES = 4 * 1024 ** 3
MAX_SCHEMA_BYTES = 256 * 1024 ** 2
MAX_SCHEMA_DEPTH = 100
MAX_MEMBERS = 1_000_000

#: Classes built from their attributes (skops ``ObjectNode``): what ``train.build_pipeline``
#: and the registry's estimators (``train.ESTIMATORS``) are made of once fitted.
OBJECT_TYPES = frozenset({
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.LogLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.compose._column_transformer._RemainderColsList",
    "sklearn.dummy.DummyClassifier",
    "sklearn.dummy.DummyRegressor",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._gb.GradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.linear_model._base.LinearRegression",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._ridge.Ridge",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._tree.Tree",
    # column kinds of mlops_kit.train.build_pipeline: dates, grouped/target-encoded and
    # ordinal categories, hashed text (the functions they call: KIT_FUNCTIONS)
    "sklearn.feature_extraction.text.HashingVectorizer",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
    "sklearn.preprocessing._target_encoder.TargetEncoder",
    "sklearn.model_selection._split.KFold",
    "sklearn.model_selection._split.StratifiedKFold",
    "scipy.sparse._csr.csr_matrix",
})
#: numpy scalar types: array element types, and the types ``dtype=`` parameters name.
NUMPY_SCALAR_TYPES = frozenset(f"numpy.{name}" for name in (
    "bool", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "longdouble", "complex64", "complex128", "str_", "bytes_"))
_JSON_TYPES = frozenset(f"builtins.{name}" for name in ("str", "int", "float", "bool", "NoneType"))

#: The only functions a ``functools.partial`` in a kit model may wrap (a FunctionNode each).
PARTIAL_FUNCTIONS = frozenset({"sklearn.utils.validation.check_array"})

#: The skops loaders (node kinds) a kit model is made of, and the types each may carry.
#: Every other loader is refused: ``MethodNode`` (a ``getattr`` by name), ``PartialNode``
#: (always builds ``functools.partial``), ``FunctionNode``, ``OperatorFuncNode``,
#: ``ConstructorFromReduceNode``, ``CachedNode``, ``DefaultDictNode``, ``BytesNode``, ...
ALLOWED_NODES: dict[str, frozenset[str]] = {
    "DictNode": frozenset({"builtins.dict"}),
    "ListNode": frozenset({"builtins.list"}),
    "TupleNode": frozenset({"builtins.tuple"}),
    "SliceNode": frozenset({"builtins.slice"}),
    "JsonNode": _JSON_TYPES,
    "TypeNode": _JSON_TYPES - {"builtins.NoneType"} | NUMPY_SCALAR_TYPES,
    "NdArrayNode": frozenset({"numpy.ndarray"}) | NUMPY_SCALAR_TYPES,
    "DTypeNode": frozenset({"numpy.dtype"}),
    "ObjectNode": OBJECT_TYPES,
    "TreeNode": frozenset({"sklearn.tree._tree.Tree"}),
    "LossNode": frozenset({"sklearn._loss._loss.CyHalfBinomialLoss",
                           "sklearn._loss._loss.CyHalfMultinomialLoss",
                           "sklearn._loss._loss.CyHalfSquaredError"}),
    "RandomStateNode": frozenset({"numpy.random.mtrand.RandomState"}),
    "RandomGeneratorNode": frozenset({"numpy.random._generator.Generator"}),
    # the kit's own feature functions (FunctionTransformer's func), by their exact names only
    "FunctionNode": frozenset({"mlops_kit._features.as_text", "mlops_kit._features.calendar_features",
                               "mlops_kit._features.calendar_names", *PARTIAL_FUNCTIONS}),
    # histogram gradient boosting's own categorical preprocessor holds
    # partial(check_array, ...): a partial is allowed around exactly these functions
    "PartialNode": frozenset({"functools.partial"}),
    "SparseMatrixNode": frozenset({"scipy.sparse._csr.csr_matrix"}),
}
#: Types a dict's keys may be rebuilt with (skops calls each ``key_types`` entry on its key).
DICT_KEY_TYPES = frozenset({"builtins.str", "builtins.int"})
#: Every type a kit model may contain; passed to skops' own audit as its ``trusted`` list.
TRUSTED_TYPES = sorted(set().union(*ALLOWED_NODES.values()) | {
    "numpy.random._pcg64.PCG64", "numpy.random._mt19937.MT19937"})
ROOT_TYPE = "sklearn.pipeline.Pipeline"


def save_model(model: Any, folder: str | Path) -> dict[str, Any]:
    """Write ``model.skops`` atomically; refuse a model the kit would not load back.

    Returns ``{"file": ..., "sha256": ..., "bytes": ...}``.
    """
    import skops.io as sio

    data = sio.dumps(model)
    check_model_bytes(data, label="The model", refusal="Only estimators from the kit's registry can be saved.")
    path = _atomic.write_bytes(Path(folder) / MODEL_FILE, data)
    return {"file": MODEL_FILE, "sha256": _atomic.sha256_file(path), "bytes": len(data)}


def read_verified(path: Path, sha256: str | None, *, record: str, changed: str) -> bytes:
    """The bytes of ``path`` when it is at most MAX_FILE_BYTES and its sha256 is the one
    ``record`` holds; ArtifactError otherwise (the file is not loaded)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ArtifactError(f"{path} must be at most {MAX_FILE_BYTES} bytes. Got {size} instead; "
                            "it is not loaded.", path=path)
    data = path.read_bytes()
    actual = _atomic.sha256_file(data)
    if actual != sha256:
        raise ArtifactError(
            f"{path} does not match its record: sha256 must be {sha256} ({record}). Got {actual} instead. "
            f"The file was changed {changed}; it is not loaded.", path=path)
    return data


def load_model(folder: str | Path, *, expected_sha256: str | None = None) -> Any:
    """Load ``model.skops`` from ``folder``: sha256 against the model card, then the kit's
    schema check (:func:`check_model_bytes`), then skops with the kit's allow-list."""
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    folder = Path(folder)
    path = folder / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"No model at {path}.", path=path, hint="run the train stage first.")
    if expected_sha256 is None:
        expected_sha256 = read_card(folder).get("sha256")
    data = read_verified(path, expected_sha256, record=CARD_FILE, changed="after training")
    actual = expected_sha256  # read_verified checked the bytes against it
    trained = trained_sha256(folder)
    if trained is not None and trained != actual:
        raise ArtifactError(
            f"{path} is not the model its run trained: sha256 must be {trained} (run.json, stage train). "
            f"Got {actual} instead. The file (and its card) were changed after training; it is not loaded.",
            path=path)
    check_model_bytes(data, label=str(path), refusal="it is not loaded.")
    try:
        return sio.loads(data, trusted=TRUSTED_TYPES)
    except UntrustedTypesFoundException as exc:
        raise ArtifactError(f"{path} holds types the kit does not trust: {exc}; it is not loaded.",
                            path=path) from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, zipfile.BadZipFile,
            OSError, tokenize.TokenError) as exc:   # TokenError: numpy's parser of a torn .npy header
        raise ArtifactError(f"{path} is not a model the kit can load ({type(exc).__name__}: "
                            f"{_short(str(exc))}); it is not loaded.", path=path) from None


def trained_sha256(folder: Path) -> str | None:
    """The sha256 of ``model.skops`` recorded in ``run.json`` when the train stage finished,
    when ``folder`` is a run's ``artifacts/`` (None elsewhere: a model folder of its own, an
    image, the scratch run)."""
    if folder.name != "artifacts":
        return None
    from .ledger import recorded_outputs  # the record's one reader (no pydantic needed)

    return recorded_outputs(folder.parent, "train").get(MODEL_FILE)


def run_stage(folder: Path, stage: str) -> dict[str, Any] | None:
    """``stages.<stage>`` of ``run.json`` when ``folder`` is a run's ``artifacts/`` ({} when the
    run has no such record); None when ``folder`` is no run's (a model folder, an image)."""
    folder = Path(folder)
    if folder.name != "artifacts":
        return None
    from .ledger import recorded_stage  # the record's one reader (no pydantic needed)

    return recorded_stage(folder.parent, stage)


#: where ``run.json`` keeps the compiled model's sha256: ``stages.package.onnx``
ONNX_RECORD = ("package", "onnx")


def record_onnx(folder: Path, entry: dict[str, Any] | None) -> None:
    """Record the compiled ONNX model (``{"file", "sha256"}``, or None: none passed) in
    ``run.json`` when ``folder`` is a run's ``artifacts/``: served from the run, the file must
    have this sha256, as ``model.skops`` must have the train stage's."""
    if run_stage(folder, ONNX_RECORD[0]) is None:
        return
    from .ledger import RunFolder

    RunFolder(Path(folder).parent).update_stage(ONNX_RECORD[0], **{ONNX_RECORD[1]: entry})


def recorded_onnx_sha256(folder: Path) -> str | None:
    """The compiled model's sha256 in ``run.json`` (:func:`record_onnx`); None when the run
    records none. Only for a run's ``artifacts/`` (see :func:`run_stage`)."""
    entry = (run_stage(folder, ONNX_RECORD[0]) or {}).get(ONNX_RECORD[1])
    value = entry.get("sha256") if isinstance(entry, dict) else None
    return value if isinstance(value, str) else None


def untrusted_types(data: bytes) -> list[str]:
    """Every type named anywhere in the skops file that the kit does not allow."""
    try:
        schema = _read_schema(data, "the model")
    except ArtifactError as exc:
        return [f"(not a loadable skops file: {exc.message})"]
    problems = _Problems()
    _walk(schema, set(_zip_names(data)), problems)
    return sorted(problems.untrusted)


def check_model_bytes(data: bytes, *, label: str, refusal: str) -> None:
    """Raise ArtifactError unless ``data`` is a skops file made only of what kit models hold.

    ``label`` names the file in messages; ``refusal`` ends them (what happens instead).
    Nothing in the file is imported, built or called here.
    """
    schema = _read_schema(data, label, refusal)
    problems = _Problems()
    _walk(schema, set(_zip_names(data)), problems)
    if problems.untrusted:
        names = sorted(problems.untrusted)
        raise ArtifactError(f"{label} holds types the kit does not trust: {', '.join(names)} "
                            f"(first at {problems.untrusted[names[0]]}); {refusal}", path=_path_or_none(label))
    if problems.first is not None:
        where, what = problems.first
        raise ArtifactError(f"{label}: schema.json at {where}: {what}; {refusal}", path=_path_or_none(label))


class _Problems:
    def __init__(self) -> None:
        self.untrusted: dict[str, str] = {}   # type -> where first seen
        self.first: tuple[str, str] | None = None

    def add(self, where: str, what: str) -> None:
        if self.first is None:
            self.first = (where, what)


def _path_or_none(label: str) -> str | None:
    return label if label.endswith(MODEL_FILE) else None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _zip_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.namelist()


def _read_schema(data: bytes, label: str, refusal: str = "it is not loaded.") -> Any:
    """The parsed ``schema.json``, after bounding the archive's members and sizes."""
    from skops.io._protocol import PROTOCOL

    def refuse(what: str) -> ArtifactError:
        return ArtifactError(f"{label} {what}; {refusal}", path=_path_or_none(label))

    if len(data) > MAX_FILE_BYTES:
        raise refuse(f"must be at most {MAX_FILE_BYTES} bytes. Got {len(data)} instead")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise refuse(f"must hold at most {MAX_MEMBERS} files. Got {len(infos)} instead")
            unpacked = sum(info.file_size for info in infos)
            if unpacked > MAX_UNPACKED_BYTES:
                raise refuse(f"must unpack to at most {MAX_UNPACKED_BYTES} bytes. It declares {unpacked} "
                             "(a zip bomb?)")
            try:
                info = archive.getinfo("schema.json")  # skops' own schema, inside the zip
            except KeyError:
                raise refuse("is not a skops file: expected a schema.json inside; found none") from None
            if info.file_size > MAX_SCHEMA_BYTES:
                raise refuse(f"has a schema.json of {info.file_size} bytes; at most {MAX_SCHEMA_BYTES} "
                             "are accepted")
            raw = archive.read(info)
    except zipfile.BadZipFile as exc:
        raise refuse(f"is not a skops file (a zip archive): {_short(str(exc))}") from None
    try:
        schema = json.loads(raw)
    except RecursionError:
        raise refuse(f"has a schema.json nested deeper than {MAX_SCHEMA_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise refuse(f"has a schema.json that is not JSON ({type(exc).__name__} at "
                     f"position {getattr(exc, 'pos', '?')})") from None
    if not isinstance(schema, dict):
        raise refuse("has a schema.json that is not a JSON object")
    protocol = schema.get("protocol")
    if protocol != PROTOCOL or isinstance(protocol, bool):
        raise refuse(f"must be written with skops protocol {PROTOCOL} (the installed skops). "
                     f"Got {_short(repr(protocol), 20)} instead")
    return schema


def _children(value: Any, where: str, depth: int) -> Iterator[tuple[Any, str, int]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield child, f"{where}.{_short(key, 40)}", depth + 1
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield child, f"{where}[{index}]", depth + 1


def _walk(schema: dict, members: set[str], problems: _Problems) -> None:
    """Check every node of the schema (iteratively: depth is bounded, not the stack)."""
    if (schema.get("__loader__"), _type_of(schema)) != ("ObjectNode", ROOT_TYPE):
        problems.add("the root", f"expected an ObjectNode of {ROOT_TYPE} (what the train stage saves); "
                                 f"found a {_short(repr(schema.get('__loader__')), 30)} of "
                                 f"{_short(_type_of(schema), 80)}")
    seen_ids: dict[int, tuple[str, str]] = {}
    stack: list[tuple[Any, str, int]] = [(schema, "root", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            problems.add(where, f"nested deeper than {MAX_SCHEMA_DEPTH} levels")
            return
        if isinstance(value, dict) and "__loader__" in value:
            _check_node(value, where, members, seen_ids, problems)
        stack.extend(_children(value, where, depth))


def _type_of(node: dict) -> str:
    module, cls = node.get("__module__"), node.get("__class__")
    return f"{module}.{cls}" if isinstance(module, str) and isinstance(cls, str) else repr((module, cls))


def _check_node(node: dict, where: str, members: set[str], seen_ids: dict, problems: _Problems) -> None:
    loader = node["__loader__"]
    name = _type_of(node)
    if name not in TRUSTED_TYPES:
        problems.untrusted.setdefault(_short(name, 120), where)
    if not isinstance(loader, str) or loader not in ALLOWED_NODES:
        problems.add(where, f"a {_short(repr(loader), 40)} node (for {_short(name, 80)}) is not something "
                            "the kit's models contain")
        return
    if name not in TRUSTED_TYPES:
        return
    if name not in ALLOWED_NODES[loader]:
        problems.add(where, f"a {loader} of {name} is not something the kit's models contain")
        return
    saved_id = node.get("__id__")
    if saved_id is not None:
        if not isinstance(saved_id, int) or isinstance(saved_id, bool):
            problems.add(where, f"__id__ must be an integer. Got {_short(repr(saved_id), 20)} instead")
        elif seen_ids.setdefault(saved_id, (loader, name)) != (loader, name):
            problems.add(where, f"object id {saved_id} names a {loader} of {name} here but a "
                                f"{seen_ids[saved_id][0]} of {seen_ids[saved_id][1]} elsewhere")
    if loader == "DictNode":
        key_types = node.get("key_types")
        items = key_types.get("content") if isinstance(key_types, dict) else None
        if not (isinstance(key_types, dict) and key_types.get("__loader__") == "ListNode"
                and isinstance(items, list) and isinstance(node.get("content"), dict)):
            problems.add(where, "a dict must have key_types (a list) and content (an object)")
            return
        for index, item in enumerate(items):
            if not (isinstance(item, dict) and item.get("__loader__") == "TypeNode"
                    and _type_of(item) in DICT_KEY_TYPES):
                found = _type_of(item) if isinstance(item, dict) else repr(item)
                loader_found = item.get("__loader__") if isinstance(item, dict) else None
                problems.add(f"{where}.key_types[{index}]",
                             f"dict keys must be typed str or int. Got a {_short(repr(loader_found), 30)} "
                             f"of {_short(found, 80)} instead")
    elif loader == "PartialNode":
        content = node.get("content")
        func = content.get("func") if isinstance(content, dict) else None
        if not (isinstance(func, dict) and func.get("__loader__") == "FunctionNode"
                and _type_of(func) in PARTIAL_FUNCTIONS and "content" not in func):
            problems.add(where, "a 'PartialNode' node may only wrap " + ", ".join(sorted(PARTIAL_FUNCTIONS))
                         + f". Got a partial of {_short(repr(_type_of(func) if isinstance(func, dict) else func), 80)} "
                           "instead")
    elif loader == "FunctionNode":
        # skops imports the labelled function; a node that also carries a content naming another
        # one (as older skops versions read it) is refused, whatever this skops would do with it
        content = node.get("content")
        target = (f"{content.get('module_path')}.{content.get('function')}" if isinstance(content, dict)
                  else content)
        if "content" in node and target != name:
            problems.add(where, f"a function node must load the function it is labelled with ({name}). "
                                f"Got {_short(repr(target), 80)} instead")
    elif loader == "SliceNode":
        content = node.get("content")
        if not (isinstance(content, dict) and all(
                content.get(k) is None or (isinstance(content.get(k), int) and not isinstance(content.get(k), bool))
                for k in ("start", "stop", "step"))):
            problems.add(where, "a slice must hold integers or null")
    elif loader == "NdArrayNode":
        kind = node.get("type")
        if kind == "numpy":
            if not (isinstance(node.get("file"), str) and node["file"] in members):
                problems.add(where, f"an array must name a file inside the archive. Got "
                                    f"{_short(repr(node.get('file')), 40)} instead")
        elif kind != "json":
            problems.add(where, f"an array's type must be 'numpy' or 'json'. Got {_short(repr(kind), 20)} instead")


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise ArtifactError(f"No model card at {path}.", path=path, hint="run the train stage first.")
    return json.loads(path.read_text())
