"""Run the pipeline's stages into a run folder.

The runner plans (which stages run, which are reused from earlier runs: :mod:`.cache`),
keeps the record (:mod:`.ledger`) and emits the events; an executor
(:mod:`mlops_kit.execution`; by default forked kernels on this machine) executes each
stage's notebook, and its executed notebook is the record. HTML reports are exported by a
process of their own while the next stage runs (:mod:`._reports`).
"""

from __future__ import annotations

import enum
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import _atomic, _paths, _reports, cache, ledger, stages
from ._timing import Phases, mark, process_started  # noqa: F401 - public here: the CLI passes its start
from .errors import ArtifactError, MlopsKitError, RunCancelled, StageFailed  # noqa: F401 - RunCancelled is public here too
from .execution import ExecutionPlan, Executor, default_executor, skip_iri_grammar  # noqa: F401 - the CLI's
from .params import LoadedParams, RunParams
from .stages import Stage, needed_inputs, optional_inputs, producer_of, select_stages

#: ``on_event(event)`` receives these as the run goes.
EventHandler = Callable[["RunEvent"], None]


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

def preflight(loaded: LoadedParams, stages: list[Stage]) -> dict[str, list[tuple[str, dict]]]:
    """Mistakes that would only show inside a stage, found before any starts, by each
    stage's ``preflight`` (:mod:`mlops_kit.stages`): raised here when this process can
    tell (a target column not in the file's header), else returned as checks to run where
    the stage's libraries are imported (:meth:`Executor.ready`), by stage name."""
    from .stages import preflight_checks

    return preflight_checks(loaded, stages)


# --- reports ---------------------------------------------------------------------------

#: an executed notebook's HTML report, written in this process (a sweep's report); a run's are
#: written by the report process (:mod:`._reports`), beside the next stage
export_html = _reports.export_html


# --- the run ---------------------------------------------------------------------------

def run_pipeline(loaded: LoadedParams, *, stages: list[str] | None = None, reuse_from: str | None = None,
                 use_cache: bool = True, on_event: EventHandler | None = None,
                 cancel: threading.Event | None = None, executor: Executor | None = None,
                 phases: Phases | None = None, record: dict | None = None) -> dict:
    """Run the selected stages (default: ``params.stages``) into a new run folder.

    A stage whose fingerprint matches a succeeded stage of an earlier run is reused, not
    executed (``use_cache=False`` executes everything). Stages not selected whose outputs
    a selected stage needs are taken from ``reuse_from`` (default: the newest run that has
    them). Returns the final record; raises :class:`StageFailed` (the record says which
    stage and cell) when a stage fails. ``executor`` executes the stages (default: forked
    kernels on this machine, :class:`mlops_kit.execution.local.LocalExecutor`). ``phases``:
    the time already spent (the CLI's start-up and parameters), else measured from here; the
    record's ``overhead`` says where the seconds outside the stages went (:mod:`._timing`).
    ``record``: keys added to the run's record (a sweep's trial names its sweep).
    """
    phases = phases if phases is not None else Phases()
    params = loaded.params
    executor = executor if executor is not None else default_executor(params)
    with phases.measure("planning"):
        selected = select_stages(stages, params.stages)
        _check_notebooks(selected)
        needed = needed_inputs(selected, params)
        source_run = _find_source_run(needed, reuse_from) if needed else None
        if source_run is not None:
            needed += [item for item in optional_inputs(selected, params)
                       if item not in needed and (source_run.artifacts / item).is_file()]
        with phases.measure("hashing"):
            known = {item: _atomic.sha256_file(source_run.artifacts / item) for item in needed}
    with phases.measure("preflight"):
        checks = preflight(loaded, selected)
    # when the first stage runs whatever the data file's hash, the executor and the checks
    # start now, and the file (seconds of sha256 for a large table) is hashed while they import
    with phases.measure("planning"):
        early = bool(selected) and cache.surely_runs(selected[0], params, known, use_cache=use_cache)
    mark("cli: planned before the data file's hash" + (" (kernels asked for)" if early else ""))
    if early:
        with phases.measure("kernel start"):
            _start_executor(executor, selected, checks)
    try:
        with phases.measure("planning"):
            plans = cache.plan(params, selected, known, use_cache=use_cache)
    except BaseException:
        executor.stop()
        raise
    mark("cli: planned")
    with phases.measure("kernel start"):
        started = _prepare(executor, plans, checks, started=early)  # parameter mistakes surface here, before any run exists
    mark("cli: checks answered")
    if started and getattr(executor, "warm", False):
        phases.note("kernels", "warm")  # forked from the warm parent of an earlier run
    try:
        with phases.measure("record"):
            run = ledger.create_run({
                "kind": ledger.run_kind([s.name for s in selected]),
                "params": params.model_dump(mode="json"),
                "parameter_files": [str(f) for f in loaded.files], "overrides": loaded.overrides,
                "stages_requested": [s.name for s in selected],
                "git": ledger.git_state(), "versions": _versions(),
                "stages": {s.name: {"status": "pending"} for s in selected}, **(record or {}),
            })
    except BaseException:
        executor.stop()
        raise
    if source_run is not None:
        with phases.measure("cache reuse"):
            _reuse_inputs(run, source_run, needed)
    return _execute(run, params, plans, executor, started, use_cache, on_event, cancel, phases)


def resume_run(run_id: str, *, use_cache: bool = True, on_event: EventHandler | None = None,
               cancel: threading.Event | None = None, executor: Executor | None = None,
               phases: Phases | None = None, overrides: tuple[str, ...] | list[str] = ()) -> dict:
    """Continue a failed or interrupted run, in its own folder, from its first stage that
    did not succeed (with the parameters it was started with; ``overrides``: ``execution.*``
    only, recorded in run.json). The record's ``overhead`` is this attempt's."""
    from .errors import RunNotResumable

    phases = phases if phases is not None else Phases()
    record = ledger.read_run(run_id, champion=False)
    run = ledger.open_run(run_id)
    if record["status"] == "running":
        raise RunNotResumable(run_id, "it is still running (its process holds the run's lock)")
    if record["status"] == "succeeded":
        raise RunNotResumable(run_id, "it succeeded; there is nothing to resume")
    params = RunParams.model_validate(record["params"])
    if overrides:
        from .params import resume_params

        params = resume_params(run.path, overrides)
    executor = executor if executor is not None else default_executor(params)
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
    with phases.measure("planning"):
        plans = cache.plan(params, remaining, done, use_cache=use_cache, exclude=run_id)
    with phases.measure("kernel start"):
        started = _prepare(executor, plans, {})
    try:
        run.acquire()
        with phases.measure("record"):
            for stage in remaining:
                run.update_stage(stage.name, status="pending", error=None)
            run.update(status="running", pid=os.getpid(), error=None, finished=None,
                       resumed=[*record.get("resumed", []), ledger.now()],
                       **({"params": params.model_dump(mode="json")} if overrides else {}))
    except BlockingIOError:
        executor.stop()
        raise RunNotResumable(run_id, "another process holds the run's lock") from None
    except BaseException:
        executor.stop()
        run.release()
        raise
    return _execute(run, params, plans, executor, started, use_cache, on_event, cancel, phases)


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


def _start_executor(executor: Executor, to_run: list[Stage], checks: dict[str, list]) -> None:
    """Start the executor for ``to_run`` and the checks of those stages (returns at once)."""
    executor.start(ExecutionPlan(list(to_run), [check for stage in to_run for check in checks.get(stage.name, ())],
                                 _paths.notebooks_dir()))


def _prepare(executor: Executor, plans: list[cache.StagePlan], checks: dict[str, list],
             started: bool = False) -> bool:
    """The executor started for the stages from the first one that must run, its checks
    answered; False (and stopped) when all are reused. ``started``: it was started before
    the plan was made, kept when for exactly these stages (else restarted)."""
    first = next((i for i, p in enumerate(plans) if p.action == "run"), None)
    to_run = [p.stage for p in plans[first:]] if first is not None else []
    if started and executor.stages != to_run:
        executor.stop()
        started = False
    if first is None:
        return False
    if not started:
        _start_executor(executor, to_run, checks)
    try:
        executor.ready()
    except BaseException:
        executor.stop()
        raise
    return True


def _execute(run: ledger.RunFolder, params: RunParams, plans: list[cache.StagePlan],
             executor: Executor, started: bool, use_cache: bool, on_event: EventHandler | None,
             cancel: threading.Event | None, phases: Phases) -> dict:
    emit = on_event or (lambda event: None)
    emit(RunEvent(EventKind.RUN_STARTED, run.id, data={"run_dir": str(run.path),
                                               "stages": [p.stage.name for p in plans]}))
    # the exports are waited for by a thread, done by the report process (started with the
    # first stage, at a lower priority than the stages)
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
                with phases.measure("planning"):
                    with phases.measure("hashing"):
                        known = {item: made[item] if item in made else _atomic.sha256_file(run.artifacts / item)
                                 for item in current.inputs}
                    parts = cache.fingerprint(current, params, known)
                    if use_cache and current.reusable:
                        hit, _ = cache.find_cached(current, parts["digest"], exclude=run.id)
            if hit is not None:
                with phases.measure("cache reuse"):
                    reused = cache.reuse_stage(run, current, hit, parts)
                    made.update(reused["outputs"])
                    run.update_stage(current.name, **reused)
                emit(RunEvent(EventKind.STAGE_CACHED, run.id, current.name,
                              message=f"unchanged: reused from run {hit.run_id}",
                              data={"source_run": hit.run_id}))
                continue
            if plan.rejected:
                emit(RunEvent(EventKind.LOG, run.id, current.name, message="; ".join(plan.rejected) + ": re-executing"))
            if not started:  # planned as reused, but its source changed meanwhile
                with phases.measure("kernel start"):
                    started = _prepare(executor, [cache.StagePlan(p.stage) for p in plans[plans.index(plan):]], {})
            made.update(_run_stage(run, current, params, executor, emit, exporter, reports, parts, phases))
        with phases.measure("report export"):  # only the wait: the exports ran beside the stages
            for name, future in reports:
                future.result()
        with phases.measure("record"):
            metrics = _headline_metrics(run)
        record = run.update(status="succeeded", finished=ledger.now(), metrics=metrics,
                            overhead=phases.breakdown())
        mark("cli: recorded")
        emit(RunEvent(EventKind.RUN_FINISHED, run.id, message="succeeded", data={"record": record}))
        return record
    except StageFailed as exc:
        with phases.measure("report export"):
            _wait_quietly(reports)
        with phases.measure("record"):
            metrics = _headline_metrics(run)
        record = run.update(status="failed", finished=ledger.now(), metrics=metrics, overhead=phases.breakdown(),
                            error={"stage": exc.stage, "cell_index": exc.cell_index,
                                   "exception": exc.exception, "message": exc.detail,
                                   "notebook": str(exc.notebook)})
        emit(RunEvent(EventKind.RUN_FINISHED, run.id, stage=exc.stage, message="failed", data={"record": record}))
        raise
    except BaseException as exc:
        with phases.measure("report export"):
            _wait_quietly(reports)
        stage_name = current.name if current else None
        if stage_name:
            with phases.measure("record"):
                run.update_stage(stage_name, status="interrupted")
        run.update(status="interrupted", finished=ledger.now(), overhead=phases.breakdown(),
                   error={"stage": stage_name, "cell_index": None, "exception": type(exc).__name__,
                          "message": str(exc)})
        emit(RunEvent(EventKind.RUN_FINISHED, run.id, stage=stage_name, message="interrupted"))
        raise
    finally:
        executor.stop()
        exporter.shutdown(wait=True)
        run.release()


def _run_stage(run: ledger.RunFolder, stage: Stage, params: RunParams, executor: Executor,
               emit: EventHandler, exporter: ThreadPoolExecutor, reports: list, parts: dict,
               phases: Phases) -> dict[str, str]:
    """Execute the stage's notebook; returns the sha256 of each of its outputs (recorded)."""
    output = run.notebooks / stage.notebook
    report = run.reports / (Path(stage.notebook).stem + ".html")
    parameters = {**params.stage_parameters(stage.section), "run_dir": str(run.path)}
    with phases.measure("record"):
        run.update_stage(stage.name, status="running", started=ledger.now(),
                         notebook=str(output.relative_to(run.path)))
    emit(RunEvent(EventKind.STAGE_STARTED, run.id, stage.name))
    mark(f"cli: {stage.name}: execute")
    # the report process imports nbconvert (a second of CPU, niced) while the first stage runs:
    # the stage's report is exported at once when the stage ends
    _reports.shared().start()
    outcome = executor.execute(stage, run.path, parameters)
    mark(f"cli: {stage.name}: executed")
    seconds = outcome.seconds
    phases.stages += seconds
    if outcome.status == "failed":
        error = {"cell_index": outcome.cell_index, "exception": outcome.exception, "message": outcome.detail}
        if outcome.report:
            reports.append((stage.name, exporter.submit(_reports.shared().export, output, report)))
            run.update_stage(stage.name, status="failed", seconds=seconds,
                             report=str(report.relative_to(run.path)), error=error)
        else:
            run.update_stage(stage.name, status="failed", seconds=seconds, error=error)
        failure = StageFailed(stage.name, notebook=output, cell_index=outcome.cell_index,
                              exception=outcome.exception, detail=outcome.detail)
        emit(RunEvent(EventKind.STAGE_FAILED, run.id, stage.name, message=str(failure),
                      data={"cell_index": outcome.cell_index, "exception": outcome.exception, "seconds": seconds}))
        raise failure from None
    missing = [item for item in stage.outputs if not (run.artifacts / item).exists()]
    if missing:
        run.update_stage(stage.name, status="failed", seconds=seconds,
                         error={"cell_index": None, "exception": "MissingOutputs",
                                "message": f"did not write {', '.join(missing)}"})
        failure = StageFailed(stage.name, notebook=output, cell_index=None, exception="MissingOutputs",
                              detail=f"the stage did not write its declared outputs {', '.join(missing)}")
        emit(RunEvent(EventKind.STAGE_FAILED, run.id, stage.name, message=str(failure)))
        raise failure
    reports.append((stage.name, exporter.submit(_reports.shared().export, output, report)))
    with phases.measure("hashing"):
        outputs = {item: _atomic.sha256_file(run.artifacts / item) for item in stage.outputs}
    with phases.measure("record"):
        run.update_stage(stage.name, status="succeeded", seconds=seconds, fingerprint=parts,
                         report=str(report.relative_to(run.path)), outputs=outputs)
    emit(RunEvent(EventKind.STAGE_FINISHED, run.id, stage.name, message="succeeded", data={"seconds": seconds}))
    return outputs


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
    producers = sorted({producer_of(item).name for item in needed}, key=list(stages.STAGE_NAMES).index)
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
    metrics = ledger.read_metrics(run.read())
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


def _wait_quietly(reports: list[tuple[str, Future]]) -> None:
    for _, future in reports:
        try:
            future.result()
        except Exception:  # noqa: BLE001 - the run already failed; the report is best effort
            pass
