"""The built-in stages' preflights (:attr:`mlops_kit.stages.Stage.preflight`): what would
fail inside the data and train stages, found before any stage starts. Imported by name when
a run starts (pyarrow and the parameter schema; never pandas or scikit-learn: those checks
are returned, to run where a stage's libraries are imported)."""

from __future__ import annotations

from pathlib import Path

from .errors import ParameterError, ParameterProblem
from .params import LoadedParams
from .stages import Check


def data(loaded: LoadedParams) -> list[Check]:
    """The target column in the file's header (checked here, pyarrow alone); the data's
    target (rows, classes, a split that leaves both sides rows), returned as a check."""
    params = loaded.params
    source = params.data.source
    if source.startswith("sklearn:"):
        if params.data.target != "target":
            raise ParameterError([ParameterProblem(
                loaded.source_of("data.target"), "data.target", f"'target' (the label column of {source})",
                repr(params.data.target))])
    else:
        import difflib

        from ._table_header import read_columns
        columns = read_columns(source)  # pyarrow alone: this process needs no pandas
        if params.data.target not in columns:
            close = difflib.get_close_matches(params.data.target, columns, n=1)
            raise ParameterError([ParameterProblem(
                loaded.source_of("data.target"), "data.target", f"a column of {source}: {', '.join(columns[:15])}",
                repr(params.data.target), close[0] if close else None)])
        unknown = [name for name in params.data.columns if name not in columns]
        if unknown:
            close = difflib.get_close_matches(unknown[0], columns, n=1)
            raise ParameterError([ParameterProblem(
                loaded.source_of(f"data.columns.{unknown[0]}"), f"data.columns.{unknown[0]}",
                f"a column of {source}", "no such column", close[0] if close else None)])
    return [("mlops_kit.data:check_before_run",
             {"source": source, "target": params.data.target, "task": params.task,
              "test_size": params.data.test_size, "min_rows": params.data.min_rows,
              "origins": {key: loaded.source_of(key) for key in ("data.test_size", "data.min_rows")},
              **params.data.model_dump(include={"drop_missing_target", "columns", "dates", "high_cardinality",
                                                "max_categories"})})]


def train(loaded: LoadedParams) -> list[Check]:
    """The chosen model's hyperparameters, returned as a check (needs scikit-learn)."""
    from .params import SKLEARN_DATASETS

    params = loaded.params
    source = params.data.source
    task = params.task or (SKLEARN_DATASETS.get(source.split(":", 1)[1]) if source.startswith("sklearn:")
                           else None)
    return [("mlops_kit.train:check_train_params",
             {"model": params.train.model, "task": task, "params": params.train.params,
              "origin": loaded.source_of("train.params"),
              "origins": {key: loaded.source_of(f"train.params.{key}") for key in params.train.params}})]


#: the tables a monitor run reads (labels) and writes (the labelled live rows)
TABLE_SUFFIXES = (".csv", ".parquet")


def monitor(loaded: LoadedParams) -> list[Check]:
    """The files a monitor run reads and writes, named before it starts: the labels file
    (a CSV or parquet file that exists), the log folder, the export's kind and folder."""

    params = loaded.params.monitor
    problems = []

    def problem(key: str, expected: str, found: str) -> None:
        problems.append(ParameterProblem(loaded.source_of(f"monitor.{key}"), f"monitor.{key}", expected, found))

    if params.labels is not None:
        labels = Path(params.labels)
        if labels.suffix.lower() not in TABLE_SUFFIXES:
            problem("labels", "a .csv or .parquet file", repr(params.labels))
        elif not labels.is_file():
            problem("labels", "an existing file", f"no file at {params.labels!r}")
        else:
            from ._table_header import read_columns
            from .errors import DataError

            try:
                columns = read_columns(labels)
            except DataError as exc:
                columns = None
                problem("labels", "a readable table", str(exc).split(": ", 1)[-1])
            target = loaded.params.data.target
            absent = [c for c in ("request_id", target) if columns is not None and c not in columns]
            if absent:
                problem("labels", f"a table with the columns 'request_id' and {target!r} (the target; 'row' "
                        "optional)", f"the columns {', '.join(columns[:10]) or 'none'} in {params.labels!r}")
    _check_log(loaded, problem)
    if params.export_labelled is not None:
        export = Path(params.export_labelled)
        if export.suffix.lower() not in TABLE_SUFFIXES:
            problem("export_labelled", "a path ending in .csv or .parquet", repr(params.export_labelled))
        elif not export.parent.is_dir():
            problem("export_labelled", "a path in an existing folder", f"no folder {str(export.parent)!r}")
        if params.labels is None:
            problem("export_labelled", "monitor.labels set too (only labelled rows are exported)", "no labels")
    if problems:
        raise ParameterError(problems)
    return []


def _check_log(loaded: LoadedParams, problem) -> None:
    """The request log: ``monitor.log_dir``, else the local deploy's log of ``monitor.model_run``
    (:func:`mlops_kit._paths.monitored_log_dir`); a folder that holds log files."""
    from . import _paths
    from .monitor.requestlog import replica_log_files  # no pandas: the server imports it too

    params = loaded.params.monitor
    log = _paths.monitored_log_dir(params.log_dir, params.model_run)
    if log is None:
        problem("log_dir", "the request log's folder, or monitor.model_run (its local deploy's log)", "neither")
    elif params.log_dir is None and loaded.params.deploy.target == "microk8s":
        problem("log_dir", "the request log's folder: `mlops-kit monitor RUN_ID` collects it from every pod through "
                "the Kubernetes API", "none, and deploy.target microk8s")
    elif not log.is_dir():
        problem("log_dir", "an existing folder (the request log)", f"no folder at {str(log)!r}")
    elif not replica_log_files(log):
        problem("log_dir", "a request log (requests-*.jsonl files of a server started with a sample above 0)",
                f"none in {str(log)!r}")
