"""The parameter schema, declared once, and the loader of parameter files.

A parameter file is YAML with one section per stage plus shared keys. An overlay names
its base with ``extends:``; ``--set section.key=value`` overrides a value, typed by the
schema. Every mistake is found here, before any stage starts, and reported with the file,
the key, what was expected and what was found.

Secrets are never parameters: ``deploy.secret_env`` names environment variables whose
values go, at deploy time, only into a Kubernetes Secret.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from . import _paths
from .stages import DEFAULT_STAGES, STAGE_NAMES
from .serving import ServeSettings as _ServeDefaults
from .errors import ParameterError, ParameterProblem

#: Data sets bundled with scikit-learn (no download): ``data.source: sklearn:<name>``.
SKLEARN_DATASETS = {
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "digits": "classification",
    "diabetes": "regression",
}
DATA_FILE_SUFFIXES = (".csv", ".parquet", ".pq")

#: Metrics a gate may name, with the direction that is better.
METRIC_DIRECTIONS = {
    "classification": {"accuracy": "min", "balanced_accuracy": "min", "precision": "min",
                       "recall": "min", "f1": "min", "roc_auc": "min", "pr_auc": "min"},
    "regression": {"r2": "min", "rmse": "max", "mae": "max"},
}

#: The estimators ``train.model`` can name, per task (the classes live in mlops_kit.train).
MODEL_NAMES = ("logistic_regression", "linear", "ridge", "random_forest", "gradient_boosting",
               "hist_gradient_boosting", "dummy")

#: The metric the default gate compares with the dummy baseline, per task: scale-free, so
#: one margin holds for any data set (the dummy scores 1/classes, or about 0).
BASELINE_METRICS = {"classification": "balanced_accuracy", "regression": "r2"}

#: What ``data.columns.<name>`` may force a column to be (``auto``: inferred).
COLUMN_KINDS = ("auto", "numeric", "categorical", "boolean", "datetime", "text", "drop")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_IMAGE_REPO = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")


def _is_number(annotation: Any) -> bool:
    return annotation in (int, float) or (set(getattr(annotation, "__args__", ())) - {type(None)}) in ({int}, {float})


def _refuse_booleans(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """YAML 1.1 reads yes/no/on/off as booleans, and a boolean would pass as 1 or 0."""
    field = model.model_fields.get(info.field_name or "")
    if isinstance(value, bool) and field is not None and _is_number(field.annotation):
        raise ValueError(f"a number; found {value!r} (YAML reads yes/no/on/off/true/false as a boolean)")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        return _refuse_booleans(cls, value, info)


class DataParams(_Section):
    """01_data: where the data comes from and how it is split."""

    source: str = Field("sklearn:breast_cancer",
                        description="sklearn:<name> (bundled data set) or a path to a CSV/parquet file")
    target: str = Field("target", description="the label column")
    test_size: float = Field(0.2, gt=0, lt=1, description="fraction of rows held out for evaluation")
    min_rows: int = Field(20, ge=2, description="fewer rows than this is an error")
    drop_missing_target: bool = Field(False, description="drop the rows whose target is missing (counted in "
                                      "01_data's summary); false: such rows are an error")
    columns: dict[str, Literal[COLUMN_KINDS]] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="force a column's kind: " + ", ".join(COLUMN_KINDS)
        + " (text: hashed words; drop: left out)")
    dates: Literal["calendar", "drop"] = Field(
        "calendar", description="date and datetime columns: calendar features (year, month, day of week, "
        "...) or dropped")
    high_cardinality: Literal["group", "target_encode"] = Field(
        "group", description="categorical columns with more than max_categories levels: the rarest levels "
        "grouped into one, or target-encoded (TargetEncoder)")
    max_categories: int = Field(30, ge=2, description="levels one-hot encoded per categorical column at most")
    plot_sample: int = Field(20_000, ge=100, description="rows drawn (seeded) for the plots of 01_data and "
                             "03_evaluate, so reports stay small whatever the table's size")

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith("sklearn:"):
            name = value.split(":", 1)[1]
            if name not in SKLEARN_DATASETS:
                raise ValueError(_choice_error("a bundled scikit-learn data set", name, SKLEARN_DATASETS))
            return value
        path = Path(value).expanduser()
        if path.suffix.lower() not in DATA_FILE_SUFFIXES:
            raise ValueError(f"sklearn:<name> or a path ending in {', '.join(DATA_FILE_SUFFIXES)}; "
                             f"found {value!r}")
        resolved = path if path.is_absolute() else Path.cwd() / path
        if (info.context or {}).get("recorded"):
            return str(resolved)  # a finished run's record: the file may be gone, nothing reads it
        roots = _paths.data_roots()
        if roots is not None and not any(resolved.resolve().is_relative_to(root) for root in roots):
            # on the team's server: a pushed file names data of the push, never the server's files
            raise ValueError("a data file inside the pushed repository or the runs folder (on the team's server); "
                             f"found {value!r}, outside them")
        if not resolved.is_file():
            raise ValueError(f"an existing data file; found no file at {str(resolved)!r}")
        return str(resolved.resolve())


class TrainParams(_Section):
    """02_train: the estimator and its hyperparameters."""

    model: str = Field("logistic_regression", description="a named estimator: " + ", ".join(MODEL_NAMES))
    params: dict[str, Any] = Field(default_factory=dict, description="hyperparameters of the chosen model only "
                                   "(none: the registry's defaults for it, mlops_kit.train.ESTIMATORS)")
    cv_folds: int = Field(5, ge=0, le=20, description="k-fold cross-validation on the training split (0: off)")
    class_weight: Optional[Literal["balanced"]] = Field(
        None, description="balanced: weigh each class by the inverse of its share (imbalanced classes); "
        "none: every row counts the same")

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if value not in MODEL_NAMES:
            raise ValueError(_choice_error("a named estimator", value, MODEL_NAMES))
        return value

    @field_validator("cv_folds")
    @classmethod
    def _check_folds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("0 (off) or at least 2 folds; found 1")
        return value


class EvaluateParams(_Section):
    """03_evaluate: the quality gate a model must pass to be packaged."""

    gate: dict[str, float] = Field(default_factory=dict,
                                   description="absolute thresholds of your choice: a minimum for scores, a "
                                   "maximum for errors (rmse, mae)")
    baseline_metric: Optional[str] = Field(
        None, description="the metric compared with the dummy baseline on the same split (none: "
        + ", ".join(f"{m} for {t}" for t, m in BASELINE_METRICS.items()) + ")")
    baseline_margin: Optional[float] = Field(
        0.02, ge=0, description="the model must beat the dummy baseline by this much: points of a score, or "
        "a fraction of an error (none: no baseline check)")


class PackageParams(_Section):
    """04_package: how the container image is built and where it goes."""

    builder: Literal["auto", "layers", "buildah", "docker", "podman", "nerdctl"] = "auto"
    image: str = Field("mlops-kit/model", description="image repository; the tag is the run id and content")
    base_image: Optional[str] = Field(None, description="a base image to pull (e.g. python:3.11-slim); "
                                      "none: the locally built Debian base")
    containerd_socket: Optional[str] = Field(None, description="containerd socket for `ctr` "
                                             "(none: microk8s ctr when MicroK8s is installed)")
    containerd_namespace: str = "k8s.io"
    registry: Optional[str] = Field(None, description="push to this registry instead of importing "
                                    "(e.g. localhost:32000)")
    import_image: bool = Field(True, description="import the built image into containerd")
    runtime: Literal["auto", "onnx", "skops"] = Field(
        "auto", description="what serves the model: onnx (compiled and verified on the test split; a lean "
        "image without scikit-learn), skops, or auto (onnx when it verifies, else skops)")

    @field_validator("image")
    @classmethod
    def _check_image(cls, value: str) -> str:
        if ":" in value.rsplit("/", 1)[-1] or "@" in value:
            raise ValueError(f"a repository name without a tag (the kit tags by run id); found {value!r}")
        if not _IMAGE_REPO.match(value):
            raise ValueError(f"a lower-case image repository such as 'mlops-kit/model'; found {value!r}")
        return value


class DeployParams(_Section):
    """05_deploy: where the model runs and how it is exposed."""

    target: Literal["local", "microk8s"] = "local"
    namespace: str = "mlops-kit"
    name: str = Field("model-server", description="name of the Deployment and Service")
    replicas: int = Field(1, ge=0, le=50)
    service_type: Literal["ClusterIP", "NodePort"] = "ClusterIP"
    port: int = Field(8080, ge=1, le=65535, description="the Service's port")
    node_port: Optional[int] = Field(None, ge=30000, le=32767)
    kubernetes_version: str = Field("1.33.0", description="schema version the manifests are validated against")
    rollout_timeout: float = Field(300, gt=0, description="seconds to wait for the rollout")
    secret_env: list[str] = Field(default_factory=list,
                                  description="names of environment variables whose values go into "
                                  "the Kubernetes Secret (names only, never values)")
    local_port: Optional[int] = Field(None, ge=1, le=65535, description="port of the local target (none: a free one)")

    @field_validator("namespace", "name")
    @classmethod
    def _check_dns(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError("a DNS label (lower-case letters, digits and '-', at most 63, starting and "
                             f"ending with a letter or digit); found {value!r}")
        return value

    @field_validator("secret_env")
    @classmethod
    def _check_env_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"environment variable names; found {name!r}")
        return value


class MonitorParams(_Section):
    """What the model server records (``serve.monitor``): the live drift window always, and a
    sample of the requests in a log (06_monitor reads it)."""

    sample: float = Field(_ServeDefaults.log_sample, ge=0, le=1,
                          description="share of requests written to the request log (0: no log)")
    log_dir: Optional[str] = Field(None, description="the request log's folder for local deploys (none: "
                                   "runs/.requests/<run_id>/); on MicroK8s the pod's emptyDir "
                                   "/var/lib/mlops-kit/requests")
    window: int = Field(_ServeDefaults.drift_window, ge=1, description="rows in the live drift window (/metrics)")
    max_file_bytes: int = Field(_ServeDefaults.log_max_file_bytes, ge=1024,
                                description="a request log file is rotated at this size")
    max_total_bytes: int = Field(_ServeDefaults.log_max_total_bytes, ge=1024,
                                 description="the oldest log files are deleted beyond this total")
    admin_port: int = Field(8081, ge=1, le=65535, description="on MicroK8s, the pod's port that serves the "
                            "request log to `mlops-kit monitor` (through the API server's pod proxy; never "
                            "exposed by the Service)")

    @model_validator(mode="after")
    def _file_within_total(self) -> "MonitorParams":
        if self.max_file_bytes > self.max_total_bytes:
            raise ValueError(f"max_file_bytes must be at most max_total_bytes ({self.max_total_bytes}). "
                             f"Got {self.max_file_bytes} instead")
        return self


class ServeParams(_Section):
    """The model server's limits (in the image and behind `mlops-kit serve`); the defaults
    are the server's own."""

    max_rows: int = Field(_ServeDefaults.max_rows, ge=1, description="rows per request at most")
    max_body_bytes: int = Field(_ServeDefaults.max_body_bytes, ge=1024, description="request body size limit")
    unknown_categories: Literal["tolerate", "reject"] = Field(
        _ServeDefaults.unknown_categories,
        description="categories unseen in training: tolerate (the one-hot encoder ignores them) or reject (422)")
    monitor: MonitorParams = Field(default_factory=MonitorParams)


class MonitorStageParams(_Section):
    """06_monitor: the deployed model's live traffic against its training split (a run of kind
    ``monitor``; `mlops-kit monitor` fills these keys)."""

    model_run: Optional[str] = Field(None, description="the run whose model is watched (none: the champion)")
    log_dir: Optional[str] = Field(None, description="the request log's folder (none: the local deploy's, "
                                   "runs/.requests/<model_run>/)")
    labels: Optional[str] = Field(None, description="late labels: a CSV or parquet file of request_id "
                                  "(+ row) and the target column")
    export_labelled: Optional[str] = Field(None, description="write the labelled live rows here (.csv or "
                                           ".parquet): a table data.source accepts")
    alpha: float = Field(0.05, gt=0, lt=1, description="the false-alarm rate on unchanged data, over all "
                         "features together")
    top_features: int = Field(4, ge=1, le=30, description="features plotted training vs live (highest score first)")


class ServerParams(_Section):
    """The team's server (over SSH): with ``host`` set, images go there and deploys target it."""

    host: Optional[str] = Field(None, description="ssh://USER@HOST[:PORT] (none: this machine)")
    identity_file: Optional[str] = Field(None, description="the private key (none: ssh's defaults)")
    known_hosts: Optional[str] = Field(None, description="the known_hosts file that holds the server's host key "
                                       "(none: ~/.ssh/known_hosts)")
    registry_port: int = Field(32000, ge=1, le=65535, description="the MicroK8s registry addon's port on the "
                               "server (images go there through an SSH tunnel when the addon is on)")

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        from .server import validate_target

        return validate_target(value)


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_IMAGE_REF = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$")


class ExecutionParams(_Section):
    """Where the stages run: kernels on this machine, or one Kubernetes Job per stage (README,
    "Beyond one machine"). The runner, the cache and the records stay where `mlops-kit run` runs."""

    mode: Literal["local", "kubernetes"] = Field("local", description="local kernels, or a Kubernetes Job per stage")
    namespace: str = Field("mlops-kit", description="the namespace of the stages' Jobs")
    image: Optional[str] = Field(None, description="the stage image (name:tag or name@sha256:...); none: the kit "
                                 "builds its own from this environment's versions and checkout, cached, and ships it "
                                 "to the cluster as it ships a serving image")
    volume: str = Field("mlops-kit-runs", description="the PersistentVolumeClaim (e.g. on MicroK8s' "
                        "hostpath-storage) whose folder is the runs folder; mounted at /mlops-kit/runs")
    cpu: str = Field("1", description="CPU per stage (request and limit), a Kubernetes quantity")
    memory: str = Field("2Gi", description="memory per stage (request and limit), a Kubernetes quantity")
    retries: int = Field(2, ge=0, le=10, description="new pods for a stage killed for memory (OOMKilled) or "
                         "evicted; a failing cell is never retried, a disruption never counted")
    timeout: float = Field(3600, gt=0, description="seconds a stage's Job may take")

    @field_validator("namespace", "volume")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return DeployParams._check_dns(value)

    @field_validator("cpu", "memory")
    @classmethod
    def _check_quantity(cls, value: str) -> str:
        if not _QUANTITY.match(str(value)):
            raise ValueError(f"a Kubernetes quantity such as 500m, 2, 512Mi or 4Gi; found {value!r}")
        return str(value)

    @field_validator("image")
    @classmethod
    def _check_image(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _IMAGE_REF.match(value):
            raise ValueError(f"an image reference such as registry/mlops-kit/stage:1 or name@sha256:<64 hex>; "
                             f"found {value!r}")
        return value


class RunParams(BaseModel):
    """All parameters of a run. ``task`` is inferred from the target when absent."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    stages: list[Literal[STAGE_NAMES]] = Field(  # type: ignore[valid-type] - the stage table's names
        default_factory=lambda: list(DEFAULT_STAGES),
        description="the stages `mlops-kit run` runs, in pipeline order")
    seed: int = Field(42, ge=0, description="random seed for the split and the estimator")
    task: Optional[Literal["classification", "regression"]] = Field(
        None, description="classification or regression (none: inferred from the target)")
    data: DataParams = Field(default_factory=DataParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    package: PackageParams = Field(default_factory=PackageParams)
    deploy: DeployParams = Field(default_factory=DeployParams)
    serve: ServeParams = Field(default_factory=ServeParams)
    server: ServerParams = Field(default_factory=ServerParams)
    monitor: MonitorStageParams = Field(default_factory=MonitorStageParams)
    execution: ExecutionParams = Field(default_factory=ExecutionParams)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        return _refuse_booleans(cls, value, info)

    @model_validator(mode="after")
    def _check_gate(self) -> "RunParams":
        tasks = [self.task] if self.task else list(METRIC_DIRECTIONS)
        if self.data.source.startswith("sklearn:") and not self.task:
            tasks = [SKLEARN_DATASETS[self.data.source.split(":", 1)[1]]]
        known = {m for t in tasks for m in METRIC_DIRECTIONS[t]}
        baseline = self.evaluate.baseline_metric
        if baseline is not None and baseline not in known:
            raise ValueError("evaluate.baseline_metric|" + _choice_error(
                f"a metric of a {'/'.join(tasks)} task", baseline, sorted(known)))
        for metric, threshold in self.evaluate.gate.items():
            if metric not in known:
                raise ValueError(f"evaluate.gate.{metric}|" + _choice_error(
                    f"a metric of a {'/'.join(tasks)} task", metric, sorted(known)))
            if metric not in ("rmse", "mae") and not 0 <= threshold <= 1:
                raise ValueError(f"evaluate.gate.{metric}|a threshold between 0 and 1; found {threshold}")
        return self

    def stage_parameters(self, section: str | None) -> dict[str, Any]:
        """The papermill parameters of a stage: its own section's keys, flat. Shared keys (seed,
        task) reach the notebook through ``open_stage`` (the run's recorded parameters)."""
        return getattr(self, section).model_dump(mode="json") if section else {}


SECTIONS = tuple(name for name, field in RunParams.model_fields.items()
                 if isinstance(field.default_factory, type) and issubclass(field.default_factory, BaseModel))


class LoadedParams:
    """The validated parameters and where each came from; ``sweep``: the grid of a ``sweep:``
    section and ``--grid`` options (parameter path -> values), empty for a plain run."""

    def __init__(self, params: RunParams, files: list[Path], overrides: list[str],
                 origin: dict[str, str] | None = None, sweep: dict[str, list] | None = None):
        self.params = params
        self.files = files
        self.overrides = overrides
        self._origin = origin or {}
        self.sweep = sweep or {}

    def source_of(self, key: str) -> str:
        """The file (or ``--set ...``) that set a dotted key; the top file for defaults."""
        return _origin_of(key.split("."), self._origin, str(self.files[-1]) if self.files else "defaults")

    def __repr__(self) -> str:
        return f"LoadedParams(files={[str(f) for f in self.files]}, overrides={self.overrides})"


def load_params(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                recorded: dict | None = None, recorded_from: str = _paths.RUN_RECORD,
                grid: list[str] | tuple[str, ...] = ()) -> LoadedParams:
    """Read a parameter file (and the bases it extends), apply ``section.key=value`` overrides,
    validate. Raises :class:`ParameterError` listing every problem found. The file's
    ``sweep:`` section, with ``grid`` (``section.key=[values]``) on top, is checked here too
    (:func:`_check_sweep`) and kept apart: :attr:`LoadedParams.sweep`.

    ``recorded`` (the ``params`` of a run's record) replaces the file: a run's own
    parameters, with overrides on top; ``recorded_from`` names it in messages.
    """
    if recorded is not None:
        import copy

        file = Path(recorded_from)
        raw, files = copy.deepcopy(recorded), []
        origin = {key: recorded_from for key in _dotted_keys(raw)}
    else:
        file = Path(path) if path is not None else _paths.default_parameters_file()
        raw, origin, files = _read_with_bases(file, seen=())
    problems: list[ParameterProblem] = []
    for override in overrides:
        _apply_override(raw, origin, override, problems)
    sweep = raw.pop("sweep", None)
    if problems:
        raise ParameterError(problems)
    try:
        params = RunParams.model_validate(raw, context={"recorded": recorded is not None})
    except ValidationError as exc:
        raise ParameterError(_describe_validation(exc, raw, origin, file)) from None
    if sweep is not None or grid:
        sweep = _check_sweep(sweep if sweep is not None else {}, grid, raw, origin, str(file))
    return LoadedParams(params, files, list(overrides), origin, sweep)


# --- sweeps ----------------------------------------------------------------------------

#: The sections a sweep may vary: those of the stages each trial runs (the data stage runs
#: once per sweep, so data.*, seed and task are the same for every trial).
SWEEP_SECTIONS = ("train", "evaluate")
#: A sweep has at most this many trials (the product of its lists' lengths).
MAX_SWEEP_TRIALS = 100


def _check_sweep(sweep: Any, grid: list[str] | tuple[str, ...], raw: dict, origin: dict[str, str],
                 file: str) -> dict[str, list]:
    """The grid, every key a parameter path of :data:`SWEEP_SECTIONS`, every value a non-empty
    list of distinct literals that the schema accepts there; at most :data:`MAX_SWEEP_TRIALS`
    trials. Raises ParameterError naming the file (or ``--grid``) and the key."""
    source = origin.get("sweep", file)
    if not isinstance(sweep, dict):
        raise ParameterError([ParameterProblem(source, "sweep", "a mapping of parameter paths to lists of "
                                               "values", _found(sweep))])
    where = {str(key): origin.get(f"sweep.{key}", source) for key in sweep}
    sweep = {str(key): value for key, value in sweep.items()}
    problems: list[ParameterProblem] = []
    for text in grid:
        key, equals, values = text.partition("=")
        if not equals:
            problems.append(ParameterProblem(f"--grid {text}", text, "section.key=[values]", "no '='"))
            continue
        try:
            sweep[key.strip()] = _load_yaml(values)
        except yaml.YAMLError:
            sweep[key.strip()] = values
        where[key.strip()] = f"--grid {text}"
    for key, values in sweep.items():
        problem = _sweep_key_problem(key) or _sweep_values_problem(values)
        if problem:
            problems.append(ParameterProblem(where[key], f"sweep.{key}", *problem))
            continue
        for index, value in enumerate(values):  # each value as the schema takes it there
            trial = _copy(raw)
            _set_dotted(trial, key.split("."), value)
            try:
                RunParams.model_validate(trial)
            except ValidationError as exc:
                problems.extend(ParameterProblem(where[key], f"sweep.{key}[{index}]", p.expected, p.found)
                                for p in _describe_validation(exc, trial, {}, Path(where[key])))
    trials = math.prod(len(values) for values in sweep.values()) if not problems else 0
    if trials > MAX_SWEEP_TRIALS:
        problems.append(ParameterProblem(" and ".join(sorted(set(where.values()))), "sweep",
                                         f"at most {MAX_SWEEP_TRIALS} trials (the product of the lists' "
                                         "lengths)", f"{trials} trials"))
    if problems:
        raise ParameterError(problems)
    return sweep


def _sweep_key_problem(key: str) -> tuple[str, str] | tuple[str, str, str | None] | None:
    keys = key.split(".")
    if keys[0] not in SWEEP_SECTIONS:
        return (f"a parameter of the {' or '.join(SWEEP_SECTIONS)} stage (the data stage runs once per sweep)",
                f"a key of {keys[0]!r}")
    if len(keys) > 3 or _field_type(keys) is None:
        choices = tuple(_section_model(keys[0]).model_fields)
        return (f"a parameter path such as {keys[0]}.{choices[0]}", "an unknown key",
                _suggest(keys[1] if len(keys) > 1 else key, choices))
    return None


def _sweep_values_problem(values: Any) -> tuple[str, str] | None:
    expected = "a non-empty list of distinct values (numbers, strings, true/false, null)"
    if not isinstance(values, list) or not values:
        return expected, "an empty list" if isinstance(values, list) else _found(values)
    for value in values:
        if not isinstance(value, (bool, int, float, str, type(None))):
            return expected, f"{_found(value)} among them"
    repeated = [value for index, value in enumerate(values)
                if any(value == other and type(value) is type(other) for other in values[:index])]
    if repeated:
        return expected, f"{repeated[0]!r} twice"
    return None


def with_setting(loaded: LoadedParams, setting: dict[str, Any]) -> LoadedParams:
    """The parameters of one trial of a sweep: ``loaded``'s with each ``path: value`` of
    ``setting`` set (named ``sweep <path>`` as their origin); ParameterError when the
    combination is refused by the schema."""
    raw = loaded.params.model_dump(mode="json")
    origin = dict(loaded._origin)
    for key, value in setting.items():
        _set_dotted(raw, key.split("."), value)
        origin[key] = f"sweep {key}"
    try:
        params = RunParams.model_validate(raw)
    except ValidationError as exc:
        raise ParameterError(_describe_validation(exc, raw, origin, Path("sweep"))) from None
    return LoadedParams(params, loaded.files, loaded.overrides, origin)


def _copy(raw: dict) -> dict:
    import copy

    return copy.deepcopy(raw)


def _set_dotted(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def load_run_params(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> LoadedParams:
    """A run's own parameters (``run.json`` key ``params``) with ``overrides`` on top; the
    embedded default when the folder has no record (the scratch run)."""
    from .errors import ArtifactError
    from .ledger import recorded_params

    record = Path(run_dir) / _paths.RUN_RECORD
    try:
        recorded = recorded_params(Path(run_dir))
    except ArtifactError:
        raise ParameterError([ParameterProblem(str(record), "(top level)", "JSON", "unreadable text")]) from None
    if recorded is None:
        return load_params(None, overrides)
    return load_params(overrides=overrides, recorded=recorded, recorded_from=str(record))


#: What ``--resume`` lets ``--set`` change: where the stages run (memory, image, ...), never what
#: they compute (execution.* is in no fingerprint).
RESUME_SECTIONS = ("execution",)


def resume_params(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...]) -> RunParams:
    """A resumed run's own parameters with ``execution.*`` overrides on top (e.g. more memory
    after OOMKilled); any other key is refused."""
    problems = [ParameterProblem("--set", override.partition("=")[0].strip() or override,
                                 f"{' or '.join(s + '.*' for s in RESUME_SECTIONS)} with --resume (where the stages "
                                 "run; what they compute stays the run's own)", repr(override))
                for override in overrides if override.partition(".")[0].strip() not in RESUME_SECTIONS]
    if problems:
        raise ParameterError(problems)
    return load_run_params(run_dir, overrides).params


def _dotted_keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, f"{prefix}{key}."))
    return keys


def parameter_files() -> list[Path]:
    """The parameter files of the project (for the panels' file picker)."""
    folder = _paths.parameters_dir()
    return sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))


# --- reading ---------------------------------------------------------------------------

#: A parameter file is a few hundred bytes; anything this large is not one.
MAX_PARAMETER_FILE_BYTES = 1024 * 1024
PARAMETER_SUFFIXES = (".yaml", ".yml")


class _AliasFound(yaml.YAMLError):
    def __init__(self, what: str, mark):
        self.problem, self.problem_mark = what, mark


class _PlainLoader(yaml.SafeLoader):
    """YAML without anchors (``&a``) and aliases (``*a``): a few lines of them expand to
    gigabytes (a "billion laughs"), and a parameter file has no use for them."""

    def compose_node(self, parent, index):  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _AliasFound(f"an alias (*{event.anchor[:20]})", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _AliasFound(f"an anchor (&{event.anchor[:20]})", event.start_mark)
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a SafeLoader, without aliases


def _read_yaml(file: Path) -> dict:
    if not file.is_file():
        raise ParameterError([ParameterProblem(str(file), "(file)", "an existing YAML parameter file",
                                               "no such file")])
    try:
        size = file.stat().st_size
        if size > MAX_PARAMETER_FILE_BYTES:
            raise ParameterError([ParameterProblem(str(file), "(file)",
                                                   f"a parameter file of at most {MAX_PARAMETER_FILE_BYTES} bytes",
                                                   f"{size} bytes")])
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ParameterError([ParameterProblem(str(file), "(file)", "UTF-8 text", "undecodable bytes")]) from None
    except PermissionError:
        raise ParameterError([ParameterProblem(str(file), "(file)", "a readable file",
                                               "permission denied")]) from None
    try:
        data = _load_yaml(text)
    except _AliasFound as exc:
        mark = exc.problem_mark
        raise ParameterError([ParameterProblem(
            str(file), f"(line {mark.line + 1}, column {mark.column + 1})",
            "plain YAML without anchors (&) or aliases (*)", exc.problem)]) from None
    except yaml.YAMLError as exc:
        # only pyyaml's short description and the position: never the file's text
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the file"
        reason = _short(getattr(exc, "problem", None) or type(exc).__name__, 80)
        raise ParameterError([ParameterProblem(str(file), f"({where})", "valid YAML", reason)]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError([ParameterProblem(str(file), "(top level)", "a mapping of sections",
                                               f"a {type(data).__name__}")])
    return data


def _short(text: str, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_with_bases(file: Path, seen: tuple[Path, ...]) -> tuple[dict, dict[str, str], list[Path]]:
    file = file.resolve() if file.exists() else file
    if file in seen:
        chain = " -> ".join(str(f) for f in (*seen, file))
        raise ParameterError([ParameterProblem(str(file), "extends", "a chain without cycles", chain)])
    data = _read_yaml(file)
    base_name = data.pop("extends", None)
    merged: dict = {}
    origin: dict[str, str] = {}
    files: list[Path] = []
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ParameterError([ParameterProblem(str(file), "extends", "the name of a base file",
                                                   _found(base_name))])
        base = _confined_base(file, base_name)
        if not base.is_file():
            raise ParameterError([ParameterProblem(str(file), "extends", "an existing base file",
                                                   f"no file {str(base)!r}")])
        merged, origin, files = _read_with_bases(base, (*seen, file))
    _merge(merged, data, origin, str(file), prefix="")
    return merged, origin, [*files, file]


def _confined_base(file: Path, base_name: str) -> Path:
    """The file ``extends:`` names: a YAML file in the parameter file's folder (or below it)
    or in the project, never anywhere else (parameter files can arrive by ``git push``)."""
    base = (file.parent / base_name).resolve()
    roots = [file.parent.resolve(), _paths.project_dir().resolve()]
    if base.suffix.lower() not in PARAMETER_SUFFIXES or not any(base.is_relative_to(root) for root in roots):
        raise ParameterError([ParameterProblem(
            str(file), "extends", f"a .yaml file in {roots[0]} or in the project {roots[1]}",
            repr(_short(base_name)))])
    return base


def _merge(into: dict, new: dict, origin: dict[str, str], source: str, prefix: str) -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict) and dotted != "train.params":
            _merge(into[key], value, origin, source, dotted + ".")
        else:
            into[key] = value
        origin[dotted] = source


def _apply_override(raw: dict, origin: dict[str, str], override: str, problems: list[ParameterProblem]) -> None:
    where = f"--set {override}"
    if "=" not in override:
        problems.append(ParameterProblem(where, override, "section.key=value", "no '='"))
        return
    dotted, text = override.split("=", 1)
    keys = dotted.strip().split(".")
    field_type = _field_type(keys)
    if field_type is None:
        section_key = keys[0]
        choices = SECTIONS + tuple(k for k in RunParams.model_fields if k not in SECTIONS)
        if len(keys) > 1 and keys[0] in SECTIONS:
            choices = tuple(_section_model(keys[0]).model_fields)
            section_key = keys[1]
        problems.append(ParameterProblem(where, dotted, "a known key", "unknown key",
                                         _suggest(section_key, choices)))
        return
    _set_dotted(raw, keys, text if field_type is str else _yaml_scalar(text))
    origin[dotted] = where


def _yaml_scalar(text: str) -> Any:
    try:
        return _load_yaml(text)
    except yaml.YAMLError:
        return text


def _section_model(name: str) -> type[BaseModel]:
    return RunParams.model_fields[name].default_factory  # type: ignore[return-value]


def _field_type(keys: list[str]) -> Any:
    """The annotation a dotted key has in the schema (``Any`` inside free-form dicts), or None."""
    if len(keys) == 1:
        field = RunParams.model_fields.get(keys[0])
        return None if field is None or keys[0] in SECTIONS else _plain(field.annotation)
    if keys[0] not in SECTIONS:
        return None
    model = _section_model(keys[0])
    for depth, key in enumerate(keys[1:], start=2):
        field = model.model_fields.get(key)
        if field is None:
            return None
        if depth == len(keys):
            return _plain(field.annotation)
        if getattr(field.annotation, "__origin__", None) is dict:
            return Any
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation   # a sub-section (serve.monitor)
    return None


def _plain(annotation: Any) -> Any:
    if annotation is str:
        return str
    args = getattr(annotation, "__args__", ())
    if str in args and type(None) in args and len(args) == 2:
        return str
    return annotation


# --- reporting -------------------------------------------------------------------------

def _describe_validation(exc: ValidationError, raw: dict, origin: dict[str, str], top: Path) -> list[ParameterProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        message = error["msg"]
        if error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
            if "|" in message and message.split("|", 1)[0].count(".") >= 1 and not loc:
                key, message = message.split("|", 1)
                loc = key.split(".")
            elif "|" in message and len(loc) == 1 and loc[0] in SECTIONS:   # a section's own check: its key
                key, message = message.split("|", 1)
                loc = [*loc, *key.split(".")]
        dotted = ".".join(_short(part, 40) for part in loc) or "(top level)"
        source = _origin_of(loc, origin, str(top))
        if error["type"] == "extra_forbidden":
            parent = loc[:-1]
            choices = RunParams.model_fields if not parent else (
                _section_model(parent[0]).model_fields if parent[0] in SECTIONS else {})
            problems.append(ParameterProblem(source, dotted, "one of " + ", ".join(choices),
                                             "an unknown key", _suggest(loc[-1], tuple(choices))))
            continue
        if error["type"] == "value_error":
            expected, _, found = message.partition("; found ")
            problems.append(ParameterProblem(source, dotted, expected, found or _short(repr(error.get("input")))))
            continue
        expected = message.removeprefix("Input should be ")
        problems.append(ParameterProblem(source, dotted, expected, _found(error.get("input"))))
    return problems


def _origin_of(loc: list[str], origin: dict[str, str], default: str) -> str:
    for end in range(len(loc), 0, -1):
        key = ".".join(loc[:end])
        if key in origin:
            return origin[key]
    return default


def _found(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{_short(repr(value))} ({type(value).__name__})"


def _suggest(name: str, choices) -> str | None:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


def _choice_error(what: str, found: str, choices) -> str:
    suggestion = _suggest(found, choices)
    hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
    return f"{what}, one of {', '.join(sorted(choices))}; found {found!r}{hint}"
