"""04_package: the trained pipeline compiled to ONNX, and proved equal to it.

:func:`compile_model` converts ``model.skops`` with skl2onnx into one ONNX graph - the
imputers, the scaler and the one-hot encoder, then the estimator - and runs it with
onnxruntime, exactly as the server will (:mod:`mlops_kit.serving._onnx`), on **every row of
the test split** plus a few edge rows (each feature missing in turn, each categorical feature
an unseen category). It passes when every predicted label is equal (classification) and
every probability - or every regression prediction - is within ``ATOL + RTOL * |sklearn|``
of scikit-learn's. Then ``model.onnx`` is written and the server and the lean image use it;
otherwise the skops model stays the one served and ``onnx.json`` says why.

Choices that keep the graph exact:

* numeric inputs are float64, as in scikit-learn; tree ensembles (forests, gradient boosting)
  get their input cast to float32 first, as scikit-learn casts it (comparing float64 values
  to float32 thresholds would send borderline rows down other branches);
* the imputers are plain ``Where(IsNaN)`` / ``Where(Equal)`` nodes (onnxruntime's ``Imputer``
  takes float32 only and no strings);
* a missing category is fed as ``missing_category`` (ONNX strings have no NaN) and imputed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from . import _atomic, artifacts, model_io
from .errors import ArtifactError

#: probabilities (and regression predictions) must be within ATOL + RTOL * |scikit-learn's|
ATOL = 1e-5
RTOL = 1e-6
#: ONNX opsets of the graph (onnxruntime >= 1.17 runs them)
OPSET = {"": 19, "ai.onnx.ml": 3}
#: what a missing category is fed as; a request's text equal to it is fed as UNSEEN
MISSING_CATEGORY = ""
UNSEEN_CATEGORY = "\x00"
#: the input holding every numeric feature (one column each, in the schema's order)
NUMERIC_INPUT = "numeric_features"
VERSIONED = ("skl2onnx", "onnx", "onnxruntime", "scikit-learn")


class ConversionRefused(Exception):
    """The pipeline cannot be compiled (the reason goes into onnx.json)."""


# --- conversion ---------------------------------------------------------------------------

def _empty_statistics(imputer: Any) -> np.ndarray:
    stats = imputer.statistics_
    if stats.dtype.kind == "f":
        return np.isnan(stats)
    return np.array([isinstance(v, float) and np.isnan(v) for v in stats], dtype=bool)


def _imputer_shape(operator: Any) -> None:
    kept = int((~_empty_statistics(operator.raw_operator)).sum())
    operator.outputs[0].type = operator.inputs[0].type.__class__([operator.inputs[0].type.shape[0], kept])


def _imputer_converter(scope: Any, operator: Any, container: Any) -> None:
    """SimpleImputer as ``Where(missing, statistics, X)`` in the input's own type."""
    from skl2onnx.algebra.onnx_ops import (
        OnnxEqual,
        OnnxGather,
        OnnxIdentity,
        OnnxIsNaN,
        OnnxWhere,
    )
    from skl2onnx.common.data_types import StringTensorType

    imputer = operator.raw_operator
    X = operator.inputs[0]
    version = container.target_opset
    empty = _empty_statistics(imputer)
    if isinstance(X.type, StringTensorType):
        fill = np.array([[MISSING_CATEGORY if e else str(v) for v, e in zip(imputer.statistics_, empty)]],
                        dtype=object)
        missing = OnnxEqual(X, np.array([MISSING_CATEGORY], dtype=object), op_version=version)
    else:
        dtype = np.float32 if X.type.__class__.__name__ == "FloatTensorType" else np.float64
        fill = np.where(empty, 0.0, imputer.statistics_).astype(dtype).reshape(1, -1)
        missing = OnnxIsNaN(X, op_version=version)
    result = OnnxWhere(missing, fill, X, op_version=version)
    if empty.any():  # columns all missing in training are dropped, as scikit-learn does
        result = OnnxGather(result, np.flatnonzero(~empty).astype(np.int64), axis=1, op_version=version)
    OnnxIdentity(result, op_version=version, output_names=[operator.outputs[0].full_name]).add_to(scope, container)


def _bool_attribute_converters() -> dict:
    """skl2onnx's converters of histogram gradient boosting, with their flag list attributes
    (``nodes_missing_value_tracks_true``) given as ints: skl2onnx 1.20 passes a mix of
    booleans and uint8, and onnx refuses booleans in an ``ints`` attribute."""
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import get_converter
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    def with_int_flags(stock: Any) -> Any:
        def convert(scope: Any, operator: Any, container: Any) -> None:
            add_node = container.add_node

            def add_node_ints(op_type, inputs, outputs, op_domain="", op_version=None, name=None, **attrs):
                for key, value in attrs.items():
                    if isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value):
                        attrs[key] = [int(flag) for flag in value]
                return add_node(op_type, inputs, outputs, op_domain=op_domain, op_version=op_version, name=name,
                                **attrs)

            container.add_node = add_node_ints
            try:
                stock(scope, operator, container)
            finally:
                del container.add_node
        return convert

    return {model: with_int_flags(get_converter(sklearn_operator_name_map[model]))
            for model in (HistGradientBoostingClassifier, HistGradientBoostingRegressor)}


def _casts_to_float32(estimator: Any) -> bool:
    """Tree models take float32 in the graph: scikit-learn's trees compare float32 inputs with
    their thresholds; histogram gradient boosting compares float64 ones, but ONNX's tree
    ensemble answers only in float32 (the verification then shows whether any test row
    falls between a threshold and its float32 rounding)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.ensemble._forest import BaseForest
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.tree import BaseDecisionTree

    return isinstance(estimator, (BaseForest, BaseGradientBoosting, BaseDecisionTree, HistGradientBoostingClassifier,
                                  HistGradientBoostingRegressor))


def convert(model: Any, features: list[dict[str, Any]]) -> Any:
    """The kit pipeline as one ONNX model: the numeric features as one ``[N, k]`` input
    (NUMERIC_INPUT) when there are several, every other feature an input of its own (``[N, 1]``)."""
    import onnx
    from onnx import TensorProto, compose, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import (
        DoubleTensorType,
        FloatTensorType,
        StringTensorType,
    )
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    if not (isinstance(model, Pipeline) and len(model.steps) == 2 and isinstance(model.steps[0][1], ColumnTransformer)):
        raise ConversionRefused("the model is not a kit pipeline (a ColumnTransformer, then the estimator)")
    preprocess, estimator = model.steps[0][1], model.steps[1][1]
    custom = {"custom_conversion_functions": {SimpleImputer: _imputer_converter},
              "custom_shape_calculators": {SimpleImputer: _imputer_shape}}
    estimator_custom = {"custom_conversion_functions": _bool_attribute_converters()}
    initial = [(f["name"], DoubleTensorType([None, 1]) if f["kind"] == "numeric" else StringTensorType([None, 1]))
               for f in features]
    front = convert_sklearn(_missing_category_as_text(preprocess), initial_types=initial, target_opset=OPSET,
                            **custom)
    width = int(getattr(preprocess, "n_features_out_", 0) or len(preprocess.get_feature_names_out()))
    as_float = _casts_to_float32(estimator)
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    tensor = FloatTensorType if as_float else DoubleTensorType
    back = convert_sklearn(estimator, initial_types=[("features", tensor([None, width]))],
                           target_opset=OPSET, options=options, **estimator_custom)
    # the front's output, cast to what the estimator takes
    graph = front.graph
    produced = graph.output[0].name
    graph.node.append(helper.make_node("Cast", [produced], ["features_cast"],
                                       to=TensorProto.FLOAT if as_float else TensorProto.DOUBLE, name="CastFeatures"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("features_cast", TensorProto.FLOAT if as_float
                                                      else TensorProto.DOUBLE, [None, width]))
    back.ir_version = front.ir_version = min(front.ir_version, back.ir_version)
    _align_opsets(front, back)
    merged = compose.merge_models(front, back, io_map=[("features_cast", "features")], prefix2="model_")
    _numeric_as_one_input(merged, [i for i, f in enumerate(features) if f["kind"] == "numeric"])
    onnx.checker.check_model(merged)
    return merged


def _numeric_as_one_input(model: Any, positions: list[int]) -> None:
    """Replace the inputs of the numeric features (at ``positions`` of the schema's features,
    one graph input each, in that order) by one ``[N, k]`` float64 input (NUMERIC_INPUT, the
    features in the schema's order), split into the old inputs inside the graph.

    onnxruntime converts every input of every call on its own: a one-row call of the default
    model took 58 us with 30 inputs and 31 us with one (benchmarks/serving.py's breakdown).
    """
    from onnx import TensorProto, helper, numpy_helper

    if len(positions) < 2:
        return
    graph = model.graph
    numeric = [graph.input[i].name for i in positions]  # skl2onnx's names: spaces became "_"
    taken = {i.name for i in graph.input} | {n for node in graph.node for n in (*node.input, *node.output)}
    name = NUMERIC_INPUT
    while name in taken:
        name += "_"
    folded = set(numeric)
    kept = [i for i in graph.input if i.name not in folded]
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, [None, len(numeric)]))
    graph.input.extend(kept)
    sizes = numpy_helper.from_array(np.ones(len(numeric), dtype=np.int64), name=f"{name}_sizes")
    graph.initializer.append(sizes)
    graph.node.insert(0, helper.make_node("Split", [name, sizes.name], list(numeric), axis=1,
                                          name="SplitNumericFeatures"))


def _missing_category_as_text(preprocess: Any) -> Any:
    """A copy whose encoders name the missing category as the graph is fed it.

    A one-hot encoder fitted on text with missing values learns NaN as a category of its own;
    ONNX strings have no NaN, so the graph is fed MISSING_CATEGORY there, and the copy's
    category list says the same."""
    import copy

    preprocess = copy.deepcopy(preprocess)
    for _, transformer, _ in preprocess.transformers_:
        for step in (s for _, s in getattr(transformer, "steps", [])) if hasattr(transformer, "steps") else [transformer]:
            categories = getattr(step, "categories_", None)
            if categories is None:
                continue
            renamed = []
            for levels in categories:
                if levels.dtype == object and any(_missing(v) for v in levels):
                    if MISSING_CATEGORY in set(v for v in levels if isinstance(v, str)):
                        raise ConversionRefused(f"a category is the text {MISSING_CATEGORY!r}, which the graph "
                                                "uses for a missing value")
                    levels = np.array([MISSING_CATEGORY if _missing(v) else v for v in levels], dtype=object)
                renamed.append(levels)
            step.categories_ = renamed
    return preprocess


def _align_opsets(*models: Any) -> None:
    versions: dict[str, int] = {}
    for model in models:
        for entry in model.opset_import:
            versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    for model in models:
        del model.opset_import[:]
        for domain, version in sorted(versions.items()):
            entry = model.opset_import.add()
            entry.domain, entry.version = domain, version


# --- verification -------------------------------------------------------------------------

def _records_and_frame(test: Any, schema: dict[str, Any]) -> tuple[list[dict], Any]:
    """The test split as the rows the server gets, plus the edge rows."""
    from .train import features_and_target

    X, _ = features_and_target(test, schema)
    names = [f["name"] for f in schema["features"]]
    records = [{k: (None if _missing(v) else (v.item() if hasattr(v, "item") else v)) for k, v in row.items()}
               for row in X.to_dict(orient="records")]
    edges = []
    if records:
        for feature in schema["features"]:
            edges.append({**records[0], feature["name"]: None})
            if feature["kind"] == "categorical":
                edges.append({**records[0], feature["name"]: "\x01an unseen category"})
                edges.append({**records[0], feature["name"]: MISSING_CATEGORY})
    return records + edges, len(edges), names


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _batch(records: list[dict], features: list[dict[str, Any]]) -> Any:
    """The server's validated representation: float64 columns (NaN), object columns (str/NaN)."""
    from .serving import Batch

    columns = []
    for feature in features:
        values = [r[feature["name"]] for r in records]
        if feature["kind"] == "numeric":
            columns.append(np.array([np.nan if v is None else v for v in values], dtype=np.float64))
        else:
            column = np.empty(len(values), dtype=object)
            column[:] = [np.nan if v is None else v if isinstance(v, str) else str(v) for v in values]
            columns.append(column)
    return Batch(columns, len(records))


def _frame(batch: Any, names: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame(dict(zip(names, batch.columns)), columns=names)


def _close(got: np.ndarray, want: np.ndarray) -> tuple[bool, float]:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False, float("inf")
    diff = np.abs(got - want)
    return bool(np.all(diff <= ATOL + RTOL * np.abs(want))), float(diff.max()) if diff.size else 0.0


def verify(onnx_bytes: bytes, report: artifacts.OnnxReport, model: Any, test: Any,
           schema: dict[str, Any]) -> artifacts.OnnxCheck:
    from .serving import OnnxModel

    records, edge_rows, names = _records_and_frame(test, schema)
    batch = _batch(records, schema["features"])
    compiled = OnnxModel(onnx_bytes, report, schema["features"])
    predictions, probabilities = compiled.run(batch)
    frame = _frame(batch, names)
    expected = model.predict(frame)
    if report.task == "classification":
        got, want = predictions.tolist(), expected.tolist()
        mismatched = sum(1 for a, b in zip(got, want) if not (a == b and type(a) is type(b)))
        mismatched += abs(len(got) - len(want))
        close, diff = _close(probabilities, model.predict_proba(frame))
        compared = "probabilities"
    else:
        close, diff = _close(predictions, expected)
        mismatched = 0 if close else int(np.sum(np.abs(predictions - expected) > ATOL + RTOL * np.abs(expected)))
        compared = "predictions"
    return artifacts.OnnxCheck(rows=len(records) - edge_rows, edge_rows=edge_rows,
                               predictions_equal=mismatched == 0 and close,
                               mismatched_predictions=mismatched, compared=compared, max_abs_diff=diff,
                               atol=ATOL, rtol=RTOL)


# --- the stage's step ---------------------------------------------------------------------

def compile_model(folder: str | Path) -> artifacts.OnnxReport:
    """Compile and verify the run's model; write ``onnx.json`` (always) and ``model.onnx``
    (when it passed) into ``folder``, the folder holding the model (a run's ``artifacts/``)."""
    import pandas as pd

    from .train import installed_versions

    started = time.perf_counter()
    folder = Path(folder)
    card = _load(artifacts.MODEL_CARD, folder)
    schema = _load(artifacts.SCHEMA, folder).to_json()
    model = model_io.load_model(folder, expected_sha256=card.sha256)
    test_path = folder / artifacts.TEST_SPLIT.name
    if not test_path.is_file():
        raise artifacts.missing(artifacts.TEST_SPLIT, test_path)
    test = pd.read_parquet(test_path)
    estimator = model[-1] if hasattr(model, "steps") else model
    classes = (np.asarray(estimator.classes_).tolist()
               if card.task == "classification" and hasattr(estimator, "classes_") else None)
    report = dict(passed=False, model_sha256=card.sha256, estimator=type(estimator).__name__, task=card.task,
                  classes=classes, missing_category=MISSING_CATEGORY, unseen_category=UNSEEN_CATEGORY,
                  opset=dict(OPSET), versions=installed_versions(VERSIONED),
                  created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    target = folder / artifacts.ONNX_MODEL.name
    data = None
    try:
        collisions = [f["name"] for f in schema["features"] if f["kind"] == "categorical"
                      and {MISSING_CATEGORY, UNSEEN_CATEGORY} & {str(c) for c in f.get("categories") or ()}]
        if collisions:
            raise ConversionRefused(f"feature {collisions[0]!r} has the category {MISSING_CATEGORY!r} or "
                                    f"{UNSEEN_CATEGORY!r}, which the ONNX graph uses as markers")
        if card.task == "classification" and not hasattr(estimator, "predict_proba"):
            raise ConversionRefused(f"{type(estimator).__name__} gives no probabilities")
        categorical = getattr(estimator, "is_categorical_", None)
        if categorical is not None and np.any(categorical):
            raise ConversionRefused(f"{type(estimator).__name__} splits categorical features natively, and "
                                    "skl2onnx converts those splits as numeric ones (different predictions)")
        try:
            graph = convert(model, schema["features"])
        except ConversionRefused:
            raise
        except Exception as exc:
            raise ConversionRefused(f"skl2onnx cannot convert {type(estimator).__name__}: "
                                    f"{type(exc).__name__}: {_short(exc)}") from None
        data = graph.SerializeToString()
        inputs = [i.name for i in graph.graph.input]
        folded = len(inputs) < len(schema["features"])
        report.update(inputs=inputs, outputs=[o.name for o in graph.graph.output],
                      numeric_input=inputs[0] if folded else None)
        typed = artifacts.OnnxReport(**report)
        try:
            check = verify(data, typed, model, test, schema)
        except ArtifactError as exc:
            raise ConversionRefused(f"onnxruntime cannot run the compiled model: {_short(exc)}") from None
        report["check"] = check
        if not check.predictions_equal:
            raise ConversionRefused(
                f"the ONNX model differs from scikit-learn on the test split: {check.mismatched_predictions} "
                f"of {check.rows + check.edge_rows} rows differ; largest {check.compared} difference "
                f"{check.max_abs_diff:.3g} (allowed {ATOL:g} + {RTOL:g} x |value|)")
    except ConversionRefused as refused:
        report.update(passed=False, reason=str(refused))
        target.unlink(missing_ok=True)
        model_io.record_onnx(folder, None)
    else:
        _atomic.write_bytes(target, data)
        report.update(passed=True, file=artifacts.ONNX_MODEL.name, sha256=_atomic.sha256_file(target),
                      bytes=len(data))
        model_io.record_onnx(folder, {"file": artifacts.ONNX_MODEL.name, "sha256": report["sha256"]})
    report["seconds"] = round(time.perf_counter() - started, 3)
    typed = artifacts.OnnxReport(**report)
    artifacts.write_document(folder / artifacts.ONNX_REPORT.name, artifacts.OnnxReport, typed)
    return typed


def _load(document: artifacts.DocumentArtifact, folder: Path) -> Any:
    from .serving import load_onnx as load

    return load(document, folder)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report_table(report: artifacts.OnnxReport | None) -> Any:
    """The verification as a small table (pandas) for the notebook."""
    import pandas as pd

    if report is None:
        return pd.DataFrame([("served", "skops (scikit-learn): not compiled (package.runtime skops)")],
                            columns=["", "value"]).set_index("")
    check = report.check
    rows = [("served", "ONNX (onnxruntime)" if report.passed else "skops (scikit-learn)"),
            ("estimator", report.estimator), ("reason", report.reason or "")]
    if check:
        rows += [("test rows checked", check.rows), ("edge rows checked", check.edge_rows),
                 ("predictions equal", check.predictions_equal),
                 (f"max |{check.compared} diff|", f"{check.max_abs_diff:.3g}"),
                 ("tolerance", f"{check.atol:g} + {check.rtol:g} x |value|")]
    rows += [("sha256", report.sha256 or ""), ("bytes", report.bytes or ""),
             ("versions", ", ".join(f"{k} {v}" for k, v in report.versions.items()))]
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")
