"""The model, loaded and checked, and the fastest exact way to call it.

A kit model is ``Pipeline([("preprocess", ColumnTransformer(...)), ("model", estimator)])``
fitted on a DataFrame (see :func:`mlops_kit.train.build_pipeline`). Calling it with a
DataFrame costs milliseconds of pandas and validation for one row. The server instead feeds
each fitted column transformer its columns as a numpy array, stacks the outputs as the
ColumnTransformer does (``np.hstack``) and calls the estimator once for predictions and
probabilities - the same arithmetic, so the same results, without pandas. Any other model
shape is called with a DataFrame (pandas imported then). Either way the warm-up compares
the answers for ``examples.json`` with the predictions recorded at training time.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import _artifact_names as _names
from .. import model_io
from ..errors import ArtifactError
from ._validation import Batch, RequestSchema

SCHEMA_FILE = _names.SCHEMA
logger = logging.getLogger("mlops_kit.serving")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"No {path.name} at {path}.", path=path, hint="run the data and train stages first.")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{path} must be JSON. Got invalid JSON instead ({exc}).", path=path) from None


class Predictor:
    """The model of one artifacts folder: ``predict(batch) -> (predictions, probabilities)``."""

    platform = "scikit-learn"

    def __init__(self, model_dir: str | Path, *, max_rows: int, unknown_categories: str):
        import sklearn

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ArtifactError(f"The model folder must be a directory. Got {self.model_dir} instead.",
                                path=self.model_dir)
        self.card = model_io.read_card(self.model_dir)
        self.schema = _read_json(self.model_dir / SCHEMA_FILE)
        self.examples = _read_json(self.model_dir / model_io.EXAMPLES_FILE)
        self.model = model_io.load_model(self.model_dir)  # sha256 + pinned trusted types
        self.request_schema = RequestSchema(self.schema, max_rows=max_rows, unknown_categories=unknown_categories)
        names = list(self.request_schema.names)
        if list(self.card.get("features") or names) != names:
            raise ArtifactError(f"The model card's features must be the schema's: {names}. "
                                f"Got {self.card.get('features')} instead.", path=self.model_dir / model_io.CARD_FILE)
        self.estimator = self.model[-1] if hasattr(self.model, "steps") else self.model
        #: the loaded model's own type (not the card's word for it)
        self.estimator_name = type(self.estimator).__name__
        self.classes: list | None = (np.asarray(self.estimator.classes_).tolist()
                                     if hasattr(self.estimator, "predict_proba") and hasattr(self.estimator, "classes_")
                                     else None)
        self.task = "classification" if self.classes is not None else "regression"
        self._config = {"assume_finite": True, "skip_parameter_validation": True}
        self._config_context = sklearn.config_context
        self._transform = self._numpy_transform() or self._dataframe_transform
        self.path = "numpy" if self._transform != self._dataframe_transform else "dataframe"

    # -- calling the model -----------------------------------------------------------------
    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        with self._config_context(**self._config):
            transformed = self._transform(batch)
            predictions = self.estimator.predict(transformed)
            probabilities = self.estimator.predict_proba(transformed) if self.classes is not None else None
        return predictions, probabilities

    def _numpy_transform(self) -> Callable[[Batch], Any] | None:
        """The pipeline's preprocessing without pandas, or None when the model is not a
        kit-shaped pipeline (a ColumnTransformer over named columns, the rest dropped)."""
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline

        model = self.model
        if not (isinstance(model, Pipeline) and len(model.steps) >= 2
                and isinstance(model.steps[0][1], ColumnTransformer)):
            return None
        preprocess = model.steps[0][1]
        position = {name: i for i, name in enumerate(self.request_schema.names)}
        kinds = [f.kind for f in self.request_schema.features]
        blocks = []
        for name, transformer, columns in preprocess.transformers_:
            if isinstance(transformer, str) and transformer == "drop":
                continue
            if (isinstance(transformer, str) or not isinstance(columns, (list, tuple)) or not columns
                    or not all(isinstance(c, str) and c in position for c in columns)):
                return None
            indexes = [position[c] for c in columns]
            if len({kinds[i] for i in indexes}) != 1:
                return None
            transformer = copy.deepcopy(transformer)
            _forget_feature_names(transformer)
            dtype = np.float64 if kinds[indexes[0]] in ("numeric", "boolean") else object
            blocks.append((transformer, indexes, dtype))
        middle = [copy.deepcopy(step) for _, step in model.steps[1:-1]]
        if not blocks or preprocess.sparse_output_:
            return None

        def transform(batch: Batch) -> np.ndarray:
            columns = batch.columns
            outputs = []
            for transformer, indexes, dtype in blocks:
                # column-major, as pandas hands a frame's columns to the transformer: the
                # estimator's BLAS products then round exactly as they do in-process
                block = np.empty((batch.rows, len(indexes)), dtype=dtype, order="F")
                for j, i in enumerate(indexes):
                    block[:, j] = columns[i]
                out = transformer.transform(block)
                # the ColumnTransformer's output is dense (checked above), so it densified each
                # block: a one-hot encoder alone answers with a sparse matrix
                outputs.append(out.toarray() if hasattr(out, "toarray") else out)
            transformed = np.hstack(outputs)
            for step in middle:
                transformed = step.transform(transformed)
            return transformed

        return transform

    def _dataframe_transform(self, batch: Batch) -> Any:
        import pandas as pd

        frame = pd.DataFrame(dict(zip(self.request_schema.names, batch.columns)), columns=list(self.request_schema.names))
        transformed = frame
        for _, step in self.model.steps[:-1] if hasattr(self.model, "steps") else ():
            transformed = step.transform(transformed)
        return transformed

    # -- warm-up ---------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Predict ``examples.json`` and compare with the recorded predictions; raise
        ArtifactError when they differ (the server then never becomes ready)."""
        warm_up(self)

    # -- metadata --------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return str(self.card.get("sha256", ""))[:12] or "1"


def open_predictor(model_dir: str | Path, *, max_rows: int, unknown_categories: str,
                   runtime: str = "auto") -> Any:
    """The ONNX predictor when ``onnx.json`` says the compiled model passed its verification
    (and was compiled from this very skops model), else the skops :class:`Predictor`.
    ``runtime`` ``onnx`` or ``skops`` insists on one."""
    model_dir = Path(model_dir)
    if runtime != "skops":
        path = model_dir / _names.ONNX_REPORT
        report = None
        if path.is_file():       # the catalog (pydantic) only where there is an ONNX model to read
            from .. import artifacts

            report = artifacts.read_document(path, artifacts.OnnxReport)
        why = None
        if report is None:
            why = f"no {path} (04_package compiles the model)"
        elif not report.passed:
            why = f"the ONNX model did not pass its verification: {report.reason}"
        else:
            card_sha = _read_json(model_dir / model_io.CARD_FILE).get("sha256")
            if report.model_sha256 != card_sha:
                why = (f"{_names.ONNX_REPORT} was compiled from model {report.model_sha256[:12]}, "
                       f"not from this model ({str(card_sha)[:12]}): package the run again")
            elif model_io.run_stage(model_dir, "package") is not None:
                why = _onnx_of_the_run(model_dir, report.sha256)
        if why is None:
            from ._onnx import OnnxPredictor
            return OnnxPredictor(model_dir, report, max_rows=max_rows, unknown_categories=unknown_categories)
        if runtime == "onnx":
            raise ArtifactError(f"The ONNX runtime was asked for, and {model_dir} must hold a verified ONNX model. "
                                f"Got {why} instead.", path=model_dir)
        logger.info("serving the skops model: %s", why)
    return Predictor(model_dir, max_rows=max_rows, unknown_categories=unknown_categories)


def _onnx_of_the_run(model_dir: Path, sha256: str | None) -> str | None:
    """Served from a run's ``artifacts/``: None when ``run.json`` records the ONNX model
    ``onnx.json`` names (the file itself is checked against ``onnx.json`` when read); why not,
    when it records none. ArtifactError when it records another one."""
    recorded = model_io.recorded_onnx_sha256(model_dir)
    if recorded is None:
        return f"{_names.RUN} records no compiled model for this run (package it again)"
    if recorded != sha256:
        path = model_dir / _names.ONNX_MODEL
        raise ArtifactError(
            f"{path} is not the model its run compiled: sha256 must be {recorded} ({_names.RUN}, stage package). "
            f"Got {sha256} ({_names.ONNX_REPORT}) instead. The files were changed after packaging; "
            "nothing is served.", path=path)
    return None


def warm_up(predictor: Any, *, atol: float = 0.0, rtol: float = 0.0) -> None:
    """Predict ``examples.json`` with ``predictor`` and compare with the predictions recorded at
    training (numbers within ``atol + rtol * |recorded|``); ArtifactError when they differ."""
    examples = predictor.examples
    records = examples.get("records") if isinstance(examples, dict) else None
    expected = examples.get("predictions") if isinstance(examples, dict) else None
    path = predictor.model_dir / model_io.EXAMPLES_FILE
    if not records or not isinstance(expected, list) or len(expected) != len(records):
        raise ArtifactError(f"{path} must hold records and as many predictions. Got "
                            f"{len(records or [])} records and {len(expected or [])} predictions instead.", path=path)
    schema = RequestSchema(predictor.schema, max_rows=len(records), unknown_categories="tolerate")
    try:
        batch = schema.parse_records(records)
    except Exception as exc:
        raise ArtifactError(f"The examples in {path} must fit the schema. Got: {exc}", path=path) from None
    try:
        for _ in range(3):  # the first calls pay for imports and caches
            predictions, probabilities = predictor.predict(batch)
    except Exception as exc:
        raise ArtifactError(f"The warm-up prediction of {path} must succeed. Got {type(exc).__name__}: "
                            f"{exc} instead; the model is not served.", path=path) from None
    got = predictions.tolist()
    for row, (want, have) in enumerate(zip(expected, got)):
        close = (type(want) in (int, float) and type(have) is float
                 and abs(have - want) <= atol + rtol * abs(want))
        if want != have and not close:
            raise ArtifactError(
                f"The warm-up prediction for example {row} must be {want!r} (recorded at training). "
                f"Got {have!r} instead; the model is not served.", path=path)
    recorded = examples.get("probabilities")
    if recorded is not None and probabilities is not None:
        _compare_probabilities(recorded, probabilities, path, atol=max(atol, PROBABILITY_ATOL),
                               rtol=max(rtol, PROBABILITY_RTOL))


#: The least tolerance of the warm-up's probabilities (the skops model's numpy path computes
#: what the pipeline computed at training, up to the last bits of a BLAS sum)
PROBABILITY_ATOL, PROBABILITY_RTOL = 1e-9, 1e-7


def _compare_probabilities(recorded: Any, probabilities: Any, path: Path, *, atol: float, rtol: float) -> None:
    """ArtifactError unless the warm-up's probabilities are the recorded ones (within
    ``atol + rtol * |recorded|``): a model that answers the labels but not their
    probabilities is not the model that was trained."""
    try:
        want = np.asarray(recorded, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArtifactError(f"{path}: probabilities must be one row of numbers per record, all as long. Got "
                            f"{str(recorded)[:80]} instead.", path=path) from None
    have = np.asarray(probabilities, dtype=np.float64)
    if have.shape != want.shape:
        raise ArtifactError(f"The warm-up probabilities must have the shape recorded at training {list(want.shape)}. "
                            f"Got {list(have.shape)} instead; the model is not served.", path=path)
    close = np.abs(have - want) <= atol + rtol * np.abs(want)   # NaN is never close
    if not close.all():
        row = int(np.argwhere(~close)[0][0])
        raise ArtifactError(
            f"The warm-up probabilities for example {row} must be {want[row].tolist()} (recorded at training). "
            f"Got {have[row].tolist()} instead; the model is not served.", path=path)


def _forget_feature_names(transformer: Any) -> None:
    """Fitted on a DataFrame, a transformer warns (costly) on every numpy call; the server's
    columns are already checked by name, so the names are dropped from this private copy."""
    for step in [transformer, *getattr(transformer, "named_steps", {}).values()]:
        if "feature_names_in_" in getattr(step, "__dict__", {}):
            del step.feature_names_in_
