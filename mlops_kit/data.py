"""01_data: load a data set, validate it, infer its feature schema, split it.

The schema (``schema.json``) is what the model server checks requests against: feature
names, dtypes, categories and ranges seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _atomic
from .errors import DataError
from .params import SKLEARN_DATASETS

SCHEMA_VERSION = 1
#: An integer target with at most this many distinct values is taken as classes.
MAX_CLASSES_INFERRED = 20


@dataclass
class Dataset:
    frame: pd.DataFrame
    source: str
    target: str


@dataclass
class Validation:
    """What validation found: the usable frame and the columns dropped, with reasons."""

    frame: pd.DataFrame
    task: str
    dropped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_dataset(source: str, target: str) -> Dataset:
    """Read ``sklearn:<name>`` or a CSV/parquet file into a frame; the target must be a column."""
    if source.startswith("sklearn:"):
        frame = _load_bundled(source.split(":", 1)[1])
    else:
        frame = _read_file(Path(source))
    if target not in frame.columns:
        import difflib
        close = difflib.get_close_matches(target, [str(c) for c in frame.columns], n=1)
        raise DataError(
            f"data.target {target!r} is not a column of {source}. Columns: {_list(frame.columns)}.",
            source=source, column=target,
            hint=f"did you mean {close[0]!r}?" if close else "set data.target to the label column.")
    return Dataset(frame=frame, source=source, target=target)


def _load_bundled(name: str) -> pd.DataFrame:
    if name not in SKLEARN_DATASETS:
        raise DataError(f"sklearn:{name} is not a bundled data set; one of {_list(SKLEARN_DATASETS)}.",
                        source=f"sklearn:{name}")
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    return bunch.frame


def _read_file(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"data.source {str(path)!r} does not exist.", source=str(path))
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        kind = "CSV" if path.suffix.lower() == ".csv" else "parquet"
        raise DataError(f"data.source {str(path)!r} could not be read as {kind}: {exc}",
                        source=str(path)) from None


def read_columns(source: str) -> list[str]:
    """The column names of a data source, read cheaply (for checks before any stage starts)."""
    if source.startswith("sklearn:"):
        return list(_load_bundled(source.split(":", 1)[1]).columns)
    path = Path(source)
    try:
        if path.suffix.lower() == ".csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq
        return list(pq.read_schema(path).names)
    except Exception as exc:  # noqa: BLE001 - any reader error is the user's file
        raise DataError(f"data.source {str(path)!r} could not be read: {exc}", source=str(path)) from None


def infer_task(target: pd.Series) -> str:
    """classification for text, booleans and integers with few distinct values; else regression."""
    values = target.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    if pd.api.types.is_integer_dtype(values) or (values == values.round()).all():
        return "classification" if values.nunique() <= MAX_CLASSES_INFERRED else "regression"
    return "regression"


def validate_dataset(dataset: Dataset, *, task: str | None = None, min_rows: int = 20,
                     test_size: float = 0.2) -> Validation:
    """Check the data is usable for ``task``; drop empty and constant feature columns.

    Raises :class:`DataError` naming the column and what is wrong.
    """
    frame, target, source = dataset.frame, dataset.target, dataset.source
    if len(frame) < min_rows:
        raise DataError(f"{source} has {len(frame)} rows; data.min_rows asks for at least {min_rows}.",
                        source=source)
    missing_target = int(frame[target].isna().sum())
    if missing_target:
        raise DataError(f"Target column {target!r} of {source} has {missing_target} missing values; "
                        "every row needs a label.", source=source, column=target,
                        hint="drop those rows, or choose another data.target.")
    inferred = infer_task(frame[target])
    task = task or inferred
    if task == "regression" and not pd.api.types.is_numeric_dtype(frame[target]):
        raise DataError(f"Target column {target!r} of {source} must be numeric for regression. "
                        f"Got dtype {frame[target].dtype} instead (e.g. {frame[target].iloc[0]!r}).",
                        source=source, column=target, hint="set task: classification.")
    if task == "classification":
        counts = frame[target].value_counts()
        if len(counts) < 2:
            raise DataError(f"Target column {target!r} of {source} has a single class "
                            f"({counts.index[0]!r}); classification needs at least two.",
                            source=source, column=target)
        rare = counts[counts < 2]
        if len(rare):
            raise DataError(f"Target column {target!r} of {source}: classes {_list(rare.index)} have a "
                            "single row; a stratified split needs at least two rows per class.",
                            source=source, column=target)
        if len(counts) > max(MAX_CLASSES_INFERRED, len(frame) // 2):
            raise DataError(f"Target column {target!r} of {source} has {len(counts)} classes for "
                            f"{len(frame)} rows: it looks continuous.", source=source, column=target,
                            hint="set task: regression.")
        n_test = int(np.ceil(len(frame) * test_size))
        if n_test < len(counts):
            raise DataError(f"data.test_size {test_size} leaves {n_test} test rows for {len(counts)} "
                            "classes; each class needs a test row.", source=source,
                            hint="raise data.test_size or use more data.")

    dropped, warnings = [], []
    keep = [target]
    for column in frame.columns:
        if column == target:
            continue
        series = frame[column]
        name = str(column)
        if series.isna().all():
            dropped.append({"name": name, "reason": "all values missing"})
        elif series.nunique(dropna=True) <= 1:
            dropped.append({"name": name, "reason": "constant"})
        elif not (_is_numeric(series) or _is_categorical(series)):
            raise DataError(f"Column {name!r} of {source} has dtype {series.dtype}; features must be "
                            "numbers, booleans or text categories.", source=source, column=name,
                            hint="convert it (e.g. a date to a number of days) or drop it from the file.")
        else:
            keep.append(column)
            share = series.isna().mean()
            if share > 0.5:
                warnings.append(f"{name}: {share:.0%} missing (imputed)")
    if len(keep) == 1:
        raise DataError(f"{source} has no usable feature columns besides the target {target!r}.",
                        source=source)
    for item in dropped:
        warnings.append(f"{item['name']}: dropped ({item['reason']})")
    usable = frame[keep].copy()
    usable.columns = [str(c) for c in usable.columns]
    return Validation(frame=usable, task=task, dropped=dropped, warnings=warnings)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _is_categorical(series: pd.Series) -> bool:
    return (pd.api.types.is_bool_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype)
            or pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series))


def infer_schema(validation: Validation, target: str) -> dict[str, Any]:
    """The feature schema: names, kinds, dtypes, ranges or categories, and the classes."""
    frame = validation.frame
    features = []
    for name in frame.columns:
        if name == target:
            continue
        series = frame[name]
        entry: dict[str, Any] = {"name": name, "dtype": str(series.dtype),
                                 "nullable": bool(series.isna().any())}
        if _is_numeric(series):
            entry.update(kind="numeric", min=_scalar(series.min()), max=_scalar(series.max()),
                         integer=bool(pd.api.types.is_integer_dtype(series)))
        else:
            entry.update(kind="categorical",
                         categories=sorted({_scalar(v) for v in series.dropna().unique()}, key=str))
        features.append(entry)
    schema: dict[str, Any] = {
        "version": SCHEMA_VERSION, "task": validation.task, "target": target,
        "target_dtype": str(frame[target].dtype), "features": features,
        "dropped": validation.dropped, "rows": int(len(frame)),
    }
    if validation.task == "classification":
        schema["classes"] = sorted((_scalar(v) for v in frame[target].unique()), key=str)
    return schema


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def split_dataset(validation: Validation, target: str, *, test_size: float, seed: int):
    """Train/test split, stratified by the target when classifying."""
    from sklearn.model_selection import train_test_split

    frame = validation.frame
    stratify = frame[target] if validation.task == "classification" else None
    train, test = train_test_split(frame, test_size=test_size, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """A content hash of a frame (values, column names and dtypes)."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return digest.hexdigest()


def save_splits(train: pd.DataFrame, test: pd.DataFrame, schema: dict, artifacts: Path) -> dict[str, Path]:
    artifacts = Path(artifacts)
    paths = {"train": artifacts / "train.parquet", "test": artifacts / "test.parquet",
             "schema": artifacts / "schema.json"}
    _atomic.write_with(paths["train"], lambda tmp: train.to_parquet(tmp, index=False))
    _atomic.write_with(paths["test"], lambda tmp: test.to_parquet(tmp, index=False))
    schema = {**schema, "fingerprint": fingerprint_frame(pd.concat([train, test], ignore_index=True))}
    _atomic.write_json(paths["schema"], schema)
    return paths


def load_splits(artifacts: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    import json

    artifacts = Path(artifacts)
    for name in ("train.parquet", "test.parquet", "schema.json"):
        if not (artifacts / name).is_file():
            from .errors import ArtifactError
            raise ArtifactError(f"{artifacts / name} is missing: run the data stage first.",
                                path=artifacts / name)
    schema = json.loads((artifacts / "schema.json").read_text())
    return (pd.read_parquet(artifacts / "train.parquet"), pd.read_parquet(artifacts / "test.parquet"),
            schema)


def summarize(validation: Validation, target: str) -> pd.DataFrame:
    """One row per column: kind, dtype, missing share, distinct values, range or top category."""
    rows = []
    for name in validation.frame.columns:
        series = validation.frame[name]
        numeric = _is_numeric(series)
        rows.append({
            "column": name + (" (target)" if name == target else ""),
            "kind": "numeric" if numeric else "categorical",
            "dtype": str(series.dtype),
            "missing": f"{series.isna().mean():.1%}",
            "distinct": int(series.nunique()),
            "range / top": (f"{series.min():.4g} .. {series.max():.4g}" if numeric
                            else str(series.mode().iloc[0]) if series.notna().any() else ""),
        })
    for item in validation.dropped:
        rows.append({"column": item["name"], "kind": "dropped", "dtype": "", "missing": "",
                     "distinct": 0, "range / top": item["reason"]})
    return pd.DataFrame(rows).set_index("column")


def _list(values) -> str:
    values = [str(v) for v in values]
    shown = ", ".join(repr(v) for v in values[:12])
    return shown + (f" and {len(values) - 12} more" if len(values) > 12 else "")


def plot_target(frame: pd.DataFrame, target: str, task: str, artifacts: Path) -> Path:
    """Rows per class, or the target's distribution; saved as ``target.png``."""
    from ._plots import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    if task == "classification":
        frame[target].astype(str).value_counts().sort_index().plot.bar(ax=ax)
        ax.set(title=f"Rows per class of {target!r}", xlabel=target, ylabel="rows")
    else:
        frame[target].plot.hist(ax=ax, bins=30)
        ax.set(title=f"Distribution of {target!r}", xlabel=target)
    return save_figure(fig, Path(artifacts) / "target.png")


def schema_table(schema: dict) -> pd.DataFrame:
    """The feature schema as a table: one row per feature."""
    rows = []
    for feature in schema["features"]:
        if feature["kind"] == "numeric":
            detail = f"{feature['min']:.4g} .. {feature['max']:.4g}"
        else:
            shown = ", ".join(map(str, feature["categories"][:8]))
            extra = len(feature["categories"]) - 8
            detail = shown + (f" (+{extra} more)" if extra > 0 else "")
        rows.append({"feature": feature["name"], "kind": feature["kind"], "dtype": feature["dtype"],
                     "missing allowed": feature["nullable"], "range / categories": detail})
    return pd.DataFrame(rows).set_index("feature")
