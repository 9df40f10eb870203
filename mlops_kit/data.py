"""01_data: load a data set, validate it, decide what to do with each column, split it.

The schema (``schema.json``, :class:`mlops_kit.artifacts.DataSchema`) is what the model
server checks requests against: feature names, kinds, categories and ranges seen in
training, and a note for every column of the table saying what the kit did with it.

Tables are read with pyarrow (CSV and parquet alike, only the columns used); text columns
with few distinct values become pandas categories. Each column is given a kind:

- numeric; boolean (``bool``, or yes/no, true/false text); categorical (text with few
  distinct values, or with many: grouped or target-encoded, ``data.high_cardinality``);
  datetime (calendar features, or dropped: ``data.dates``); text (hashed words, only when
  asked for by ``data.columns.<name>: text``);
- dropped, with the reason: all values missing, constant, ID-like, ``data.columns``;
- refused: free text nobody asked for (the message names the column and the options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, ParameterError, ParameterProblem
from .params import SKLEARN_DATASETS

SCHEMA_VERSION = 2
#: An integer target with at most this many distinct values is taken as classes.
MAX_CLASSES_INFERRED = 20
#: Text columns with at most this many distinct values are read as pandas categories.
MAX_DICTIONARY_LEVELS = 65_536
#: The schema lists a categorical column's levels up to this many (above: any text is accepted).
MAX_RECORDED_CATEGORIES = 10_000
#: Text values taken as booleans (lower-cased).
BOOLEAN_WORDS = {"true": True, "false": False, "yes": True, "no": False, "y": True, "n": False,
                 "t": True, "f": False}
_ID_NAME = re.compile(r"(^|[_\W])(id|uuid|guid|key)$|^(id|uuid|guid)([_\W]|$)|[a-z](Id|ID)$")


@dataclass
class Dataset:
    frame: pd.DataFrame
    source: str
    target: str
    #: columns of the table not read (``data.columns`` marks them drop)
    unread: list[str] = field(default_factory=list)


@dataclass
class ColumnPlan:
    """What the kit does with one column of the table."""

    name: str
    kind: str  # numeric | categorical | boolean | datetime | text | dropped | target
    action: str  # human-readable: "scaled", "one-hot", "grouped: 30 levels + other", ...
    encoding: str | None = None  # categorical: onehot | grouped | target
    #: distinct values of the column as kept (counted once, while planning; None: not counted)
    distinct: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "action": self.action}


@dataclass
class Validation:
    """What validation found: the usable frame, a plan per column, dropped columns, notes."""

    frame: pd.DataFrame
    task: str
    dropped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plans: list[ColumnPlan] = field(default_factory=list)
    rows: int = 0
    max_categories: int = 30
    #: rows left out for a missing label (data.drop_missing_target)
    unlabeled_rows: int = 0


# --- reading ---------------------------------------------------------------------------

def load_dataset(source: str, target: str, *, columns: dict[str, str] | None = None) -> Dataset:
    """Read ``sklearn:<name>`` or a CSV/parquet file into a frame; the target must be a column.

    Columns that ``columns`` (``data.columns``) marks ``drop`` are not read at all.
    """
    if source.startswith("sklearn:"):
        frame = _load_bundled(source.split(":", 1)[1])
        _require_columns(columns or {}, list(frame.columns), source)
    else:
        header = read_columns(source)
        _require_target(header, source, target)
        _require_columns(columns or {}, header, source)
        skip = {name for name, kind in (columns or {}).items() if kind == "drop" and name != target}
        frame = _read_file(Path(source), [c for c in header if c not in skip])
    _require_target(list(frame.columns), source, target)
    return _dataset(frame, source, target, [str(c) for c in (columns or {}) if str(c) not in frame.columns])


def _require_columns(columns: dict[str, str], names: list, source: str) -> None:
    """Each column ``data.columns`` names is one of ``names``."""
    names = [str(c) for c in names]
    unknown = [str(name) for name in columns if str(name) not in names]
    if unknown:
        import difflib
        close = difflib.get_close_matches(unknown[0], names, n=1)
        raise DataError(f"data.columns names {unknown[0]!r}, which is not a column of {source}.",
                        source=source, column=unknown[0],
                        hint=f"did you mean {close[0]!r}?" if close else f"columns: {_list(names)}")


def _dataset(frame: pd.DataFrame, source: str, target: str, unread: list[str]) -> Dataset:
    if isinstance(frame[target].dtype, pd.CategoricalDtype):
        frame[target] = np.asarray(frame[target].astype(object))  # labels as plain values
    return Dataset(frame=frame, source=source, target=target, unread=unread)


def _require_target(columns: list, source: str, target: str) -> None:
    if target not in columns:
        import difflib
        close = difflib.get_close_matches(target, [str(c) for c in columns], n=1)
        raise DataError(
            f"data.target {target!r} is not a column of {source}. Columns: {_list(columns)}.",
            source=source, column=target,
            hint=f"did you mean {close[0]!r}?" if close else "set data.target to the label column.")


def _load_bundled(name: str) -> pd.DataFrame:
    if name not in SKLEARN_DATASETS:
        raise DataError(f"sklearn:{name} is not a bundled data set; one of {_list(SKLEARN_DATASETS)}.",
                        source=f"sklearn:{name}")
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    return bunch.frame


def read_table(path: Path, columns: list[str] | None = None):
    """The file as a pyarrow Table (only ``columns``), text columns with few distinct values
    dictionary-encoded (they become pandas categories)."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.source {str(path)!r} does not exist.", source=str(path))
    kind = "CSV" if path.suffix.lower() == ".csv" else "parquet"
    try:
        if kind == "CSV":
            from pyarrow import csv

            # from the path, not a memory map: a map is a quarter of a second faster on 400 MB
            # but the mapped file counts in the process's memory (400 MB more at its peak)
            table = csv.read_csv(path, convert_options=csv.ConvertOptions(
                include_columns=columns, strings_can_be_null=True, quoted_strings_can_be_null=True))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError) as exc:
        raise DataError(f"data.source {str(path)!r} could not be read as {kind}: {_first_line(exc)}",
                        source=str(path)) from None
    return _encode_text(table)


def _encode_text(table):
    """Text columns with few distinct values dictionary-encoded (pandas categories)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for index, column in enumerate(table.columns):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            # one pass: every chunk of the encoded column holds the whole dictionary (its
            # distinct non-null values); kept as text when that is too many levels
            encoded = pc.dictionary_encode(column)
            if not encoded.num_chunks or len(encoded.chunk(0).dictionary) <= MAX_DICTIONARY_LEVELS:
                table = table.set_column(index, table.field(index).name, encoded)
    return table


def _read_file(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    return _to_frame(read_table(path, columns))


def _to_frame(table) -> pd.DataFrame:
    frame = table.to_pandas(self_destruct=True, split_blocks=True, date_as_object=False)
    del table
    frame.columns = [str(c) for c in frame.columns]
    return frame


def read_head(path: Path, columns: list[str], rows: int) -> pd.DataFrame:
    """About the first ``rows`` rows of the file (whole read blocks; fewer when a later block
    does not fit the types of the first), read and typed as :func:`read_table` reads them."""
    import pyarrow as pa

    path = Path(path)
    batches = []
    try:
        if path.suffix.lower() == ".csv":
            from pyarrow import csv

            with csv.open_csv(path, convert_options=csv.ConvertOptions(
                    include_columns=columns, strings_can_be_null=True, quoted_strings_can_be_null=True)) as reader:
                while sum(len(b) for b in batches) < rows:
                    try:
                        batches.append(reader.read_next_batch())
                    except StopIteration:
                        break
                    except (pa.ArrowInvalid, pa.ArrowTypeError):  # the whole read types it otherwise
                        break
        else:
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as file:
                batches = [next(file.iter_batches(batch_size=rows, columns=columns), None)]
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, ValueError) as exc:
        raise DataError(f"data.source {str(path)!r} could not be read: {_first_line(exc)}",
                        source=str(path)) from None
    batches = [b for b in batches if b is not None]
    if not batches:
        return pd.DataFrame(columns=columns)
    return _to_frame(_encode_text(pa.Table.from_batches(batches)))


def read_columns(source: str) -> list[str]:
    """The column names of a data source, read cheaply (for checks before any stage starts)."""
    if source.startswith("sklearn:"):
        return list(_load_bundled(source.split(":", 1)[1]).columns)
    from ._table_header import read_columns as read_header

    return read_header(source)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- checks before any stage starts ---------------------------------------------------

#: Rows of a data file the checks before a run plan its feature columns on (the head of the file).
CHECK_SAMPLE_ROWS = 10_000


def check_before_run(source: str, target: str, task: str | None, test_size: float, min_rows: int,
                     origins: dict[str, str] | None = None, *, drop_missing_target: bool = False,
                     columns: dict[str, str] | None = None, dates: str = "calendar",
                     high_cardinality: str = "group", max_categories: int = 30) -> str:
    """The problems 01_data would stop at, found before any stage starts (no run recorded).

    From the target column (read whole): too few rows, missing labels, one class, classes too
    rare to split, a test size that leaves a split empty. From the other columns: the column
    a stage would refuse (free text, a kind in ``data.columns`` that does not fit, a type
    that is no feature) and a table left with no feature. Those are planned as 01_data plans
    them, on the first :data:`CHECK_SAMPLE_ROWS` rows; a column refused there is read whole
    and planned again, so a refusal here is the one 01_data would make. Returns the task."""
    options = {"columns": {str(k): v for k, v in (columns or {}).items()}, "dates": dates,
               "high_cardinality": high_cardinality, "max_categories": max_categories}
    if source.startswith("sklearn:"):
        frame = _load_bundled(source.split(":", 1)[1])
        task = check_target(frame[target], source=source, target=target, task=task, test_size=test_size,
                            min_rows=min_rows, origins=origins or {}, drop_missing_target=drop_missing_target)
        validate_dataset(_dataset(frame, source, target, []), task=task, min_rows=min_rows, test_size=test_size,
                         drop_missing_target=drop_missing_target, **options)
        return task
    header = read_columns(source)
    _require_target(header, source, target)
    labels = _read_file(Path(source), [target])[target]
    task = check_target(labels, source=source, target=target, task=task, test_size=test_size, min_rows=min_rows,
                        origins=origins or {}, drop_missing_target=drop_missing_target)
    read = [c for c in header if options["columns"].get(c) != "drop" or c == target]
    head = read_head(Path(source), read, CHECK_SAMPLE_ROWS)
    if len(head) == len(labels):  # the whole table: exactly what 01_data will do
        unread = [c for c in header if c not in read]
        validate_dataset(_dataset(head, source, target, unread), task=task, min_rows=min_rows, test_size=test_size,
                         drop_missing_target=drop_missing_target, **options)
        return task
    refused = _refused_columns(head, target, source, **options)
    if refused:
        _refused_columns(_read_file(Path(source), [*refused, target]), target, source, raise_first=True,
                         **options)
    return task


def _refused_columns(frame: pd.DataFrame, target: str, source: str, *, raise_first: bool = False,
                     columns: dict[str, str], dates: str, high_cardinality: str, max_categories: int) -> list[str]:
    """The feature columns of ``frame`` that 01_data's planning refuses (rows without a label
    left out first); with ``raise_first``, the first one's DataError is raised."""
    frame = frame[frame[target].notna()] if frame[target].isna().any() else frame
    refused = []
    for name in frame.columns:
        if name == target:
            continue
        try:
            _plan_column(name, frame[name], len(frame), source=source, forced=columns.get(name, "auto"),
                         dates=dates, high_cardinality=high_cardinality, max_categories=max_categories)
        except DataError:
            if raise_first:
                raise
            refused.append(name)
    return refused


def check_target(labels: pd.Series, *, source: str, target: str, task: str | None, test_size: float,
                 min_rows: int, origins: dict[str, str] | None = None, drop_missing_target: bool = False) -> str:
    """Raise :class:`DataError` (or :class:`ParameterError` for ``data.*`` values that cannot
    fit this table) for a target that cannot be learned and split. Returns the task.

    Missing labels are refused, unless ``drop_missing_target``: then the rows without one
    are left out (and the other checks hold for the rows that remain)."""
    origins = origins or {}
    missing = int(labels.isna().sum())
    if missing and drop_missing_target:
        labels = labels.dropna()
    rows = len(labels)
    if rows < min_rows:
        left = f" with a label ({missing} without one dropped, data.drop_missing_target)" \
            if missing and drop_missing_target else ""
        raise DataError(f"{source} has {rows} rows{left}; data.min_rows asks for at least {min_rows}.",
                        source=source, hint="use more data, or lower data.min_rows.")
    if missing and not drop_missing_target:
        raise DataError(f"Target column {target!r} of {source} has {missing} missing values; "
                        "every row needs a label.", source=source, column=target,
                        hint=f"set data.drop_missing_target: true to drop those {missing} rows, or choose "
                             "another data.target.")
    task = task or infer_task(labels)
    if task == "regression" and not (pd.api.types.is_numeric_dtype(labels)
                                     and not pd.api.types.is_bool_dtype(labels)):
        raise DataError(f"Target column {target!r} of {source} must be numeric for regression. "
                        f"Got dtype {labels.dtype} instead (e.g. {_show(labels.iloc[0])}).",
                        source=source, column=target, hint="set task: classification.")
    n_test = int(np.ceil(rows * test_size))
    n_train = rows - n_test
    if n_train < 2 or n_test < 1:
        raise ParameterError([ParameterProblem(
            origins.get("data.test_size", "parameters"), "data.test_size",
            f"a fraction that leaves rows for both splits of {rows} rows",
            f"{test_size} ({n_train} training rows, {n_test} test rows)")])
    if task == "classification":
        counts = labels.value_counts()
        if len(counts) < 2:
            raise DataError(f"Target column {target!r} of {source} has a single class "
                            f"({_show(counts.index[0])}); classification needs at least two.",
                            source=source, column=target, hint="choose another data.target.")
        rare = counts[counts < 2]
        if len(rare):
            raise DataError(f"Target column {target!r} of {source}: classes {_list(rare.index)} have a "
                            "single row; a stratified split needs at least two rows per class.",
                            source=source, column=target, hint="drop those rows, or merge rare classes.")
        if len(counts) > max(MAX_CLASSES_INFERRED, rows // 2):
            raise DataError(f"Target column {target!r} of {source} has {len(counts)} classes for "
                            f"{rows} rows: it looks continuous.", source=source, column=target,
                            hint="set task: regression.")
        if n_test < len(counts) or n_train < len(counts):
            raise ParameterError([ParameterProblem(
                origins.get("data.test_size", "parameters"), "data.test_size",
                f"a fraction that leaves each of the {len(counts)} classes a row in both splits",
                f"{test_size} ({n_train} training rows, {n_test} test rows)")])
    return task


def infer_task(target: pd.Series) -> str:
    """classification for text, booleans and integers with few distinct values; else regression."""
    values = target.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    if pd.api.types.is_integer_dtype(values) or (values == values.round()).all():
        return "classification" if values.nunique() <= MAX_CLASSES_INFERRED else "regression"
    return "regression"


# --- validation: a plan per column ------------------------------------------------------

def validate_dataset(dataset: Dataset, *, task: str | None = None, min_rows: int = 20,
                     test_size: float = 0.2, columns: dict[str, str] | None = None,
                     dates: str = "calendar", high_cardinality: str = "group",
                     max_categories: int = 30, drop_missing_target: bool = False) -> Validation:
    """Check the data is usable for ``task`` and decide each column's kind (see the module's
    docstring). Raises :class:`DataError` naming the column and what is wrong. Rows without
    a label are refused, or left out and counted with ``drop_missing_target``."""
    frame, target, source = dataset.frame, dataset.target, dataset.source
    columns = {str(k): v for k, v in (columns or {}).items()}
    unread = [name for name in columns if name in dataset.unread]  # load_dataset checked they are the table's
    _require_columns({name: kind for name, kind in columns.items() if name not in unread},
                     [str(c) for c in frame.columns], source)
    task = check_target(frame[target], source=source, target=target, task=task, test_size=test_size,
                        min_rows=min_rows, drop_missing_target=drop_missing_target)
    unlabeled = int(frame[target].isna().sum())  # 0 unless drop_missing_target (refused above)
    if unlabeled:
        frame = frame[frame[target].notna()].reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    plans, dropped, warnings, keep = [], [], [], [target]
    for name in frame.columns:
        if name == target:
            left_out = f"; {unlabeled} rows without one dropped (data.drop_missing_target)" if unlabeled else ""
            plans.append(ColumnPlan(name, "target", f"the label ({task}){left_out}"))
            continue
        plan, converted = _plan_column(name, frame[name], len(frame), source=source, forced=columns.get(name, "auto"),
                                       dates=dates, high_cardinality=high_cardinality,
                                       max_categories=max_categories)
        plans.append(plan)
        if plan.kind == "dropped":
            dropped.append({"name": name, "reason": plan.action})
            continue
        if converted is not None:
            frame[name] = converted
            plan.distinct = None  # a conversion may merge or lose values: counted again if needed
        keep.append(name)
        share = frame[name].isna().mean()
        if share > 0.5:
            warnings.append(f"{name}: {share:.0%} missing (imputed)")
    if len(keep) == 1:
        raise DataError(f"{source} has no usable feature columns besides the target {target!r}.",
                        source=source, hint="see the reasons each column was dropped in 01_data's summary.")
    for name in unread:
        plans.append(ColumnPlan(name, "dropped", "dropped by data.columns (not read)"))
        dropped.append({"name": name, "reason": plans[-1].action})
    for item in dropped:
        warnings.append(f"{item['name']}: dropped ({item['reason']})")
    if unlabeled:
        warnings.append(f"{target}: {unlabeled} rows without a label dropped (data.drop_missing_target)")
    usable = frame[keep] if len(keep) < len(frame.columns) else frame
    return Validation(frame=usable, task=task, dropped=dropped, warnings=warnings, plans=plans,
                      rows=len(usable), max_categories=max_categories, unlabeled_rows=unlabeled)


def _plan_column(name: str, series: pd.Series, rows: int, *, source: str, forced: str, dates: str,
                 high_cardinality: str, max_categories: int) -> tuple[ColumnPlan, pd.Series | None]:
    """The column's plan, and the column converted to its kind's representation (None: as is)."""
    if forced == "drop":
        return ColumnPlan(name, "dropped", "dropped by data.columns"), None
    if series.isna().all():
        return ColumnPlan(name, "dropped", "all values missing"), None
    distinct = int(series.nunique(dropna=True))
    if distinct <= 1:
        return ColumnPlan(name, "dropped", "constant"), None
    plan, converted = _plan_varying_column(name, series, rows, distinct, source=source, forced=forced, dates=dates,
                                           high_cardinality=high_cardinality, max_categories=max_categories)
    plan.distinct = distinct
    return plan, converted


def _plan_varying_column(name: str, series: pd.Series, rows: int, distinct: int, *, source: str, forced: str,
                         dates: str, high_cardinality: str, max_categories: int
                         ) -> tuple[ColumnPlan, pd.Series | None]:
    if forced != "auto":
        return _forced_plan(name, series, forced, source=source, distinct=distinct,
                            high_cardinality=high_cardinality, max_categories=max_categories)
    if pd.api.types.is_bool_dtype(series):
        return ColumnPlan(name, "boolean", "boolean (0/1)"), _as_boolean(series)
    if _boolean_words(series):
        return ColumnPlan(name, "boolean", "boolean (0/1), from yes/no text"), _as_boolean(series)
    if pd.api.types.is_datetime64_any_dtype(series):
        return _date_plan(name, series, dates)
    textual = _is_textual(series)
    if textual and _looks_like_dates(series):
        return _date_plan(name, _as_datetime(series), dates)
    if _looks_like_id(name, series, distinct, rows, textual):
        return ColumnPlan(name, "dropped", "ID-like (unique per row or named like an id)"), None
    if _is_numeric(series):
        return ColumnPlan(name, "numeric", "numeric: imputed (median), scaled"), None
    if not textual:
        raise DataError(f"Column {name!r} of {source} has dtype {series.dtype}; features must be numbers, "
                        "booleans, dates or text.", source=source, column=name,
                        hint=f"set data.columns.{name}=drop to leave it out.")
    if _looks_like_free_text(series, distinct, rows):
        example = str(series.dropna().iloc[0])
        example = example if len(example) <= 40 else example[:37] + "..."
        raise DataError(
            f"Column {name!r} of {source} looks like free text ({distinct} distinct values, e.g. {example!r}); "
            "the kit does not guess how to model text.", source=source, column=name,
            hint=f"set data.columns.{name}=drop to leave it out, or data.columns.{name}=text to hash its "
                 f"words into features (or data.columns.{name}=categorical to treat each value as a level).")
    return _categorical_plan(name, distinct, high_cardinality, max_categories), _as_categories(series)


def _forced_plan(name, series, forced, *, source, distinct, high_cardinality, max_categories):
    try:
        if forced == "numeric":
            converted = series if _is_numeric(series) else pd.to_numeric(_plain_values(series), errors="raise")
            return ColumnPlan(name, "numeric", "numeric (data.columns): imputed (median), scaled"), \
                converted.astype(float)
        if forced == "boolean":
            if not (pd.api.types.is_bool_dtype(series) or _boolean_words(series)
                    or set(pd.unique(series.dropna())) <= {0, 1}):
                raise ValueError("values other than yes/no, true/false or 0/1")
            return ColumnPlan(name, "boolean", "boolean (data.columns)"), _as_boolean(series)
        if forced == "datetime":
            converted = series if pd.api.types.is_datetime64_any_dtype(series) else _as_datetime(series, strict=True)
            return ColumnPlan(name, "datetime", "calendar features (data.columns): year, month, day, "
                              "day of week, hour"), _naive(converted)
        if forced == "text":
            return ColumnPlan(name, "text", "text (data.columns): words hashed into features"), \
                _as_text(series)
        return _categorical_plan(name, distinct, high_cardinality, max_categories, forced=True), \
            _as_categories(series)
    except (ValueError, TypeError) as exc:
        raise DataError(f"Column {name!r} of {source} cannot be read as {forced} (data.columns.{name}): "
                        f"{_first_line(exc)}.", source=source, column=name,
                        hint=f"set data.columns.{name} to another kind, or auto.") from None


def _categorical_plan(name: str, distinct: int, high_cardinality: str, max_categories: int,
                      forced: bool = False) -> ColumnPlan:
    by = " (data.columns)" if forced else ""
    if distinct <= max_categories:
        return ColumnPlan(name, "categorical", f"categorical{by}: one-hot, {distinct} levels", "onehot")
    if high_cardinality == "target_encode":
        return ColumnPlan(name, "categorical", f"categorical{by}: {distinct} levels, target-encoded "
                          "(data.high_cardinality)", "target")
    return ColumnPlan(name, "categorical", f"categorical{by}: {distinct} levels, the {max_categories - 1} most "
                      "frequent one-hot, the rest grouped as one (data.max_categories)", "grouped")


def _date_plan(name: str, series: pd.Series, dates: str) -> tuple[ColumnPlan, pd.Series | None]:
    if dates == "drop":
        return ColumnPlan(name, "dropped", "date (data.dates: drop)"), None
    return (ColumnPlan(name, "datetime", "calendar features: year, month, day, day of week, hour"),
            _naive(series))


def _naive(series: pd.Series) -> pd.Series:
    if getattr(series.dt, "tz", None) is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    return series.astype("datetime64[ns]")


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _is_textual(series: pd.Series) -> bool:
    return (isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(series)
            or pd.api.types.is_string_dtype(series))


def _levels(series: pd.Series, limit: int = 5_000) -> pd.Series:
    """The distinct non-missing values (a category's levels; a sample for other columns)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return pd.Series(series.cat.categories)
    values = series.dropna()
    return pd.Series(values.iloc[:limit].unique())


def _boolean_words(series: pd.Series) -> bool:
    if not _is_textual(series):
        return False
    levels = _levels(series)
    if len(levels) > 4 or not all(isinstance(v, str) for v in levels):
        return False
    lowered = {v.strip().lower() for v in levels}
    return lowered <= set(BOOLEAN_WORDS) and len({BOOLEAN_WORDS[v] for v in lowered}) == 2 \
        and (len(levels) == series.nunique() or isinstance(series.dtype, pd.CategoricalDtype))


def _as_boolean(series: pd.Series) -> pd.Series:
    """1.0 / 0.0 / NaN: the model's representation of a boolean (JSON true/false in requests)."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype(float)
    if _is_numeric(series):
        return series.astype(float)
    mapping = {v: float(BOOLEAN_WORDS[str(v).strip().lower()]) for v in _levels(series, limit=10**9)
               if str(v).strip().lower() in BOOLEAN_WORDS}
    if isinstance(series.dtype, pd.CategoricalDtype):  # by the codes: no Python object per row
        by_code = np.array([mapping.get(level, np.nan) for level in series.cat.categories] + [np.nan])
        return pd.Series(by_code[series.cat.codes.to_numpy()], index=series.index, name=series.name)
    return series.map(mapping).astype(float)


def _looks_like_dates(series: pd.Series) -> bool:
    sample = _levels(series, limit=200).head(200)
    if not len(sample) or not all(isinstance(v, str) for v in sample):
        return False
    if not sample.str.match(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$").all():
        return False
    return bool(pd.to_datetime(sample, format="ISO8601", errors="coerce", utc=True).notna().all())


def _as_datetime(series: pd.Series, strict: bool = False) -> pd.Series:
    values = _plain_values(series)
    converted = pd.to_datetime(values, format="ISO8601", errors="raise" if strict else "coerce", utc=True)
    return converted.dt.tz_localize(None)


def _looks_like_id(name: str, series: pd.Series, distinct: int, rows: int, textual: bool) -> bool:
    integer = pd.api.types.is_integer_dtype(series)
    if not (integer or textual):
        return False
    if _ID_NAME.search(name) or name.lower() == "id":
        return True
    if distinct < rows or rows < 20:
        return False
    if textual:
        sample = _levels(series, limit=200).astype(str)
        return not sample.str.contains(r"\s").mean() > 0.5  # unique words per row, not sentences
    return bool(series.max() - series.min() + 1 == rows)  # a row counter


def _looks_like_free_text(series: pd.Series, distinct: int, rows: int) -> bool:
    sample = _levels(series, limit=500).astype(str)
    words = sample.str.split().str.len()
    return bool(distinct > min(1000, rows // 2) and words.median() >= 3) or bool(words.median() >= 6)


def _plain_values(series: pd.Series) -> pd.Series:
    return series.astype(object) if isinstance(series.dtype, pd.CategoricalDtype) else series


def _as_categories(series: pd.Series) -> pd.Series:
    """A pandas categorical of text levels: how categorical features travel between stages
    (the server sends the same text values)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        categories = series.cat.categories
        if all(isinstance(c, str) for c in categories):
            return series
        return series.cat.rename_categories([str(c) for c in categories])
    values = series.astype(object)
    text = values.where(values.isna(), values.map(str, na_action="ignore"))
    return text.astype("category")


def _as_text(series: pd.Series) -> pd.Series:
    values = _plain_values(series).astype(object)
    return values.where(values.isna(), values.map(str, na_action="ignore"))


def _show(value: Any) -> str:
    """A value as a user wrote it: ``1``, ``'yes'``, never ``np.int64(1)``."""
    value = value.item() if hasattr(value, "item") else value
    return repr(value)


# --- the schema -------------------------------------------------------------------------

def infer_schema(validation: Validation, target: str, *, plot_sample: int = 20_000) -> dict[str, Any]:
    """The feature schema: names, kinds, dtypes, ranges or categories, the classes, and a
    note per column of the table (what the kit did with it)."""
    frame = validation.frame
    features = []
    plans = {plan.name: plan for plan in validation.plans}
    for name in frame.columns:
        if name == target:
            continue
        series = frame[name]
        plan = plans.get(name) or _default_plan(name, series)
        entry: dict[str, Any] = {"name": name, "kind": plan.kind, "dtype": str(series.dtype),
                                 "nullable": bool(series.isna().any())}
        if plan.kind in ("numeric", "boolean"):
            entry.update(min=_scalar(series.min()), max=_scalar(series.max()),
                         integer=bool(pd.api.types.is_integer_dtype(series)) if plan.kind == "numeric" else None)
        elif plan.kind == "datetime":
            entry.update(min_date=str(series.min()), max_date=str(series.max()))
        elif plan.kind == "categorical":
            levels = _levels(series, limit=10**9)
            entry.update(encoding=plan.encoding or "onehot", levels=int(len(levels)),
                         max_categories=validation.max_categories if plan.encoding == "grouped" else None,
                         categories=(sorted((_scalar(v) for v in levels), key=str)
                                     if len(levels) <= MAX_RECORDED_CATEGORIES else None))
        features.append({k: v for k, v in entry.items() if v is not None or k in ("categories",)})
    rows = int(len(frame))
    schema: dict[str, Any] = {
        "version": SCHEMA_VERSION, "task": validation.task, "target": target,
        "target_dtype": str(frame[target].dtype), "features": features,
        "dropped": validation.dropped, "rows": rows, "unlabeled_rows_dropped": validation.unlabeled_rows,
        "columns": [plan.as_json() for plan in validation.plans] or None,
        "plot_sample": min(rows, plot_sample),
    }
    if validation.task == "classification":
        schema["classes"] = sorted((_scalar(v) for v in frame[target].unique()), key=str)
    return schema


def _default_plan(name: str, series: pd.Series) -> ColumnPlan:
    if _is_numeric(series):
        return ColumnPlan(name, "numeric", "numeric")
    return ColumnPlan(name, "categorical", "categorical", "onehot")


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# --- the split --------------------------------------------------------------------------

def split_dataset(validation: Validation, target: str, *, test_size: float, seed: int):
    """Train/test split, stratified by the target when classifying (each split is one copy
    of its rows; the table itself is not copied)."""
    from sklearn.model_selection import train_test_split

    frame = validation.frame
    stratify = frame[target] if validation.task == "classification" else None
    train_index, test_index = train_test_split(np.arange(len(frame)), test_size=test_size, random_state=seed,
                                               stratify=stratify)
    return (frame.take(np.sort(train_index)).reset_index(drop=True),
            frame.take(np.sort(test_index)).reset_index(drop=True))


def fingerprint_frame(*frames: pd.DataFrame) -> str:
    """A content hash of frames (values, column names and dtypes), each hashed in turn."""
    import hashlib

    digest = hashlib.sha256()
    for frame in frames:
        digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return digest.hexdigest()


def save_splits(train: pd.DataFrame, test: pd.DataFrame, schema: dict, artifacts: Path) -> dict[str, Path]:
    from . import _atomic
    from . import artifacts as catalog

    paths = {"train": catalog.TRAIN_SPLIT.path(artifacts), "test": catalog.TEST_SPLIT.path(artifacts),
             "schema": catalog.SCHEMA.path(artifacts)}
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    # the two splits are written at once (parquet encoding and compression run without the
    # GIL), each atomically, while this thread hashes them; the schema, which names their
    # fingerprint, is written only when both are in place
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlops-kit-parquet") as pool:
        writes = [pool.submit(_atomic.write_with, paths[name], lambda tmp, rows=rows: rows.to_parquet(tmp, index=False))
                  for name, rows in (("train", train), ("test", test))]
        fingerprint = fingerprint_frame(train, test)
        for write in writes:
            write.result()
    schema = {**schema, "fingerprint": fingerprint}
    catalog.SCHEMA.save(artifacts, schema)
    return paths


def load_splits(artifacts: Path, *, train: bool = True) -> tuple[pd.DataFrame | None, pd.DataFrame, dict]:
    """The splits and the schema (a dict). ``train=False`` skips reading the training split."""
    from . import artifacts as catalog

    schema = catalog.SCHEMA.load(artifacts).to_json()
    test_path = catalog.TEST_SPLIT.require(artifacts)
    train_frame = pd.read_parquet(catalog.TRAIN_SPLIT.require(artifacts)) if train else None
    return train_frame, pd.read_parquet(test_path), schema


def load_target(artifacts: Path, schema: dict, split: str = "train") -> pd.Series:
    """One split's target column alone (column projection)."""
    from . import artifacts as catalog

    path = (catalog.TRAIN_SPLIT if split == "train" else catalog.TEST_SPLIT).require(artifacts)
    return pd.read_parquet(path, columns=[schema["target"]])[schema["target"]]


# --- what 01_data shows -----------------------------------------------------------------

def summarize(validation: Validation, target: str) -> pd.DataFrame:
    """One row per column of the table: its kind, what the kit does with it, dtype, missing
    share, distinct values, range or top value."""
    rows = []
    frame = validation.frame
    plans = validation.plans or [_default_plan(n, frame[n]) for n in frame.columns]
    for plan in plans:
        row = {"column": plan.name + (" (target)" if plan.name == target else ""), "kind": plan.kind,
               "what the kit does": plan.action, "dtype": "", "missing": "", "distinct": "",
               "range / top": ""}
        if plan.name in frame.columns:
            series = frame[plan.name]
            distinct = plan.distinct if plan.distinct is not None else int(series.nunique())
            row.update(dtype=str(series.dtype), missing=f"{series.isna().mean():.1%}",
                       distinct=str(distinct), **{"range / top": _range_or_top(series)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("column")


def _range_or_top(series: pd.Series) -> str:
    if not series.notna().any():
        return ""
    if _is_numeric(series) or pd.api.types.is_datetime64_any_dtype(series):
        low, high = series.min(), series.max()
        if pd.api.types.is_datetime64_any_dtype(series):
            return f"{low} .. {high}"
        return f"{low:.4g} .. {high:.4g}"
    counts = series.value_counts()
    return str(counts.index[0]) if len(counts) else ""


def _list(values) -> str:
    values = [str(v.item() if hasattr(v, "item") else v) for v in values]
    shown = ", ".join(repr(v) for v in values[:12])
    return shown + (f" and {len(values) - 12} more" if len(values) > 12 else "")


def sample_rows(frame: pd.DataFrame, size: int, seed: int = 0) -> pd.DataFrame:
    """At most ``size`` rows, drawn without replacement (seeded): what the plots are drawn from."""
    return frame if len(frame) <= size else frame.sample(n=size, random_state=seed)


def class_counts(labels: pd.Series) -> pd.Series:
    """Rows per class, by the class's text (as the plot names it), in the order of those
    texts: the distinct values are counted first, so only they are made text, not each row
    (Python objects, where ``1`` and ``True`` count as one value, are made text row by row)."""
    if pd.api.types.is_object_dtype(labels):
        return labels.astype(str).value_counts().sort_index()
    counts = labels.value_counts()
    return counts.groupby(counts.index.map(str)).sum().sort_index()


def plot_target(frame: pd.DataFrame, target: str, task: str, artifacts: Path, *, sample: int = 20_000,
                seed: int = 0) -> Path:
    """Rows per class (counted over every row), or the target's distribution (from a
    sample); saved as ``target.png``."""
    from . import artifacts as catalog
    from ._plots import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    if task == "classification":
        class_counts(frame[target]).plot.bar(ax=ax)
        ax.set(title=f"Rows per class of {target!r}", xlabel=target, ylabel="rows")
    else:
        sample_rows(frame[[target]], sample, seed)[target].plot.hist(ax=ax, bins=30)
        shown = min(len(frame), sample)
        ax.set(title=f"Distribution of {target!r}" + (f" ({shown} sampled rows)" if shown < len(frame) else ""),
               xlabel=target)
    return save_figure(fig, catalog.TARGET_PLOT.path(artifacts))


def schema_table(schema: dict) -> pd.DataFrame:
    """The feature schema as a table: one row per feature."""
    rows = []
    for feature in schema["features"]:
        kind = feature["kind"]
        if kind in ("numeric", "boolean"):
            detail = f"{feature['min']:.4g} .. {feature['max']:.4g}"
        elif kind == "datetime":
            detail = f"{feature.get('min_date')} .. {feature.get('max_date')}"
        elif kind == "categorical":
            categories = feature.get("categories")
            if categories is None:
                detail = f"{feature.get('levels')} levels (any text accepted)"
            else:
                shown = ", ".join(map(str, categories[:8]))
                extra = len(categories) - 8
                detail = shown + (f" (+{extra} more)" if extra > 0 else "")
            if feature.get("encoding") not in (None, "onehot"):
                detail = f"[{feature['encoding']}] " + detail
        else:
            detail = "any text"
        rows.append({"feature": feature["name"], "kind": kind, "dtype": feature["dtype"],
                     "missing allowed": feature["nullable"], "range / categories": detail})
    return pd.DataFrame(rows).set_index("feature")
