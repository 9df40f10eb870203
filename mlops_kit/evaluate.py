"""03_evaluate: metrics on the held-out split, plots, the quality gate, and a comparison
with the best earlier run on the same data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._plots import pyplot, save_figure
from .params import BASELINE_METRICS, METRIC_DIRECTIONS



def predict(model, X: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(predicted, proba)`` of ``model`` on ``X`` (``proba`` None for regression, or an
    estimator without ``predict_proba``). A pipeline's preprocessing runs once for both: its
    last step is asked for the predictions and the probabilities of the transformed rows."""
    from sklearn.pipeline import Pipeline

    estimator = model
    if isinstance(model, Pipeline) and len(model.steps) > 1:
        X, estimator = model[:-1].transform(X), model[-1]
    predicted = estimator.predict(X)
    proba = (estimator.predict_proba(X) if task == "classification" and hasattr(estimator, "predict_proba")
             else None)
    return predicted, proba


def compute_metrics(model, X: pd.DataFrame, y: pd.Series, task: str, *,
                    predictions: tuple[np.ndarray, np.ndarray | None] | None = None) -> dict[str, float]:
    """The task's metrics of ``model`` on ``(X, y)`` (``predictions``: :func:`predict`'s,
    when already made)."""
    predicted, proba = predictions if predictions is not None else predict(model, X, task)
    return score(y, predicted, proba, getattr(model, "classes_", None), task)


def score(y: pd.Series, predicted, proba, classes, task: str) -> dict[str, float]:
    """Metrics from predictions (and class probabilities, columns in ``classes`` order)."""
    from sklearn import metrics as m

    if task == "regression":
        return {"rmse": float(np.sqrt(m.mean_squared_error(y, predicted))),
                "mae": float(m.mean_absolute_error(y, predicted)),
                "r2": float(m.r2_score(y, predicted))}
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    pos = {"pos_label": classes[1]} if binary else {}
    result = {
        "accuracy": float(m.accuracy_score(y, predicted)),
        "balanced_accuracy": float(m.balanced_accuracy_score(y, predicted)),
        "precision": float(m.precision_score(y, predicted, average=average, zero_division=0, **pos)),
        "recall": float(m.recall_score(y, predicted, average=average, zero_division=0, **pos)),
        "f1": float(m.f1_score(y, predicted, average=average, zero_division=0, **pos)),
    }
    if proba is not None and y.nunique() == len(classes):
        try:
            if binary:
                result["roc_auc"] = float(m.roc_auc_score(y, proba[:, 1]))
                result["pr_auc"] = float(m.average_precision_score(y, proba[:, 1], pos_label=classes[1]))
            else:
                from sklearn.preprocessing import label_binarize
                result["roc_auc"] = float(m.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
                result["pr_auc"] = float(m.average_precision_score(label_binarize(y, classes=classes), proba,
                                                                   average="macro"))
        except ValueError:
            pass  # not defined for this split (a class absent from the test rows)
    return result


def baseline_metrics(y_train: pd.Series, y_test: pd.Series, task: str) -> dict[str, float]:
    """The dummy baseline on the same split: the training split's class shares (predicting
    its most frequent class), or its mean, scored on the test split."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    dummy = DummyClassifier(strategy="prior") if task == "classification" else DummyRegressor()
    dummy.fit(np.zeros((len(y_train), 1)), y_train)
    X = np.zeros((len(y_test), 1))
    proba = dummy.predict_proba(X) if task == "classification" else None
    return score(y_test, dummy.predict(X), proba, getattr(dummy, "classes_", None), task)


def class_warnings(y_test: pd.Series, task: str, min_rows: int = 30) -> list[str]:
    """A note for each class with fewer than ``min_rows`` test rows: its scores are noise."""
    if task != "classification":
        return []
    counts = y_test.value_counts()
    return [f"class {_text(label)!r} has only {int(count)} test rows: its precision and recall "
            f"are unreliable (fewer than {min_rows}); use more data or a larger data.test_size"
            for label, count in counts.items() if count < min_rows]


def _text(value: Any) -> str:
    return str(value.item() if hasattr(value, "item") else value)


def check_gate(metrics: dict[str, float], gate: dict[str, float], task: str, *,
               baseline: dict[str, float] | None = None, baseline_metric: str | None = None,
               baseline_margin: float | None = None) -> dict[str, Any]:
    """The baseline check (the model beats the dummy on the same split by ``baseline_margin``:
    points of a score, a fraction of an error), then each absolute threshold: a minimum for
    scores and a maximum for errors (rmse, mae)."""
    checks = []
    if baseline is not None and baseline_margin is not None:
        name = baseline_metric or BASELINE_METRICS[task]
        direction = METRIC_DIRECTIONS[task].get(name)
        value, reference = metrics.get(name), baseline.get(name)
        if direction is None or value is None or reference is None:
            checks.append({"metric": name, "threshold": reference or 0.0,
                           "value": value, "passed": False, "baseline": reference,
                           "reason": f"{name} is not measured for this {task} model and its baseline"})
        else:
            if direction == "min":
                threshold = reference + baseline_margin
                passed = value >= threshold
                how = f"+{baseline_margin:g}"
            else:
                threshold = reference * (1 - baseline_margin)
                passed = value <= threshold
                how = f"-{baseline_margin:.0%}"
            checks.append({"metric": name, "threshold": threshold, "value": value, "passed": bool(passed),
                           "baseline": reference,
                           "reason": f"{name} {value:.4f} {'beats' if passed else 'does not beat'} the dummy "
                                     f"baseline {reference:.4f} by the margin ({how}: "
                                     f"{'>=' if direction == 'min' else '<='} {threshold:.4f})"})
    for name, threshold in gate.items():
        direction = METRIC_DIRECTIONS[task].get(name)
        value = metrics.get(name)
        if direction is None or value is None:
            checks.append({"metric": name, "threshold": threshold, "value": value, "passed": False,
                           "reason": f"{name} is not measured for this {task} model"})
            continue
        passed = value >= threshold if direction == "min" else value <= threshold
        sign = ">=" if direction == "min" else "<="
        checks.append({"metric": name, "threshold": threshold, "value": value, "passed": bool(passed),
                       "reason": f"{name} {value:.4f} {'meets' if passed else 'misses'} {sign} {threshold}"})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def gate_table(gate_result: dict) -> pd.DataFrame:
    rows = [{"check": ("beats the dummy: " if c.get("baseline") is not None else "") + c["metric"],
             "value": c["value"], "threshold": c["threshold"], "dummy baseline": c.get("baseline"),
             "result": "pass" if c["passed"] else "FAIL"} for c in gate_result["checks"]]
    return pd.DataFrame(rows, columns=["check", "value", "threshold", "dummy baseline", "result"]).set_index("check")


def save_metrics(artifacts: Path, task: str, metrics: dict, gate_result: dict, *,
                 data_fingerprint: str | None, model: str, comparison: dict | None = None,
                 baseline: dict | None = None, warnings: list[str] | None = None) -> Path:
    from . import artifacts as catalog

    return catalog.METRICS.save(artifacts, {
        "task": task, "model": model, "data_fingerprint": data_fingerprint,
        "metrics": metrics, "gate": gate_result, "comparison": comparison, "baseline": baseline,
        "warnings": warnings or [],
    })


def headline_metric(task: str) -> str:
    return "accuracy" if task == "classification" else "rmse"


def compare_with_earlier(metrics: dict, task: str, data_fingerprint: str | None, *,
                         exclude_run: str | None = None) -> dict | None:
    """The best earlier succeeded run on the same data (by the headline metric), and the
    difference of each metric. The champion, when one is promoted, is preferred."""
    from . import ledger

    if not data_fingerprint:
        return None
    name = headline_metric(task)
    better_is_higher = METRIC_DIRECTIONS[task][name] == "min"
    best = None
    for record in ledger.list_runs():
        if record.get("id") == exclude_run:
            continue
        earlier = ledger.read_metrics(record)
        if not earlier or earlier.get("data_fingerprint") != data_fingerprint:
            continue
        value = earlier["metrics"].get(name)
        if value is None:
            continue
        if record.get("champion"):
            best = (record, earlier)
            break
        if best is None or (value > best[1]["metrics"][name]) == better_is_higher:
            best = (record, earlier)
    if best is None:
        return None
    record, earlier = best
    return {"run": record["id"], "champion": bool(record.get("champion")), "metric": name,
            "deltas": {k: v - earlier["metrics"][k] for k, v in metrics.items() if k in earlier["metrics"]},
            "earlier": earlier["metrics"]}


def comparison_table(metrics: dict, comparison: dict | None, baseline: dict | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"this run": metrics})
    if baseline:
        frame["dummy baseline"] = pd.Series(baseline)
    if comparison:
        label = f"{comparison['run']}" + (" (champion)" if comparison["champion"] else " (best earlier)")
        frame[label] = pd.Series(comparison["earlier"])
        frame["change"] = pd.Series(comparison["deltas"])
    return frame


# --- plots -----------------------------------------------------------------------------

def plot_evaluation(model, X: pd.DataFrame, y: pd.Series, task: str, artifacts: Path, *,
                    sample: int = 20_000, seed: int = 0,
                    predictions: tuple[np.ndarray, np.ndarray | None] | None = None) -> list[Path]:
    """Confusion matrix and ROC curve, or residuals and predicted-vs-actual, drawn from at
    most ``sample`` test rows (seeded); saved as PNG. ``predictions``: :func:`predict`'s for
    every row of ``X``, when already made (the sample's are taken from them)."""
    from . import artifacts as catalog

    plt = pyplot()
    rows = None
    if len(X) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(X), size=sample, replace=False))
        X, y = X.iloc[rows], y.iloc[rows]
    if predictions is None:
        predicted, proba = predict(model, X, task)
    else:
        predicted, proba = (p if p is None or rows is None else p[rows] for p in predictions)
    note = f" ({len(X)} sampled rows)" if len(X) == sample else ""
    paths = []
    if task == "classification":
        from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

        binary = hasattr(model, "predict_proba") and len(model.classes_) == 2
        fig, axes = plt.subplots(1, 2 if binary else 1, figsize=(10, 4), squeeze=False)
        ConfusionMatrixDisplay.from_predictions(y, predicted, labels=model.classes_, ax=axes[0][0],
                                                colorbar=False)
        axes[0][0].set_title("Confusion matrix (test split)" + note)
        if binary:
            RocCurveDisplay.from_predictions(y, proba[:, 1], pos_label=model.classes_[1],
                                             ax=axes[0][1])
            axes[0][1].set_title("ROC curve (test split)" + note)
        paths.append(save_figure(fig, catalog.EVALUATION_PLOT.path(artifacts)))
    else:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        axes[0].scatter(y, predicted, s=10, alpha=0.6)
        low, high = float(min(y.min(), predicted.min())), float(max(y.max(), predicted.max()))
        axes[0].plot([low, high], [low, high], color="grey", linestyle="--")
        axes[0].set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (test split)" + note)
        axes[1].scatter(predicted, y - predicted, s=10, alpha=0.6)
        axes[1].axhline(0, color="grey", linestyle="--")
        axes[1].set(xlabel="predicted", ylabel="residual", title="Residuals (test split)" + note)
        paths.append(save_figure(fig, catalog.EVALUATION_PLOT.path(artifacts)))
    return paths


def enforce_gate(gate_result: dict) -> None:
    """Raise :class:`GateFailed` when the model missed a threshold: it is not packaged."""
    from .errors import GateFailed

    if not gate_result["passed"]:
        raise GateFailed([c["reason"] for c in gate_result["checks"] if not c["passed"]])


def read_metrics(artifacts: Path) -> dict | None:
    from . import artifacts as catalog

    metrics = catalog.METRICS.load_if_present(artifacts)
    return metrics.to_json() if metrics is not None else None
