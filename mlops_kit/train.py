"""02_train: preprocessing and an estimator from the registry, as one scikit-learn pipeline.

Numeric columns are imputed (median) and scaled; categorical ones imputed (most frequent)
and one-hot encoded, with categories unseen in training ignored at prediction time.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import model_io
from .errors import DataError, ParameterError, ParameterProblem


@dataclass(frozen=True)
class EstimatorSpec:
    """A ``train.model`` name: its scikit-learn class per task and the hyperparameters the kit
    gives it when ``train.params`` names none (the only defaults: parameter files name none)."""

    classifier: str | None
    regressor: str | None
    classifier_defaults: dict = field(default_factory=dict)
    regressor_defaults: dict = field(default_factory=dict)

    def path(self, task: str) -> str | None:
        return self.classifier if task == "classification" else self.regressor

    def defaults(self, task: str) -> dict:
        return dict(self.classifier_defaults if task == "classification" else self.regressor_defaults)


#: ``train.model`` names and the scikit-learn classes behind them, per task.
ESTIMATORS: dict[str, EstimatorSpec] = {
    "logistic_regression": EstimatorSpec("sklearn.linear_model.LogisticRegression",
                                         "sklearn.linear_model.Ridge", {"C": 1.0, "max_iter": 1000}),
    "linear": EstimatorSpec("sklearn.linear_model.LogisticRegression",
                            "sklearn.linear_model.LinearRegression", {"max_iter": 1000}),
    "ridge": EstimatorSpec(None, "sklearn.linear_model.Ridge"),
    "random_forest": EstimatorSpec("sklearn.ensemble.RandomForestClassifier",
                                   "sklearn.ensemble.RandomForestRegressor",
                                   {"n_estimators": 100}, {"n_estimators": 100}),
    "gradient_boosting": EstimatorSpec("sklearn.ensemble.GradientBoostingClassifier",
                                       "sklearn.ensemble.GradientBoostingRegressor"),
    "hist_gradient_boosting": EstimatorSpec(
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.ensemble.HistGradientBoostingRegressor"),
    "dummy": EstimatorSpec("sklearn.dummy.DummyClassifier", "sklearn.dummy.DummyRegressor"),
}
#: Packages whose versions go into the model card (the image pins the same).
RECORDED_PACKAGES = ("scikit-learn", "numpy", "scipy", "pandas", "skops", "joblib", "threadpoolctl")


def make_estimator(model: str, task: str, params: dict | None = None, *, seed: int = 0):
    """The estimator named ``model`` for ``task``, with ``params`` checked by scikit-learn."""
    spec = ESTIMATORS.get(model)
    path = None if spec is None else spec.path(task)
    if path is None:
        choices = [n for n, s in ESTIMATORS.items() if s.path(task)]
        raise ParameterError([ParameterProblem("parameters", "train.model",
                                               f"an estimator for {task}: {', '.join(choices)}",
                                               repr(model))])
    module, _, name = path.rpartition(".")
    cls = getattr(import_module(module), name)
    known = cls().get_params()
    unknown = [k for k in (params or {}) if k not in known]
    if unknown:
        import difflib
        problems = []
        for key in unknown:
            suggestion = difflib.get_close_matches(key, list(known), n=1)
            problems.append(ParameterProblem("parameters", f"train.params.{key}", f"a hyperparameter of {name}",
                                             "an unknown name", suggestion[0] if suggestion else None))
        raise ParameterError(problems)
    values = {**{k: v for k, v in spec.defaults(task).items() if k in known}, **(params or {})}
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


def build_pipeline(schema: dict, estimator, *, seed: int = 0) -> Any:
    """The preprocessing for the schema's feature kinds, then ``estimator``, as one Pipeline.

    numeric: median-imputed, scaled; boolean (0/1): most-frequent-imputed; datetime: calendar
    features, imputed, scaled; categorical: one-hot (missing is a level of its own, unseen
    levels ignored; ``grouped``: at most ``levels`` columns, the rarest levels as one), or
    target-encoded; text: words hashed. For histogram gradient boosting, categorical columns
    are ordinal-coded and handled natively by the trees (no one-hot, no dense blow-up).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler,
                                       TargetEncoder)

    from . import _features

    features = schema["features"]
    by_kind = {kind: [f for f in features if f["kind"] == kind]
               for kind in ("numeric", "boolean", "datetime", "categorical", "text")}
    native = isinstance(estimator, (HistGradientBoostingClassifier, HistGradientBoostingRegressor))
    transformers = []
    ordinal = [f for f in by_kind["categorical"] if native and f.get("encoding") != "target"]
    if ordinal:
        cap = min(max(f.get("max_categories") or 250 for f in ordinal), 250)
        # the cap only changes columns with more levels than it; on the others scikit-learn's
        # count of each level (a Python loop over every row) would be spent for nothing
        few = [f["name"] for f in ordinal if f.get("levels") is not None and f["levels"] <= cap]
        many = [f["name"] for f in ordinal if f["name"] not in few]
        for name, columns, limit in (("categorical", few, None), ("categorical_capped", many, cap)):
            if columns:
                transformers.append((name, OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
                    max_categories=limit, dtype=np.float64), columns))
        estimator.set_params(categorical_features=list(range(len(ordinal))))
    if by_kind["numeric"]:
        transformers.append(("numeric", Pipeline([("impute", SimpleImputer(strategy="median")),
                                                  ("scale", StandardScaler())]),
                             [f["name"] for f in by_kind["numeric"]]))
    if by_kind["boolean"]:
        transformers.append(("boolean", SimpleImputer(strategy="most_frequent"),
                             [f["name"] for f in by_kind["boolean"]]))
    if by_kind["datetime"]:
        transformers.append(("datetime", Pipeline([
            ("calendar", FunctionTransformer(_features.calendar_features,
                                             feature_names_out=_features.calendar_names)),
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler())]), [f["name"] for f in by_kind["datetime"]]))
    if not native:
        plain = [f["name"] for f in by_kind["categorical"] if f.get("encoding") in (None, "onehot")]
        if plain:
            transformers.append(("categorical", OneHotEncoder(handle_unknown="ignore"), plain))
        for feature in by_kind["categorical"]:
            if feature.get("encoding") == "grouped":
                transformers.append((f"grouped_{feature['name']}", OneHotEncoder(
                    handle_unknown="infrequent_if_exist", max_categories=feature.get("max_categories") or 30),
                    [feature["name"]]))
    target_encoded = [f["name"] for f in by_kind["categorical"] if f.get("encoding") == "target"]
    if target_encoded:
        from sklearn.model_selection import KFold, StratifiedKFold

        splitter = (StratifiedKFold if schema["task"] == "classification" else KFold)(5, shuffle=True,
                                                                                    random_state=seed)
        transformers.append(("target_encoded", TargetEncoder(cv=splitter), target_encoded))
    for feature in by_kind["text"]:
        transformers.append((f"text_{feature['name']}", Pipeline([
            ("text", FunctionTransformer(_features.as_text)),
            ("hash", HashingVectorizer(n_features=2 ** (6 if native else 12), alternate_sign=False))]),
            [feature["name"]]))
    preprocess = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False,
                                   sparse_threshold=0.0 if native else 0.3)
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def features_and_target(frame: pd.DataFrame, schema: dict) -> tuple[pd.DataFrame, pd.Series]:
    """The schema's feature columns in the model's representation (what the server builds
    from a request too): numbers and booleans as floats, categories as text (pandas
    categoricals of text in training), missing as NaN. Columns already in that form are not
    copied."""
    names = [f["name"] for f in schema["features"]]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataError(f"Columns {missing} of the schema are missing from the frame.", column=missing[0])
    X = frame[names]
    for feature in schema["features"]:
        name, kind = feature["name"], feature["kind"]
        column = X[name]
        if kind == "boolean" and column.dtype != np.float64:
            X[name] = column.astype(float)
        elif kind in ("categorical", "text"):
            if isinstance(column.dtype, pd.CategoricalDtype):
                if not all(isinstance(c, str) for c in column.cat.categories):
                    X[name] = column.cat.rename_categories([str(c) for c in column.cat.categories])
            else:
                values = column.astype(object)
                X[name] = values.where(values.isna(), values.map(str, na_action="ignore"))
    return X, frame[schema["target"]]


def sample_weights(y: pd.Series, class_weight: str | None) -> np.ndarray | None:
    """``train.class_weight``: balanced weighs each row by the inverse of its class's share."""
    if class_weight is None:
        return None
    from sklearn.utils.class_weight import compute_sample_weight

    return compute_sample_weight(class_weight, y)


@dataclass
class TrainResult:
    model: Any
    seconds: float
    cv_scores: list[float] | None
    cv_metric: str | None
    params: dict | None = None
    #: the model's predictions on the training rows it was fitted on (None: not made while fitting)
    train_predictions: np.ndarray | None = None


def train_model(train: pd.DataFrame, schema: dict, *, model: str, params: dict, seed: int,
                cv_folds: int = 0, class_weight: str | None = None) -> TrainResult:
    """Fit the pipeline on the training split (``cv_folds``: cross-validated first); the
    model's predictions on those rows, for the monitoring profile, are kept in the result."""
    task = schema["task"]
    estimator = make_estimator(model, task, params, seed=seed)
    pipeline = build_pipeline(schema, estimator, seed=seed)
    X, y = features_and_target(train, schema)
    weights = sample_weights(y, class_weight) if task == "classification" else None
    fit_params = {"model__sample_weight": weights} if weights is not None else {}
    cv_scores = None
    metric = ("balanced_accuracy" if class_weight else "accuracy") if task == "classification" else "r2"
    if cv_folds:
        from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
        if task == "classification":
            folds = min(cv_folds, int(y.value_counts().min()))
            splitter = StratifiedKFold(n_splits=max(folds, 2), shuffle=True, random_state=seed)
        else:
            splitter = KFold(n_splits=cv_folds, shuffle=True, random_state=seed)
        cv_scores = [float(s) for s in cross_val_score(pipeline, X, y, cv=splitter, scoring=metric,
                                                       params=fit_params or None)]
    started = time.perf_counter()
    if any(f.get("encoding") == "target" for f in schema["features"]):
        # target encoding cross-fits: the matrix the fit sees is not what the fitted pipeline
        # computes from the same rows, so the training rows are predicted anew when needed
        pipeline.fit(X, y, **fit_params)
        seconds, predicted = time.perf_counter() - started, None
    else:
        # what Pipeline.fit does, keeping the preprocessed rows: the monitoring profile's
        # predictions on the training split come from them, not from preprocessing it twice
        Xt = pipeline[:-1].fit_transform(X, y)
        pipeline[-1].fit(Xt, y, **({"sample_weight": weights} if weights is not None else {}))
        seconds = time.perf_counter() - started
        predicted = pipeline[-1].predict(Xt)
        del Xt
    effective = {k: _plain(v) for k, v in pipeline[-1].get_params().items()
                 if k in {**ESTIMATORS[model].defaults(task), **params}}
    return TrainResult(pipeline, seconds, cv_scores, metric if cv_folds else None, effective, predicted)


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each of ``names`` that is installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def package_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **installed_versions(RECORDED_PACKAGES)}


def save_trained(result: TrainResult, schema: dict, test: pd.DataFrame, artifacts: Path, *,
                 model: str, params: dict, seed: int, n_examples: int = 5) -> dict[str, Any]:
    """Write the model (skops), its card (sha256, data fingerprint, params, versions) and
    example inputs with the predictions they must give (the smoke test of every deployment)."""
    from . import artifacts as catalog

    artifacts = Path(artifacts)
    saved = model_io.save_model(result.model, artifacts)
    X_test, _ = features_and_target(test.head(n_examples), schema)
    examples = X_test.head(n_examples)
    records = [{k: _json_value(v) for k, v in row.items()} for row in examples.to_dict(orient="records")]
    records = [{f["name"]: (bool(r[f["name"]]) if f["kind"] == "boolean" and r[f["name"]] is not None
                            else r[f["name"]]) for f in schema["features"]} for r in records]
    predictions = [_plain(v) for v in result.model.predict(examples)]
    recorded: dict[str, Any] = {"records": records, "predictions": predictions}
    if schema["task"] == "classification" and hasattr(result.model, "predict_proba"):
        recorded["probabilities"] = np.asarray(result.model.predict_proba(examples), dtype=np.float64).tolist()
    catalog.EXAMPLES.save(artifacts, recorded)
    card = {
        **saved,
        "model": model, "estimator": type(result.model[-1]).__name__,
        "params": result.params if result.params is not None else params, "seed": seed,
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
    catalog.MODEL_CARD.save(artifacts, card)
    return card


def save_profile(model: Any, train: pd.DataFrame, schema: dict, artifacts: Path, *,
                 predictions: np.ndarray | None = None) -> Any:
    """Write ``monitor_profile.json``: the training split in the bins live traffic is counted
    in (the reference of monitoring), with the model's predictions on it (``predictions``:
    :class:`TrainResult`'s ``train_predictions``, when made; else predicted here); returns
    the profile."""
    from . import artifacts as catalog
    from .monitor import build_profile

    if predictions is None:
        predictions = model.predict(features_and_target(train, schema)[0])
    profile = build_profile(train, schema, predictions=predictions)
    catalog.MONITOR_PROFILE.save(artifacts, profile)
    return profile


def profile_table(profile: Any) -> pd.DataFrame:
    """What the profile holds per feature: kind, bins, missing share (a notebook table)."""
    entries = [*profile.features, *([profile.prediction] if profile.prediction is not None else [])]
    return pd.DataFrame([{"feature": e.name, "kind": e.kind, "bins": e.n_bins,
                          "missing share": round(e.counts[-1] / max(1, e.rows), 4)} for e in entries]
                        ).set_index("feature")


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
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT


def _json_value(value: Any) -> Any:
    """A feature value as a request sends it: missing null, a date an ISO string."""
    if _is_missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return _plain(value)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
