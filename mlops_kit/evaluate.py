"""03_evaluate: metrics on the held-out split, plots, the quality gate, and a comparison
with the best earlier run on the same data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _atomic
from ._plots import pyplot, save_figure
from .params import METRIC_DIRECTIONS

METRICS_FILE = "metrics.json"


def compute_metrics(model, X: pd.DataFrame, y: pd.Series, task: str) -> dict[str, float]:
    from sklearn import metrics as m

    predicted = model.predict(X)
    if task == "regression":
        return {"rmse": float(np.sqrt(m.mean_squared_error(y, predicted))),
                "mae": float(m.mean_absolute_error(y, predicted)),
                "r2": float(m.r2_score(y, predicted))}
    binary = len(model.classes_) == 2
    average = "binary" if binary else "macro"
    pos = {"pos_label": model.classes_[1]} if binary else {}
    result = {
        "accuracy": float(m.accuracy_score(y, predicted)),
        "balanced_accuracy": float(m.balanced_accuracy_score(y, predicted)),
        "precision": float(m.precision_score(y, predicted, average=average, zero_division=0, **pos)),
        "recall": float(m.recall_score(y, predicted, average=average, zero_division=0, **pos)),
        "f1": float(m.f1_score(y, predicted, average=average, zero_division=0, **pos)),
    }
    if hasattr(model, "predict_proba") and y.nunique() == len(model.classes_):
        proba = model.predict_proba(X)
        try:
            result["roc_auc"] = float(m.roc_auc_score(y, proba[:, 1]) if binary
                                      else m.roc_auc_score(y, proba, multi_class="ovr", labels=model.classes_))
        except ValueError:
            pass  # not defined for this split (a class absent from the test rows)
    return result


def check_gate(metrics: dict[str, float], gate: dict[str, float], task: str) -> dict[str, Any]:
    """Each threshold is a minimum for scores and a maximum for errors (rmse, mae)."""
    checks = []
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
    rows = [{"metric": c["metric"], "value": c["value"], "threshold": c["threshold"],
             "result": "pass" if c["passed"] else "FAIL"} for c in gate_result["checks"]]
    return pd.DataFrame(rows, columns=["metric", "value", "threshold", "result"]).set_index("metric")


def save_metrics(artifacts: Path, task: str, metrics: dict, gate_result: dict, *,
                 data_fingerprint: str | None, model: str, comparison: dict | None = None) -> Path:
    return _atomic.write_json(Path(artifacts) / METRICS_FILE, {
        "task": task, "model": model, "data_fingerprint": data_fingerprint,
        "metrics": metrics, "gate": gate_result, "comparison": comparison,
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


def comparison_table(metrics: dict, comparison: dict | None) -> pd.DataFrame:
    frame = pd.DataFrame({"this run": metrics})
    if comparison:
        label = f"{comparison['run']}" + (" (champion)" if comparison["champion"] else " (best earlier)")
        frame[label] = pd.Series(comparison["earlier"])
        frame["change"] = pd.Series(comparison["deltas"])
    return frame


# --- plots -----------------------------------------------------------------------------

def plot_evaluation(model, X: pd.DataFrame, y: pd.Series, task: str, artifacts: Path) -> list[Path]:
    """Confusion matrix and ROC curve, or residuals and predicted-vs-actual; saved as PNG."""
    plt = pyplot()

    artifacts = Path(artifacts)
    paths = []
    if task == "classification":
        from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

        fig, axes = plt.subplots(1, 2 if hasattr(model, "predict_proba") and len(model.classes_) == 2 else 1,
                                 figsize=(10, 4), squeeze=False)
        ConfusionMatrixDisplay.from_estimator(model, X, y, ax=axes[0][0], colorbar=False)
        axes[0][0].set_title("Confusion matrix (test split)")
        if axes.shape[1] == 2:
            RocCurveDisplay.from_estimator(model, X, y, ax=axes[0][1])
            axes[0][1].set_title("ROC curve (test split)")
        paths.append(save_figure(fig, artifacts / "evaluation.png"))
    else:
        predicted = model.predict(X)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        axes[0].scatter(y, predicted, s=10, alpha=0.6)
        low, high = float(min(y.min(), predicted.min())), float(max(y.max(), predicted.max()))
        axes[0].plot([low, high], [low, high], color="grey", linestyle="--")
        axes[0].set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (test split)")
        axes[1].scatter(predicted, y - predicted, s=10, alpha=0.6)
        axes[1].axhline(0, color="grey", linestyle="--")
        axes[1].set(xlabel="predicted", ylabel="residual", title="Residuals (test split)")
        paths.append(save_figure(fig, artifacts / "evaluation.png"))
    return paths


def enforce_gate(gate_result: dict) -> None:
    """Raise :class:`GateFailed` when the model missed a threshold: it is not packaged."""
    from .errors import GateFailed

    if not gate_result["passed"]:
        raise GateFailed([c["reason"] for c in gate_result["checks"] if not c["passed"]])


def read_metrics(artifacts: Path) -> dict | None:
    path = Path(artifacts) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
