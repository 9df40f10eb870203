"""06_monitor's report: the request log against the model's profile, late labels joined.

>>> live = monitor.read_live(log_dir, model_folder)          # the model's rows only (sha256)
>>> result = monitor.report(model_folder, live, labels=monitor.read_labels(path, target))
>>> result.verdict.status, result.verdict.exit_code, result.verdict.drifted

The report is one document (``monitor_report.json``): ``window``, per feature its drift
(``method``, ``score``, ``p_value``, ``threshold``, ``drift``, ``min_detectable``), the
predictions' drift, data quality, ``performance`` on the labelled rows (``None`` without
labels) and the ``verdict``; :meth:`MonitorReport.summary` is that shape alone (what
``mlops-kit monitor --json`` prints), the document adds the window's counts per bin (the
panel's training-vs-live plots).

Verdict, by precedence: ``quality`` (broken inputs explain the rest), ``performance`` (the
quality gate of 03_evaluate fails on the labelled live rows), ``drift``, ``healthy``; exit
codes :data:`EXIT_CODES`.
"""

from __future__ import annotations

import math
import stat
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd

from .. import _atomic, artifacts
from ..artifacts import Document, GateResult
from ..errors import DataError
from ._bins import bin_values
from ._profile import Profile
from ._verdict import EXIT_CODES, DriftEntry, FeatureQuality, check_window

#: the labels file's key columns (``row`` optional: 0, a request of one row)
REQUEST_ID, ROW = "request_id", "row"
#: the live metrics are held against the gate only with this many labelled rows
MIN_LABELLED_ROWS = 30
#: a labels file larger than this is refused (it is input from outside; ~5 M labels)
MAX_LABELS_BYTES = 256 * 1024 * 1024
#: the request log reader's column of each class's probability
PROBA_PREFIX = "proba_"


# --- the document -------------------------------------------------------------------------------

class ReportWindow(Document):
    rows: int
    requests: int
    reference_rows: int
    alpha: float
    drift_tests: int
    quality_tests: int
    model_run: Optional[str] = None
    model_sha256: str
    log: Optional[str] = None
    first: Optional[str] = None
    last: Optional[str] = None


class Performance(Document):
    labels: str
    #: logged rows with a label, and their share of the logged rows
    labelled_rows: int
    share_labelled: float
    #: labels whose request id (and row) is not in the log
    unmatched_labels: int
    metrics: dict[str, Optional[float]]
    #: 03_evaluate's metrics on the test split
    evaluation: dict[str, Optional[float]]
    gate: GateResult
    #: False with fewer than MIN_LABELLED_ROWS labelled rows: reported, not held against the gate
    judged: bool
    passed: Optional[bool] = None


class ReportVerdict(Document):
    status: Literal["healthy", "drift", "quality", "performance"]
    exit_code: int
    #: the features (and ``prediction``) whose distribution moved, the largest score first
    drifted: list[str]
    quality_issues: list[str]
    gate_failures: list[str]


class BinCounts(Document):
    labels: list[str]
    reference: list[int]
    live: list[int]


class MonitorReport(Document):
    """``monitor_report.json`` (06_monitor)."""

    window: ReportWindow
    features: dict[str, DriftEntry]
    prediction: Optional[DriftEntry] = None
    quality: dict[str, FeatureQuality]
    performance: Optional[Performance] = None
    verdict: ReportVerdict
    #: per feature (and ``prediction``): the reference's and the window's counts per bin
    bins: dict[str, BinCounts]

    def summary(self) -> dict[str, Any]:
        """The report without the bins: what ``mlops-kit monitor --json`` prints."""
        return self.model_dump(mode="json", exclude={"bins"})

    def table(self) -> pd.DataFrame:
        """One row per feature (and the predictions), the highest drift score first."""
        entries = {**self.features, **({"(prediction)": self.prediction} if self.prediction else {})}
        rows = [{"feature": name, "score (PSI)": e.score, "p-value": e.p_value, "threshold": e.threshold,
                 "drift": e.drift, "min detectable PSI": e.min_detectable.psi,
                 "min detectable shift (sd)": e.min_detectable.mean_shift_sd,
                 "quality": ", ".join(k for k, c in (self.quality[name].model_dump().items()
                                                      if name in self.quality else ())
                                      if c and c["flagged"])}
                for name, e in entries.items()]
        frame = pd.DataFrame(rows, columns=["feature", "score (PSI)", "p-value", "threshold", "drift",
                                            "min detectable PSI", "min detectable shift (sd)", "quality"])
        return frame.sort_values("score (PSI)", ascending=False, kind="stable").set_index("feature")


def load_report(folder: str | Path) -> MonitorReport:
    """A monitor run's report, validated."""
    return artifacts.MONITOR_REPORT.load(folder)


def model_profile(folder: str | Path) -> Profile:
    """The profile that shipped with a run's model (its ``monitor_profile.json``)."""
    return artifacts.MONITOR_PROFILE.load(folder)


# --- reading ----------------------------------------------------------------------------------

def read_live(log_dir: str | Path, folder: str | Path) -> pd.DataFrame:
    """The request log's rows of the model in ``folder`` (its card's sha256: rows of another
    model are refused by the reader), features in the schema's order."""
    from .requestlog import read_request_log

    card = artifacts.MODEL_CARD.load(folder)
    return read_request_log(Path(log_dir), model_sha256=card.sha256, features=card.features)


def read_labels(path: str | Path, target: str) -> pd.DataFrame:
    """A labels file (CSV or parquet): ``request_id``, optional ``row`` (default 0) and the
    target column; rows without a label are left out. Refused with a DataError naming the file:
    another kind of file, missing columns, a row that is no integer, a (request_id, row) twice."""
    import pyarrow as pa

    path = Path(path)
    source = str(path)
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise DataError(f"The labels file must be a .csv or .parquet file. Got {path.name!r} instead.", source=source)
    try:
        info = path.stat()
    except OSError:
        raise DataError(f"The labels file {source!r} must exist. Got no file there instead.", source=source) from None
    if not stat.S_ISREG(info.st_mode):  # a device (/dev/zero) or a pipe would never end
        raise DataError(f"The labels file {source!r} must be a regular file. Got a device, pipe or folder instead.",
                        source=source)
    size = info.st_size
    if size > MAX_LABELS_BYTES:
        raise DataError(f"The labels file must be at most {MAX_LABELS_BYTES} bytes. Got {size} bytes instead.",
                        source=source)
    try:
        if path.suffix.lower() == ".csv":
            from pyarrow import csv

            table = csv.read_csv(path, convert_options=csv.ConvertOptions(
                column_types={REQUEST_ID: pa.string()}, strings_can_be_null=True))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError) as exc:
        raise DataError(f"The labels file {source!r} must be a readable {path.suffix[1:]} table. Got an error "
                        f"instead: {str(exc).splitlines()[0][:200]}", source=source) from None
    frame = table.to_pandas()
    frame.columns = [str(c) for c in frame.columns]
    absent = [c for c in (REQUEST_ID, target) if c not in frame.columns]
    if absent:
        raise DataError(f"The labels file must have the columns {REQUEST_ID!r} and {target!r} (the target), "
                        f"and may have {ROW!r}. Got the columns {list(frame.columns)[:10]} instead.",
                        source=source, column=absent[0])
    ids = frame[REQUEST_ID]
    if ids.isna().any():
        raise DataError(f"The labels file's {REQUEST_ID!r} must be set on every row. Got an empty one on row "
                        f"{int(np.argmax(ids.isna().to_numpy())) + 1} instead.", source=source, column=REQUEST_ID)
    rows = _rows(frame[ROW], source) if ROW in frame.columns else np.zeros(len(frame), dtype=np.int64)
    labels = pd.DataFrame({REQUEST_ID: ids.astype(str).to_numpy(), ROW: rows, target: frame[target].to_numpy()})
    labels = labels[labels[target].notna()].reset_index(drop=True)
    _refuse_duplicates(labels, f"The labels file {source!r}", source)
    return labels


def _rows(series: pd.Series, source: str) -> np.ndarray:
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values != np.floor(values))
    if bad.any():
        at = int(np.argmax(bad))
        value = series.iloc[at]
        value = value.item() if hasattr(value, "item") else value  # 1.5, not np.float64(1.5)
        raise DataError(f"The labels file's {ROW!r} must be a row number (an integer >= 0). Got "
                        f"{value!r} on row {at + 1} instead.", source=source, column=ROW)
    return values.astype(np.int64)


def _refuse_duplicates(frame: pd.DataFrame, what: str, source: str) -> None:
    twice = frame.duplicated([REQUEST_ID, ROW], keep=False)
    if twice.any():
        first = frame[twice].iloc[0]
        times = int(((frame[REQUEST_ID] == first[REQUEST_ID]) & (frame[ROW] == first[ROW])).sum())
        raise DataError(f"{what} must name each request id (and row) once. Got {first[REQUEST_ID]!r} row "
                        f"{int(first[ROW])} {times} times among {int(twice.sum())} duplicated rows "
                        "instead.", source=source, column=REQUEST_ID)


# --- the report --------------------------------------------------------------------------------

def report(folder: str | Path, live: pd.DataFrame, *, labels: pd.DataFrame | None = None,
           labels_source: str | None = None, alpha: float = 0.05, seed: int = 0, gate: dict | None = None,
           baseline_metric: str | None = None, baseline_margin: float | None = 0.02,
           model_run: str | None = None, log: str | None = None,
           export_to: str | Path | None = None) -> MonitorReport:
    """The report on the live rows ``live`` (:func:`read_live`'s frame) of the model whose
    artifacts are in ``folder`` (its profile, schema, card and metrics).

    ``labels`` (:func:`read_labels`'s frame): joined on request id and row; the live metrics
    are checked against the quality gate (``gate``, ``baseline_*``: 03_evaluate's parameters),
    and the labelled rows are written to ``export_to`` when given (:func:`export_labelled`)."""
    profile = model_profile(folder)
    schema = artifacts.SCHEMA.load(folder)
    card = artifacts.MODEL_CARD.load(folder)
    if len(live) == 0:
        raise DataError(f"The request log{f' {log}' if log else ''} must hold rows of model "
                        f"{card.sha256[:12]} to be judged. Got no row instead.", source=log)
    predictions = live["prediction"] if "prediction" in live.columns else None
    verdict = check_window(profile, live, predictions, alpha=alpha, seed=seed)
    performance = None
    if labels is not None:
        labelled, unmatched = join_labels(live, labels, schema.target, source=labels_source, log=log)
        performance = live_performance(labelled, folder, unmatched=unmatched, rows=len(live),
                                       source=labels_source or "labels", gate=gate or {},
                                       baseline_metric=baseline_metric, baseline_margin=baseline_margin)
        if export_to is not None:
            export_labelled(labelled, folder, export_to)
    gate_failures = performance.gate.failures() if performance is not None and performance.passed is False else []
    status = ("quality" if verdict.quality_issues else "performance" if gate_failures
              else "drift" if verdict.drifted else "healthy")
    times = pd.to_datetime(live["time"], errors="coerce", utc=True) if "time" in live.columns else None
    window = ReportWindow(
        **verdict.window.model_dump(), requests=int(live[REQUEST_ID].nunique()) if REQUEST_ID in live else len(live),
        model_run=model_run, model_sha256=card.sha256, log=log,
        first=_iso(times.min()) if times is not None else None, last=_iso(times.max()) if times is not None else None)
    return MonitorReport(
        window=window,
        features={name: DriftEntry(**d.model_dump(exclude={"rows"})) for name, d in verdict.features.items()},
        prediction=DriftEntry(**verdict.prediction.model_dump(exclude={"rows"})) if verdict.prediction else None,
        quality=verdict.quality, performance=performance,
        verdict=ReportVerdict(status=status, exit_code=EXIT_CODES[status], drifted=verdict.drifted,
                              quality_issues=verdict.quality_issues, gate_failures=gate_failures),
        bins=_bins(profile, live, predictions))


def _iso(stamp: Any) -> str | None:
    return None if stamp is None or pd.isna(stamp) else stamp.isoformat().replace("+00:00", "Z")


def _bins(profile: Profile, live: pd.DataFrame, predictions: Any) -> dict[str, BinCounts]:
    entries = [(f.name, f, live[f.name]) for f in profile.features]
    if profile.prediction is not None and predictions is not None:
        entries.append(("prediction", profile.prediction, pd.Series(np.asarray(predictions))))
    return {name: BinCounts(labels=entry.labels, reference=list(entry.counts),
                            live=bin_values(entry, values).counts.tolist()) for name, entry, values in entries}


# --- late labels --------------------------------------------------------------------------------

def join_labels(live: pd.DataFrame, labels: pd.DataFrame, target: str, *,
                source: str | None = None, log: str | None = None) -> tuple[pd.DataFrame, int]:
    """The live rows that have a label (their features, prediction, probabilities and the
    target column), and the count of labels that matched no logged row. A DataError when no
    label matches (it names an id of each side), or when the log (``log``: its folder, for the
    error's source) holds a (request id, row) twice."""
    _refuse_duplicates(live[[REQUEST_ID, ROW]], "The request log", log or "")
    keys = live[[REQUEST_ID, ROW]].astype({REQUEST_ID: str, ROW: np.int64})
    joined = keys.reset_index().merge(labels[[REQUEST_ID, ROW, target]], on=[REQUEST_ID, ROW], how="inner")
    if joined.empty:
        raise DataError(f"The labels{f' of {source}' if source else ''} must name requests of the log. Got "
                        f"{len(labels)} labels that join nothing instead (e.g. {labels[REQUEST_ID].iloc[0]!r} "
                        f"row {int(labels[ROW].iloc[0])}; the log has ids such as {keys[REQUEST_ID].iloc[0]!r}).",
                        source=source, column=REQUEST_ID)
    labelled = live.loc[joined["index"].to_numpy()].copy()
    if target in labelled.columns and target not in (REQUEST_ID, ROW):
        labelled = labelled.drop(columns=[target])
    labelled[target] = joined[target].to_numpy()
    return labelled.reset_index(drop=True), len(labels) - len(joined)


def live_performance(labelled: pd.DataFrame, folder: str | Path, *, unmatched: int, rows: int, source: str,
                     gate: dict, baseline_metric: str | None, baseline_margin: float | None) -> Performance:
    """The model's metrics on the labelled live rows, beside 03_evaluate's, and the quality
    gate checked on them."""
    from .. import evaluate

    schema = artifacts.SCHEMA.load(folder)
    card = artifacts.MODEL_CARD.load(folder)
    evaluation = artifacts.METRICS.load(folder)
    task, target = schema.task, schema.target
    if task == "classification":
        classes = [class_text(c) for c in (card.classes or [])]
        y = _class_codes(labelled[target], classes, f"The labels of {source}", source, target)
        predicted = _class_codes(labelled["prediction"], classes, "The request log's predictions", source, "prediction")
        columns = [f"{PROBA_PREFIX}{c}" for c in classes]
        proba = (labelled[columns].to_numpy(dtype=np.float64)
                 if classes and all(c in labelled.columns for c in columns) else None)
        # scored on the classes' positions: sklearn sorts the labels many times, integers fast
        metrics = evaluate.score(pd.Series(y), predicted, proba, list(range(len(classes))), task)
    else:
        y = pd.to_numeric(labelled[target], errors="coerce")
        if y.isna().any():
            at = int(np.argmax(y.isna().to_numpy()))
            raise DataError(f"The labels of a regression model must be numbers. Got "
                            f"{labelled[target].iloc[at]!r} instead.", source=source, column=target)
        predicted = pd.to_numeric(labelled["prediction"], errors="coerce").to_numpy(dtype=np.float64)
        metrics = evaluate.score(y, predicted, None, None, task)
    result = GateResult.model_validate(evaluate.check_gate(
        metrics, gate, task, baseline=evaluation.baseline, baseline_metric=baseline_metric,
        baseline_margin=baseline_margin))
    judged = len(labelled) >= MIN_LABELLED_ROWS
    return Performance(labels=source, labelled_rows=len(labelled), share_labelled=len(labelled) / max(1, rows),
                       unmatched_labels=unmatched, metrics=metrics, evaluation=evaluation.metrics, gate=result,
                       judged=judged, passed=result.passed if judged else None)


def _class_codes(values: pd.Series, classes: list[str], what: str, source: str, column: str) -> np.ndarray:
    """Each value's position among the model's classes; a DataError for a value that is none."""
    codes = values.map(class_text).map({c: i for i, c in enumerate(classes)})
    if codes.isna().any():
        other = values[codes.isna()]
        raise DataError(f"{what} must be classes of the model ({', '.join(map(repr, classes[:10]))}). Got "
                        f"{class_text(other.iloc[0])!r} on {len(other)} rows instead.", source=source, column=column)
    return codes.to_numpy(dtype=np.int64)


def class_text(value: Any) -> str:
    """A class label as text, the same whether it came from JSON, a CSV or the model card
    (``1``, ``1.0`` and ``"1"`` are one class)."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def export_labelled(labelled: pd.DataFrame, folder: str | Path, path: str | Path) -> Path:
    """Write the labelled live rows as a table ``data.source`` accepts: the schema's features
    (as the server received them) and the target column; CSV or parquet by the suffix, atomically."""
    schema = artifacts.SCHEMA.load(folder)
    path = Path(path)
    columns = [*schema.feature_names, schema.target]
    table = labelled[columns]
    if path.suffix.lower() == ".parquet":
        return _atomic.write_with(path, lambda tmp: table.to_parquet(tmp, index=False))
    if path.suffix.lower() == ".csv":
        return _atomic.write_with(path, lambda tmp: table.to_csv(tmp, index=False))
    raise DataError(f"The export of the labelled rows must be a .csv or .parquet file. Got {path.name!r} instead.",
                    source=str(path))


# --- plots --------------------------------------------------------------------------------------

def plot_features(result: MonitorReport, names: list[str] | None = None, *, top: int = 4, path: Path | None = None):
    """Training vs live shares per bin, one panel per feature (default: the ``top`` highest
    scores); saved as PNG when ``path`` is given. Returns the figure."""
    from .._plots import pyplot, save_figure

    plt = pyplot()
    if names is None:
        names = [n for n in result.table().index if n != "(prediction)"][:top]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.6 * max(1, len(names))), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        plot_feature(result, name, ax=ax)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, Path(path))
    return fig


def plot_feature(result: MonitorReport, name: str, *, ax=None):
    """One feature's (or ``prediction``'s) training and live shares per bin, side by side."""
    from .._plots import pyplot

    if name not in result.bins:
        raise KeyError(f"the report has no bins of {name!r}: one of {', '.join(sorted(result.bins))}")
    bins = result.bins[name]
    if ax is None:
        _, ax = pyplot().subplots(figsize=(9, 3))
    reference = np.asarray(bins.reference, dtype=np.float64)
    live = np.asarray(bins.live, dtype=np.float64)
    x = np.arange(len(bins.labels))
    ax.bar(x - 0.2, reference / max(1.0, reference.sum()), width=0.4, label="training")
    ax.bar(x + 0.2, live / max(1.0, live.sum()), width=0.4, label="live")
    ax.set_xticks(x, bins.labels, rotation=30, ha="right", fontsize=7)
    entry = result.features.get(name) if name != "prediction" else result.prediction
    title = name if entry is None else f"{name}: PSI {entry.score:.3f}, p {entry.p_value:.3g}" + (
        " (drift)" if entry.drift else "")
    ax.set(ylabel="share of rows", title=title)
    ax.legend(fontsize=8)
    return ax
