"""02_train: preprocessing and an estimator from the registry, as one scikit-learn pipeline.

Numeric columns are imputed (median) and scaled; categorical ones imputed (most frequent)
and one-hot encoded, with categories unseen in training ignored at prediction time.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _atomic, model_io
from .errors import DataError, ParameterError, ParameterProblem


@dataclass(frozen=True)
class EstimatorSpec:
    classifier: str | None
    regressor: str | None
    defaults: dict


#: ``train.model`` names and the scikit-learn classes behind them, per task.
ESTIMATORS: dict[str, EstimatorSpec] = {
    "logistic_regression": EstimatorSpec("sklearn.linear_model.LogisticRegression",
                                         "sklearn.linear_model.Ridge", {"max_iter": 1000}),
    "linear": EstimatorSpec("sklearn.linear_model.LogisticRegression",
                            "sklearn.linear_model.LinearRegression", {}),
    "ridge": EstimatorSpec(None, "sklearn.linear_model.Ridge", {}),
    "random_forest": EstimatorSpec("sklearn.ensemble.RandomForestClassifier",
                                   "sklearn.ensemble.RandomForestRegressor", {"n_estimators": 100}),
    "gradient_boosting": EstimatorSpec("sklearn.ensemble.GradientBoostingClassifier",
                                       "sklearn.ensemble.GradientBoostingRegressor", {}),
    "hist_gradient_boosting": EstimatorSpec(
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.ensemble.HistGradientBoostingRegressor", {}),
    "dummy": EstimatorSpec("sklearn.dummy.DummyClassifier", "sklearn.dummy.DummyRegressor", {}),
}
#: Packages whose versions go into the model card (the image pins the same).
RECORDED_PACKAGES = ("scikit-learn", "numpy", "scipy", "pandas", "skops", "joblib", "threadpoolctl")


def make_estimator(model: str, task: str, params: dict | None = None, *, seed: int = 0):
    """The estimator named ``model`` for ``task``, with ``params`` checked by scikit-learn."""
    spec = ESTIMATORS.get(model)
    path = None if spec is None else (spec.classifier if task == "classification" else spec.regressor)
    if path is None:
        choices = [n for n, s in ESTIMATORS.items()
                   if (s.classifier if task == "classification" else s.regressor)]
        raise ParameterError([ParameterProblem("parameters", "train.model",
                                               f"an estimator for {task}: {', '.join(choices)}",
                                               repr(model))])
    module, _, name = path.rpartition(".")
    cls = getattr(import_module(module), name)
    values = {**spec.defaults, **(params or {})}
    known = cls().get_params()
    unknown = [k for k in values if k not in known]
    if unknown:
        import difflib
        problems = []
        for key in unknown:
            suggestion = difflib.get_close_matches(key, list(known), n=1)
            problems.append(ParameterProblem("parameters", f"train.params.{key}", f"a hyperparameter of {name}",
                                             "an unknown name", suggestion[0] if suggestion else None))
        raise ParameterError(problems)
    values = {k: v for k, v in values.items() if k in known}
    if "random_state" in known and "random_state" not in (params or {}):
        values["random_state"] = seed
    estimator = cls(**values)
    try:
        estimator._validate_params()
    except (ValueError, TypeError) as exc:
        raise ParameterError([ParameterProblem("parameters", "train.params", f"valid values for {name}",
                                               str(exc))]) from None
    return estimator


def check_train_params(model: str, task: str | None, params: dict, origin: str = "parameters",
                       origins: dict[str, str] | None = None) -> None:
    """Raise ParameterError now for hyperparameters scikit-learn would refuse later.

    With ``task`` unknown (inferred from the data later), the parameters must fit the
    estimator of either task. ``origin`` names the file the parameters came from;
    ``origins`` the file (or ``--set``) of each hyperparameter, when they differ.
    """
    import re

    errors = []
    for candidate in [task] if task else ["classification", "regression"]:
        try:
            make_estimator(model, candidate, params)
            return
        except ParameterError as exc:
            errors.append(exc)
    for problem in errors[0].problems:
        named = re.match(r"The '(\w+)' parameter", problem.found) if problem.key == "train.params" else None
        if named and named.group(1) in params:
            problem.key = f"train.params.{named.group(1)}"
        name = problem.key.removeprefix("train.params.")
        problem.file = (origins or {}).get(name, origin)
    raise errors[0]


def build_pipeline(schema: dict, estimator) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f["name"] for f in schema["features"] if f["kind"] == "numeric"]
    categorical = [f["name"] for f in schema["features"] if f["kind"] == "categorical"]
    transformers = []
    if numeric:
        transformers.append(("numeric", Pipeline([("impute", SimpleImputer(strategy="median")),
                                                  ("scale", StandardScaler())]), numeric))
    if categorical:
        transformers.append(("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))]), categorical))
    preprocess = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def features_and_target(frame: pd.DataFrame, schema: dict) -> tuple[pd.DataFrame, pd.Series]:
    names = [f["name"] for f in schema["features"]]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataError(f"Columns {missing} of the schema are missing from the frame.", column=missing[0])
    X = frame[names].copy()
    for feature in schema["features"]:
        if feature["kind"] == "categorical":
            # one representation for categories: text, missing as NaN (what the server sends too)
            X[feature["name"]] = X[feature["name"]].astype(object).where(X[feature["name"]].notna(), np.nan)
            X[feature["name"]] = X[feature["name"]].map(lambda v: v if v is np.nan or isinstance(v, str) else str(v))
    return X, frame[schema["target"]]


@dataclass
class TrainResult:
    model: Any
    seconds: float
    cv_scores: list[float] | None
    cv_metric: str | None


def train_model(train: pd.DataFrame, schema: dict, *, model: str, params: dict, seed: int,
                cv_folds: int = 0) -> TrainResult:
    estimator = make_estimator(model, schema["task"], params, seed=seed)
    pipeline = build_pipeline(schema, estimator)
    X, y = features_and_target(train, schema)
    cv_scores = None
    metric = "accuracy" if schema["task"] == "classification" else "r2"
    if cv_folds:
        from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
        if schema["task"] == "classification":
            folds = min(cv_folds, int(y.value_counts().min()))
            splitter = StratifiedKFold(n_splits=max(folds, 2), shuffle=True, random_state=seed)
        else:
            splitter = KFold(n_splits=cv_folds, shuffle=True, random_state=seed)
        cv_scores = [float(s) for s in cross_val_score(pipeline, X, y, cv=splitter, scoring=metric)]
    started = time.perf_counter()
    pipeline.fit(X, y)
    return TrainResult(pipeline, time.perf_counter() - started, cv_scores, metric if cv_folds else None)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def save_trained(result: TrainResult, schema: dict, test: pd.DataFrame, artifacts: Path, *,
                 model: str, params: dict, seed: int, n_examples: int = 5) -> dict[str, Any]:
    """Write the model (skops), its card (sha256, data fingerprint, params, versions) and
    example inputs with the predictions they must give (the smoke test of every deployment)."""
    artifacts = Path(artifacts)
    saved = model_io.save_model(result.model, artifacts)
    X_test, _ = features_and_target(test, schema)
    examples = X_test.head(n_examples)
    records = [{k: (None if _is_missing(v) else _plain(v)) for k, v in row.items()}
               for row in examples.to_dict(orient="records")]
    predictions = [_plain(v) for v in result.model.predict(examples)]
    _atomic.write_json(artifacts / model_io.EXAMPLES_FILE, {"records": records, "predictions": predictions})
    card = {
        **saved,
        "model": model, "estimator": type(result.model[-1]).__name__, "params": params, "seed": seed,
        "task": schema["task"], "target": schema["target"],
        "features": [f["name"] for f in schema["features"]],
        "classes": schema.get("classes"),
        "data_fingerprint": schema.get("fingerprint"),
        "train_seconds": round(result.seconds, 4),
        "cv": ({"metric": result.cv_metric, "scores": result.cv_scores,
                "mean": float(np.mean(result.cv_scores))} if result.cv_scores else None),
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _atomic.write_json(artifacts / model_io.CARD_FILE, card)
    return card


def training_summary(result: TrainResult) -> pd.DataFrame:
    """Fit time and, with cross-validation, the score of each fold."""
    rows = {"fit seconds": round(result.seconds, 3)}
    if result.cv_scores:
        rows[f"cv {result.cv_metric} mean"] = round(float(np.mean(result.cv_scores)), 4)
        rows[f"cv {result.cv_metric} std"] = round(float(np.std(result.cv_scores)), 4)
        for index, score in enumerate(result.cv_scores, 1):
            rows[f"fold {index}"] = round(score, 4)
    return pd.DataFrame({"value": rows})


def card_table(card: dict) -> pd.DataFrame:
    """The model card's main facts as a table."""
    keys = ("estimator", "task", "target", "sha256", "bytes", "data_fingerprint", "created")
    rows = {key: card.get(key) for key in keys}
    rows["params"] = card.get("params")
    rows.update({f"version {k}": v for k, v in card.get("versions", {}).items()})
    return pd.DataFrame({"value": {k: str(v) for k, v in rows.items()}})


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
