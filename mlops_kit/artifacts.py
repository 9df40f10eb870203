"""The artifact catalog: every artifact and record of a run, declared once.

Each entry says what a file is called, which stage writes it, the typed model of its
content (pydantic) and how it is saved (atomically) and loaded (size-bounded, parsed and
validated, with an :class:`~mlops_kit.errors.ArtifactError` that names the file and the
field). Stages, notebooks, the ledger, the cache, image, deploy, serving and the panels go
through this module: no other module spells an artifact's file name or reads one of these
documents as a bare dict.

>>> from mlops_kit import artifacts
>>> metrics = artifacts.METRICS.load(run_dir)          # a typed Metrics, or ArtifactError
>>> metrics.gate.passed
>>> artifacts.METRICS.save(run_dir, metrics)           # validated, atomic

``folder`` arguments take a run folder or its ``artifacts/`` folder alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import _artifact_names as N
from . import _atomic, _paths
from .errors import ArtifactError

#: A JSON document the kit reads is never larger than this (a crafted run folder must not
#: exhaust memory); the model card and metrics are a few KiB.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

Scalar = Union[bool, int, float, str, None]


class Document(BaseModel):
    """A JSON document the kit writes. Unknown keys are refused on load: a document whose
    shape drifted from its producer's fails where it is read, with the key named."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class OpenDocument(Document):
    """A record whose producer adds keys of its own (a deploy target, a builder)."""

    model_config = ConfigDict(extra="allow", defer_build=True)


# --- documents ------------------------------------------------------------------------------

class Feature(Document):
    """A feature the model takes. In requests: numeric a number, boolean ``true``/``false``,
    datetime an ISO 8601 string, categorical and text a string; missing ``null``."""

    name: str
    kind: Literal["numeric", "categorical", "boolean", "datetime", "text"]
    dtype: str
    nullable: bool
    min: Optional[float] = None
    max: Optional[float] = None
    integer: Optional[bool] = None
    #: the levels seen in training (None for a categorical: too many to list, any text accepted)
    categories: Optional[list[Scalar]] = None
    #: categorical: onehot, grouped (rare levels as one) or target (TargetEncoder)
    encoding: Optional[Literal["onehot", "grouped", "target"]] = None
    levels: Optional[int] = None
    #: grouped: one-hot columns at most (the rarest levels share one)
    max_categories: Optional[int] = None
    min_date: Optional[str] = None
    max_date: Optional[str] = None


class ColumnNote(Document):
    """What 01_data did with one column of the table."""

    name: str
    kind: Literal["numeric", "categorical", "boolean", "datetime", "text", "dropped", "target"]
    action: str


class DroppedColumn(Document):
    name: str
    reason: str


class DataSchema(Document):
    """``schema.json`` (01_data): the features the model takes, and the target."""

    version: int
    task: Literal["classification", "regression"]
    target: str
    target_dtype: str
    features: list[Feature]
    dropped: list[DroppedColumn] = Field(default_factory=list)
    rows: int
    #: rows of the table left out for a missing label (data.drop_missing_target)
    unlabeled_rows_dropped: int = 0
    classes: Optional[list[Scalar]] = None
    fingerprint: Optional[str] = None
    #: one note per column of the table, in its order
    columns: Optional[list[ColumnNote]] = None
    #: rows the plots of 01_data and 03_evaluate are drawn from (at most)
    plot_sample: Optional[int] = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


class CrossValidation(Document):
    metric: str
    scores: list[float]
    mean: float


class ModelCard(Document):
    """``model_card.json`` (02_train): what the model is, its hash, how it was made."""

    file: str
    sha256: str
    bytes: int
    model: str
    estimator: str
    params: dict[str, Any]
    seed: int
    task: Literal["classification", "regression"]
    target: str
    features: list[str]
    classes: Optional[list[Scalar]] = None
    data_fingerprint: Optional[str] = None
    train_seconds: Optional[float] = None
    cv: Optional[CrossValidation] = None
    versions: dict[str, str] = Field(default_factory=dict)
    created: str


class Examples(Document):
    """``examples.json`` (02_train): rows of the test split and what the model answered for
    them. Every deployment's smoke test sends these records (see :func:`smoke_request`)."""

    records: list[dict[str, Scalar]]
    predictions: list[Scalar]
    #: a classifier's probabilities for the records (one row each, in ``classes_`` order):
    #: the warm-up compares them too, not the labels only
    probabilities: Optional[list[list[float]]] = None


class GateCheck(Document):
    metric: str
    threshold: float
    value: Optional[float] = None
    passed: bool
    reason: str
    #: the dummy baseline's value, for the check "beats the dummy by the margin"
    baseline: Optional[float] = None


class GateResult(Document):
    passed: bool
    checks: list[GateCheck] = Field(default_factory=list)

    def failures(self) -> list[str]:
        return [check.reason for check in self.checks if not check.passed]


class Metrics(Document):
    """``metrics.json`` (03_evaluate): scores on the test split and the gate's verdict."""

    task: Literal["classification", "regression"]
    model: str
    data_fingerprint: Optional[str] = None
    metrics: dict[str, Optional[float]]
    gate: GateResult
    comparison: Optional[dict[str, Any]] = None
    #: the dummy baseline's metrics on the same split
    baseline: Optional[dict[str, Optional[float]]] = None
    #: what the reader should know (e.g. a class with too few test rows)
    warnings: list[str] = Field(default_factory=list)


class OnnxCheck(Document):
    """How the ONNX model was verified against the skops pipeline, row by row."""

    rows: int
    #: the edge rows added to the test split (a missing value, an unseen category per feature)
    edge_rows: int = 0
    predictions_equal: bool
    mismatched_predictions: int = 0
    #: probabilities (classification) or predictions (regression)
    compared: Literal["probabilities", "predictions"]
    max_abs_diff: Optional[float] = None
    atol: float
    rtol: float


class OnnxReport(Document):
    """``onnx.json`` (04_package): the pipeline compiled to ONNX and verified on the whole
    test split, or why the skops model is served instead (``passed`` false, ``reason``)."""

    passed: bool
    reason: Optional[str] = None
    #: the skops model it was compiled from (a retrained model makes the report stale)
    model_sha256: str
    file: Optional[str] = None
    sha256: Optional[str] = None
    bytes: Optional[int] = None
    estimator: str
    task: Literal["classification", "regression"]
    #: the estimator's ``classes_`` in the order of the probability columns
    classes: Optional[list[Scalar]] = None
    #: the ONNX graph's inputs: ``numeric_input`` first when set, then one per other feature,
    #: in the schema's order (without ``numeric_input``: one per feature)
    inputs: list[str] = Field(default_factory=list)
    #: the one ``[N, k]`` float64 input holding every numeric feature, in the schema's order
    numeric_input: Optional[str] = None
    outputs: list[str] = Field(default_factory=list)
    #: what a missing category is fed as (ONNX strings have no NaN), and what a request's
    #: value equal to that marker is fed as instead (an unseen category, as in skops)
    missing_category: str = ""
    unseen_category: str = "\x00"
    check: Optional[OnnxCheck] = None
    opset: dict[str, int] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    seconds: Optional[float] = None
    created: str


class ImageSize(Document):
    compressed: Optional[int] = None
    unpacked: Optional[int] = None


class ImageRecord(OpenDocument):
    """``image.json`` (04_package): the image built for the run and where it went."""

    ref: str
    tag: str
    image: str
    digest: Optional[str] = None
    run_id: str
    builder: str
    content_digest: str
    size: ImageSize = Field(default_factory=ImageSize)
    layers: list[dict[str, Any]] = Field(default_factory=list)
    base: dict[str, Any] = Field(default_factory=dict)
    imported: Optional[dict[str, Any]] = None
    layout: Optional[str] = None
    archive: Optional[str] = None
    requirements: Any = None
    seconds: dict[str, float] = Field(default_factory=dict)
    created: str


class Release(OpenDocument):
    """``release.json`` (05_deploy): what serves the run's model now, on which target."""

    target: Literal["local", "microk8s"]
    run_id: str
    smoke: Optional[dict[str, Any]] = None


class ReleaseEntry(OpenDocument):
    """One entry of a target's release history (kept in the cluster for microk8s)."""

    revision: int
    run_id: Optional[str] = None
    status: str
    time: str


class ReleaseHistory(Document):
    releases: list[ReleaseEntry]


class Champion(OpenDocument):
    """``runs/champion.json``: the promoted run, with who, when and why, and the history."""

    run: str
    history: list[dict[str, Any]] = Field(default_factory=list)


class Overhead(Document):
    """A run's seconds outside its stages (:mod:`mlops_kit._timing`), written when it ends:
    ``wall`` from the process's start (or the runner's) to the final record, ``stages`` the
    executed stages' seconds, ``seconds`` the rest, split into ``phases`` (start-up,
    parameters, preflight, planning, hashing, kernel start, cache reuse, report export,
    record) and ``other``, what no phase names: ``stages + sum(phases) == wall``. ``kernels``:
    ``warm`` when they were forked from the warm kernels' parent an earlier run left
    (``MLOPS_KIT_WARM_MINUTES``; the libraries' imports were not this run's)."""

    seconds: float
    wall: float
    stages: float
    phases: dict[str, float]
    kernels: Optional[Literal["warm"]] = None


class RunRecord(OpenDocument):
    """``run.json``: the run's record, kept by :mod:`mlops_kit.ledger`."""

    id: str
    created: Optional[str] = None
    status: str
    #: ``pipeline`` (data ... deploy) or ``monitor`` (06_monitor: a deployed model watched);
    #: records older than the kinds are pipelines (:func:`mlops_kit.ledger.run_kind`)
    kind: Literal["pipeline", "monitor"] = "pipeline"
    params: Optional[dict[str, Any]] = None
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    overhead: Optional[Overhead] = None


class SweepTrial(Document):
    """One setting of a sweep: its values, the run that tried it (None when it failed before
    its run existed: a hyperparameter refused by scikit-learn), how that ended."""

    index: int
    setting: dict[str, Scalar]
    status: Literal["pending", "running", "succeeded", "failed", "interrupted"] = "pending"
    run: Optional[str] = None
    error: Optional[str] = None
    attempts: int = 0


class SweepRecord(Document):
    """``sweeps/<id>/sweep.json``: a sweep's record, kept by :mod:`mlops_kit.ledger`. ``params``
    are the base parameters (each trial's run records its own); ``data_run`` the run whose data
    stage every trial reuses; ``metric`` the leaderboard's (the gate's baseline metric)."""

    id: str
    created: str
    status: Literal["running", "succeeded", "partial", "failed", "interrupted"]
    grid: dict[str, list[Scalar]]
    params: dict[str, Any]
    parameter_files: list[str] = Field(default_factory=list)
    overrides: list[str] = Field(default_factory=list)
    jobs: int = Field(ge=1)
    metric: Optional[str] = None
    higher_is_better: bool = True
    data_run: Optional[str] = None
    trials: list[SweepTrial]
    pid: Optional[int] = None
    host: Optional[str] = None
    finished: Optional[str] = None
    resumed: list[str] = Field(default_factory=list)
    report: Optional[str] = None
    error: Optional[str] = None


D = TypeVar("D", bound=Document)


# --- the catalog ----------------------------------------------------------------------------

def artifacts_dir(folder: str | os.PathLike) -> Path:
    """The ``artifacts/`` folder of a run folder (or the folder itself if it is one)."""
    folder = Path(folder)
    return folder if folder.name == _paths.ARTIFACTS_SUBDIR else folder / _paths.ARTIFACTS_SUBDIR


@dataclass(frozen=True)
class Artifact:
    """A file a stage writes into ``artifacts/``."""

    name: str
    producer: str
    description: str
    #: False for what a stage may write beside its outputs (a plot): the run does not fail
    #: without it, and a reused stage brings it along when the earlier run has it
    required: bool = field(default=True, kw_only=True)

    def path(self, folder: str | os.PathLike) -> Path:
        return artifacts_dir(folder) / self.name

    def exists(self, folder: str | os.PathLike) -> bool:
        return self.path(folder).is_file()

    def require(self, folder: str | os.PathLike) -> Path:
        """The path, or an ArtifactError that names the stage that writes it."""
        path = self.path(folder)
        if not path.is_file():
            raise missing(self, path)
        return path


@dataclass(frozen=True)
class DocumentArtifact(Artifact, Generic[D]):
    """A JSON artifact with a typed model: a Document class, or ``"module:Class"`` for a model
    whose module imports more than this one (imported on first use: see :attr:`document_model`)."""

    model: type | str = Document

    @property
    def document_model(self) -> type[D]:
        if isinstance(self.model, str):
            import importlib

            module, _, name = self.model.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.model

    def load(self, folder: str | os.PathLike) -> D:
        return read_document(self.require(folder), self.document_model)

    def load_if_present(self, folder: str | os.PathLike) -> D | None:
        return self.load(folder) if self.exists(folder) else None

    def save(self, folder: str | os.PathLike, document: D | dict) -> Path:
        return write_document(self.path(folder), self.document_model, document)


@dataclass(frozen=True)
class RunFile(Generic[D]):
    """A record beside ``artifacts/``: ``run.json`` in a run folder, ``champion.json`` in the
    runs folder."""

    name: str
    description: str
    model: type = Document

    def path(self, folder: str | os.PathLike) -> Path:
        return Path(folder) / self.name

    def exists(self, folder: str | os.PathLike) -> bool:
        return self.path(folder).is_file()

    def load(self, folder: str | os.PathLike) -> D:
        path = self.path(folder)
        if not path.is_file():
            raise ArtifactError(f"{path} must exist. Got no file there instead.", path=path)
        return read_document(path, self.model)

    def save(self, folder: str | os.PathLike, document: D | dict) -> Path:
        return write_document(self.path(folder), self.model, document)


TRAIN_SPLIT = Artifact(N.TRAIN_SPLIT, "data", "the training split (parquet)")
TEST_SPLIT = Artifact(N.TEST_SPLIT, "data", "the held-out test split (parquet)")
SCHEMA: DocumentArtifact[DataSchema] = DocumentArtifact(N.SCHEMA, "data", "features, target and classes",
                                                        DataSchema)
TARGET_PLOT = Artifact(N.TARGET_PLOT, "data", "the target's distribution", required=False)
MODEL = Artifact(N.MODEL, "train", "the fitted pipeline (skops, never pickle)")
MODEL_CARD: DocumentArtifact[ModelCard] = DocumentArtifact(N.MODEL_CARD, "train",
                                                           "the model's hash, parameters and versions", ModelCard)
EXAMPLES: DocumentArtifact[Examples] = DocumentArtifact(N.EXAMPLES, "train",
                                                        "test rows and the model's answers: the smoke test",
                                                        Examples)
METRICS: DocumentArtifact[Metrics] = DocumentArtifact(N.METRICS, "evaluate", "scores and the gate",
                                                      Metrics)
EVALUATION_PLOT = Artifact(N.EVALUATION_PLOT, "evaluate", "confusion matrix / ROC, or residuals", required=False)
ONNX_MODEL = Artifact(N.ONNX_MODEL, "package", "the pipeline compiled to ONNX (data, not code)", required=False)
ONNX_REPORT: DocumentArtifact[OnnxReport] = DocumentArtifact(
    N.ONNX_REPORT, "package", "the ONNX model's sha256 and its verification on the test split", OnnxReport,
    required=False)
IMAGE: DocumentArtifact[ImageRecord] = DocumentArtifact(N.IMAGE, "package", "the image built and where it went",
                                                        ImageRecord)
RELEASE: DocumentArtifact[Release] = DocumentArtifact(N.RELEASE, "deploy", "what serves the model now",
                                                      Release)
#: the training split in the bins live traffic is counted in (mlops_kit.monitor; pandas and
#: scipy are imported when it is loaded, not with the catalog)
MONITOR_PROFILE: DocumentArtifact[Any] = DocumentArtifact(
    N.MONITOR_PROFILE, "train", "the training split's bins and counts, the reference of monitoring",
    "mlops_kit.monitor._profile:Profile")
#: 06_monitor's report: drift, data quality, live metrics and the verdict (mlops_kit.monitor)
MONITOR_REPORT: DocumentArtifact[Any] = DocumentArtifact(
    N.MONITOR_REPORT, "monitor", "drift, data quality and live metrics of the request log, the verdict",
    "mlops_kit.monitor._report:MonitorReport")
MONITOR_PLOT = Artifact(N.MONITOR_PLOT, "monitor", "training vs live for the top features", required=False)
RUN: RunFile[RunRecord] = RunFile(N.RUN, "the run's record (mlops_kit.ledger)", RunRecord)
CHAMPION: RunFile[Champion] = RunFile(N.CHAMPION, "the promoted run (in the runs folder)", Champion)
SWEEP: RunFile[SweepRecord] = RunFile(N.SWEEP, "a sweep's record (mlops_kit.ledger)", SweepRecord)
#: The release history's key inside its ConfigMap (microk8s) or state file (local).
RELEASE_HISTORY_KEY = N.RELEASE_HISTORY_KEY

CATALOG: tuple[Artifact, ...] = (TRAIN_SPLIT, TEST_SPLIT, SCHEMA, TARGET_PLOT, MODEL, MODEL_CARD, EXAMPLES,
                                 MONITOR_PROFILE, METRICS, EVALUATION_PLOT, ONNX_MODEL, ONNX_REPORT, IMAGE, RELEASE,
                                 MONITOR_REPORT, MONITOR_PLOT)
BY_NAME: dict[str, Artifact] = {artifact.name: artifact for artifact in CATALOG}
_BUILTIN = CATALOG


def produced_by(stage: str) -> tuple[Artifact, ...]:
    """What a stage writes, as the catalog declares (its outputs, then its extras)."""
    return tuple(a for a in CATALOG if a.producer == stage)


def register(artifact: Artifact) -> Artifact:
    """Add an artifact of a registered stage (:func:`mlops_kit.stages.register`)."""
    global CATALOG
    if artifact.name in BY_NAME or artifact.name in (RUN.name, CHAMPION.name, SWEEP.name):
        raise ValueError(f"the catalog has an artifact named {artifact.name!r} already")
    CATALOG = (*CATALOG, artifact)
    BY_NAME[artifact.name] = artifact
    return artifact


def unregister_producer(stage: str) -> None:
    """Remove the artifacts a registered stage added."""
    global CATALOG
    gone = [a for a in CATALOG if a.producer == stage and a not in _BUILTIN]
    CATALOG = tuple(a for a in CATALOG if a not in gone)
    for artifact in gone:
        BY_NAME.pop(artifact.name, None)


def missing(artifact: Artifact, path: Path) -> ArtifactError:
    from .stages import BY_NAME as STAGES

    stage = STAGES[artifact.producer]
    return ArtifactError(
        f"{path} must exist ({artifact.description}). Got no file there instead: stage {stage.name!r} "
        f"({stage.notebook}) writes it.", path=path,
        hint=f"run {stage.notebook} first (with the same run_dir), or `mlops-kit run`.")


# --- reading and writing --------------------------------------------------------------------

def read_document(path: Path, model: type[D]) -> D:
    """Parse and validate a JSON document: bounded in size, every problem named by field."""
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise ArtifactError(f"{path} must be at most {MAX_DOCUMENT_BYTES} bytes. Got {size} bytes instead.",
                                path=path)
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{path} must exist. Got no file there instead.", path=path) from None
    except PermissionError:
        raise ArtifactError(f"{path} must be readable by this user. Got permission denied instead.",
                            path=path) from None
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} must be a JSON document. Got unreadable text instead ({exc}).",
                            path=path) from None
    return validate_document(data, model, source=str(path))


def validate_document(data: Any, model: type[D], *, source: str) -> D:
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(f"{source} is not a valid {model.__name__}: {describe_validation(exc)}",
                            path=source) from None


def describe_validation(exc: ValidationError, limit: int = 5) -> str:
    """``key.sub: expected ...; found ...`` for the first few problems."""
    parts = []
    for error in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        found = error.get("input")
        shown = type(found).__name__ if isinstance(found, (dict, list)) else repr(found)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        if error["type"] == "extra_forbidden":
            parts.append(f"{where}: expected no such key; found one")
        elif error["type"] == "missing":
            parts.append(f"{where}: expected a value; found none")
        else:
            parts.append(f"{where}: {error['msg'].lower()}; found {shown}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def write_document(path: Path, model: type[D], document: D | dict) -> Path:
    """Validate, then write atomically (a temp file renamed into place)."""
    typed = validate_document(document, model, source=str(path))
    return _atomic.write_json(path, typed.model_dump(mode="json", exclude_none=False))


def smoke_request(examples: Examples) -> list[dict[str, Scalar]]:
    """The one body every deployment's smoke test posts to ``/predict``: the recorded rows as
    a JSON list of records (the server reads an object as columns)."""
    return [dict(record) for record in examples.records]
