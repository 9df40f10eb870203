"""Run stages with papermill into a run folder.

Each stage executes in a fresh kernel, and its executed notebook is the record. What
makes a run slow under plain papermill is the kernels: each starts and imports pandas,
scikit-learn and matplotlib again (about 3 s a stage). So the stages' kernels are forked
from one parent that did those imports once (:mod:`mlops_kit._kernels`), while this
process imports papermill; HTML reports are exported by a background thread while the
next stage runs.
"""

from __future__ import annotations

import enum
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import _atomic, _paths, cache, ledger
from .errors import ArtifactError, MlopsKitError, RunCancelled, StageFailed  # noqa: F401 - RunCancelled is public here too
from .params import LoadedParams, RunParams
from .stages import STAGES, Stage, needed_inputs, optional_inputs, producer_of, select_stages

#: ``on_event(event)`` receives these as the run goes.
EventHandler = Callable[["RunEvent"], None]

KERNEL_NAME = "python3"


class EventKind(str, enum.Enum):
    """What happened. A ``str`` enum: ``event.kind == "stage_started"`` reads as before."""

    RUN_STARTED = "run_started"
    STAGE_STARTED = "stage_started"
    STAGE_FINISHED = "stage_finished"
    STAGE_FAILED = "stage_failed"
    STAGE_CACHED = "stage_cached"
    RUN_FINISHED = "run_finished"
    LOG = "log"


@dataclass
class RunEvent:
    kind: EventKind
    run_id: str
    stage: str | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = EventKind(self.kind)


# --- checks before any stage starts ---------------------------------------------------

def preflight(loaded: LoadedParams, stages: list[Stage]) -> list[tuple[str, dict]]:
    """Mistakes that would only show inside a stage, found before any starts: the target
    column in the file's header, checked here; the data's target (rows, classes, a split
    that leaves both sides rows) and the chosen model's hyperparameters, returned as checks
    to run where pandas and scikit-learn are imported (:meth:`KernelPool.check`)."""
    from .errors import ParameterError, ParameterProblem
    from .params import SKLEARN_DATASETS

    params = loaded.params
    names = {s.name for s in stages}
    source = params.data.source
    checks = []
    if "data" in names:
        if source.startswith("sklearn:"):
            if params.data.target != "target":
                raise ParameterError([ParameterProblem(
                    loaded.source_of("data.target"), "data.target", f"'target' (the label column of {source})",
                    repr(params.data.target))])
        else:
            from ._table_header import read_columns
            columns = read_columns(source)  # pyarrow alone: this process needs no pandas
            if params.data.target not in columns:
                import difflib
                close = difflib.get_close_matches(params.data.target, columns, n=1)
                raise ParameterError([ParameterProblem(
                    loaded.source_of("data.target"), "data.target", f"a column of {source}: {', '.join(columns[:15])}",
                    repr(params.data.target), close[0] if close else None)])
            unknown = [name for name in params.data.columns if name not in columns]
            if unknown:
                import difflib
                close = difflib.get_close_matches(unknown[0], columns, n=1)
                raise ParameterError([ParameterProblem(
                    loaded.source_of(f"data.columns.{unknown[0]}"), f"data.columns.{unknown[0]}",
                    f"a column of {source}", "no such column", close[0] if close else None)])
        checks.append(("mlops_kit.data:check_before_run",
                       {"source": source, "target": params.data.target, "task": params.task,
                        "test_size": params.data.test_size, "min_rows": params.data.min_rows,
                        "origins": {key: loaded.source_of(key) for key in ("data.test_size", "data.min_rows")},
                        **params.data.model_dump(include={"drop_missing_target", "columns", "dates",
                                                          "high_cardinality", "max_categories"})}))
    if "train" in names:
        task = params.task or (SKLEARN_DATASETS.get(source.split(":", 1)[1]) if source.startswith("sklearn:")
                               else None)
        checks.append(("mlops_kit.train:check_train_params",
                       {"model": params.train.model, "task": task, "params": params.train.params,
                        "origin": loaded.source_of("train.params"),
                        "origins": {key: loaded.source_of(f"train.params.{key}") for key in params.train.params}}))
    return checks


# --- kernels ---------------------------------------------------------------------------

class KernelPool:
    """One fresh kernel per stage, all asked for when the run starts.

    By default they are forked from a zygote that imported the stages' modules once
    (:mod:`mlops_kit._kernels`); with ``MLOPS_KIT_KERNELS=spawn`` each kernel is its own
    process that imports its stage's modules as it boots.
    """

    #: checks that read the data table: answered by a process of their own (see start)
    TABLE_CHECKS = ("mlops_kit.data:",)

    def __init__(self, stages: list[Stage], cwd: Path):
        self._stages = list(stages)
        self._cwd = cwd
        self._managers: dict[str, Any] = {}
        self._zygote = None
        self._reader = None
        self._connection_dir: str | None = None

    def start(self, checks: list[tuple[str, dict]] = ()) -> None:
        """Ask for every stage's kernel, and for ``checks`` (``("module:function", kwargs)``
        calls, answered by :meth:`check`). Those that read the table start at once in a
        process of their own, beside the zygote's imports (reading a column of a large CSV
        takes seconds; the zygote must not keep what it read); the others are queued in the
        zygote right after the first kernel: they need scikit-learn, which the first stage
        imports anyway."""
        from ._kernels import MODE_ENV, CallProcess, private_connection_dir, take_zygote

        self._checks = list(checks)
        self._connection_dir = private_connection_dir()
        if os.environ.get(MODE_ENV, "fork") == "spawn":
            self._start_spawned()
            return
        reading = [c for c in self._checks if c[0].startswith(self.TABLE_CHECKS)]
        self._reader = CallProcess(reading) if reading else None
        self._zygote = take_zygote()  # the CLI's, started before the run was planned, or a new one
        self._tickets: list[int | None] = [None] * len(self._checks)
        for position, stage in enumerate(self._stages):
            self._fork(stage)
            if position == 0:
                self._tickets = [None if c in reading else self._zygote.send({"op": "call", "function": c[0],
                                                                               "kwargs": c[1]})
                                 for c in self._checks]

    def _fork(self, stage: Stage) -> None:
        from ._kernels import ForkedKernelManager

        km = ForkedKernelManager(kernel_name=KERNEL_NAME)
        km.start_forked(self._zygote, str(self._cwd), modules=stage.warm_imports, folder=self._connection_dir)
        self._managers[stage.name] = km

    def _start_spawned(self) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        for stage in self._stages:
            km = AsyncKernelManager(kernel_name=KERNEL_NAME,
                                    connection_file=os.path.join(self._connection_dir, f"kernel-{stage.name}.json"))
            code = "; ".join(f"import {module}" for module in stage.warm_imports) or "pass"
            run_sync(km.start_kernel)(extra_arguments=[f"--IPKernelApp.exec_lines={code}",
                                                       "--IPKernelApp.log_level=ERROR"], cwd=str(self._cwd))
            self._managers[stage.name] = km

    def check(self) -> None:
        """Wait for the queued checks; raise the first problem they found."""
        from .errors import ParameterError, ParameterProblem

        if self._zygote is None:
            import importlib
            for function, kwargs in self._checks:
                module, _, name = function.partition(":")
                getattr(importlib.import_module(module), name)(**kwargs)
            return
        read = iter(self._reader.replies() if self._reader is not None else [])
        for ticket in self._tickets:
            answer = next(read) if ticket is None else self._zygote.reply(ticket)
            if "error" in answer:
                error = answer["error"]
                if error["problems"]:
                    raise ParameterError([ParameterProblem(**p) for p in error["problems"]])
                if error["type"] == "DataError":
                    from .errors import DataError
                    raise DataError(error["message"])
                raise MlopsKitError(f"{error['type']}: {error['message']}")

    @property
    def stages(self) -> list[Stage]:
        """The stages this pool has kernels for, in order."""
        return list(self._stages)

    def take(self, stage: Stage):
        return self._managers.get(stage.name)

    def stop(self, stage: Stage) -> None:
        km = self._managers.pop(stage.name, None)
        if km is not None:
            _shutdown(km)

    def stop_all(self) -> None:
        for name in list(self._managers):
            _shutdown(self._managers.pop(name))
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._connection_dir is not None:
            import shutil

            shutil.rmtree(self._connection_dir, ignore_errors=True)  # the kernels' HMAC keys
            self._connection_dir = None


def _shutdown(km) -> None:
    from jupyter_core.utils import run_sync

    try:
        run_sync(km.shutdown_kernel)(now=True)
    except Exception:  # noqa: BLE001 - a kernel that is already gone
        pass


# --- reports ---------------------------------------------------------------------------

_EXPORTER = None


def _html_exporter():
    """One HTMLExporter per process: its templates are loaded and compiled once."""
    global _EXPORTER
    if _EXPORTER is None:
        from nbconvert import HTMLExporter

        _EXPORTER = HTMLExporter()
    return _EXPORTER


def skip_iri_grammar() -> None:
    """Keep jsonschema from compiling its IRI grammar in this process.

    papermill imports nbformat, which imports jsonschema, whose format checkers import
    ``rfc3987_syntax`` when it is installed (jupyter-events' extras install it): that module
    builds a Lark parser at import time, 2 s of CPU before the first stage can start, more
    than all of papermill. Notebooks hold no IRIs to check (nbformat's schema has no ``iri``
    format), so the check is left out: jsonschema treats the module as absent. Called by
    ``mlops-kit run``, whose process is the kit's own (not by :func:`run_pipeline`, which may
    run inside a user's kernel)."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]


def export_html(notebook: Path, report: Path) -> Path:
    import nbformat

    body, _ = _html_exporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    return _atomic.write_text(report, body)


# --- the run ---------------------------------------------------------------------------

def run_pipeline(loaded: LoadedParams, *, stages: list[str] | None = None, reuse_from: str | None = None,
                 use_cache: bool = True, on_event: EventHandler | None = None,
                 cancel: threading.Event | None = None) -> dict:
    """Run the selected stages (default: ``params.stages``) into a new run folder.

    A stage whose fingerprint matches a succeeded stage of an earlier run is reused, not
    executed (``use_cache=False`` executes everything). Stages not selected whose outputs
    a selected stage needs are taken from ``reuse_from`` (default: the newest run that has
    them). Returns the final record; raises :class:`StageFailed` (the record says which
    stage and cell) when a stage fails.
    """
    params = loaded.params
    selected = select_stages(stages, params.stages)
    _check_notebooks(selected)
    needed = needed_inputs(selected, params)
    source_run = _find_source_run(needed, reuse_from) if needed else None
    if source_run is not None:
        needed += [item for item in optional_inputs(selected)
                   if item not in needed and (source_run.artifacts / item).is_file()]
    known = {item: _atomic.sha256_file(source_run.artifacts / item) for item in needed}
    checks = preflight(loaded, selected)
    # when the first stage runs whatever the data file's hash, its kernel and the checks start
    # now, and the file (seconds of sha256 for a large table) is hashed while they import
    early = _start_pool(selected, checks) if selected and cache.surely_runs(selected[0], params, known,
                                                                             use_cache=use_cache) else None
    try:
        plans = cache.plan(params, selected, known, use_cache=use_cache)
    except BaseException:
        if early is not None:
            early.stop_all()
        raise
    kernels = _start_kernels(plans, checks, started=early)  # parameter mistakes surface here, before any run exists
    try:
        run = ledger.create_run({
            "params": params.model_dump(mode="json"),
            "parameter_files": [str(f) for f in loaded.files], "overrides": loaded.overrides,
            "stages_requested": [s.name for s in selected],
            "git": ledger.git_state(), "versions": _versions(),
            "stages": {s.name: {"status": "pending"} for s in selected},
        })
    except BaseException:
        if kernels is not None:
            kernels.stop_all()
        raise
    if source_run is not None:
        _reuse_inputs(run, source_run, needed)
    return _execute(run, params, plans, kernels, use_cache, on_event, cancel)


def resume_run(run_id: str, *, use_cache: bool = True, on_event: EventHandler | None = None,
               cancel: threading.Event | None = None) -> dict:
    """Continue a failed or interrupted run, in its own folder, from its first stage that
    did not succeed (with the parameters it was started with)."""
    from .errors import RunNotResumable

    record = ledger.read_run(run_id, champion=False)
    run = ledger.open_run(run_id)
    if record["status"] == "running":
        raise RunNotResumable(run_id, "it is still running (its process holds the run's lock)")
    if record["status"] == "succeeded":
        raise RunNotResumable(run_id, "it succeeded; there is nothing to resume")
    params = RunParams.model_validate(record["params"])
    selected = select_stages(record["stages_requested"], params.stages)
    _check_notebooks(selected)
    done: dict[str, str] = {}
    remaining = []
    for stage in selected:
        info = record["stages"].get(stage.name, {})
        if not remaining and info.get("status") in ("succeeded", "cached") and                 cache.verify_outputs(run_id, info.get("outputs", {}), stage) is None:
            done.update(info["outputs"])
            continue
        remaining.append(stage)
    for info in record["stages"].values():  # inputs taken from another run at the start
        if info.get("status") == "reused":
            done.update(info.get("outputs", {}))
    plans = cache.plan(params, remaining, done, use_cache=use_cache, exclude=run_id)
    kernels = _start_kernels(plans, [])
    try:
        run.acquire()
        for stage in remaining:
            run.update_stage(stage.name, status="pending", error=None)
        run.update(status="running", pid=os.getpid(), error=None, finished=None,
                   resumed=[*record.get("resumed", []), ledger.now()])
    except BlockingIOError:
        if kernels is not None:
            kernels.stop_all()
        raise RunNotResumable(run_id, "another process holds the run's lock") from None
    except BaseException:
        if kernels is not None:
            kernels.stop_all()
        run.release()
        raise
    return _execute(run, params, plans, kernels, use_cache, on_event, cancel)


def explain(loaded: LoadedParams, *, stages: list[str] | None = None, reuse_from: str | None = None,
            use_cache: bool = True) -> list[cache.StagePlan]:
    """What ``run_pipeline`` would do with each stage, and why; runs nothing."""
    selected = select_stages(stages, loaded.params.stages)
    needed = needed_inputs(selected, loaded.params)
    known = {}
    if needed:
        source_run = _find_source_run(needed, reuse_from)
        known = {item: _atomic.sha256_file(source_run.artifacts / item) for item in needed}
    return cache.plan(loaded.params, selected, known, use_cache=use_cache)


def _check_notebooks(selected: list[Stage]) -> None:
    notebooks_dir = _paths.notebooks_dir()
    for stage in selected:
        if not (notebooks_dir / stage.notebook).is_file():
            raise ArtifactError(f"The notebook of stage {stage.name!r} is missing: "
                                f"{notebooks_dir / stage.notebook}.", path=notebooks_dir / stage.notebook)


def _start_pool(to_run: list[Stage], checks: list) -> "KernelPool":
    """Ask for the kernels of ``to_run`` and for the checks of those stages (returns at once)."""
    kernels = KernelPool(to_run, cwd=_paths.notebooks_dir())
    names = {s.name for s in to_run}
    # a check belongs to the stage its module is named after (mlops_kit.data -> data)
    kernels.start([c for c in checks if c[0].split(":")[0].rsplit(".", 1)[-1] in names])
    return kernels


def _start_kernels(plans: list[cache.StagePlan], checks: list,
                   started: "KernelPool | None" = None) -> "KernelPool | None":
    """Kernels for the stages from the first one that must run, their checks answered; None
    when all are reused. ``started``: a pool asked for before the plan was made, taken when
    it is for exactly these stages (else stopped)."""
    first = next((i for i, p in enumerate(plans) if p.action == "run"), None)
    to_run = [p.stage for p in plans[first:]] if first is not None else []
    if started is not None and started.stages != to_run:
        started.stop_all()
        started = None
    if first is None:
        return None
    kernels = started if started is not None else _start_pool(to_run, checks)
    try:
        import papermill  # noqa: F401 - imported while the kernels' parent imports the rest
        kernels.check()
    except BaseException:
        kernels.stop_all()
        raise
    return kernels


def _execute(run: ledger.RunFolder, params: RunParams, plans: list[cache.StagePlan],
             kernels: "KernelPool | None", use_cache: bool, on_event: EventHandler | None,
             cancel: threading.Event | None) -> dict:
    emit = on_event or (lambda event: None)
    emit(RunEvent(EventKind.RUN_STARTED, run.id, data={"run_dir": str(run.path),
                                               "stages": [p.stage.name for p in plans]}))
    # nbconvert is loaded by the first export, after the first stage: while the data stage
    # parses the table on every core, a second of template compiling only slows it down
    exporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlops-kit-report")
    reports: list[tuple[str, Future]] = []
    current: Stage | None = None
    made: dict[str, str] = {}  # sha256 of the outputs of this run's stages, as recorded
    try:
        for plan in plans:
            current = plan.stage
            if cancel is not None and cancel.is_set():
                raise RunCancelled(run.id, current.name)
            parts, hit = plan.fingerprint, plan.cached_from
            if parts is None:  # its inputs were made in this run: decide now
                known = {item: made[item] if item in made else _atomic.sha256_file(run.artifacts / item)
                         for item in current.inputs}
                parts = cache.fingerprint(current, params, known)
                if use_cache and current.reusable:
                    hit, _ = cache.find_cached(current, parts["digest"], exclude=run.id)
            if hit is not None:
                reused = cache.reuse_stage(run, current, hit, parts)
                made.update(reused["outputs"])
                run.update_stage(current.name, **reused)
                emit(RunEvent(EventKind.STAGE_CACHED, run.id, current.name,
                              message=f"unchanged: reused from run {hit.run_id}",
                              data={"source_run": hit.run_id}))
                continue
            if plan.rejected:
                emit(RunEvent(EventKind.LOG, run.id, current.name, message="; ".join(plan.rejected) + ": re-executing"))
            if kernels is None:  # planned as reused, but its source changed meanwhile
                kernels = _start_kernels([cache.StagePlan(p.stage) for p in plans[plans.index(plan):]], [])
            made.update(_run_stage(run, current, params, kernels, emit, exporter, reports, parts))
        for name, future in reports:
            future.result()
        record = run.update(status="succeeded", finished=ledger.now(), metrics=_headline_metrics(run))
        emit(RunEvent(EventKind.RUN_FINISHED, run.id, message="succeeded", data={"record": record}))
        return record
    except StageFailed as exc:
        _wait_quietly(reports)
        record = run.update(status="failed", finished=ledger.now(), metrics=_headline_metrics(run),
                            error={"stage": exc.stage, "cell_index": exc.cell_index,
                                   "exception": exc.exception, "message": exc.detail,
                                   "notebook": str(exc.notebook)})
        emit(RunEvent(EventKind.RUN_FINISHED, run.id, stage=exc.stage, message="failed", data={"record": record}))
        raise
    except BaseException as exc:
        _wait_quietly(reports)
        stage_name = current.name if current else None
        if stage_name:
            run.update_stage(stage_name, status="interrupted")
        run.update(status="interrupted", finished=ledger.now(),
                   error={"stage": stage_name, "cell_index": None, "exception": type(exc).__name__,
                          "message": str(exc)})
        emit(RunEvent(EventKind.RUN_FINISHED, run.id, stage=stage_name, message="interrupted"))
        raise
    finally:
        if kernels is not None:
            kernels.stop_all()
        exporter.shutdown(wait=True)
        run.release()


def _run_stage(run: ledger.RunFolder, stage: Stage, params: RunParams, kernels: KernelPool,
               emit: EventHandler, exporter: ThreadPoolExecutor, reports: list, parts: dict) -> dict[str, str]:
    """Execute the stage's notebook; returns the sha256 of each of its outputs (recorded)."""
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    source = _paths.notebooks_dir() / stage.notebook
    output = run.notebooks / stage.notebook
    report = run.reports / (Path(stage.notebook).stem + ".html")
    parameters = {**params.stage_parameters(stage.section), "run_dir": str(run.path)}
    started = time.perf_counter()
    run.update_stage(stage.name, status="running", started=ledger.now(),
                     notebook=str(output.relative_to(run.path)))
    emit(RunEvent(EventKind.STAGE_STARTED, run.id, stage.name))
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters=parameters, kernel_name=KERNEL_NAME,
            km=kernels.take(stage), progress_bar=False, log_output=False,
            cwd=str(source.parent))
    except PapermillExecutionError as exc:
        seconds = round(time.perf_counter() - started, 3)
        detail = _error_text(exc.evalue)
        cell_index = _failing_cell(output, default=exc.cell_index)
        reports.append((stage.name, exporter.submit(export_html, output, report)))
        run.update_stage(stage.name, status="failed", seconds=seconds,
                         report=str(report.relative_to(run.path)),
                         error={"cell_index": cell_index, "exception": exc.ename, "message": detail})
        failure = StageFailed(stage.name, notebook=output, cell_index=cell_index,
                              exception=exc.ename, detail=detail)
        emit(RunEvent(EventKind.STAGE_FAILED, run.id, stage.name, message=str(failure),
                      data={"cell_index": cell_index, "exception": exc.ename, "seconds": seconds}))
        raise failure from None
    except DeadKernelError:
        seconds = round(time.perf_counter() - started, 3)
        cell_index = _running_cell(output)
        detail = ("the kernel died (killed, or out of memory) while the stage ran"
                  + (f" cell {cell_index}" if cell_index is not None else ""))
        run.update_stage(stage.name, status="failed", seconds=seconds,
                         error={"cell_index": cell_index, "exception": "DeadKernelError", "message": detail})
        failure = StageFailed(stage.name, notebook=output, cell_index=cell_index, exception="DeadKernelError",
                              detail=detail)
        emit(RunEvent("stage_failed", run.id, stage.name, message=str(failure),
                      data={"cell_index": cell_index, "exception": "DeadKernelError", "seconds": seconds}))
        raise failure from None
    finally:
        kernels.stop(stage)
    seconds = round(time.perf_counter() - started, 3)
    missing = [item for item in stage.outputs if not (run.artifacts / item).exists()]
    if missing:
        run.update_stage(stage.name, status="failed", seconds=seconds,
                         error={"cell_index": None, "exception": "MissingOutputs",
                                "message": f"did not write {', '.join(missing)}"})
        failure = StageFailed(stage.name, notebook=output, cell_index=None, exception="MissingOutputs",
                              detail=f"the stage did not write its declared outputs {', '.join(missing)}")
        emit(RunEvent(EventKind.STAGE_FAILED, run.id, stage.name, message=str(failure)))
        raise failure
    reports.append((stage.name, exporter.submit(export_html, output, report)))
    outputs = {item: _atomic.sha256_file(run.artifacts / item) for item in stage.outputs}
    run.update_stage(stage.name, status="succeeded", seconds=seconds, fingerprint=parts,
                     report=str(report.relative_to(run.path)), outputs=outputs)
    emit(RunEvent(EventKind.STAGE_FINISHED, run.id, stage.name, message="succeeded", data={"seconds": seconds}))
    return outputs


def _running_cell(notebook: Path) -> int | None:
    """The index of the cell papermill last marked as running in the saved notebook."""
    import nbformat

    try:
        executed = nbformat.read(notebook, as_version=4)
    except Exception:  # noqa: BLE001 - the notebook may not have been saved yet
        return None
    running = [index for index, cell in enumerate(executed.cells)
               if cell.get("metadata", {}).get("papermill", {}).get("status") == "running"]
    return running[-1] if running else None


def _failing_cell(notebook: Path, default: int | None) -> int | None:
    """The index, in the executed notebook as saved (papermill puts an error banner first),
    of the cell whose output is the error."""
    import nbformat

    try:
        executed = nbformat.read(notebook, as_version=4)
    except Exception:  # noqa: BLE001 - the record still has papermill's own index
        return default
    for index, cell in enumerate(executed.cells):
        if any(output.get("output_type") == "error" for output in cell.get("outputs", [])):
            return index
    return default


def _find_source_run(needed: list[str], reuse_from: str | None) -> ledger.RunFolder:
    if reuse_from:
        run = ledger.open_run(reuse_from, champion=True)
        missing = [item for item in needed if not (run.artifacts / item).exists()]
        if missing:
            raise ArtifactError(f"Run {reuse_from} has no {', '.join(missing)} to reuse.",
                                path=run.artifacts / missing[0])
        return run
    for run in ledger.iter_runs():
        if all((run.artifacts / item).exists() for item in needed):
            return run
    producers = sorted({producer_of(item).name for item in needed}, key=[s.name for s in STAGES].index)
    raise ArtifactError(
        f"The selected stages need {', '.join(needed)}, which no earlier run has.",
        hint=f"include the stage(s) {', '.join(producers)} in --stages.")


def _reuse_inputs(run: ledger.RunFolder, source: ledger.RunFolder, needed: list[str]) -> None:
    """Link the outputs of stages that were not selected from the run that has them."""
    by_stage: dict[str, dict[str, str]] = {}
    for item in needed:
        cache.link_or_copy(source.artifacts / item, run.artifacts / item)
        by_stage.setdefault(producer_of(item).name, {})[item] = _atomic.sha256_file(run.artifacts / item)
    for name, outputs in by_stage.items():
        run.update_stage(name, status="reused", source_run=source.id, outputs=outputs)


def _headline_metrics(run: ledger.RunFolder) -> dict | None:
    metrics = ledger.read_metrics({"id": run.id})
    if not metrics:
        return None
    return {**metrics["metrics"], "gate_passed": metrics["gate"]["passed"]}


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in ("mlops-kit", "papermill", "scikit-learn", "pandas", "numpy", "matplotlib", "skops"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _error_text(text: str, limit: int = 2000) -> str:
    """The exception's message (all of it: a kit error's hint is on its second line)."""
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def _wait_quietly(reports: list[tuple[str, Future]]) -> None:
    for _, future in reports:
        try:
            future.result()
        except Exception:  # noqa: BLE001 - the run already failed; the report is best effort
            pass
