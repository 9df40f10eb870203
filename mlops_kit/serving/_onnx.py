"""The model compiled to ONNX (``model.onnx``), called by onnxruntime.

This path imports numpy and onnxruntime only: no scikit-learn, scipy or pandas (the lean
image has none of them). An ONNX file is data, not code: nothing in it is executed beyond
the standard operators, so no type allow-list is needed; its sha256 is still checked
against ``onnx.json`` (and, in a run folder, ``run.json``) before it is parsed, and a file
that differs is refused. A tensor whose data lives in another file is refused before the
session exists (:mod:`._onnx_graph`): onnxruntime would read that file.

The graph takes the numeric features as one ``[N, k]`` float64 matrix (``numeric_input``;
missing: NaN) and every other feature as an input of its own (``[N, 1]``; categorical ones
as strings). ONNX strings have no NaN, so a missing category
is fed as the report's ``missing_category`` marker (which the graph imputes, as the
pipeline's imputer does) and a request value equal to that marker as ``unseen_category``
(which the one-hot encoder ignores, as scikit-learn does for any unseen text).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts, model_io
from ..errors import ArtifactError
from ._validation import Batch, RequestSchema, show

logger = logging.getLogger("mlops_kit.serving")


def load(document: artifacts.DocumentArtifact, folder: Path) -> Any:
    """A catalog document from the model folder itself (the image's /app/model is no run folder)."""
    return artifacts.read_document(Path(folder) / document.name, document.model)


def read_verified(path: Path, sha256: str | None) -> bytes:
    """The ONNX file's bytes when their sha256 is the one ``onnx.json`` records."""
    return model_io.read_verified(path, sha256, record=artifacts.ONNX_REPORT.name, changed="after it was compiled")


def open_session(model: bytes, *, source: Path | str = artifacts.ONNX_MODEL.name) -> Any:
    """An onnxruntime session on one thread (one request at a time per worker; thread pools
    would only compete with the event loop), every graph optimisation on; for an ONNX model
    (not onnxruntime's own format) that holds every tensor itself."""
    import onnxruntime as ort

    from ._onnx_graph import external_tensors

    try:
        outside = external_tensors(model)
    except ValueError as exc:
        raise ArtifactError(f"{source} must be an ONNX model. Got {exc} instead.", path=source) from None
    if outside:
        raise ArtifactError(
            f"{source} must hold every tensor itself (the kit's models do). Got {len(outside)} tensor(s) whose data "
            f"is in another file instead ({', '.join(outside[:3])}): onnxruntime would read that file; "
            "it is not loaded.", path=source)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    options.add_session_config_entry("session.load_model_format", "ONNX")
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ArtifactError(f"{source} must be an ONNX model onnxruntime can run. Got {type(exc).__name__}: "
                            f"{str(exc)[:300]} instead.", path=source) from None


class OnnxFeeder:
    """Batch columns -> the session's input feed: the numeric features as one matrix when the
    graph takes them so (``numeric_input``), every other feature as an ``[N, 1]`` input."""

    def __init__(self, kinds: list[str], names: list[str], *, missing: str, unseen: str,
                 numeric_input: str | None = None):
        self.numeric_input = numeric_input
        self.numeric = [i for i, kind in enumerate(kinds) if kind == "numeric"] if numeric_input else []
        folded = set(self.numeric)
        self.inputs = [(name, i, kind == "categorical") for i, (name, kind) in enumerate(zip(names, kinds))
                       if i not in folded]
        self.missing = missing
        self.unseen = unseen

    def __call__(self, batch: Batch) -> dict[str, np.ndarray]:
        feed = {}
        if self.numeric_input:
            block = batch.numeric if batch.numeric is not None else np.column_stack(
                [batch.columns[i] for i in self.numeric])
            feed[self.numeric_input] = np.ascontiguousarray(block)
        missing, unseen = self.missing, self.unseen
        columns = batch.columns
        for name, i, categorical in self.inputs:
            column = columns[i]
            if categorical:
                texts = [(unseen if v == missing else v) if type(v) is str else missing for v in column.tolist()]
                feed[name] = np.array(texts, dtype=object).reshape(-1, 1)
            else:
                feed[name] = np.ascontiguousarray(column).reshape(-1, 1)
        return feed


def _unfolded(inputs: list[str], kinds: list[str]) -> list[str]:
    """Per feature, the graph input holding it (the numeric matrix for every numeric feature)."""
    others = iter(inputs[1:])
    return [inputs[0] if kind == "numeric" else next(others) for kind in kinds]


class OnnxModel:
    """A verified ``model.onnx``: ``run(batch) -> (predictions, probabilities)``."""

    def __init__(self, model: bytes, report: artifacts.OnnxReport, features: list[dict[str, Any]], *,
                 source: Path | str = artifacts.ONNX_MODEL.name):
        self.report = report
        self.session = open_session(model, source=source)
        inputs = [i.name for i in self.session.get_inputs()]
        kinds = [f["kind"] for f in features]
        expected = (1 + sum(kind != "numeric" for kind in kinds)) if report.numeric_input else len(kinds)
        if inputs != list(report.inputs) or len(inputs) != expected or (
                report.numeric_input and inputs[0] != report.numeric_input):
            raise ArtifactError(f"{source} must take the inputs onnx.json records ({expected}: "
                                f"{show(list(report.inputs))}). Got inputs {show(inputs)} instead.", path=source)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.classification = report.task == "classification"
        if self.classification and len(self.outputs) < 2:
            raise ArtifactError(f"{source} must output labels and probabilities. Got {self.outputs} instead.",
                                path=source)
        # graph inputs are in the schema's order: the numeric matrix first, then the others
        names = inputs if not report.numeric_input else _unfolded(inputs, kinds)
        self.feed = OnnxFeeder(kinds, names, missing=report.missing_category,
                               unseen=report.unseen_category, numeric_input=report.numeric_input)
        self.wanted = self.outputs[:2] if self.classification else self.outputs[:1]

    def run(self, batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.session.run(self.wanted, self.feed(batch))
        predictions = outputs[0].reshape(-1)
        if self.classification:
            return predictions, outputs[1]
        return predictions.astype(np.float64, copy=False), None


class OnnxPredictor:
    """The skops :class:`~._predictor.Predictor`'s interface on the ONNX model."""

    path = "onnx"
    platform = "onnxruntime"

    def __init__(self, model_dir: str | Path, report: artifacts.OnnxReport, *, max_rows: int,
                 unknown_categories: str):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ArtifactError(f"The model folder must be a directory. Got {self.model_dir} instead.",
                                path=self.model_dir)
        self.card = load(artifacts.MODEL_CARD, self.model_dir).to_json()
        #: the estimator the verified graph was compiled from (onnx.json ties it to the skops model's sha256)
        self.estimator_name = str(self.card.get("estimator") or "unknown")
        self.schema = load(artifacts.SCHEMA, self.model_dir).to_json()
        self.examples = load(artifacts.EXAMPLES, self.model_dir).to_json()
        self.report = report
        path = self.model_dir / artifacts.ONNX_MODEL.name
        self.model = OnnxModel(read_verified(path, report.sha256), report, self.schema["features"], source=path)
        self.request_schema = RequestSchema(self.schema, max_rows=max_rows, unknown_categories=unknown_categories)
        names = list(self.request_schema.names)
        if list(self.card.get("features") or names) != names:
            raise ArtifactError(f"The model card's features must be the schema's: {names}. "
                                f"Got {self.card.get('features')} instead.", path=self.model_dir / artifacts.MODEL_CARD.name)
        self.classes = list(report.classes) if report.task == "classification" else None
        self.task = report.task
        self.predict = self.model.run

    def warm_up(self) -> None:
        from ._predictor import warm_up

        check = self.report.check
        warm_up(self, atol=check.atol if check else 0.0, rtol=check.rtol if check else 0.0)

    @property
    def version(self) -> str:
        return str(self.card.get("sha256", ""))[:12] or "1"
