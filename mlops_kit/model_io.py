"""Saving and loading models with skops, never pickle.

The types a model file may contain are pinned here, by the kit: loading never trusts the
list a file carries. A file whose sha256 differs from the record is refused before it is
parsed at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import _atomic
from .errors import ArtifactError

MODEL_FILE = "model.skops"
CARD_FILE = "model_card.json"
EXAMPLES_FILE = "examples.json"

#: Types beyond skops' own defaults that a kit model may contain. Only kit-built pipelines
#: are loaded; anything else in a file is refused.
TRUSTED_TYPES = sorted({
    "collections.OrderedDict",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.random._generator.Generator",
    "numpy.random._pcg64.PCG64",
    "numpy.random.mtrand.RandomState",
    "numpy.random._mt19937.MT19937",
    "sklearn.preprocessing._label.LabelEncoder",
    "builtins.slice",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.LogLink",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn._loss._loss.CyHalfSquaredError",
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
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
    # column kinds of mlops_kit.train.build_pipeline: dates, grouped/target-encoded and
    # ordinal categories, hashed text; the two functions are the kit's own (_features)
    "mlops_kit._features.as_text",
    "mlops_kit._features.calendar_features",
    "mlops_kit._features.calendar_names",
    "sklearn.feature_extraction.text.HashingVectorizer",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
    "sklearn.preprocessing._target_encoder.TargetEncoder",
    "sklearn.model_selection._split.KFold",
    "sklearn.model_selection._split.StratifiedKFold",
    "scipy.sparse._csr.csr_matrix",
})


def save_model(model: Any, folder: str | Path) -> dict[str, Any]:
    """Write ``model.skops`` atomically; refuse a model with types the kit would not load back.

    Returns ``{"file": ..., "sha256": ..., "bytes": ...}``.
    """
    import skops.io as sio

    data = sio.dumps(model)
    untrusted = untrusted_types(data)
    if untrusted:
        raise ArtifactError(
            f"The model holds types the kit does not trust: {', '.join(untrusted)}. "
            "Only estimators from the kit's registry can be saved.")
    path = _atomic.write_bytes(Path(folder) / MODEL_FILE, data)
    return {"file": MODEL_FILE, "sha256": _atomic.sha256_file(path), "bytes": len(data)}


def load_model(folder: str | Path, *, expected_sha256: str | None = None) -> Any:
    """Load ``model.skops`` from ``folder`` after checking its sha256 against the model card."""
    import skops.io as sio

    folder = Path(folder)
    path = folder / MODEL_FILE
    if not path.is_file():
        raise ArtifactError(f"No model at {path}.", path=path, hint="run the train stage first.")
    if expected_sha256 is None:
        expected_sha256 = read_card(folder).get("sha256")
    data = path.read_bytes()
    import hashlib
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 != actual:
        raise ArtifactError(
            f"{path} does not match its record: sha256 must be {expected_sha256}. Got {actual} instead. "
            "The file was changed after training; it is not loaded.", path=path)
    untrusted = untrusted_types(data)
    if untrusted:
        raise ArtifactError(f"{path} holds types the kit does not trust: {', '.join(untrusted)}; "
                            "it is not loaded.", path=path)
    return sio.loads(data, trusted=sorted(set(TRUSTED_TYPES) | set(sio.get_untrusted_types(data=data))))


#: Plain containers and scalars every model file holds.
_BUILTIN_TYPES = {"dict", "list", "tuple", "str", "int", "float", "bool", "slice", "NoneType", "set",
                  "frozenset", "bytes", "complex", "type", "object"}


def untrusted_types(data: bytes) -> list[str]:
    """Every type named anywhere in the skops file that the kit does not allow.

    skops itself trusts most scikit-learn classes by default; the kit does not: only the
    classes its own pipelines are made of (``TRUSTED_TYPES``), numpy's arrays, dtypes and
    scalars, and plain Python containers pass.
    """
    import io
    import zipfile

    import numpy

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        return [f"(not a skops file: {exc})"]
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("__module__"), str) and isinstance(node.get("__class__"), str):
                found.add(f"{node['__module__']}.{node['__class__']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    allowed = set(TRUSTED_TYPES)

    def is_allowed(name: str) -> bool:
        module, _, cls = name.rpartition(".")
        if name in allowed or (module == "builtins" and cls in _BUILTIN_TYPES):
            return True
        if module == "numpy":
            candidate = getattr(numpy, cls, None)
            return isinstance(candidate, type) and (issubclass(candidate, numpy.generic)
                                                    or candidate in (numpy.ndarray, numpy.dtype))
        return False

    return sorted(name for name in found if not is_allowed(name))


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise ArtifactError(f"No model card at {path}.", path=path, hint="run the train stage first.")
    return json.loads(path.read_text())
